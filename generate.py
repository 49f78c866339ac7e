"""Generate images with a trained PFGM++ (or EDM) network: EDM's samplers (training/sampling.py) started
from the PFGM++ prior (training/pfgmpp.sample_prior), one PNG per seed, optionally with guidance
(training/guidance.py) or Restart sampling.

Examples:

\b
# 64 images from one checkpoint (our .pt, or EDM/PFGM++ legacy files with --allow-pickle)
python generate.py --network=training-runs/00000-cifar10/network-snapshot-200000.pt \\
    --outdir=out --seeds=0-63 --batch=64

\b
# Every checkpoint of a training run, each into RUN/ckpt_<kimg>/, 8 GPUs (as the PFGM++ code base)
torchrun --standalone --nproc_per_node=8 generate.py --seeds=0-49999 \\
    --outdir=./training-runs/exp_name --pfgmpp=1 --aug_dim=2048

\b
# Restart sampling with the published CIFAR-10 D=2048 configuration (43 network evaluations)
python generate.py --network=NET --outdir=out --seeds=0-49999 --restart=cifar10-pfgmpp-d2048

\b
# Classifier-free guidance 1.5, applied for sigma in (0.28, 2.9]
python generate.py --network=NET --outdir=out --seeds=0-63 --guidance=1.5 --guidance-interval=0.28,2.9

Each image depends only on its seed: the seed's own torch.Generator draws, in this order, the prior
sample, the class label (conditional networks) and the sampler's noise (S_churn, alpha, Restart
jumps), as EDM does, so for D -> infinity an EDM checkpoint gives EDM's images for the same seeds.
The study scripts generate_alpha.py, generate_steps.py and generate_quant.py share this script's
options and code. From Python, generate(**options) takes the same options by name.
"""

import functools
import math
import os
from typing import Callable, Iterable, Optional, Sequence

import click
import torch
import tqdm

import dnnlib
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import image_io
from torch_utils import misc
from torch_utils import persistence
from torch_utils import precision as precision_lib
from training import checkpoint, guidance, pfgmpp, provenance, sampling

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

    def gamma_log_like(self, input: torch.Tensor, alpha: float) -> torch.Tensor:
        """float64 [B]: row i the log of a Gamma(alpha, 1) draw from seed i's generator (the Restart
        jump of PFGM++, pfgmpp.restart_jump), on input's device."""
        return torch.cat([pfgmpp.sample_gamma_log(alpha, 1, generator=gen, device=self.device)
                          for gen in self.generators]).to(input.device)

    def prior(self, shape: Sequence[int], sigma: float, D: Optional[float]) -> torch.Tensor:
        """float64 [B, *shape]: each seed's draw from the prior at noise level sigma (pfgmpp.sample_prior);
        for D=None exactly EDM's latents * sigma."""
        return torch.cat([pfgmpp.sample_prior([1, *shape], sigma, D, generator=gen, device=self.device, dtype=torch.float64)
                          for gen in self.generators])

#----------------------------------------------------------------------------
# Sampling one batch.

def sample_batch(net, seeds: Sequence[int], sampler_kwargs: Optional[dict] = None, class_idx: Optional[int] = None,
                 device: torch.device | str = 'cpu', callback: Optional[Callable] = None) -> torch.Tensor:
    """Samples for `seeds` from `net` (a network, or a guided one), float64 [B, C, H, W] in (about)
    [-1, 1]. Per seed, in this order: the prior draw for net.D at the sampler's first noise level
    (pfgmpp.sample_prior), a class label uniform over label_dim (conditional networks; replaced by
    class_idx if given), then the sampler's noise. The sampler is sampling.choose_sampler()'s."""
    sampler_kwargs = {k: v for k, v in (sampler_kwargs or {}).items() if v is not None}
    sampler_fn, kind = sampling.choose_sampler(sampler_kwargs)
    sigma_start = sampling.first_sigma(net, kind, **{k: v for k, v in sampler_kwargs.items() if k not in sampling.RESTART_KEYS})
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.prior([net.img_channels, net.img_resolution, net.img_resolution], sigma_start, net.D)
    class_labels = None
    if net.label_dim:
        class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[len(seeds)], device=device)]
    if class_idx is not None:
        check_class_idx(net, class_idx)
        class_labels[:, :] = 0
        class_labels[:, class_idx] = 1
    extra = dict(D=net.D, gamma_log_like=rnd.gamma_log_like) if kind == 'restart' else {}
    return sampler_fn(net, latents, class_labels, randn_like=rnd.randn_like, callback=callback, **sampler_kwargs, **extra)


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
# One folder of images.

def prepare_networks(net, precision: str = 'fp32', channels_last: bool = False, compile: bool = False,
                     guidance_weight: float = 1.0, gnet=None, guidance_interval: Optional[tuple[float, float]] = None):
    """The denoiser to sample: `net` (and the guide) set up for the precision, memory layout and
    torch.compile (torch_utils.precision.prepare_network), then wrapped for guidance when
    guidance_weight != 1 (training/guidance.guided_network; checked either way)."""
    guidance.check_interval(guidance_interval)
    if gnet is not None:
        guidance.check_guide(net, gnet)
    net = precision_lib.prepare_network(net, precision, channels_last=channels_last, compile=compile)
    if gnet is not None:
        gnet = precision_lib.prepare_network(gnet, precision, channels_last=channels_last, compile=compile)
    return guidance.guided_network(net, guidance_weight, gnet, guidance_interval)


def generate_images(net, seeds: Sequence[int], outdir: str, batch_size: int = 64, sampler_kwargs: Optional[dict] = None,
                    class_idx: Optional[int] = None, device: torch.device | str = 'cpu', subdirs: bool = False,
                    trajectory: Optional[str] = None, trajectory_images: int = 8, progress: bool = True,
                    desc: Optional[str] = None, precision: str = 'fp32', channels_last: bool = False, compile: bool = False,
                    guidance_weight: float = 1.0, gnet=None, guidance_interval: Optional[tuple[float, float]] = None,
                    network: Optional[str] = None, network_sha256: Optional[str] = None, study: Optional[dict] = None,
                    guide: Optional[dict] = None, skip_existing: bool = False) -> list[int]:
    """Sample one PNG per seed into outdir from `net` (with the prior for net.D), split over the
    torchrun processes as EDM does: the seeds form ceil(n / (batch_size * world)) * world batches and
    rank r takes batches r, r + world, ... `trajectory`: a GIF path where rank 0 writes the states
    x_0..x_N of the first `trajectory_images` samples of its first batch. precision, channels_last,
    compile, guidance_weight, gnet, guidance_interval: how the network runs (prepare_networks()).
    skip_existing: sample only the seeds whose PNG is missing.

    Before sampling, rank 0 writes outdir/generate.json (training/provenance.py; network,
    network_sha256: the file the network came from, as given and its SHA-256; guide: the same for the
    guide network; study: the study setting, if any). A folder whose manifest records another
    configuration is refused with ValueError; one with the same configuration gets the union of the
    seeds. Returns the seeds this process wrote; all processes return together."""
    seeds = [int(s) for s in seeds]
    if batch_size < 1:
        raise ValueError(f'The batch size must be >= 1, got {batch_size}.')
    check_class_idx(net, class_idx)
    guide_record = dict(weight=float(guidance_weight), interval=list(guidance_interval) if guidance_interval else None,
                        **(guide or {})) if (guidance_weight != 1 or gnet is not None) else None
    manifest = provenance.make_manifest(net, seeds, sampler_kwargs, class_idx=class_idx, subdirs=subdirs, precision=precision,
                                        channels_last=channels_last, compile=compile, batch_size=batch_size, network=network,
                                        network_sha256=network_sha256, study=study, guidance=guide_record)  # Refuses bad settings.
    denoiser = prepare_networks(net, precision, channels_last, compile, guidance_weight, gnet, guidance_interval)
    seeds = provenance.claim_folder(outdir, manifest, seeds, subdirs, skip_existing, missing_seeds)
    if seeds is None:
        return []

    rank, world = dist.get_rank(), dist.get_world_size()
    written = []
    num_batches = ((len(seeds) - 1) // (batch_size * world) + 1) * world if seeds else 0
    rank_batches = torch.as_tensor(seeds).tensor_split(num_batches)[rank::world] if seeds else []
    frames = [] if (trajectory and rank == 0) else None
    for batch_seeds in tqdm.tqdm(rank_batches, unit='batch', desc=desc, disable=(rank != 0 or not progress)):
        batch_seeds = batch_seeds.tolist()
        if not batch_seeds:
            continue
        callback = None
        if frames is not None and not frames:
            callback = lambda i, t, x: frames.append(x[:trajectory_images].detach().to('cpu', torch.float32))
        with torch.no_grad():
            images = sample_batch(denoiser, batch_seeds, sampler_kwargs, class_idx, device, callback)
        for seed, image in zip(batch_seeds, images):
            image_io.save_image(image, image_path(outdir, seed, subdirs))
        written.extend(batch_seeds)
    if frames:
        image_io.save_trajectory_gif(frames, trajectory)
    report_cost(denoiser, sampler_kwargs, written)
    dist.barrier()
    return written


def report_cost(denoiser, sampler_kwargs: Optional[dict], written: Sequence[int]) -> None:
    """Print the network evaluations per image that guidance really cost (rank 0; batches sample
    together, so evaluations per batch are evaluations per image)."""
    if isinstance(denoiser, guidance.GuidedDenoiser) and written and dist.get_rank() == 0:
        batches = max(denoiser.calls / max(nfe(sampler_kwargs), 1), 1)
        dist.print0(f'Guidance: {denoiser.evaluations / batches:g} network evaluations per image '
                    f'({denoiser.guided_calls / batches:g} of the sampler\'s {denoiser.calls / batches:g} calls guided).')


def nfe(sampler_kwargs: Optional[dict]) -> int:
    """Network evaluations per image of EDM's or the Restart sampler without guidance: 2N - 1 Heun
    (N Euler) for N steps, plus Restart's passes (sampling.restart_nfe)."""
    kwargs = {k: v for k, v in (sampler_kwargs or {}).items() if v is not None}
    steps = kwargs.get('num_steps', 18)
    if kwargs.get('solver') == 'euler':
        return steps
    return sampling.restart_nfe(steps, kwargs.get('restart'))


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


def load_for_sampling(network: str, allow_pickle: bool, device: torch.device, pfgmpp_flag: Optional[bool],
                      aug_dim: Optional[float]) -> tuple[torch.nn.Module, dict]:
    """load_network(), with net.D the D of the prior (resolve_D: a legacy EDM file records none, and
    takes the flags'), and info['sha256'] of the file. Rank 0 loads first, so that a URL is downloaded
    once into the cache and the other processes read it from there."""
    if dist.get_rank() != 0:
        dist.barrier()
    net, info = checkpoint.load_network(network, allow_pickle=allow_pickle, device=device)
    if dist.get_rank() == 0:
        dist.barrier()
    net.D = resolve_D(info, pfgmpp_flag, aug_dim, name=network)
    return net, dict(info, D=net.D, sha256=dnnlib.util.file_sha256(info['path']))

#----------------------------------------------------------------------------
# Run-directory mode and the studies: many folders, one network each.

def generate_run(run_dir: str, seeds: Sequence[int], min_kimg: Optional[int] = None, max_kimg: Optional[int] = None,
                 allow_pickle: bool = False, pfgmpp_flag: Optional[bool] = None, aug_dim: Optional[float] = None,
                 device: torch.device | str = 'cpu', **kwargs) -> list[str]:
    """Sample every checkpoint of run_dir (checkpoint.find_checkpoints) into RUN/ckpt_<kimg>/, skipping
    folders that already hold every seed's PNG and completing those that hold some; a folder whose
    generate.json records another configuration is refused. kwargs go to generate_images(). Returns
    the checkpoints' folders."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f'{run_dir} is not a folder; pass a training run directory as --outdir, or a checkpoint as --network.')
    found = checkpoint.find_checkpoints(run_dir, 'network', min_kimg, max_kimg)
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
        outdir = os.path.join(run_dir, checkpoint.samples_dir_name(kimg))
        folders.append(outdir)
        dist.print0(f'{os.path.basename(path)} ({kimg} kimg) -> "{outdir}"')
        net, info = load_for_sampling(path, allow_pickle, device, pfgmpp_flag, aug_dim)
        generate_images(net, seeds, outdir, device=device, desc=checkpoint.samples_dir_name(kimg), network=path,
                        network_sha256=info['sha256'], skip_existing=True, **kwargs)
    return folders


def run_study(network: str, outdir: str, settings: Sequence[tuple[str, dict, Optional[Callable]]], seeds: Sequence[int],
              allow_pickle: bool = False, pfgmpp_flag: Optional[bool] = None, aug_dim: Optional[float] = None,
              sampler_kwargs: Optional[dict] = None, device: torch.device | str = 'cpu', **kwargs) -> list[str]:
    """For each (folder, sampler_overrides, net_transform) in settings, sample `seeds` into
    outdir/folder with sampler_kwargs updated by the overrides and the network replaced by
    net_transform(net) (if given). Complete folders are skipped, partial ones completed, and one whose
    generate.json records another configuration is refused. kwargs go to generate_images()."""
    net, info = load_for_sampling(network, allow_pickle, device, pfgmpp_flag, aug_dim)
    dist.print0(f'Loaded {network} ({info["source"]}, {describe_D(net.D)}).')
    folders = []
    for folder, overrides, transform in settings:
        target = os.path.join(outdir, folder)
        folders.append(target)
        dist.print0(f'Setting {folder} -> "{target}"')
        setting_net = transform(net) if transform is not None else net
        study = dict(folder=folder, overrides=overrides, transform=describe_transform(transform))
        generate_images(setting_net, seeds, target, sampler_kwargs={**(sampler_kwargs or {}), **overrides},
                        device=device, desc=folder, network=network, network_sha256=info['sha256'], study=study,
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
# The command's body, callable from Python.

# The command line's sampler defaults; a Restart preset replaces those of its settings left at them.
SAMPLER_DEFAULTS = dict(num_steps=18, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1)


def sampler_kwargs_from(options: dict) -> dict:
    """The sampler settings among options (sampling.SAMPLER_KEYS, those not None). A Restart preset
    name (sampling.RESTART_PRESETS) brings its published settings (steps, S_min, S_max, S_noise,
    restart_gamma) wherever the options are at their defaults."""
    kwargs = {key: options[key] for key in sampling.SAMPLER_KEYS if options.get(key) is not None}
    preset = sampling.RESTART_PRESETS.get(str(kwargs.get('restart', '')).strip())
    for key, value in (preset or {}).items():
        if key != 'restart' and kwargs.get(key, SAMPLER_DEFAULTS.get(key)) == SAMPLER_DEFAULTS.get(key):
            kwargs[key] = value
    return kwargs


def sampling_options(options: dict, device: torch.device) -> dict:
    """The generate_images() keyword arguments of the options, with the guide network loaded and the
    backends configured for the precision."""
    precision_lib.configure_backends(options['precision'])
    kwargs = dict(batch_size=options['batch'], sampler_kwargs=sampler_kwargs_from(options), class_idx=options['class_idx'],
                  subdirs=options['subdirs'], precision=options['precision'], channels_last=options['channels_last'],
                  compile=options['compile'], guidance_weight=options['guidance'], guidance_interval=options['guidance_interval'])
    guidance.check_interval(options['guidance_interval'])
    if options['gnet'] is not None:
        dist.print0(f'Loading the guide network from "{options["gnet"]}"...')
        gnet, info = load_for_sampling(options['gnet'], options['allow_pickle'], device, options['pfgmpp'], options['aug_dim'])
        kwargs.update(gnet=gnet, guide=dict(gnet=options['gnet'], gnet_sha256=info['sha256']))
    return kwargs


def generate(outdir: str, network: Optional[str] = None, seeds: Sequence[int] | str = '0-63', subdirs: bool = False,
             class_idx: Optional[int] = None, batch: int = 64, grid: Optional[str] = None, trajectory: Optional[str] = None,
             min_kimg: Optional[int] = None, max_kimg: Optional[int] = None, allow_pickle: bool = False,
             pfgmpp: Optional[bool] = None, aug_dim: Optional[float] = None, device: str = 'auto',
             precision: str = 'fp32', channels_last: bool = False, compile: bool = False, guidance: float = 1.0,
             gnet: Optional[str] = None, guidance_interval: Optional[tuple[float, float]] = None,
             **sampler_options) -> list[str]:
    """generate.py's command, by option name: sample `network` into outdir, or without a network every
    checkpoint of the training run outdir (min_kimg..max_kimg) into RUN/ckpt_<kimg>/. sampler_options:
    sampling.SAMPLER_KEYS (num_steps, sigma_min, ..., restart). Returns the folders written."""
    seeds = cli.parse_int_list(seeds, unique=True)
    unknown = set(sampler_options) - set(sampling.SAMPLER_KEYS)
    if unknown:
        raise ValueError(f'generate(): unknown options {sorted(unknown)}.')
    options = dict(locals(), **sampler_options)
    dev = dist.init(device)
    if network is None:
        if grid or trajectory:
            raise ValueError('--grid and --trajectory need a single --network; drop them in run directory mode.')
        return generate_run(outdir, seeds, min_kimg, max_kimg, allow_pickle, pfgmpp, aug_dim, dev, **sampling_options(options, dev))
    if min_kimg is not None or max_kimg is not None:
        raise ValueError('--ckpt and --end_ckpt select checkpoints of a training run; drop them, or drop --network.')
    if grid and os.path.abspath(grid).startswith(os.path.abspath(outdir) + os.sep):
        raise ValueError(f'--grid={grid} is inside --outdir, where fid.py would count it as a sample; write it elsewhere.')
    dist.print0(f'Loading network from "{network}"...')
    net, info = load_for_sampling(network, allow_pickle, dev, pfgmpp, aug_dim)
    kwargs = sampling_options(options, dev)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}" with {describe_D(net.D)}, '
                f'{nfe(kwargs["sampler_kwargs"])} network evaluations per image without guidance...')
    generate_images(net, seeds, outdir, device=dev, trajectory=trajectory, network=network, network_sha256=info['sha256'], **kwargs)
    if grid and dist.get_rank() == 0:
        save_seed_grid(outdir, seeds, grid, subdirs)
    dist.barrier()
    return [outdir]

#----------------------------------------------------------------------------
# Command-line options shared by generate.py and the study scripts.

def _apply(options: Sequence[Callable]) -> Callable:
    def decorator(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorator


def parse_interval(value: str) -> tuple[float, float]:
    """--guidance-interval LO,HI -> (LO, HI)."""
    values = cli.parse_float_list(value, unique=False)
    if len(values) != 2:
        raise ValueError(f'{value!r} must be two noise levels LO,HI, e.g. 0.28,2.9.')
    return guidance.check_interval(values)


def output_options(fn: Callable) -> Callable:
    """--outdir --seeds --subdirs --class --batch."""
    return _apply([
        click.option('--outdir', help='Where to save the output images', metavar='DIR', type=str, required=True),
        click.option('--seeds', help='Random seeds (e.g. 1,2,5-10)', metavar='LIST', type=str, default='0-63', show_default=True, callback=cli.click_list(cli.parse_int_list, unique=True)),
        click.option('--subdirs', help='Create subdirectory for every 1000 seeds', is_flag=True),
        click.option('--class', 'class_idx', help='Class label  [default: random]', metavar='INT', type=click.IntRange(min=0), default=None),
        click.option('--batch', 'batch', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True),
    ])(fn)


def sampler_options(with_steps: bool = True) -> Callable:
    """EDM's sampler options (--steps unless a study varies it), its ablation options, Restart, and guidance."""
    options = [click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT', type=click.IntRange(min=1), default=SAMPLER_DEFAULTS['num_steps'], show_default=True)] if with_steps else []
    options += [
        click.option('--sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
        click.option('--sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
        click.option('--rho', help='Time step exponent', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=SAMPLER_DEFAULTS['rho'], show_default=True),
        click.option('--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT', type=click.FloatRange(min=0), default=SAMPLER_DEFAULTS['S_churn'], show_default=True),
        click.option('--S_min', 'S_min', help='Stoch. min noise level', metavar='FLOAT', type=click.FloatRange(min=0), default=SAMPLER_DEFAULTS['S_min'], show_default=True),
        click.option('--S_max', 'S_max', help='Stoch. max noise level', metavar='FLOAT', type=click.FloatRange(min=0), default=SAMPLER_DEFAULTS['S_max'], show_default=True),
        click.option('--S_noise', 'S_noise', help='Stoch. noise inflation', metavar='FLOAT', type=float, default=SAMPLER_DEFAULTS['S_noise'], show_default=True),
        click.option('--solver', help='Ablate ODE solver', metavar='euler|heun', type=click.Choice(list(sampling.SOLVERS))),
        click.option('--disc', 'discretization', help='Ablate time step discretization {t_i}', metavar='vp|ve|iddpm|edm', type=click.Choice(list(sampling.DISCRETIZATIONS))),
        click.option('--schedule', help='Ablate noise schedule sigma(t)', metavar='vp|ve|linear', type=click.Choice(list(sampling.SCHEDULES))),
        click.option('--scaling', help='Ablate signal scaling s(t)', metavar='vp|none', type=click.Choice(list(sampling.SCALINGS))),
        click.option('--restart', help=f'Restart sampling: a preset ({", ".join(sampling.RESTART_PRESETS)}), the published JSON, or N:K:t_min:t_max[;...]', metavar='SPEC', type=str),
        click.option('--restart-gamma', 'restart_gamma', help='Restart: churn inside restart passes  [default: 0, the preset\'s with a preset]', metavar='FLOAT', type=click.FloatRange(min=0)),
        click.option('--guidance', help='Guidance weight w (1 = none): classifier-free, or autoguidance with --gnet', metavar='FLOAT', type=float, default=1.0, show_default=True),
        click.option('--gnet', help='Guide network for autoguidance (same data and D)', metavar='PATH|URL', type=str),
        click.option('--guidance-interval', 'guidance_interval', help='Guide only for sigma in (LO, HI]  [default: everywhere]', metavar='LO,HI', type=str, callback=cli.click_list(parse_interval)),
    ]
    return _apply(options)


def network_options(required: bool = True) -> Callable:
    """--network --allow-pickle --pfgmpp --aug_dim --device --debug."""
    network_help = ('Network checkpoint filename or URL' if required else
                    'Network checkpoint filename or URL  [default: every checkpoint in --outdir, a training run]')
    return _apply([
        click.option('--network', 'network', help=network_help, metavar='PATH|URL', type=str, required=required),
        click.option('--allow-pickle', 'allow_pickle', help='Allow legacy EDM/PFGM++ pickles, which run code from the file; only for files you trust', is_flag=True),
        click.option('--pfgmpp', 'pfgmpp', help='PFGM++ prior (1) or diffusion (0)  [default: from the checkpoint]', metavar='BOOL', type=click.BOOL, default=None),
        click.option('--aug_dim', help='PFGM++ augmentation dimension D  [default: from the checkpoint]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=None),
        cli.device_option(),
        cli.debug_option(),
    ])


def performance_options(fn: Callable) -> Callable:
    """--precision --channels-last --compile."""
    return _apply([
        click.option('--precision', help='Arithmetic of the network: fp32, tf32 (CUDA), bf16 or fp16 autocast', type=click.Choice(list(precision_lib.PRECISIONS)), default='fp32', show_default=True),
        click.option('--channels-last', 'channels_last', help='Channels-last (NHWC) memory layout', metavar='BOOL', type=click.BOOL, default=False, show_default=True),
        click.option('--compile', help='torch.compile the network (pays off for many batches)', metavar='BOOL', type=click.BOOL, default=False, show_default=True),
    ])(fn)


def run_study_command(options: dict, settings: Sequence[tuple[str, dict, Optional[Callable]]]) -> None:
    """The body of the study scripts' commands: options as network_options, output_options,
    sampler_options and performance_options parse them; settings as run_study() takes them."""
    try:
        with cli.one_line_errors(options['debug']):
            device = dist.init(options['device'])
            run_study(options['network'], options['outdir'], settings, options['seeds'], options['allow_pickle'],
                      options['pfgmpp'], options['aug_dim'], device=device, **sampling_options(options, device))
            dist.print0('Done.')
    finally:
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

# Sampler and guidance.
@sampler_options(with_steps=True)

# Speed.
@performance_options

def cmdline(debug: bool, **options) -> None:
    # The help text is the module docstring.
    try:
        with cli.one_line_errors(debug):
            generate(**options)
            dist.print0('Done.')
    finally:
        dist.shutdown()


main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
