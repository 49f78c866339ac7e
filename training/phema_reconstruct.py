"""Post-hoc EMA over a training run's files (reconstruct_phema.py): read the power-function EMA
snapshots that train.py --phema saves (phema-snapshot-<kimg>.pt), and write the EMA of any other
relative std or EDM half-life at one snapshot's time as an ordinary network snapshot,
OUTDIR/phema_<std>/network-snapshot-<kimg>.pt (the math: training/phema.py)."""

import os
from typing import Optional, Sequence

from torch_utils import cli
from training import checkpoint, phema

#----------------------------------------------------------------------------

def read_snapshots(run: str) -> list[tuple[int, str, dict]]:
    """[(kimg, path, header)] of the run's phema-snapshot-*.pt, header = {'nimg', 'stds', 'network'
    (class name and arguments of the first profile)}; ValueError when there are none."""
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
                                         network=dict(class_name=first['class_name'], init_kwargs=first['init_kwargs']))))
        del data
    return headers


def profile_loader(path: str, index: int):
    """A function that loads profile `index`'s state dict from a phema snapshot when called."""
    return lambda: checkpoint.load_phema_snapshot(path)['profiles'][index]['network']['state_dict']


def requested_stds(stds: Sequence[float], half_lives: Sequence[float], training_mimg: float) -> list[tuple[float, str]]:
    """[(std, how it was asked for)]: the stds, then each EDM half-life (Mimg) converted to the relative
    std of its averaging profile at the training length (phema.halflife_to_std)."""
    out = [(float(s), f'std {float(s):g}') for s in stds]
    for h in half_lives:
        if not h > 0:
            raise ValueError(f'--half-life={h:g}: a half-life must be > 0 Mimg.')
        out.append((float(phema.halflife_to_std(h, training_mimg)), f'half-life {h:g} Mimg'))
    if not out:
        raise ValueError('Ask for at least one EMA length: --std=0.05,0.1 or --half-life=0.5 (Mimg).')
    for std, asked in out:
        if not 0 < std < phema.STD_MAX:
            raise ValueError(f'{asked}: the relative std must be in (0, {phema.STD_MAX:.4f}).')
    return out


def reconstruct_phema(run: str, outdir: Optional[str] = None, std: Sequence[float] = (), half_life: Sequence[float] = (),
                      kimg: Optional[int] = None, max_residual: float = phema.DEFAULT_MAX_RESIDUAL) -> list[dict]:
    """Reconstruct the EMA of each requested std (and EDM half-life, in Mimg) at snapshot `kimg` (default
    the last) from the run's power-function EMA snapshots, and write OUTDIR/phema_<std>/network-snapshot-
    <kimg>.pt for each (OUTDIR defaults to the run). Returns, per request, {'std', 'asked', 'residual'
    (relative L2 error of its profile), 'amplification' (sum of |coefficients|), 'path'}. ValueError
    for a run without profiles, an unknown kimg, or a profile matched worse than max_residual."""
    outdir = run if outdir is None else outdir
    headers = read_snapshots(run)
    kimgs = [k for k, _, _ in headers]
    kimg = kimgs[-1] if kimg is None else int(kimg)
    if kimg not in kimgs:
        raise ValueError(f'--kimg={kimg}: {run} has post-hoc EMA snapshots at {cli.format_int_list(kimgs)} kimg; choose one of those.')
    out_nimg = next(h['nimg'] for k, _, h in headers if k == kimg)
    requests = requested_stds(std, half_life, out_nimg / 1e6)
    snapshots = [phema.Snapshot(nimg=h['nimg'], std=s, state_dict=profile_loader(path, i))
                 for _k, path, h in headers if h['nimg'] <= out_nimg for i, s in enumerate(h['stds'])]
    in_ofs = [s.nimg for s in snapshots if s.nimg > 0]
    in_std = [s.std for s in snapshots if s.nimg > 0]
    out_std = [s for s, _ in requests]
    phema.check_representable(in_ofs, in_std, out_nimg, out_std, max_residual)  # Before loading any weights.
    result = phema.reconstruct(snapshots, out_std, out_nimg, max_residual=max_residual)
    network = headers[0][2]['network']
    written = []
    for (s, asked), state_dict, residual, amplification in zip(requests, result.state_dicts, result.residuals, result.amplification):
        net = checkpoint.network_from_dict(dict(network, state_dict=state_dict))
        path = os.path.join(outdir, f'phema_{s:.4g}', checkpoint.snapshot_name(kimg))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        info = dict(std=s, asked=asked, residual=float(residual), amplification=float(amplification), run=run, nimg=out_nimg)
        checkpoint.save_network_snapshot(path, net, kimg=kimg, cur_nimg=out_nimg, phema=info)
        written.append(dict(info, path=path))
    return written

#----------------------------------------------------------------------------
