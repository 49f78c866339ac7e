"""generate.py and the study scripts: per-seed streams (EDM's order), determinism across batch sizes
and processes, run-directory mode, legacy checkpoints through the CLI, D flags, and every user error."""

import os
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
from test_checkpoint import (import_legacy_module, legacy_net, save_state, tiny_net, write_edm_pickle,
                             write_pfgmpp_state)
from test_sampling import WEIGHTS, OracleNet, check_lands_on_data, make_data
from torch_utils import images as image_io
from training import checkpoint, sampling

ROOT = Path(__file__).resolve().parents[1]
FAST = ['--steps=4', '--device=cpu']  # Tiny runs: 4 Heun steps (7 network evaluations).


@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    """A tiny D=2048 network snapshot in our format."""
    path = tmp_path_factory.mktemp('net') / checkpoint.snapshot_name(100)
    checkpoint.save_network_snapshot(str(path), tiny_net(D=2048.0), kimg=100)
    return str(path)


def read_pngs(folder, seeds, subdirs=False):
    return np.stack([image_io.load_image(generate.image_path(str(folder), s, subdirs)).numpy() for s in seeds]).astype(np.int16)


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

def test_parse_int_list():
    assert generate.parse_int_list('0-3,7,10-11') == [0, 1, 2, 3, 7, 10, 11]
    assert generate.parse_int_list('5') == [5] and generate.parse_int_list('2,2,1') == [2, 1]
    for bad in ['', 'a', '3-1', '-2', '1,,2', '1.5']:
        with pytest.raises(ValueError):
            generate.parse_int_list(bad)
    assert generate.parse_float_list('0,0.05,1e-1') == [0, 0.05, 0.1]
    for bad in ['', 'x', 'nan', '1,inf']:
        with pytest.raises(ValueError):
            generate.parse_float_list(bad)


@pytest.mark.parametrize('info,flags,expected', [
    (dict(D=2048.0, D_recorded=True), (None, None), 2048.0),
    (dict(D=2048.0, D_recorded=True), (True, 2048), 2048.0),
    (dict(D=None, D_recorded=True), (False, None), None),
    (dict(D=None, D_recorded=False), (None, None), None),
    (dict(D=None, D_recorded=False), (True, 128), 128.0),
    (dict(D=None, D_recorded=False), (None, 64), 64.0),
    (dict(D=2048.0, D_recorded=True), (False, None), 'trained for D=2048'),
    (dict(D=2048.0, D_recorded=True), (True, 128), 'trained for D=2048'),
    (dict(D=None, D_recorded=True), (True, 128), 'trained for diffusion'),
    (dict(D=None, D_recorded=False), (True, None), 'needs the augmentation dimension'),
    (dict(D=None, D_recorded=False), (False, 128), 'only used with --pfgmpp=1'),
])
def test_resolve_D(info, flags, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            generate.resolve_D(info, *flags)
    else:
        assert generate.resolve_D(info, *flags) == expected

#----------------------------------------------------------------------------
# Per-seed streams.

def test_d_infinity_follows_edm_stream():
    # EDM's generate.py, written out: one generator per seed; latents, then the class label, then
    # the sampler's noise, each drawn per seed; the sampler starts from latents * t_0 in float64.
    net = OracleNet(make_data(), None, WEIGHTS, label_dim=3)
    seeds = [3, 7, 11, 2 ** 32 + 5]
    settings = dict(num_steps=5, S_churn=10)
    ours = generate.sample_batch(net, seeds, None, settings)
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
    x = generate.sample_batch(net, range(400), 16)
    check_lands_on_data(x, data, WEIGHTS)
    one = generate.sample_batch(net, [123], 16)
    assert torch.equal(one[0], x[123])  # A sample depends only on its seed.


def test_class_idx_and_ablation_sampler():
    net = OracleNet(make_data(), None, WEIGHTS, label_dim=4)
    generate.sample_batch(net, [0, 1], None, dict(num_steps=3, solver='euler', discretization='vp'), class_idx=2)
    assert all(torch.equal(labels, torch.eye(4)[[2, 2]]) for labels in net.seen_labels)
    with pytest.raises(ValueError, match='out of range'):
        generate.sample_batch(net, [0], None, class_idx=4)
    with pytest.raises(ValueError, match='unconditional'):
        generate.sample_batch(OracleNet(make_data()), [0], None, class_idx=0)
    with pytest.raises(ValueError, match='Unknown sampler settings'):
        generate.sample_batch(net, [0], None, dict(steps=3))

#----------------------------------------------------------------------------
# Determinism across batch sizes and processes.

def test_images_do_not_depend_on_the_batch_size(tmp_path):
    net = tiny_net(D=16.0, label_dim=2)
    seeds = list(range(7))
    for batch in (7, 1, 3):
        written = generate.generate_images(net, seeds, str(tmp_path / f'b{batch}'), D=16.0, batch_size=batch,
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
    assert sorted(os.listdir(tmp_path / 'a')) == ['000000', '001000']
    assert sorted(os.listdir(tmp_path / 'a' / '001000')) == ['001000.png', '001001.png', '001002.png']
    code, out = run_cli(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "b"}', '--seeds=998-1002', '--batch=2', '--subdirs', *FAST])
    assert code == 0, out
    assert_nearly_equal(read_pngs(tmp_path / 'b', seeds, True), read_pngs(tmp_path / 'a', seeds, True))

    grid = image_io.load_image(str(tmp_path / 'grid.png'))
    assert grid.shape == (3, 2 * 8, 3 * 8)  # 5 images, 3 columns: 2 rows.
    assert torch.equal(grid[:, :8, :8], image_io.load_image(generate.image_path(str(tmp_path / 'a'), 998, True)))
    import PIL.Image
    with PIL.Image.open(tmp_path / 'traj.gif') as gif:
        assert gif.n_frames == 5 and gif.size == (5 * 8, 8)  # x_0 ... x_4 of the first batch's 5 images.


def test_torchrun_two_processes_match_one(tmp_path, snapshot):
    seeds = list(range(6))
    generate.generate_images(checkpoint.load_network(snapshot)[0], seeds, str(tmp_path / 'one'), D=2048.0,
                             batch_size=6, sampler_kwargs=dict(num_steps=4), progress=False)
    torchrun = os.path.join(os.path.dirname(sys.executable), 'torchrun')
    result = run_script([torchrun, '--standalone', '--nproc_per_node=2', 'generate.py', f'--network={snapshot}',
                         f'--outdir={tmp_path / "two"}', '--seeds=0-5', '--batch=2', *FAST])
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(os.listdir(tmp_path / 'two')) == 6
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
    (['--network={snapshot}', '--aug_dim=inf'], 1, 'finite'),
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
    assert all(len(os.listdir(run / f'ckpt_{k:06d}')) == 3 for k in (100, 200, 300))

    # The same seeds through --network give the same images, and the snapshot was preferred.
    code, out = run_cli(generate.main, [f'--network={run / checkpoint.snapshot_name(200)}', f'--outdir={tmp_path / "single"}', '--seeds=0-2', *FAST])
    assert code == 0, out
    assert_nearly_equal(read_pngs(run / 'ckpt_000200', range(3)), read_pngs(tmp_path / 'single', range(3)))

    # A rerun skips complete folders and completes a partial one; --end_ckpt limits the range.
    os.remove(run / 'ckpt_000100' / '000001.png')
    before = os.stat(run / 'ckpt_000100' / '000000.png').st_mtime_ns
    code, out = run_cli(generate.main, args + ['--end_ckpt=250'])
    assert code == 0, out
    assert 'ckpt_000200 already holds all 3 images' in out and 'training-state-000300' not in out
    assert sorted(os.listdir(run / 'ckpt_000100')) == ['000000.png', '000001.png', '000002.png']
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
    generate.generate_images(legacy, range(3), str(tmp_path / 'original'), D=2048.0, sampler_kwargs=dict(num_steps=4), progress=False)
    assert_nearly_equal(read_pngs(tmp_path / 'legacy', range(3)), read_pngs(tmp_path / 'original', range(3)))

    # An EDM file records no D: the flags choose it.
    code, out = run_cli(generate.main, [f'--network={tmp_path / "network-snapshot-000010.pkl"}', '--allow-pickle', '--pfgmpp=1',
                                        '--aug_dim=64', f'--outdir={tmp_path / "edm"}', '--seeds=0', *FAST])
    assert code == 0 and 'D=64' in out, out

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
        assert sorted(os.listdir(tmp_path / folder)) == ['000000.png', '000001.png'], folder

    # alpha = 0 and 3 steps is plain generation with 3 steps; noise injection changes the images.
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "plain"}', '--steps=3'])
    assert code == 0, out
    plain = read_pngs(tmp_path / 'plain', [0, 1])
    assert np.array_equal(read_pngs(tmp_path / 'alpha/alpha_0', [0, 1]), plain)
    assert np.array_equal(read_pngs(tmp_path / 'steps/steps_3', [0, 1]), plain)
    assert not np.array_equal(read_pngs(tmp_path / 'alpha/alpha_0.1', [0, 1]), plain)

    # A rerun skips complete folders; bad lists are usage errors.
    code, out = run_cli(generate_quant.main, [*common, f'--outdir={tmp_path / "quant"}', '--bits=8', '--steps=3'])
    assert code == 0 and 'skipping' in out
    for main, arg in [(generate_alpha.main, '--alphas=-0.1'), (generate_steps.main, '--steps-list=0'), (generate_quant.main, '--bits=0')]:
        code, out = run_cli(main, [*common, f'--outdir={tmp_path / "bad"}', arg])
        assert code == 2 and 'Traceback' not in out, out


def test_quantize_weights():
    # --scope=all, the min-max grid: every float parameter; more in tests/test_generate_quant.py.
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8):
        q = generate_quant.quantize_tensor_min_max(w, bits)
        step = float(w.max() - w.min()) / (2 ** bits - 1)
        assert len(torch.unique(q)) <= 2 ** bits and float((q - w).abs().max()) <= step / 2 + 1e-6
        assert float(q.min()) == pytest.approx(float(w.min())) and float(q.max()) == pytest.approx(float(w.max()))
    assert torch.equal(generate_quant.quantize_tensor_min_max(torch.full([4], 0.3), 4), torch.full([4], 0.3))

    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    quantized = generate_quant.quantize_weights(net, 4, scope='all')
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # The original is untouched.
    assert all(len(torch.unique(p)) <= 16 for p in quantized.parameters())
    # The default, the published rule, leaves biases, GroupNorm and the mapping network exact.
    published = dict(generate_quant.quantize_weights(net, 4).named_parameters())
    assert all(torch.equal(published[name], p) for name, p in net.named_parameters() if 'bias' in name or 'norm' in name or 'map' in name)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# Precision and speed options.

def test_precision_options_stay_close_to_fp32(tmp_path, snapshot):
    # The snapshot's network has random weights throughout, so bf16 rounding reaches the images.
    # PSNR of the 8-bit PNGs against fp32, measured: bf16 + channels-last 54.0 dB, fp16 64.2 dB.
    common = [f'--network={snapshot}', '--seeds=0-7', '--batch=8', *FAST]
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "fp32"}'])
    assert code == 0, out
    ref = read_pngs(tmp_path / 'fp32', range(8)).astype(np.float64)
    for name, args, min_psnr in [('bf16', ['--precision=bf16', '--channels-last=1'], 35), ('fp16', ['--precision=fp16'], 45)]:
        code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / name}', *args])
        assert code == 0, out
        mse = np.mean((read_pngs(tmp_path / name, range(8)) - ref) ** 2)
        assert 10 * np.log10(255 ** 2 / max(mse, 1e-12)) >= min_psnr, (name, mse)
    code, out = run_cli(generate_alpha.main, [*common, f'--outdir={tmp_path / "alpha"}', '--alphas=0', '--precision=bf16'])
    assert code == 0, out
    code, out = run_cli(generate.main, [*common, f'--outdir={tmp_path / "bad"}', '--precision=fp64'])
    assert code == 2 and 'fp64' in out and not os.path.exists(tmp_path / 'bad')
