"""studies/oracle.py: the D study's oracle arm. The exact denoiser of a digits subset, its two errors
against independent computations, per-seed sampling, the cells' folders as the D study reads them, and
every bad argument."""

import json
import math
import os

import numpy as np
import pytest
import scipy.special
import torch

from metrics import digits as digits_detector
from metrics import evaluation
from sampling import generation, provenance
from studies import d_study, oracle
from torch_utils import image_io
from torch_utils.rng import StackedRandomGenerator
from training.dataset import ImageFolderDataset

from helpers import check_lands_on_data, make_data, one_sentence, write_dataset_zip

#----------------------------------------------------------------------------
# Small data: two classes of three far-apart points [1, 4, 4], and a labelled 16x16 grayscale dataset.

def two_classes():
    return make_data(6, shape=(1, 4, 4), seed=3), torch.tensor([0, 0, 0, 1, 1, 1])


@pytest.fixture(scope='module')
def digits_like_zip(tmp_path_factory):
    """10 classes of 12 grayscale 16x16 images (integer pixels, so PNGs hold the points exactly)."""
    gen = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 12)
    images = gen.integers(0, 256, size=[len(labels), 16, 16, 1]).astype(np.uint8)
    return write_dataset_zip(tmp_path_factory.mktemp('oracle') / 'digits.zip', images, labels)


def sample(net, seeds, class_idx=None, kind='additive', strength=0.0, num_steps=18, **kwargs):
    return oracle.sample_oracle_batch(net, seeds, class_idx, kind, strength, dict(num_steps=num_steps, **kwargs))

#----------------------------------------------------------------------------
# The subset.

def test_subset_is_drawn_from_the_detectors_training_part(digits_like_zip):
    subset = oracle.load_subset(digits_like_zip, per_class=5, seed=1)
    dataset = ImageFolderDataset(digits_like_zip, use_labels=True)
    labels = np.array([int(dataset.get_label(i).argmax()) for i in range(len(dataset))])
    train, heldout = digits_detector.split_heldout(labels, seed=0)  # The D study's detector's split.
    assert set(subset.indices) <= set(train) and not set(subset.indices) & set(heldout)
    assert subset.labels.tolist() == [c for c in range(10) for _ in range(5)] and labels[subset.indices].tolist() == subset.labels.tolist()
    expected = np.stack([dataset[int(i)][0] for i in subset.indices]) / 127.5 - 1
    np.testing.assert_array_equal(subset.images.numpy(), expected)
    assert subset.images.dtype == torch.float64 and subset.images.shape == (50, 1, 16, 16)
    again = oracle.load_subset(digits_like_zip, per_class=5, seed=1)
    other = oracle.load_subset(digits_like_zip, per_class=5, seed=2)
    assert again.indices.tolist() == subset.indices.tolist() and other.indices.tolist() != subset.indices.tolist()

#----------------------------------------------------------------------------
# The exact denoiser and the two errors against independent computations.

def posterior_mean(x, sigma, points, D):
    """E[y | x] for y uniform on `points`, written out in numpy from the kernel (Equation 4 of PFGM++)."""
    x, points = x.reshape(len(x), -1).numpy(), points.reshape(len(points), -1).numpy()
    N = x.shape[1]
    d2 = ((x[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    logits = -d2 / (2 * sigma ** 2) if D is None else -(N + D) / 2 * np.log(d2 + sigma ** 2 * D)
    w = np.exp(logits - scipy.special.logsumexp(logits, axis=1, keepdims=True))
    return torch.from_numpy(w @ points)


@pytest.mark.parametrize('D', [4, None])
def test_exact_denoiser_uses_the_points_of_each_rows_class(D):
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, D)
    x = torch.randn([4, 1, 4, 4], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    class_labels = torch.tensor([[1.0, 0], [0, 1], [0, 0], [1, 0]], dtype=torch.float64)
    out = net(x, 1.5, class_labels).reshape(4, -1)
    for row, points in [(0, data[:3]), (1, data[3:]), (2, data), (3, data[:3])]:
        torch.testing.assert_close(out[row], posterior_mean(x[row:row + 1], 1.5, points, D)[0], rtol=1e-10, atol=1e-12)
    assert (net.label_dim, net.img_channels, net.img_resolution, net.D, net.sigma_min, net.sigma_max) == (2, 1, 4, D, 0, math.inf)


@pytest.mark.parametrize('D', [4, None])
@pytest.mark.parametrize('kappa', [-0.5, 0.3])
def test_sigma_error_is_the_exact_denoiser_at_a_scaled_noise_level(D, kappa):
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, D)
    # Near the midpoints of class 1's points, where the posterior weights depend on the noise level.
    x = (data[[3, 4, 3]] + data[[4, 5, 5]]) / 2 + 0.1 * torch.randn([3, 1, 4, 4], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    class_labels = torch.tensor([[0.0, 1]] * 3, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    out = oracle.PerturbedDenoiser(net, 'sigma', kappa)(x, sigma, class_labels).reshape(3, -1)
    for row in range(3):
        expected = posterior_mean(x[row:row + 1], float(sigma[row]) * (1 + kappa), data[3:], D)[0]
        torch.testing.assert_close(out[row], expected, rtol=1e-10, atol=1e-12)
        unperturbed = posterior_mean(x[row:row + 1], float(sigma[row]), data[3:], D)[0]
        assert float((out[row] - unperturbed).abs().max()) > 1e-4  # kappa changes the output.


@pytest.mark.parametrize('eps', [0.0, 0.25, 2.0])
def test_additive_error_is_eps_sigma_times_each_seeds_own_draw(eps):
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, 16)
    seeds = [3, 9, 4]
    x = torch.randn([3, 1, 4, 4], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    out = oracle.PerturbedDenoiser(net, 'additive', eps, StackedRandomGenerator('cpu', seeds).randn_like)(x, sigma)
    z = torch.stack([torch.randn([1, 4, 4], generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds])
    torch.testing.assert_close(out, net(x, sigma) + eps * sigma.reshape(3, 1, 1, 1) * z, rtol=0, atol=1e-13)

#----------------------------------------------------------------------------
# Sampling.

@pytest.mark.parametrize('D', [4, None])
def test_without_error_the_samples_land_on_the_class_points(D):
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, D)
    for c, points in [(0, data[:3]), (1, data[3:])]:
        x = sample(net, range(c * 1000, c * 1000 + 150), class_idx=c, num_steps=32)
        check_lands_on_data(x, points, torch.ones(3, dtype=torch.float64))
    unconditional = oracle.ExactDenoiser(data, None, D)
    check_lands_on_data(sample(unconditional, range(300), num_steps=32), data, torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize('kind, strength', [('additive', 0.5), ('sigma', 0.3)])
def test_each_image_depends_on_its_seed_only(kind, strength):
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, 4)
    seeds = [7, 0, 2, 11, 5, 8]
    whole = sample(net, seeds, None, kind, strength, num_steps=6, S_churn=5)  # Drawn labels: both classes in one batch.
    parts = torch.cat([sample(net, seeds[:2], None, kind, strength, num_steps=6, S_churn=5),
                       sample(net, seeds[2:3], None, kind, strength, num_steps=6, S_churn=5),
                       sample(net, seeds[3:], None, kind, strength, num_steps=6, S_churn=5)])
    torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)
    assert len({tuple(row.flatten().tolist()) for row in sample(net, seeds, 0, kind, strength, num_steps=3)}) == len(seeds)


@pytest.mark.parametrize('D', [4, None])
def test_a_seed_draws_what_generation_draws_for_it(D):
    # Prior, class label, then the sampler's noise: generate.py's order, so a seed starts where the D
    # study's trained cells start it (the sigma error draws nothing of its own).
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, D)
    settings = dict(num_steps=5, S_churn=3)
    ours = oracle.sample_oracle_batch(net, [4, 1, 9], 1, 'sigma', 0.0, settings)
    theirs = generation.sample_batch(net, [4, 1, 9], settings, class_idx=1)
    assert torch.equal(ours, theirs)


def test_additive_error_changes_the_images_more_as_eps_grows():
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, 4)
    seeds = range(100)
    exact = sample(net, seeds, 1, num_steps=9)
    changes = []
    for eps in [0.0, 0.03, 0.3, 3.0]:
        x = sample(net, seeds, 1, 'additive', eps, num_steps=9)
        changes.append(float((x - exact).reshape(100, -1).norm(dim=1).mean()))
    assert changes[0] == 0 and changes[1] < changes[2] < changes[3], changes
    assert changes[1] > 0


def test_zero_strengths_of_both_kinds_are_the_exact_sampler():
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, 16)
    a = sample(net, range(8), 0, 'additive', 0.0, num_steps=5)
    b = sample(net, range(8), 0, 'sigma', 0.0, num_steps=5)
    assert torch.equal(a, b)

#----------------------------------------------------------------------------
# Cells: the D study's folder layout, resumption and refusal.

def png_bytes(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), 'rb').read()
            for d, _dirs, files in os.walk(folder) for f in files if f.endswith('.png')}


def test_a_cell_has_the_layout_the_d_study_reads(tmp_path, digits_like_zip):
    subset = oracle.load_subset(digits_like_zip, per_class=3)
    blocks = d_study.sample_blocks(30, 10)
    assert oracle.class_blocks(3, 10) == blocks and oracle.class_blocks(4, 0) == d_study.sample_blocks(4, 0)
    folder = str(tmp_path / 'cell')
    result = oracle.sample_oracle_cell(subset.images, subset.labels, 4, 'additive', 0.0, blocks, folder, num_steps=18)
    assert result['written'] == 30 and result['skipped'] == 0
    assert d_study.folder_complete(folder, blocks) and oracle.cell_complete(folder, blocks)
    np.testing.assert_array_equal(d_study.labels_of(folder, blocks), np.repeat(np.arange(10), 3))
    assert evaluation.ImageFiles(folder).names[:4] == ['0/000000.png', '0/000001.png', '0/000002.png', '1/000003.png']
    manifest = provenance.read_manifest(os.path.join(folder, '7'))
    assert manifest['class_idx'] == 7 and manifest['D'] == 4 and manifest['complete'] and manifest['seeds']['ranges'] == '21-23'
    assert manifest['network'] == 'oracle' and manifest['study']['error'] == 'additive' and manifest['sampler']['num_steps'] == 18
    measures = oracle.cell_measures(folder, blocks, subset.images, subset.labels, baseline=folder)
    assert measures['distance'] < 1e-6 and measures['on_point'] == 1 and measures['moved'] == 0 and measures['change'] == 0


def test_the_batch_split_does_not_change_the_files(tmp_path):
    data, labels = two_classes()
    blocks = oracle.class_blocks(5, 2)
    for batch_size in (100, 3):
        oracle.sample_oracle_cell(data, labels, 16, 'additive', 0.4, blocks, str(tmp_path / f'b{batch_size}'), 6, batch_size=batch_size)
    assert png_bytes(tmp_path / 'b100') == png_bytes(tmp_path / 'b3') and len(png_bytes(tmp_path / 'b3')) == 10


def test_an_interrupted_cell_is_completed_and_a_complete_one_skipped(tmp_path, monkeypatch):
    data, labels = two_classes()
    blocks = oracle.class_blocks(6, 2)
    args = (data, labels, None, 'sigma', 0.2, blocks)
    oracle.sample_oracle_cell(*args, str(tmp_path / 'whole'), 6)
    folder = str(tmp_path / 'cell')
    saved, real_save = [], image_io.save_image
    def save_then_stop(image, path):
        if len(saved) == 8:
            raise KeyboardInterrupt  # As a Ctrl-C between two images.
        real_save(image, path)
        saved.append(path)
    monkeypatch.setattr(image_io, 'save_image', save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        oracle.sample_oracle_cell(*args, folder, 6, batch_size=4)
    monkeypatch.setattr(image_io, 'save_image', real_save)
    assert not oracle.cell_complete(folder, blocks) and not d_study.folder_complete(folder, blocks)
    assert provenance.read_manifest(os.path.join(folder, '1'))['complete'] is False
    assert oracle.sample_oracle_cell(*args, folder, 6)['written'] == 4
    assert d_study.folder_complete(folder, blocks) and png_bytes(folder) == png_bytes(tmp_path / 'whole')
    stamps = {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, files in os.walk(folder) for p in files}
    again = oracle.sample_oracle_cell(*args, folder, 6)
    assert (again['written'], again['skipped']) == (0, 12)
    assert {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, files in os.walk(folder) for p in files} == stamps
    with pytest.raises(ValueError, match='another configuration'):
        oracle.sample_oracle_cell(data, labels, None, 'sigma', 0.3, blocks, folder, 6)

#----------------------------------------------------------------------------
# Measures and the grid command.

def test_point_shares_tv_against_hand_counts():
    labels = torch.tensor([0, 0, 1, 1, 1])
    index = torch.tensor([0, 0, 0, 2, 3, 4, 4])  # Class 0: 3 of 3 on point 0; class 1: 1, 0... on 2, 3, 4.
    classes = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    expected = np.mean([0.5 * (abs(1 - 0.5) + abs(0 - 0.5)), 0.5 * (abs(1 / 4 - 1 / 3) + abs(1 / 4 - 1 / 3) + abs(2 / 4 - 1 / 3))])
    assert oracle.point_shares_tv(index, classes, labels, 5) == pytest.approx(expected, abs=1e-12)
    assert oracle.point_shares_tv(torch.tensor([0, 1, 2, 3, 4]), None, None, 5) == 0


def test_the_grid_writes_its_cells_and_oracle_json(tmp_path, digits_like_zip):
    rows = oracle.run_oracle_grid(str(tmp_path), data=digits_like_zip, D_list=[4, math.inf], strengths=[0.5, 0],
                                  per_class=2, samples_per_class=2, num_steps=5, progress=False)
    assert [(r['D'], r['strength']) for r in rows] == [('4', 0.5), ('4', 0.0), ('inf', 0.5), ('inf', 0.0)]
    assert all(r['num'] == 20 and 'moved' in r for r in rows) and rows[1]['moved'] == 0
    assert d_study.folder_complete(str(tmp_path / 'additive' / 'eps_0.5' / 'Dinf'), oracle.class_blocks(2, 10))
    record = json.loads((tmp_path / 'additive' / 'oracle.json').read_text())
    assert record['study'] == 'oracle' and len(record['cells']) == 4 and len(record['subset_indices']) == 20


#----------------------------------------------------------------------------
# Bad arguments: a ValueError of one sentence.

def bad_calls():
    data, labels = two_classes()
    net = oracle.ExactDenoiser(data, labels, 4)
    blocks = oracle.class_blocks(2, 2)
    cell = lambda **kw: oracle.sample_oracle_cell(**dict(dict(data=data, labels=labels, D=4, error_kind='additive', strength=0.1,
                                                               blocks=blocks, folder='unused'), **kw))
    return [
        (lambda: oracle.check_error('gaussian', 0.1), 'Unknown error kind'),
        (lambda: oracle.check_error('additive', -0.1), 'eps >= 0'),
        (lambda: oracle.check_error('additive', math.nan), 'eps >= 0'),
        (lambda: oracle.check_error('sigma', -1.0), 'kappa > -1'),
        (lambda: oracle.check_error('sigma', True), 'kappa > -1'),
        (lambda: oracle.PerturbedDenoiser(net, 'additive', 0.1), 'randn_like'),
        (lambda: oracle.ExactDenoiser(data[:, :, :, :3], labels), 'square images'),
        (lambda: oracle.ExactDenoiser(data, labels[:5]), 'class indices'),
        (lambda: oracle.ExactDenoiser(data, torch.tensor([0, 0, 0, 2, 2, 2])), 'at least one point'),
        (lambda: oracle.ExactDenoiser(data, labels, 0), 'D must be'),
        (lambda: net(data, 1.0, torch.tensor([[0.5, 0.5]] * 6)), 'one-hot'),
        (lambda: net(data, 1.0, torch.ones([6, 3])), 'one-hot rows'),
        (lambda: oracle.choose_subset(np.repeat(np.arange(3), 4), 4), 'fewer than'),
        (lambda: oracle.choose_subset(np.repeat(np.arange(3), 4), 0), 'integer >= 1'),
        (lambda: oracle.class_blocks(0, 10), 'integer >= 1'),
        (lambda: cell(blocks=[(2, [0], '2')]), 'not one of'),
        (lambda: cell(labels=None, blocks=[(0, [0], '0')]), 'unconditional block'),
        (lambda: oracle.sample_oracle_batch(net, [0], 2, 'sigma', 0.0), 'not one of'),
        (lambda: cell(blocks=[(0, [], '0')]), 'at least one integer'),
        (lambda: cell(blocks=[]), 'no blocks'),
        (lambda: cell(blocks=[(0, [1])]), 'class, seeds, subfolder'),
        (lambda: cell(batch_size=0), 'batch size'),
        (lambda: cell(sampler_kwargs=dict(num_steps=4)), 'as num_steps'),
        (lambda: cell(error_kind='sigma', strength=-2.0), 'kappa > -1'),
        (lambda: oracle.run_oracle_grid('unused', data='no-such.zip'), 'does not exist'),
    ]


@pytest.mark.parametrize('index', range(len(bad_calls())))
def test_bad_arguments_raise_one_sentence(index):
    call, match = bad_calls()[index]
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert one_sentence(str(info.value)), str(info.value)
