"""Post-hoc EMA end to end: train.py --phema saves power-function EMA snapshots, resumes them bit for
bit, reconstruct_phema.py synthesises other EMA lengths, and the documented pipeline (reconstruct,
generate each, fid.py sweep over them) runs on the CPU."""

import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

import fid
import generate
import reconstruct_phema
from training import checkpoint, phema, phema_reconstruct

from helpers import TINY_TRAIN, assert_same_states, save_standin_detector, train_here

pytestmark = pytest.mark.slow  # Every test here reads or resumes a training run.

# 4 kimg of 40 images per step (100 steps), a tick, a snapshot and a state every kimg (every 25 steps,
# so that a run resumed at any whole kimg meets the same tick boundaries).
PHEMA = ['--batch=40', '--duration=0.004', '--snap=1', '--dump=1', '--phema=0.05,0.1']


@pytest.fixture(scope='module')
def phema_run(bars_zip, tmp_path_factory):
    outdir = tmp_path_factory.mktemp('phema')
    args = [f'--outdir={outdir}', '--name=full', f'--data={bars_zip}', *TINY_TRAIN, *PHEMA]
    result = train_here(args)
    assert result.exit_code == 0, result.output
    return dict(outdir=outdir, run=outdir / 'full', args=args, stdout=result.output)


def test_snapshots_hold_every_profile_and_memory_is_reported(phema_run):
    run = phema_run['run']
    assert [k for k, _ in checkpoint.find_checkpoints(str(run), 'phema')] == [1, 2, 3, 4]
    data = torch.load(run / checkpoint.phema_name(4), weights_only=True)  # Plain data, no code.
    assert data['format'] == checkpoint.PHEMA_FORMAT and data['nimg'] == 4000 and data['D'] is None
    assert [p['std'] for p in data['profiles']] == [0.05, 0.1]
    state = torch.load(run / checkpoint.state_name(4), weights_only=True)
    for profile, saved in zip(data['profiles'], state['phema']['emas']):
        for k, v in profile['network']['state_dict'].items():
            assert torch.equal(v, saved[k])
    size = sum(v.numel() * v.element_size() for v in data['profiles'][0]['network']['state_dict'].values())
    assert f'{2 * size / 2 ** 20:.1f} MiB more memory' in phema_run['stdout']


def test_resume_is_bitwise_with_profiles(phema_run, bars_zip, tmp_path):
    outdir = tmp_path
    base = [f'--outdir={outdir}', '--name=resumed', f'--data={bars_zip}', *TINY_TRAIN, *PHEMA]
    # 1 kimg, then a resume to 2 kimg: the state at 2 kimg is the 4-kimg run's (nothing in training
    # depends on the run's length).
    assert train_here([*base, '--duration=0.001']).exit_code == 0
    result = train_here([*base, '--duration=0.002', '--resume=auto'])
    assert result.exit_code == 0, result.output
    full, resumed = phema_run['run'], outdir / 'resumed'
    assert_same_states(str(full / checkpoint.state_name(2)), str(resumed / checkpoint.state_name(2)))
    a = torch.load(full / checkpoint.state_name(2), weights_only=True)['phema']
    b = torch.load(resumed / checkpoint.state_name(2), weights_only=True)['phema']
    assert a['stds'] == b['stds'] == [0.05, 0.1]
    for x, y in zip(a['emas'], b['emas']):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # Resuming with other stds (or none) is refused with one line.
    other = train_here([*base[:-1], '--phema=0.05', '--duration=0.005', '--resume=auto'])
    assert other.exit_code != 0 and 'post-hoc EMA stds' in other.output and 'Traceback' not in other.output, other.output


def test_reconstruction_of_a_tracked_std_is_that_profile(phema_run, tmp_path):
    written = phema_reconstruct.reconstruct_phema(str(phema_run['run']), str(tmp_path), std=[0.1])
    assert len(written) == 1 and written[0]['residual'] < 1e-6
    net, info = checkpoint.load_network(written[0]['path'])
    assert info['kimg'] == 4 and os.path.basename(os.path.dirname(written[0]['path'])) == 'phema_0.1'
    tracked = torch.load(phema_run['run'] / checkpoint.phema_name(4), weights_only=True)['profiles'][1]['network']['state_dict']
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, tracked[k], rtol=1e-5, atol=1e-6)


def test_cli_prints_the_fit_and_refuses_what_it_cannot_represent(phema_run, tmp_path):
    result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={phema_run["run"]}', '--std=0.07', '--half-life=0.0002',
                                                           f'--outdir={tmp_path}'])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[1].startswith('std 0.07') and lines[2].startswith('half-life 0.0002 Mimg')
    expected = float(phema.halflife_to_std(0.0002, 0.004))  # 200 images at 4 kimg: std 0.072.
    assert f'{expected:.4f}' in lines[2]
    error = float(lines[1].split()[3].rstrip('%')) / 100
    assert 0 < error < phema.DEFAULT_MAX_RESIDUAL
    for args, message in [(['--std=0.005'], 'cannot be reconstructed'), (['--std=0.4'], 'must be in'),
                          (['--std=0.07', '--kimg=7'], 'choose one of those'), ([], 'at least one EMA length')]:
        result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={phema_run["run"]}', f'--outdir={tmp_path / "bad"}', *args])
        assert result.exit_code != 0 and message in result.output and 'Traceback' not in result.output, result.output
        assert not (tmp_path / 'bad').exists()
    result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={tmp_path}', '--std=0.07'])
    assert result.exit_code != 0 and '--phema=0.05,0.10' in result.output


def test_the_documented_pipeline(phema_run, tmp_path):
    # README "Post-hoc EMA": reconstruct a list of stds into RUN/phema_<std>/, generate from each in
    # run-directory mode, sweep them all with fid.py, pick the best.
    run = tmp_path / 'run'
    shutil.copytree(phema_run['run'], run)
    assert CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={run}', '--std=0.06,0.08,0.1']).exit_code == 0
    folders = sorted(p for p in os.listdir(run) if p.startswith('phema_'))
    assert folders == ['phema_0.06', 'phema_0.08', 'phema_0.1']
    for folder in folders:
        result = CliRunner().invoke(generate.main, [f'--outdir={run / folder}', '--seeds=0-5', '--steps=4', '--device=cpu'])
        assert result.exit_code == 0, result.output
        assert len([n for n in os.listdir(run / folder / 'ckpt_000004') if n.endswith('.png')]) == 6
    detector = tmp_path / 'standin.pt'
    save_standin_detector(detector)
    common = ['--device=cpu', '--workers=0', f'--detector={detector}']
    ref = tmp_path / 'ref.npz'
    assert CliRunner().invoke(fid.main, ['ref', f'--data={run / "phema_0.1" / "ckpt_000004"}', f'--dest={ref}', *common]).exit_code == 0
    result = CliRunner().invoke(fid.main, ['sweep', f'--run={run}/phema_*', f'--ref={ref}', '--num=6', f'--json={tmp_path / "s.json"}', *common])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / 's.json').read_text())
    assert [row['ckpt'] for row in summary['table']] == [f'{f}/ckpt_000004' for f in folders]
    best = min(summary['table'], key=lambda row: row['min_fid'])
    assert summary['best'] == best and result.output.strip().splitlines()[-1] == f'Best: {best["ckpt"]} with FID {best["min_fid"]:g}'
    # The reference was made from phema_0.1's own images: its FID is the smallest (zero up to rounding).
    assert best['ckpt'].startswith('phema_0.1/') and abs(best['min_fid']) < 1e-6
    for folder in folders:
        assert (run / folder / 'metrics.jsonl').exists()
