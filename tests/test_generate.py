"""generate.py and the study scripts: per-seed streams (EDM's order), determinism across batch sizes
and processes, run-directory mode, legacy checkpoints through the CLI, D flags, and every user error."""

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import generate
import generate_alpha
import generate_quant
import generate_steps
from sampling import generation, provenance, quantization
from sampling import samplers as sampling
from torch_utils import image_io
from training import checkpoint

from helpers import (
    WEIGHTS,
    OracleNet,
    check_lands_on_data,
    edm2_legacy_net,
    import_edm2_module,
    import_legacy_module,
    legacy_net,
    make_data,
    save_state,
    tiny_net,
    write_edm2_pickle,
    write_edm_pickle,
    write_pfgmpp_state,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = ['--steps=4', '--device=cpu']  # Tiny runs: 4 Heun steps (7 network evaluations).
PNGS_0_2 = ['000000.png', '000001.png', '000002.png']


@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    """A tiny D=2048 network snapshot in our format."""
    path = tmp_path_factory.mktemp('net') / checkpoint.snapshot_name(100)
    checkpoint.save_network_snapshot(str(path), tiny_net(D=2048.0), kimg=100)
    return str(path)


def read_pngs(folder, seeds, subdirs=False):
    return np.stack([image_io.load_image(generation.image_path(str(folder), s, subdirs)).numpy() for s in seeds]).astype(np.int16)


def assert_nearly_equal(a, b):
    """Equal up to the rounding of batched float kernels: no pixel more than 2 levels apart, nearly all equal."""
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.max() <= 2 and (diff == 0).mean() >= 0.99, f'max diff {diff.max()}, equal {(diff == 0).mean():.4f}'


def run_cli(main, args):
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def run_script(args, env_extra=None, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

#----------------------------------------------------------------------------
# Lists and D.

@pytest.mark.parametrize('args,expected', [
    ([], 2048.0),                                 # The checkpoint's D.
    (['--D=2048'], 2048.0),                       # Agreeing flags are accepted.
    (['--pfgmpp=1', '--aug_dim=2048'], 2048.0),   # So are the published spellings.
    (['--D=inf'], 'trained for D=2048'),          # Contradicting ones are refused, ...
    (['--aug-dim=128'], 'trained for D=2048'),
    (['--pfgmpp=0'], 'trained for D=2048'),
    (['--D=64', '--aug_dim=128'], 'disagree'),    # ... and so are flags that contradict each other.
])
def test_the_network_keeps_its_checkpoints_D(tmp_path, snapshot, args, expected):
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "out"}', '--seeds=0', '--steps=2',
                                        '--device=cpu', *args])
    if isinstance(expected, str):
        assert code == 1 and expected in out and 'Traceback' not in out, out
        assert not (tmp_path / 'out').exists()
    else:
        assert code == 0, out
        assert json.loads((tmp_path / 'out' / provenance.MANIFEST_NAME).read_text())['D'] == expected

#----------------------------------------------------------------------------
# Per-seed streams.

def test_d_infinity_follows_edm_stream():
    # EDM's generate.py, written out: one generator per seed; latents, then the class label, then
    # the sampler's noise, each drawn per seed; the sampler starts from latents * t_0 in float64.
    net = OracleNet(make_data(), None, WEIGHTS, label_dim=3)
    seeds = [3, 7, 11, 2 ** 32 + 5]
    settings = dict(num_steps=5, S_churn=10)
    ours = generation.sample_batch(net, seeds, settings)
    ours_labels = net.seen_labels[0]

    gens = [torch.Generator().manual_seed(s % (1 << 32)) for s in seeds]
    latents = torch.stack([torch.randn([2, 4, 4], generator=g) for g in gens])
    labels = torch.eye(3)[torch.stack([torch.randint(3, size=[], generator=g) for g in gens])]
    randn_like = lambda x: torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])
    net.seen_labels.clear()
    edm = sampling.edm_sampler(net, latents.to(torch.float64) * torch.tensor(80.0, dtype=torch.float64), labels,
                               randn_like=randn_like, **settings)
    assert torch.equal(ours, edm) and torch.equal(ours_labels, labels)


def test_sample_batch_with_the_oracle_lands_on_data():
    data = make_data()
    net = OracleNet(data, 16, WEIGHTS)
    x = generation.sample_batch(net, range(400))
    check_lands_on_data(x, data, WEIGHTS)
    one = generation.sample_batch(net, [123])
    assert torch.equal(one[0], x[123])  # A sample depends only on its seed.


def test_class_idx_and_ablation_sampler():
    net = OracleNet(make_data(), None, WEIGHTS, label_dim=4)
    generation.sample_batch(net, [0, 1], dict(num_steps=3, solver='euler', discretization='vp'), class_idx=2)
    assert all(torch.equal(labels, torch.eye(4)[[2, 2]]) for labels in net.seen_labels)
    with pytest.raises(ValueError, match='out of range'):
        generation.sample_batch(net, [0], class_idx=4)
    with pytest.raises(ValueError, match='unconditional'):
        generation.sample_batch(OracleNet(make_data()), [0], class_idx=0)
    with pytest.raises(ValueError, match='Unknown sampler settings'):
        generation.sample_batch(net, [0], dict(steps=3))

#----------------------------------------------------------------------------
# Determinism across batch sizes and processes.

def test_images_do_not_depend_on_the_batch_size(tmp_path):
    net = tiny_net(D=16.0, label_dim=2)
    seeds = list(range(7))
    for batch in (7, 1, 3):
        written = generation.generate_images(net, seeds, str(tmp_path / f'b{batch}'), batch_size=batch,
                                           sampler_kwargs=dict(num_steps=4, S_churn=5), progress=False)
        assert sorted(written) == seeds
    reference = read_pngs(tmp_path / 'b7', seeds)
    assert reference.shape == (7, 3, 8, 8) and len(np.unique(reference)) > 50
    for batch in (1, 3):
        assert_nearly_equal(read_pngs(tmp_path / f'b{batch}', seeds), reference)


def test_cli_batch_sizes_subdirs_grid_and_trajectory(tmp_path, snapshot):
    seeds = [998, 999, 1000, 1001, 1002]
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "a"}', '--seeds=998-1002', '--batch=5',
                                        '--subdirs', f'--grid={tmp_path / "grid.png"}', f'--trajectory={tmp_path / "traj.gif"}', *FAST])
    assert code == 0, out
    assert sorted(os.listdir(tmp_path / 'a')) == ['000000', '001000', 'generate.json']
    assert sorted(os.listdir(tmp_path / 'a' / '001000')) == ['001000.png', '001001.png', '001002.png']
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "b"}', '--seeds=998-1002', '--batch=2', '--subdirs', *FAST])
    assert code == 0, out
    assert_nearly_equal(read_pngs(tmp_path / 'b', seeds, True), read_pngs(tmp_path / 'a', seeds, True))

    # 5 images, 3 columns: 2 rows of 8x8 images upscaled 11x (3 * 8 * 11 >= 256 > 3 * 8 * 10), 2-pixel gaps.
    grid = image_io.load_image(str(tmp_path / 'grid.png'))
    assert grid.shape == (3, 2 * 88 + 2, 3 * 88 + 2 * 2)
    first = image_io.load_image(generation.image_path(str(tmp_path / 'a'), 998, True)).numpy()
    assert np.array_equal(grid[:, :88, :88].numpy(), np.kron(first, np.ones([1, 11, 11], dtype=np.uint8)))
    import PIL.Image
    with PIL.Image.open(tmp_path / 'traj.gif') as gif:
        # x_0 ... x_4 of the first batch's 5 images as one row, upscaled 7x (5 * 8 * 7 >= 256 > 5 * 8 * 6).
        assert gif.n_frames == 5 and gif.size == (5 * 56 + 4 * 2, 56)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, snapshot):
    seeds = list(range(6))
    generation.generate_images(checkpoint.load_network(snapshot)[0], seeds, str(tmp_path / 'one'),
                             batch_size=6, sampler_kwargs=dict(num_steps=4), progress=False)
    torchrun = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    result = run_script([torchrun, '--standalone', '--nproc_per_node=2', 'generate.py', f'--network={snapshot}',
                         f'--outdir={tmp_path / "two"}', '--seeds=0-5', '--batch=2', *FAST])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / 'two')) == [f'{s:06d}.png' for s in seeds] + ['generate.json']
    assert_nearly_equal(read_pngs(tmp_path / 'two', seeds), read_pngs(tmp_path / 'one', seeds))

#----------------------------------------------------------------------------
# D flags and user errors.

def test_d_flags_agreeing_and_contradicting(tmp_path, snapshot):
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "ok"}', '--seeds=0', '--pfgmpp=1', '--aug_dim=2048', *FAST])
    assert code == 0, out
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "bad"}', '--seeds=0', '--pfgmpp=0', *FAST])
    assert code == 1 and 'trained for D=2048' in out and 'Traceback' not in out
    assert not os.path.exists(tmp_path / 'bad')


@pytest.mark.parametrize('args,code,message', [
    (['--network={missing}'], 1, 'does not exist'),
    (['--network={text}'], 1, 'neither'),
    (['--network={snapshot}', '--class=0'], 1, 'unconditional'),
    (['--network={snapshot}', '--seeds=5-1'], 2, 'empty'),
    (['--network={snapshot}', '--grid={outdir}/grid.png'], 1, 'inside --outdir'),
    (['--network={snapshot}', '--ckpt=10'], 1, 'training run'),
    (['--network={snapshot}', '--solver=euler', '--steps=1'], 1, 'num_steps'),
    (['--network={snapshot}', '--sigma_min=5', '--sigma_max=1'], 1, 'sigma_min < sigma_max'),
    (['--network={snapshot}', '--D=0.5'], 2, '>= 1'),
    (['--network={snapshot}', '--device=tpu'], 2, 'tpu'),
    (['--outdir={missing}'], 1, 'not a folder'),
])
def test_user_errors_are_one_clear_sentence(tmp_path, snapshot, args, code, message):
    (tmp_path / 'text.pt').write_text('hello')
    fill = dict(missing=tmp_path / 'missing.pt', text=tmp_path / 'text.pt', snapshot=snapshot, outdir=tmp_path / 'out')
    args = [a.format(**fill) for a in args]
    for default in (f'--outdir={tmp_path / "out"}', '--seeds=0', '--device=cpu'):
        if not any(a.split('=')[0] == default.split('=')[0] for a in args):
            args.append(default)
    exit_code, out = run_cli(generate.main, args)
    assert exit_code == code and message in out and 'Traceback' not in out, out
    assert not os.path.exists(tmp_path / 'out' / '000000.png')

#----------------------------------------------------------------------------
# Run-directory mode.

def test_run_directory_mode(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    for kimg in (0, 100, 200):
        checkpoint.save_network_snapshot(str(run / checkpoint.snapshot_name(kimg)), tiny_net(D=2048.0, seed=kimg), kimg=kimg)
    save_state(run / checkpoint.state_name(200), tiny_net(D=2048.0, seed=999), 200)  # The snapshot wins.
    save_state(run / checkpoint.state_name(300), tiny_net(D=2048.0, seed=300), 300)  # The only file for 300.
    args = [f'--outdir={run}', '--seeds=0-2', '--ckpt=100', '--pfgmpp=1', '--aug_dim=2048', *FAST]
    code, out = run_cli(generate.main, args)
    assert code == 0, out
    assert sorted(p for p in os.listdir(run) if p.startswith('ckpt_')) == ['ckpt_000100', 'ckpt_000200', 'ckpt_000300']
    assert all(sorted(os.listdir(run / f'ckpt_{k:06d}')) == PNGS_0_2 + ['generate.json'] for k in (100, 200, 300))

    for kimg, name in [(100, checkpoint.snapshot_name(100)), (200, checkpoint.snapshot_name(200)), (300, checkpoint.state_name(300))]:
        manifest = provenance.read_manifest(str(run / f'ckpt_{kimg:06d}'))
        assert manifest['network'] == str(run / name) and manifest['seeds'] == dict(ranges='0-2', count=3)
        assert manifest['network_sha256'] == hashlib.sha256((run / name).read_bytes()).hexdigest()

    # The same seeds through --network give the same images, and the snapshot was preferred.
    code, out = run_cli(generate.main, [f'--network={run / checkpoint.snapshot_name(200)}', f'--outdir={tmp_path / "single"}', '--seeds=0-2', *FAST])
    assert code == 0, out
    assert_nearly_equal(read_pngs(run / 'ckpt_000200', range(3)), read_pngs(tmp_path / 'single', range(3)))

    # A rerun skips complete folders and completes a partial one; --end_ckpt limits the range.
    os.remove(run / 'ckpt_000100' / '000001.png')
    before = os.stat(run / 'ckpt_000100' / '000000.png').st_mtime_ns
    code, out = run_cli(generate.main, args + ['--end_ckpt=250'])
    assert code == 0, out
    assert 'ckpt_000200: 0 images written, 3 skipped; it already holds all 3 images' in out and 'training-state-000300' not in out
    assert 'ckpt_000100: 1 image written, 2 skipped (already there).' in out
    assert sorted(os.listdir(run / 'ckpt_000100')) == PNGS_0_2 + ['generate.json']
    assert os.stat(run / 'ckpt_000100' / '000000.png').st_mtime_ns == before

    code, out = run_cli(generate.main, [f'--outdir={run}', '--seeds=0', '--ckpt=5000', '--device=cpu'])
    assert code == 1 and 'holds no network-snapshot' in out

#----------------------------------------------------------------------------
# Legacy checkpoints through the CLI.

def test_legacy_pickles_need_allow_pickle(tmp_path, monkeypatch):
    module = import_legacy_module(tmp_path / 'mods', monkeypatch)
    legacy = legacy_net(module, pfgmpp=True, D=2048)
    write_edm_pickle(tmp_path / 'network-snapshot-000010.pkl', legacy_net(module), module)
    write_pfgmpp_state(tmp_path / 'training-state-000010.pt', legacy)
    for name in ('network-snapshot-000010.pkl', 'training-state-000010.pt'):
        code, out = run_cli(generate.main, [f'--network={tmp_path / name}', f'--outdir={tmp_path / "refused"}', '--seeds=0', *FAST])
        assert code == 1 and '--allow-pickle' in out and 'executes' in out and 'Traceback' not in out, out
    assert not os.path.exists(tmp_path / 'refused')

    # A fresh process, where the legacy module is not importable: only the source in the file can build it.
    result = run_script([sys.executable, 'generate.py', f'--network={tmp_path / "training-state-000010.pt"}', '--allow-pickle',
                         f'--outdir={tmp_path / "legacy"}', '--seeds=0-2', *FAST])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'D=2048' in result.stdout  # Read from PFGM++'s recorded constructor arguments.
    legacy.D = 2048.0  # The published class keeps D in its arguments; sampling reads net.D.
    generation.generate_images(legacy, range(3), str(tmp_path / 'original'), sampler_kwargs=dict(num_steps=4), progress=False)
    assert_nearly_equal(read_pngs(tmp_path / 'legacy', range(3)), read_pngs(tmp_path / 'original', range(3)))

    # An EDM file records no D: the flags choose it.
    code, out = run_cli(generate.main, [f'--network={tmp_path / "network-snapshot-000010.pkl"}', '--allow-pickle', '--pfgmpp=1',
                                        '--aug_dim=64', f'--outdir={tmp_path / "edm"}', '--seeds=0', *FAST])
    assert code == 0 and 'D=64' in out, out

#----------------------------------------------------------------------------
# PFGM++'s published training-state-*.pkl in run-directory mode.

def test_run_directory_with_pfgmpp_training_state_pkl(tmp_path, monkeypatch):
    module = import_legacy_module(tmp_path / 'mods', monkeypatch)
    legacy = legacy_net(module, seed=3, pfgmpp=True, D=2048)
    run = tmp_path / 'run'
    run.mkdir()
    write_pfgmpp_state(run / 'training-state-000010.pkl', legacy)
    assert checkpoint.find_checkpoints(str(run), 'network') == [(10, str(run / 'training-state-000010.pkl'))]

    args = [f'--outdir={run}', '--seeds=0-2', *FAST]
    code, out = run_cli(generate.main, args)
    assert code == 1 and '--allow-pickle' in out and 'training-state-000010.pkl' in out and 'Traceback' not in out, out
    assert len([line for line in out.splitlines() if line.startswith('Error:')]) == 1
    assert not os.path.exists(run / 'ckpt_000010')

    code, out = run_cli(generate.main, args + ['--allow-pickle'])
    assert code == 0, out
    legacy.D = 2048.0  # The published class keeps D in its arguments; sampling reads net.D.
    generation.generate_images(legacy, range(3), str(tmp_path / 'original'), sampler_kwargs=dict(num_steps=4), progress=False)
    assert_nearly_equal(read_pngs(run / 'ckpt_000010', range(3)), read_pngs(tmp_path / 'original', range(3)))
    manifest = provenance.read_manifest(str(run / 'ckpt_000010'))
    assert manifest['network'] == str(run / 'training-state-000010.pkl') and manifest['D'] == 2048.0
    assert manifest['network_sha256'] == hashlib.sha256((run / 'training-state-000010.pkl').read_bytes()).hexdigest()

    # The .pkl is the last choice for its kimg: our .pt training state wins.
    save_state(run / checkpoint.state_name(10), tiny_net(D=2048.0), 10)
    assert checkpoint.find_checkpoints(str(run), 'network') == [(10, str(run / checkpoint.state_name(10)))]

#----------------------------------------------------------------------------
# Provenance: generate.json.

def expected_code_version():
    """git's view of this checkout, asked independently of provenance.code_version()."""
    try:
        head = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=30)
    except OSError:
        return None, None
    if head.returncode != 0:
        return None, None
    status = subprocess.run(['git', '-C', str(ROOT), 'status', '--porcelain', '--untracked-files=no'], capture_output=True, text=True, timeout=30)
    return head.stdout.strip(), bool(status.stdout.strip())


def test_manifest_fields(tmp_path, snapshot):
    outdir = tmp_path / 'out'
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={outdir}', '--seeds=5,0-2,9', '--batch=2',
                                        '--S_churn=2', '--sigma_max=40', '--channels-last=1', *FAST])
    assert code == 0, out
    with open(outdir / 'generate.json', encoding='utf-8') as f:
        manifest = json.load(f)
    assert manifest['format'] == 'pfgmpp-generate-manifest' and manifest['version'] == 1
    assert manifest['network'] == snapshot
    assert manifest['network_sha256'] == hashlib.sha256(Path(snapshot).read_bytes()).hexdigest()
    assert manifest['D'] == 2048.0 and manifest['class_idx'] is None and manifest['subdirs'] is False
    # EDM's sampler: the CLI's values, and edm_sampler's own defaults for what the CLI leaves out.
    assert manifest['sampler'] == dict(sampler='edm', num_steps=4, sigma_min=0.002, sigma_max=40.0, rho=7.0, S_churn=2.0,
                                       S_min=0.0, S_max='inf', S_noise=1.0, alpha=0)
    assert manifest['precision'] == 'fp32' and manifest['study'] is None
    assert manifest['seeds'] == dict(ranges='0-2,5,9', count=5)
    [run] = manifest['runs']
    assert run['seeds'] == manifest['seeds'] and run['network'] == snapshot
    assert run['channels_last'] is True and run['compile'] is False and run['batch_size'] == 2 and run['processes'] == 1
    assert run['torch'] == torch.__version__
    assert (run['code']['git_commit'], run['code']['git_dirty']) == expected_code_version()
    assert re.fullmatch(r'[0-9a-f]{64}', run['code']['source_sha256'])
    assert sorted(os.listdir(outdir)) == [f'{s:06d}.png' for s in (0, 1, 2, 5, 9)] + ['generate.json']


def test_code_version_without_git(monkeypatch):
    with_git = provenance.code_version.__wrapped__()
    monkeypatch.setenv('PATH', '')  # No git to run.
    without = provenance.code_version.__wrapped__()
    assert without['git_commit'] is None and without['git_dirty'] is None
    assert without['source_sha256'] == with_git['source_sha256']
    # The source hash covers the code's bytes: recompute it over the same files.
    digest = hashlib.sha256()
    files = [p for p in ROOT.glob('*.py')] + [p for pkg in ('dnnlib', 'torch_utils', 'training') for p in (ROOT / pkg).rglob('*.py')]
    for name in sorted(p.relative_to(ROOT).as_posix() for p in files):
        digest.update(name.encode() + b'\0' + hashlib.sha256((ROOT / name).read_bytes()).hexdigest().encode() + b'\n')
    assert without['source_sha256'] == digest.hexdigest()


def test_sampler_settings_after_defaults():
    net = tiny_net(sigma_min=0.01, sigma_max=50)
    settings = sampling.sampler_settings(net, dict(num_steps=6, sigma_min=None))
    assert settings == dict(sampler='edm', num_steps=6, sigma_min=0.01, sigma_max=50.0, rho=7, S_churn=0, S_min=0,
                            S_max=float('inf'), S_noise=1, alpha=0)  # EDM's 0.002..80 clamped to the network's range.
    settings = sampling.sampler_settings(tiny_net(), dict(num_steps=6, discretization='ve', solver='euler'))
    assert settings['sampler'] == 'ablation' and (settings['sigma_min'], settings['sigma_max']) == (0.02, 100.0)  # EDM's VE range.
    assert (settings['solver'], settings['schedule'], settings['scaling']) == ('euler', 'linear', 'none')
    with pytest.raises(ValueError, match='num_steps'):
        sampling.sampler_settings(tiny_net(), dict(num_steps=1, solver='euler'))


def test_manifest_merges_seeds_and_refuses_mixing(tmp_path, snapshot):
    outdir = tmp_path / 'out'
    common = [f'--network={snapshot}', f'--outdir={outdir}', *FAST]
    code, out = run_cli(generate.main, [*common, '--seeds=0-1'])
    assert code == 0, out
    code, out = run_cli(generate.main, [*common, '--seeds=2-3', '--batch=1'])  # Same configuration, more seeds.
    assert code == 0, out
    manifest = provenance.read_manifest(str(outdir))
    assert manifest['seeds'] == dict(ranges='0-3', count=4)
    assert [r['seeds']['ranges'] for r in manifest['runs']] == ['0-1', '2-3'] and manifest['runs'][1]['batch_size'] == 1

    before = (outdir / 'generate.json').read_bytes()
    for args, difference in [(['--steps=5'], 'sampler.num_steps: 4 -> 5'), (['--S_churn=1'], 'sampler.S_churn: 0.0 -> 1.0'),
                             (['--precision=bf16'], 'precision: fp32 -> bf16'), (['--subdirs'], 'subdirs: False -> True')]:
        code, out = run_cli(generate.main, [*common, '--seeds=8', *args])
        errors = [line for line in out.splitlines() if line.startswith('Error:')]
        assert code == 1 and len(errors) == 1 and 'another configuration' in errors[0] and difference in errors[0], out
        assert 'Traceback' not in out
    assert (outdir / 'generate.json').read_bytes() == before
    assert not generation.missing_seeds(str(outdir), range(4)) and generation.missing_seeds(str(outdir), [8], False) == [8]
    assert not os.path.exists(generation.image_path(str(outdir), 8, True))

    # Another network file is another configuration, even with the same settings.
    other = tmp_path / checkpoint.snapshot_name(5)
    checkpoint.save_network_snapshot(str(other), tiny_net(D=2048.0, seed=5), kimg=5)
    code, out = run_cli(generate.main, [f'--network={other}', f'--outdir={outdir}', '--seeds=8', *FAST])
    assert code == 1 and 'network_sha256' in out, out

    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'generate.json').write_text('{"not": "a manifest"}')
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "bad"}', '--seeds=0', *FAST])
    assert code == 1 and 'is not a generate.py manifest' in out and not os.path.exists(tmp_path / 'bad' / '000000.png'), out


def test_complete_folders_are_checked_too(tmp_path, snapshot):
    # A rerun over complete folders with other settings must not pass as the new setting's images.
    common = [f'--network={snapshot}', '--seeds=0-1', '--device=cpu', f'--outdir={tmp_path / "alpha"}', '--alphas=0']
    code, out = run_cli(generate_alpha.main, [*common, '--steps=3'])
    assert code == 0, out
    code, out = run_cli(generate_alpha.main, [*common, '--steps=3'])
    assert code == 0 and 'already holds all 2 images' in out, out
    code, out = run_cli(generate_alpha.main, [*common, '--steps=4'])
    assert code == 1 and 'sampler.num_steps: 3 -> 4' in out, out

    run = tmp_path / 'run'
    run.mkdir()
    checkpoint.save_network_snapshot(str(run / checkpoint.snapshot_name(0)), tiny_net(D=2048.0), kimg=0)
    code, out = run_cli(generate.main, [f'--outdir={run}', '--seeds=0', '--steps=3', '--device=cpu'])
    assert code == 0, out
    code, out = run_cli(generate.main, [f'--outdir={run}', '--seeds=0', '--steps=4', '--device=cpu'])
    assert code == 1 and 'sampler.num_steps: 3 -> 4' in out, out

#----------------------------------------------------------------------------
# The studies.

def test_study_scripts_write_one_folder_per_setting(tmp_path, snapshot):
    common = [f'--network={snapshot}', '--seeds=0-1', '--device=cpu']
    code, out = run_cli(generate_alpha.main, [*common, f'--outdir={tmp_path / "alpha"}', '--alphas=0,0.1', '--steps=3'])
    assert code == 0, out
    code, out = run_cli(generate_steps.main, [*common, f'--outdir={tmp_path / "steps"}', '--steps-list=2,3'])
    assert code == 0, out
    code, out = run_cli(generate_quant.main, [*common, f'--outdir={tmp_path / "quant"}', '--bits=8,4', '--steps=3'])
    assert code == 0, out
    for folder in ['alpha/alpha_0', 'alpha/alpha_0.1', 'steps/steps_2', 'steps/steps_3', 'quant/bits_8', 'quant/bits_4']:
        assert sorted(os.listdir(tmp_path / folder)) == ['000000.png', '000001.png', 'generate.json'], folder

    # alpha = 0 and 3 steps is plain generation with 3 steps; noise injection changes the images.
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "plain"}', '--steps=3'])
    assert code == 0, out
    plain = read_pngs(tmp_path / 'plain', [0, 1])
    assert np.array_equal(read_pngs(tmp_path / 'alpha/alpha_0', [0, 1]), plain)
    assert np.array_equal(read_pngs(tmp_path / 'steps/steps_3', [0, 1]), plain)
    assert not np.array_equal(read_pngs(tmp_path / 'alpha/alpha_0.1', [0, 1]), plain)

    # Each folder's manifest names its setting; the sampler settings include the override.
    for folder, study, alpha in [('alpha/alpha_0.1', dict(folder='alpha_0.1', overrides=dict(alpha=0.1), transform=None), 0.1),
                                 ('steps/steps_2', dict(folder='steps_2', overrides=dict(num_steps=2), transform=None), 0),
                                 ('quant/bits_4', dict(folder='bits_4', overrides={}, transform="quantize_weights(bits=4, scope='published')"), 0)]:
        manifest = provenance.read_manifest(str(tmp_path / folder))
        assert manifest['study'] == study and manifest['sampler']['alpha'] == alpha, folder
        assert manifest['network_sha256'] == hashlib.sha256(Path(snapshot).read_bytes()).hexdigest()
    assert provenance.read_manifest(str(tmp_path / 'steps/steps_2'))['sampler']['num_steps'] == 2

    # A rerun skips complete folders; bad lists are usage errors.
    code, out = run_cli(generate_quant.main, [*common, f'--outdir={tmp_path / "quant"}', '--bits=8', '--steps=3'])
    assert code == 0 and 'bits_8: 0 images written, 2 skipped' in out, out
    for main, arg in [(generate_alpha.main, '--alphas=-0.1'), (generate_steps.main, '--steps-list=0'), (generate_quant.main, '--bits=0')]:
        code, out = run_cli(main, [*common, f'--outdir={tmp_path / "bad"}', arg])
        assert code == 2 and 'Traceback' not in out, out


def test_quantize_weights():
    # --scope=all, the min-max grid: every float parameter; more in tests/test_generate_quant.py.
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8):
        q = quantization.quantize_tensor_min_max(w, bits)
        step = float(w.max() - w.min()) / (2 ** bits - 1)
        assert len(torch.unique(q)) <= 2 ** bits and float((q - w).abs().max()) <= step / 2 + 1e-6
        assert float(q.min()) == pytest.approx(float(w.min())) and float(q.max()) == pytest.approx(float(w.max()))
    assert torch.equal(quantization.quantize_tensor_min_max(torch.full([4], 0.3), 4), torch.full([4], 0.3))

    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    quantized = quantization.quantize_weights(net, 4, scope='all')
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # The original is untouched.
    assert all(len(torch.unique(p)) <= 16 for p in quantized.parameters())
    # The default, the published rule, leaves biases, GroupNorm and the mapping network exact.
    published = dict(quantization.quantize_weights(net, 4).named_parameters())
    assert all(torch.equal(published[name], p) for name, p in net.named_parameters() if 'bias' in name or 'norm' in name or 'map' in name)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# Precision and speed options.

def test_precision_options_stay_close_to_fp32(tmp_path, snapshot):
    # The snapshot's network has random weights throughout, so bf16 rounding reaches the images.
    # PSNR of the 8-bit PNGs against fp32, measured: bf16 + channels-last 54.0 dB, fp16 64.2 dB. Each
    # must lie within 6 dB of its measurement: an ignored --precision gives identical images (infinite
    # PSNR), and one precision taken for the other lands in the other's band.
    common = [f'--network={snapshot}', '--seeds=0-7', '--batch=8', *FAST]
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "fp32"}'])
    assert code == 0, out
    ref = read_pngs(tmp_path / 'fp32', range(8)).astype(np.float64)
    for name, args, measured in [('bf16', ['--precision=bf16', '--channels-last=1'], 54.0), ('fp16', ['--precision=fp16'], 64.2)]:
        code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / name}', *args])
        assert code == 0, out
        mse = np.mean((read_pngs(tmp_path / name, range(8)) - ref) ** 2)
        assert mse > 0 and abs(10 * np.log10(255 ** 2 / mse) - measured) <= 6, (name, mse)
    code, out = run_cli(generate_alpha.main, [*common, f'--outdir={tmp_path / "alpha"}', '--alphas=0', '--precision=bf16'])
    assert code == 0, out
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "bad"}', '--precision=fp64'])
    assert code == 2 and 'fp64' in out and not os.path.exists(tmp_path / 'bad')

#----------------------------------------------------------------------------
# Guidance and Restart through generate.py.

@pytest.fixture(scope='module')
def cond_snapshots(tmp_path_factory):
    """A tiny class-conditional D=16 network, a guide for it (another seed), and a guide of another D."""
    folder = tmp_path_factory.mktemp('cond')
    paths = {}
    for name, net in [('main', tiny_net(D=16.0, label_dim=3)), ('guide', tiny_net(D=16.0, label_dim=3, seed=5)),
                      ('other_D', tiny_net(D=128.0, label_dim=3, seed=5))]:
        paths[name] = str(folder / f'{name}.pt')
        checkpoint.save_network_snapshot(paths[name], net, kimg=1)
    return paths


@pytest.mark.parametrize('args', [
    ['--guidance=2.5'],                                              # Classifier-free guidance, one batched forward.
    ['--guidance=2', '--guidance-interval=0.3,5'],                   # ... only inside the interval.
    ['--guidance=1.7', '--gnet={guide}'],                            # Autoguidance.
    ['--restart=2:1:0.5:1.5', '--S_churn=2'],                        # Restart (per-seed jumps) with churn.
    ['--restart=3:2:0.4:2', '--guidance=2', '--gnet={guide}'],       # Guided Restart.
])
def test_guided_and_restart_images_do_not_depend_on_the_batch(tmp_path, cond_snapshots, args):
    args = [a.format(**cond_snapshots) for a in args]
    seeds = list(range(5))
    for batch in (5, 2):
        code, out = run_cli(generate.main, [f'--network={cond_snapshots["main"]}', f'--outdir={tmp_path / f"b{batch}"}',
                                            '--seeds=0-4', f'--batch={batch}', *FAST, *args])
        assert code == 0, out
    assert_nearly_equal(read_pngs(tmp_path / 'b2', seeds), read_pngs(tmp_path / 'b5', seeds))
    plain = tmp_path / 'plain'
    assert run_cli(generate.main, [f'--network={cond_snapshots["main"]}', f'--outdir={plain}', '--seeds=0-4', *FAST])[0] == 0
    assert np.abs(read_pngs(plain, seeds) - read_pngs(tmp_path / 'b5', seeds)).max() > 2  # It changed the images.
    manifest = provenance.read_manifest(str(tmp_path / 'b5'))
    if any(a.startswith('--guidance=') for a in args):
        assert manifest['guidance']['weight'] == float(args[[a.startswith('--guidance=') for a in args].index(True)].split('=')[1])
    if any(a.startswith('--restart') for a in args):
        assert manifest['sampler']['sampler'] == 'restart' and manifest['sampler']['restart']


def test_guidance_one_is_the_plain_sampler_and_costs_are_printed(tmp_path, cond_snapshots):
    common = [f'--network={cond_snapshots["main"]}', '--seeds=0-3', *FAST]
    assert run_cli(generate.main, [*common, f'--outdir={tmp_path / "plain"}'])[0] == 0
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "one"}', '--guidance=1'])
    assert code == 0 and 'Guidance:' not in out
    assert np.array_equal(read_pngs(tmp_path / 'one', range(4)), read_pngs(tmp_path / 'plain', range(4)))
    # 4 Heun steps: 7 calls; with guidance in every call, 14 evaluations per image.
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "cfg"}', '--guidance=2'])
    assert code == 0 and 'Guidance: 14 network evaluations per image (7 of the sampler\'s 7 calls guided)' in out, out
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "restart"}', '--restart=3:2:0.4:2'])
    assert code == 0 and '15 network evaluations per image' in out, out  # 2*4 - 1 + 2*2*(3 - 1).


def test_restart_preset_brings_its_published_settings(tmp_path, cond_snapshots):
    kwargs = generation.sampler_kwargs_from(dict(num_steps=18, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
                                               restart='cifar10-pfgmpp-d2048'))
    assert kwargs == dict(num_steps=18, rho=7, S_churn=0, S_min=0.01, S_max=1, S_noise=1, restart='cifar10-pfgmpp-d2048',
                          restart_gamma=0.05)
    assert sampling.restart_nfe(18, kwargs['restart']) == 43
    explicit = generation.sampler_kwargs_from(dict(num_steps=12, S_min=0.5, restart='cifar10-pfgmpp-d2048'))
    assert explicit['num_steps'] == 12 and explicit['S_min'] == 0.5 and explicit['S_max'] == 1  # What the user set wins.


@pytest.mark.parametrize('args,message', [
    (['--network={uncond}', '--guidance=2'], 'unconditional'),
    (['--network={main}', '--guidance=2', '--gnet={other_D}'], 'D=128'),
    (['--network={main}', '--guidance=2', '--guidance-interval=3,1'], 'sigma_lo < sigma_hi'),
    (['--network={main}', '--restart=2:1:0.5:150'], 'noise range'),
    (['--network={main}', '--restart=2:1:0.001:1'], 'noise range'),
    (['--network={main}', '--restart=nonsense'], 'preset'),
    (['--network={main}', '--restart=2:1:0.5:1', '--solver=euler'], 'Restart sampling runs EDM'),
    (['--network={main}', '--restart-gamma=0.05'], 'restart intervals'),
])
def test_bad_guidance_and_restart_get_one_line(tmp_path, cond_snapshots, snapshot, args, message):
    paths = dict(cond_snapshots, uncond=snapshot)
    code, out = run_cli(generate.main, [a.format(**paths) for a in args] + [f'--outdir={tmp_path / "out"}', '--seeds=0', *FAST])
    assert code != 0 and message in out and 'Traceback' not in out, out
    assert len([line for line in out.splitlines() if line.startswith('Error')]) == 1
    assert not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------
# Resuming: a rerun samples only the missing seeds, and generate.json says what is done.

def test_single_network_rerun_samples_only_missing_seeds(tmp_path, snapshot):
    outdir = tmp_path / 'out'
    common = [f'--network={snapshot}', f'--outdir={outdir}', '--seeds=0-5', '--batch=6', *FAST]
    code, out = run_cli(generate.main, common)
    assert code == 0 and f'{outdir}: 6 images written, 0 skipped (already there).' in out, out
    first = read_pngs(outdir, range(6))
    for seed in (1, 4):
        os.remove(generation.image_path(str(outdir), seed))
    kept = {seed: os.stat(generation.image_path(str(outdir), seed)).st_mtime_ns for seed in (0, 2, 3, 5)}
    code, out = run_cli(generate.main, common)
    assert code == 0 and f'{outdir}: 2 images written, 4 skipped (already there).' in out, out
    assert all(os.stat(generation.image_path(str(outdir), seed)).st_mtime_ns == ns for seed, ns in kept.items())
    assert_nearly_equal(read_pngs(outdir, range(6)), first)  # The missing seeds' images, sampled in a smaller batch.
    manifest = provenance.read_manifest(str(outdir))
    assert manifest['seeds'] == manifest['requested'] == dict(ranges='0-5', count=6) and manifest['complete'] is True
    assert [run['seeds']['ranges'] for run in manifest['runs']] == ['0-5', '1,4']

    # A complete folder: nothing sampled, the manifest untouched, one line.
    before = (outdir / 'generate.json').read_bytes()
    code, out = run_cli(generate.main, common)
    assert code == 0 and f'{outdir}: 0 images written, 6 skipped; it already holds all 6 images' in out, out
    assert (outdir / 'generate.json').read_bytes() == before


def interrupt_after(monkeypatch, num_batches):
    """Make generation.sample_batch raise KeyboardInterrupt (Ctrl-C) after num_batches batches."""
    calls, sample = [], generation.sample_batch

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > num_batches:
            raise KeyboardInterrupt
        return sample(*args, **kwargs)
    monkeypatch.setattr(generation, 'sample_batch', interrupted)


def test_interrupted_folder_is_told_from_a_complete_one_and_completed(tmp_path, snapshot, monkeypatch):
    outdir = tmp_path / 'out'
    common = [f'--network={snapshot}', f'--outdir={outdir}', '--seeds=0-5', '--batch=2', *FAST]
    interrupt_after(monkeypatch, 2)
    code, out = run_cli(generate.main, common)
    assert code != 0
    manifest = provenance.read_manifest(str(outdir))
    assert manifest['seeds'] == dict(ranges='0-3', count=4) and manifest['requested'] == dict(ranges='0-5', count=6)
    assert manifest['complete'] is False and not provenance.is_complete(manifest)
    assert generation.missing_seeds(str(outdir), range(6)) == [4, 5]

    monkeypatch.undo()
    code, out = run_cli(generate.main, common)
    assert code == 0 and f'{outdir}: 2 images written, 4 skipped (already there).' in out, out
    manifest = provenance.read_manifest(str(outdir))
    assert manifest['seeds'] == manifest['requested'] == dict(ranges='0-5', count=6) and manifest['complete'] is True
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "whole"}', '--seeds=0-5', '--batch=2', *FAST])
    assert code == 0, out
    assert np.array_equal(read_pngs(outdir, range(6)), read_pngs(tmp_path / 'whole', range(6)))  # The same batches.


def test_claim_folder_keeps_seeds_of_earlier_runs_and_finishes_a_stale_manifest(tmp_path):
    net, outdir = tiny_net(D=16.0), tmp_path / 'out'
    kwargs = dict(sampler_kwargs=dict(num_steps=2), progress=False, skip_existing=True)
    generation.generate_images(net, [0, 1], str(outdir), **kwargs)
    manifest = provenance.read_manifest(str(outdir))
    # As if a run of seeds 0-3 had been stopped after writing images 2 and 3 but before recording them.
    provenance.write_manifest(str(outdir), dict(manifest, requested=provenance.seeds_entry(range(4)), complete=False))
    for seed in (2, 3):
        shutil.copy(generation.image_path(str(outdir), 0), generation.image_path(str(outdir), seed))
    assert generation.generate_images(net, [0, 1], str(outdir), **kwargs) == []
    manifest = provenance.read_manifest(str(outdir))
    assert manifest['seeds'] == manifest['requested'] == dict(ranges='0-3', count=4) and manifest['complete'] is True
    # Seeds requested earlier and still missing keep the folder incomplete until a run asks for them.
    provenance.write_manifest(str(outdir), dict(manifest, requested=provenance.seeds_entry(range(6)), complete=False))
    generation.generate_images(net, [6], str(outdir), **kwargs)
    manifest = provenance.read_manifest(str(outdir))
    assert manifest['seeds']['ranges'] == '0-3,6' and manifest['requested']['ranges'] == '0-6' and manifest['complete'] is False
    generation.generate_images(net, [4, 5], str(outdir), **kwargs)
    assert provenance.read_manifest(str(outdir))['complete'] is True

#----------------------------------------------------------------------------
# --grid from the images, and output paths checked before anything is sampled.

def test_grid_is_written_from_existing_images_without_sampling(tmp_path, snapshot, monkeypatch):
    common = [f'--network={snapshot}', f'--outdir={tmp_path / "out"}', '--seeds=0-3', *FAST]
    assert run_cli(generate.main, common)[0] == 0
    monkeypatch.setattr(generation, 'sample_batch', lambda *args, **kwargs: pytest.fail('sampled a complete folder'))
    code, out = run_cli(generate.main, [*common, f'--grid={tmp_path / "grids" / "grid.png"}'])
    assert code == 0 and '0 images written, 4 skipped' in out, out
    grid = image_io.load_image(str(tmp_path / 'grids' / 'grid.png'))
    first = image_io.load_image(generation.image_path(str(tmp_path / 'out'), 0)).numpy()
    assert np.array_equal(grid[:, :first.shape[1] * 16, :first.shape[2] * 16].numpy()[:, ::16, ::16], first)


@pytest.mark.parametrize('option,where,message', [
    ('--grid', '{file}/grid.png', 'Cannot create the folder of --grid'),  # A parent that cannot be created.
    ('--grid', '{folder}', '--grid {folder} is a folder'),                 # A folder.
    ('--grid', '/proc/grid.png', 'Cannot write --grid'),                   # A place nobody can write to, root included.
    ('--trajectory', '{folder}', '--trajectory {folder} is a folder'),
])
def test_unwritable_grid_is_refused_before_sampling(tmp_path, snapshot, monkeypatch, option, where, message):
    if where.startswith('/proc') and not os.path.isdir('/proc'):
        pytest.skip('needs Linux /proc')
    (tmp_path / 'file').write_text('x')
    (tmp_path / 'folder').mkdir()
    paths = dict(file=tmp_path / 'file', folder=tmp_path / 'folder')
    path, message = where.format(**paths), message.format(**paths)
    monkeypatch.setattr(generation, 'sample_batch', lambda *args, **kwargs: pytest.fail('sampled before checking the path'))
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "out"}', '--seeds=0', f'{option}={path}', *FAST])
    errors = [line for line in out.splitlines() if line.startswith('Error')]
    assert code == 1 and len(errors) == 1 and message in errors[0] and 'Traceback' not in out, out
    assert not (tmp_path / 'out').exists()


def test_outdir_that_is_a_file_is_refused_in_one_line(tmp_path, snapshot):
    target = tmp_path / 'out.png'
    target.write_bytes(b'not a folder')
    for main, extra in [(generate.main, FAST), (generate_steps.main, ['--steps-list=2', '--device=cpu'])]:
        code, out = run_cli(main, [f'--network={snapshot}', f'--outdir={target}', '--seeds=0', *extra])
        errors = [line for line in out.splitlines() if line.startswith('Error')]
        assert code == 1 and len(errors) == 1 and f'--outdir={target} is a file' in errors[0], out
        assert 'generate.json' not in out and 'Traceback' not in out
    assert target.read_bytes() == b'not a folder' and os.listdir(tmp_path) == ['out.png']
    with pytest.raises(ValueError, match='is a file, not a folder'):
        generation.generate_images(tiny_net(), [0], str(target), sampler_kwargs=dict(num_steps=2), progress=False)

#----------------------------------------------------------------------------
# Guidance: the start line, the label-dropout warning and --guidance-steps.

def test_start_line_states_the_guided_cost(tmp_path, cond_snapshots):
    common = [f'--network={cond_snapshots["main"]}', '--seeds=0', *FAST]
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "plain"}'])
    assert code == 0 and ', 7 network evaluations per image...' in out, out
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "cfg"}', '--guidance=2', '--guidance-interval=0.3,5'])
    assert code == 0 and '7 to 14 network evaluations per image (a guided call costs two' in out and 'without guidance' not in out, out
    assert re.search(r'Guidance: \d+ network evaluations per image', out)


@pytest.fixture(scope='module')
def dropout_snapshots(tmp_path_factory):
    """Class-conditional D=16 snapshots whose training options record cond_drop 0, 0.1, or nothing."""
    folder = tmp_path_factory.mktemp('dropout')
    paths = {}
    for name, extra in [('no_drop', dict(training_options=dict(cond_drop=0.0, cond=True))),
                        ('drop', dict(training_options=dict(cond_drop=0.1, cond=True))), ('unknown', {})]:
        paths[name] = str(folder / f'{name}.pt')
        checkpoint.save_network_snapshot(paths[name], tiny_net(D=16.0, label_dim=3), kimg=1, **extra)
    return paths


@pytest.mark.parametrize('network,args,warns', [
    ('no_drop', ['--guidance=2'], True),                    # Classifier-free guidance without label dropout.
    ('no_drop', ['--guidance=1'], False),                   # No guidance.
    ('no_drop', ['--guidance=2', '--gnet={drop}'], False),  # A guide network: the zero labels are not used.
    ('drop', ['--guidance=2'], False),                      # Trained with label dropout.
    ('unknown', ['--guidance=2'], False),                   # Options not recorded: nothing to say.
])
def test_guidance_warns_when_the_unconditional_branch_was_never_trained(tmp_path, dropout_snapshots, network, args, warns):
    args = [a.format(**dropout_snapshots) for a in args]
    code, out = run_cli(generate.main, [f'--network={dropout_snapshots[network]}', f'--outdir={tmp_path / "out"}', '--seeds=0', *FAST, *args])
    assert code == 0 and 'Traceback' not in out, out
    lines = [line for line in out.splitlines() if 'without label dropout' in line]
    assert len(lines) == (1 if warns else 0), out
    if warns:
        assert lines[0].startswith('Warning:') and '--cond-drop' in lines[0]


def test_label_dropout_warning_in_run_directory_and_study_modes(tmp_path, dropout_snapshots):
    run = tmp_path / 'run'
    run.mkdir()
    for kimg in (1, 2):
        shutil.copy(dropout_snapshots['no_drop'], run / checkpoint.snapshot_name(kimg))
    code, out = run_cli(generate.main, [f'--outdir={run}', '--seeds=0', '--guidance=2', *FAST])
    assert code == 0 and out.count('without label dropout') == 1, out  # Once for the run.
    code, out = run_cli(generate_alpha.main, [f'--network={dropout_snapshots["no_drop"]}', f'--outdir={tmp_path / "alpha"}',
                                              '--seeds=0', '--alphas=0,0.1', '--guidance=2', *FAST])
    assert code == 0 and out.count('without label dropout') == 1, out


def test_guidance_steps_give_the_images_of_the_same_noise_interval(tmp_path, cond_snapshots):
    common = [f'--network={cond_snapshots["main"]}', '--seeds=0-3', '--guidance=2.5', '--steps=6', '--device=cpu']
    net = checkpoint.load_network(cond_snapshots['main'])[0]
    t = sampling.sigma_steps(net, 'edm', num_steps=6).tolist()
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "steps"}', '--guidance-steps=1,3'])
    # Heun evaluates t_1, t_2, t_3 twice each (step i's Euler step, step i - 1's correction): 6 guided calls.
    assert code == 0 and "Guidance: 17 network evaluations per image (6 of the sampler's 11 calls guided)" in out, out
    # Steps 1..3 are the noise levels t_1..t_3: any interval holding them and no other level (here
    # with borders on the levels t_4 and t_1 themselves) selects the same evaluations.
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "sigma"}', f'--guidance-interval={t[4]!r},{t[1]!r}'])
    assert code == 0, out
    assert np.array_equal(read_pngs(tmp_path / 'steps', range(4)), read_pngs(tmp_path / 'sigma', range(4)))
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "wider"}', '--guidance-steps=1,4'])
    assert code == 0 and not np.array_equal(read_pngs(tmp_path / 'wider', range(4)), read_pngs(tmp_path / 'steps', range(4)))
    guidance_record = provenance.read_manifest(str(tmp_path / 'steps'))['guidance']
    assert guidance_record['steps'] == [1, 3] and guidance_record['interval'] is None and guidance_record['weight'] == 2.5
    # The record is part of the configuration: other steps into the same folder are refused.
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "steps"}', '--guidance-steps=0,3'])
    assert code == 1 and 'guidance.steps: [1, 3] -> [0, 3]' in out, out


@pytest.mark.parametrize('main,args,code,message', [
    (generate.main, ['--guidance-steps=1,3', '--guidance-interval=0.3,5'], 1, '--guidance-interval and --guidance-steps'),
    (generate.main, ['--guidance-steps=3,1'], 2, 'first <= last'),
    (generate.main, ['--guidance-steps=1'], 2, 'FIRST,LAST'),
    (generate.main, ['--guidance-steps=1-3'], 2, 'FIRST,LAST'),
    (generate.main, ['--guidance-steps=0,4'], 1, 'sampler has 4 steps'),
    (generate_steps.main, ['--guidance-steps=0,4', '--steps-list=6,4'], 1, 'sampler has 4 steps'),
])
def test_bad_guidance_steps_get_one_line_before_sampling(tmp_path, cond_snapshots, main, args, code, message):
    extra = FAST if main is generate.main else ['--device=cpu']
    exit_code, out = run_cli(main, [f'--network={cond_snapshots["main"]}', f'--outdir={tmp_path / "out"}', '--seeds=0',
                                    '--guidance=2', *extra, *args])
    assert exit_code == code and message in out and 'Traceback' not in out, out
    assert len([line for line in out.splitlines() if line.startswith('Error')]) == 1
    assert not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------
# EDM2's snapshot pickles: generate.py gives the images EDM2's generate_images.py gives for the same
# seeds, plain and autoguided. EDM2's script is written out below and run on EDM2's own objects (the
# pickle as pickle.load() returns it: float16 weights, EDM2's Precond, its encoder).

def edm2_generate_images(pkl, seeds, gnet_pkl=None, guidance=1.0, num_steps=32, sigma_min=0.002, sigma_max=80, rho=7,
                         S_churn=0, S_min=0, S_max=float('inf'), S_noise=1):
    """EDM2's generate_images.py for `seeds` on the CPU, as uint8 [B, C, H, W]: per seed one generator
    (seed mod 2^32) draws the noise [C, H, W], then the class label, then the churn noise of the steps
    that churn; the float32 Heun sampler on EDM's schedule, guided by ref.lerp(D, w); the encoder decodes."""
    with open(pkl, 'rb') as f:
        data = pickle.load(f)
    net, encoder = data['ema'], data['encoder']
    gnet = None
    if guidance != 1:
        with open(gnet_pkl, 'rb') as f:
            gnet = pickle.load(f)['ema']
    gens = [torch.Generator('cpu').manual_seed(int(seed) % (1 << 32)) for seed in seeds]
    noise = torch.stack([torch.randn([net.img_channels, net.img_resolution, net.img_resolution], generator=g) for g in gens])
    labels = torch.eye(net.label_dim)[torch.stack([torch.randint(net.label_dim, size=[], generator=g) for g in gens])] if net.label_dim else None
    randn_like = lambda x: torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])

    def denoise(x, t):
        Dx = net(x, t, labels).to(torch.float32)
        return Dx if guidance == 1 else gnet(x, t, labels).to(torch.float32).lerp(Dx, guidance)

    step_indices = torch.arange(num_steps, dtype=torch.float32)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    x_next = noise.to(torch.float32) * t_steps[0]
    with torch.no_grad():
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            x_cur = x_next
            if S_churn > 0 and S_min <= t_cur <= S_max:
                gamma = min(S_churn / num_steps, np.sqrt(2) - 1)
                t_hat = t_cur + gamma * t_cur
                x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
            else:
                t_hat, x_hat = t_cur, x_cur
            d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
            x_next = x_hat + (t_next - t_hat) * d_cur
            if i < num_steps - 1:
                d_prime = (x_next - denoise(x_next, t_next)) / t_next
                x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        return encoder.decode(x_next).numpy().astype(np.int16)


@pytest.fixture
def edm2_pickles(tmp_path, monkeypatch):
    """EDM2 snapshots as EDM2's training loop writes them: a class-conditional main network, a smaller
    and differently trained one to guide it (autoguidance), and an unconditional one."""
    module = import_edm2_module(tmp_path / 'mods', monkeypatch)
    paths = dict(main=tmp_path / 'edm2-main.pkl', guide=tmp_path / 'edm2-guide.pkl', uncond=tmp_path / 'edm2-uncond.pkl')
    write_edm2_pickle(paths['main'], edm2_legacy_net(module, seed=1, label_dim=3), module)
    write_edm2_pickle(paths['guide'], edm2_legacy_net(module, seed=2, label_dim=3, model_channels=8, channels_per_head=8, gains=0.2), module)
    write_edm2_pickle(paths['uncond'], edm2_legacy_net(module, seed=3), module)
    return {key: str(path) for key, path in paths.items()}


SEEDS_EDM2 = [16, 17, 18, 19, 2 ** 32 + 3]  # EDM2's default seeds, and one beyond 2^32.


@pytest.mark.parametrize('case,args,kwargs', [
    ('main', [], {}),                                                                   # EDM2's defaults: 32 steps, 0.002 to 80, rho 7.
    ('uncond', ['--steps=12', '--sigma-max=40', '--rho=5'], dict(num_steps=12, sigma_max=40, rho=5)),
    ('main', ['--steps=8', '--S-churn=20', '--S-min=0.05', '--S-max=10'], dict(num_steps=8, S_churn=20, S_min=0.05, S_max=10)),
    ('main', ['--guidance=2.2', 'GUIDE'], dict(guidance=2.2)),                          # Autoguidance.
])
def test_edm2_pickles_give_edm2s_images(tmp_path, edm2_pickles, case, args, kwargs):
    args = [f'--gnet={edm2_pickles["guide"]}' if a == 'GUIDE' else a for a in args]
    steps = [] if any(a.startswith('--steps') for a in args) else ['--steps=32']
    code, out = run_cli(generate.main, [f'--network={edm2_pickles[case]}', '--allow-pickle', f'--outdir={tmp_path / "ours"}',
                                        f'--seeds={",".join(map(str, SEEDS_EDM2))}', '--sampler-dtype=float32', '--device=cpu',
                                        *steps, *args])
    assert code == 0, out
    ours = read_pngs(tmp_path / 'ours', SEEDS_EDM2)
    theirs = edm2_generate_images(edm2_pickles[case], SEEDS_EDM2, gnet_pkl=edm2_pickles['guide'], **kwargs)
    assert np.array_equal(ours, theirs) and len(np.unique(theirs)) > 50


def test_edm2_guidance_changes_the_images(tmp_path, edm2_pickles):
    # The guided images are not the plain ones (the test above would pass for a guide that did nothing).
    plain = edm2_generate_images(edm2_pickles['main'], SEEDS_EDM2, num_steps=8)
    guided = edm2_generate_images(edm2_pickles['main'], SEEDS_EDM2, gnet_pkl=edm2_pickles['guide'], guidance=2.2, num_steps=8)
    assert np.abs(plain - guided).mean() > 1
