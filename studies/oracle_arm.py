"""The oracle arm of the D study (`--studies=...,oracle`): studies/oracle.py's exact denoiser of a digits
subset, with each of its estimation errors at several strengths, sampled for many D and scored like
the trained arm, with statistics paired by sampling seed.

Every cell of the arm uses the same sampling seeds (seeds c * k ... c * k + k - 1 for digit c), so a
cell can be compared with another seed by seed. Per D there is one base cell (no error) and one cell
per error kind and strength, in OUTDIR/oracle/D<D>/base/ and OUTDIR/oracle/D<D>/<kind>_<strength>/.
For each cell the arm reports:

    fd, share    FD-digits and the recognised share, as the trained arm scores its cells;
    moved        the share of seeds whose sample lands on another subset point than in the same D's
                 base cell (the exact denoiser's samples are subset points; an error changes which);
    tv, distance studies/oracle.cell_measures(): total variation of the point shares from uniform, and
                 the mean RMS distance to the nearest point;
    degradation  the cell's fd and share minus the same D's base cell's, paired by seed;
    vs_diffusion that degradation (and moved) minus diffusion's at the same error and strength, paired
                 by seed; at the base cell the scores themselves minus diffusion's.

Standard errors: of a share or of moved, the sample SE of the per-seed (paired) differences; of a
Frechet distance or a difference of them, the standard deviation over BOOTSTRAP_ROUNDS common
resamples of the seeds (the same resample for every cell, so differences stay paired). There is no
training variance: these are the only errors. beyond_2se marks |mean| > 2 SE.
"""

import dataclasses
import datetime
import json
import math
import os
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

import dnnlib
from metrics import detector as detector_lib
from metrics import digits as digits_detector
from metrics import evaluation
from sampling import provenance
from studies import oracle
from studies.stats import frechet_distance, mean_and_se, paired_bootstrap, paired_samples
from torch_utils import cli

CACHE_NAME = 'oracle-score.npz'  # Beside a cell's class folders: its per-sample scores, keyed by what made them.
BOOTSTRAP_ROUNDS = 200           # Common resamples of the seeds for the Frechet distances' standard errors.

#----------------------------------------------------------------------------
# The arm's grid.

@dataclasses.dataclass(frozen=True)
class OracleGrid:
    D_list: tuple            # None: diffusion.
    strengths: dict          # error kind -> tuple of nonzero strengths (the base cell is strength 0).
    num_samples: int         # Samples per cell, a multiple of the 10 digits.
    per_class: int = oracle.DEFAULT_PER_CLASS  # Subset points per digit.
    subset_seed: int = 0


# D from PFGM (1) to diffusion; every strength of studies/oracle.py's own grid but 0 (the base cell);
# 1,000 samples per cell: 6 x 9 cells in a few minutes on one core. --quick: 3 D, one strength each.
DEFAULTS = dict(D_list=(1, 4, 16, 128, 2048, None), strengths=dict(additive=(0.1, 0.3, 1, 3), sigma=(-0.5, -0.2, 0.2, 0.5)),
                num_samples=1000)
QUICK = dict(D_list=(1, 16, None), strengths=dict(additive=(1,), sigma=(0.5,)), num_samples=500)


def resolve_grid(quick: bool = False, D_list: Any = None, eps: Any = None, kappa: Any = None, num_samples: Optional[int] = None) -> OracleGrid:
    """The arm's grid from the arguments, each left None taken from DEFAULTS (QUICK with quick=True).
    ValueError, with one sentence, for anything invalid."""
    base = QUICK if quick else DEFAULTS
    if D_list is None:
        D_list = base['D_list']
    elif isinstance(D_list, str):
        D_list = [cli.parse_D(v, '--oracle-D') for v in D_list.split(',') if v.strip()]
    D_list = tuple(None if D is None or (isinstance(D, float) and math.isinf(D)) else float(D) for D in D_list)
    if not D_list:
        raise ValueError('The oracle arm\'s list of D is empty; pass at least one, e.g. --oracle-D=1,16,inf.')
    if None not in D_list:
        raise ValueError('The oracle arm compares every D with diffusion; include inf in --oracle-D.')
    D_list = tuple(sorted(set(D_list), key=lambda D: math.inf if D is None else D))
    strengths = {}
    for kind, given in (('additive', eps), ('sigma', kappa)):
        values = base['strengths'][kind] if given is None else given
        values = cli.parse_float_list(values) if isinstance(values, str) else [float(v) for v in values]
        symbol = oracle.ERRORS[kind].symbol
        for v in values:
            if v == 0:
                raise ValueError(f'--oracle-{symbol} lists 0: every D\'s base cell is the error-free one; list nonzero strengths only.')
            try:
                oracle.check_error(kind, v)
            except ValueError:
                raise ValueError(f'--oracle-{symbol}: {oracle.ERRORS[kind].requirement} (and not 0), got {v:g}.') from None
        strengths[kind] = tuple(sorted(set(values)))
    num_samples = base['num_samples'] if num_samples is None else num_samples
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 20 or num_samples % 10:
        raise ValueError(f'The oracle arm\'s samples per cell must be a multiple of the 10 digits, at least 20; got {num_samples!r}.')
    return OracleGrid(D_list=D_list, strengths=strengths, num_samples=num_samples)


def format_D(D: Optional[float]) -> str:
    return oracle.format_D(D)


def D_key(D: Optional[float]):
    return 'inf' if D is None else D


def cells_of(grid: OracleGrid) -> list[tuple[Optional[float], str, float, str]]:
    """[(D, error kind or 'none', strength, folder relative to OUTDIR/oracle)]: per D the base cell first."""
    cells = []
    for D in grid.D_list:
        cells.append((D, 'none', 0.0, os.path.join(f'D{format_D(D)}', 'base')))
        for kind, values in grid.strengths.items():
            cells += [(D, kind, s, os.path.join(f'D{format_D(D)}', f'{kind}_{s:g}')) for s in values]
    return cells

def cell_complete(folder: str, grid: OracleGrid) -> bool:
    return oracle.cell_complete(folder, oracle.class_blocks(grid.num_samples // 10, 10))

#----------------------------------------------------------------------------
# Sampling and per-sample scores.

@dataclasses.dataclass(frozen=True)
class CellScores:
    seeds: np.ndarray        # int64 [n], in the order of the other arrays (the same for every cell).
    features: np.ndarray     # float64 [n, F], the detector's features.
    ok: np.ndarray           # bool [n], recognised as the digit it was generated for.
    index: np.ndarray        # int64 [n], the nearest subset point (of the sample's digit).
    distance: np.ndarray     # float64 [n], RMS pixel distance to it.


def cache_key(folder: str, blocks: list, det: detector_lib.Detector, threshold: float, subset_sha256: str) -> str:
    """What a cell's per-sample scores depend on: its manifests, the detector, the threshold, the subset."""
    manifests = [dnnlib.util.file_sha256(os.path.join(folder, sub, provenance.MANIFEST_NAME)) for _c, _s, sub in blocks]
    return json.dumps(dict(manifests=manifests, detector=det.sha256, threshold=threshold, subset=subset_sha256), sort_keys=True)


def score_cell(folder: str, blocks: list, subset: oracle.Subset, det: detector_lib.Detector, threshold: float) -> CellScores:
    """The per-sample scores of a complete cell, from its cache when the key matches, else computed
    (the detector's features and probabilities as fid.py computes them; the nearest subset points) and cached."""
    key = cache_key(folder, blocks, det, threshold, oracle.subset_sha256(subset.images, subset.labels))
    path = os.path.join(folder, CACHE_NAME)
    if os.path.isfile(path):
        with np.load(path) as f:
            if str(f['key']) == key:
                return CellScores(**{name: f[name] for name in ('seeds', 'features', 'ok', 'index', 'distance')})
    names = evaluation.ImageFiles(folder).names
    stats = evaluation.calculate_inception_stats(folder, det, with_features=True, with_probs=True, num_workers=0, progress=False)
    seeds = np.array([int(os.path.splitext(os.path.basename(n))[0]) for n in names], dtype=np.int64)
    labels = np.array([int(n.split('/')[0]) for n in names], dtype=np.int64)
    x, classes, block_seeds = oracle.read_cell(folder, blocks)
    if block_seeds != seeds.tolist() or classes.tolist() != labels.tolist():
        raise ValueError(f'{folder} holds other images than the oracle arm\'s seeds; delete it and run again.')
    distance, index = oracle.nearest_points(x, subset.images, classes, subset.labels)
    scores = CellScores(seeds=seeds, features=stats['features'].astype(np.float64),
                        ok=digits_detector.recognised(stats['probs'], labels, threshold), index=index.numpy().astype(np.int64),
                        distance=distance.numpy())
    dnnlib.util.write_atomic(path, lambda f: np.savez(f, key=np.str_(key), **dataclasses.asdict(scores)))
    return scores


def run_arm(outdir: str, data: str, grid: OracleGrid, num_steps: int, det: detector_lib.Detector, ref: dict,
            threshold: float = digits_detector.THRESHOLD, device: torch.device | str = 'cpu',
            stage: Optional[Callable[[int, float, float], None]] = None) -> dict:
    """Sample and score every cell of the arm into OUTDIR (complete cells and cached scores are
    reused), on one CPU thread (the exact denoiser's small products run slower on two shared cores);
    stage(cells sampled, seconds, CPU seconds) reports the work done. Returns results.json's 'oracle'."""
    subset = oracle.load_subset(data, grid.per_class, grid.subset_seed)
    blocks = oracle.class_blocks(grid.num_samples // 10, 10)
    cells = cells_of(grid)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start, cpu, sampled = time.time(), time.process_time(), 0
        for D, kind, strength, folder in cells:
            path = os.path.join(outdir, folder)
            if not oracle.cell_complete(path, blocks):
                oracle.sample_oracle_cell(subset.images, subset.labels, D, 'additive' if kind == 'none' else kind, strength,
                                          blocks, path, num_steps, device)
                sampled += 1
        scores = {cell: score_cell(os.path.join(outdir, cell[3]), blocks, subset, det, threshold) for cell in cells}
    finally:
        torch.set_num_threads(threads)
    if stage is not None:
        stage(sampled, time.time() - start, time.process_time() - cpu)
    seeds = next(iter(scores.values())).seeds
    if any(not np.array_equal(s.seeds, seeds) for s in scores.values()):
        raise ValueError(f'The oracle cells in {outdir} hold different seeds; delete the folder and run again.')
    return dict(settings=dict(D=[D_key(D) for D in grid.D_list], strengths={k: list(v) for k, v in grid.strengths.items()},
                              errors={k: oracle.ERRORS[k].formula for k in grid.strengths}, num_samples=grid.num_samples,
                              num_steps=num_steps, per_class=grid.per_class, subset_seed=grid.subset_seed,
                              subset_indices=subset.indices.tolist(), subset_sha256=oracle.subset_sha256(subset.images, subset.labels),
                              bootstrap_rounds=BOOTSTRAP_ROUNDS),
                cells=cell_statistics(grid, cells, scores, ref, outdir),
                time=datetime.datetime.now().isoformat(timespec='seconds'))

#----------------------------------------------------------------------------
# Statistics, paired by sampling seed.

def cell_statistics(grid: OracleGrid, cells: list, scores: dict, ref: dict, outdir: str) -> list[dict]:
    """Every cell's scores, its paired degradation from the same D's base cell, and that degradation
    minus diffusion's (module docstring), with standard errors."""
    n = len(next(iter(scores.values())).seeds)
    rng = np.random.default_rng(0)
    resamples = [rng.integers(0, n, n) for _ in range(BOOTSTRAP_ROUNDS)]  # Common to every cell: differences stay paired.
    fd = {cell: frechet_distance(s.features, ref) for cell, s in scores.items()}
    fd_boot = {cell: np.array([frechet_distance(s.features[idx], ref) for idx in resamples]) for cell, s in scores.items()}
    base = {D: next(c for c in cells if c[0] == D and c[1] == 'none') for D in grid.D_list}
    out = []
    for cell in cells:
        D, kind, strength, folder = cell
        s, b = scores[cell], scores[base[D]]
        share, share_se = mean_and_se(s.ok.astype(np.float64).tolist())
        row = dict(D=D_key(D), error=kind, strength=strength, folder=os.path.abspath(os.path.join(outdir, folder)), n=n,
                   fd=dict(value=fd[cell], se=float(np.std(fd_boot[cell], ddof=1))), share=dict(value=share, se=share_se),
                   distance=float(s.distance.mean()), on_point=float((s.distance < oracle.ON_POINT_RMS).mean()),
                   tv=oracle.point_shares_tv(torch.from_numpy(s.index), torch.from_numpy(seeds_classes(s.seeds, n)),
                                             torch.from_numpy(point_labels(grid)), 10 * grid.per_class))
        moved = (s.index != b.index).astype(np.float64)
        row['moved'] = paired_samples(moved)
        row['degradation'] = dict(fd=paired_bootstrap(fd[cell] - fd[base[D]], fd_boot[cell] - fd_boot[base[D]]),
                                  share=paired_samples(s.ok.astype(np.float64) - b.ok))
        if D is not None:
            other = (None, kind, strength, cell[3].replace(f'D{format_D(D)}', 'Dinf', 1))
            so, bo = scores[other], scores[base[None]]
            if kind == 'none':  # The base cells: the scores themselves.
                row['vs_diffusion'] = dict(fd=paired_bootstrap(fd[cell] - fd[other], fd_boot[cell] - fd_boot[other]),
                                           share=paired_samples(s.ok.astype(np.float64) - so.ok))
            else:
                own = lambda c, bc: fd_boot[c] - fd_boot[bc]
                row['vs_diffusion'] = dict(
                    fd=paired_bootstrap((fd[cell] - fd[base[D]]) - (fd[other] - fd[base[None]]), own(cell, base[D]) - own(other, base[None])),
                    share=paired_samples((s.ok.astype(np.float64) - b.ok) - (so.ok.astype(np.float64) - bo.ok)),
                    moved=paired_samples(moved - (so.index != bo.index)))
        out.append(row)
    return out


def seeds_classes(seeds: np.ndarray, n: int) -> np.ndarray:
    """The digit each seed was sampled for (class_blocks: seeds c * k ... c * k + k - 1 are digit c)."""
    return (seeds // (n // 10)).astype(np.int64)


def point_labels(grid: OracleGrid) -> np.ndarray:
    """The digit of each subset point (choose_subset: per_class points of each digit, in order)."""
    return np.repeat(np.arange(10, dtype=np.int64), grid.per_class)


def beyond(record: dict) -> list[dict]:
    """Every paired difference from diffusion beyond 2 SE: (D, error, strength, score, mean, se)."""
    return [dict(D=c['D'], error=c['error'], strength=c['strength'], score=key, mean=stat['mean'], se=stat['se'])
            for c in record['cells'] for key, stat in c.get('vs_diffusion', {}).items() if stat['beyond_2se']]

#----------------------------------------------------------------------------
# Tables.

def format_stat(stat: Optional[dict], kind: str = 'fd', bold: bool = True) -> str:
    """'mean ± SE' (or 'value ± SE') of a Frechet distance (kind 'fd', 3 significant digits) or of a
    share (kind 'share', 3 decimals), in bold where beyond 2 SE of zero."""
    if not stat:
        return '-'
    fmt = (lambda v: f'{v:.3f}') if kind == 'share' else (lambda v: f'{v:.3g}')
    mean = stat.get('mean', stat.get('value'))
    text = fmt(mean) + (f' ± {fmt(stat["se"])}' if stat.get('se') is not None else '')
    return f'**{text}**' if bold and stat.get('beyond_2se') else text


def markdown(record: dict) -> list[str]:
    """results.md's section of the arm: per error kind, moved, the FD-digits and share degradations and
    their differences from diffusion (rows D, columns the strength)."""
    settings, cells = record['settings'], record['cells']
    lines = ['', '## Oracle arm: exact denoisers with a controlled error', '',
             f'The exact denoiser of {10 * settings["per_class"]} training digits ({settings["per_class"]} per digit, subset seed '
             f'{settings["subset_seed"]}), no training; {settings["num_samples"]} samples per cell with the same seeds in every cell, '
             f'Heun sampler, {settings["num_steps"]} steps. Standard errors: over the seeds (paired), FD-digits by {settings["bootstrap_rounds"]} '
             f'common bootstrap resamples. Bold: beyond 2 SE of zero.', '',
             'Base cells (no error): the scores, and D minus diffusion paired by seed; tv: total variation of the shares of the '
             'subset points from uniform; distance: mean RMS pixel distance to the nearest point ([-1, 1] units).', '',
             '| D | FD-digits | D minus diffusion | recognised share | D minus diffusion | tv | distance |', '|---|---|---|---|---|---|---|']
    label = lambda D: 'inf' if D == 'inf' else f'{D:g}'
    versus = lambda c, key: format_stat(c.get('vs_diffusion', {}).get(key), key) if c['D'] != 'inf' else '-'
    lines += [f'| {label(c["D"])} | {format_stat(c["fd"], bold=False)} | {versus(c, "fd")} | {format_stat(c["share"], "share", bold=False)} | '
              f'{versus(c, "share")} | {c["tv"]:.3f} | {c["distance"]:.4f} |' for c in cells if c['error'] == 'none']
    for kind, formula in settings['errors'].items():
        values = settings['strengths'][kind]
        symbol = oracle.ERRORS[kind].symbol
        header = '| D | ' + ' | '.join(f'{symbol} = {v:g}' for v in values) + ' |'
        rule = '|---|' + '---|' * len(values)
        row = lambda D: [c for c in cells if c['D'] == D and c['error'] == kind]
        Ds = settings['D']
        def table(title, get, Ds=Ds):
            return ['', title, '', header, rule] + [f'| {label(D)} | ' + ' | '.join(get(c) for c in row(D)) + ' |' for D in Ds]
        finite = [D for D in Ds if D != 'inf']
        lines += ['', f'### {kind} error: D_hat = {formula}']
        lines += table('Share of seeds moved to another point than in the base cell:', lambda c: format_stat(c['moved'], 'share', bold=False))
        lines += table('Moved, D minus diffusion:', lambda c: format_stat(c['vs_diffusion']['moved'], 'share'), finite)
        lines += table('FD-digits minus the base cell\'s:', lambda c: format_stat(c['degradation']['fd']))
        lines += table('That degradation, D minus diffusion:', lambda c: format_stat(c['vs_diffusion']['fd']), finite)
        lines += table('Recognised share minus the base cell\'s:', lambda c: format_stat(c['degradation']['share'], 'share'))
        lines += table('That degradation, D minus diffusion:', lambda c: format_stat(c['vs_diffusion']['share'], 'share'), finite)
    return lines


def plot(fig_axes: list, record: dict) -> None:
    """The arm's panels on the given axes (one per error kind): moved against the strength, one line per D."""
    settings, cells = record['settings'], record['cells']
    for ax, kind in zip(fig_axes, settings['strengths']):
        for D in settings['D']:
            row = [c for c in cells if c['D'] == D and c['error'] == kind]
            ax.errorbar([c['strength'] for c in row], [c['moved']['mean'] for c in row], yerr=[c['moved']['se'] or 0 for c in row],
                        marker='o', capsize=3, label='D=inf (diffusion)' if D == 'inf' else f'D={D:g}')
        ax.set_title(f'Oracle, {kind} error', fontsize=10)
        ax.set_xlabel(f'{oracle.ERRORS[kind].symbol} (D_hat = {settings["errors"][kind]})', fontsize=8)
        ax.set_ylabel('share of seeds moved', fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
