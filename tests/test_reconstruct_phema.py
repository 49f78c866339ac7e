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

from helpers import TINY_TRAIN, assert_same_states, one_sentence, save_standin_detector, train_here

pytestmark = pytest.mark.slow  # Every test here reads or resumes a training run.

# 4 kimg of 40 images per step (100 steps); a tick, a snapshot and a state after the first step (tick 0,
# 40 images), then every kimg (1,040, 2,040 and 3,040 images), and at the end (4,000).
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
    assert [k for k, _ in checkpoint.find_checkpoints(str(run), 'phema')] == [0.04, 1.04, 2.04, 3.04, 4]
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
    # 2 kimg, then a resume to 4 kimg: the end state is the uninterrupted 4-kimg run's (ticks, which
    # differ, change nothing in training).
    assert train_here([*base, '--duration=0.002']).exit_code == 0
    result = train_here([*base, '--duration=0.004', '--resume=auto'])
    assert result.exit_code == 0, result.output
    assert 'Resuming from' in result.output and checkpoint.state_name(2) in result.output
    full, resumed = phema_run['run'], outdir / 'resumed'
    assert_same_states(str(full / checkpoint.state_name(4)), str(resumed / checkpoint.state_name(4)))
    a = torch.load(full / checkpoint.state_name(4), weights_only=True)['phema']
    b = torch.load(resumed / checkpoint.state_name(4), weights_only=True)['phema']
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
    assert lines[0].split() == ['requested', 'std', 'profile', 'error', 'noise', 'gain', 'network', 'snapshot']
    assert lines[1].startswith('std 0.07') and lines[2].startswith('half-life 0.0002 Mimg')
    # The std of the EMA train.py --ema=0.0002 keeps with this run's batch 40 and ramp-up 0.05 (the
    # ramp-up binds all along: 0.05 x 4000 images = 200), not the constant half-life's 0.072.
    expected = phema.step_profile_std(*phema_reconstruct.edm_ema_step_profile(4000, 40, 0.0002, 0.05))
    assert f'{expected:.4f}' == lines[2].split()[3] == '0.0626'
    assert f'{float(phema.halflife_to_std(0.0002, 0.004)):.4f}' == '0.0721'
    assert os.path.isfile(tmp_path / 'phema_halflife_0.0002' / checkpoint.snapshot_name(4))
    error = float(lines[1].split()[3].rstrip('%')) / 100
    assert 0 < error < phema.DEFAULT_MAX_RESIDUAL
    for args, message in [(['--std=0.005'], 'Nothing written: std 0.005 (profile error'), (['--std=0.4'], 'must be in'),
                          (['--half-life=0'], 'must be > 0'), (['--std=0.07', '--kimg=7'], 'choose one of those'),
                          ([], 'at least one EMA length')]:
        result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={phema_run["run"]}', f'--outdir={tmp_path / "bad"}', *args])
        assert result.exit_code != 0 and message in result.output and 'Traceback' not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / 'bad').exists()
    result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={tmp_path}', '--std=0.07'])
    assert result.exit_code != 0 and '--phema=0.05,0.10' in result.output


def test_cli_writes_what_it_can_and_names_the_rest(phema_run, tmp_path):
    # The documented list on a 4-kimg run: 0.03 and 0.13 are out of reach of 4 snapshots per std (profile
    # errors 17% and 6%), the rest are written; the exit status is 1 and the last line names both.
    result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={phema_run["run"]}', f'--outdir={tmp_path}',
                                                           '--std=0.03,0.05,0.07,0.09,0.11,0.13'])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[1] for line in lines[1:-1]] == ['0.05', '0.07', '0.09', '0.11']
    assert sorted(os.listdir(tmp_path)) == ['phema_0.05', 'phema_0.07', 'phema_0.09', 'phema_0.11']
    assert lines[-1].startswith('Error: Not written: std 0.03 (profile error ') and ' and std 0.13 (' in lines[-1]
    assert 'cannot be reconstructed' in lines[-1] and 'Traceback' not in result.output
    # The library says the same: every request, path None where nothing was written.
    rows = phema_reconstruct.reconstruct_phema(str(phema_run['run']), str(tmp_path / 'lib'), std=[0.005, 0.1])
    assert rows[0]['path'] is None and rows[0]['residual'] > phema.DEFAULT_MAX_RESIDUAL and os.path.isfile(rows[1]['path'])


def test_half_life_gives_back_the_ema_the_run_kept(phema_run, tmp_path):
    # TINY_TRAIN's --ema=0.0005 with --batch=40 and the default ramp-up 0.05: the network snapshot holds
    # that EMA. Distances relative to |kept EMA - raw weights|: measured 0.044 for --half-life=0.0005;
    # 2.1 for the power function of the constant half-life's std (0.169), what --half-life gave before.
    run = phema_run['run']
    rows = phema_reconstruct.reconstruct_phema(str(run), str(tmp_path), half_life=[0.0005], std=[float(phema.halflife_to_std(0.0005, 0.004))],
                                               max_residual=1)
    load = lambda path: torch.load(path, weights_only=True)
    kept = load(run / checkpoint.snapshot_name(4))['network']['state_dict']
    raw = load(run / checkpoint.state_name(4))['net']['state_dict']
    dist = lambda a, b: float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a if a[k].is_floating_point()).sqrt())
    scale = dist(kept, raw)
    new, old = (load(row['path']) for row in (rows[1], rows[0]))
    assert dist(new['network']['state_dict'], kept) / scale < 0.1 and dist(old['network']['state_dict'], kept) / scale > 1
    assert new['phema']['half_life'] == 0.0005 and new['phema']['residual'] < phema.DEFAULT_MAX_RESIDUAL


def test_half_life_reads_the_runs_batch_and_ramp_up(tmp_path):
    recorded = dict(batch=40, ema_rampup=0.05, transfer=None)
    assert phema_reconstruct.run_ema_settings(str(tmp_path), recorded) == (40, 0.05)
    assert phema_reconstruct.run_ema_settings(str(tmp_path), dict(recorded, ema_rampup=0)) == (40, None)
    assert phema_reconstruct.run_ema_settings(str(tmp_path), dict(recorded, transfer='net.pt')) == (40, None)  # As train.py.
    with pytest.raises(ValueError, match='--half-life needs the batch size') as err:
        phema_reconstruct.run_ema_settings(str(tmp_path), None)
    assert one_sentence(str(err.value))
    (tmp_path / 'training_options.json').write_text(json.dumps(dict(recorded, batch=64)))
    assert phema_reconstruct.run_ema_settings(str(tmp_path), None) == (64, 0.05)
    with pytest.raises(ValueError, match='positive batch') as err:
        phema_reconstruct.run_ema_settings(str(tmp_path), dict(recorded, batch=0))
    assert one_sentence(str(err.value))
    with pytest.raises(ValueError, match='whole number of steps'):
        phema_reconstruct.edm_ema_step_profile(4010, 40, 0.0005, 0.05)


def test_kimg_picks_a_snapshot_by_its_exact_point(phema_run, tmp_path):
    # Snapshots between whole kimg (phema-snapshot-000002.040.pt): --kimg=2.04 picks that one and
    # writes network-snapshot-000002.040.pt.
    result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={phema_run["run"]}', f'--outdir={tmp_path}', '--std=0.1', '--kimg=2.04'])
    assert result.exit_code == 0, result.output
    written = torch.load(tmp_path / 'phema_0.1' / 'network-snapshot-000002.040.pt', weights_only=True)
    tracked = torch.load(phema_run['run'] / 'phema-snapshot-000002.040.pt', weights_only=True)['profiles'][1]['network']['state_dict']
    assert written['cur_nimg'] == 2040 and all(torch.allclose(v, tracked[k], rtol=1e-5, atol=1e-6) for k, v in written['network']['state_dict'].items())
    result = CliRunner().invoke(reconstruct_phema.cmdline, [f'--run={phema_run["run"]}', f'--outdir={tmp_path}', '--std=0.1', '--kimg=2'])
    assert result.exit_code != 0 and 'snapshots at 0.04, 1.04, 2.04, 3.04, 4 kimg' in result.output, result.output


def test_help_and_docs_explain_the_columns():
    help_text = CliRunner().invoke(reconstruct_phema.cmdline, ['--help'], terminal_width=110).output
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'docs', 'training.md')) as f:
        docs = f.read()
    for text in (' '.join(help_text.split()), ' '.join(docs.split())):
        assert 'noise gain' in text and 'sum of the absolute' in text and 'ramp-up included' in text


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
