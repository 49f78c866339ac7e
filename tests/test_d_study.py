"""studies/d_study.py and metrics/digits.py: the D study end to end at a tiny budget (2 D x 2
training seeds of 1 kimg on a tiny network, the base cell and all three studies with 2 settings each,
10 samples per cell) with the structure of its outputs, the paired statistics recomputed, its scores
against fid.py's own command and an independent count, a rerun that does no work; the digits detector's held-out accuracy; the standard
errors against independent computations; the Inception path with a stand-in detector; and every bad
input as one line. Needs scikit-learn and matplotlib (requirements-demo.txt)."""

import json
import math
import os
import shutil
import statistics
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
from metrics import detector as detector_lib
from metrics import digits as digits_detector
from metrics import evaluation
from sampling import generation
from studies import d_study, oracle_arm, stats
from training import checkpoint, launch

from helpers import bars_images, save_standin_detector, write_dataset_zip

TINY_STUDY_NET = dict(cbase=8, cres=[1], nblock=1)  # Replaces the quick start's network: seconds per model.
TINY_STUDY = dict(D_list=(16, None), kimg=1, seeds=(0, 1), alphas=(0, 0.5), steps_list=(1, 2), bits=(4, 8), num_samples=10,
                  num_steps=2, device='cpu', train_options=TINY_STUDY_NET,
                  oracle_D=(1, None), oracle_eps=(1,), oracle_kappa=(0.5,), oracle_samples=20)  # The oracle arm: 2 D x 3 cells.


class Calls:
    """Counts the calls of the stages' functions: launch.train, generation.run_study and the scorer."""

    def __init__(self, monkeypatch):
        self.counts = dict(train=0, generate=0, score=0)
        for key, owner, name in [('train', launch, 'train'), ('generate', generation, 'run_study'), ('score', d_study.Scorer, 'score')]:
            original = getattr(owner, name)
            def counted(*args, _original=original, _key=key, **kwargs):
                self.counts[_key] += 1
                return _original(*args, **kwargs)
            monkeypatch.setattr(owner, name, counted)


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    """The tiny study run in a fresh working directory, with the digits dataset built there (the
    default --data), and the stage calls it made."""
    root = tmp_path_factory.mktemp('d_study')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        calls = Calls(mp)
        results = d_study.run_d_study(str(root / 'study'), **TINY_STUDY)
    return dict(root=root, outdir=root / 'study', results=results, calls=dict(calls.counts),
                data=root / d_study.DEFAULT_DATA)

#----------------------------------------------------------------------------
# The tiny study end to end.

@pytest.mark.slow
def test_every_stage_ran_through_the_project_functions(study):
    # 4 models; per model one run_study call per digit (all settings of the three studies); 6 cells per model.
    assert study['calls'] == dict(train=4, generate=4 * 10, score=4 * 7)  # 7 cells: the base cell and 6 settings.
    assert os.path.isfile(study['data']) and zipfile.is_zipfile(study['data'])
    for D in ('16', 'inf'):
        for seed in (0, 1):
            run = study['outdir'] / 'runs' / f'D{D}-seed{seed}'
            assert [k for k, _ in checkpoint.find_checkpoints(str(run), 'network')] == [1.024]  # 16 steps of 64 images.
            options = json.loads((run / 'training_options.json').read_text())
            assert options['seed'] == seed and options['D'] == (None if D == 'inf' else float(D)) and options['cbase'] == 8
            for folder in ('base/base', 'alpha/alpha_0', 'alpha/alpha_0.5', 'steps/steps_1', 'steps/steps_2',
                           'quant/bits_4_finest', 'quant/bits_8_finest'):  # 16x16 data: its own finest stage kept exact.
                for c in range(10):  # One sample per digit, seed c, generated for digit c.
                    manifest = json.loads((run / folder / str(c) / 'generate.json').read_text())
                    assert manifest['class_idx'] == c and manifest['seeds']['ranges'] == str(c)
                    assert sorted(p.name for p in (run / folder / str(c)).glob('*.png')) == [f'{c:06d}.png']


@pytest.mark.slow
def test_results_json_cells(study):
    results = json.loads((study['outdir'] / 'results.json').read_text())
    assert results['format'] == 'pfgmpp-d-study' and results['complete'] is True
    assert results['grid']['D'] == [16, 'inf'] and results['metrics'] == ['fd', 'share']
    cells = results['cells']
    assert len(cells) == (1 + 3 * 2) * 2  # Every model's base cell, and 2 settings of each study.
    assert {(c['study'], c['setting'], c['D']) for c in cells} == {
        (s, v, D) for s, vs in [('base', (None,)), ('alpha', (0, 0.5)), ('steps', (1, 2)), ('quant', (4, 8))] for v in vs for D in (16, 'inf')}
    assert results['grid']['quant_scope'] == 'finest'
    for cell in cells:
        assert cell['seeds'] == [0, 1]
        assert cell['nfe'] == (2 * cell['setting'] - 1 if cell['study'] == 'steps' else 3)
        for key in ('fd', 'share'):
            values = cell[key]['per_seed']
            assert len(values) == 2 and cell[key]['n'] == 2
            assert cell[key]['mean'] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert cell[key]['se'] == pytest.approx(statistics.stdev(values) / math.sqrt(2), abs=1e-12)
        for model, fd in zip(cell['models'], cell['fd']['per_seed']):
            run = d_study.run_name(None if cell["D"] == "inf" else cell["D"], model["seed"])
            network = study['outdir'] / 'runs' / run / 'network-snapshot-000001.024.pt'
            assert model['score']['fd'] == fd and model['provenance']['network'] == str(network)
            assert model['provenance']['network_sha256'] == dnnlib.util.file_sha256(str(network))
            assert model['provenance']['study']['folder'] == f'{cell["study"]}/{cell["folder"]}/0'
            assert model['score']['detector_sha256'] == results['scoring']['detector_sha256']
    assert results['scoring']['kind'] == 'digits' and results['scoring']['detector'].endswith('digits-detector.pt')
    assert results['code']['source_sha256'] and set(results['timing']['all_runs']) == {'train', 'generate', 'score', 'oracle'}
    assert results['timing']['all_runs']['train']['units'] == 4 and len(results['timing']['stages']) == 13  # 4 x 3 and the oracle arm.
    assert results['timing']['all_runs']['oracle']['units'] == 6


@pytest.mark.slow
def test_paired_statistics_against_an_independent_computation(study):
    """Each score minus the same model's base score (the same network and sampling seeds), and that
    degradation minus diffusion's for the same training seed, recomputed here from the per-seed values:
    mean, sample SE, and 'beyond 2 SE'; results.json's summary lists exactly the cells beyond 2 SE."""
    results = json.loads((study['outdir'] / 'results.json').read_text())
    cells = {(c['study'], c['setting'], c['D']): c for c in results['cells']}
    def check(stat, values):
        assert stat['per_seed'] == pytest.approx(values, abs=1e-12) and stat['n'] == len(values) == 2
        assert stat['mean'] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert stat['se'] == pytest.approx(statistics.stdev(values) / math.sqrt(2), abs=1e-12)
        assert stat['beyond_2se'] == (statistics.stdev(values) > 0 and abs(statistics.fmean(values)) > 2 * statistics.stdev(values) / math.sqrt(2))
    beyond = []
    for (name, setting, D), cell in cells.items():
        for key in ('fd', 'share'):
            base = cells[('base', None, D)][key]['per_seed']
            degradation = [a - b for a, b in zip(cell[key]['per_seed'], base)]
            check(cell[key]['paired_degradation'], degradation)
            if D == 'inf':
                assert 'paired_vs_diffusion' not in cell[key]
                continue
            other = cells[(name, setting, 'inf')][key]['per_seed']
            other_base = cells[('base', None, 'inf')][key]['per_seed']
            if name == 'base':  # The scores themselves.
                difference = [a - b for a, b in zip(cell[key]['per_seed'], other)]
            else:
                difference = [a - b for a, b in zip(degradation, [o - ob for o, ob in zip(other, other_base)])]
            check(cell[key]['paired_vs_diffusion'], difference)
            if cell[key]['paired_vs_diffusion']['beyond_2se']:
                beyond.append((name, setting, D, key))
    assert cells[('alpha', 0, 16)]['fd']['paired_degradation']['per_seed'] == [0, 0]  # alpha 0 is the base sampler.
    assert sorted((b['study'], b['setting'] or 0, b['D'], b['score']) for b in results['paired']['beyond_2se']) == \
        sorted((n, s or 0, D, k) for n, s, D, k in beyond)


@pytest.mark.slow
def test_results_md_tables(study):
    text = (study['outdir'] / 'results.md').read_text()
    cells = json.loads((study['outdir'] / 'results.json').read_text())['cells']
    def tables(section):  # The runs of '|' lines.
        blocks, current = [], []
        for line in section.splitlines() + ['']:
            if line.startswith('|'):
                current.append(line)
            elif current:
                blocks.append(current)
                current = []
        return blocks
    for study_name, title, values in [('alpha', 'Noise injection', ('0', '0.5')), ('steps', 'Sampling steps', ('1', '2')),
                                      ('quant', 'Weight quantisation', ('4', '8'))]:
        for key, score in [('fd', 'FD-digits (lower is better)'), ('share', 'recognised share (higher is better)')]:
            section = text.split(f'## {title}: {score}\n')[1].split('\n## ')[0]
            scores, degradation, versus = tables(section)
            assert scores[0] == '| D | base | ' + ' | '.join(values) + ' |' and len(scores) == 4  # Header, rule, D=16, D=inf.
            assert degradation[0] == '| D | ' + ' | '.join(values) + ' |' and len(degradation) == 4
            assert versus[0] == scores[0] and len(versus) == 3  # Finite D only.
            for D, line, paired_line in zip((16, 'inf'), scores[2:], degradation[2:]):
                base = next(c for c in cells if c['study'] == 'base' and c['D'] == D)
                row = [c for c in cells if c['study'] == study_name and c['D'] == D]
                expected = [d_study.format_cell(c[key]['mean'], c[key]['se'], key) for c in [base] + row]
                assert line == f'| {D} | ' + ' | '.join(expected) + ' |' and ' ± ' in line
                expected = [d_study.format_paired(c[key]['paired_degradation'], key) for c in row]
                assert paired_line == f'| {D} | ' + ' | '.join(expected) + ' |'
            row = [c for c in cells if c['study'] in ('base', study_name) and c['D'] == 16]
            row.sort(key=lambda c: c['study'] != 'base')
            assert versus[2] == '| 16 | ' + ' | '.join(d_study.format_paired(c[key]['paired_vs_diffusion'], key) for c in row) + ' |'
    assert d_study.format_paired(dict(mean=1.5, se=0.5, beyond_2se=True), 'fd') == '**1.5 ± 0.5**'
    assert d_study.format_paired(dict(mean=0.5, se=0.5, beyond_2se=False), 'share') == '0.50 ± 0.50'


@pytest.mark.slow
def test_figure_is_a_png(study):
    path = study['outdir'] / 'd_study.png'
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 10000
    with PIL.Image.open(path) as image:
        assert image.size[0] > image.size[1] > 300  # Three panels side by side, two rows.


@pytest.mark.slow
def test_scores_match_fid_calc_and_an_independent_count(study):
    outdir = study['outdir']
    results = json.loads((outdir / 'results.json').read_text())
    cell = next(c for c in results['cells'] if c['study'] == 'steps' and c['setting'] == 2 and c['D'] == 16)
    folder = outdir / 'runs' / 'D16-seed0' / 'steps' / 'steps_2'
    record = evaluation.calc(images=str(folder), ref=results['scoring']['ref'], num=10, detector=results['scoring']['detector'],
                      workers=0, device='cpu')
    assert cell['fd']['per_seed'][0] == pytest.approx(record['metrics']['fid'], rel=1e-9)
    # Recognised: top class probability >= 0.8 and equal to the digit the sample was generated for.
    net = torch.jit.load(results['scoring']['detector'])
    count = 0
    for c in range(10):
        image = np.array(PIL.Image.open(folder / str(c) / f"{c:06d}.png"))
        probs = net(torch.from_numpy(image)[None, None].expand(1, 3, -1, -1).contiguous())[0]
        count += int(probs.max() >= 0.8 and int(probs.argmax()) == c)
    assert cell['share']['per_seed'][0] == count / 10


@pytest.mark.slow
def test_real_floor_and_reference_are_the_heldout_digits(study):
    # The reference statistics: the mean and covariance of the detector's features of the quarter of
    # the digits it never saw (split_heldout, seed 0). results.json's floor: 10 random sets of those
    # digits, each with one image of every digit (as a 10-sample cell has), scored by fid.py's Frechet
    # distance; recomputed here from the real images' features, the labels in dataset.json, and draws of our own.
    results = json.loads((study['outdir'] / 'results.json').read_text())
    scoring = results['scoring']
    assert scoring['real_num'] == 10 and scoring['real_balanced'] is True and scoring['real_draws'] == d_study.REAL_DRAWS
    assert scoring['reference'] == 'heldout'
    det = detector_lib.load_detector(scoring['detector'], device=torch.device('cpu'))
    real = evaluation.calculate_inception_stats(str(study['data']), det, with_features=True, num_workers=0, progress=False)
    labels_json = dict(json.loads(zipfile.ZipFile(study['data']).read('dataset.json'))['labels'])
    all_labels = np.array([labels_json[name] for name in evaluation.ImageFiles(str(study['data'])).names])
    _train, heldout = digits_detector.split_heldout(all_labels, seed=0)
    features, labels = real['features'][heldout].astype(np.float64), all_labels[heldout]
    ref = evaluation.load_ref_stats(scoring['ref'])
    np.testing.assert_allclose(ref['mu'], features.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ref['sigma'], np.cov(features, rowvar=False), rtol=1e-6, atol=1e-9)
    with np.load(scoring['ref']) as npz:
        assert int(npz['num_images']) == len(heldout) == 450 and 'held out' in str(npz['subset'])
    values = []
    for seed in range(d_study.REAL_DRAWS):
        rnd = np.random.RandomState(seed)
        idx = np.concatenate([rnd.choice(np.flatnonzero(labels == c), 1, replace=False) for c in range(10)])
        assert sorted(labels[idx]) == list(range(10))
        subset = features[idx]
        values.append(evaluation.calculate_fid_from_inception_stats(subset.mean(0), np.cov(subset, rowvar=False), ref['mu'], ref['sigma']))
    assert scoring['real_fd'] == pytest.approx(statistics.mean(values), rel=1e-9)
    assert scoring['real_fd_sd'] == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert f"{scoring['real_fd']:.3g} ± " in (study['outdir'] / 'results.md').read_text()


def test_class_balance_lowers_the_floor_on_unbalanced_data():
    # Features that are the class (one-hot, plus noise), 90% of the real images of class 0, and a
    # reference of balanced classes: balanced draws land near the reference, plain random draws do not.
    rnd = np.random.RandomState(0)
    labels = np.concatenate([np.zeros(900, dtype=np.int64), np.repeat(np.arange(1, 10), 12)])
    features = np.eye(10)[labels] * 5 + rnd.randn(len(labels), 10) * 0.1
    balanced_pop = np.eye(10)[np.repeat(np.arange(10), 100)] * 5 + rnd.randn(1000, 10) * 0.1
    ref = dict(mu=balanced_pop.mean(0), sigma=np.cov(balanced_pop, rowvar=False))
    balanced = d_study.real_floor(features, labels, ref, num_samples=100, num_classes=10)
    plain = d_study.real_floor(features, None, ref, num_samples=100, num_classes=10)
    assert balanced['real_num'] == plain['real_num'] == 100 and balanced['real_balanced'] and not plain['real_balanced']
    assert balanced['real_fd'] < 1 < 10 < plain['real_fd']


@pytest.mark.slow
def test_rerun_does_no_work(study, monkeypatch, tmp_path):
    # On a copy of the study folder: a rerun rewrites results.json, which other tests read.
    outdir = tmp_path / 'study'
    shutil.copytree(study['outdir'], outdir)
    before = json.loads((outdir / 'results.json').read_text())
    written = ('results.json', 'results.md', 'd_study.png')
    mtimes = {p: p.stat().st_mtime_ns for p in outdir.rglob('*') if p.is_file() and p.name not in written}
    monkeypatch.chdir(study['root'])
    calls = Calls(monkeypatch)
    after = d_study.run_d_study(str(outdir), **TINY_STUDY)
    assert calls.counts == dict(train=0, generate=0, score=0)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    def same_place(cells):  # Run directories are named by path: the copy's and the original's are one.
        return json.loads(json.dumps(cells).replace(str(outdir), str(study['outdir'])))
    assert same_place(after['cells']) == same_place(before['cells']) and after['timing']['this_run'] == {}
    assert after['timing']['all_runs'] == before['timing']['all_runs']  # Kept from the first run (timing.jsonl).


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(study, monkeypatch):
    monkeypatch.chdir(study['root'])
    calls = Calls(monkeypatch)
    with pytest.raises(ValueError, match='holds a D study with other settings .*kimg: 1.0 -> 2.0'):
        d_study.run_d_study(str(study['outdir']), **dict(TINY_STUDY, kimg=2))
    assert calls.counts == dict(train=0, generate=0, score=0)

#----------------------------------------------------------------------------
# The oracle arm.

@pytest.mark.slow
def test_oracle_arm_in_results_against_an_independent_computation(study):
    """results.json's 'oracle': 2 D x (base, eps 1, kappa 0.5) cells of 20 samples; their scores
    recomputed here from the PNGs: FD-digits by fid.py's calc, the recognised share by the detector,
    'moved' by nearest subset points computed in numpy, all paired by seed."""
    results = json.loads((study['outdir'] / 'results.json').read_text())
    arm = results['oracle']
    assert arm['settings']['D'] == [1, 'inf'] and arm['settings']['strengths'] == dict(additive=[1], sigma=[0.5])
    assert arm['settings']['num_samples'] == 20 and arm['settings']['num_steps'] == 2
    cells = {(c['D'], c['error'], c['strength']): c for c in arm['cells']}
    assert set(cells) == {(D, e, s) for D in (1, 'inf') for e, s in (('none', 0), ('additive', 1), ('sigma', 0.5))}
    images, labels = digits_detector.load_digits_dataset(str(study['data']))
    subset = np.asarray(arm['settings']['subset_indices'])
    _train, heldout = digits_detector.split_heldout(labels, seed=0)
    assert len(subset) == 100 and not set(subset) & set(heldout) and np.array_equal(labels[subset], np.repeat(np.arange(10), 10))
    points = images[subset].reshape(100, -1).astype(np.float64) / 127.5 - 1
    net = torch.jit.load(results['scoring']['detector'])

    def read(cell):  # seeds 2c, 2c + 1 for digit c: the nearest point of the digit, and recognised or not.
        nearest, ok = [], []
        for seed in range(20):
            c = seed // 2
            image = np.array(PIL.Image.open(os.path.join(cell['folder'], str(c), f'{seed:06d}.png')))
            x = image.reshape(-1).astype(np.float64) / 127.5 - 1
            nearest.append(10 * c + int(np.argmin(((points[10 * c:10 * c + 10] - x) ** 2).sum(1))))
            with torch.no_grad():
                probs = net(torch.from_numpy(image)[None, None].expand(1, 3, -1, -1).contiguous())[0]
            ok.append(float(probs.max() >= 0.8 and int(probs.argmax()) == c))
        return np.array(nearest), np.array(ok)

    data = {key: read(cell) for key, cell in cells.items()}
    for (D, error, strength), cell in cells.items():
        nearest, ok = data[(D, error, strength)]
        base_nearest, base_ok = data[(D, 'none', 0)]
        record = evaluation.calc(images=cell['folder'], ref=results['scoring']['ref'], num=20, detector=results['scoring']['detector'],
                                 workers=0, device='cpu')
        assert cell['fd']['value'] == pytest.approx(record['metrics']['fid'], rel=1e-6)
        assert cell['share']['value'] == pytest.approx(ok.mean(), abs=1e-12)
        moved = (nearest != base_nearest).astype(float)
        assert cell['moved']['mean'] == pytest.approx(moved.mean(), abs=1e-12)
        assert cell['moved']['se'] == pytest.approx(moved.std(ddof=1) / math.sqrt(20), abs=1e-12)
        assert cell['degradation']['share']['mean'] == pytest.approx((ok - base_ok).mean(), abs=1e-12)
        base_fd = cells[(D, 'none', 0)]['fd']['value']
        assert cell['degradation']['fd']['mean'] == pytest.approx(cell['fd']['value'] - base_fd, abs=1e-9)
        if D == 'inf':
            assert 'vs_diffusion' not in cell
            continue
        other_nearest, other_ok = data[('inf', error, strength)]
        other_base_nearest, other_base_ok = data[('inf', 'none', 0)]
        if error == 'none':
            assert cell['vs_diffusion']['share']['mean'] == pytest.approx((ok - other_ok).mean(), abs=1e-12)
            continue
        difference = moved - (other_nearest != other_base_nearest)
        assert cell['vs_diffusion']['moved']['mean'] == pytest.approx(difference.mean(), abs=1e-12)
        assert cell['vs_diffusion']['moved']['se'] == pytest.approx(difference.std(ddof=1) / math.sqrt(20), abs=1e-12)
        expected = (cell['fd']['value'] - base_fd) - (cells[('inf', error, strength)]['fd']['value'] - cells[('inf', 'none', 0)]['fd']['value'])
        assert cell['vs_diffusion']['fd']['mean'] == pytest.approx(expected, abs=1e-9)
    assert arm['beyond_2se'] == [dict(D=c['D'], error=c['error'], strength=c['strength'], score=k, mean=v['mean'], se=v['se'])
                                 for c in arm['cells'] for k, v in c.get('vs_diffusion', {}).items() if v['beyond_2se']]
    text = (study['outdir'] / 'results.md').read_text()
    assert '## Oracle arm: exact denoisers with a controlled error' in text and '### sigma error: D_hat = D(x; (1 + kappa) * sigma)' in text


def _scores(features, ok, index):
    return oracle_arm.CellScores(seeds=np.arange(len(ok)), features=np.asarray(features, dtype=np.float64), ok=np.asarray(ok, dtype=bool),
                                 index=np.asarray(index), distance=np.zeros(len(ok)))


def test_oracle_statistics_are_paired_by_seed():
    """cell_statistics() on made-up per-sample scores: a cell identical to its base degrades by
    exactly 0 ± 0; paired standard errors are those of the per-seed differences, far below the
    unpaired ones when the cells share most of their samples, and the common bootstrap makes the SE of
    an FD difference of nearly equal cells far below that of independent cells."""
    grid = oracle_arm.OracleGrid(D_list=(4.0, None), strengths=dict(additive=(1.0,), sigma=(0.5,)), num_samples=200, per_class=1)
    rng = np.random.default_rng(0)
    base_features = rng.normal(size=[200, 3])
    ok = rng.random(200) < 0.7
    index = np.repeat(np.arange(10), 20)
    flip = np.zeros(200, dtype=bool)
    flip[:30] = True  # 30 seeds recognised no more; 40 moved to another point.
    moved_index = np.where(np.arange(200) < 40, (index + 1) % 10, index)
    changed = base_features + 0.05 * rng.normal(size=[200, 3])  # Every sample nudged: nearly the same cell.
    scores = {}
    for D in grid.D_list:
        for cell in oracle_arm.cells_of(grid):
            if cell[0] != D:
                continue
            same = cell[1] == 'sigma' or (cell[1] == 'additive' and D is None)
            scores[cell] = (_scores(base_features, ok, index) if cell[1] == 'none' or same else
                            _scores(changed, ok & ~flip, moved_index))
    ref = dict(mu=np.zeros(3), sigma=np.eye(3))
    out = {(c['D'], c['error']): c for c in oracle_arm.cell_statistics(grid, oracle_arm.cells_of(grid), scores, ref, 'unused')}
    for D in (4.0, 'inf'):
        unchanged = out[(D, 'sigma')]
        assert unchanged['moved'] == dict(mean=0.0, se=0.0, n=200, beyond_2se=False)
        assert unchanged['degradation']['fd']['mean'] == 0 and unchanged['degradation']['fd']['se'] == 0
        assert unchanged['degradation']['share']['mean'] == 0 and unchanged['degradation']['share']['se'] == 0
    cell = out[(4.0, 'additive')]
    lost = (ok & ~flip).astype(float) - ok
    assert cell['degradation']['share']['mean'] == pytest.approx(lost.mean()) == pytest.approx(-(ok[:30]).sum() / 200)
    assert cell['degradation']['share']['se'] == pytest.approx(lost.std(ddof=1) / math.sqrt(200))
    unpaired_se = math.sqrt(ok.var(ddof=1) / 200 + (ok & ~flip).var(ddof=1) / 200)
    assert cell['degradation']['share']['se'] < unpaired_se / 2
    assert cell['moved']['mean'] == pytest.approx(0.2) and cell['moved']['se'] == pytest.approx(math.sqrt(0.2 * 0.8 * 200 / 199 / 200))
    assert cell['vs_diffusion']['moved']['mean'] == pytest.approx(0.2) and cell['vs_diffusion']['moved']['beyond_2se']
    fd_change = stats.frechet_distance(changed, ref) - stats.frechet_distance(base_features, ref)
    assert cell['degradation']['fd']['mean'] == pytest.approx(fd_change) and cell['vs_diffusion']['fd']['mean'] == pytest.approx(fd_change)
    unpaired_fd_se = math.hypot(cell['fd']['se'], out[(4.0, 'none')]['fd']['se'])  # As if the cells were independent.
    assert 0 < cell['degradation']['fd']['se'] < unpaired_fd_se / 2
    assert out[(4.0, 'none')]['vs_diffusion']['fd'] == dict(mean=0.0, se=0.0, rounds=oracle_arm.BOOTSTRAP_ROUNDS, beyond_2se=False)


def test_oracle_grid_defaults_and_refusals():
    default = oracle_arm.resolve_grid()
    assert default.D_list == (1, 4, 16, 128, 2048, None) and default.num_samples == 1000
    assert default.strengths == dict(additive=(0.1, 0.3, 1, 3), sigma=(-0.5, -0.2, 0.2, 0.5))
    assert len(oracle_arm.cells_of(default)) == 6 * 9
    quick = oracle_arm.resolve_grid(quick=True)
    assert quick.D_list == (1, 16, None) and quick.strengths == dict(additive=(1,), sigma=(0.5,)) and quick.num_samples == 500
    assert oracle_arm.resolve_grid(D_list='inf,4,1').D_list == (1, 4, None)
    for kwargs, message in [(dict(D_list='1,16'), 'include inf'), (dict(eps='0,1'), 'lists 0'), (dict(kappa='-1'), 'kappa > -1'),
                            (dict(eps='-0.1'), 'eps >= 0'), (dict(num_samples=25), 'multiple of the 10 digits')]:
        with pytest.raises(ValueError, match=message):
            oracle_arm.resolve_grid(**kwargs)
    assert d_study.resolve_grid().oracle == default and d_study.resolve_grid(studies='alpha').oracle is None
    assert d_study.resolve_grid(scoring='inception').oracle is None  # Not by default off the digits ...
    with pytest.raises(ValueError, match='runs with the quick start'):
        d_study.resolve_grid(studies='steps,oracle', scoring='inception')  # ... and refused when asked for.


#----------------------------------------------------------------------------
# The digits detector.

@pytest.mark.slow
def test_digits_detector_heldout_accuracy(study):
    """The detector the study trained, measured again here on the held-out digits from its file."""
    info = json.loads((study['outdir'] / 'digits-detector.json').read_text())
    images, labels = digits_detector.load_digits_dataset(str(study['data']))
    _train, heldout = digits_detector.split_heldout(labels, seed=0)
    assert len(heldout) == info['heldout_images'] == 450 and np.bincount(labels[heldout]).min() >= 44
    net = torch.jit.load(str(study['outdir'] / 'digits-detector.pt'))
    x = torch.from_numpy(images[heldout])[:, None].expand(-1, 3, -1, -1).contiguous()
    with torch.no_grad():
        probs = net(x).numpy()
        features = net(x, return_features=True)
    accuracy = float((probs.argmax(axis=1) == labels[heldout]).mean())
    assert accuracy >= 0.95 and accuracy == pytest.approx(info['heldout_accuracy'], abs=1e-12)
    assert features.shape == (450, digits_detector.FEATURES)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert info['heldout_recognised'] >= 0.9 and info['outliers_recognised'] <= 0.02
    assert detector_lib.load_detector(str(study['outdir'] / 'digits-detector.pt')).sha256 == info['sha256']


@pytest.mark.slow
def test_digits_detector_training_is_deterministic(study):
    images, labels = digits_detector.load_digits_dataset(str(study['data']))
    nets = [digits_detector.train_detector(images[:128], labels[:128], seed=3, epochs=1) for _ in range(2)]
    other = digits_detector.train_detector(images[:128], labels[:128], seed=4, epochs=1)
    for (name, a), b, c in zip(nets[0].state_dict().items(), nets[1].state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(nets[0].fc.weight, other.fc.weight)


def test_recognised_rule():
    probs = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.1, 0.05, 0.85], [0.8, 0.2, 0.0]])
    np.testing.assert_array_equal(digits_detector.recognised(probs), [True, False, True, True])
    np.testing.assert_array_equal(digits_detector.recognised(probs, np.array([0, 0, 1, 0])), [True, False, False, True])

#----------------------------------------------------------------------------
# Statistics.

def test_mean_and_se_against_independent_computations():
    mean, se = d_study.mean_and_se([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and se == pytest.approx(math.sqrt(7) / 3)  # sd = sqrt(7/3), / sqrt(3).
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        x = rng.normal(5, 2, n).tolist()
        mean, se = d_study.mean_and_se(x)
        assert mean == pytest.approx(statistics.fmean(x)) and se == pytest.approx(statistics.stdev(x) / math.sqrt(n))
    assert d_study.mean_and_se([0.72]) == (0.72, None) and d_study.mean_and_se([]) == (None, None)
    assert d_study.mean_and_se([0.5, None, 0.7])[0] == pytest.approx(0.6)


def test_bootstrap_se_follows_the_delta_method():
    """Over resamples of n samples, the standard error of a share tends to sqrt(p (1 - p) / n), and
    that of the Frechet distance of features far from the reference mean (offset m along one axis,
    unit covariance) to that of |mean|^2, 2 |m| s / sqrt(n) (the covariance term varies far less)."""
    n, p = 400, 0.3
    ok = np.arange(n) < p * n
    features = np.random.default_rng(1).normal(size=[n, 2]) + [3, 0]
    ref = dict(mu=np.zeros(2), sigma=np.eye(2))
    boot = d_study.bootstrap_se(features, ok, ref, rounds=2000)
    assert boot['share'] == pytest.approx(math.sqrt(p * (1 - p) / n), rel=0.06)
    x = features[:, 0]
    assert boot['fd'] == pytest.approx(2 * abs(x.mean()) * x.std() / math.sqrt(n), rel=0.06)
    assert d_study.bootstrap_se(features, None, ref, rounds=10)['share'] is None


#----------------------------------------------------------------------------
# Choices made from the data, and the Inception path with a stand-in detector.

def test_scoring_and_recipe_follow_the_data():
    assert d_study.choose_scoring(None, d_study.is_digits_like(16, 1, 10)) == 'digits'
    assert d_study.choose_scoring(None, d_study.is_digits_like(32, 3, 10)) == 'inception'  # CIFAR-10.
    assert d_study.choose_scoring(None, d_study.is_digits_like(16, 3, 10)) == 'inception'
    assert d_study.choose_scoring('det.pt', True) == 'file'
    cifar = d_study.train_recipe(32, 10)
    assert cifar['cond'] == 0 and cifar['batch'] == 512 and cifar['arch'] == 'ddpmpp' and cifar['augment'] == 0.12
    digits = d_study.train_recipe(16, 10)
    assert digits['cond'] == 1 and digits['cbase'] == 16 and digits['cres'] == [1, 2, 2] and digits['nblock'] == 2 and 'seed' not in digits
    with pytest.raises(ValueError, match='not for 64x64'):
        d_study.train_recipe(64, 0)
    grid = d_study.resolve_grid(scoring='inception', resolution=32)
    assert grid.num_samples == 10000 and grid.kimg == 200000 and grid.D_list == (16, 2048, None) and grid.seeds == tuple(range(6))
    assert grid.quant_scope == 'published'  # CIFAR-10: the published rule as published.
    quick = d_study.resolve_grid(quick=True)
    assert quick.num_samples == 50 and quick.D_list == (16, None) and quick.kimg == 4 and quick.num_steps == 9
    assert quick.settings == dict(alpha=[0.3], steps=[5, 6], quant=[4]) and quick.quant_scope == 'finest'
    default = d_study.resolve_grid()
    assert default.num_samples == 100 and default.kimg == 8 and default.num_steps == 9 and len(default.seeds) == 6
    assert 6 in default.settings['steps'] and default.num_steps in default.settings['steps']  # 6: where diffusion fails first.
    assert d_study.sample_blocks(4, 0) == [(None, [0, 1, 2, 3], '')]
    assert d_study.sample_blocks(20, 10)[3] == (3, [6, 7], '3')
    with pytest.raises(ValueError, match='multiple of the 10 classes'):
        d_study.sample_blocks(25, 10)


@pytest.mark.slow
def test_inception_path_with_a_stand_in(tmp_path, monkeypatch):
    """Data that is not the digits (16x16 RGB bars, 2 classes) and no --detector: fid.py's default
    detector scores the samples (here a stand-in at the default's place): a Frechet distance, no share."""
    detector = tmp_path / 'standin.pt'
    save_standin_detector(detector)
    monkeypatch.setattr(detector_lib, 'DETECTOR_URL', str(detector))
    images, labels = bars_images(64, seed=2)
    data = write_dataset_zip(tmp_path / 'bars-16x16.zip', images, labels)
    results = d_study.run_d_study(str(tmp_path / 'study'), data=data, D_list=(None,), kimg=1, seeds=(0,), studies='steps',
                                  steps_list=(1,), num_samples=4, device='cpu', train_options=TINY_STUDY_NET, progress=False)
    assert results['scoring']['kind'] == 'inception' and results['scoring']['detector'] == str(detector)
    assert results['metrics'] == ['fd'] and results['recipe']['cond'] == 1
    base, cell = results['cells']
    assert base['study'] == 'base' and cell['study'] == 'steps' and results['scoring']['reference'] == 'all'
    assert cell['fd']['n'] == 1 and cell['fd']['se'] is None and math.isfinite(cell['fd']['mean'])
    row = ' | '.join(d_study.format_cell(c['fd']['mean'], None, 'fd') for c in (base, cell))
    assert '| inf | ' + row + ' |' in (tmp_path / 'study' / 'results.md').read_text()
    assert sorted(os.listdir(tmp_path / 'study' / 'runs' / 'Dinf-seed0' / 'steps' / 'steps_1')) == ['0', '1', 'score.json']

#----------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing written.

def _invoke(*args):
    return CliRunner().invoke(d_study.cmdline, [*args, '--outdir=out', '--device=cpu'])


class NotADetector(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum()


@pytest.mark.parametrize('args, message', [
    (['--studies=alpha,noise'], "Error: Unknown study 'noise'; choose from alpha, steps, quant, oracle."),
    (['--D='], 'Error: The list of D is empty; pass at least one, e.g. --D=16,inf.'),
    (['--D=16,0'], 'Error: --D must be a number >= 1 (the PFGM++ augmentation dimension), or inf for diffusion; got 0.'),
    (['--D=-4,inf'], 'Error: --D must be a number >= 1 (the PFGM++ augmentation dimension), or inf for diffusion; got -4.'),
    (['--train-kimg=0.5'], 'Error: The training budget must be a whole number of kimg >= 1 (train.py counts whole kimg), got 0.5.'),
    (['--bits=1'], "Error: The quant study's settings: '1' must hold bit widths from 2 to 16."),
    (['--detector=missing.pt'], 'Error: --detector missing.pt does not exist; pass a TorchScript or pickle detector file, or leave it out.'),
    (['--oracle-D=1,16'], 'Error: The oracle arm compares every D with diffusion; include inf in --oracle-D.'),
    (['--oracle-eps=0,1'], "Error: --oracle-eps lists 0: every D's base cell is the error-free one; list nonzero strengths only."),
    (['--oracle-kappa=-2'], 'Error: --oracle-kappa: kappa > -1 (and not 0), got -2.'),
    (['--oracle-samples=15'], "Error: The oracle arm's samples per cell must be a multiple of the 10 digits, at least 20; got 15."),
])
def test_bad_input_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke(*args)
    assert result.exit_code == 1 and result.output == message + '\n', result.output
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['text', 'torchscript'])
def test_a_detector_that_is_not_one_is_refused(kind, study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'det.pt'
    if kind == 'text':
        path.write_text('not a network')
        expected = f'Error: {path.name} is neither a TorchScript file (torch.jit.save) nor a pickle'
    else:
        torch.jit.save(torch.jit.script(NotADetector()), str(path))
        expected = f'Error: --detector {path.name} is not a detector for 16x16 images: The detector {path.name} failed'
    result = _invoke(f'--data={study["data"]}', f'--detector={path.name}')
    assert result.exit_code == 1 and result.output.startswith(expected), result.output
    assert len(result.output.splitlines()) == 1 and 'Traceback' not in result.output
    assert sorted(os.listdir(tmp_path)) == ['det.pt']


@pytest.mark.slow
def test_stopped_training_exits_75_and_continues(study, tmp_path, monkeypatch):
    """launch.train() stopped by a signal (status 'stopped', its state saved): one line, exit status 75
    as train.py's, and nothing scored; the study's own train_options may not set what it sets per model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'out').mkdir()
    for name in ('digits-detector.pt', 'digits-detector.json'):  # Reused: same data, seed and version.
        (tmp_path / 'out' / name).write_bytes((study['outdir'] / name).read_bytes())
    monkeypatch.setattr(launch, 'train', lambda **kwargs: dict(status='stopped', run_dir='', cur_nimg=0))
    result = CliRunner().invoke(d_study.cmdline, ['--outdir=out', '--device=cpu', f'--data={study["data"]}', '--D=inf', '--train-seeds=0',
                                                  '--train-kimg=1', '--studies=steps', '--steps-list=1', '--num-samples=10'])
    assert result.exit_code == 75 and result.output.startswith('D study in out: 1 models'), result.output
    assert result.output.splitlines()[1:] == ['Error: Training of Dinf-seed0 was stopped after saving its state; '
                                              'run the same command again to continue.']
    assert not (tmp_path / 'out' / 'results.json').exists()
    with pytest.raises(ValueError, match='train_options may not set seed'):
        d_study.run_d_study(str(tmp_path / 'out'), data=str(study['data']), train_options=dict(seed=3), device='cpu')
