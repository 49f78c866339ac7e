"""Generate images with a trained PFGM++ (or EDM) network: EDM's samplers (training/sampling.py) started
from the PFGM++ prior (training/pfgmpp.sample_prior), one PNG per seed.

Examples:

\b
# 64 images from one checkpoint (our .pt, or EDM/PFGM++ legacy files with --allow-pickle)
python generate.py --network=training-runs/00000-cifar10/network-snapshot-200000.pt \\
    --outdir=out --seeds=0-63 --batch=64

\b
# Every checkpoint of a training run, each into RUN/ckpt_<kimg>/, 8 GPUs (as the PFGM++ code base)
torchrun --standalone --nproc_per_node=8 generate.py --seeds=0-49999 \\
    --outdir=./training-runs/exp_name --pfgmpp=1 --aug_dim=2048

Each image depends only on its seed: the seed's own torch.Generator draws, in this order, the prior
sample, the class label (conditional networks) and the sampler's noise (S_churn, alpha), as EDM does,
so for D -> infinity an EDM checkpoint gives EDM's images for the same seeds. The study scripts
generate_alpha.py, generate_steps.py and generate_quant.py share this script's options and code.
"""

import contextlib
import datetime
import functools
import hashlib
import inspect
import json
import math
import os
import re
import subprocess
from typing import Any, Callable, Iterable, Optional, Sequence

import click
import torch
import tqdm

import dnnlib
from torch_utils import distributed as dist
from torch_utils import image_io
from torch_utils import misc
from torch_utils import persistence
from torch_utils import precision as precision_lib
from training import checkpoint, pfgmpp, sampling

#----------------------------------------------------------------------------
# Parsing lists on the command line.

def parse_int_list(s: str | Sequence[int]) -> list[int]:
    """'0-9,15' -> [0, 1, ..., 9, 15]: comma-separated non-negative integers and inclusive ranges a-b,
    duplicates dropped (first occurrence kept)."""
    if isinstance(s, (list, tuple)):
        values = [int(v) for v in s]
    else:
        values = []
        for part in str(s).replace(' ', '').split(','):
            match = re.fullmatch(r'(\d+)(?:-(\d+))?', part)
            if match is None:
                raise ValueError(f'{s!r} is not a list like 0-49999 or 1,5,10-19 (non-negative integers).')
            lo, hi = int(match.group(1)), int(match.group(2) if match.group(2) is not None else match.group(1))
            if hi < lo:
                raise ValueError(f'The range {part} in {s!r} is empty; write it as low-high.')
            values.extend(range(lo, hi + 1))
    if any(v < 0 for v in values):
        raise ValueError(f'{s!r} holds negative numbers; seeds and counts are >= 0.')
    return list(dict.fromkeys(values))


def format_int_list(values: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8': sorted, duplicates dropped, consecutive runs as ranges;
    parse_int_list() reads it back."""
    parts, values = [], sorted(set(int(v) for v in values))
    start = prev = None
    for v in values + [None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f'{start}-{prev}')
        start = prev = v
    return ','.join(parts)


def parse_float_list(s: str | Sequence[float]) -> list[float]:
    """'0,0.05,0.1' -> [0.0, 0.05, 0.1] (finite numbers, duplicates dropped)."""
    if isinstance(s, (list, tuple)):
        values = [float(v) for v in s]
    else:
        try:
            values = [float(part) for part in str(s).replace(' ', '').split(',')]
        except ValueError:
            raise ValueError(f'{s!r} is not a comma-separated list of numbers like 0,0.05,0.1.') from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f'{s!r} must hold at least one finite number.')
    return list(dict.fromkeys(values))


def _click_list(parse: Callable) -> Callable:
    """A click callback that parses a list option and reports a bad value as a usage error."""
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return callback

#----------------------------------------------------------------------------
# Per-seed randomness.

class StackedRandomGenerator:
    """One torch.Generator per seed (seeded with seed mod 2^32, as EDM); every draw for a batch is the
    per-seed draws of the trailing shape stacked along dim 0, so sample i depends only on seeds[i]."""

    def __init__(self, device: torch.device | str, seeds: Iterable[int]):
        self.device = torch.device(device)
        self.generators = [misc.make_generator(int(seed) % (1 << 32), self.device) for seed in seeds]

    def randn(self, size: Sequence[int], **kwargs) -> torch.Tensor:
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input: torch.Tensor) -> torch.Tensor:
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size: Sequence[int], **kwargs) -> torch.Tensor:
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])

    def prior(self, shape: Sequence[int], sigma: float, D: Optional[float]) -> torch.Tensor:
        """float64 [B, *shape]: each seed's draw from the prior at noise level sigma (pfgmpp.sample_prior);
        for D=None exactly EDM's latents * sigma."""
        return torch.cat([pfgmpp.sample_prior([1, *shape], sigma, D, generator=gen, device=self.device, dtype=torch.float64)
                          for gen in self.generators])

#----------------------------------------------------------------------------
# Sampling one batch.

SAMPLER_KEYS = ('num_steps', 'sigma_min', 'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise',
                'solver', 'discretization', 'schedule', 'scaling', 'alpha')
ABLATION_KEYS = ('solver', 'discretization', 'schedule', 'scaling')


def choose_sampler(sampler_kwargs: dict) -> tuple[Callable, str]:
    """EDM's rule: the ablation sampler when any of solver/discretization/schedule/scaling is given,
    else edm_sampler. Returns (function, 'ablation' or 'edm')."""
    unknown = set(sampler_kwargs) - set(SAMPLER_KEYS)
    if unknown:
        raise ValueError(f'Unknown sampler settings {sorted(unknown)}; expected some of {", ".join(SAMPLER_KEYS)}.')
    if any(key in sampler_kwargs for key in ABLATION_KEYS):
        return sampling.ablation_sampler, 'ablation'
    return sampling.edm_sampler, 'edm'


def sample_batch(net, seeds: Sequence[int], D: Optional[float] = None, sampler_kwargs: Optional[dict] = None,
                 class_idx: Optional[int] = None, device: torch.device | str = 'cpu',
                 callback: Optional[Callable] = None) -> torch.Tensor:
    """Samples for `seeds`, float64 [B, C, H, W] in (about) [-1, 1]. Per seed, in this order: the prior
    draw at the sampler's first noise level (pfgmpp.sample_prior with D), a class label uniform over
    label_dim (conditional networks; replaced by class_idx if given), then the sampler's noise."""
    sampler_kwargs = {k: v for k, v in (sampler_kwargs or {}).items() if v is not None}
    sampler_fn, kind = choose_sampler(sampler_kwargs)
    sigma_start = sampling.first_sigma(net, kind, **sampler_kwargs)
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.prior([net.img_channels, net.img_resolution, net.img_resolution], sigma_start, D)
    class_labels = None
    if net.label_dim:
        class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[len(seeds)], device=device)]
    if class_idx is not None:
        check_class_idx(net, class_idx)
        class_labels[:, :] = 0
        class_labels[:, class_idx] = 1
    return sampler_fn(net, latents, class_labels, randn_like=rnd.randn_like, callback=callback, **sampler_kwargs)


def check_class_idx(net, class_idx: Optional[int]) -> None:
    if class_idx is None:
        return
    if not net.label_dim:
        raise ValueError(f'--class={class_idx} was given, but the network is unconditional; drop --class.')
    if not 0 <= class_idx < net.label_dim:
        raise ValueError(f'--class={class_idx} is out of range; this network has classes 0 to {net.label_dim - 1}.')

#----------------------------------------------------------------------------
# Output folders: {seed:06d}.png, with subdirs {seed - seed % 1000:06d}/{seed:06d}.png (as EDM).

def image_path(outdir: str, seed: int, subdirs: bool = False) -> str:
    folder = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(folder, f'{seed:06d}.png')


def missing_seeds(outdir: str, seeds: Sequence[int], subdirs: bool = False) -> list[int]:
    """The seeds whose PNG is not in outdir yet (images are written atomically, so one that exists is
    complete); empty when the folder is complete."""
    return [seed for seed in seeds if not os.path.isfile(image_path(outdir, seed, subdirs))]


#----------------------------------------------------------------------------
# Provenance: every output folder holds generate.json, which says what its images were made with.
# fid.py reads only PNG/JPEG files, so the manifest is never counted as a sample, and it copies the
# manifest into its records.

MANIFEST_NAME = 'generate.json'
MANIFEST_FORMAT = 'pfgmpp-generate-manifest'
MANIFEST_VERSION = 1

# What decides the images of a seed. A folder holds images of one configuration only, since an FID
# of a mixture measures neither; the memory layout, torch.compile and the batch size change only the
# rounding of the same computation, so they are recorded per run but may differ between runs.
CONFIG_KEYS = ('network_sha256', 'D', 'sampler', 'class_idx', 'subdirs', 'precision', 'study')
_NOT_SAMPLER_SETTINGS = ('net', 'latents', 'class_labels', 'randn_like', 'callback')


def sampler_settings(net, sampler_kwargs: Optional[dict] = None) -> dict:
    """Every setting of the sampler that sample_batch() runs for sampler_kwargs, after defaults:
    {'sampler': 'edm' or 'ablation', each keyword of that sampler function with its value}, with
    sigma_min and sigma_max the range actually used (the sampler's default for its discretization,
    clamped to the network's range). Raises ValueError for settings the sampler would refuse."""
    sampler_kwargs = {k: v for k, v in (sampler_kwargs or {}).items() if v is not None}
    sampler_fn, kind = choose_sampler(sampler_kwargs)
    settings = {name: param.default for name, param in inspect.signature(sampler_fn).parameters.items()
                if name not in _NOT_SAMPLER_SETTINGS and param.default is not inspect.Parameter.empty}
    settings.update(sampler_kwargs)
    for key, choices in [('solver', sampling.SOLVERS), ('discretization', sampling.DISCRETIZATIONS),
                         ('schedule', sampling.SCHEDULES), ('scaling', sampling.SCALINGS)]:
        if key in settings and settings[key] not in choices:
            raise ValueError(f'Unknown {key} {settings[key]!r}; choose one of {", ".join(choices)}.')
    sampling.first_sigma(net, kind, **sampler_kwargs)  # Refuses what the sampler would (e.g. too few steps).
    settings['sigma_min'], settings['sigma_max'] = sampling.sigma_range(
        net, kind, sampler_kwargs.get('sigma_min'), sampler_kwargs.get('sigma_max'),
        settings.get('discretization', 'edm'), settings.get('epsilon_s', 1e-3))
    return dict(sampler=kind, **settings)


@functools.lru_cache(maxsize=None)
def code_version() -> dict:
    """The version of this code: {'git_commit', 'git_dirty'} from git when the code sits in a git
    checkout (both None otherwise, or without git; tracked files only count towards dirty), and
    'source_sha256', a SHA-256 over the names and bytes of the .py files of the scripts and packages,
    which identifies the code also in a copy without .git."""
    root = os.path.dirname(os.path.abspath(__file__))
    info = dict(git_commit=None, git_dirty=None)
    try:
        git = lambda *args: subprocess.run(['git', '-C', root, *args], capture_output=True, text=True, timeout=30)
        head = git('rev-parse', 'HEAD')
        if head.returncode == 0:
            info['git_commit'] = head.stdout.strip()
            status = git('status', '--porcelain', '--untracked-files=no')
            info['git_dirty'] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):  # No git, or it hangs: the source hash still says which code ran.
        pass
    digest = hashlib.sha256()
    files = [name for name in os.listdir(root) if name.endswith('.py')]
    for package in ('dnnlib', 'torch_utils', 'training'):
        for folder, _dirs, names in os.walk(os.path.join(root, package)):
            files += [os.path.relpath(os.path.join(folder, name), root) for name in names if name.endswith('.py')]
    for name in sorted(f.replace(os.sep, '/') for f in files):
        digest.update(name.encode() + b'\0' + dnnlib.util.file_sha256(os.path.join(root, name)).encode() + b'\n')
    info['source_sha256'] = digest.hexdigest()
    return info


def _plain(value: Any) -> Any:
    """value as JSON holds it: tuples become lists, non-finite floats the strings 'inf', '-inf', 'nan'
    (which strict JSON readers accept), numbers and strings stay."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def make_manifest(net, seeds: Sequence[int], D: Optional[float], sampler_kwargs: Optional[dict] = None,
                  class_idx: Optional[int] = None, subdirs: bool = False, precision: str = 'fp32',
                  channels_last: bool = False, compile: bool = False, batch_size: Optional[int] = None,
                  network: Optional[str] = None, network_sha256: Optional[str] = None,
                  study: Optional[dict] = None) -> dict:
    """The manifest of one generate_images() call: the configuration (CONFIG_KEYS), the seeds as
    {'ranges': '0-49999', 'count': 50000}, and 'runs', a list with this run's network as given, seeds,
    memory layout, compile flag, batch size, process count, code version, PyTorch version and time."""
    seeds_entry = dict(ranges=format_int_list(seeds), count=len(set(seeds)))
    run = dict(network=network, seeds=seeds_entry, channels_last=bool(channels_last), compile=bool(compile),
               batch_size=batch_size, processes=dist.get_world_size(), code=code_version(), torch=torch.__version__,
               time=datetime.datetime.now().isoformat(timespec='seconds'))
    manifest = dict(format=MANIFEST_FORMAT, version=MANIFEST_VERSION, network=network, network_sha256=network_sha256,
                    D=D, sampler=sampler_settings(net, sampler_kwargs), class_idx=class_idx, subdirs=bool(subdirs),
                    precision=precision, study=study, seeds=seeds_entry, runs=[run])
    return _plain(manifest)


def read_manifest(folder: str) -> Optional[dict]:
    """The manifest in folder (None when there is none); ValueError when it is not one."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} is not a readable generate.py manifest ({err}); move it away or use another folder.') from None
    if not isinstance(manifest, dict) or manifest.get('format') != MANIFEST_FORMAT:
        raise ValueError(f'{path} is not a generate.py manifest (no format "{MANIFEST_FORMAT}"); move it away or use another folder.')
    return manifest


def config_differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every configuration value (CONFIG_KEYS, sampler settings one by one)
    that differs between two manifests."""
    diffs = []
    for key in CONFIG_KEYS:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f'{key}.{k}: {a.get(k)} -> {b.get(k)}' for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f'{key}: {a} -> {b}')
    return diffs


def manifest_seeds(manifest: dict) -> list[int]:
    """The seeds a manifest lists, ascending."""
    ranges = manifest.get('seeds', {}).get('ranges') or ''
    return parse_int_list(ranges) if ranges else []


def merge_manifest(old: Optional[dict], new: dict) -> dict:
    """new with the seeds of both and old's runs before new's; old and new must agree on CONFIG_KEYS."""
    if old is None:
        return new
    seeds = manifest_seeds(old) + manifest_seeds(new)
    return dict(new, seeds=dict(ranges=format_int_list(seeds), count=len(set(seeds))), runs=old.get('runs', []) + new['runs'])


def write_manifest(folder: str, manifest: dict) -> None:
    """Write folder/generate.json atomically (a crash leaves the old one or the new one)."""
    data = (json.dumps(manifest, indent=2) + '\n').encode('utf-8')
    dnnlib.util.write_atomic(os.path.join(folder, MANIFEST_NAME), lambda f: f.write(data))

#----------------------------------------------------------------------------

def generate_images(net, seeds: Sequence[int], outdir: str, D: Optional[float] = None, batch_size: int = 64,
                    sampler_kwargs: Optional[dict] = None, class_idx: Optional[int] = None,
                    device: torch.device | str = 'cpu', subdirs: bool = False, trajectory: Optional[str] = None,
                    trajectory_images: int = 8, progress: bool = True, desc: Optional[str] = None,
                    precision: str = 'fp32', channels_last: bool = False, compile: bool = False,
                    network: Optional[str] = None, network_sha256: Optional[str] = None, study: Optional[dict] = None,
                    skip_existing: bool = False) -> list[int]:
    """Sample one PNG per seed into outdir, split over the torchrun processes as EDM does: the seeds
    form ceil(n / (batch_size * world)) * world batches and rank r takes batches r, r + world, ...
    `trajectory`: a GIF path where rank 0 writes the states x_0..x_N of the first `trajectory_images`
    samples of its first batch. precision, channels_last, compile: how the network runs
    (torch_utils.precision.prepare_network). skip_existing: sample only the seeds whose PNG is missing.

    Before sampling, rank 0 writes outdir/generate.json (make_manifest; network, network_sha256: the
    file the network came from, as given and its SHA-256; study: the study setting, if any). A
    folder whose manifest records another configuration is refused with ValueError; one with the same
    configuration gets the union of the seeds. Returns the seeds this process wrote; all processes
    return together."""
    seeds = [int(s) for s in seeds]
    if batch_size < 1:
        raise ValueError(f'The batch size must be >= 1, got {batch_size}.')
    check_class_idx(net, class_idx)
    manifest = make_manifest(net, seeds, D, sampler_kwargs, class_idx=class_idx, subdirs=subdirs, precision=precision,
                             channels_last=channels_last, compile=compile, batch_size=batch_size, network=network,
                             network_sha256=network_sha256, study=study)  # Also refuses bad sampler settings.
    net = precision_lib.prepare_network(net, precision, channels_last=channels_last, compile=compile)
    old = read_manifest(outdir)
    differences = [] if old is None else config_differences(old, manifest)
    if differences:
        raise ValueError(f'{os.path.join(outdir, MANIFEST_NAME)} records images of another configuration '
                         f'({"; ".join(differences[:3])}{"; ..." if len(differences) > 3 else ""}); an FID of mixed images '
                         f'is wrong, so write to another --outdir or delete that folder.')
    num_requested = len(seeds)
    if skip_existing:
        seeds = missing_seeds(outdir, seeds, subdirs)
        manifest = dict(manifest, seeds=dict(ranges=format_int_list(seeds), count=len(seeds)))
        manifest['runs'][0]['seeds'] = manifest['seeds']
    dist.barrier()  # Every process has read the folder before rank 0 changes it.
    if skip_existing and not seeds:
        dist.print0(f'{outdir} already holds all {num_requested} images; skipping (delete it to regenerate).')
        return []
    if dist.get_rank() == 0:
        write_manifest(outdir, merge_manifest(old, manifest))

    rank, world = dist.get_rank(), dist.get_world_size()
    written = []
    if seeds:
        num_batches = ((len(seeds) - 1) // (batch_size * world) + 1) * world
        rank_batches = torch.as_tensor(seeds).tensor_split(num_batches)[rank::world]
        frames = [] if (trajectory and rank == 0) else None
        for batch_seeds in tqdm.tqdm(rank_batches, unit='batch', desc=desc, disable=(rank != 0 or not progress)):
            batch_seeds = batch_seeds.tolist()
            if not batch_seeds:
                continue
            callback = None
            if frames is not None and not frames:
                callback = lambda i, t, x: frames.append(x[:trajectory_images].detach().to('cpu', torch.float32))
            with torch.no_grad():
                images = sample_batch(net, batch_seeds, D, sampler_kwargs, class_idx, device, callback)
            for seed, image in zip(batch_seeds, images):
                image_io.save_image(image, image_path(outdir, seed, subdirs))
            written.extend(batch_seeds)
        if frames:
            image_io.save_trajectory_gif(frames, trajectory)
    dist.barrier()
    return written


def save_seed_grid(outdir: str, seeds: Sequence[int], path: str, subdirs: bool = False, max_images: int = 64) -> None:
    """One grid PNG of the first `max_images` seeds' images, read back from outdir."""
    chosen = list(seeds)[:max_images]
    if chosen:
        image_io.save_grid(torch.stack([image_io.load_image(image_path(outdir, s, subdirs)) for s in chosen]), path)

#----------------------------------------------------------------------------
# Which D the prior uses: the checkpoint's, unless it records none; flags may only agree with it.

def flags_D(pfgmpp_flag: Optional[bool], aug_dim: Optional[float]) -> tuple[bool, Optional[float]]:
    """(given, D) from --pfgmpp/--aug_dim: given=False when neither was passed."""
    if pfgmpp_flag is None and aug_dim is None:
        return False, None
    if pfgmpp_flag is False:
        if aug_dim is not None:
            raise ValueError('--aug_dim is only used with --pfgmpp=1; drop --aug_dim, or pass --pfgmpp=1.')
        return True, None
    if aug_dim is None:
        raise ValueError('--pfgmpp=1 needs the augmentation dimension; pass --aug_dim=D (e.g. --aug_dim=2048).')
    return True, pfgmpp.check_D(aug_dim)


def describe_D(D: Optional[float]) -> str:
    return 'diffusion (D -> infinity, --pfgmpp=0)' if D is None else f'D={D:g} (--pfgmpp=1 --aug_dim={D:g})'


def resolve_D(info: dict, pfgmpp_flag: Optional[bool] = None, aug_dim: Optional[float] = None,
              name: str = 'The checkpoint') -> Optional[float]:
    """The D of the prior: the one the checkpoint records (info from checkpoint.load_network), else the
    flags' (default None, diffusion). Flags that contradict a recorded D are an error."""
    given, D_flag = flags_D(pfgmpp_flag, aug_dim)
    if not info.get('D_recorded', True):
        return D_flag
    D_ckpt = info.get('D')
    same = (D_ckpt is None and D_flag is None) or (D_ckpt is not None and D_flag is not None and math.isclose(D_ckpt, D_flag, rel_tol=1e-9))
    if given and not same:
        raise ValueError(f'{name} was trained for {describe_D(D_ckpt)}, but the flags ask for {describe_D(D_flag)}; '
                         f'drop --pfgmpp/--aug_dim to use the checkpoint\'s D.')
    return D_ckpt

#----------------------------------------------------------------------------
# Run-directory mode: every checkpoint of a training run, as the PFGM++ code base does.

_PREFERENCE = (('network-snapshot-', '.pt'), ('network-snapshot-', '.pkl'), ('training-state-', '.pt'),
               ('training-state-', '.pkl'))


def find_checkpoints(run_dir: str, min_kimg: Optional[int] = None, max_kimg: Optional[int] = None) -> list[tuple[int, str]]:
    """[(kimg, path)] sorted by kimg, one per kimg in [min_kimg, max_kimg]: the network snapshot
    (ours .pt, else EDM's .pkl), else the training state (ours or PFGM++'s .pt, else the
    training-state-*.pkl name that the published PFGM++ checkpoints use)."""
    best = {}
    for name in os.listdir(run_dir):
        kimg = checkpoint.kimg_from_name(name)
        if kimg is None or (min_kimg is not None and kimg < min_kimg) or (max_kimg is not None and kimg > max_kimg):
            continue
        rank = next((i for i, (prefix, ext) in enumerate(_PREFERENCE) if name.startswith(prefix) and name.endswith(ext)), None)
        if rank is not None and (kimg not in best or rank < best[kimg][0]):
            best[kimg] = (rank, os.path.join(run_dir, name))
    return [(kimg, best[kimg][1]) for kimg in sorted(best)]


def ckpt_outdir(run_dir: str, kimg: int) -> str:
    """RUN/ckpt_<kimg:06d>: where run-directory mode writes a checkpoint's images (fid.py globs ckpt_*/)."""
    return os.path.join(run_dir, f'ckpt_{int(kimg):06d}')


def load_for_sampling(network: str, allow_pickle: bool, device: torch.device, pfgmpp_flag: Optional[bool],
                      aug_dim: Optional[float]) -> tuple[torch.nn.Module, Optional[float], dict]:
    """load_network() and resolve_D() together: (net, D of the prior, info). Rank 0 loads first, so
    that a URL is downloaded once into the cache and the other processes read it from there."""
    if dist.get_rank() != 0:
        dist.barrier()
    net, info = checkpoint.load_network(network, allow_pickle=allow_pickle, device=device)
    if dist.get_rank() == 0:
        dist.barrier()
    D = resolve_D(info, pfgmpp_flag, aug_dim, name=network)
    return net, D, info


def generate_run(run_dir: str, seeds: Sequence[int], min_kimg: Optional[int] = None, max_kimg: Optional[int] = None,
                 allow_pickle: bool = False, pfgmpp_flag: Optional[bool] = None, aug_dim: Optional[float] = None,
                 device: torch.device | str = 'cpu', **kwargs) -> list[str]:
    """Sample every checkpoint of run_dir (find_checkpoints) into ckpt_outdir(run_dir, kimg), skipping
    folders that already hold every seed's PNG and completing those that hold some; a folder whose
    generate.json records another configuration is refused. kwargs go to generate_images(). Returns
    the checkpoints' folders."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f'{run_dir} is not a folder; pass a training run directory as --outdir, or a checkpoint as --network.')
    found = find_checkpoints(run_dir, min_kimg, max_kimg)
    if not found:
        raise FileNotFoundError(f'{run_dir} holds no network-snapshot-*.pt/.pkl or training-state-*.pt/.pkl'
                                f'{" in the --ckpt/--end_ckpt range" if (min_kimg, max_kimg) != (None, None) else ""}; '
                                f'pass a training run directory, or a checkpoint as --network.')
    pickles = [os.path.basename(path) for _kimg, path in found if path.endswith('.pkl')]
    if pickles and not allow_pickle:
        raise persistence.UntrustedPickleError(
            f'{run_dir} holds legacy pickles ({", ".join(pickles[:3])}{", ..." if len(pickles) > 3 else ""}), and loading '
            f'them executes code from the files; pass --allow-pickle if you trust their source.')
    folders = []
    for kimg, path in found:
        outdir = ckpt_outdir(run_dir, kimg)
        folders.append(outdir)
        dist.print0(f'{os.path.basename(path)} ({kimg} kimg) -> "{outdir}"')
        net, D, info = load_for_sampling(path, allow_pickle, device, pfgmpp_flag, aug_dim)
        generate_images(net, seeds, outdir, D=D, device=device, desc=f'ckpt_{kimg:06d}', network=path,
                        network_sha256=dnnlib.util.file_sha256(info['path']), skip_existing=True, **kwargs)
    return folders

#----------------------------------------------------------------------------
# The robustness and ablation studies: one folder per setting, ready for fid.py.

def run_study(network: str, outdir: str, settings: Sequence[tuple[str, dict, Optional[Callable]]], seeds: Sequence[int],
              allow_pickle: bool = False, pfgmpp_flag: Optional[bool] = None, aug_dim: Optional[float] = None,
              sampler_kwargs: Optional[dict] = None, device: torch.device | str = 'cpu', **kwargs) -> list[str]:
    """For each (folder, sampler_overrides, net_transform) in settings, sample `seeds` into
    outdir/folder with sampler_kwargs updated by the overrides and the network replaced by
    net_transform(net) (if given). Complete folders are skipped, partial ones completed, and one whose
    generate.json records another configuration is refused."""
    net, D, info = load_for_sampling(network, allow_pickle, device, pfgmpp_flag, aug_dim)
    dist.print0(f'Loaded {network} ({info["source"]}, {describe_D(D)}).')
    network_sha256 = dnnlib.util.file_sha256(info['path'])
    folders = []
    for folder, overrides, transform in settings:
        target = os.path.join(outdir, folder)
        folders.append(target)
        dist.print0(f'Setting {folder} -> "{target}"')
        setting_net = transform(net) if transform is not None else net
        study = dict(folder=folder, overrides=overrides, transform=describe_transform(transform))
        generate_images(setting_net, seeds, target, D=D, sampler_kwargs={**(sampler_kwargs or {}), **overrides},
                        device=device, desc=folder, network=network, network_sha256=network_sha256, study=study,
                        skip_existing=True, **kwargs)
    return folders


def describe_transform(transform: Optional[Callable]) -> Optional[str]:
    """A study's network transform for the manifest: its `description` attribute if it has one,
    'quantize_weights(bits=8)' for a functools.partial, else the function's name."""
    if transform is None:
        return None
    if getattr(transform, 'description', None):
        return transform.description
    if isinstance(transform, functools.partial):
        args = [repr(a) for a in transform.args] + [f'{k}={v!r}' for k, v in transform.keywords.items()]
        return f'{getattr(transform.func, "__name__", type(transform.func).__name__)}({", ".join(args)})'
    return getattr(transform, '__name__', type(transform).__name__)

#----------------------------------------------------------------------------
# Command-line options shared by generate.py and the study scripts, and their error handling.

def _apply(options: Sequence[Callable]) -> Callable:
    def decorator(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorator


def output_options(fn: Callable) -> Callable:
    """--outdir --seeds --subdirs --class --batch."""
    return _apply([
        click.option('--outdir', help='Where to save the output images', metavar='DIR', type=str, required=True),
        click.option('--seeds', help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='0-63', show_default=True, callback=_click_list(parse_int_list)),
        click.option('--subdirs', help='Create subdirectory for every 1000 seeds', is_flag=True),
        click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT', type=click.IntRange(min=0), default=None),
        click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True),
    ])(fn)


def sampler_options(with_steps: bool = True) -> Callable:
    """EDM's sampler options (--steps unless a study varies it) and its ablation options."""
    options = [click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT', type=click.IntRange(min=1), default=18, show_default=True)] if with_steps else []
    options += [
        click.option('--sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
        click.option('--sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
        click.option('--rho', help='Time step exponent', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=7, show_default=True),
        click.option('--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT', type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_min', 'S_min', help='Stoch. min noise level', metavar='FLOAT', type=click.FloatRange(min=0), default=0, show_default=True),
        click.option('--S_max', 'S_max', help='Stoch. max noise level', metavar='FLOAT', type=click.FloatRange(min=0), default='inf', show_default=True),
        click.option('--S_noise', 'S_noise', help='Stoch. noise inflation', metavar='FLOAT', type=float, default=1, show_default=True),
        click.option('--solver', help='Ablate ODE solver', metavar='euler|heun', type=click.Choice(list(sampling.SOLVERS))),
        click.option('--disc', 'discretization', help='Ablate time step discretization {t_i}', metavar='vp|ve|iddpm|edm', type=click.Choice(list(sampling.DISCRETIZATIONS))),
        click.option('--schedule', help='Ablate noise schedule sigma(t)', metavar='vp|ve|linear', type=click.Choice(list(sampling.SCHEDULES))),
        click.option('--scaling', help='Ablate signal scaling s(t)', metavar='vp|none', type=click.Choice(list(sampling.SCALINGS))),
    ]
    return _apply(options)


def network_options(required: bool = True) -> Callable:
    """--network --allow-pickle --pfgmpp --aug_dim --device --debug."""
    network_help = ('Network checkpoint filename or URL' if required else
                    'Network checkpoint filename or URL  [default: every checkpoint in --outdir, a training run]')
    return _apply([
        click.option('--network', 'network', help=network_help, metavar='PATH|URL', type=str, required=required),
        click.option('--allow-pickle', 'allow_pickle', help='Allow legacy EDM/PFGM++ pickles, which run code from the file; only for files you trust', is_flag=True),
        click.option('--pfgmpp', 'pfgmpp_flag', help='PFGM++ prior (1) or diffusion (0)  [default: from the checkpoint]', metavar='BOOL', type=click.BOOL, default=None),
        click.option('--aug_dim', help='PFGM++ augmentation dimension D  [default: from the checkpoint]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=None),
        click.option('--device', 'device_name', help='Where to run', type=click.Choice(list(misc.DEVICE_CHOICES)), default='auto', show_default=True),
        click.option('--debug', help='Show the full traceback of errors', is_flag=True),
    ])


def performance_options(fn: Callable) -> Callable:
    """--precision --channels-last --compile."""
    return _apply([
        click.option('--precision', help='Arithmetic of the network: fp32, tf32 (CUDA), bf16 or fp16 autocast', type=click.Choice(list(precision_lib.PRECISIONS)), default='fp32', show_default=True),
        click.option('--channels-last', 'channels_last', help='Channels-last (NHWC) memory layout', metavar='BOOL', type=click.BOOL, default=False, show_default=True),
        click.option('--compile', help='torch.compile the network (pays off for many batches)', metavar='BOOL', type=click.BOOL, default=False, show_default=True),
    ])(fn)


def performance_kwargs(options: dict) -> dict:
    """The generate_images() arguments among parsed CLI options, after configuring the backends."""
    precision_lib.configure_backends(options['precision'])
    return dict(precision=options['precision'], channels_last=options['channels_last'], compile=options['compile'])


USER_ERRORS = (ValueError, OSError, dnnlib.DownloadError)  # CheckpointError and the pickle errors are ValueErrors.


@contextlib.contextmanager
def user_errors(debug: bool = False):
    """Turn errors a user can cause into a one-sentence click error (exit 1, no traceback) unless --debug."""
    try:
        yield
    except click.ClickException:
        raise
    except USER_ERRORS as err:
        if debug:
            raise
        raise click.ClickException(str(err)) from None


def sampler_kwargs_from(options: dict) -> dict:
    """The sampler settings among parsed CLI options, without the ones left at None."""
    return {key: options[key] for key in SAMPLER_KEYS if options.get(key) is not None}


def run_study_cli(options: dict, settings: Sequence[tuple[str, dict, Optional[Callable]]]) -> None:
    """The body of the study scripts: options as parsed by network_options, output_options and
    sampler_options; settings as run_study() takes them."""
    with user_errors(options['debug']):
        device = dist.init(options['device_name'])
        sampler_kwargs = sampler_kwargs_from(options)
        choose_sampler(sampler_kwargs)
        run_study(options['network'], options['outdir'], settings, options['seeds'], options['allow_pickle'],
                  options['pfgmpp_flag'], options['aug_dim'], sampler_kwargs, device, batch_size=options['max_batch_size'],
                  class_idx=options['class_idx'], subdirs=options['subdirs'], **performance_kwargs(options))
        dist.print0('Done.')
    dist.shutdown()

#----------------------------------------------------------------------------

@click.command(help=__doc__)

# Network and PFGM++.
@network_options(required=False)
@click.option('--ckpt', 'min_kimg', help='Run directory mode: first checkpoint to sample, in kimg', metavar='KIMG', type=click.IntRange(min=0))
@click.option('--end_ckpt', 'max_kimg', help='Run directory mode: last checkpoint to sample, in kimg', metavar='KIMG', type=click.IntRange(min=0))

# Output.
@output_options
@click.option('--grid', help='Also save a grid of the first 64 images (a path outside --outdir)', metavar='PNG', type=str)
@click.option('--trajectory', help='Also save the denoising trajectory of the first 8 images as a GIF', metavar='GIF', type=str)

# Sampler.
@sampler_options(with_steps=True)

# Speed.
@performance_options

def main(network, allow_pickle, pfgmpp_flag, aug_dim, device_name, debug, min_kimg, max_kimg, outdir, seeds,
         subdirs, class_idx, max_batch_size, grid, trajectory, precision, channels_last, compile, **sampler_options):
    # The help text is the module docstring.
    with user_errors(debug):
        device = dist.init(device_name)
        sampler_kwargs = sampler_kwargs_from(sampler_options)
        choose_sampler(sampler_kwargs)
        common = dict(batch_size=max_batch_size, sampler_kwargs=sampler_kwargs, class_idx=class_idx, subdirs=subdirs,
                      **performance_kwargs(dict(precision=precision, channels_last=channels_last, compile=compile)))

        if network is None:
            if grid or trajectory:
                raise click.ClickException('--grid and --trajectory need a single --network; drop them in run directory mode.')
            generate_run(outdir, seeds, min_kimg, max_kimg, allow_pickle, pfgmpp_flag, aug_dim, device, **common)
        else:
            if min_kimg is not None or max_kimg is not None:
                raise click.ClickException('--ckpt and --end_ckpt select checkpoints of a training run; drop them, or drop --network.')
            if grid and os.path.abspath(grid).startswith(os.path.abspath(outdir) + os.sep):
                raise click.ClickException(f'--grid={grid} is inside --outdir, where fid.py would count it as a sample; write it elsewhere.')
            dist.print0(f'Loading network from "{network}"...')
            net, D, info = load_for_sampling(network, allow_pickle, device, pfgmpp_flag, aug_dim)
            dist.print0(f'Generating {len(seeds)} images to "{outdir}" with {describe_D(D)}...')
            generate_images(net, seeds, outdir, D=D, device=device, trajectory=trajectory, network=network,
                            network_sha256=dnnlib.util.file_sha256(info['path']), **common)
            if grid and dist.get_rank() == 0:
                save_seed_grid(outdir, seeds, grid, subdirs)
        dist.barrier()
        dist.print0('Done.')
    dist.shutdown()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
