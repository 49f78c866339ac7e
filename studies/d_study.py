"""The D study of PFGM++ (Xu et al. 2023, Section 5) in one command: for each D and training seed, train a
model, sample it under the paper's three robustness studies (noise injection alpha, number of sampling
steps, weight quantisation with the published rule) and score every folder; then tables, a figure and
a JSON of every cell: each model's degradation from its own base cell, and each D's paired difference
from diffusion, as means with standard errors over training seeds. The oracle arm (studies/oracle_arm.py)
does the same for exact denoisers with a controlled error, without training.

    python -m studies.d_study                         # The default grid on the quick start's digits.
    python -m studies.d_study --quick                 # A smaller grid: a smoke test in minutes.
    python -m studies.d_study --device=cuda --data=datasets/cifar10-32x32.zip --train-kimg=...   # CIFAR-10, Inception FID.

Every stage is the project's own code: launch.train() (train.py) into OUTDIR/runs/D<D>-seed<s>/, then
generation.run_study() with the study scripts' settings (generate_alpha.py, generate_steps.py,
generate_quant.py) into RUN/<study>/<setting>/, then fid.py's detector statistics and Frechet
distance. On the digits the detector is metrics/digits.py's classifier, trained on the
real digits (FD-digits, and the share of samples it recognises as the digit they were generated
for); with another dataset and no --detector it is fid.py's Inception-v3 (FID). Re-running skips
finished stages: trained models, complete image folders and folders already scored (score.json,
keyed by the folders' generate.json manifests and the detector's and reference's SHA-256).

Outputs in OUTDIR: results.json (every cell with its settings, per-seed values and provenance),
results.md (one table per study and score: rows D, columns the setting, "mean +- SE") and
d_study.png (one panel per study and score, one line per D with error bars).
"""

import os
import sys

if __name__ == '__main__':
    from torch_utils.threads import use_passive_threads
    use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import math
import time
from typing import Any, Callable, Optional

import click
import numpy as np
import torch

import dnnlib
from metrics import detector as detector_lib
from metrics import digits as digits_detector
from metrics import evaluation
from sampling import generation, provenance
from studies import oracle_arm, quickstart, robustness
from studies.stats import frechet_distance, mean_and_se, paired  # noqa: F401 (mean_and_se: part of this module's interface)
from torch_utils import cli, image_io, misc
from training import checkpoint, launch, presets
from training.dataset import ImageFolderDataset

RESULTS_FORMAT = 'pfgmpp-d-study'
RESULTS_VERSION = 1
CONFIG_NAME = 'd_study.json'     # The settings that fix what every cell means, checked on a rerun.
SCORE_NAME = 'score.json'        # Beside the images of a cell (fid.py reads only PNG/JPEG files).
DEFAULT_DATA = 'datasets/digits-16x16.zip'  # The quick start's dataset (quickstart.py --data-dir default).
BOOTSTRAP_ROUNDS = 100           # Resamples of one model's samples for the bootstrap standard error.
BOOTSTRAP_MAX_FEATURES = 256     # Above this (Inception-v3: 2048) the bootstrap's matrix roots cost too much.
EXIT_STOPPED = launch.EXIT_STOPPED

#----------------------------------------------------------------------------
# The studies: each is one of the study scripts' settings functions.

@dataclasses.dataclass(frozen=True)
class Study:
    name: str                                # --studies name.
    title: str                               # Table and panel title.
    axis: str                                # What the setting is, for the figure's x axis.
    parse: Callable[[Any], list]             # The study script's list parser: validates the settings.
    settings: Callable[[list, 'Grid'], list]  # (values, grid) -> [(folder, sampler overrides, network transform)] for generation.run_study.


STUDIES = {
    'alpha': Study('alpha', 'Noise injection', 'alpha (noise alpha * sigma_t added before every step)',
                   robustness.parse_alphas, lambda values, grid: robustness.alpha_settings(values)),
    'steps': Study('steps', 'Sampling steps', 'steps N (Heun: 2N - 1 network evaluations)',
                   robustness.parse_steps, lambda values, grid: robustness.steps_settings(values)),
    'quant': Study('quant', 'Weight quantisation', 'bits per weight',
                   robustness.parse_bits, lambda values, grid: robustness.quant_settings(values, scope=grid.quant_scope)),
}
# Every model's base cell: the grid's sampler, nothing perturbed. Degradations are measured from it.
BASE = ('base', None, 'base', {}, None)


def quant_scope(resolution: int) -> str:
    """The published rule keeps the '32' layers exact, CIFAR-10's finest stage; on other data 'finest'
    keeps the data's own finest stage exact, which is what the rule means (sampling/quantization.py)."""
    return 'published' if resolution == 32 else 'finest'

#----------------------------------------------------------------------------
# The grids. None in a D list is D -> infinity (diffusion, EDM).

@dataclasses.dataclass(frozen=True)
class Grid:
    D_list: tuple
    seeds: tuple
    kimg: float
    num_samples: int
    settings: dict       # study name -> list of setting values, in the order of STUDIES.
    num_steps: int       # Heun steps of the sampler, unless the study sets them (the steps study).
    quant_scope: str = 'finest'  # quant_scope(): which layers the quantisation study keeps exact.
    oracle: Optional[oracle_arm.OracleGrid] = None  # The oracle arm's grid, when it runs.

    @property
    def sampler_kwargs(self) -> dict:
        return dict(num_steps=self.num_steps)


# The default grid (docs/d_study.md): 3 D x 6 training seeds = 18 models of 8 kimg, each sampled with
# 9 Heun steps (17 network evaluations) for its base cell and the settings of each study: noise
# injection up to where the models degrade, steps from the onset of failure to converged (6 included),
# 4 to 8 bits; 100 samples (10 per digit) per cell, the same seeds for every model, so that the
# differences between settings and between D are paired. --quick, a smoke test: 2 D x 2 seeds of 4
# kimg, one or two settings per study, 50 samples per cell.
DEFAULT_STEPS = 9       # The paper samples with 18 (35 evaluations); on the digits 9 scored as well, at half the cost.
DEFAULTS = dict(D_list=(16, 2048, None), seeds=(0, 1, 2, 3, 4, 5), kimg=8, num_samples=100,
                settings=dict(alpha=[0.1, 0.3, 0.5], steps=[5, 6, 7, 9, 12], quant=[4, 5, 6, 8]))
QUICK = dict(D_list=(16, None), seeds=(0, 1), kimg=4, num_samples=50,
             settings=dict(alpha=[0.3], steps=[5, 6], quant=[4]))
# Inception-v3 FID needs thousands of samples; EDM's CIFAR-10 recipe trains for 200 Mimg (set --train-kimg).
INCEPTION_NUM_SAMPLES = dict(default=10000, quick=1000)
INCEPTION_KIMG = dict(default=200000, quick=2000)

# Seconds per unit of work before this run has measured its own, as measured on 2 shared CPU cores for
# the digits recipe (training; sampling in batches of 20; scoring).
PRIOR_SECONDS = dict(train=11.0, generate=0.0045, score=0.001, oracle=2.0)
UNITS = dict(train='kimg', generate='image-NFE', score='image', oracle='cell')


def format_D(D: Optional[float]) -> str:
    """16 -> '16', None -> 'inf'."""
    return 'inf' if D is None else f'{D:g}'


def D_key(D: Optional[float]):
    """D as results.json holds it: the number, or 'inf'."""
    return 'inf' if D is None else D


def parse_D(value: Any) -> Optional[float]:
    """One D as --D takes it (cli.parse_D: a number >= 1, or inf), None for D -> infinity."""
    if value is None:
        return None
    D = cli.parse_D(value, option='--D')
    return None if math.isinf(D) else D


def parse_D_list(values: Any) -> tuple:
    """'16,128,2048,inf' or a sequence -> (16.0, 128.0, 2048.0, None); at least one, no repeats."""
    items = [v for v in values.replace(' ', '').split(',') if v] if isinstance(values, str) else list(values or [])
    if not items:
        raise ValueError('The list of D is empty; pass at least one, e.g. --D=16,inf.')
    D_list = tuple(parse_D(v) for v in items)
    if len(set(D_list)) != len(D_list):
        raise ValueError(f'The list of D repeats a value ({", ".join(map(format_D, D_list))}); pass each D once.')
    return D_list


ARMS = (*STUDIES, 'oracle')  # --studies names: the trained arm's studies and the oracle arm (studies/oracle_arm.py).


def parse_studies(values: Any) -> list[str]:
    """'alpha,steps' or a sequence -> known study names in ARMS order."""
    names = [v.strip() for v in (values.split(',') if isinstance(values, str) else values or []) if v.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names:
        raise ValueError(f'Unknown study {", ".join(map(repr, unknown)) or "(none)"}; choose from {", ".join(ARMS)}.')
    return [n for n in ARMS if n in names]


def resolve_grid(quick: bool = False, D_list: Any = None, seeds: Any = None, kimg: Optional[float] = None,
                 num_samples: Optional[int] = None, studies: Any = None, alphas: Any = None, steps_list: Any = None,
                 bits: Any = None, num_steps: Optional[int] = None, scoring: str = 'digits', resolution: int = 16,
                 oracle_D: Any = None, oracle_eps: Any = None, oracle_kappa: Any = None, oracle_samples: Optional[int] = None) -> Grid:
    """The grid from the arguments, each one left None taken from DEFAULTS (QUICK with quick=True; for
    the Inception FID the sample count and the training budget of INCEPTION_*), the oracle arm's from
    oracle_arm.DEFAULTS (QUICK); the oracle arm runs on the digits only, by default whenever they are
    the data. ValueError, with one sentence, for anything invalid."""
    base = QUICK if quick else DEFAULTS
    D_list = parse_D_list(base['D_list'] if D_list is None else D_list)
    seeds = tuple(cli.parse_int_list(base['seeds'] if seeds is None else seeds, unique=True))
    if not seeds:
        raise ValueError('The list of training seeds is empty; pass e.g. --train-seeds=0-2.')
    if kimg is None:
        kimg = base['kimg'] if scoring != 'inception' else INCEPTION_KIMG['quick' if quick else 'default']
    if isinstance(kimg, bool) or not isinstance(kimg, (int, float)) or not (kimg >= 1 and float(kimg).is_integer()):
        raise ValueError(f'The training budget must be a whole number of kimg >= 1 (train.py counts whole kimg), got {kimg!r}.')
    if num_samples is None:
        num_samples = base['num_samples'] if scoring != 'inception' else INCEPTION_NUM_SAMPLES['quick' if quick else 'default']
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f'The number of samples per cell must be an integer >= 2, got {num_samples!r}.')
    names = parse_studies((ARMS if scoring == 'digits' else STUDIES) if studies is None else studies)
    if 'oracle' in names and scoring != 'digits':
        raise ValueError('The oracle arm samples the exact denoiser of a subset of the digits; it runs with the quick start\'s digits '
                         '(leave --data and --detector out), or leave oracle out of --studies.')
    oracle = oracle_arm.resolve_grid(quick, oracle_D, oracle_eps, oracle_kappa, oracle_samples) if 'oracle' in names else None
    given = dict(alpha=alphas, steps=steps_list, quant=bits)
    settings = {}
    for name in (n for n in names if n in STUDIES):
        values = base['settings'][name] if given[name] is None else given[name]
        try:
            settings[name] = STUDIES[name].parse(values)
        except ValueError as err:
            raise ValueError(f'The {name} study\'s settings: {err}') from None
    num_steps = DEFAULT_STEPS if num_steps is None else num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f'The number of sampling steps must be an integer >= 1, got {num_steps!r}.')
    return Grid(D_list=D_list, seeds=seeds, kimg=float(kimg), num_samples=num_samples, settings=settings, num_steps=num_steps,
                quant_scope=quant_scope(resolution), oracle=oracle)

#----------------------------------------------------------------------------
# Data, recipe and detector: what the data decides.

def is_digits_like(resolution: int, channels: int, label_dim: int) -> bool:
    """Whether a dataset has the quick start's digits' shape: 16x16 grayscale with 10 classes."""
    return resolution == digits_detector.RESOLUTION and channels == 1 and label_dim == digits_detector.NUM_CLASSES


def choose_scoring(detector: Optional[str], digits_like: bool) -> str:
    """How the samples are scored: 'file' with a --detector, else 'digits' (the digits detector trained
    on the data: FD-digits and the recognised share) for digits-like data, else 'inception' (fid.py's
    Inception-v3, the FID of the paper)."""
    if detector is not None:
        return 'file'
    return 'digits' if digits_like else 'inception'


def train_recipe(resolution: int, label_dim: int) -> dict:
    """launch.train() options (beyond data, D, seed, duration and the I/O options) for the data:
    16x16, the quick start's recipe (presets.RECIPES['quickstart']; class-conditional when the data has
    labels); 32x32, presets.RECIPES['cifar10'] (train.py's defaults)."""
    if resolution == 16:
        options = {k: v for k, v in presets.RECIPES['quickstart'].items() if k not in ('D', 'seed', 'snap', 'dump')}
        options['cres'] = cli.parse_int_list(options['cres'])
        options['cond'] = int(label_dim > 0)
        return options
    if resolution == 32:
        return dict(presets.RECIPES['cifar10'])
    raise ValueError(f'The D study has training recipes for 16x16 data (the quick start\'s) and 32x32 data (EDM\'s CIFAR-10), '
                     f'not for {resolution}x{resolution}.')


def ensure_digits_dataset(data: Optional[str]) -> str:
    """The dataset path: `data`, or the quick start's digits dataset (DEFAULT_DATA), built the way the
    quick start builds it (quickstart.export_step and convert_step) when it is missing."""
    if data is not None:
        if not os.path.exists(data):
            raise FileNotFoundError(f'--data {data} does not exist; pass a dataset ZIP or folder (dataset_tool.py), or leave --data out for the digits.')
        return data
    paths = quickstart.demo_paths('.', 'unused', os.path.dirname(DEFAULT_DATA), 'downloads/sklearn-digits-8x8')
    if not os.path.isfile(paths.dataset):
        try:
            quickstart.export_step(paths)
            quickstart.convert_step(paths)
        except ImportError as err:  # scikit-learn: the message says how to install it.
            raise ValueError(str(err)) from None
    return paths.dataset


@dataclasses.dataclass
class DataInfo:
    path: str
    resolution: int
    channels: int
    label_dim: int
    sha256: Optional[str]


def describe_data(path: str) -> DataInfo:
    dataset = ImageFolderDataset(path, use_labels=True)
    sha = dnnlib.util.file_sha256(path) if os.path.isfile(path) else None
    return DataInfo(path=path, resolution=dataset.resolution, channels=dataset.num_channels,
                    label_dim=dataset.label_dim if dataset.has_onehot_labels else 0, sha256=sha)


def check_detector(detector: detector_lib.Detector, data: DataInfo) -> int:
    """Call the detector on a batch like the samples (uint8 [2, 3, R, R]); ValueError with one sentence
    when it is not a detector. Returns the number of classes its probabilities have."""
    images = torch.zeros([2, 3, data.resolution, data.resolution], dtype=torch.uint8)
    with torch.no_grad():
        try:
            features = detector.features(images)
            probs = detector.probs(images)
        except ValueError as err:
            raise ValueError(f'--detector {detector.source} is not a detector for {data.resolution}x{data.resolution} images: {cli.first_line(err)}') from None
    if features.shape[1] < 1:
        raise ValueError(f'--detector {detector.source} returns no features.')
    return int(probs.shape[1])

#----------------------------------------------------------------------------
# Statistics: mean and standard error over independently trained models.

def bootstrap_se(features: np.ndarray, ok: Optional[np.ndarray], ref: dict, rounds: int = BOOTSTRAP_ROUNDS,
                 seed: int = 0) -> dict:
    """Standard errors over resamples (with replacement) of one model's samples: of the Frechet
    distance (None above BOOTSTRAP_MAX_FEATURES features) and of the recognised share (ok: bool [N])."""
    rng = np.random.default_rng(seed)
    n = len(features)
    fds, shares = [], []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        if features.shape[1] <= BOOTSTRAP_MAX_FEATURES:
            fds.append(frechet_distance(features[idx], ref))
        if ok is not None:
            shares.append(float(ok[idx].mean()))
    return dict(fd=float(np.std(fds, ddof=1)) if fds else None, share=float(np.std(shares, ddof=1)) if shares else None)

#----------------------------------------------------------------------------
# Progress: one line per stage with the time elapsed and an estimate of the time left.

class Progress:
    """Counts stages and estimates the time left from the mean seconds per unit of work of each kind
    (train: kimg, generate: images x network evaluations, score: images) measured so far in this run,
    or PRIOR_SECONDS before the first of a kind."""

    def __init__(self, pending: dict, total_stages: int, enabled: bool = True, log_path: Optional[str] = None):
        self.pending = {kind: 0.0 for kind in UNITS} | dict(pending)  # kind -> units of work still to do.
        self.total = total_stages
        self.count = 0
        self.spent = {k: 0.0 for k in UNITS}
        self.done = {k: 0.0 for k in UNITS}
        self.start = time.time()
        self.enabled = enabled
        self.records = []
        self.log_path = log_path            # Every stage that ran, one JSON line each, across reruns.

    def rate(self, kind: str) -> float:
        return self.spent[kind] / self.done[kind] if self.done[kind] > 0 else PRIOR_SECONDS[kind]

    def seconds_left(self) -> float:
        return sum(self.pending[k] * self.rate(k) for k in UNITS)

    def stage(self, kind: str, label: str, units: float, seconds: Optional[float] = None, cpu_seconds: Optional[float] = None) -> None:
        """Report a stage: run for `seconds` (None: nothing to do, done earlier)."""
        self.count += 1
        if seconds is not None:
            self.pending[kind] = max(self.pending[kind] - units, 0.0)
            self.spent[kind] += seconds
            self.done[kind] += units
            record = dict(kind=kind, stage=label, units=units, unit=UNITS[kind], seconds=seconds, cpu_seconds=cpu_seconds,
                          time=datetime.datetime.now().isoformat(timespec='seconds'))
            self.records.append(record)
            if self.log_path is not None:
                with open(self.log_path, 'a', encoding='utf-8') as f:
                    f.write(json.dumps(record) + '\n')
            what = f'{format_seconds(seconds)} ({units:g} {UNITS[kind]})'
        else:
            what = 'done earlier'
        if self.enabled:
            print(f'[{self.count}/{self.total}] {kind} {label}: {what}; elapsed {format_seconds(time.time() - self.start)}, '
                  f'about {format_seconds(self.seconds_left())} left', flush=True)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds} s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


@contextlib.contextmanager
def captured(log_path: Optional[str]):
    """Send what a stage prints (train.py's ticks, generate.py's lines) to a log file instead of the
    terminal, so that the terminal shows one line per stage; nothing is captured with log_path None."""
    if log_path is None:
        yield
        return
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'a', encoding='utf-8') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


class Stopped(ValueError):
    """Training was stopped by a signal after saving its state; the rerun continues."""

#----------------------------------------------------------------------------
# The plan: models, cells, their folders, and what is already done.

@dataclasses.dataclass
class Model:
    D: Optional[float]
    seed: int
    run_dir: str

    @property
    def name(self) -> str:
        return f'D{format_D(self.D)}-seed{self.seed}'

    @property
    def label(self) -> str:
        return f'D={format_D(self.D)} seed {self.seed}'


def run_name(D: Optional[float], seed: int) -> str:
    return f'D{format_D(D)}-seed{seed}'


def sample_blocks(num_samples: int, num_classes: int) -> list[tuple[Optional[int], list[int], str]]:
    """[(class, seeds, subfolder)]: for class-conditional sampling num_samples / num_classes samples of
    each class c, seeds c * k ... c * k + k - 1 in subfolder '<c>' (as the quick start samples each
    digit, so the classes are as balanced as in the reference data); unconditional: seeds 0 ... N - 1."""
    if num_classes == 0:
        return [(None, list(range(num_samples)), '')]
    if num_samples % num_classes != 0:
        raise ValueError(f'The number of samples per cell ({num_samples}) must be a multiple of the {num_classes} classes, '
                         f'so that every class is sampled equally often.')
    k = num_samples // num_classes
    return [(c, list(range(c * k, (c + 1) * k)), str(c)) for c in range(num_classes)]


def folder_complete(folder: str, blocks: list) -> bool:
    """Whether a cell's folder holds every seed's image of every block (generate.py writes each image
    atomically, so one that exists is complete) and the manifests."""
    for _c, seeds, sub in blocks:
        path = os.path.join(folder, sub)
        if provenance.read_manifest(path) is None or generation.missing_seeds(path, seeds):
            return False
    return True


def target_kimg(kimg: float) -> int:
    return max(int(kimg), 1)  # train.py's total_kimg.


def final_network(model: Model, kimg: float) -> Optional[str]:
    """The network snapshot of the finished training, or None while the run has not reached kimg."""
    found = checkpoint.find_checkpoints(model.run_dir, 'network')
    if found and found[-1][0] >= target_kimg(kimg):
        return found[-1][1]
    return None


def manifests_digest(folder: str, blocks: list) -> str:
    """SHA-256 over the generate.json manifests of a cell's folders: which images a score is of."""
    digest = hashlib.sha256()
    for _c, _seeds, sub in blocks:
        path = os.path.join(folder, sub, provenance.MANIFEST_NAME)
        digest.update(sub.encode() + b'\0' + (dnnlib.util.file_sha256(path).encode() if os.path.isfile(path) else b'-') + b'\n')
    return digest.hexdigest()


def score_key(folder: str, blocks: list, scorer: 'Scorer') -> dict:
    return dict(manifests_sha256=manifests_digest(folder, blocks), detector_sha256=scorer.detector_sha256,
                ref_sha256=scorer.ref_sha256, threshold=scorer.threshold, bootstrap_rounds=BOOTSTRAP_ROUNDS)


def read_score(folder: str, key: dict) -> Optional[dict]:
    """The cached score of a cell when its key matches (same images, detector and reference)."""
    path = os.path.join(folder, SCORE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if all(record.get(k) == v for k, v in key.items()) else None

#----------------------------------------------------------------------------
# Scoring with fid.py's functions.

@dataclasses.dataclass
class Scorer:
    kind: str                     # 'digits' | 'inception' | 'file'
    detector: detector_lib.Detector
    detector_path: Optional[str]  # None: fid.py's Inception-v3.
    detector_sha256: str
    ref_path: str
    ref_sha256: str
    ref: dict
    num_classes_probs: int        # Columns of the detector's probabilities.
    label_dim: int                # Classes the samples are generated for (0: unconditional sampling).
    threshold: float = digits_detector.THRESHOLD

    @property
    def with_share(self) -> bool:
        """The recognised share needs class-conditional samples and a detector of the data's classes."""
        return self.label_dim > 0 and self.num_classes_probs == self.label_dim

    def score(self, folder: str, num_expected: int, labels: Optional[np.ndarray] = None) -> dict:
        """FD (fid.py's Frechet distance of the detector's features to the reference) and, with_share,
        the recognised share (digits_detector.recognised with the classes the samples were generated
        for); with their bootstrap standard errors over this folder's samples."""
        names = evaluation.ImageFiles(folder).names
        if len(names) != num_expected:
            raise ValueError(f'{folder} holds {len(names)} images, but the study expects {num_expected}; it was made with other '
                             f'settings: delete it, or use another --outdir.')
        stats = evaluation.calculate_inception_stats(folder, self.detector, with_features=True, with_probs=self.with_share,
                                              num_workers=0, progress=False)
        result = dict(num=int(stats['num']), fd=evaluation.calculate_fid_from_inception_stats(stats['mu'], stats['sigma'], self.ref['mu'], self.ref['sigma']))
        ok = None
        if self.with_share and labels is not None:
            ok = digits_detector.recognised(stats['probs'], labels, self.threshold)
            result['share'] = float(ok.mean())
            result['per_class_recognised'] = [int(ok[labels == c].sum()) for c in range(self.label_dim)]
        boot = bootstrap_se(stats['features'], ok, self.ref)
        result['bootstrap_se'] = boot
        return result


def labels_of(folder: str, blocks: list) -> Optional[np.ndarray]:
    """The class each image of a cell was generated for, in fid.py's (sorted name) order."""
    if blocks[0][0] is None:
        return None
    return np.asarray([int(name.split('/')[0]) for name in evaluation.ImageFiles(folder).names], dtype=np.int64)


REAL_DRAWS = 10  # Random real subsets for the Frechet distance's floor.


def real_labels(data: str, num_classes: int) -> Optional[np.ndarray]:
    """The class of every real image, in fid.py's (sorted name) order; None for unconditional studies."""
    if num_classes == 0:
        return None
    source = image_io.ImageSource(data)  # What evaluation.ImageFiles lists, in the same order.
    values = source.read_labels(source.image_names)
    if values is None:
        raise ValueError(f'{data} has no labels (dataset.json), but the study samples each class.')
    labels = image_io.labels_array(values, data)
    return labels if labels.ndim == 1 else labels.argmax(axis=1)  # Class indices, or one-hot vectors.


def real_floor(features: np.ndarray, labels: Optional[np.ndarray], ref: dict, num_samples: int, num_classes: int,
               draws: int = REAL_DRAWS) -> dict:
    """What a perfect generator scores at the study's sample count: the Frechet distance to the
    reference of `draws` random subsets of the real images, each as large as a cell and, for
    class-conditional studies, with as many images of each class as a cell has (sample_blocks); the
    mean and the standard deviation over the draws. At 200 samples class balance matters: on the digits
    balanced subsets score about half of what unbalanced ones do."""
    values = []
    for seed in range(draws):
        rnd = np.random.RandomState(seed)
        if labels is None:
            idx = rnd.choice(len(features), min(num_samples, len(features)), replace=False)
        else:
            per_class = num_samples // num_classes
            pools = [np.flatnonzero(labels == c) for c in range(num_classes)]
            idx = np.concatenate([rnd.choice(pool, per_class, replace=len(pool) < per_class) for pool in pools])
        values.append(frechet_distance(features[idx], ref))
    return dict(real_num=int(len(idx)), real_balanced=labels is not None, real_draws=draws,
                real_fd=float(np.mean(values)), real_fd_sd=float(np.std(values, ddof=1)) if draws > 1 else 0.0)


def reference_statistics(data: DataInfo, det: detector_lib.Detector, kind: str, ref_path: str, device: str,
                         num_classes: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Write the reference statistics to ref_path and return the real images' (features, labels) the
    floor is drawn from. On the digits: the held-out quarter the digits detector never saw
    (digits_detector.split_heldout with its seed, 0), so that neither the detector nor the reference
    has seen the images they judge; otherwise fid.py's statistics of all the data."""
    if kind != 'digits':
        evaluation.ref(data=data.path, dest=ref_path, detector=det.source, workers=0, device=device)
        real = evaluation.calculate_inception_stats(data.path, det, with_features=True, num_workers=0, progress=False)
        return real['features'], real_labels(data.path, num_classes)
    real = evaluation.calculate_inception_stats(data.path, det, with_features=True, num_workers=0, progress=False)
    labels = real_labels(data.path, digits_detector.NUM_CLASSES)
    _train, heldout = digits_detector.split_heldout(labels, seed=0)
    features = real['features'][heldout].astype(np.float64)  # float64 statistics, as fid.py's.
    meta = dict(evaluation.ref_metadata(data.path, det, len(heldout)), subset=np.str_('digits held out from the detector (seed 0)'))
    arrays = dict(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False), **meta)
    dnnlib.util.write_atomic(ref_path, lambda f: np.savez(f, **arrays))
    return features, (labels[heldout] if num_classes else None)


def make_scorer(outdir: str, data: DataInfo, kind: str, detector: Optional[str], device: torch.device,
                num_samples: int, num_classes: int, log_path: Optional[str]) -> tuple[Scorer, dict]:
    """The detector (trained on the digits for 'digits'), the reference statistics of the data
    (evaluation.ref, reused while the data and the detector are the same), and the real data's own scores at
    the study's sample count (what a perfect generator would get): (scorer, info for results.json)."""
    info = dict(kind=kind)
    if kind == 'digits':
        path = os.path.join(outdir, 'digits-detector.pt')
        with captured(log_path):
            info['detector_info'] = digits_detector.build_detector(data.path, path, seed=0, progress=False)
    else:
        path = detector
    det = detector_lib.load_detector(path, device=device)
    num_classes_probs = check_detector(det, data)
    ref_path = os.path.join(outdir, f'fid-ref-{det.sha256[:12]}.npz')
    ref_info_path = os.path.splitext(ref_path)[0] + '.json'
    ref_key = dict(data_sha256=data.sha256, data=os.path.abspath(data.path), detector_sha256=det.sha256)
    ref_key.update(floor_samples=num_samples, real_balanced=num_classes > 0, real_draws=REAL_DRAWS)
    ref_info = None
    if os.path.isfile(ref_info_path) and os.path.isfile(ref_path):
        with open(ref_info_path, encoding='utf-8') as f:
            ref_info = json.load(f)
    ref_key.update(reference='heldout' if kind == 'digits' else 'all')
    if ref_info is None or any(ref_info.get(k) != v for k, v in ref_key.items()):
        with captured(log_path):
            features, labels = reference_statistics(data, det, kind, ref_path, str(device.type), num_classes)
        floor = real_floor(features, labels, evaluation.load_ref_stats(ref_path), num_samples, num_classes)
        ref_info = dict(ref_key, sha256=dnnlib.util.file_sha256(ref_path), **floor)
        dnnlib.util.write_atomic(ref_info_path, lambda f: f.write((json.dumps(ref_info, indent=2) + '\n').encode()))
    scorer = Scorer(kind=kind, detector=det, detector_path=path, detector_sha256=det.sha256, ref_path=ref_path,
                    ref_sha256=ref_info['sha256'], ref=evaluation.load_ref_stats(ref_path), num_classes_probs=num_classes_probs,
                    label_dim=num_classes)
    info.update(detector=path or detector_lib.DETECTOR_URL, detector_sha256=det.sha256, ref=ref_path, ref_sha256=ref_info['sha256'],
                real_num=ref_info['real_num'], real_fd=ref_info['real_fd'], real_fd_sd=ref_info['real_fd_sd'],
                real_balanced=ref_info['real_balanced'], real_draws=ref_info['real_draws'], reference=ref_info['reference'],
                with_share=scorer.with_share,
                threshold=scorer.threshold if scorer.with_share else None)
    return scorer, info


def _count_images(path: str) -> int:
    return len(evaluation.ImageFiles(path))

#----------------------------------------------------------------------------
# The study.

def check_config(outdir: str, config: dict) -> None:
    """OUTDIR/d_study.json fixes what the cells mean (data, recipe, budget, samples, scoring); a rerun
    may add D, seeds, studies or settings, but not change those. Written on the first run."""
    path = os.path.join(outdir, CONFIG_NAME)
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            old = json.load(f)
        diffs = [f'{k}: {old.get(k)!r} -> {v!r}' for k, v in config.items() if old.get(k) != v]
        if diffs:
            raise ValueError(f'{outdir} holds a D study with other settings ({"; ".join(diffs[:3])}); use another --outdir '
                             f'or the same settings.')
        return
    dnnlib.util.write_atomic(path, lambda f: f.write((json.dumps(config, indent=2) + '\n').encode()))


# launch.train() options that train_model() sets for each model.
RESERVED_TRAIN_OPTIONS = ('outdir', 'name', 'data', 'D', 'pfgmpp', 'aug_dim', 'seed', 'duration', 'tick', 'snap', 'dump', 'device', 'resume')


def setting_nfe(grid: Grid, overrides: dict) -> int:
    """Network evaluations per image of a setting (generation.nfe of the grid's sampler with the setting's overrides)."""
    return generation.nfe({**grid.sampler_kwargs, **overrides})


def check_paths(outdir: str, detector: Optional[str]) -> None:
    """One-line errors for a detector that is not a file and an outdir that is a file."""
    if detector is not None and not isinstance(detector, str):
        raise ValueError(f'--detector must be a file path, got {detector!r}.')
    if detector is not None and not os.path.isfile(detector):
        raise FileNotFoundError(f'--detector {detector} does not exist; pass a TorchScript or pickle detector file, or leave it out.')
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ValueError(f'--outdir {outdir} is a file; choose a folder.')


def describe_grid(grid: Grid, models: list, cells: list) -> str:
    """The start line's account of the models, settings and oracle cells."""
    trained = (f'{len(models)} models (D = {", ".join(map(format_D, grid.D_list))}; training seeds {cli.format_int_list(grid.seeds)}; '
               f'{target_kimg(grid.kimg)} kimg each), {len(cells)} settings, {grid.num_samples} samples per cell' if models else
               'no trained models')
    if grid.oracle is None:
        return trained
    per_D = len(oracle_arm.cells_of(grid.oracle)) // len(grid.oracle.D_list)
    return (f'{trained}; oracle arm: D = {", ".join(map(format_D, grid.oracle.D_list))}, {per_D} cells each of '
            f'{grid.oracle.num_samples} samples')


def run_oracle_stage(oracle_dir: str, data_path: str, grid: Grid, scorer, dev, bar, log_dir: str) -> dict:
    """The oracle arm as one stage (first: minutes, and no training variance); its record, with beyond_2se."""
    work = []
    with captured(os.path.join(log_dir, 'oracle.txt')):
        record = oracle_arm.run_arm(oracle_dir, data_path, grid.oracle, grid.num_steps, scorer.detector, scorer.ref, scorer.threshold,
                                    dev, stage=lambda *args: work.append(args))
    cells_sampled, seconds, cpu_seconds = work[0]
    bar.stage('oracle', 'arm', cells_sampled, seconds if cells_sampled else None, cpu_seconds)
    record['beyond_2se'] = oracle_arm.beyond(record)
    return record


def run_d_study(
    outdir: str = 'd-study',                 # Everything goes here.
    data: Optional[str] = None,              # Dataset ZIP/folder; None: the quick start's digits (built if missing).
    D_list: Any = None,                      # D values (None or 'inf': D -> infinity); default 16, 2048, inf.
    kimg: Optional[float] = None,            # Training budget per model, whole kimg.
    seeds: Any = None,                       # Training seeds; default 0-5.
    studies: Any = None,                     # Subset of 'alpha', 'steps', 'quant', 'oracle'; default all (oracle: digits only).
    alphas: Any = None,                      # Noise injection strengths.
    steps_list: Any = None,                  # Sampling step counts.
    bits: Any = None,                        # Quantisation bit widths (the published rule; scope: quant_scope()).
    num_samples: Optional[int] = None,       # Samples per cell (a multiple of the classes when conditional).
    num_steps: Optional[int] = None,         # Heun steps of the alpha and quant studies; default 9 (DEFAULT_STEPS).
    oracle_D: Any = None,                    # The oracle arm's D values (inf included); default 1, 4, 16, 128, 2048, inf.
    oracle_eps: Any = None,                  # Its additive error's strengths (nonzero).
    oracle_kappa: Any = None,                # Its noise-level error's strengths (nonzero).
    oracle_samples: Optional[int] = None,    # Its samples per cell; default 1000.
    train_options: Optional[dict] = None,    # launch.train() options that replace the recipe's (e.g. a tiny network for tests).
    detector: Optional[str] = None,          # Detector file for fid.py; None: digits detector or Inception-v3.
    device: str = 'auto',                    # auto | cuda | cpu.
    quick: bool = False,                     # The smaller grid (QUICK) for options left None.
    progress: bool = True,                   # Progress lines on stdout (stage output goes to OUTDIR/logs/).
) -> dict:
    """Run (or continue) the D study and write results.json, results.md and d_study.png into outdir.
    Returns the results (as results.json holds them). Raises ValueError / OSError with one sentence for
    bad input, before anything is written into outdir."""
    # Everything that can be checked without work first.
    dev = misc.resolve_device(device)
    check_paths(outdir, detector)
    arm = dict(oracle_D=oracle_D, oracle_eps=oracle_eps, oracle_kappa=oracle_kappa, oracle_samples=oracle_samples)
    resolve_grid(quick, D_list, seeds, kimg, num_samples, studies, alphas, steps_list, bits, num_steps, **arm)  # Fail fast, before any work.
    data_path = ensure_digits_dataset(data)
    data_info = describe_data(data_path)
    kind = choose_scoring(detector, is_digits_like(data_info.resolution, data_info.channels, data_info.label_dim))
    grid = resolve_grid(quick, D_list, seeds, kimg, num_samples, studies, alphas, steps_list, bits, num_steps, scoring=kind,
                        resolution=data_info.resolution, **arm)
    reserved = sorted(set(train_options or {}) & set(RESERVED_TRAIN_OPTIONS))
    if reserved:
        raise ValueError(f'train_options may not set {", ".join(reserved)}: the study sets them for each model.')
    recipe = dict(train_recipe(data_info.resolution, data_info.label_dim), **(train_options or {}))
    num_classes = data_info.label_dim if recipe['cond'] else 0
    blocks = sample_blocks(grid.num_samples, num_classes)
    if detector is not None:  # A file that is not a detector: one line, before any training.
        check_detector(detector_lib.load_detector(detector, device=dev), data_info)

    os.makedirs(outdir, exist_ok=True)
    log_dir = os.path.join(outdir, 'logs')
    check_config(outdir, dict(format=RESULTS_FORMAT, data=os.path.abspath(data_path), data_sha256=data_info.sha256,
                              recipe=recipe, kimg=grid.kimg, num_samples=grid.num_samples, num_steps=grid.num_steps, scoring=kind,
                              quant_scope=grid.quant_scope,
                              detector=os.path.abspath(detector) if detector else None))
    scorer, scoring_info = make_scorer(outdir, data_info, kind, detector, dev, grid.num_samples, num_classes,
                                       os.path.join(log_dir, 'scoring.txt'))

    trained = bool(grid.settings)  # Only the oracle arm: no models.
    models = [Model(D, s, os.path.join(outdir, 'runs', run_name(D, s))) for D in grid.D_list for s in grid.seeds] if trained else []
    cells = [BASE] + [(study, value, folder, overrides, transform)
                      for study, values in grid.settings.items()
                      for value, (folder, overrides, transform) in zip(values, STUDIES[study].settings(values, grid))] if trained else []
    oracle_dir = os.path.join(outdir, 'oracle')
    pending = pending_work(models, cells, blocks, grid, scorer)
    if grid.oracle is not None:
        pending['oracle'] = sum(not oracle_arm.cell_complete(os.path.join(oracle_dir, c[3]), grid.oracle) for c in oracle_arm.cells_of(grid.oracle))
    bar = Progress(pending, total_stages=3 * len(models) + (grid.oracle is not None), enabled=progress,
                   log_path=os.path.join(outdir, 'timing.jsonl'))
    if progress:
        print(f'D study in {outdir}: {describe_grid(grid, models, cells)}; scoring: {describe_scoring(scoring_info)}. '
              f'Stage output goes to {log_dir}/.', flush=True)
    arm_record = None if grid.oracle is None else run_oracle_stage(oracle_dir, data_path, grid, scorer, dev, bar, log_dir)
    scores = {}
    for m in models:
        log_path = os.path.join(log_dir, f'{m.name}.txt')
        network = train_model(m, grid, recipe, data_path, device, bar, log_path)
        generate_model(m, network, cells, blocks, grid, dev, bar, log_path)
        scores.update(score_model(m, cells, blocks, grid.num_samples, scorer, bar, log_path))
        write_tables(outdir, grid, models, cells, scores, scoring_info, data_path, recipe, bar, final=False, oracle=arm_record)
    return write_tables(outdir, grid, models, cells, scores, scoring_info, data_path, recipe, bar, final=True, oracle=arm_record)


def pending_work(models: list, cells: list, blocks: list, grid: Grid, scorer) -> dict:
    """What is left to do, for the time estimate: kimg to train, image-NFE to generate, images to score."""
    pending = dict(train=0.0, generate=0.0, score=0.0)
    for m in models:
        if final_network(m, grid.kimg) is None:
            pending['train'] += target_kimg(grid.kimg)
        for study, _value, folder, overrides, _t in cells:
            cell_dir = os.path.join(m.run_dir, study, folder)
            if not folder_complete(cell_dir, blocks):
                pending['generate'] += grid.num_samples * setting_nfe(grid, overrides)
            if read_score(cell_dir, score_key(cell_dir, blocks, scorer)) is None:
                pending['score'] += grid.num_samples
    return pending


def train_model(m: Model, grid: Grid, recipe: dict, data: str, device: str, bar: Progress, log_path: str) -> str:
    """launch.train() for the model unless its final snapshot exists (--resume=auto continues a run that
    was stopped); returns the snapshot."""
    network = final_network(m, grid.kimg)
    kimg = target_kimg(grid.kimg)
    if network is not None:
        bar.stage('train', m.label, kimg)
        return network
    start, cpu = time.time(), time.process_time()
    # Five ticks with a training state each (for --resume=auto after a crash), one network snapshot at
    # the end; train.py takes the duration in Mimg.
    with captured(log_path):
        result = launch.train(outdir=os.path.dirname(m.run_dir), name=m.name, data=data, D=m.D, seed=m.seed,
                              duration=kimg / 1000, tick=kimg / 5, snap=1000, dump=1, device=device, resume='auto', **recipe)
    if result['status'] == 'stopped':
        raise Stopped(f'Training of {m.name} was stopped after saving its state; run the same command again to continue.')
    network = final_network(m, grid.kimg)
    if network is None:
        raise ValueError(f'Training of {m.name} ended before {kimg} kimg; see {log_path}.')
    for _k, path in checkpoint.find_checkpoints(m.run_dir, 'state')[:-1]:  # They served a resume; the last one stays.
        os.remove(path)
    for name in os.listdir(m.run_dir):  # Tick 0's snapshot: the study samples the final one only.
        if checkpoint.kimg_from_name(name) is not None and name.startswith('network-snapshot-') and name != os.path.basename(network):
            os.remove(os.path.join(m.run_dir, name))
    bar.stage('train', m.label, kimg, time.time() - start, time.process_time() - cpu)
    return network


def generate_model(m: Model, network: str, cells: list, blocks: list, grid: Grid, device: torch.device,
                   bar: Progress, log_path: str) -> None:
    """generation.run_study() once for each block of seeds (one class each when conditional) with the
    settings of every study, into RUN/<study>/<setting>/<class>/ (one network load per block); complete
    folders are left alone, partial ones completed."""
    todo = [c for c in cells if not folder_complete(os.path.join(m.run_dir, c[0], c[2]), blocks)]
    if not todo:
        bar.stage('generate', m.label, sum(grid.num_samples * setting_nfe(grid, c[3]) for c in cells))
        return
    start, cpu = time.time(), time.process_time()
    with captured(log_path):
        for class_idx, seeds, sub in blocks:
            settings = [(os.path.join(study, folder, *([sub] if sub else [])), overrides, transform) for study, _v, folder, overrides, transform in todo]
            generation.run_study(network, m.run_dir, settings, seeds, sampler_kwargs=grid.sampler_kwargs, device=device,
                               batch_size=min(len(seeds), 64), class_idx=class_idx, progress=False)
    bar.stage('generate', m.label, sum(grid.num_samples * setting_nfe(grid, c[3]) for c in todo), time.time() - start, time.process_time() - cpu)


def score_model(m: Model, cells: list, blocks: list, num_samples: int, scorer: Scorer, bar: Progress, log_path: str) -> dict:
    """Score every cell of a model (Scorer.score), each written to its score.json; cached scores are
    reused. Returns {(study, folder, D, seed): score record}."""
    results, todo = {}, []
    for study, _value, folder, _o, _t in cells:
        cell_dir = os.path.join(m.run_dir, study, folder)
        key = score_key(cell_dir, blocks, scorer)
        record = read_score(cell_dir, key)
        if record is None:
            todo.append((study, folder, cell_dir, key))
        else:
            results[(study, folder, m.D, m.seed)] = record
    if not todo:
        bar.stage('score', m.label, num_samples * len(cells))
        return results
    start, cpu = time.time(), time.process_time()
    with captured(log_path):
        for study, folder, cell_dir, key in todo:
            score = scorer.score(cell_dir, num_samples, labels_of(cell_dir, blocks))
            record = dict(key, **score, folder=os.path.abspath(cell_dir),
                          manifests={sub or '.': provenance.read_manifest(os.path.join(cell_dir, sub)) for _c, _s, sub in blocks},
                          time=datetime.datetime.now().isoformat(timespec='seconds'))
            dnnlib.util.write_atomic(os.path.join(cell_dir, SCORE_NAME), lambda f, r=record: f.write((json.dumps(r, indent=2) + '\n').encode()))
            results[(study, folder, m.D, m.seed)] = record
    bar.stage('score', m.label, num_samples * len(todo), time.time() - start, time.process_time() - cpu)
    return results


def describe_scoring(info: dict) -> str:
    if info['kind'] == 'digits':
        d = info['detector_info']
        return (f'FD-digits and recognised share with the digits detector (held-out accuracy {d["heldout_accuracy"]:.1%}, '
                f'held-out digits recognised {d["heldout_recognised"]:.1%})')
    if info['kind'] == 'inception':
        return 'FID with fid.py\'s Inception-v3'
    return f'Frechet distance with the detector {info["detector"]}' + (' and recognised share' if info['with_share'] else '')

#----------------------------------------------------------------------------
# Results: JSON, Markdown, figure.

def metric_names(scoring: dict) -> list[tuple[str, str]]:
    """[(key, title)] of the scores: the Frechet distance, and the recognised share when there is one."""
    fd = dict(digits='FD-digits', inception='FID', file='Frechet distance')[scoring['kind']]
    names = [('fd', f'{fd} (lower is better)')]
    if scoring['with_share']:
        names.append(('share', 'recognised share (higher is better)'))
    return names


def collect_cells(grid: Grid, models: list, cells: list, scores: dict, scoring: dict) -> list[dict]:
    """Every (study, setting, D) cell with its per-seed values, mean and standard error over the seeds,
    the mean of the per-model bootstrap standard errors, each model's score record, and the paired
    statistics (paired_statistics())."""
    out = []
    for study, value, folder, overrides, transform in cells:
        for D in grid.D_list:
            records = [(m, scores.get((study, folder, D, m.seed))) for m in models if m.D == D]
            done = [(m, r) for m, r in records if r is not None]
            cell = dict(study=study, setting=value, folder=folder, D=D_key(D),
                        sampler_overrides=overrides, transform=generation.describe_transform(transform),
                        nfe=setting_nfe(grid, overrides), seeds=[m.seed for m, _r in done])
            for key, _title in metric_names(scoring):
                values = [r.get(key) for _m, r in done]
                mean, se = mean_and_se(values)
                boot = [r['bootstrap_se'].get(key) for _m, r in done if r['bootstrap_se'].get(key) is not None]
                cell[key] = dict(mean=mean, se=se, n=len([v for v in values if v is not None]), per_seed=values,
                                 bootstrap_se=float(np.mean(boot)) if boot else None)
            cell['models'] = [dict(seed=m.seed, run_dir=os.path.abspath(m.run_dir), score={k: v for k, v in r.items() if k != 'manifests'},
                                   provenance=compact_provenance(r['manifests'])) for m, r in done]
            out.append(cell)
    paired_statistics(out, grid, scoring)
    return out


def paired_statistics(cells: list[dict], grid: Grid, scoring: dict) -> None:
    """Adds to every cell and score, in place: 'paired_degradation', each model's score at the setting
    minus its own base cell's (the same network and sampling seeds), mean ± SE over the training seeds;
    and for finite D, 'paired_vs_diffusion', that degradation minus diffusion's for the same training
    seed (the same data order and sampling seeds), mean ± SE, beyond_2se where |mean| > 2 SE; at the
    base cell the score itself minus diffusion's."""
    def per_seed(cell, key):
        return {seed: value for seed, value in zip(cell['seeds'], cell[key]['per_seed'])}
    base = {(c['D'], key): per_seed(c, key) for c in cells if c['study'] == 'base' for key, _t in metric_names(scoring)}
    for cell in cells:
        for key, _title in metric_names(scoring):
            own, ref = per_seed(cell, key), base.get((cell['D'], key), {})
            cell[key]['paired_degradation'] = paired({s: v - ref[s] if v is not None and ref.get(s) is not None else None for s, v in own.items()})
    # What is compared across D: the degradation, and at the base cell the score itself.
    degradation = {(c['study'], c['folder'], c['D'], key): (per_seed(c, key) if c['study'] == 'base' else
                                                             dict(zip(c[key]['paired_degradation']['seeds'], c[key]['paired_degradation']['per_seed'])))
                   for c in cells for key, _t in metric_names(scoring)}
    for cell in cells:
        for key, _title in metric_names(scoring):
            diffusion = degradation.get((cell['study'], cell['folder'], 'inf', key))
            if cell['D'] == 'inf' or diffusion is None:
                continue
            mine = degradation[(cell['study'], cell['folder'], cell['D'], key)]
            cell[key]['paired_vs_diffusion'] = paired({s: mine[s] - diffusion[s] for s in mine if s in diffusion})


def compact_provenance(manifests: dict) -> dict:
    """What a cell's images were made with, from its generate.json manifests (score.json keeps them whole):
    the network and its SHA-256, D, the sampler settings, the study setting, precision, the code
    version and PyTorch of the first block, and each block's class and seeds."""
    first = next(iter(manifests.values()))
    run = (first.get('runs') or [{}])[0]
    return dict({k: first.get(k) for k in ('network', 'network_sha256', 'D', 'sampler', 'study', 'precision')},
                code=run.get('code'), torch=run.get('torch'),
                blocks=[dict(folder=sub, class_idx=m.get('class_idx'), seeds=m.get('seeds', {}).get('ranges')) for sub, m in manifests.items()])


def format_cell(mean: Optional[float], se: Optional[float], key: str) -> str:
    if mean is None:
        return '-'
    fmt = (lambda v: f'{v:.2f}') if key == 'share' else (lambda v: f'{v:.3g}')
    return fmt(mean) + (f' ± {fmt(se)}' if se is not None else '')


def format_paired(stat: Optional[dict], key: str) -> str:
    """'mean ± SE', in bold where the mean lies beyond 2 SE of zero."""
    if not stat or stat['mean'] is None:
        return '-'
    text = format_cell(stat['mean'], stat['se'], key)
    return f'**{text}**' if stat['beyond_2se'] else text


def study_tables(grid: Grid, cells: list[dict], study: str, values: list, key: str, title: str) -> list[str]:
    """One study's tables for one score: the scores (the base cell first), the paired degradation from
    the base cell, and the paired difference of that degradation from diffusion's."""
    header = ['base'] + [f'{v:g}' for v in values]
    row_cells = lambda D: [c for c in cells if c['D'] == D_key(D) and c['study'] == 'base'] + \
        [c for c in cells if c['D'] == D_key(D) and c['study'] == study]
    lines = ['', f'## {STUDIES[study].title}: {title}', '', '| D | ' + ' | '.join(header) + ' |', '|---|' + '---|' * len(header)]
    lines += [f'| {format_D(D)} | ' + ' | '.join(format_cell(c[key]['mean'], c[key]['se'], key) for c in row_cells(D)) + ' |'
              for D in grid.D_list]
    lines += ['', 'Degradation (score minus the same model\'s base score, mean ± SE over the training seeds):', '',
              '| D | ' + ' | '.join(header[1:]) + ' |', '|---|' + '---|' * (len(header) - 1)]
    lines += [f'| {format_D(D)} | ' + ' | '.join(format_paired(c[key]['paired_degradation'], key) for c in row_cells(D)[1:]) + ' |'
              for D in grid.D_list]
    finite = [D for D in grid.D_list if D is not None]
    if None in grid.D_list and finite:
        lines += ['', 'D minus diffusion, paired by training seed (the base column: the scores; the others: the degradations); '
                  'bold: beyond 2 SE:', '', '| D | ' + ' | '.join(header) + ' |', '|---|' + '---|' * len(header)]
        lines += [f'| {format_D(D)} | ' + ' | '.join(format_paired(c[key].get('paired_vs_diffusion'), key) for c in row_cells(D)) + ' |'
                  for D in finite]
    return lines


def markdown(grid: Grid, cells: list[dict], scoring: dict, data: str, recipe: dict) -> str:
    """results.md: what was run, then per study and score its tables (study_tables())."""
    if not grid.settings:  # Only the oracle arm (oracle_arm.markdown() follows).
        return f'# D study\n\nData: {data}. Scoring: {describe_scoring(scoring)}.\n'
    lines = ['# D study', '',
             f'Data: {data}. Models: {"class-conditional " if recipe.get("cond") else ""}{recipe.get("arch", "ddpmpp")} '
             f'(channels {recipe.get("cbase", "default")}), {target_kimg(grid.kimg)} kimg each, training seeds '
             f'{cli.format_int_list(grid.seeds)}; {grid.num_samples} samples per cell, the same sampling seeds for every cell; '
             f'Heun sampler, {grid.num_steps} steps unless the study sets them; quantisation scope {grid.quant_scope!r}.', '',
             f'Scoring: {describe_scoring(scoring)}. Every cell: mean ± standard error over the training seeds '
             f'(sample standard deviation / sqrt(n)). Random sets of {scoring["real_num"]} real images'
             f'{" with as many of each class as a cell has" if scoring.get("real_balanced") else ""} score '
             f'{scoring["real_fd"]:.3g} ± {scoring.get("real_fd_sd", 0):.2g} (mean ± SD over {scoring.get("real_draws", 1)} draws) '
             f'against the reference{" (held-out digits the detector never saw)" if scoring.get("reference") == "heldout" else ""}: '
             f'the floor at this sample count.']
    for study, values in grid.settings.items():
        for key, title in metric_names(scoring):
            lines += study_tables(grid, cells, study, values, key, title)
            boots = [c[key]['bootstrap_se'] for c in cells if c['study'] == study and c[key]['bootstrap_se'] is not None]
            if boots:
                lines += ['', f'Bootstrap standard error over one model\'s samples: {min(boots):.3g} to {max(boots):.3g}.']
    return '\n'.join(lines) + '\n'


def plot(path: str, grid: Grid, cells: list[dict], scoring: dict, oracle: Optional[dict] = None) -> None:
    """d_study.png: a column per study, a row per score; each panel the paired degradation (score
    minus the model's base score) against the setting, one line per D with standard-error bars; with
    the oracle arm a last column of its panels (oracle_arm.plot()). Written atomically."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError('The D study\'s figure needs matplotlib; install it with: pip install -r requirements-demo.txt') from None
    metrics = metric_names(scoring)
    studies = list(grid.settings)
    columns = len(studies) + (oracle is not None)
    rows = max(len(metrics), 2 if oracle is not None else 1)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for col, study in enumerate(studies):
        for row, (key, title) in enumerate(metrics):
            ax = axes[row][col]
            for D in grid.D_list:
                data = [c for c in cells if c['study'] == study and c['D'] == D_key(D) and c[key]['paired_degradation']['mean'] is not None]
                if data:
                    ax.errorbar([c['setting'] for c in data], [c[key]['paired_degradation']['mean'] for c in data],
                                yerr=[c[key]['paired_degradation']['se'] or 0 for c in data], marker='o', capsize=3,
                                label='D=inf (diffusion)' if D is None else f'D={format_D(D)}')
            ax.axhline(0, color='gray', linestyle=':', linewidth=1)
            ax.set_xticks(grid.settings[study])
            ax.set_title(f'{STUDIES[study].title}', fontsize=10)
            ax.set_xlabel(STUDIES[study].axis, fontsize=8)
            ax.set_ylabel(f'change in {title.split(" (")[0]}', fontsize=8)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    if oracle is not None:
        oracle_arm.plot([axes[row][columns - 1] for row in range(rows)], oracle)
    title = (f'PFGM++ D study: degradation from each model\'s base cell, mean ± SE over {len(grid.seeds)} training seed'
             f'{"s" if len(grid.seeds) > 1 else ""}, {target_kimg(grid.kimg)} kimg, {grid.num_samples} samples per point') if studies else 'PFGM++ D study'
    fig.suptitle(title + ('; right: the oracle arm' if oracle is not None and studies else ''), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=110)
    plt.close(fig)
    dnnlib.util.write_atomic(path, lambda f: f.write(buf.getvalue()))


def paired_summary(cells: list[dict], scoring: dict) -> dict:
    """results.json's 'paired': what the paired statistics are, and every paired difference from
    diffusion beyond 2 SE (study, setting, D, score, mean, se, n)."""
    beyond = [dict(study=c['study'], setting=c['setting'], D=c['D'], score=key, mean=stat['mean'], se=stat['se'], n=stat['n'])
              for c in cells for key, _t in metric_names(scoring) if (stat := c[key].get('paired_vs_diffusion')) and stat['beyond_2se']]
    return dict(paired_degradation='score minus the same model\'s base-cell score, mean and SE over the training seeds',
                paired_vs_diffusion='paired_degradation of D minus that of diffusion for the same training seed (at the base cell: the '
                                    'scores), mean and SE over the training seeds',
                beyond_2se=beyond)


def timing_summary(records: list[dict]) -> dict:
    """Per kind of stage: units of work, seconds (wall and CPU) and seconds per unit."""
    summary = {}
    for kind in UNITS:
        recs = [r for r in records if r['kind'] == kind]
        if recs:
            units, seconds = sum(r['units'] for r in recs), sum(r['seconds'] for r in recs)
            summary[kind] = dict(unit=UNITS[kind], units=units, seconds=seconds, cpu_seconds=sum(r['cpu_seconds'] for r in recs),
                                 seconds_per_unit=seconds / units if units else None)
    return summary


def write_tables(outdir: str, grid: Grid, models: list, cells: list, scores: dict, scoring: dict, data: str, recipe: dict,
                 bar: Progress, final: bool, oracle: Optional[dict] = None) -> dict:
    """results.json and results.md (after every model), and d_study.png (final=True); oracle: the
    oracle arm's record (oracle_arm.run_arm()), when it ran."""
    collected = collect_cells(grid, models, cells, scores, scoring)
    stages = []
    if bar.log_path is not None and os.path.isfile(bar.log_path):
        with open(bar.log_path, encoding='utf-8') as f:
            stages = [json.loads(line) for line in f if line.strip()]
    results = dict(format=RESULTS_FORMAT, version=RESULTS_VERSION, complete=final and (grid.oracle is None or oracle is not None) and all(
                       c[k]['n'] == len(grid.seeds) for c in collected for k, _t in metric_names(scoring)),
                   grid=dict(D=[D_key(D) for D in grid.D_list], seeds=list(grid.seeds), kimg=target_kimg(grid.kimg),
                             num_samples=grid.num_samples, num_steps=grid.num_steps, settings=grid.settings, quant_scope=grid.quant_scope),
                   paired=paired_summary(collected, scoring), oracle=oracle,
                   data=os.path.abspath(data), recipe=recipe, scoring=scoring, metrics=[k for k, _t in metric_names(scoring)],
                   cells=collected, timing=dict(this_run=timing_summary(bar.records), all_runs=timing_summary(stages), stages=stages,
                                                threads=torch.get_num_threads(), cpu_count=os.cpu_count()),
                   code=provenance.code_version(), torch=torch.__version__,
                   time=datetime.datetime.now().isoformat(timespec='seconds'))
    results = provenance._plain(results)
    text = (json.dumps(results, indent=2) + '\n').encode()
    dnnlib.util.write_atomic(os.path.join(outdir, 'results.json'), lambda f: f.write(text))
    md = (markdown(grid, collected, scoring, data, recipe) + ('\n'.join(oracle_arm.markdown(oracle)) + '\n' if oracle else '')).encode()
    dnnlib.util.write_atomic(os.path.join(outdir, 'results.md'), lambda f: f.write(md))
    if final:
        plot(os.path.join(outdir, 'd_study.png'), grid, collected, scoring, oracle)
        if bar.enabled:
            print(f'Wrote {os.path.join(outdir, "results.json")}, results.md and d_study.png '
                  f'(total {format_seconds(time.time() - bar.start)}).', flush=True)
    return results

#----------------------------------------------------------------------------
# Command line.

@click.command(context_settings=dict(cli.CONTEXT_SETTINGS, show_default=True))
@click.option('--outdir',      help='Where the study goes', metavar='DIR', type=str, default='d-study')
@click.option('--data',        help='Dataset ZIP or folder  [default: the quick start\'s digits, built if missing]', metavar='ZIP|DIR', type=str)
@click.option('--D', 'D_list', help='PFGM++ D values; inf is diffusion  [default: 16,2048,inf; --quick: 16,inf]', metavar='LIST', type=str)
@click.option('--train-kimg', 'kimg', help='Training budget per model  [default: 8; --quick: 4; Inception: 200000]', metavar='KIMG', type=float)
@click.option('--train-seeds', 'seeds', help='Training seeds, one model per D and seed  [default: 0-5; --quick: 0-1]', metavar='LIST', type=str)
@click.option('--studies',     help='Which studies: alpha, steps, quant (trained models), oracle (exact denoisers)  [default: all; oracle on the digits only]', metavar='LIST', type=str)
@click.option('--alphas',      help='Noise injection alphas  [default: 0.1,0.3,0.5; --quick: 0.3]', metavar='LIST', type=str)
@click.option('--steps-list', '--steps_list', 'steps_list', help='Sampling step counts  [default: 5,6,7,9,12; --quick: 5,6]', metavar='LIST', type=str)
@click.option('--bits',        help='Weight bits, published rule (the data\'s finest stage kept exact)  [default: 4,5,6,8; --quick: 4]', metavar='LIST', type=str)
@click.option('--steps',       'num_steps', help='Heun steps of the alpha and quant studies (18: the paper\'s 35 evaluations)  [default: 9]', metavar='INT', type=int)
@click.option('--num-samples', 'num_samples', help='Samples per cell  [default: 100; --quick: 50; Inception: 10000]', metavar='INT', type=int)
@click.option('--oracle-D',    'oracle_D', help='The oracle arm\'s D values, inf included  [default: 1,4,16,128,2048,inf; --quick: 1,16,inf]', metavar='LIST', type=str)
@click.option('--oracle-eps',  'oracle_eps', help='Its additive errors D + eps sigma z  [default: 0.1,0.3,1,3; --quick: 1]', metavar='LIST', type=str)
@click.option('--oracle-kappa', 'oracle_kappa', help='Its noise-level errors D(x; (1 + kappa) sigma)  [default: -0.5,-0.2,0.2,0.5; --quick: 0.5]', metavar='LIST', type=str)
@click.option('--oracle-samples', 'oracle_samples', help='Its samples per cell  [default: 1000; --quick: 500]', metavar='INT', type=int)
@click.option('--detector',    help='Detector file for fid.py  [default: the digits detector, or Inception-v3 for other data]', metavar='PATH', type=str)
@cli.device_option(help='Where to train, sample and score')
@click.option('--quick',       help='The smaller grid, for a smoke test (options given still win)', is_flag=True)
@cli.debug_option
def cmdline(debug: bool, **kwargs):
    """The D study of PFGM++: train one model per D and training seed, sample it under noise injection,
    fewer sampling steps and weight quantisation, score every folder and tabulate each setting's
    degradation from the model's base cell, mean ± standard error over the seeds, paired by seed
    against diffusion; and the oracle arm: exact denoisers of 100 digits with a controlled error,
    for D from 1 to infinity, with no training variance.

    \b
    # The default grid on the quick start's digits (about 45 min on 2 CPU cores):
    python -m studies.d_study --outdir=d-study
    \b
    # A smoke test (minutes):
    python -m studies.d_study --outdir=d-study-quick --quick
    \b
    # CIFAR-10 on a GPU, Inception FID:
    python -m studies.d_study --device=cuda --data=datasets/cifar10-32x32.zip --train-kimg=20000

    Re-running the same command skips finished stages. Results: OUTDIR/results.json, results.md,
    d_study.png.
    """
    with cli.one_line_errors(debug):
        try:
            run_d_study(**kwargs)
        except Stopped as err:  # Exit status 75, as train.py's: a job script may requeue the same command.
            click.echo(f'Error: {err}', err=True)
            sys.exit(EXIT_STOPPED)


main = cmdline

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()
