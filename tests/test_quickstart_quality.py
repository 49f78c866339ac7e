"""benchmarks/quickstart_quality.py: real held-out digits pass the quick start's quality bar, noise and
blank images fail it, the classes samples were generated for are read from digit folders or a
dataset.json, and the command's exit status and JSON. Needs scikit-learn (requirements-demo.txt, which
`make test` installs)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.model_selection import train_test_split

from metrics import quality as quickstart_quality
from torch_utils import image_io

NUM_PER_CLASS = 10


def save_samples(folder, images: np.ndarray, labels=None) -> None:
    """uint8 [N, 16, 16] as folder/<class>/<i>.png (or folder/<i>.png without labels)."""
    for i, image in enumerate(images):
        where = f'{int(labels[i])}/{i:04d}.png' if labels is not None else f'{i:04d}.png'
        image_io.save_image(torch.from_numpy(image)[None], str(folder / where))


@pytest.fixture(scope='module')
def heldout_digits():
    """NUM_PER_CLASS real digits of each class that the scorer's classifier (seed 0) did not train on,
    round-tripped to 16x16 as the quick start's training data: (uint8 [N, 16, 16], labels [N])."""
    images, labels = quickstart_quality.load_real_digits()
    _, test_idx = train_test_split(np.arange(len(labels)), test_size=quickstart_quality.HELDOUT_FRACTION,
                                   stratify=labels, random_state=0)
    chosen = np.concatenate([test_idx[labels[test_idx] == c][:NUM_PER_CLASS] for c in range(10)])
    return quickstart_quality.round_trip(images[chosen]), labels[chosen]


def test_real_digits_pass(tmp_path, heldout_digits):
    images, labels = heldout_digits
    save_samples(tmp_path / 'samples', images, labels)
    result = quickstart_quality.score_samples(str(tmp_path / 'samples'))
    assert result['num_images'] == 10 * NUM_PER_CLASS
    assert result['score'] >= 0.8 and result['classes_present'] == 10
    assert result['label_agreement'] >= 0.9  # The digit folders say which digit each image is.
    assert quickstart_quality.failures(result) == []
    assert result['classifier']['heldout_accuracy'] >= 0.95


@pytest.mark.parametrize('kind', ['uniform noise', 'blank'])
def test_noise_and_blank_images_fail(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == 'blank':
        images = np.zeros([50, 16, 16], dtype=np.uint8)
    else:
        images = rng.integers(0, 256, size=[50, 16, 16], dtype=np.uint8)
    save_samples(tmp_path / 'samples', images)
    result = quickstart_quality.score_samples(str(tmp_path / 'samples'))
    assert result['score'] <= 0.1 and 'label_agreement' not in result
    problems = quickstart_quality.failures(result)
    assert any('of the samples are recognised (need 80%)' in p for p in problems)
    assert any('never recognised' in p for p in problems)


def test_class_labels_from_dataset_json_and_folders(tmp_path):
    names = ['0/a.png', '7/b.png', '7/c.png']
    for name in names:
        image_io.save_image(torch.zeros([1, 16, 16], dtype=torch.uint8), str(tmp_path / 'digits' / name))
    assert quickstart_quality.load_class_labels(str(tmp_path / 'digits'), names).tolist() == [0, 7, 7]
    (tmp_path / 'digits' / 'dataset.json').write_text(json.dumps({'labels': [[n, 3] for n in names]}))
    assert quickstart_quality.load_class_labels(str(tmp_path / 'digits'), names).tolist() == [3, 3, 3]
    (tmp_path / 'digits' / 'dataset.json').write_text(json.dumps({'labels': [[n, [0.5]] for n in names]}))
    with pytest.raises(ValueError, match='label vectors'):
        quickstart_quality.load_class_labels(str(tmp_path / 'digits'), names)
    flat = ['000000/000001.png']  # generate.py --subdirs: not digit folders.
    image_io.save_image(torch.zeros([1, 16, 16], dtype=torch.uint8), str(tmp_path / 'flat' / flat[0]))
    assert quickstart_quality.load_class_labels(str(tmp_path / 'flat'), flat) is None


def test_command_exit_status_and_json(tmp_path, heldout_digits):
    images, labels = heldout_digits
    save_samples(tmp_path / 'good', images, labels)
    save_samples(tmp_path / 'noise', np.random.default_rng(1).integers(0, 256, size=[20, 16, 16], dtype=np.uint8))
    runner = CliRunner()
    good = runner.invoke(quickstart_quality.cmdline, [str(tmp_path / 'good'), '--json', str(tmp_path / 'good.json')])
    assert good.exit_code == 0 and good.output.endswith('Passed.\n'), good.output
    record = json.loads((tmp_path / 'good.json').read_text())
    assert record['passed'] and record['problems'] == [] and record['num_images'] == 10 * NUM_PER_CLASS
    bad = runner.invoke(quickstart_quality.cmdline, [str(tmp_path / 'noise'), '--json', str(tmp_path / 'noise.json')])
    assert bad.exit_code == 1 and 'Error: The samples fail the quality bar' in bad.output
    assert not json.loads((tmp_path / 'noise.json').read_text())['passed']
    for args, message in [([str(tmp_path / 'nowhere')], 'does not exist'), ([str(tmp_path / 'good' / '0')], 'differ in size')]:
        if 'differ' in message:
            image_io.save_image(torch.zeros([1, 8, 8], dtype=torch.uint8), str(tmp_path / 'good' / '0' / 'small.png'))
        result = runner.invoke(quickstart_quality.cmdline, args)
        assert result.exit_code == 1 and message in result.output and 'Traceback' not in result.output, result.output
