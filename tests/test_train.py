"""train.py end to end on CPU: a tiny run, torchrun with two ranks (gloo), exact resume, preemption
by SIGTERM, and every bad input."""

import dataclasses
import json
import math
import os
import shutil
import signal
import threading

import pytest
import torch
from click.testing import CliRunner

import dnnlib
import generate
import train
from training import checkpoint, launch, presets, training_loop

from helpers import TINY_TRAIN, assert_same_states, loop_config, read_stats, run_train, train_here


@pytest.fixture(scope='module')
def tiny_run(bars_zip, tmp_path_factory):
    """2 kimg of PFGM++ (D=128) with augmentation in 16-image steps; snapshots and states every tick:
    tick 0 after the first step (16 images), tick 1 at 1,024 images (a kimg later), the end at 2,000."""
    outdir = tmp_path_factory.mktemp('runs')
    args = [f'--outdir={outdir}', '--name=tiny', f'--data={bars_zip}', *TINY_TRAIN, '--D=128',
            '--augment=0.12', '--duration=0.002', '--snap=1', '--dump=1']
    result = train_here(args)
    assert result.exit_code == 0, result.output
    return dict(run_dir=os.path.join(outdir, 'tiny'), args=args, outdir=str(outdir), result=result)


@pytest.mark.slow
def test_tiny_run_writes_everything(tiny_run):
    run_dir = tiny_run['run_dir']
    names = sorted(os.listdir(run_dir))
    for kimg, tag in ((0.016, '000000.016'), (1.024, '000001.024'), (2, '000002')):
        assert f'network-snapshot-{tag}.pt' in names and f'training-state-{tag}.pt' in names
        assert checkpoint.snapshot_name(kimg) == f'network-snapshot-{tag}.pt'
    assert {'log.txt', 'stats.jsonl', 'training_options.json'} <= set(names) and len(names) == 3 + 2 * 3
    assert not [n for n in names if '.tmp' in n]
    with open(os.path.join(run_dir, 'log.txt')) as f:
        log = f.read()
    assert 'tick 0 ' in log and 'tick 2 ' in log and 'sec/kimg' in log and 'loss' in log
    stats = read_stats(run_dir)
    assert [s['kimg'] for s in stats] == [0.016, 1.024, 2.0]  # Tick 0 right after the first step, as EDM's.
    assert all(s['Loss/loss']['num'] > 0 and math.isfinite(s['Loss/loss']['mean']) for s in stats)
    options = json.load(open(os.path.join(run_dir, 'training_options.json')))
    assert options['D'] == 128 and options['pfgmpp'] is None and options['aug_dim'] is None  # One D, resolved.


@pytest.mark.slow
def test_checkpoints_load_without_pickle_and_carry_what_generate_needs(tiny_run):
    snapshot = torch.load(os.path.join(tiny_run['run_dir'], checkpoint.snapshot_name(2)), weights_only=True)
    assert snapshot['format'] == checkpoint.SNAPSHOT_FORMAT and snapshot['D'] == 128.0
    assert (snapshot['img_resolution'], snapshot['img_channels'], snapshot['label_dim']) == (8, 3, 2)
    state = torch.load(os.path.join(tiny_run['run_dir'], checkpoint.state_name(2)), weights_only=True)
    assert state['format'] == checkpoint.STATE_FORMAT and state['cur_nimg'] == -(-2000 // 16) * 16
    net, info = checkpoint.load_network(os.path.join(tiny_run['run_dir'], checkpoint.snapshot_name(2)))
    assert net.D == 128.0 and info['D'] == 128.0
    # The snapshot is the EMA of the training state.
    for k, v in state['ema']['state_dict'].items():
        assert torch.equal(v, snapshot['network']['state_dict'][k])


@pytest.mark.slow
def test_loss_goes_down(tiny_run):
    stats = read_stats(tiny_run['run_dir'])
    assert stats[-1]['Loss/loss']['mean'] < 0.85 * stats[0]['Loss/loss']['mean']


@pytest.mark.slow
def test_resume_is_exact(tiny_run, tmp_path):
    # Continue the run's state at tick 1 in a new run directory; the final states must be identical.
    args = [a for a in tiny_run['args'] if not a.startswith(('--name=', '--outdir='))] + [
        f'--outdir={tmp_path}', '--name=resumed', f'--resume={os.path.join(tiny_run["run_dir"], checkpoint.state_name(1.024))}']
    result = train_here(args)
    assert result.exit_code == 0, result.output
    assert_same_states(os.path.join(tiny_run['run_dir'], checkpoint.state_name(2)), str(tmp_path / 'resumed' / checkpoint.state_name(2)))


@pytest.mark.slow
def test_transfer_starts_from_checkpoint_weights(bars_zip, tiny_run, tmp_path):
    snapshot = os.path.join(tiny_run['run_dir'], checkpoint.snapshot_name(2))
    args = [f'--outdir={tmp_path}', '--name=ft', f'--data={bars_zip}', *TINY_TRAIN, '--D=128',
            '--augment=0.12', f'--transfer={snapshot}', '--duration=0.001', '--snap=1', '--dump=0']
    result = train_here(args)
    assert result.exit_code == 0, result.output
    num_tensors = len(torch.load(snapshot, weights_only=True)['network']['state_dict'])
    assert f'Transfer: copied {num_tensors} tensors from {snapshot}' in result.output
    # A network whose tensors differ in shape is refused before anything is written.
    out = str(tmp_path / 'other')
    bad = invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--cbase=16', '--duration=0.001', f'--transfer={snapshot}'])
    assert_clean_failure(bad, 'does not fit this network', out)


@pytest.mark.slow
def test_torchrun_two_ranks_on_gloo_resume_bitwise(bars_zip, tmp_path):
    # Two ranks with two accumulation rounds each and post-hoc EMA, 1 kimg in ticks of half a kimg: tick 0
    # after the first step (16 images), tick 1 at 528, the end at 1,008; a state at each. Then the same
    # run resumed from its state at 528 images.
    args = [f'--data={bars_zip}', *TINY_TRAIN, '--batch=16', '--batch-gpu=4', '--augment=0', '--tick=0.5',
            '--duration=0.001', '--snap=2', '--dump=1', '--phema=0.05,0.1']
    result = run_train([f'--outdir={tmp_path}', '--name=ddp', *args], torchrun=True)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / 'ddp'
    assert 'Number of ranks:         2' in result.stdout
    assert '8 per rank' not in result.stdout and '4 per rank and round x 2 rounds x 2 ranks' in result.stdout
    # Rank 0 alone writes the snapshots (ticks 0 and 2, and the end), the post-hoc EMA snapshots with them, and the states.
    assert sorted(os.listdir(run_dir)) == sorted([
        checkpoint.snapshot_name(0.016), checkpoint.phema_name(0.016), checkpoint.snapshot_name(1.008), checkpoint.phema_name(1.008),
        checkpoint.state_name(0.016), checkpoint.state_name(0.528), checkpoint.state_name(1.008), 'log.txt', 'stats.jsonl', 'training_options.json'])
    half = torch.load(run_dir / checkpoint.state_name(0.528), weights_only=True)
    assert half['cur_nimg'] == 528 and half['phema']['stds'] == [0.05, 0.1]
    # Statistics gathered from both ranks: each of the 480 images of the last tick contributes 3*8*8 losses.
    assert read_stats(run_dir)[-1]['Loss/loss']['num'] == 480 * 3 * 8 * 8

    resumed = run_train([f'--outdir={tmp_path}', '--name=resumed', *args, f'--resume={run_dir / checkpoint.state_name(0.528)}'],
                        torchrun=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f'Resuming from {run_dir / checkpoint.state_name(0.528)} at 0.528 kimg' in resumed.stdout
    final = checkpoint.state_name(1.008)
    assert_same_states(run_dir / final, tmp_path / 'resumed' / final)
    a, b = (torch.load(d / final, weights_only=True)['phema'] for d in (run_dir, tmp_path / 'resumed'))
    for x, y in zip(a['emas'], b['emas'], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert any(not torch.equal(t, half['net']['state_dict'][k]) for k, t in
               torch.load(run_dir / final, weights_only=True)['net']['state_dict'].items())  # It trained on.


@pytest.mark.slow
def test_sigterm_writes_state_and_resume_auto_finishes(bars_zip, tmp_path, monkeypatch):
    # SIGTERM arrives during the third optimisation step, raised from the step itself (in-process, so
    # the moment does not depend on the machine's speed): the loop finishes that step, writes a
    # training state at 48 images and exits with status 75; --resume=auto continues from it.
    assert threading.current_thread() is threading.main_thread()  # Signal handlers live in the main thread.
    args = [f'--outdir={tmp_path}', '--name=pre', f'--data={bars_zip}', *TINY_TRAIN, '--augment=0', '--snap=0', '--dump=0']
    step, handler = training_loop.Training.optimization_step, signal.getsignal(signal.SIGTERM)
    steps = []

    def step_with_sigterm(self):
        steps.append(None)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGTERM)
        step(self)
    with monkeypatch.context() as patch:
        patch.setattr(training_loop.Training, 'optimization_step', step_with_sigterm)
        result = invoke([*args, '--duration=1'])
    assert result.exit_code == launch.EXIT_STOPPED == 75, result.output  # Stopped early: not 0, so a job script can requeue.
    assert 'Received SIGTERM' in result.output and '--resume=auto' in result.output
    assert len(steps) == 3 and signal.getsignal(signal.SIGTERM) is handler  # The loop's handler is gone again.
    states = [n for n in os.listdir(tmp_path / 'pre') if n.startswith('training-state-')]
    assert states == [checkpoint.state_name(0.048)] == ['training-state-000000.048.pt']
    assert torch.load(tmp_path / 'pre' / states[0], weights_only=True)['cur_nimg'] == 48

    result = invoke([*args, '--duration=0.001', '--resume=auto', '--dump=1'])
    assert result.exit_code == 0, result.output
    assert f'continuing from {tmp_path / "pre" / states[0]}' in result.output
    assert f'Resuming from {tmp_path / "pre" / states[0]} at 0.048 kimg' in result.output
    final_path = tmp_path / 'pre' / checkpoint.state_name(1.008)
    assert torch.load(final_path, weights_only=True)['cur_nimg'] == 1008
    # The same command again: the run is finished, nothing is trained or rewritten.
    mtime = final_path.stat().st_mtime_ns
    result = invoke([*args, '--duration=0.001', '--resume=auto', '--dump=1'])
    assert result.exit_code == 0 and 'nothing to do' in result.output, result.output
    assert final_path.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_resume_auto_skips_a_truncated_state(tmp_path, tiny_run):
    # Copy the run, then truncate its newest state: auto must fall back to the one before (tick 1).
    run_dir = tmp_path / 'tiny'
    shutil.copytree(tiny_run['run_dir'], run_dir)
    newest = run_dir / checkpoint.state_name(2)
    newest.write_bytes(newest.read_bytes()[:1000])
    messages = []
    found = checkpoint.newest_valid_state(str(run_dir), log=messages.append)
    assert found == str(run_dir / checkpoint.state_name(1.024))
    assert any(str(newest) in m for m in messages)

#----------------------------------------------------------------------------
# Bad input: one clear line, a non-zero exit, nothing written.

def invoke(args):
    return CliRunner().invoke(train.main, args)


def assert_clean_failure(result, match, outdir):
    assert result.exit_code != 0
    assert 'Traceback' not in result.output and match in result.output, result.output
    assert not os.path.exists(outdir) or not any(os.scandir(outdir))


def test_missing_data(tmp_path):
    out = str(tmp_path / 'out')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={tmp_path / "nope.zip"}', *TINY_TRAIN]), '--data', out)


def test_cond_without_labels(bars_zip_unlabelled, tmp_path):
    out = str(tmp_path / 'out')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip_unlabelled}', *TINY_TRAIN]), 'no labels', out)


def test_batch_not_divisible(bars_zip, tmp_path):
    out = str(tmp_path / 'out')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--batch=16', '--batch-gpu=5']),
                         'multiple of --batch-gpu', out)


@pytest.mark.parametrize('args,message', [
    (['--pfgmpp=1', '--aug_dim=0'], '--aug_dim must be a number >= 1'),
    (['--pfgmpp=1', '--aug_dim=-3'], '--aug_dim must be a number >= 1'),
    (['--pfgmpp=1', '--aug_dim=nan'], '--aug_dim must be a number >= 1'),
    (['--pfgmpp=1', '--aug_dim=inf'], '--aug_dim=inf is diffusion'),
    (['--pfgmpp=0', '--aug_dim=64'], '--pfgmpp=0 means diffusion'),
    (['--D=0.5'], '--D must be a number >= 1'),
    (['--D=64', '--aug-dim=128'], 'disagree'),
])
def test_bad_D(bars_zip, tmp_path, args, message):
    out = str(tmp_path / 'out')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, *args]), message, out)


@pytest.mark.parametrize('args,D', [
    ([], 'infinity (diffusion)'), (['--D=64'], '64.0'), (['--D=inf'], 'infinity (diffusion)'), (['--aug_dim=64'], '64.0'),
    (['--aug-dim=64', '--pfgmpp=1'], '64.0'), (['--pfgmpp=1'], '128.0'), (['--pfgmpp=0'], 'infinity (diffusion)'), (['--D=1'], '1.0'),
])
def test_one_D_from_every_spelling(bars_zip, tmp_path, args, D):
    # --aug_dim alone trains that D: never silent diffusion.
    result = invoke([f'--outdir={tmp_path / "out"}', f'--data={bars_zip}', *TINY_TRAIN, *args, '--dry-run'])
    assert result.exit_code == 0, result.output
    assert f'PFGM++ D:                {D}\n' in result.output


def test_outdir_is_a_file(bars_zip, tmp_path):
    out = tmp_path / 'file'
    out.write_text('x')
    for outdir in (out, out / 'runs'):  # The folder, or one of its parents, is a file.
        result = invoke([f'--outdir={outdir}', f'--data={bars_zip}', *TINY_TRAIN])
        assert result.exit_code == 1 and 'is a file' in result.output and 'Traceback' not in result.output, result.output
        assert result.output.count('\n') == 1 and 'Training options' not in result.output  # One line, before the summary.
    assert out.read_text() == 'x' and sorted(os.listdir(tmp_path)) == ['file']


@pytest.mark.parametrize('cres,arch', [('1,1,1,1,1', 'ddpmpp'), ('1,1,1,1,1,1', 'ncsnpp'), ('1,1,1,1,1', 'adm')])
def test_a_network_that_does_not_fit_the_images_is_one_line(bars_zip, tmp_path, cres, arch):
    # 8x8 images can be halved three times: four resolution levels at most.
    out = str(tmp_path / 'out')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, f'--arch={arch}', f'--cres={cres}']),
                         '8x8 images can be halved only 3 times', out)
    assert invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, f'--arch={arch}', '--cres=1,1,1,1', '--dry-run']).exit_code == 0


def test_the_learning_rate_ramp_up_longer_than_the_run_is_one_warning(bars_zip, tmp_path):
    common = [f'--outdir={tmp_path / "out"}', f'--data={bars_zip}', *[a for a in TINY_TRAIN if not a.startswith('--lr-rampup')], '--dry-run']
    result = invoke([*common, '--duration=0.001'])  # EDM's 10 Mimg ramp-up against 1 kimg.
    warnings = [line for line in result.output.splitlines() if line.startswith('Warning:')]
    assert result.exit_code == 0 and len(warnings) == 1 and '--lr-rampup=10000 kimg' in warnings[0], result.output
    assert 'ends at 2e-07 instead of --lr=0.002' in warnings[0]  # 2e-3 x 1 / 10000.
    for args in (['--lr-rampup=0'], ['--lr-rampup=1'], ['--duration=10']):
        assert 'Warning:' not in invoke([*common, *args]).output


@pytest.mark.slow
def test_short_ticks_keep_every_checkpoint_and_tick_0_has_one(bars_zip, tmp_path):
    # --tick=0.25 (a quarter kimg) and a duration that is not a whole kimg: tick 0 after the first
    # step, then every 256 images, the end at 752; every snapshot and state is kept, each under its
    # own name, and the run stops at the first step that reaches the duration.
    result = train_here([f'--outdir={tmp_path}', '--name=r', f'--data={bars_zip}', *TINY_TRAIN, '--tick=0.25', '--duration=0.00075',
                         '--snap=1', '--dump=1'])
    assert result.exit_code == 0, result.output
    points = [0.016, 0.272, 0.528, 0.752]
    names = sorted(os.listdir(tmp_path / 'r'))
    assert names == sorted([checkpoint.snapshot_name(k) for k in points] + [checkpoint.state_name(k) for k in points] +
                           ['log.txt', 'stats.jsonl', 'training_options.json'])
    assert [s['kimg'] for s in read_stats(tmp_path / 'r')] == points
    assert 'tick 0 ' in result.output and 'kimg 0.016' in result.output  # A sign of life after the first step.
    assert [k for k, _ in checkpoint.find_checkpoints(str(tmp_path / 'r'), 'network')] == points
    assert checkpoint.newest_valid_state(str(tmp_path / 'r')) == str(tmp_path / 'r' / checkpoint.state_name(0.752))


@pytest.mark.slow
def test_resume_not_a_training_state(bars_zip, tiny_run, tmp_path):
    out = str(tmp_path / 'out')
    snapshot = os.path.join(tiny_run['run_dir'], checkpoint.snapshot_name(1.024))
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, f'--resume={snapshot}']),
                         'not a pfgmpp-training-state', out)
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, f'--resume={garbage}']),
                         'not a readable checkpoint', out)


@pytest.mark.slow
def test_resume_other_architecture(bars_zip, tiny_run, tmp_path):
    out = str(tmp_path / 'out')
    state = os.path.join(tiny_run['run_dir'], checkpoint.state_name(1.024))
    args = [f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--D=128', '--augment=0.12', f'--resume={state}']
    assert_clean_failure(invoke(args + ['--cbase=16']), 'another architecture', out)
    assert_clean_failure(invoke(args + ['--arch=ncsnpp']), 'another architecture', out)


@pytest.mark.slow
def test_existing_named_run_needs_resume(bars_zip, tiny_run):
    result = invoke([f'--outdir={tiny_run["outdir"]}', '--name=tiny', f'--data={bars_zip}', *TINY_TRAIN])
    assert result.exit_code != 0 and '--resume=auto' in result.output


def test_dry_run_writes_nothing(bars_zip, tmp_path):
    out = tmp_path / 'out'
    result = invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--dry-run'])
    assert result.exit_code == 0 and 'Dry run' in result.output and not out.exists()


def test_help_lists_every_default():
    result = invoke(['--help'])
    assert result.exit_code == 0
    for text in ('--pfgmpp', '--aug_dim', '--stf', '--rbatch', '--nblock', '--sigma-scale', '--device', '--lr-rampup', '--ema-rampup',
                 'default: 512', 'default: 200', 'default: 0.001', 'default: 0.5', 'default: 0.13', 'default: 0.12'):
        assert text in result.output, text


@pytest.mark.slow
def test_generate_samples_every_checkpoint_of_a_train_run(tiny_run, tmp_path):
    # generate.py's run-directory mode on the run train.py wrote: one folder per snapshot, D from it.
    # (On a copy: generate.py writes into the run directory, and other tests read the fixture's.)
    run_dir = str(tmp_path / 'tiny')
    shutil.copytree(tiny_run['run_dir'], run_dir)
    result = CliRunner().invoke(generate.main, [f'--outdir={run_dir}', '--seeds=0-3', '--batch=2', '--steps=4', '--device=cpu'])
    assert result.exit_code == 0, result.output
    assert sorted(n for n in os.listdir(run_dir) if n.startswith('ckpt_')) == ['ckpt_000000.016', 'ckpt_000001.024', 'ckpt_000002']
    for kimg in (0.016, 1.024, 2):
        folder = os.path.join(run_dir, checkpoint.samples_dir_name(kimg))
        assert sorted(os.listdir(folder)) == [f'{seed:06d}.png' for seed in range(4)] + ['generate.json']
    # A flag that contradicts the recorded D=128 is refused.
    result = CliRunner().invoke(generate.main, [f'--outdir={run_dir}', '--seeds=4-5', '--D=2048', '--device=cpu'])
    assert result.exit_code != 0 and 'Traceback' not in result.output and '128' in result.output, result.output

#----------------------------------------------------------------------------
# Precision.

@pytest.mark.slow
def test_bf16_losses_track_fp32(bars_zip, tmp_path):
    # tiny_run's PFGM++ (D=128) with augmentation under bf16 autocast against fp32: 32 steps in 2 ticks,
    # per-tick mean losses within 0.1% (measured: 1.3e-5 and 1.3e-4 apart). In-process, because train.py
    # counts whole kimg.
    losses = {}
    for name, args in [('fp32', []), ('bf16', ['--precision=bf16'])]:
        config = loop_config(tmp_path, bars_zip, '--D=128', '--augment=0.12', *args)
        (tmp_path / name).mkdir()
        training_loop.training_loop(**dict(config, run_dir=str(tmp_path / name), total_kimg=0.512, kimg_per_tick=0.256,
                                           state_dump_ticks=None))
        losses[name] = [s['Loss/loss']['mean'] for s in read_stats(str(tmp_path / name))]
    assert len(losses['bf16']) == len(losses['fp32']) == 3  # Tick 0 after the first step, then two.
    assert all(abs(b - f) <= 1e-3 * f for b, f in zip(losses['bf16'], losses['fp32'])), losses
    assert losses['bf16'] != losses['fp32']  # bf16 really ran.


@pytest.mark.slow
def test_fp16_loss_scaler_is_saved_and_resume_is_exact(bars_zip, tmp_path):
    # 4 steps in one go against 2 steps, then a resume for the other 2: identical weights, Adam
    # state and loss scale. fp16 overflows at the initial scale 2^16, so the scaler has already
    # lowered it (and skipped those steps) by the end. In-process, because train.py counts whole kimg.
    config = loop_config(tmp_path, bars_zip, '--augment=0', '--fp16=1')
    states = {}
    for name, nimg, resume in [('full', 64, None), ('half', 32, None), ('resumed', 64, 'half')]:
        run_dir = tmp_path / name
        run_dir.mkdir()
        resume_state = states[resume] if resume else None
        result = training_loop.training_loop(**dict(config, run_dir=str(run_dir), total_kimg=nimg / 1000, resume_state=resume_state))
        assert result == dict(status='done', cur_nimg=nimg)
        states[name] = str(run_dir / checkpoint.state_name(nimg / 1000))
    a, b = (torch.load(states[name], weights_only=True) for name in ('full', 'resumed'))
    assert a['cur_nimg'] == b['cur_nimg'] == 64
    assert a['grad_scaler'] == b['grad_scaler'] and 0 < a['grad_scaler']['scale'] < 2.0 ** 16
    for key in ('net', 'ema'):
        for name, tensor in a[key]['state_dict'].items():
            assert torch.equal(tensor, b[key]['state_dict'][name]), (key, name)
    for pa, pb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    with open(tmp_path / 'full' / 'log.txt') as f:
        assert 'Precision: fp16' in f.read()


def test_fp16_alias_and_precision_must_agree(bars_zip, tmp_path):
    out = tmp_path / 'out'
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--fp16=1', '--precision=bf16']), '--fp16', out)
    result = invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--fp16=1', '--dry-run'])
    assert result.exit_code == 0 and 'Precision:               fp16' in result.output

#----------------------------------------------------------------------------
# Stable target field with augmentation, --transfer's EMA, --nblock, non-finite losses.

def test_stf_with_augmentation_trains_resumes_exactly_and_samples(bars_zip, tmp_path):
    # --stf=1 --augment=0.12, 4 steps of 16 images with 24 references per round (8 beyond the batch):
    # uninterrupted against 2 steps, a dumped state, and a resume for the other 2. Then
    # generate.py samples the snapshot. In-process, because train.py counts whole kimg.
    config = loop_config(tmp_path, bars_zip, '--cond=0', '--stf=1', '--rbatch=24', '--augment=0.12')
    assert config.stf_rbatch == 8 and config.augment_kwargs is not None
    states = {}
    for name, nimg, resume in [('full', 64, None), ('half', 32, None), ('resumed', 64, 'half')]:
        run_dir = tmp_path / name
        run_dir.mkdir()
        result = training_loop.training_loop(**dict(config, run_dir=str(run_dir), total_kimg=nimg / 1000, snapshot_ticks=4,
                                                    resume_state=states.get(resume)))
        assert result == dict(status='done', cur_nimg=nimg)
        states[name] = str(run_dir / checkpoint.state_name(nimg / 1000))
    assert_same_states(states['full'], states['resumed'])
    losses = [s['Loss/loss']['mean'] for s in read_stats(str(tmp_path / 'full'))]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    # STF changes only the target (the references are drawn after the batch's noise): the same
    # steps without it see other losses.
    plain = loop_config(tmp_path, bars_zip, '--cond=0', '--augment=0.12')
    (tmp_path / 'plain').mkdir()
    training_loop.training_loop(**dict(plain, run_dir=str(tmp_path / 'plain'), total_kimg=0.064, state_dump_ticks=None))
    plain_losses = [s['Loss/loss']['mean'] for s in read_stats(str(tmp_path / 'plain'))]
    assert plain_losses[0] != losses[0]

    snapshot = tmp_path / 'full' / checkpoint.snapshot_name(0.064)
    result = CliRunner().invoke(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "samples"}', '--seeds=0-1',
                                                '--steps=4', '--device=cpu'])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / 'samples')) == ['000000.png', '000001.png', 'generate.json']


def test_stf_options(bars_zip, tmp_path):
    out = tmp_path / 'out'
    result = invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--cond=0', '--stf=1', '--augment=0.12', '--dry-run'])
    assert result.exit_code == 0, result.output
    assert 'STF reference batch:     4096 per rank and round (augmented)' in result.output  # The published default.
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--stf=1']), '--cond=0', out)
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--cond=0', '--stf=1', '--rbatch=16']),
                         '--rbatch=16 must exceed', out)


def test_transfer_turns_the_ema_rampup_off(bars_zip, tmp_path):
    config = loop_config(tmp_path, bars_zip, '--augment=0')
    assert config.ema_rampup_ratio == 0.05
    data_shape = dict(img_resolution=8, img_channels=3, label_dim=2)
    torch.manual_seed(123)
    source = dnnlib.construct_class_by_name(**config.network_kwargs, **data_shape)
    source_path = str(tmp_path / 'source.pt')
    checkpoint.save_network_snapshot(source_path, source, kimg=0, cur_nimg=0, training_options={})
    config = loop_config(tmp_path, bars_zip, '--augment=0', f'--transfer={source_path}')
    assert config.ema_rampup_ratio is None
    result = invoke([f'--outdir={tmp_path / "out"}', f'--data={bars_zip}', *TINY_TRAIN, f'--transfer={source_path}', '--dry-run'])
    assert 'EMA ramp-up:             off (--transfer)' in result.output, result.output

    # Two steps from transferred weights w0 (the first at learning rate 0 leaves them, and the EMA, at
    # w0): the EMA after the second is w2 + beta (w0 - w2) with the plain half-life's
    # beta = 0.5^(16 / 500), not the ramp-up's 0.5^(16 / (32 * 0.05)).
    (tmp_path / 'ft').mkdir()
    training_loop.training_loop(**dict(config, run_dir=str(tmp_path / 'ft'), total_kimg=0.032, state_dump_ticks=2,
                                       transfer=dict(net=source, source='test')))
    state = torch.load(tmp_path / 'ft' / checkpoint.state_name(0.032), weights_only=True)
    beta = 0.5 ** (16 / 500)
    w0 = source.state_dict()
    changed = 0
    for name, w2 in state['net']['state_dict'].items():
        if not w2.is_floating_point():
            continue
        torch.testing.assert_close(state['ema']['state_dict'][name], w2 + beta * (w0[name] - w2), rtol=1e-5, atol=1e-7)
        changed += int(not torch.equal(w2, w0[name]))
    assert changed > 0


def count_blocks(net, part):
    return sum(1 for name in getattr(net.model, part) if '_block' in name)


@pytest.mark.parametrize('arch,default', [('ddpmpp', 4), ('adm', 3)])
def test_nblock_sets_the_residual_blocks_per_resolution(bars_zip, tmp_path, arch, default):
    data_shape = dict(img_resolution=8, img_channels=3, label_dim=2)
    params = {}
    for nblock in (None, 1, 2, 3, 4):
        config = loop_config(tmp_path, bars_zip, f'--arch={arch}', '--augment=0', *([f'--nblock={nblock}'] if nblock else []))
        assert config.network_kwargs.get('num_blocks') == nblock
        net = dnnlib.construct_class_by_name(**config.network_kwargs, **data_shape)
        # One resolution level (--cres=1): nblock encoder blocks, nblock + 1 decoder blocks.
        expected = nblock or default
        assert (count_blocks(net, 'enc'), count_blocks(net, 'dec')) == (expected, expected + 1)
        params[nblock] = sum(p.numel() for p in net.parameters())
        result = invoke([f'--outdir={tmp_path / "out"}', f'--data={bars_zip}', *TINY_TRAIN, f'--arch={arch}', '--dry-run',
                         *([f'--nblock={nblock}'] if nblock else [])])
        assert f'Blocks per resolution:   {expected}' in result.output
    # With one level every block has the same shape, so each extra block adds the same parameters.
    assert params[None] == params[default] and 0 < params[2] - params[1] == params[3] - params[2]


def test_nonfinite_losses_show_in_log_and_stats(bars_zip, tmp_path, monkeypatch):
    # A loss with one NaN element at the second step and one +inf at the third (their gradients stay
    # finite): those ticks' loss is nan / inf in log.txt and null in stats.jsonl, with the count.
    from training import loss as losses
    original = losses.EDMLoss.__call__
    calls = []

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        calls.append(None)
        bad = torch.zeros_like(loss)
        bad.view(-1)[0] = {2: float('nan'), 3: float('inf')}.get(len(calls), 0.0)
        return loss + bad
    monkeypatch.setattr(losses.EDMLoss, '__call__', poisoned)
    config = loop_config(tmp_path, bars_zip, '--augment=0')
    (tmp_path / 'run').mkdir()
    training_loop.training_loop(**dict(config, run_dir=str(tmp_path / 'run'), total_kimg=0.064, state_dump_ticks=None))
    lines = [line for line in (tmp_path / 'run' / 'log.txt').read_text().splitlines() if line.startswith('tick')]
    assert len(lines) == 4
    shown = [line.split('loss ')[1].split()[0] for line in lines]
    assert shown[1] == 'nan' and shown[2] == 'inf' and all(math.isfinite(float(x)) for x in (shown[0], shown[3])), shown
    assert ['nonfinite_loss 1' in line for line in lines] == [False, True, True, False]

    def refuse(name):
        raise AssertionError(f'{name} in stats.jsonl')
    with open(tmp_path / 'run' / 'stats.jsonl') as f:
        stats = [json.loads(line, parse_constant=refuse) for line in f]
    loss = [s['Loss/loss'] for s in stats]
    assert [x['nonfinite'] for x in loss] == [0, 1, 1, 0]
    assert loss[1]['mean'] is None and loss[2]['mean'] is None and loss[1]['std'] is None
    assert all(x['num'] == 16 * 3 * 8 * 8 for x in loss)
    assert math.isfinite(loss[0]['mean']) and math.isfinite(loss[3]['mean'])

#----------------------------------------------------------------------------
# train() from Python.

@pytest.mark.slow
def test_train_is_callable_with_keyword_arguments(bars_zip, tmp_path):
    result = launch.train(outdir=str(tmp_path), name='py', data=bars_zip, cond=True, arch='ddpmpp', cbase=8, cres=[1],
                         batch=16, tick=1, lr=2e-3, lr_rampup=0, ema=0.0005, dropout=0, workers=0, device='cpu', seed=3,
                         duration=0.001, D=64, augment=0)
    assert result['status'] == 'done' and result['cur_nimg'] == 1008 and result['run_dir'] == str(tmp_path / 'py')
    net, info = checkpoint.load_network(str(tmp_path / 'py' / checkpoint.snapshot_name(1.008)))
    assert info['D'] == 64.0 and net.label_dim == 2
    with pytest.raises(ValueError, match='unexpected keyword'):
        launch.train(outdir=str(tmp_path), data=bars_zip, learning_rate=1)
    with pytest.raises(ValueError, match='--aug_dim'):
        launch.train(outdir=str(tmp_path / 'bad'), data=bars_zip, pfgmpp=True, aug_dim=-1, device='cpu')
    with pytest.raises(ValueError, match='--D'):
        launch.train(outdir=str(tmp_path / 'bad'), data=bars_zip, D=0, device='cpu')
    assert not (tmp_path / 'bad').exists()


def test_command_line_defaults_are_the_functions_defaults():
    parsed = train.cmdline.make_context('train.py', ['--outdir=x', '--data=y']).params
    assert set(parsed) - {'debug'} == {f.name for f in dataclasses.fields(launch.TrainOptions)}
    for name, default in launch.DEFAULTS.items():
        assert parsed[name] == default, name


def test_cond_drop_zeroes_labels_resumes_exactly_and_guides(bars_zip, tmp_path):
    # --cond-drop=1: every label is dropped, so the class embedding gets no gradient at all and the
    # network learns the unconditional model; with 0.5 training resumes bit for bit and the snapshot
    # samples with classifier-free guidance.
    config = loop_config(tmp_path, bars_zip, '--cond=1', '--cond-drop=1')
    assert config.network_kwargs['label_dropout'] == 1
    (tmp_path / 'all').mkdir()
    training_loop.training_loop(**dict(config, run_dir=str(tmp_path / 'all'), total_kimg=0.032))
    state = torch.load(tmp_path / 'all' / checkpoint.state_name(0.032), weights_only=True)
    names = [name for name, _ in train_network(config).named_parameters()]  # Adam's state is in this order.
    moments = {name: state['optimizer']['state'][i]['exp_avg'] for i, name in enumerate(names)}
    assert not moments['model.map_label.weight'].any()  # A zero label: no gradient, ever.
    assert moments['model.map_label.bias'].any() and moments['model.map_layer0.weight'].any()  # Others learn.

    config = loop_config(tmp_path, bars_zip, '--cond=1', '--cond-drop=0.5')
    states = {}
    for name, nimg, resume in [('full', 64, None), ('half', 32, None), ('resumed', 64, 'half')]:
        (tmp_path / name).mkdir()
        training_loop.training_loop(**dict(config, run_dir=str(tmp_path / name), total_kimg=nimg / 1000, snapshot_ticks=4,
                                           resume_state=states.get(resume)))
        states[name] = str(tmp_path / name / checkpoint.state_name(nimg / 1000))
    assert_same_states(states['full'], states['resumed'])

    snapshot = tmp_path / 'full' / checkpoint.snapshot_name(0.064)
    result = CliRunner().invoke(generate.main, [f'--network={snapshot}', f'--outdir={tmp_path / "guided"}', '--seeds=0-1',
                                                '--steps=4', '--device=cpu', '--guidance=2'])
    assert result.exit_code == 0, result.output
    assert 'network evaluations per image' in result.output


def train_network(config):
    """The network training_loop builds for config, for its parameter names in optimizer order."""
    return dnnlib.construct_class_by_name(**config.network_kwargs, img_resolution=8, img_channels=3, label_dim=2)


def test_cond_drop_needs_a_conditional_model(bars_zip, tmp_path):
    out = str(tmp_path / 'out')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--cond=0', '--cond-drop=0.1']), 'unconditional', out)
    result = invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, '--cond=1', '--cond-drop=0.1', '--dry-run'])
    assert result.exit_code == 0 and 'labels dropped with probability 0.1' in result.output


@pytest.mark.parametrize('duration,kimg', [(0.001, 1), (1.001, 1001), (0.0015, 1.5), (200, 200000), (0.0291, 29.1), (1e-6, 0.001)])
def test_duration_is_honoured_exactly_despite_float_rounding(bars_zip, tmp_path, duration, kimg):
    # 1.001 * 1000 is 1000.9999999999999 in floating point: the duration must not lose a kimg, and a
    # duration that is not a whole kimg is kept (the run ends at the first step that reaches it).
    opts = launch.TrainOptions(outdir=str(tmp_path), data=bars_zip, duration=duration)
    assert launch.setup_training_config(opts, world_size=1).total_kimg == kimg


def test_recipes_are_train_options():
    # One table of recipes (training/presets.py): every entry is train.py options, and 'cifar10' is train.py's defaults.
    fields = {f.name for f in dataclasses.fields(launch.TrainOptions)}
    for name, recipe in presets.RECIPES.items():
        assert set(recipe) <= fields, (name, set(recipe) - fields)
    assert all(launch.DEFAULTS[k] == v for k, v in presets.RECIPES['cifar10'].items())
    assert presets.RECIPES['quickstart']['D'] == 128.0 and set(presets.ARCHITECTURES) == {'ddpmpp', 'ncsnpp', 'adm', 'edm2'}

#----------------------------------------------------------------------------
# EDM2's network and recipe: --arch=edm2 and --preset.

# EDM2's train_edm2.py presets, written out: (channels, lr, decay in batches, dropout, duration in 2^20 images).
EDM2_PRESETS = {
    'edm2-img512-xxs': (64, 0.0170, 70000, 0.00, 2048), 'edm2-img512-xs': (128, 0.0120, 70000, 0.00, 2048),
    'edm2-img512-s': (192, 0.0100, 70000, 0.00, 2048), 'edm2-img512-m': (256, 0.0090, 70000, 0.10, 2048),
    'edm2-img512-l': (320, 0.0080, 70000, 0.10, 1792), 'edm2-img512-xl': (384, 0.0070, 70000, 0.10, 1280),
    'edm2-img512-xxl': (448, 0.0065, 70000, 0.10, 896), 'edm2-img64-xs': (128, 0.0120, 35000, 0.00, 1024),
    'edm2-img64-s': (192, 0.0100, 35000, 0.00, 1024), 'edm2-img64-m': (256, 0.0090, 35000, 0.10, 2048),
    'edm2-img64-l': (320, 0.0080, 35000, 0.10, 1024), 'edm2-img64-xl': (384, 0.0070, 35000, 0.10, 640),
}
# A tiny EDM2 network: 16 channels at 8x8 and 4x4, one block per resolution (no attention: fewer than 64 channels).
EDM2_TRAIN = [*TINY_TRAIN, '--arch=edm2', '--cbase=16', '--cres=1,1', '--nblock=1']


def test_edm2_presets_are_edm2s():
    assert presets.EDM2_PRESETS == tuple(EDM2_PRESETS)
    for name, (channels, lr, decay, dropout, duration) in EDM2_PRESETS.items():
        recipe = presets.RECIPES[name]
        assert (recipe['arch'], recipe['cbase'], recipe['lr'], recipe['decay'], recipe['dropout'], recipe['batch']) == \
            ('edm2', channels, lr, decay, dropout, 2048), name
        assert round(recipe['duration'] * 1e6) == duration << 20 and recipe['augment'] == 0 and recipe['phema'] == '0.05,0.10'
        assert (recipe['P_mean'], recipe['P_std']) == ((-0.8, 1.6) if 'img64' in name else (-0.4, 1.0))


def test_edm2_configuration_from_its_preset_and_the_options(bars_zip, tmp_path):
    opts = launch.TrainOptions(outdir=str(tmp_path), data=bars_zip, preset='edm2-img64-xs', lr=0.02, D=64)
    c = launch.setup_training_config(opts, world_size=1)
    # The preset fills the options left at their defaults; --lr was given, so it stays.
    assert (opts.arch, opts.batch, opts.lr, opts.cbase, opts.augment, opts.phema, opts.dropout, opts.decay) == \
        ('edm2', 2048, 0.02, 128, 0, [0.05, 0.1], 0.0, 35000)
    assert c.network_kwargs == dict(class_name='training.networks_edm2.EDM2Precond', model_channels=128, channel_mult=[1, 2, 3, 4],
                                    num_blocks=3, attn_resolutions=[16, 8], dropout=0.0, D=64.0, use_fp16=False)
    assert c.loss_kwargs == dict(class_name='training.loss.EDM2Loss', P_mean=-0.8, P_std=1.6)
    assert c.optimizer_kwargs == dict(class_name='torch.optim.Adam', betas=[0.9, 0.99], eps=1e-8, lr=0.02)
    assert c.lr_kwargs == dict(func_name='training.training_loop.learning_rate_schedule', ref_lr=0.02, ref_batches=35000, rampup_Mimg=10.0)
    assert c.augment_kwargs is None and c.phema_stds == [0.05, 0.1] and c.total_kimg == (1024 << 20) / 1000
    # --arch=edm2 alone takes edm2-img64-s; --cres/--nblock/--cond-drop map onto EDM2's arguments.
    opts = launch.TrainOptions(outdir=str(tmp_path), data=bars_zip, arch='edm2', cres=[1, 2], nblock=2, cond=True, cond_drop=0.1)
    c = launch.setup_training_config(opts, world_size=1)
    assert opts.preset == 'edm2-img64-s' and c.network_kwargs['model_channels'] == 192
    assert (c.network_kwargs['channel_mult'], c.network_kwargs['num_blocks'], c.network_kwargs['label_dropout']) == ([1, 2], 2, 0.1)
    # EDM's configurations are as they were.
    c = launch.setup_training_config(launch.TrainOptions(outdir=str(tmp_path), data=bars_zip), world_size=1)
    assert 'lr_kwargs' not in c and c.optimizer_kwargs['betas'] == [0.9, 0.999] and c.loss_kwargs == dict(class_name='training.loss.EDMLoss')


def test_an_option_given_wins_over_the_preset_even_at_its_default(bars_zip, tmp_path):
    # --batch=512 and --dropout=0.13 are train.py's defaults, but given: the preset leaves them.
    result = invoke([f'--outdir={tmp_path / "out"}', f'--data={bars_zip}', '--preset=edm2-img64-m', '--batch=512', '--dropout=0.13',
                     '--device=cpu', '--dry-run'])
    assert result.exit_code == 0 and '"batch": 512,' in result.output and '"dropout": 0.13,' in result.output, result.output
    assert '"cbase": 256,' in result.output and '"lr": 0.009,' in result.output and '"duration": 2147.483648,' in result.output
    status = launch.train(outdir=str(tmp_path / 'out'), data=bars_zip, arch='edm2', batch=512, device='cpu', dry_run=True)
    assert status['status'] == 'dry-run'
    assert launch.TrainOptions(outdir='x', data='y', arch='edm2', batch=512, given=frozenset({'arch', 'batch'})).batch == 512
    assert launch.TrainOptions(outdir='x', data='y', arch='edm2', batch=512).batch == 2048  # No record of what was given.


def test_edm2_dry_run_says_what_it_trains(bars_zip, tmp_path):
    result = invoke([f'--outdir={tmp_path / "out"}', f'--data={bars_zip}', *EDM2_TRAIN, '--pfgmpp=1', '--aug_dim=64', '--dry-run'])
    assert result.exit_code == 0, result.output
    for text in ("edm with EDM2's uncertainty head", 'EDM2 preset:             edm2-img64-s', 'PFGM++ D:                64.0',
                 'Post-hoc EMA stds:       0.05, 0.1', 'Blocks per resolution:   1'):
        assert text in result.output, text


@pytest.mark.parametrize('args,message', [
    (['--preset=edm2-img64-s', '--arch=adm'], 'is an EDM2 preset, for --arch=edm2'),
    (['--arch=edm2', '--augment=0.3'], 'takes no augmentation labels'),
    (['--arch=edm2', '--precond=vp'], "uses EDM's preconditioning"),
    (['--decay=1000'], "option of EDM2's recipe"),
    (['--P-mean=-0.4'], "option of EDM2's recipe"),
])
def test_edm2_options_that_do_not_apply_are_one_line(bars_zip, tmp_path, args, message):
    out = str(tmp_path / 'out')
    assert_clean_failure(invoke([f'--outdir={out}', f'--data={bars_zip}', *TINY_TRAIN, *args]), message, out)


@pytest.mark.slow
def test_edm2_with_pfgmpp_trains_resumes_bitwise_and_samples(bars_zip, tmp_path):
    # train.py --arch=edm2 --pfgmpp=1 --aug_dim=64 with label dropout and the preset's post-hoc EMAs, 4 steps of 16
    # images, against 2 steps and --resume=auto for the other 2; then generate.py samples its snapshot,
    # with EDM2's sampler and with classifier-free guidance.
    common = [f'--data={bars_zip}', *EDM2_TRAIN, '--pfgmpp=1', '--aug_dim=64', '--cond-drop=0.2', '--tick=0.016', '--snap=4', '--dump=2']
    for name, duration in (('full', 0.000064), ('resumed', 0.000032), ('resumed', 0.000064)):
        result = train_here([f'--outdir={tmp_path}', f'--name={name}', *common, f'--duration={duration}', '--resume=auto'])
        assert result.exit_code == 0, result.output
    assert 'Resuming from' in result.output and 'Network: EDM2Precond/UNet' in result.output
    final = checkpoint.state_name(0.064)
    assert_same_states(tmp_path / 'full' / final, tmp_path / 'resumed' / final)
    a, b = (torch.load(tmp_path / run / final, weights_only=True) for run in ('full', 'resumed'))
    assert a['phema']['stds'] == [0.05, 0.1] and all(torch.equal(x[k], y[k]) for x, y in zip(a['phema']['emas'], b['phema']['emas']) for k in x)
    options = json.load(open(tmp_path / 'full' / 'training_options.json'))
    assert (options['arch'], options['preset'], options['D'], options['decay'], options['P_mean'], options['augment']) == \
        ('edm2', 'edm2-img64-s', 64.0, 35000, -0.8, 0)
    net, info = checkpoint.load_network(str(tmp_path / 'full' / checkpoint.snapshot_name(0.064)))
    assert type(net).__name__ == 'EDM2Precond' and net.D == 64.0 and net.init_kwargs['label_dropout'] == 0.2
    # Training moved the weights: the snapshot is not the initial network.
    first = torch.load(tmp_path / 'full' / checkpoint.state_name(0.016), weights_only=True)
    assert any(not torch.equal(t, first['net']['state_dict'][k]) for k, t in a['net']['state_dict'].items())
    for extra in (['--sampler-dtype=float32'], ['--guidance=2']):
        result = CliRunner().invoke(generate.main, [f'--network={tmp_path / "full" / checkpoint.snapshot_name(0.064)}', '--seeds=0-3',
                                                    f'--outdir={tmp_path / ("samples" + str(len(extra[0])))}', '--steps=4', '--device=cpu', *extra])
        assert result.exit_code == 0 and '4 images written' in result.output, result.output


@pytest.mark.slow
def test_edm2_under_torchrun_resumes_bitwise(bars_zip, tmp_path):
    # Two ranks on gloo with two accumulation rounds each and dropout: forced weight normalisation in
    # every forward pass of every rank, and the resumed run still ends where the uninterrupted one does.
    args = [f'--data={bars_zip}', *EDM2_TRAIN, '--D=64', '--batch=16', '--batch-gpu=4', '--dropout=0.1', '--tick=0.016',
            '--duration=0.000064', '--snap=4', '--dump=2']
    result = run_train([f'--outdir={tmp_path}', '--name=ddp', *args], torchrun=True)
    assert result.returncode == 0 and '4 per rank and round x 2 rounds x 2 ranks' in result.stdout, result.stdout + result.stderr
    resumed = run_train([f'--outdir={tmp_path}', '--name=resumed', *args, f'--resume={tmp_path / "ddp" / checkpoint.state_name(0.016)}'],
                        torchrun=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_states(tmp_path / 'ddp' / checkpoint.state_name(0.064), tmp_path / 'resumed' / checkpoint.state_name(0.064))
