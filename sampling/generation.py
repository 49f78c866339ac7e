"""Generation: per-seed images from a network with the PFGM++ prior (training/pfgmpp.sample_prior) and
EDM's samplers (sampling/samplers.py), optionally guided (sampling/guidance.py); one folder of PNGs
with its generate.json manifest (sampling/provenance.py), every checkpoint of a training run, or one
folder per study setting. generate.py and the study scripts are command lines over these functions.

Each image depends only on its seed: the seed's own torch.Generator draws, in this order, the prior
sample, the class label (conditional networks) and the sampler's noise (S_churn, alpha, Restart
jumps), as EDM does, so for D -> infinity an EDM checkpoint gives EDM's images for the same seeds.
"""

import functools
import os
from typing import Callable, Optional, Sequence

import torch
import tqdm

import dnnlib
from sampling import guidance, provenance
from sampling import samplers as sampling
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import image_io
from torch_utils import persistence
from torch_utils import precision as precision_lib
from torch_utils.rng import StackedRandomGenerator
from training import checkpoint

#----------------------------------------------------------------------------
# Sampling one batch.

def sample_batch(net, seeds: Sequence[int], sampler_kwargs: Optional[dict] = None, class_idx: Optional[int] = None,
                 device: torch.device | str = 'cpu', callback: Optional[Callable] = None) -> torch.Tensor:
    """Samples for `seeds` from `net` (a network, or a guided one), [B, C, H, W] in (about)
    [-1, 1], float64 (EDM2's sampler: its dtype, as EDM2 converts its float32 samples to pixels). Per
    seed, in this order: the prior draw for net.D at the sampler's first noise level
    (pfgmpp.sample_prior), a class label uniform over label_dim (conditional networks; replaced by
    class_idx if given), then the sampler's noise. The sampler is sampling.choose_sampler()'s, run with
    its settings (sampling.resolve_sampler) and its extra inputs (SamplerSpec.extra_inputs)."""
    check_class_idx(net, class_idx)
    spec, settings, rnd, latents, class_labels = draw_start(net, seeds, sampler_kwargs, class_idx, device)
    extra = {argument: make(net, rnd) for argument, make in spec.extra_inputs.items()}
    return spec.fn(net, latents, class_labels, randn_like=rnd.randn_like, callback=callback, **settings, **extra)


def draw_start(net, seeds: Sequence[int], sampler_kwargs: Optional[dict], class_idx: Optional[int],
               device: torch.device | str, label_dtype: torch.dtype = torch.float32) -> tuple:
    """The sampler and what each seed draws before sampling: (spec, settings, rnd, latents,
    class_labels). Per seed, from its own generator: the prior for net.D at the sampler's first noise
    level, then a class label uniform over net.label_dim (drawn also when class_idx replaces it, so a
    seed's stream never depends on --class); class_labels is None for an unconditional network."""
    name, settings = sampling.resolve_sampler(sampler_kwargs)
    spec = sampling.SAMPLERS[name]
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.prior([net.img_channels, net.img_resolution, net.img_resolution], spec.first_sigma(net, settings), net.D)
    class_labels = None
    if net.label_dim:
        drawn = rnd.randint(net.label_dim, size=[len(seeds)], device=device)
        classes = drawn if class_idx is None else torch.full_like(drawn, class_idx)
        class_labels = torch.eye(net.label_dim, dtype=label_dtype, device=device)[classes]
    return spec, settings, rnd, latents, class_labels


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

def main_sigma_steps(denoiser, sampler_kwargs: Optional[dict] = None) -> torch.Tensor:
    """The main noise levels t_0 > ... > t_{N-1} (float64 [N]) of the sampler sample_batch() runs for
    sampler_kwargs with `denoiser` (sampling.sigma_steps): what guidance by step index maps to."""
    name, settings = sampling.resolve_sampler(sampler_kwargs)
    return sampling.sigma_steps(denoiser, name, **settings)


def prepare_networks(net, precision: str = 'fp32', channels_last: bool = False, compile: bool = False,
                     guidance_weight: float = 1.0, gnet=None, guidance_interval: Optional[tuple[float, float]] = None,
                     guidance_steps: Optional[tuple[int, int]] = None, sampler_kwargs: Optional[dict] = None):
    """The denoiser to sample: `net` (and the guide) set up for the precision, memory layout and
    torch.compile (torch_utils.precision.prepare_network), then wrapped for guidance when
    guidance_weight != 1 (sampling/guidance.guided_network; checked either way). guidance_steps
    (first, last) guides those main steps of the sampler that sampler_kwargs choose."""
    guidance.check_interval(guidance_interval)
    if gnet is not None:
        guidance.check_guide(net, gnet)
    net = precision_lib.prepare_network(net, precision, channels_last=channels_last, compile=compile)
    if gnet is not None:
        gnet = precision_lib.prepare_network(gnet, precision, channels_last=channels_last, compile=compile)
    schedule = functools.partial(main_sigma_steps, sampler_kwargs=sampler_kwargs)
    return guidance.guided_network(net, guidance_weight, gnet, guidance_interval, guidance_steps, schedule)


def guidance_record(guidance_weight: float = 1.0, gnet=None, guidance_interval: Optional[tuple[float, float]] = None,
                    guidance_steps: Optional[tuple[int, int]] = None, guide: Optional[dict] = None) -> Optional[dict]:
    """The manifest's 'guidance': weight, interval (or None), steps (only when given) and the guide
    network's record; None without guidance."""
    if guidance_weight == 1 and gnet is None:
        return None
    steps = dict(steps=list(guidance_steps)) if guidance_steps is not None else {}
    return dict(weight=float(guidance_weight), interval=list(guidance_interval) if guidance_interval else None, **steps, **(guide or {}))


def generate_images(net, seeds: Sequence[int], outdir: str, batch_size: int = 64, sampler_kwargs: Optional[dict] = None,
                    class_idx: Optional[int] = None, device: torch.device | str = 'cpu', subdirs: bool = False,
                    trajectory: Optional[str] = None, trajectory_images: int = 8, progress: bool = True,
                    desc: Optional[str] = None, precision: str = 'fp32', channels_last: bool = False, compile: bool = False,
                    guidance_weight: float = 1.0, gnet=None, guidance_interval: Optional[tuple[float, float]] = None,
                    guidance_steps: Optional[tuple[int, int]] = None, network: Optional[str] = None,
                    network_sha256: Optional[str] = None, study: Optional[dict] = None, guide: Optional[dict] = None,
                    skip_existing: bool = False) -> list[int]:
    """Sample one PNG per seed into outdir from `net` (with the prior for net.D), split over the
    torchrun processes as EDM does: the seeds form ceil(n / (batch_size * world)) * world batches and
    rank r takes batches r, r + world, ... `trajectory`: a GIF path where rank 0 writes the states
    x_0..x_N of the first `trajectory_images` samples of its first batch. precision, channels_last,
    compile, guidance_weight, gnet, guidance_interval, guidance_steps: how the network runs
    (prepare_networks()). skip_existing: sample only the seeds whose PNG is missing (images are
    written atomically, so one that exists is complete).

    Before sampling, rank 0 writes outdir/generate.json (sampling/provenance.py; network,
    network_sha256: the file the network came from, as given and its SHA-256; guide: the same for the
    guide network; study: the study setting, if any), and after each of its batches and at the end
    records the seeds written, so that an interrupted folder says so ('complete': false). A folder
    whose manifest records another configuration is refused with ValueError; one with the same
    configuration gets the union of the seeds. Prints one line with the images written and skipped.
    Returns the seeds this process wrote; all processes return together."""
    seeds = [int(s) for s in seeds]
    if batch_size < 1:
        raise ValueError(f'The batch size must be >= 1, got {batch_size}.')
    check_class_idx(net, class_idx)
    manifest = provenance.make_manifest(net, seeds, sampler_kwargs, class_idx=class_idx, subdirs=subdirs, precision=precision,
                                        channels_last=channels_last, compile=compile, batch_size=batch_size, network=network,
                                        network_sha256=network_sha256, study=study,  # Refuses bad settings.
                                        guidance=guidance_record(guidance_weight, gnet, guidance_interval, guidance_steps, guide))
    denoiser = prepare_networks(net, precision, channels_last, compile, guidance_weight, gnet, guidance_interval,
                                guidance_steps, sampler_kwargs)
    todo, manifest = provenance.claim_folder(outdir, manifest, seeds, subdirs, skip_existing, missing_seeds)
    written = sample_into_folder(denoiser, todo, outdir, manifest, batch_size, sampler_kwargs, class_idx, device, subdirs,
                                 trajectory, trajectory_images, progress, desc)
    report_cost(denoiser, sampler_kwargs, written)
    dist.barrier()  # Every process has written its images.
    if todo:
        provenance.record_written(outdir, manifest, todo)
    report_written(outdir, len(todo), len(seeds) - len(todo), trajectory)
    dist.barrier()
    return written


def sample_into_folder(denoiser, seeds: Sequence[int], outdir: str, manifest: dict, batch_size: int = 64,
                       sampler_kwargs: Optional[dict] = None, class_idx: Optional[int] = None,
                       device: torch.device | str = 'cpu', subdirs: bool = False, trajectory: Optional[str] = None,
                       trajectory_images: int = 8, progress: bool = True, desc: Optional[str] = None) -> list[int]:
    """generate_images()'s loop: this process's batches of `seeds` (EDM's split), each sampled and saved
    as PNGs, after which rank 0 records its batch in the manifest (provenance.record_written).
    Returns the seeds this process wrote."""
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
        if rank == 0:
            manifest = provenance.record_written(outdir, manifest, batch_seeds)
    if frames:
        image_io.save_trajectory_gif(frames, trajectory)
    return written


def report_written(outdir: str, num_written: int, num_skipped: int, trajectory: Optional[str] = None) -> None:
    """One line (rank 0): how many images went into outdir and how many were skipped, already there."""
    if not num_written:
        dist.print0(f'{outdir}: 0 images written, {num_skipped} skipped; it already holds all {num_skipped} images '
                    f'(delete it to regenerate){", so no trajectory was sampled" if trajectory else ""}.')
    else:
        dist.print0(f'{outdir}: {num_written} image{"s" if num_written != 1 else ""} written, {num_skipped} skipped (already there).')


def report_cost(denoiser, sampler_kwargs: Optional[dict], written: Sequence[int]) -> None:
    """Print the network evaluations per image that guidance really cost (rank 0; batches sample
    together, so evaluations per batch are evaluations per image)."""
    if isinstance(denoiser, guidance.GuidedDenoiser) and written and dist.get_rank() == 0:
        batches = max(denoiser.calls / max(nfe(sampler_kwargs), 1), 1)
        dist.print0(f'Guidance: {denoiser.evaluations / batches:g} network evaluations per image '
                    f'({denoiser.guided_calls / batches:g} of the sampler\'s {denoiser.calls / batches:g} calls guided).')


def nfe(sampler_kwargs: Optional[dict]) -> int:
    """Network evaluations per image of the sampler sample_batch() runs for sampler_kwargs, without
    guidance (SamplerSpec.nfe: 2N - 1 for N Heun steps, N Euler, plus Restart's passes). ValueError
    for settings choose_sampler() refuses."""
    name, settings = sampling.resolve_sampler(sampler_kwargs)
    return sampling.SAMPLERS[name].nfe(settings)


def save_seed_grid(outdir: str, seeds: Sequence[int], path: str, subdirs: bool = False, max_images: int = 64) -> None:
    """One grid PNG of the first `max_images` seeds' images, read back from outdir."""
    chosen = list(seeds)[:max_images]
    if chosen:
        image_io.save_grid(torch.stack([image_io.load_image(image_path(outdir, s, subdirs)) for s in chosen]), path)

#----------------------------------------------------------------------------
# Which D the prior uses: the network's, which it knows from its checkpoint (checkpoint.load_network).

def D_to_load(D: Optional[float] = None, pfgmpp: Optional[bool] = None, aug_dim: Optional[float] = None) -> Optional[float] | str:
    """load_network()'s D for --D and its aliases (cli.resolve_D): the one given, else RECORDED."""
    given, value = cli.resolve_D(D, pfgmpp, aug_dim)
    return value if given else checkpoint.RECORDED


def load_for_sampling(network: str, allow_pickle: bool, device: torch.device,
                      D: Optional[float] | str = checkpoint.RECORDED) -> tuple[torch.nn.Module, dict]:
    """checkpoint.load_network(network, D=D), with info['sha256'] of the file. Rank 0 loads first, so
    that a URL is downloaded once into the cache and the other processes read it from there."""
    if dist.get_rank() != 0:
        dist.barrier()
    net, info = checkpoint.load_network(network, allow_pickle=allow_pickle, device=device, D=D)
    if dist.get_rank() == 0:
        dist.barrier()
    return net, dict(info, sha256=dnnlib.util.file_sha256(info['path']))

#----------------------------------------------------------------------------
# Run-directory mode and the studies: many folders, one network each.

def generate_run(run_dir: str, seeds: Sequence[int], min_kimg: Optional[int] = None, max_kimg: Optional[int] = None,
                 allow_pickle: bool = False, D: Optional[float] | str = checkpoint.RECORDED,
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
    folders, warned = [], False
    for kimg, path in found:
        outdir = os.path.join(run_dir, checkpoint.samples_dir_name(kimg))
        folders.append(outdir)
        dist.print0(f'{os.path.basename(path)} ({kimg} kimg) -> "{outdir}"')
        net, info = load_for_sampling(path, allow_pickle, device, D)
        warned = warned or bool(warn_guidance(net, info, kwargs))  # Once: a run's checkpoints share their training options.
        if path == found[0][1]:  # Once: they share D and the resolution too.
            warn_sampling(net, kwargs.get('sampler_kwargs'))
        generate_images(net, seeds, outdir, device=device, desc=checkpoint.samples_dir_name(kimg), network=path,
                        network_sha256=info['sha256'], skip_existing=True, **kwargs)
    return folders


def run_study(network: str, outdir: str, settings: Sequence[tuple[str, dict, Optional[Callable]]], seeds: Sequence[int],
              allow_pickle: bool = False, D: Optional[float] | str = checkpoint.RECORDED,
              sampler_kwargs: Optional[dict] = None, device: torch.device | str = 'cpu', **kwargs) -> list[str]:
    """For each (folder, sampler_overrides, net_transform) in settings, sample `seeds` into
    outdir/folder with sampler_kwargs updated by the overrides and the network replaced by
    net_transform(net) (if given). Complete folders are skipped, partial ones completed, and one whose
    generate.json records another configuration is refused. kwargs go to generate_images()."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ValueError(f'--outdir={outdir} is a file, not a folder; give a new folder or one a study script wrote, or move the file away.')
    num_steps = [sampling.resolve_sampler({**(sampler_kwargs or {}), **overrides})[1]['num_steps'] for _, overrides, _ in settings]
    for n in num_steps:  # Before any setting is sampled: the study may vary the number of steps.
        guidance.check_steps(kwargs.get('guidance_steps'), n)
    net, info = load_for_sampling(network, allow_pickle, device, D)
    dist.print0(f'Loaded {network} ({info["source"]}, {checkpoint.describe_D(net.D)}).')
    warn_guidance(net, info, kwargs)
    for message in dict.fromkeys(sampling.sampling_warning(net, {**(sampler_kwargs or {}), **overrides}) for _, overrides, _ in settings):
        if message:  # Each distinct one once: settings may differ in steps, and with them the restart levels.
            dist.print0(message)
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

# The command line's sampler defaults: the settings every sampler takes with the same default
# (num_steps, rho, S_churn, S_min, S_max, S_noise); a preset replaces those of its settings left at them.
SAMPLER_DEFAULTS = sampling.shared_defaults()


def sampler_kwargs_from(options: dict) -> dict:
    """The sampler settings among options (sampling.sampler_keys(), those not None). A preset that a
    setting names (sampling.preset_settings: a Restart preset, sampling.RESTART_PRESETS) brings its
    published settings (steps, S_min, S_max, S_noise, restart_gamma) wherever the options are at
    their defaults."""
    kwargs = {key: options[key] for key in sampling.sampler_keys() if options.get(key) is not None}
    for key, value in sampling.preset_settings(kwargs).items():
        if kwargs.get(key, SAMPLER_DEFAULTS.get(key)) == SAMPLER_DEFAULTS.get(key):
            kwargs[key] = value
    return kwargs


def sampling_options(options: dict, device: torch.device) -> dict:
    """The generate_images() keyword arguments of the options, with the guide network loaded and the
    backends configured for the precision."""
    precision_lib.configure_backends(options['precision'])
    if options['guidance_interval'] is not None and options.get('guidance_steps') is not None:
        raise ValueError('--guidance-interval and --guidance-steps both say where to guide; give one of them.')
    kwargs = dict(batch_size=options['batch'], sampler_kwargs=sampler_kwargs_from(options), class_idx=options['class_idx'],
                  subdirs=options['subdirs'], precision=options['precision'], channels_last=options['channels_last'],
                  compile=options['compile'], guidance_weight=options['guidance'], guidance_interval=options['guidance_interval'],
                  guidance_steps=options.get('guidance_steps'))
    guidance.check_interval(options['guidance_interval'])
    guidance.check_steps(options.get('guidance_steps'))
    if options['gnet'] is not None:
        dist.print0(f'Loading the guide network from "{options["gnet"]}"...')
        gnet, info = load_for_sampling(options['gnet'], options['allow_pickle'], device, D_to_load(options['D'], options['pfgmpp'], options['aug_dim']))
        kwargs.update(gnet=gnet, guide=dict(gnet=options['gnet'], gnet_sha256=info['sha256']))
    return kwargs


def check_output_paths(outdir: str, grid: Optional[str] = None, trajectory: Optional[str] = None) -> None:
    """Before anything is loaded or sampled: --outdir must not be a file, --grid must lie outside it,
    and --grid and --trajectory must be files that can be written (their folders are created);
    ValueError or OSError, one line each."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ValueError(f'--outdir={outdir} is a file, not a folder; give a new folder or one generate.py wrote, or move the file away.')
    if grid and os.path.abspath(grid).startswith(os.path.abspath(outdir) + os.sep):
        raise ValueError(f'--grid={grid} is inside --outdir, where fid.py would count it as a sample; write it elsewhere.')
    for option, path in (('--grid', grid), ('--trajectory', trajectory)):
        if path:
            dnnlib.util.check_writable(path, option)


def warn_guidance(net, info: dict, kwargs: dict) -> Optional[str]:
    """Print (rank 0) and return guidance.untrained_unconditional()'s warning for `net`, loaded with
    `info` (load_for_sampling) and sampled with generate_images() keyword arguments kwargs; None if none."""
    message = guidance.untrained_unconditional(net, info.get('training_options'), kwargs.get('guidance_weight', 1.0), kwargs.get('gnet'))
    if message:
        dist.print0(message)
    return message


def warn_sampling(net, sampler_kwargs: Optional[dict]) -> Optional[str]:
    """Print (rank 0) and return the sampler's warning for `net` and sampler_kwargs
    (sampling.sampling_warning, e.g. a Restart jump far from the kernel for a small D); None if none.
    Called once per command, before sampling, not per batch."""
    message = sampling.sampling_warning(net, sampler_kwargs)
    if message:
        dist.print0(message)
    return message


def describe_cost(sampler_kwargs: Optional[dict], guided: bool) -> str:
    """The start line's cost per image: the sampler's network evaluations, and with guidance the range
    it can reach (a guided call evaluates twice; the real count is printed at the end)."""
    calls = nfe(sampler_kwargs)
    if not guided:
        return f'{calls} network evaluations per image'
    return f'{calls} to {2 * calls} network evaluations per image (a guided call costs two; the count is printed at the end)'


def generate(outdir: str, network: Optional[str] = None, seeds: Sequence[int] | str = '0-63', subdirs: bool = False,
             class_idx: Optional[int] = None, batch: int = 64, grid: Optional[str] = None, trajectory: Optional[str] = None,
             min_kimg: Optional[int] = None, max_kimg: Optional[int] = None, allow_pickle: bool = False,
             D: Optional[float] = None, pfgmpp: Optional[bool] = None, aug_dim: Optional[float] = None, device: str = 'auto',
             precision: str = 'fp32', channels_last: bool = False, compile: bool = False, guidance: float = 1.0,
             gnet: Optional[str] = None, guidance_interval: Optional[tuple[float, float]] = None,
             guidance_steps: Optional[tuple[int, int]] = None, **sampler_options) -> list[str]:
    """generate.py's command, by option name: sample `network` into outdir, or without a network every
    checkpoint of the training run outdir (min_kimg..max_kimg) into its samples folder
    (checkpoint.samples_dir_name). Either way only seeds whose image is missing are sampled, so a rerun
    completes an interrupted folder; --grid is made from the images, also when none was sampled.
    sampler_options: sampling.sampler_keys() (num_steps, sigma_min, ..., restart). Returns the folders."""
    seeds = cli.parse_int_list(seeds, unique=True)
    unknown = set(sampler_options) - set(sampling.sampler_keys())
    if unknown:
        raise ValueError(f'generate(): unknown options {sorted(unknown)}.')
    options = dict(locals(), **sampler_options)
    dev = dist.init(device)
    if network is None:
        if grid or trajectory:
            raise ValueError('--grid and --trajectory need a single --network; drop them in run directory mode.')
        return generate_run(outdir, seeds, min_kimg, max_kimg, allow_pickle, D_to_load(D, pfgmpp, aug_dim), dev, **sampling_options(options, dev))
    if min_kimg is not None or max_kimg is not None:
        raise ValueError('--ckpt and --end_ckpt select checkpoints of a training run; drop them, or drop --network.')
    check_output_paths(outdir, grid, trajectory)
    dist.print0(f'Loading network from "{network}"...')
    net, info = load_for_sampling(network, allow_pickle, dev, D_to_load(D, pfgmpp, aug_dim))
    kwargs = sampling_options(options, dev)
    warn_guidance(net, info, kwargs)
    warn_sampling(net, kwargs['sampler_kwargs'])
    dist.print0(f'Generating {len(seeds)} images to "{outdir}" with {checkpoint.describe_D(net.D)}, '
                f'{describe_cost(kwargs["sampler_kwargs"], guidance != 1)}...')
    generate_images(net, seeds, outdir, device=dev, trajectory=trajectory, network=network, network_sha256=info['sha256'],
                    skip_existing=True, **kwargs)
    if grid and dist.get_rank() == 0:
        save_seed_grid(outdir, seeds, grid, subdirs)
    dist.barrier()
    return [outdir]

#----------------------------------------------------------------------------
