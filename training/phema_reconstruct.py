"""Post-hoc EMA over a training run's files (reconstruct_phema.py): read the power-function EMA
snapshots that train.py --phema saves (phema-snapshot-<kimg>.pt), and write the EMA of any other
relative std, or the EMA that train.py's --ema half-life (ramp-up included) keeps, at one snapshot's
time as an ordinary network snapshot, OUTDIR/phema_<std>/ or OUTDIR/phema_halflife_<mimg>/
network-snapshot-<kimg>.pt (the math: training/phema.py)."""

import json
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from training import checkpoint, launch, phema, training_loop

#----------------------------------------------------------------------------
# The run's files.

def read_snapshots(run: str) -> list[tuple[Any, str, dict]]:
    """[(kimg, path, header)] of the run's phema-snapshot-*.pt, kimg as checkpoint.find_checkpoints()
    gives it, header = {'nimg', 'stds', 'network' (class name and arguments of the first profile),
    'options' (the training options recorded with it, or None)}; ValueError when there are none."""
    if not os.path.isdir(run):
        raise FileNotFoundError(f'--run {run} is not a folder; pass the run directory train.py wrote.')
    found = checkpoint.find_checkpoints(run, 'phema')
    if not found:
        raise ValueError(f'{run} holds no post-hoc EMA snapshots (phema-snapshot-*.pt); train with --phema=0.05,0.10 to save them.')
    headers = []
    for kimg, path in found:
        data = checkpoint.load_phema_snapshot(path)
        first = data['profiles'][0]['network']
        headers.append((kimg, path, dict(nimg=data['nimg'], stds=[float(p['std']) for p in data['profiles']],
                                         network=dict(class_name=first['class_name'], init_kwargs=first['init_kwargs']),
                                         options=data.get('training_options'))))
        del data
    return headers


def choose_snapshot(headers: list[tuple[Any, str, dict]], kimg: Optional[float], run: str) -> tuple[Any, str, dict]:
    """The entry of read_snapshots() at `kimg` thousand images (None: the last). Matched by value
    against the kimg that checkpoint.find_checkpoints() reads from the names (whole or fractional),
    to half an image."""
    if kimg is None:
        return headers[-1]
    for entry in headers:
        if abs(float(entry[0]) - float(kimg)) < 0.0005:
            return entry
    kimgs = [f'{float(k):g}' for k, _, _ in headers]
    listed = ', '.join(kimgs if len(kimgs) <= 8 else kimgs[:3] + ['...'] + kimgs[-3:])
    raise ValueError(f'--kimg={kimg:g}: {run} has post-hoc EMA snapshots at {listed} kimg; choose one of those.')


def profile_loader(path: str, index: int):
    """A function that loads profile `index`'s state dict from a phema snapshot when called."""
    return lambda: checkpoint.load_phema_snapshot(path)['profiles'][index]['network']['state_dict']


def run_ema_settings(run: str, options: Optional[dict]) -> tuple[int, Optional[float]]:
    """(batch size, EMA ramp-up ratio or None for none) that train.py's --ema used in the run: from the
    training options recorded in the snapshot, else the run's training_options.json; the ramp-up as
    training.launch.ema_rampup_ratio() derives it (off for --ema-rampup=0 and --transfer)."""
    path = os.path.join(run, 'training_options.json')
    if not isinstance(options, dict) and os.path.isfile(path):
        with open(path) as f:
            options = json.load(f)
    if not isinstance(options, dict) or not {'batch', 'ema_rampup'} <= set(options):
        raise ValueError(f'--half-life needs the batch size and --ema-rampup of the run, but neither its snapshots nor {path} record them; use --std.')
    batch, rampup = options['batch'], options['ema_rampup']
    if not isinstance(batch, int) or batch <= 0 or not isinstance(rampup, (int, float)) or rampup < 0:
        raise ValueError(f'The run records batch={batch!r} and ema_rampup={rampup!r}; --half-life needs a positive batch and a ratio >= 0.')
    opts = launch.TrainOptions(outdir=run, data='', ema_rampup=float(rampup), transfer=options.get('transfer'))
    return batch, launch.ema_rampup_ratio(opts)

#----------------------------------------------------------------------------
# What to reconstruct: one column of coefficients per request.

def edm_ema_step_profile(nimg: int, batch_size: int, halflife_mimg: float, rampup_ratio: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """(t_end [n], weights [n]): the step profile (phema.step_profile_std()) of the EMA that train.py
    keeps after nimg images in steps of batch_size, with --ema=halflife_mimg and the ramp-up ratio:
    the decay of each step from training_loop.ema_beta(), as update_averages() applies it."""
    if nimg % batch_size != 0:
        raise ValueError(f'The snapshot at {nimg} images is not a whole number of steps of the recorded batch {batch_size}; use --std.')
    steps = nimg // batch_size
    betas = [training_loop.ema_beta(k * batch_size, batch_size, halflife_mimg * 1000, rampup_ratio) for k in range(steps)]
    weights, _initial = phema.ema_step_weights(betas)  # The initial network's weight (no ramp-up) is dropped.
    return batch_size * np.arange(1, steps + 1, dtype=np.float64), weights


def plan_requests(std: Sequence[float], half_life: Sequence[float]) -> list[dict]:
    """[{'asked', 'folder', 'std' or 'half_life'}], the stds then the half-lives (Mimg); ValueError for
    an std outside (0, sqrt(1/12)), a half-life <= 0, or no request."""
    plans = []
    for s in std:
        if not 0 < s < phema.STD_MAX:
            raise ValueError(f'--std={s:g}: the relative std must be in (0, {phema.STD_MAX:.4f}).')
        plans.append(dict(asked=f'std {float(s):g}', folder=f'phema_{float(s):.4g}', std=float(s)))
    for h in half_life:
        if not h > 0:
            raise ValueError(f'--half-life={h:g}: a half-life must be > 0 Mimg.')
        plans.append(dict(asked=f'half-life {float(h):g} Mimg', folder=f'phema_halflife_{float(h):g}', half_life=float(h)))
    if not plans:
        raise ValueError('Ask for at least one EMA length: --std=0.05,0.1 or --half-life=0.5 (Mimg).')
    return plans


def fit_requests(plans: list[dict], used: list[phema.Snapshot], out_nimg: int, ema_settings: Callable[[], tuple]) -> None:
    """Add to each plan its 'coefficients' [len(used)] over the used snapshots, the relative L2 error
    'residual' of the fitted profile, 'noise_gain' and 'std' (for a half-life: the std of the EMA's
    profile). ema_settings() -> (batch, ramp-up ratio) is called only if there are half-lives."""
    in_ofs = np.array([s.nimg for s in used], dtype=np.float64)
    in_std = np.array([s.std for s in used], dtype=np.float64)
    batch, rampup = ema_settings() if any('half_life' in p for p in plans) else (None, None)
    for plan in plans:
        if 'std' in plan:
            X = phema.solve_posthoc_coefficients(in_ofs, in_std, out_nimg, [plan['std']])
            x, residual = X[:, 0], float(phema.posthoc_residuals(in_ofs, in_std, out_nimg, [plan['std']], X)[0])
        else:
            t_end, weights = edm_ema_step_profile(out_nimg, batch, plan['half_life'], rampup)
            x, residual = phema.solve_posthoc_coefficients_for_steps(in_ofs, in_std, t_end, weights)
            plan['std'] = phema.step_profile_std(t_end, weights)
        plan.update(coefficients=x, residual=residual, noise_gain=float(phema.noise_gain(x[:, None])[0]))

#----------------------------------------------------------------------------

def reconstruct_phema(run: str, outdir: Optional[str] = None, std: Sequence[float] = (), half_life: Sequence[float] = (),
                      kimg: Optional[float] = None, max_residual: float = phema.DEFAULT_MAX_RESIDUAL) -> list[dict]:
    """Reconstruct, at snapshot `kimg` (default the last), the EMA of each requested std and the EMA
    that train.py --ema=H keeps for each half-life H (Mimg; with the run's batch and ramp-up) from the
    run's power-function EMA snapshots, and write OUTDIR/phema_<std>/ or phema_halflife_<H>/
    network-snapshot-<kimg>.pt for each one whose fitted profile is within max_residual (relative L2)
    of the requested one (OUTDIR defaults to the run). Returns, per request in order, {'asked', 'std',
    'residual', 'noise_gain' (phema.noise_gain()), 'path' (None: not written, residual too large)}.
    ValueError, with nothing written, for a run without profiles, an unknown kimg, or when no request
    can be reconstructed."""
    outdir = run if outdir is None else outdir
    headers = read_snapshots(run)
    kimg, _path, header = choose_snapshot(headers, kimg, run)
    plans = plan_requests(std, half_life)
    stored = [phema.Snapshot(nimg=h['nimg'], std=s, state_dict=profile_loader(path, i)) for _k, path, h in headers for i, s in enumerate(h['stds'])]
    used, out_nimg = phema.used_snapshots(stored, header['nimg'])
    fit_requests(plans, used, out_nimg, lambda: run_ema_settings(run, header['options']))  # Before loading any weights.
    good = [p for p in plans if p['residual'] <= max_residual]
    if not good:
        raise ValueError(f'Nothing written: {describe_refused(plans, max_residual)}.')
    state_dicts = phema.combine_snapshots(used, np.stack([p['coefficients'] for p in good], axis=1))
    for plan, state_dict in zip(good, state_dicts):
        net = checkpoint.network_from_dict(dict(header['network'], state_dict=state_dict))
        plan['path'] = os.path.join(outdir, plan['folder'], checkpoint.snapshot_name(kimg))
        os.makedirs(os.path.dirname(plan['path']), exist_ok=True)
        checkpoint.save_network_snapshot(plan['path'], net, kimg=kimg, cur_nimg=out_nimg, phema=dict(summary(plan), run=run, nimg=out_nimg))
    return [dict(summary(p), path=p.get('path')) for p in plans]


def summary(plan: dict) -> dict:
    """The plain-data fields of a fitted request: asked, std, residual, noise_gain (and half_life)."""
    return {k: v for k, v in plan.items() if k in ('asked', 'std', 'half_life', 'residual', 'noise_gain')}


def describe_refused(rows: list[dict], max_residual: float) -> str:
    """One clause naming every row whose residual is above max_residual: 'std 0.03 (profile error
    9.1%) and half-life 0.5 Mimg (7.2%) cannot be reconstructed from the stored snapshots (limit
    --max-residual=5%); choose ...'."""
    bad = [r for r in rows if r['residual'] > max_residual]
    listed = [f'{r["asked"]} ({"profile error " if i == 0 else ""}{100 * r["residual"]:.1f}%)' for i, r in enumerate(bad)]
    listed = ', '.join(listed[:-1]) + ' and ' + listed[-1] if len(listed) > 1 else listed[0]
    return (f'{listed} cannot be reconstructed from the stored snapshots (limit --max-residual={100 * max_residual:g}%); '
            f'choose EMA lengths closer to the tracked stds, or save snapshots more often (--snap)')

#----------------------------------------------------------------------------
