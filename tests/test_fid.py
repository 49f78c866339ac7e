"""fid.py: statistics against independent numpy computations, the metrics against their formulas,
one process against two, and every bad input. A stand-in detector replaces Inception-v3."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
import fid
from metrics import detector as detector_lib
from metrics import evaluation
from sampling import provenance

from helpers import REPO, StandInDetector, noise_images, save_standin_detector, tiny_net

ROOT = Path(REPO)

NUM_IMAGES = 25  # Odd, so that two processes get unequal shares.
RESOLUTION = 8

#----------------------------------------------------------------------------
# Helpers.

def _expected_features(images: np.ndarray, return_features: bool = True) -> np.ndarray:
    """Detector output for uint8 images [N, 3, H, W], one image at a time, float64."""
    net = StandInDetector()
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(x[np.newaxis]), return_features=return_features).double().numpy() for x in images])


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Detector files, an image folder, the same images zipped, and reference statistics."""
    root = tmp_path_factory.mktemp('fid')
    gen = np.random.default_rng(0)
    d = dict(root=root, images=root / 'images')
    d['arrays'] = noise_images(d['images'], NUM_IMAGES, gen, (40, 215))
    d['zip'] = root / 'images.zip'
    with zipfile.ZipFile(d['zip'], 'w') as z:
        z.writestr('dataset.json', '{"labels": null}')
        for path in sorted(d['images'].rglob('*.png')):
            z.write(path, path.relative_to(d['images']).as_posix())
    d['other'] = root / 'other'
    d['other_arrays'] = noise_images(d['other'], NUM_IMAGES, gen, (0, 60))
    d['detector'] = root / 'standin.pt'
    save_standin_detector(d['detector'])
    d['detector_pkl'] = root / 'standin.pkl'
    d['detector_pkl'].write_bytes(pickle.dumps(StandInDetector()))
    d['ref'] = root / 'ref.npz'
    result = _invoke('ref', '--data', d['images'], '--dest', d['ref'], '--features', detector=d['detector'])
    assert result.exit_code == 0, result.output
    return d


def _invoke(*args, detector=None, env=None):
    args = [str(a) for a in args] + ['--device', 'cpu', '--workers', '0']
    if detector is not None:
        args += ['--detector', str(detector)]
    return CliRunner().invoke(fid.main, args, env=env)

#----------------------------------------------------------------------------
# Statistics.

def test_ref_matches_numpy(data):
    features = _expected_features(data['arrays'])
    ref = np.load(data['ref'])
    assert ref['mu'].dtype == np.float64 and ref['sigma'].shape == (8, 8)
    np.testing.assert_allclose(ref['mu'], features.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ref['sigma'], np.cov(features, rowvar=False, ddof=1), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ref['features'], features, rtol=1e-5, atol=1e-7)


def test_zip_with_workers_matches_folder(data, tmp_path):
    dest = tmp_path / 'sub' / 'zip.npz'
    result = CliRunner().invoke(fid.main, ['ref', '--data', str(data['zip']), '--dest', str(dest), '--detector',
                                           str(data['detector']), '--device', 'cpu', '--workers', '2', '--batch', '4'])
    assert result.exit_code == 0, result.output
    ours, ref = np.load(dest), np.load(data['ref'])
    assert sorted(ours.files) == sorted(['mu', 'sigma', *evaluation.REF_METADATA])  # Features only when asked for.
    assert evaluation.read_ref_metadata(ours, str(dest)) == dict(
        resolution=(RESOLUTION, RESOLUTION), channels=3, num_images=NUM_IMAGES, detector=str(data['detector']),
        detector_sha256=sha256_of(data['detector']), data=str(data['zip']), data_sha256=sha256_of(data['zip']))
    np.testing.assert_allclose(ours['mu'], ref['mu'], rtol=1e-6)
    np.testing.assert_allclose(ours['sigma'], ref['sigma'], rtol=1e-6, atol=1e-10)
    assert [p.name for p in tmp_path.joinpath('sub').iterdir()] == ['zip.npz']  # No temporary left behind.


def test_seeded_subset(data):
    detector = detector_lib.load_detector(str(data['detector']))
    all_features = _expected_features(data['arrays'])
    picks = {}
    for seed in [0, 0, 1]:
        stats = evaluation.calculate_inception_stats(str(data['images']), detector, num_expected=16, seed=seed, num_workers=0, with_features=True)
        # Every row is one of the images, no image twice, and mu is their mean.
        rows = [int(np.argmin(np.abs(all_features - f).sum(axis=1))) for f in stats['features']]
        np.testing.assert_allclose(stats['features'], all_features[rows], rtol=1e-5, atol=1e-7)
        assert len(set(rows)) == 16 and rows == sorted(rows) and stats['num'] == 16
        np.testing.assert_allclose(stats['mu'], all_features[rows].mean(axis=0), rtol=1e-5, atol=1e-7)
        picks.setdefault(seed, []).append(rows)
    assert picks[0][0] == picks[0][1] and picks[0][0] != picks[1][0]


@pytest.mark.slow
def test_two_processes_match_one(data, tmp_path):
    dest = tmp_path / 'two.npz'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          str(ROOT / 'fid.py'), 'ref', '--data', str(data['images']), '--dest', str(dest), '--features',
                          '--detector', str(data['detector']), '--device', 'cpu', '--workers', '1', '--batch', '5'],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count('Saved statistics of 25 images') == 1  # Rank 0 alone writes and prints.
    two, one = np.load(dest), np.load(data['ref'])
    np.testing.assert_allclose(two['mu'], one['mu'], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(two['sigma'], one['sigma'], rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(two['features'], one['features'])  # Gathered back in name order.

#----------------------------------------------------------------------------
# Metrics.

def _random_spd(gen: np.random.Generator, d: int) -> np.ndarray:
    a = gen.normal(size=[d, d])
    return a @ a.T / d + 0.1 * np.eye(d)


def _symmetric_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_fid_of_known_gaussians():
    gen = np.random.default_rng(1)
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = gen.uniform(0.5, 2, 6), gen.uniform(0.5, 2, 6)
    mu1, mu2 = gen.normal(size=6), gen.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert evaluation.calculate_fid_from_inception_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # General covariances: tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)), a symmetric computation.
    s1, s2 = _random_spd(gen, 16), _random_spd(gen, 16)
    r1 = _symmetric_sqrt(s1)
    expected = np.sum((mu1[:1] - mu2[:1]) ** 2) + np.trace(s1 + s2) - 2 * np.trace(_symmetric_sqrt(r1 @ s2 @ r1))
    mu1, mu2 = np.r_[mu1[:1], np.zeros(15)], np.r_[mu2[:1], np.zeros(15)]
    assert evaluation.calculate_fid_from_inception_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert evaluation.calculate_fid_from_inception_stats(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-10)
    with pytest.raises(ValueError, match='same detector'):
        evaluation.calculate_fid_from_inception_stats(mu1[:4], s1[:4, :4], mu2, s2)


def test_inception_score():
    gen = np.random.default_rng(2)
    assert evaluation.calculate_is(np.full([100, 7], 1 / 7)) == pytest.approx((1.0, 0.0), abs=1e-12)
    # Confident predictions spread evenly over C classes score C.
    assert evaluation.calculate_is(np.eye(7)[np.tile(np.arange(7), 20)], splits=10)[0] == pytest.approx(7.0, rel=1e-12)
    # Against the definition exp(E KL(p(y|x) || p(y))) on one split.
    p = gen.dirichlet(np.ones(5), size=40)
    expected = np.exp(np.mean(np.sum(p * np.log(p / p.mean(axis=0)), axis=1)))
    assert evaluation.calculate_is(p, splits=1)[0] == pytest.approx(expected, rel=1e-12)


def test_kid_matches_definition():
    gen = np.random.default_rng(3)
    x, y = gen.normal(size=[12, 4]), gen.normal(0.5, 1, size=[10, 4])
    k = lambda a, b: (a @ b / 4 + 1) ** 3
    # One subset holding all of y and 10 of x; which 10 rows of x is up to the seed, so use the
    # permutation invariance: with 10 rows of x the estimate is the same for any order of those rows.
    m = 10
    xs = x[:m]
    kxx = sum(k(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(xs[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert evaluation.calculate_kid(xs, y, num_subsets=3) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    assert evaluation.calculate_kid(x, y, num_subsets=50, max_subset_size=10, seed=0) == evaluation.calculate_kid(x, y, num_subsets=50, max_subset_size=10, seed=0)
    # Near 0 for two samples of one distribution, clearly positive for shifted ones.
    x1, x2, shifted = gen.normal(size=[300, 4]), gen.normal(size=[300, 4]), gen.normal(0.5, 1, size=[300, 4])
    assert abs(evaluation.calculate_kid(x1, x2, num_subsets=5, max_subset_size=200)) < 0.2 * evaluation.calculate_kid(x1, shifted, num_subsets=5, max_subset_size=200)


def test_calc_self_and_other(data, tmp_path):
    trace = np.trace(np.load(data['ref'])['sigma'])
    same = _invoke('calc', '--images', data['images'], '--ref', data['ref'], '--num', NUM_IMAGES, '--json', tmp_path / 'r.json', detector=data['detector'])
    assert same.exit_code == 0, same.output
    value = float(same.stdout.strip().splitlines()[-1])
    assert abs(value) < 1e-6 * trace
    record = json.loads((tmp_path / 'r.json').read_text())
    assert record['metrics']['fid'] == pytest.approx(value, rel=1e-5, abs=1e-12) and record['num'] == NUM_IMAGES
    assert record['manifest'] is None and record['num_images'] == NUM_IMAGES  # Not written by generate.py.

    other = _invoke('calc', '--images', data['other'], '--ref', data['ref'], '--num', NUM_IMAGES, '--metrics', 'fid,is,kid',
                    '--json', tmp_path / 'o.json', detector=data['detector'])
    assert other.exit_code == 0, other.output
    metrics = json.loads((tmp_path / 'o.json').read_text())['metrics']
    f_other, f_ref = _expected_features(data['other_arrays']), np.load(data['ref'])['features']
    expected_fid = evaluation.calculate_fid_from_inception_stats(f_other.mean(0), np.cov(f_other, rowvar=False), f_ref.mean(0), np.cov(f_ref, rowvar=False))
    assert metrics['fid'] == pytest.approx(expected_fid, rel=1e-4) and expected_fid > 0.1 * trace
    assert metrics['is'] == pytest.approx(evaluation.calculate_is(_expected_features(data['other_arrays'], return_features=False))[0], rel=1e-5)
    assert metrics['kid'] == pytest.approx(evaluation.calculate_kid(f_other, f_ref, seed=0), rel=1e-4)
    assert float(other.stdout.strip().splitlines()[-1]) == pytest.approx(metrics['fid'], rel=1e-5)


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_generated_folder(folder: Path, source: Path, seeds) -> dict:
    """A copy of the image folder `source` with a generate.py manifest listing `seeds`; returns the
    manifest as written."""
    shutil.copytree(source, folder)
    manifest = provenance.make_manifest(tiny_net(D=16.0), seeds, dict(num_steps=4), network='net.pt', network_sha256='0' * 64)
    provenance.write_manifest(str(folder), manifest)
    return json.loads((folder / provenance.MANIFEST_NAME).read_text())


def test_calc_records_provenance(data, tmp_path, monkeypatch):
    images = tmp_path / 'generated'
    manifest = write_generated_folder(images, data['images'], range(NUM_IMAGES))
    assert len(evaluation.ImageFiles(str(images))) == NUM_IMAGES  # The manifest is not an image.
    result = _invoke('calc', '--images', images, '--ref', data['ref'], '--num', NUM_IMAGES, '--json', tmp_path / 'r.json', detector=data['detector'])
    assert result.exit_code == 0, result.output
    assert abs(float(result.stdout.strip().splitlines()[-1])) < 1e-8 and 'Note:' not in result.output  # The same images as the reference.
    record = json.loads((tmp_path / 'r.json').read_text())
    assert record['manifest'] == manifest and record['num_images'] == NUM_IMAGES
    assert record['ref_sha256'] == sha256_of(data['ref']) and record['detector_sha256'] == sha256_of(data['detector'])

    # The same from a .zip, whose manifest lists fewer seeds than it holds images: a note says so.
    archive = tmp_path / 'generated.zip'
    short = provenance.make_manifest(tiny_net(D=16.0), range(NUM_IMAGES - 1), dict(num_steps=4))
    with zipfile.ZipFile(archive, 'w') as z:
        for path in sorted(data['images'].rglob('*.png')):
            z.write(path, path.relative_to(data['images']).as_posix())
        z.writestr(provenance.MANIFEST_NAME, json.dumps(short))
    result = _invoke('calc', '--images', archive, '--ref', data['ref'], '--num', NUM_IMAGES, '--json', tmp_path / 'z.json', detector=data['detector'])
    assert result.exit_code == 0, result.output
    assert f'Note: {archive} holds {NUM_IMAGES} images, but its generate.json lists {NUM_IMAGES - 1} seeds.' in result.output
    record = json.loads((tmp_path / 'z.json').read_text())
    assert record['manifest'] == json.loads(json.dumps(short)) and record['num_images'] == NUM_IMAGES

    # A broken manifest fails before the computation, in one line, and writes no record.
    (images / provenance.MANIFEST_NAME).write_text('{')
    monkeypatch.setattr(evaluation, 'calculate_metrics', lambda *args, **kwargs: pytest.fail('computed before checking the manifest'))
    result = _invoke('calc', '--images', images, '--ref', data['ref'], '--num', NUM_IMAGES, '--json', tmp_path / 'b.json', detector=data['detector'])
    assert result.exit_code == 1 and 'not a readable generate.py manifest' in result.output and not (tmp_path / 'b.json').exists()


def test_calc_notes_an_interrupted_generation(data, tmp_path):
    # generate.py stopped after 20 of 25 images: its manifest lists the 20 as written, not complete.
    images = tmp_path / 'generated'
    shutil.copytree(data['images'], images)
    manifest = provenance.make_manifest(tiny_net(D=16.0), range(NUM_IMAGES), dict(num_steps=4), network='net.pt')
    manifest = dict(manifest, seeds=provenance.seeds_entry(range(20)), complete=False)
    provenance.write_manifest(str(images), manifest)
    for path in sorted(images.rglob('*.png'))[20:]:
        path.unlink()
    result = _invoke('calc', '--images', images, '--ref', data['ref'], '--num', 20, '--json', tmp_path / 'r.json', detector=data['detector'])
    assert result.exit_code == 0, result.output
    assert (f'Note: {images} is incomplete: its generate.json records 20 of {NUM_IMAGES} requested images as written; '
            f'rerun the generate.py command to complete it.') in result.output
    assert 'holds 20 images, but' not in result.output  # The manifest's seeds are the images there.
    record = json.loads((tmp_path / 'r.json').read_text())
    assert record['manifest']['complete'] is False and record['manifest']['requested']['count'] == NUM_IMAGES


def test_sweep_records_provenance(data, tmp_path):
    run = tmp_path / 'run'
    manifest = write_generated_folder(run / 'ckpt_000010', data['other'], range(NUM_IMAGES))
    (run / 'ckpt_000020').symlink_to(data['images'])  # Images without a manifest.
    result = _invoke('sweep', '--run', run, '--ref', data['ref'], '--num', 12, detector=data['detector'])
    assert result.exit_code == 0, result.output
    records = {r['ckpt']: r for r in map(json.loads, (run / 'metrics.jsonl').read_text().splitlines())}
    assert records['ckpt_000010']['manifest'] == manifest and records['ckpt_000020']['manifest'] is None
    for record in records.values():
        assert record['num_images'] == NUM_IMAGES
        assert record['ref_sha256'] == sha256_of(data['ref']) and record['detector_sha256'] == sha256_of(data['detector'])


def test_pickle_detector_needs_allow_pickle(data, tmp_path):
    ref = np.load(data['ref'])
    np.savez(tmp_path / 'edm.npz', mu=ref['mu'], sigma=ref['sigma'])  # The same network, but another detector file.
    args = ['calc', '--images', data['images'], '--ref', tmp_path / 'edm.npz', '--num', NUM_IMAGES]
    refused = _invoke(*args, detector=data['detector_pkl'])
    assert refused.exit_code == 1 and '--allow-pickle' in refused.output and 'executes code' in refused.output
    allowed = _invoke(*args, '--allow-pickle', detector=data['detector_pkl'])
    assert allowed.exit_code == 0, allowed.output
    assert abs(float(allowed.stdout.strip().splitlines()[-1])) < 1e-8


def test_sweep(data, tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    for name, source in [('ckpt_10', data['images']), ('ckpt_2', data['other'])]:
        (run / name).symlink_to(source)  # Sorted by checkpoint number: ckpt_2 first.
    (run / 'ckpt_5' / '000000').mkdir(parents=True)  # Still being written by generate.py.
    args = ['sweep', '--run', run, '--ref', data['ref'], '--num', 12, '--ranges', 2]
    first = _invoke(*args, detector=data['detector'])
    assert first.exit_code == 0, first.output
    records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    assert [(r['ckpt'], r['images']) for r in records] == [('ckpt_2', '0-11'), ('ckpt_2', '12-23'), ('ckpt_10', '0-11'), ('ckpt_10', '12-23')]
    lines = first.stdout.strip().splitlines()
    assert 'Skipping ckpt_5: 0 images' in first.stdout
    assert [line.split()[0] for line in lines[-3:-1]] == ['ckpt_2', 'ckpt_10']
    best = min(r['metrics']['fid'] for r in records)
    assert best == min(r['metrics']['fid'] for r in records if r['ckpt'] == 'ckpt_10')
    assert lines[-1] == f'Best: ckpt_10 with FID {best:g}'

    again = _invoke(*args, detector=data['detector'])
    assert again.exit_code == 0 and (run / 'metrics.jsonl').read_text().count('\n') == 4  # Nothing evaluated twice.
    assert again.stdout.strip().splitlines()[-1] == lines[-1]

    # A checkpoint with a block still missing shows, but cannot be best on fewer tries.
    partial = [dict(ckpt='ckpt_1', block=0, metrics=dict(fid=0.5)), dict(ckpt='ckpt_3', block=0, metrics=dict(fid=0.7)),
               dict(ckpt='ckpt_3', block=1, metrics=dict(fid=0.9))]
    table, best = evaluation.sweep_table(partial, ['ckpt_1', 'ckpt_3'], [0, 1], num=None, seed=None, ref=None, detector=None)
    assert table[0] == dict(ckpt='ckpt_1', fid=[0.5, None], min_fid=0.5) and best['ckpt'] == 'ckpt_3'
    lines = evaluation.format_sweep_table(table, best, [0, 1])
    assert lines[1].split() == ['ckpt_1', '0.5000', '-', '0.5000'] and lines[-1] == 'Best: ckpt_3 with FID 0.7'

#----------------------------------------------------------------------------
# Bad input: one line, exit code 1, no traceback, no output file.

def _bad_files(folder):
    root = folder / 'bad'
    root.mkdir()
    np.savez(root / 'nomu.npz', means=np.zeros(8))
    (root / 'text.npz').write_text('mu, sigma')
    (root / 'text.pt').write_text('not a network')
    with zipfile.ZipFile(root / 'plain.zip.pt', 'w') as z:
        z.writestr('hello.txt', 'a zip, but no TorchScript')
    for name, sizes in [('corrupt', [8, 8, 8]), ('mixed', [8, 8, 6])]:
        for i, size in enumerate(sizes):
            (root / name).mkdir(exist_ok=True)
            PIL.Image.new('RGB', (size, size), (i * 50, 0, 0)).save(root / name / f'{i}.png')
    (root / 'corrupt' / '3.png').write_bytes(b'\x89PNG truncated')
    return root


@pytest.mark.parametrize('case, message', [
    ('missing_images', 'does not exist'),
    ('too_few_images', 'Found 25 images'),
    ('ref_without_mu', 'lacks reference statistics "mu"'),
    ('ref_not_npz', 'is not an .npz'),
    ('missing_ref', 'does not exist'),
    ('kid_without_features', 'ref --features'),
    ('detector_neither_format', 'neither a TorchScript file'),
    ('detector_zip_not_torchscript', 'not a TorchScript file'),
    ('detector_offline', '--detector=PATH'),
    ('corrupt_image', 'Cannot read image 3.png'),
    ('mixed_sizes', 'differ in size'),
])
def test_bad_input(data, tmp_path, refused_url, case, message):
    bad = _bad_files(tmp_path)
    out = tmp_path / 'out.json'
    images, ref, num, detector, extra, env = data['images'], data['ref'], NUM_IMAGES, data['detector'], [], None
    if case == 'missing_images':
        images = tmp_path / 'nowhere'
    elif case == 'too_few_images':
        num = NUM_IMAGES + 1
    elif case == 'ref_without_mu':
        ref = bad / 'nomu.npz'
    elif case == 'ref_not_npz':
        ref = bad / 'text.npz'
    elif case == 'missing_ref':
        ref = tmp_path / 'missing.npz'
    elif case == 'kid_without_features':
        np.savez(tmp_path / 'nofeat.npz', mu=np.zeros(8), sigma=np.eye(8))
        ref, extra = tmp_path / 'nofeat.npz', ['--metrics', 'fid,kid']
    elif case == 'detector_neither_format':
        detector = bad / 'text.pt'
    elif case == 'detector_zip_not_torchscript':
        detector = bad / 'plain.zip.pt'
    elif case in ('corrupt_image', 'mixed_sizes'):
        images, num = bad / case.split('_')[0], 3
    elif case == 'detector_offline':
        detector = refused_url('metrics/inception-2015-12-05.pkl')
        env = dict(DNNLIB_CACHE_DIR=str(tmp_path / 'empty-cache'))
    result = _invoke('calc', '--images', images, '--ref', ref, '--num', num, '--json', out, *extra, detector=detector, env=env)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error: ')]
    assert len(errors) == 1 and message in errors[0], result.output
    assert 'Traceback' not in result.output and not out.exists()
    if case == 'detector_offline':
        assert detector in errors[0] and str(tmp_path / 'empty-cache') in errors[0]


#----------------------------------------------------------------------------
# Reference metadata: what the statistics were made from, checked by calc and sweep.

def _edm_ref(data, folder) -> Path:
    """data['ref'] as EDM publishes reference statistics: mu and sigma, nothing else."""
    ref = np.load(data['ref'])
    np.savez(folder / 'edm.npz', mu=ref['mu'], sigma=ref['sigma'])
    return folder / 'edm.npz'


def _one_error(result) -> str:
    """The one-line error of a command that failed as a user's mistake, with nothing else wrong."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    errors = [line for line in result.output.splitlines() if line.startswith('Error: ')]
    assert len(errors) == 1 and 'Traceback' not in result.output, result.output
    return errors[0]


def test_ref_records_metadata(data, tmp_path):
    meta = evaluation.read_ref_metadata(np.load(data['ref']), str(data['ref']))
    assert meta == dict(resolution=(RESOLUTION, RESOLUTION), channels=3, num_images=NUM_IMAGES, detector=str(data['detector']),
                        detector_sha256=sha256_of(data['detector']), data=str(data['images']))  # No SHA-256 of a folder.
    gray = tmp_path / 'gray'
    gray.mkdir()
    for i in range(3):
        PIL.Image.new('L', (6, 4), i * 40).save(gray / f'{i}.png')
    evaluation.ref(data=str(gray), dest=str(tmp_path / 'gray.npz'), detector=str(data['detector']), device='cpu', workers=0)
    meta = evaluation.read_ref_metadata(np.load(tmp_path / 'gray.npz'), 'gray.npz')
    assert meta['resolution'] == (4, 6) and meta['channels'] == 1 and meta['num_images'] == 3
    assert evaluation.read_ref_metadata(np.load(_edm_ref(data, tmp_path)), 'edm.npz') == {}


def test_edm_ref_without_metadata_is_noted(data, tmp_path):
    edm = _edm_ref(data, tmp_path)
    ours = _invoke('calc', '--images', data['other'], '--ref', data['ref'], '--num', NUM_IMAGES, detector=data['detector'])
    theirs = _invoke('calc', '--images', data['other'], '--ref', edm, '--num', NUM_IMAGES, detector=data['detector'])
    assert ours.exit_code == 0 and theirs.exit_code == 0, theirs.output
    assert 'Note:' not in ours.output
    assert f'Note: {edm} does not record the resolution or the detector it was made with' in theirs.output
    assert ours.stdout.splitlines()[-1] == theirs.stdout.splitlines()[-1]  # The same FID, digit for digit.
    run = tmp_path / 'run'
    run.mkdir()
    for name in ['ckpt_000010', 'ckpt_000020']:
        (run / name).symlink_to(data['other'])
    swept = _invoke('sweep', '--run', run, '--ref', edm, '--num', 12, detector=data['detector'])
    assert swept.exit_code == 0 and swept.output.count('does not record') == 1, swept.output


def test_calc_and_sweep_refuse_a_mismatched_ref(data, tmp_path, monkeypatch):
    copy = tmp_path / 'copy.pt'  # The same detector file elsewhere is the same detector.
    shutil.copy(data['detector'], copy)
    same = _invoke('calc', '--images', data['images'], '--ref', data['ref'], '--num', NUM_IMAGES, detector=copy)
    assert same.exit_code == 0 and abs(float(same.stdout.splitlines()[-1])) < 1e-8, same.output

    large, other = tmp_path / 'large', tmp_path / 'other.pt'
    noise_images(large, 4, np.random.default_rng(5), (40, 215), resolution=16)
    save_standin_detector(other, seed=7)
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'ckpt_000010').symlink_to(large)
    (tmp_path / 'same-size-run').mkdir()
    (tmp_path / 'same-size-run' / 'ckpt_000010').symlink_to(data['images'])
    monkeypatch.setattr(evaluation, 'calculate_metrics', lambda *args, **kwargs: pytest.fail('computed with a mismatched reference'))
    resolution = f'{data["ref"]} was made from 8x8 images, but'
    for args, detector, message in [
        (['calc', '--images', large, '--num', 4, '--json', tmp_path / 'r.json'], data['detector'], f'{resolution} {large} holds 16x16 images'),
        (['calc', '--images', data['images'], '--num', 4, '--json', tmp_path / 'r.json'], other, f'not {other}'),
        (['sweep', '--run', tmp_path / 'run', '--num', 4, '--json', tmp_path / 'r.json'], data['detector'], resolution),
        (['sweep', '--run', tmp_path / 'same-size-run', '--num', 4], other, f'pass --detector={data["detector"]}'),
    ]:
        error = _one_error(_invoke(*args, '--ref', data['ref'], detector=detector))
        assert message in error, error
    assert 'made with the detector' in error and f'--detector={other}' in error
    assert not (tmp_path / 'r.json').exists() and not list(tmp_path.rglob('metrics.jsonl'))

#----------------------------------------------------------------------------
# A detector that cannot take the images: one line, whatever it raised.

class SixteenPixelDetector(torch.nn.Module):
    """Built for 16x16 images: a linear layer over the flattened pixels (RuntimeError on other sizes)."""
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 16 * 16, 8)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.fc(x.to(torch.float32).flatten(1))


class SizeCheckingDetector(torch.nn.Module):
    """Refuses other sizes itself: a `raise` in TorchScript becomes torch.jit.Error, which is not a
    RuntimeError (PyTorch 2.x)."""
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.shape[-1] != 16:
            raise ValueError('this detector takes 16x16 images')
        return x.to(torch.float32).mean(dim=[2, 3])


@pytest.mark.parametrize('net, message', [(SixteenPixelDetector, 'RuntimeError: mat1 and mat2 shapes cannot be multiplied'),
                                          (SizeCheckingDetector, 'ValueError: this detector takes 16x16 images')])
def test_detector_failing_on_the_images(data, tmp_path, net, message):
    path = tmp_path / 'detector.pt'
    torch.jit.save(torch.jit.script(net()), str(path))
    edm = _edm_ref(data, tmp_path)  # No detector recorded, so the detector itself is what fails.
    for args in [['ref', '--data', data['images'], '--dest', tmp_path / 'ref.npz'],
                 ['calc', '--images', data['images'], '--ref', edm, '--num', NUM_IMAGES, '--json', tmp_path / 'r.json']]:
        error = _one_error(_invoke(*args, detector=path))
        assert f'The detector {path} failed on uint8 images of shape [{NUM_IMAGES}, 3, 8, 8] ({message}' in error, error
        assert 'use a detector that takes 8x8 images' in error
    assert not (tmp_path / 'ref.npz').exists() and not (tmp_path / 'r.json').exists()


def test_detector_errors_say_what_to_do():
    images = torch.zeros([4, 3, 8, 8], dtype=torch.uint8)
    def out_of_memory(x, return_features=False):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
    detector = detector_lib.Detector(net=out_of_memory, source='big.pt', device=torch.device('cpu'), prob_kwargs={})
    with pytest.raises(ValueError, match=r'^The detector big.pt ran out of memory on uint8 images of shape \[4, 3, 8, 8\]; lower --batch.$'):
        detector.features(images)
    detector = detector_lib.Detector(net=lambda x: x.flatten(1), source='plain.pt', device=torch.device('cpu'), prob_kwargs={})
    with pytest.raises(ValueError, match=r'unexpected keyword argument .*callable as detector\(images, return_features=True\)'):
        detector.features(images)


def test_default_detector_offline_says_how_to_supply_it(data, tmp_path, refused_url, monkeypatch):
    url = refused_url('metrics/inception-2015-12-05.pkl')
    monkeypatch.setattr(detector_lib, 'DETECTOR_URL', url)  # No --detector: the default, unreachable.
    cache = tmp_path / 'cache'
    result = _invoke('calc', '--images', data['images'], '--ref', data['ref'], '--num', NUM_IMAGES, '--json', tmp_path / 'r.json',
                     env=dict(DNNLIB_CACHE_DIR=str(cache)))
    error = _one_error(result)
    copy = dnnlib.util.url_cache_path(url, str(cache / 'downloads'))
    assert f'Cannot download the detector {url}' in error and f'copy it to {copy}' in error, error
    assert '--detector=PATH (with --allow-pickle for a pickle)' in error and not (tmp_path / 'r.json').exists()


def test_offline_docs_name_the_official_detector_and_its_cache_file():
    text = (ROOT / 'docs' / 'evaluation.md').read_text()
    assert detector_lib.DETECTOR_URL in text
    assert f'${{DNNLIB_CACHE_DIR:-$HOME/.cache/dnnlib}}/downloads/{os.path.basename(dnnlib.util.url_cache_path(detector_lib.DETECTOR_URL))}' in text


def test_error_in_a_real_process(data, tmp_path):
    dest = tmp_path / 'ref.npz'
    out = subprocess.run([sys.executable, str(ROOT / 'fid.py'), 'ref', '--data', str(tmp_path / 'nowhere'), '--dest', str(dest),
                          '--detector', str(data['detector']), '--device', 'cpu'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().count('\n') == 0 and 'does not exist' in out.stderr
    assert not dest.exists()
    debug = subprocess.run([sys.executable, str(ROOT / 'fid.py'), 'ref', '--data', str(tmp_path / 'nowhere'), '--dest', str(dest),
                            '--detector', str(data['detector']), '--device', 'cpu', '--debug'], capture_output=True, text=True, timeout=60)
    assert debug.returncode != 0 and 'Traceback' in debug.stderr


def test_unknown_metric(data):
    result = _invoke('calc', '--images', data['images'], '--ref', data['ref'], '--metrics', 'fid,precision', detector=data['detector'])
    assert result.exit_code == 2 and 'precision' in result.output and 'Traceback' not in result.output


@pytest.mark.parametrize('case, message', [('missing_run', 'is not a folder'), ('no_ckpt', 'no ckpt_*/ image folders'), ('no_fid', 'include fid')])
def test_sweep_bad_input(data, tmp_path, case, message):
    run = tmp_path / ('missing' if case == 'missing_run' else 'run')
    (tmp_path / 'run').mkdir()
    metrics = 'is' if case == 'no_fid' else 'fid'
    result = _invoke('sweep', '--run', run, '--ref', data['ref'], '--metrics', metrics, detector=data['detector'])
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit) and message in result.output, result.output
    assert not (tmp_path / 'run' / 'metrics.jsonl').exists()

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# The commands as functions.

def test_ref_calc_and_sweep_are_callable_with_keyword_arguments(data, tmp_path):
    common = dict(detector=str(data['detector']), device='cpu', workers=0)
    stats = evaluation.ref(data=str(data['images']), dest=str(tmp_path / 'ref.npz'), **common)
    np.testing.assert_allclose(np.load(tmp_path / 'ref.npz')['mu'], stats['mu'])
    record = evaluation.calc(images=str(data['other']), ref=str(tmp_path / 'ref.npz'), num=NUM_IMAGES, metrics=['fid', 'is'], **common)
    features, ref_features = _expected_features(data['other_arrays']), _expected_features(data['arrays'])
    expected = evaluation.calculate_fid_from_inception_stats(features.mean(0), np.cov(features, rowvar=False),
                                                      ref_features.mean(0), np.cov(ref_features, rowvar=False))
    assert record['metrics']['fid'] == pytest.approx(expected, rel=1e-5) and 'is' in record['metrics']
    run = tmp_path / 'run'
    shutil.copytree(data['other'], run / 'ckpt_000005')
    summary = evaluation.sweep(run=str(run), ref=str(tmp_path / 'ref.npz'), num=NUM_IMAGES, **common)
    assert summary['best']['ckpt'] == 'ckpt_000005' and summary['best']['min_fid'] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match='unknown metric'):
        evaluation.calc(images=str(data['other']), ref=str(tmp_path / 'ref.npz'), metrics=['fd'], **common)
