"""The oracle arm of the D study: PFGM++ sampling with an exact, training-free "network" and a
controlled estimation error, so that D can be compared with no training variance at all.

    python -m studies.oracle --outdir=oracle                  # D = 1, 4, 16, 128, 2048, inf; eps = 0, 0.1, 0.3, 1, 3.
    python -m studies.oracle --outdir=oracle --error=sigma    # kappa = -0.5, -0.2, 0, 0.2, 0.5.

The network is the exact denoiser (the posterior mean E[y | x], training/pfgmpp.ideal_denoiser under
the PFGM++ kernel of the oracle's D, Gaussian for D -> infinity) of a small fixed subset of the digits:
`per_class` points of each digit, drawn by a seed from the detector's training part
(metrics/digits.split_heldout), so that the held-out digits the D study's reference statistics use are
unseen by both the detector and the oracle. For class c the denoiser uses only class c's points.

Two kinds of estimation error are put into the denoiser, each with one strength (ERRORS):

    additive   D_hat(x; sigma) = D(x; sigma) + eps * sigma * z,   z ~ N(0, I) drawn on every call from
               the sample's own stream (torch_utils/rng.StackedRandomGenerator), so an image depends on
               its seed only, whatever the batch. A random error, fresh at every evaluation: the
               variance part of a network's estimation error.
    sigma      D_hat(x; sigma) = D(x; (1 + kappa) * sigma), kappa > -1. A systematic error: what a
               network does that misjudges the noise level of its input (its noise conditioning off by
               log(1 + kappa)), the same at every call; kappa > 0 over-smooths, kappa < 0 under-smooths.

Why the second kind is the noise level and not a smoothed data set: a smoothed finite data set has an
exact denoiser of its own, so sampling it exactly would only sample other data, the same for every D
(no error left for D to be robust to); and for finite D the data smoothed with the PFGM++ kernel has
no closed-form denoiser (two Student-t kernels do not convolve to a third), so "the same tau" would
need an approximation that differs between D. A misjudged noise level is exact for every D and is
systematic where the additive error is random: the two ends of what a network gets wrong.

The same strength means the same thing for every D. All D share the noise level sigma (PFGM++ aligns
r = sigma sqrt(D)), the sampler's schedule and its ODE dx/dsigma = (x - D(x; sigma)) / sigma. The
additive error changes that velocity by -eps * z, a D-free amount; kappa is one relative error of both
sigma and r = sigma sqrt(D).

What stays exact whatever the error: the last evaluation (at sigma_min = 0.002) of an exact denoiser of
finite data returns a point of the data (its posterior is one-hot there), so the samples land on the
subset's points, and the errors change which point a seed lands on: the distribution over the points,
not the distance to them. cell_measures() reports both.

Every cell is a folder in the layout of the D study's cells (FOLDER/<class>/<seed:06d>.png with a
generate.json manifest, sampling/provenance.py), so its scorer reads them unchanged; a rerun skips
complete folders and completes interrupted ones.
"""

import os

if __name__ == '__main__':
    from torch_utils.threads import use_passive_threads
    use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import dataclasses
import hashlib
import json
import math
import time
from typing import Any, Callable, Optional, Sequence

import click
import numpy as np
import torch

import dnnlib
from metrics import digits as digits_detector
from sampling import generation, provenance
from torch_utils import cli, image_io
from training import pfgmpp
from training.dataset import ImageFolderDataset

STUDY_NAME = 'oracle'
NETWORK_NAME = 'oracle'          # What the manifests record as the network; its SHA-256 is the subset's.
DEFAULT_DATA = 'datasets/digits-16x16.zip'  # The quick start's digits (studies/quickstart.py builds it).
DEFAULT_PER_CLASS = 10           # Subset points per class: 100 points of the ten digits.
DEFAULT_SAMPLES_PER_CLASS = 100  # Samples per class in a cell: 1,000 per cell, about a second on one CPU core.
DEFAULT_STEPS = 9                # Heun steps, as the D study samples.
DEFAULT_D_LIST = (1, 4, 16, 128, 2048, None)
DEFAULT_STRENGTHS = dict(additive=(0, 0.1, 0.3, 1, 3), sigma=(-0.5, -0.2, 0, 0.2, 0.5))
ON_POINT_RMS = 0.05              # A sample is on a point when its RMS pixel distance to it is below this ([-1, 1] units).

#----------------------------------------------------------------------------
# The subset: `per_class` digits of each class from the detector's training part.

@dataclasses.dataclass(frozen=True)
class Subset:
    images: torch.Tensor         # float64 [K, C, H, W] in [-1, 1] (x / 127.5 - 1, as training scales the data).
    labels: torch.Tensor         # int64 [K], the class of each point.
    indices: np.ndarray          # int64 [K], the points' indices in the dataset.


def choose_subset(labels: np.ndarray, per_class: int, seed: int = 0, split_seed: int = 0) -> np.ndarray:
    """Dataset indices of `per_class` points of every class, drawn (without replacement, by `seed`)
    from the training indices of metrics/digits.split_heldout(labels, split_seed), the split of the
    D study's detector; ascending within each class, classes in order. int64 [num_classes * per_class]."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f'The number of subset points per class must be an integer >= 1, got {per_class!r}.')
    labels = np.asarray(labels)
    train, _heldout = digits_detector.split_heldout(labels, split_seed)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        pool = train[labels[train] == c]
        if len(pool) < per_class:
            raise ValueError(f'Class {c} has {len(pool)} training points, fewer than the {per_class} per class asked for.')
        chosen.append(np.sort(rng.choice(pool, per_class, replace=False)))
    return np.concatenate(chosen).astype(np.int64)


def load_subset(data: str, per_class: int = DEFAULT_PER_CLASS, seed: int = 0, split_seed: int = 0) -> Subset:
    """The subset of a labelled dataset (dataset_tool.py's layout, read with ImageFolderDataset in its
    order, as metrics/digits.py reads it) that choose_subset() picks."""
    dataset = ImageFolderDataset(data, use_labels=True)
    if not dataset.has_onehot_labels:
        raise ValueError(f'{data} has no class labels (dataset.json); the oracle samples each class from its own points.')
    labels = np.array([int(dataset.get_label(i).argmax()) for i in range(len(dataset))], dtype=np.int64)
    indices = choose_subset(labels, per_class, seed, split_seed)
    images = np.stack([dataset[int(i)][0] for i in indices]).astype(np.float64) / 127.5 - 1
    return Subset(images=torch.from_numpy(images), labels=torch.from_numpy(labels[indices]), indices=indices)


def subset_sha256(data: torch.Tensor, labels: Optional[torch.Tensor]) -> str:
    """SHA-256 of the points (float64) and their labels: which "network" a manifest's images are of."""
    digest = hashlib.sha256(data.detach().to('cpu', torch.float64).contiguous().numpy().tobytes())
    digest.update(b'-' if labels is None else labels.detach().to('cpu', torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()

#----------------------------------------------------------------------------
# The exact denoiser.

class ExactDenoiser:
    """net(x, sigma, class_labels) = pfgmpp.ideal_denoiser(x, sigma, points, D): the posterior mean of
    the points under the PFGM++ kernel (Gaussian for D=None), with the points of class c for a one-hot
    label of class c and all points for a zero label or none. x [B, C, H, W], sigma a scalar or [B];
    computed in float64, returned in x's dtype. Has what the samplers use: img_resolution,
    img_channels, label_dim (number of classes; 0 without labels), D, sigma_min = 0, sigma_max = inf,
    round_sigma() (the identity)."""

    def __init__(self, data: torch.Tensor, labels: Optional[torch.Tensor] = None, D: Optional[float] = None):
        if not isinstance(data, torch.Tensor) or data.ndim != 4 or data.shape[0] < 1 or data.shape[2] != data.shape[3]:
            raise ValueError(f'The points must be a tensor [K, C, H, W] of square images, got {getattr(data, "shape", data)!r}.')
        self.data = data.to(torch.float64)
        self.D = pfgmpp.check_D(None if isinstance(D, float) and math.isinf(D) else D)
        self.img_channels, self.img_resolution = int(data.shape[1]), int(data.shape[2])
        self.sigma_min, self.sigma_max = 0.0, math.inf
        self.label_dim, self.class_data = 0, []
        if labels is not None:
            labels = torch.as_tensor(labels, device=data.device)
            if labels.shape != (data.shape[0],) or labels.is_floating_point() or bool((labels < 0).any()):
                raise ValueError(f'The labels must be {data.shape[0]} class indices >= 0, one per point.')
            self.label_dim = int(labels.max()) + 1
            self.class_data = [self.data[labels == c] for c in range(self.label_dim)]
            if any(len(points) == 0 for points in self.class_data):
                raise ValueError(f'Every class from 0 to {self.label_dim - 1} needs at least one point; some have none.')

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def classes_of(self, class_labels: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """int64 [batch]: the class of each row's one-hot label, -1 (all points) for a zero row or no labels."""
        if class_labels is None or self.label_dim == 0:
            return torch.full([batch], -1, dtype=torch.int64)
        labels = torch.as_tensor(class_labels).to('cpu', torch.float64)
        if labels.ndim != 2 or labels.shape[1] != self.label_dim or labels.shape[0] not in (1, batch):
            raise ValueError(f'The class labels must be one-hot rows [{batch}, {self.label_dim}], got shape {list(labels.shape)}.')
        if not bool(((labels == 0) | (labels == 1)).all()) or bool((labels.sum(1) > 1).any()):
            raise ValueError('Every class label must be one-hot (one class) or all zeros (unconditional).')
        classes = torch.where(labels.sum(1) == 1, labels.argmax(1), -1)
        return classes.expand(batch) if classes.numel() == 1 else classes

    def __call__(self, x: torch.Tensor, sigma: Any, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        classes = self.classes_of(class_labels, batch).to(x.device)
        out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
        for c in torch.unique(classes).tolist():
            rows = classes == c
            points = self.data if c < 0 else self.class_data[c]
            out[rows] = pfgmpp.ideal_denoiser(x[rows].to(torch.float64), sigma[rows], points, self.D)
        return out.to(x.dtype)

#----------------------------------------------------------------------------
# The estimation errors: one entry per kind.

def _sigma_column(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))


def additive_error(net: Callable, x: torch.Tensor, sigma: Any, class_labels: Optional[torch.Tensor], eps: float,
                   randn_like: Callable) -> torch.Tensor:
    """D(x; sigma) + eps * sigma * z, z = randn_like(D(x; sigma)); z is drawn for eps = 0 too, so that
    every eps takes the same draws from each sample's stream (common random numbers)."""
    denoised = net(x, sigma, class_labels).to(torch.float64)
    z = randn_like(denoised)
    return (denoised + eps * _sigma_column(sigma, x) * z).to(x.dtype)


def sigma_error(net: Callable, x: torch.Tensor, sigma: Any, class_labels: Optional[torch.Tensor], kappa: float,
                randn_like: Callable) -> torch.Tensor:
    """D(x; (1 + kappa) * sigma): the denoiser told a noise level off by the factor 1 + kappa."""
    return net(x, (1 + kappa) * torch.as_tensor(sigma, dtype=torch.float64), class_labels)


@dataclasses.dataclass(frozen=True)
class ErrorKind:
    name: str
    symbol: str                             # The strength's name in formulas and tables.
    formula: str
    valid: Callable[[float], bool]          # Which strengths are allowed ...
    requirement: str                        # ... said in words, for the error message.
    random: bool                            # Whether it draws from the samples' streams.
    apply: Callable                         # apply(net, x, sigma, class_labels, strength, randn_like).


ERRORS = {
    'additive': ErrorKind('additive', 'eps', 'D(x; sigma) + eps * sigma * z', lambda s: s >= 0, 'eps >= 0', True, additive_error),
    'sigma': ErrorKind('sigma', 'kappa', 'D(x; (1 + kappa) * sigma)', lambda s: s > -1, 'kappa > -1', False, sigma_error),
}


def check_error(error_kind: str, strength: float) -> float:
    """The strength as a float, after checking the kind (a name in ERRORS) and that the kind allows it."""
    if error_kind not in ERRORS:
        raise ValueError(f'Unknown error kind {error_kind!r}; choose one of {", ".join(ERRORS)}.')
    kind = ERRORS[error_kind]
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) or not kind.valid(strength):
        raise ValueError(f'The {error_kind} error needs a finite strength with {kind.requirement}, got {strength!r}.')
    return float(strength)


class PerturbedDenoiser:
    """`net` with the estimation error `error_kind` (ERRORS) of the given strength added to every call;
    randn_like draws each sample's z from its own stream (needed by the random kinds). Has the
    attributes of `net` the samplers use."""

    def __init__(self, net: ExactDenoiser, error_kind: str, strength: float, randn_like: Optional[Callable] = None):
        self.strength = check_error(error_kind, strength)
        self.kind = ERRORS[error_kind]
        if self.kind.random and randn_like is None:
            raise ValueError(f'The {error_kind} error draws from the samples\' streams; pass randn_like (StackedRandomGenerator.randn_like).')
        self.net, self.randn_like = net, randn_like
        self.img_resolution, self.img_channels, self.label_dim = net.img_resolution, net.img_channels, net.label_dim
        self.D, self.sigma_min, self.sigma_max, self.round_sigma = net.D, net.sigma_min, net.sigma_max, net.round_sigma

    def __call__(self, x: torch.Tensor, sigma: Any, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.kind.apply(self.net, x, sigma, class_labels, self.strength, self.randn_like)

#----------------------------------------------------------------------------
# Sampling.

def sample_oracle_batch(net: ExactDenoiser, seeds: Sequence[int], class_idx: Optional[int], error_kind: str, strength: float,
                        sampler_kwargs: Optional[dict] = None, device: torch.device | str = 'cpu') -> torch.Tensor:
    """Samples for `seeds`, float64 [B, C, H, W], drawn as generation.sample_batch() draws them: per
    seed, from its own generator, the prior for net.D at the sampler's first noise level, a class label
    (replaced by class_idx; drawn all the same, so a seed's stream is that of the D study's cells),
    then the sampler's noise and the error's z, interleaved as the sampler calls the denoiser."""
    if class_idx is not None and not 0 <= class_idx < net.label_dim:
        raise ValueError(f'Class {class_idx} is not one of the oracle\'s {net.label_dim} classes; pass None to sample without a class.')
    spec, settings, rnd, latents, class_labels = generation.draw_start(net, seeds, sampler_kwargs, class_idx, device, torch.float64)
    denoiser = PerturbedDenoiser(net, error_kind, strength, rnd.randn_like)
    extra = {argument: make(denoiser, rnd) for argument, make in spec.extra_inputs.items()}
    with torch.no_grad():
        return spec.fn(denoiser, latents, class_labels, randn_like=rnd.randn_like, **settings, **extra)


def class_blocks(per_class: int, num_classes: int) -> list[tuple[Optional[int], list[int], str]]:
    """[(class, seeds, subfolder)] in the D study's layout (d_study.sample_blocks): seeds c * k ...
    c * k + k - 1 of class c in subfolder '<c>'; unconditional (num_classes 0): seeds 0 ... k - 1 in ''."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f'The number of samples per class must be an integer >= 1, got {per_class!r}.')
    if num_classes == 0:
        return [(None, list(range(per_class)), '')]
    return [(c, list(range(c * per_class, (c + 1) * per_class)), str(c)) for c in range(num_classes)]


def check_blocks(blocks: Sequence, label_dim: int) -> list[tuple[Optional[int], list[int], str]]:
    """The blocks as a list, after checking each is (class in range or None, seeds >= 0, subfolder)."""
    checked = []
    for block in blocks:
        if not (isinstance(block, (tuple, list)) and len(block) == 3):
            raise ValueError(f'A block must be (class, seeds, subfolder), as d_study.sample_blocks() gives, got {block!r}.')
        c, seeds, sub = block
        if c is not None and not 0 <= int(c) < label_dim:
            raise ValueError(f'Block class {c!r} is not one of the oracle\'s {label_dim} classes; use None for an unconditional block.')
        seeds = [int(s) for s in seeds]
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(f'The seeds of block {sub!r} must be at least one integer >= 0.')
        checked.append((None if c is None else int(c), seeds, str(sub)))
    if not checked:
        raise ValueError('There are no blocks to sample; pass at least one (class, seeds, subfolder).')
    return checked


def sample_oracle_cell(data: torch.Tensor, labels: Optional[torch.Tensor], D: Optional[float], error_kind: str,
                       strength: float, blocks: Sequence, folder: str, num_steps: int = DEFAULT_STEPS,
                       device: torch.device | str = 'cpu', batch_size: int = 100, sampler_kwargs: Optional[dict] = None) -> dict:
    """Sample one cell: for each block (class, seeds, subfolder) the oracle's images of those seeds
    (sample_oracle_batch, with class_idx = the block's class) into FOLDER/<subfolder>/<seed:06d>.png
    with the exact denoiser of `data` [K, C, H, W] in [-1, 1] (class c: the points labelled c) for D
    (None or inf: diffusion), the error `error_kind` of the given strength, and EDM's Heun sampler with
    num_steps steps (sampler_kwargs: further sampler settings, e.g. alpha). Each subfolder gets a
    generate.json manifest (network 'oracle', network_sha256 the subset's, study: kind and strength);
    images already there are skipped (save_image writes atomically, so one that exists is complete),
    and a folder of another configuration is refused. Returns {'written', 'skipped', 'seconds'}."""
    net = ExactDenoiser(torch.as_tensor(data).to(device), None if labels is None else torch.as_tensor(labels).to(device), D)
    strength = check_error(error_kind, strength)
    blocks = check_blocks(blocks, net.label_dim)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'The batch size must be an integer >= 1, got {batch_size!r}.')
    if 'num_steps' in (sampler_kwargs or {}):
        raise ValueError('Pass the number of sampling steps as num_steps, not in sampler_kwargs.')
    sampler_kwargs = dict(sampler_kwargs or {}, num_steps=num_steps)
    study = dict(name=STUDY_NAME, error=error_kind, formula=ERRORS[error_kind].formula, strength=strength, points=int(net.data.shape[0]))
    sha256 = subset_sha256(net.data, labels)
    start, written, skipped = time.perf_counter(), 0, 0
    for c, seeds, sub in blocks:
        outdir = os.path.join(folder, sub)
        manifest = provenance.make_manifest(net, seeds, sampler_kwargs, class_idx=c, precision='fp64', batch_size=batch_size,
                                            network=NETWORK_NAME, network_sha256=sha256, study=study)
        todo, manifest = provenance.claim_folder(outdir, manifest, seeds, False, True, generation.missing_seeds)
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            images = sample_oracle_batch(net, batch, c, error_kind, strength, sampler_kwargs, device)
            for seed, image in zip(batch, images):
                image_io.save_image(image.cpu(), generation.image_path(outdir, seed))
            manifest = provenance.record_written(outdir, manifest, batch)
        written, skipped = written + len(todo), skipped + len(seeds) - len(todo)
    return dict(written=written, skipped=skipped, seconds=time.perf_counter() - start)


def cell_complete(folder: str, blocks: Sequence) -> bool:
    """Whether every block's subfolder holds its manifest and every seed's image (d_study.folder_complete's rule)."""
    return all(provenance.read_manifest(os.path.join(folder, sub)) is not None
               and not generation.missing_seeds(os.path.join(folder, sub), seeds) for _c, seeds, sub in blocks)

#----------------------------------------------------------------------------
# Measures that need no detector.

def read_cell(folder: str, blocks: Sequence) -> tuple[torch.Tensor, Optional[torch.Tensor], list[int]]:
    """The images of a cell, float64 [B, C, H, W] in [-1, 1], in block and seed order; the class each
    was generated for (int64 [B], None for unconditional blocks); the seeds."""
    images, classes, seeds = [], [], []
    for c, block_seeds, sub in blocks:
        for seed in block_seeds:
            images.append(image_io.load_image(generation.image_path(os.path.join(folder, sub), seed)))
            classes.append(-1 if c is None else c)
            seeds.append(int(seed))
    x = torch.stack(images).to(torch.float64) / 127.5 - 1
    return x, (None if min(classes) < 0 else torch.tensor(classes, dtype=torch.int64)), seeds


def nearest_points(x: torch.Tensor, data: torch.Tensor, classes: Optional[torch.Tensor] = None,
                   labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMS pixel distance of each x [B, ...] to its nearest point of data [K, ...], float64 [B]; that
    point's index [B]); with classes [B] and labels [K], only the points of each sample's class count."""
    dist = torch.cdist(x.reshape(len(x), -1).to(torch.float64), data.reshape(len(data), -1).to(torch.float64))
    if classes is not None:
        dist = torch.where(classes[:, None] == labels[None, :], dist, torch.inf)
    value, index = dist.min(1)
    return value / math.sqrt(x[0].numel()), index


def point_shares_tv(index: torch.Tensor, classes: Optional[torch.Tensor], labels: Optional[torch.Tensor], num_points: int) -> float:
    """Total variation between the share of samples whose nearest point is each point and what the exact
    sampler gives (uniform over the points of the sample's class, or over all points), the mean over the
    classes. Its floor at n samples per class of k points is about sqrt(k / (2 pi n)) (multinomial noise)."""
    groups = [(None, index)] if classes is None else [(c, index[classes == c]) for c in torch.unique(classes).tolist()]
    values = []
    for c, hits in groups:
        members = torch.arange(num_points) if c is None else torch.nonzero(labels.cpu() == c).flatten()
        counts = torch.bincount(hits.cpu(), minlength=num_points)[members].to(torch.float64)
        values.append(0.5 * float((counts / counts.sum() - 1 / len(members)).abs().sum()))
    return float(np.mean(values))


def cell_measures(folder: str, blocks: Sequence, data: torch.Tensor, labels: Optional[torch.Tensor],
                  baseline: Optional[str] = None) -> dict:
    """Detector-free measures of a cell's PNGs against the subset: 'distance', the mean RMS pixel
    distance to the nearest point of the sample's class; 'on_point', the share within ON_POINT_RMS of
    one; 'tv', point_shares_tv(); with a baseline cell (the same seeds, e.g. strength 0): 'moved', the
    share of seeds whose nearest point differs from the baseline's, and 'change', the mean RMS pixel
    difference of the images."""
    x, classes, _seeds = read_cell(folder, blocks)
    dist, index = nearest_points(x, data, classes, labels)
    result = dict(num=len(x), distance=float(dist.mean()), on_point=float((dist < ON_POINT_RMS).double().mean()),
                  tv=point_shares_tv(index, classes, labels, len(data)))
    if baseline is not None:
        x0, _classes, _ = read_cell(baseline, blocks)
        _dist0, index0 = nearest_points(x0, data, classes, labels)
        result['moved'] = float((index != index0).double().mean())
        result['change'] = float(((x - x0).reshape(len(x), -1).square().mean(1).sqrt()).mean())
    return result

#----------------------------------------------------------------------------
# A grid of cells: every D at every strength of one error kind.

def ensure_dataset(data: str) -> str:
    """`data`; the quick start's digits (DEFAULT_DATA) are built as the quick start builds them when missing."""
    if os.path.exists(data):
        return data
    if os.path.normpath(data) != os.path.normpath(DEFAULT_DATA):
        raise ValueError(f'{data} does not exist; pass a labelled dataset ZIP or folder (dataset_tool.py), or leave --data out for the digits.')
    from studies import quickstart  # Only here: it is needed for this one case.
    paths = quickstart.demo_paths('.', 'unused', os.path.dirname(DEFAULT_DATA), 'downloads/sklearn-digits-8x8')
    quickstart.export_step(paths)
    quickstart.convert_step(paths)
    return paths.dataset


def format_D(D: Optional[float]) -> str:
    return 'inf' if D is None else f'{D:g}'


def run_oracle_grid(outdir: str, data: str = DEFAULT_DATA, D_list: Sequence[Optional[float]] = DEFAULT_D_LIST,
                    error_kind: str = 'additive', strengths: Optional[Sequence[float]] = None, per_class: int = DEFAULT_PER_CLASS,
                    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS, num_steps: int = DEFAULT_STEPS, subset_seed: int = 0,
                    device: torch.device | str = 'cpu', progress: bool = True) -> list[dict]:
    """Sample every (D, strength) cell into OUTDIR/<error_kind>/<symbol>_<strength>/D<D>/ and measure it
    (cell_measures, against strength 0 as baseline when the list has it); writes
    OUTDIR/<error_kind>/oracle.json with every cell and returns its rows."""
    strengths = [check_error(error_kind, s) for s in (DEFAULT_STRENGTHS[error_kind] if strengths is None else strengths)]
    D_list = [pfgmpp.check_D(None if isinstance(D, float) and math.isinf(D) else D) for D in D_list]
    subset = load_subset(ensure_dataset(data), per_class, subset_seed)
    blocks = class_blocks(samples_per_class, int(subset.labels.max()) + 1)
    folder = lambda D, s: os.path.join(outdir, error_kind, f'{ERRORS[error_kind].symbol}_{s:g}', f'D{format_D(D)}')
    rows = []
    for D in D_list:
        for s in strengths:
            done = sample_oracle_cell(subset.images, subset.labels, D, error_kind, s, blocks, folder(D, s), num_steps, device)
            baseline = folder(D, 0.0) if 0.0 in strengths else None
            if baseline is not None and not cell_complete(baseline, blocks):
                sample_oracle_cell(subset.images, subset.labels, D, error_kind, 0.0, blocks, baseline, num_steps, device)
            row = dict(D=format_D(D), error=error_kind, strength=s, **done,
                       **cell_measures(folder(D, s), blocks, subset.images, subset.labels, baseline))
            rows.append(row)
            if progress:
                print(format_row(row, ERRORS[error_kind].symbol), flush=True)
    record = dict(study=STUDY_NAME, data=os.path.abspath(data), per_class=per_class, subset_seed=subset_seed,
                  subset_indices=subset.indices.tolist(), num_steps=num_steps,
                  samples_per_class=samples_per_class, cells=rows, code=provenance.code_version())
    text = (json.dumps(provenance._plain(record), indent=2) + '\n').encode()
    dnnlib.util.write_atomic(os.path.join(outdir, error_kind, 'oracle.json'), lambda f: f.write(text))
    return rows


def format_row(row: dict, symbol: str) -> str:
    extra = f', moved {row["moved"]:.2f}, change {row["change"]:.3f}' if 'moved' in row else ''
    return (f'D={row["D"]:>5} {symbol}={row["strength"]:<5g} distance {row["distance"]:.4f}, on point {row["on_point"]:.2f}, tv {row["tv"]:.3f}'
            f'{extra} ({row["written"]} written in {row["seconds"]:.2f} s)')

#----------------------------------------------------------------------------
# Command line.

@click.command(context_settings=dict(cli.CONTEXT_SETTINGS, show_default=True))
@click.option('--outdir',      help='Where the cells go', metavar='DIR', type=str, default='oracle')
@click.option('--data',        help='Labelled dataset (built by the quick start)', metavar='ZIP|DIR', type=str, default=DEFAULT_DATA)
@click.option('--D', 'D_list', help='D values; inf is diffusion', metavar='LIST', type=str, default='1,4,16,128,2048,inf')
@click.option('--error',       help='Kind of estimation error', type=click.Choice(list(ERRORS)), default='additive')
@click.option('--strengths',   help='Error strengths  [default: additive 0,0.1,0.3,1,3; sigma -0.5,-0.2,0,0.2,0.5]', metavar='LIST', type=str)
@click.option('--per-class',   help='Subset points per class', metavar='INT', type=click.IntRange(min=1), default=DEFAULT_PER_CLASS)
@click.option('--samples-per-class', help='Samples per class in every cell', metavar='INT', type=click.IntRange(min=1), default=DEFAULT_SAMPLES_PER_CLASS)
@click.option('--steps', 'num_steps', help='Heun steps', metavar='INT', type=click.IntRange(min=1), default=DEFAULT_STEPS)
@click.option('--subset-seed', help='Seed of the subset\'s draw', metavar='INT', type=click.IntRange(min=0), default=0)
@cli.debug_option
def cmdline(debug: bool, D_list: str, strengths: Optional[str], **kwargs):
    """The oracle arm of the D study: exact denoisers of a digits subset with a controlled error,
    sampled for every D and strength, measured without a detector."""
    with cli.one_line_errors(debug):
        D_values = [None if math.isinf(D) else D for D in (cli.parse_D(v) for v in D_list.split(','))]
        values = None if strengths is None else cli.parse_float_list(strengths)
        run_oracle_grid(D_list=D_values, error_kind=kwargs.pop('error'), strengths=values, **kwargs)


main = cmdline

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()
