"""quickstart.py: the whole quick start with a tiny budget (1 kimg of training, one sample per digit)
through its command line, what every step leaves behind, reuse on a second call, and the refusals of
--fresh. Needs scikit-learn (requirements-demo.txt, which `make test` installs)."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import quickstart
from metrics import quality as quickstart_quality
from studies import quickstart as studies_quickstart
from torch_utils import image_io
from training import checkpoint
from training.dataset import ImageFolderDataset

PER_CLASS = 1


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """(paths, click result) of `quickstart.py --duration=0.001 --per-class=1` in a fresh folder."""
    root = tmp_path_factory.mktemp('quickstart')
    paths = studies_quickstart.demo_paths(str(root / 'runs'), 'qs', str(root / 'datasets'), str(root / 'digits'))
    result = CliRunner().invoke(quickstart.cmdline, [f'--outdir={paths.outdir}', '--name=qs', f'--data-dir={paths.data_dir}',
                                                     f'--source-dir={paths.digits}', '--device=cpu', '--duration=0.001',
                                                     f'--per-class={PER_CLASS}'])
    return paths, result


@pytest.mark.slow
def test_every_step_ran(tiny_run):
    paths, result = tiny_run
    quality = json.loads(open(paths.quality).read())
    # A 1 kimg model rarely makes digits; either way the exit status and the last line follow the verdict.
    if quality['passed']:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1 and 'Error: The samples fail the quality bar: ' + '; '.join(quality['problems']) in result.output
    assert 'Traceback' not in result.output and 'Quick start done' in result.output
    for step in ('export', 'convert', 'train', 'generate', 'score'):
        assert f'{step} ' in result.output.split('Time per step: ')[1].splitlines()[0]
    assert quality['num_images'] == 10 * PER_CLASS and 'label_agreement' in quality
    assert quality['network'] == os.path.join(paths.run_dir, 'network-snapshot-000001.024.pt')  # 16 steps of 64 reach 1 kimg.


@pytest.mark.slow
def test_exported_digits_and_dataset(tiny_run):
    paths, _ = tiny_run
    images, labels = quickstart_quality.load_real_digits()
    source = image_io.ImageSource(paths.digits)
    assert len(source.image_names) == len(images) and source.image_names[0] == '0/0000.png'
    name = '3/' + f'{np.flatnonzero(labels == 3)[5]:04d}.png'
    np.testing.assert_array_equal(source.read_image(name)[0], images[np.flatnonzero(labels == 3)[5]])
    dataset = ImageFolderDataset(paths.dataset, use_labels=True)
    assert len(dataset) == len(images) and dataset.image_shape == [1, 16, 16] and dataset.label_dim == 10
    dataset_labels = np.array([dataset.get_label(i).argmax() for i in range(len(dataset))])
    np.testing.assert_array_equal(np.bincount(dataset_labels), np.bincount(labels))  # Folder c holds digit c.


@pytest.mark.slow
def test_samples_per_class_and_grid(tiny_run):
    paths, _ = tiny_run
    assert checkpoint.kimg_from_name(studies_quickstart.newest_snapshot(paths.run_dir)) == 1.024
    samples = []
    for c in range(10):
        folder = os.path.join(paths.samples, str(c))
        manifest = json.loads(open(os.path.join(folder, 'generate.json')).read())
        assert manifest['class_idx'] == c and manifest['seeds']['count'] == PER_CLASS
        names = sorted(x for x in os.listdir(folder) if x.endswith('.png'))
        assert names == [f'{s:06d}.png' for s in range(c * PER_CLASS, (c + 1) * PER_CLASS)]
        samples.append([image_io.load_image(os.path.join(folder, n)).numpy() for n in names])
    # One row per digit: PER_CLASS columns of 16x16 samples, upscaled to a 256-pixel row, 2-pixel gaps.
    scale = 1
    while PER_CLASS * 16 * scale < 256:
        scale += 1
    cell = 16 * scale
    grid = image_io.load_image(paths.grid).numpy()
    assert grid.shape == (1, 10 * cell + 9 * 2, PER_CLASS * cell + (PER_CLASS - 1) * 2)
    for c in range(10):
        for j in range(PER_CLASS):
            y, x = c * (cell + 2), j * (cell + 2)
            np.testing.assert_array_equal(grid[:, y:y + cell, x:x + cell], np.kron(samples[c][j], np.ones([1, scale, scale], np.uint8)))


@pytest.mark.slow
def test_second_call_reuses_the_export_and_the_dataset(tiny_run, capsys):
    paths, _ = tiny_run
    before = os.stat(paths.dataset).st_mtime_ns
    assert studies_quickstart.export_step(paths).startswith('reused the 1,797 real 8x8 digits')
    assert studies_quickstart.convert_step(paths).startswith('reused the 16x16 dataset')
    assert os.stat(paths.dataset).st_mtime_ns == before


def test_foreign_folders_are_refused(tmp_path):
    (tmp_path / 'digits' / '3').mkdir(parents=True)
    (tmp_path / 'digits' / 'mine.txt').write_text('keep')
    with pytest.raises(studies_quickstart.StepError, match='holds more than the exported digits'):
        studies_quickstart.remove_export(str(tmp_path / 'digits'))
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'notes.txt').write_text('keep')
    with pytest.raises(studies_quickstart.StepError, match='does not look like a training run'):
        studies_quickstart.remove_run(str(tmp_path / 'run'))
    samples = tmp_path / 'samples'
    image_io.save_image(torch.zeros([1, 4, 4], dtype=torch.uint8), str(samples / '0' / '000000.png'))
    (samples / '0' / 'generate.json').write_text('{}')
    image_io.save_image(torch.zeros([1, 4, 4], dtype=torch.uint8), str(samples / '000001.png'))  # An older flat layout.
    studies_quickstart.clear_samples(str(samples))
    assert not samples.exists()
    image_io.save_image(torch.zeros([1, 4, 4], dtype=torch.uint8), str(samples / '0' / '000000.png'))
    (samples / '0' / 'notes.txt').write_text('keep')
    with pytest.raises(studies_quickstart.StepError, match='which the quick start did not write'):
        studies_quickstart.clear_samples(str(samples))
    assert (samples / '0' / 'notes.txt').exists()


def test_bad_arguments(tmp_path):
    for kwargs in (dict(duration=0), dict(per_class=0), dict(per_class=2.5)):
        with pytest.raises(ValueError, match='duration must be > 0 Mimg and per_class a positive integer'):
            studies_quickstart.run_quickstart(outdir=str(tmp_path / 'runs'), **kwargs)
    result = CliRunner().invoke(quickstart.cmdline, ['--per-class=0'])
    assert result.exit_code == 2 and '--per-class' in result.output
    assert not (tmp_path / 'runs').exists()
