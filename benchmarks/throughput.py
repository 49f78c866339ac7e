"""Throughput of training, sampling and FID feature extraction under each precision configuration,
side by side in one run, against the plain fp32 path.

    python -m benchmarks.throughput --out=throughput.json                    # Every config on CUDA.
    python -m benchmarks.throughput --device=cpu --configs=fp32,published --batch=8 --iters=3
    python -m benchmarks.throughput --small --device=cpu --out=/tmp/t.json    # CPU smoke (tests, CI).

(a) Training: one optimizer step of training_loop() (zero_grad, accumulate_gradients, [unscale_],
    sanitize_gradients, step [via GradScaler], update_ema) for EDM's CIFAR-10 DDPM++ network (SongUNet,
    32x32x3, unconditional, dropout 0.13, about 56M parameters) with PFGM++'s EDMLoss(D=2048), per
    device batch in --batch: images/s (median step time), peak memory, model FLOPs and MFU.
(b) Sampling: edm_sampler with 18 Heun steps (35 network evaluations) on an eval-mode copy (as the EMA).
(c) FID: detector features of in-memory uint8 batches, always in float32 (FID statistics must not be
    computed in reduced precision, so no bf16/fp16 config exists for it); and fid.py's end-to-end
    calculate_inception_stats() over a folder of PNGs.

Every ratio is relative to the `fp32` configuration (fp32 eager, SDPA attention). `published` is fp32
eager with the einsum attention of the published EDM / PFGM++ code: it stands in for that code, which
this benchmark does not fetch. A configuration that fails (torch.compile unavailable, out of memory)
is recorded with its error and the run goes on.
"""

import contextlib
import copy
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

import click
import numpy as np
import PIL.Image
import torch
from torch.utils.flop_counter import FlopCounterMode

import dnnlib
from metrics import detector as detector_lib
from metrics import evaluation
from sampling.samplers import edm_sampler
from torch_utils import cli
from torch_utils import precision as precision_lib
from training import pfgmpp
from training.loss import EDMLoss
from training.networks import EDMPrecond, set_attention_backend
from training.presets import ARCHITECTURES
from training.training_loop import accumulate_gradients, optimizer_options, sanitize_gradients, update_ema

#----------------------------------------------------------------------------
# Configurations: name -> how the network runs.

CONFIGS = {
    'fp32':            dict(precision='fp32', channels_last=False, compile=False, attention='sdpa'),
    'published':       dict(precision='fp32', channels_last=False, compile=False, attention='einsum'),
    'tf32':            dict(precision='tf32', channels_last=False, compile=False, attention='sdpa'),
    'bf16':            dict(precision='bf16', channels_last=False, compile=False, attention='sdpa'),
    'bf16-cl':         dict(precision='bf16', channels_last=True,  compile=False, attention='sdpa'),
    'bf16-compile':    dict(precision='bf16', channels_last=False, compile=True,  attention='sdpa'),
    'bf16-cl-compile': dict(precision='bf16', channels_last=True,  compile=True,  attention='sdpa'),
    'fp16-compile':    dict(precision='fp16', channels_last=False, compile=True,  attention='sdpa'),
}
BASELINE = 'fp32'
PUBLISHED = 'published'
PUBLISHED_LABEL = 'fp32 eager, einsum attention of the published EDM/PFGM++ code (stand-in for that code)'
CPU_DEFAULT_CONFIGS = ('fp32', 'published', 'bf16')  # torch.compile on the CPU takes minutes: only when asked.

# EDM's CIFAR-10 recipe: DDPM++ at 32x32x3, unconditional, dropout 0.13; PFGM++ with D = 2048.
D = 2048
NETWORK = dict(img_resolution=32, img_channels=3, label_dim=0, **ARCHITECTURES['ddpmpp'], dropout=0.13, D=D)
SMALL_NETWORK = dict(NETWORK, img_resolution=16, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
OPTIMIZER = dict(class_name='torch.optim.Adam', lr=10e-4, betas=[0.9, 0.999], eps=1e-8)  # EDM's CIFAR-10 Adam.
EMA_BETA = 0.999  # Any value: the cost of the update does not depend on it.

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, matched as substrings of torch.cuda.get_device_name();
# the first match wins, so the more specific names come first.
PEAK_FLOPS = (
    ('H100 PCIe', 756e12),
    ('H100 SXM', 989.4e12),
    ('H100 80GB HBM3', 989.4e12),
    ('H200', 989.4e12),
    ('A100', 312e12),
)

FID_DEFAULT_BATCH = 64  # fid.py's --batch default.
FID_NOTE = 'Detector features always in float32 (FID statistics must not be computed in reduced precision); tf32 only as a comparison.'
FLOPS_NOTE = ('Model FLOPs per training step, counted once by torch.utils.flop_counter.FlopCounterMode over forward + backward '
              'of the fp32 eager graph (about 3x the forward); the same count is used for every config.')

#----------------------------------------------------------------------------
# Small helpers.

def first_line(err: BaseException) -> str:
    """'ExceptionType: first non-empty line of the message'."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f'{type(err).__name__}: {lines[0]}' if lines else type(err).__name__


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock times cover it."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of fn takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_repeated(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> tuple[float, float]:
    """(seconds of the warmup calls in all, median seconds of the timed calls); warm-up (compilation,
    cuDNN autotuning, allocator growth) is excluded from the median."""
    warmup_s = sum(timed(fn, device) for _ in range(warmup))
    return warmup_s, statistics.median(timed(fn, device) for _ in range(iters))


def ratio(value: Optional[float], baseline: Optional[float]) -> Optional[float]:
    """value / baseline, or None when either is missing."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def peak_flops_for(device: torch.device, override_tflops: Optional[float]) -> tuple[Optional[float], Optional[str]]:
    """(peak FLOP/s, where it comes from): --peak-tflops, else the table's dense bf16 peak of the CUDA
    device, else (None, None)."""
    if override_tflops is not None:
        return override_tflops * 1e12, f'--peak-tflops={override_tflops:g}'
    if device.type != 'cuda':
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak, f'the bf16 dense peak of {name}'
    return None, None


def device_name(device: torch.device) -> str:
    """torch.cuda.get_device_name, or 'cpu (<processor>, N threads)'."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def reset_backends() -> None:
    """Back to the fp32 settings between configurations."""
    precision_lib.configure_backends('fp32', cudnn_benchmark=True)
    if hasattr(torch, '_dynamo'):
        torch._dynamo.reset()


@contextlib.contextmanager
def preserved_backends():
    """Restore the process-wide TF32 and cuDNN settings that configure_backends() changes on exit."""
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark = saved


def free_memory(device: torch.device) -> None:
    """Release cached device memory so the next configuration's peak is its own."""
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

#----------------------------------------------------------------------------
# Networks.

def make_network(network_kwargs: dict, config: dict, device: torch.device, train: bool) -> EDMPrecond:
    """The EDMPrecond of network_kwargs on `device` with the config's attention backend and precision
    (and channels-last weights), in train or eval mode; not compiled."""
    torch.manual_seed(0)
    net = EDMPrecond(**network_kwargs).to(device)
    net.train(train).requires_grad_(train)
    set_attention_backend(net, config['attention'])
    precision_lib.prepare_network(net, config['precision'], channels_last=config['channels_last'])
    return net


def count_parameters(net: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in net.parameters())

#----------------------------------------------------------------------------
# (a) Training step.

class TrainingStep:
    """One optimizer step exactly as training_loop() takes it, on a fixed batch of random images."""

    def __init__(self, network_kwargs: dict, config: dict, batch: int, device: torch.device, compile: bool):
        self.net = make_network(network_kwargs, config, device, train=True)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.model = torch.compile(self.net) if compile else self.net
        self.loss_fn = EDMLoss(D=network_kwargs['D'])
        self.optimizer = dnnlib.construct_class_by_name(params=self.net.parameters(), **optimizer_options(OPTIMIZER, device))
        self.grad_scaler = precision_lib.make_grad_scaler(config['precision'], device.type)
        gen = torch.Generator(device=device).manual_seed(1)
        shape = [batch, network_kwargs['img_channels'], network_kwargs['img_resolution'], network_kwargs['img_resolution']]
        self.images = torch.rand(shape, generator=gen, device=device) * 2 - 1
        self.labels = torch.zeros([batch, network_kwargs['label_dim']], device=device)
        self.generator = gen
        self.batch = batch

    def backward(self) -> None:
        """Forward and backward of the loss over the batch (accumulate_gradients, one round)."""
        accumulate_gradients(self.model, self.loss_fn, [(self.images, self.labels, {})], 1, self.batch,
                             grad_scaler=self.grad_scaler, augment_pipe=None, generator=self.generator)

    def __call__(self) -> None:
        """zero_grad, backward, [unscale_], sanitize, optimizer step [via the scaler], EMA update."""
        self.optimizer.zero_grad(set_to_none=True)
        self.backward()
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        sanitize_gradients(self.net)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        update_ema(self.ema, self.net, EMA_BETA)


def count_training_flops(network_kwargs: dict, batch: int, device: torch.device) -> int:
    """FLOPs of forward + backward of the loss for the fp32 eager network at `batch` (FlopCounterMode)."""
    reset_backends()
    step = TrainingStep(network_kwargs, CONFIGS[BASELINE], batch, device, compile=False)
    with FlopCounterMode(display=False) as counter:
        step.backward()
    return int(counter.get_total_flops())


def measure_training(network_kwargs: dict, config: dict, batch: int, device: torch.device, warmup: int, iters: int,
                     flops_per_step: int, peak_flops: Optional[float]) -> dict:
    """images/s (median step), step time, warm-up seconds, peak memory (CUDA) and MFU of one config at one batch."""
    precision_lib.configure_backends(config['precision'], cudnn_benchmark=True)
    step = TrainingStep(network_kwargs, config, batch, device, compile=config['compile'])
    warmup_s = sum(timed(step, device) for _ in range(warmup))
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    step_s = statistics.median(timed(step, device) for _ in range(iters))
    peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None
    steps_per_s = 1 / step_s
    mfu = flops_per_step * steps_per_s / peak_flops if peak_flops else None
    return dict(images_per_s=batch * steps_per_s, step_ms=step_s * 1e3, warmup_s=warmup_s, peak_mem_gib=peak_mem, mfu=mfu)


def run_training(network_kwargs: dict, configs: list[str], batches: list[int], device: torch.device, warmup: int,
                 iters: int, peak_flops: Optional[float]) -> dict:
    """Part (a) for every config and batch; failures are recorded as {'error': ...}."""
    flops = {str(b): count_training_flops(network_kwargs, b, device) for b in batches}
    results = {}
    for name in configs:
        results[name] = dict(CONFIGS[name], batches={})
        for b in batches:
            try:
                entry = measure_training(network_kwargs, CONFIGS[name], b, device, warmup, iters, flops[str(b)], peak_flops)
            except Exception as err:  # A failing config (compile, OOM) must not end the run.
                entry = dict(error=first_line(err))
            results[name]['batches'][str(b)] = entry
            reset_backends()
            free_memory(device)
    for name in configs:
        for b, entry in results[name]['batches'].items():
            if 'error' not in entry:
                base = results.get(BASELINE, {}).get('batches', {}).get(b, {})
                entry['ratio_to_fp32'] = ratio(entry['images_per_s'], base.get('images_per_s'))
    return dict(loss=f'EDMLoss(D={network_kwargs["D"]})', flops_note=FLOPS_NOTE, flops_per_step=flops,
                configs=results, fp32_over_published=fp32_over_published(results, batches))


def fp32_over_published(results: dict, batches: list[int]) -> Optional[dict]:
    """images/s of fp32 divided by that of published, per batch; None unless both ran."""
    if BASELINE not in results or PUBLISHED not in results:
        return None
    out = {}
    for b in map(str, batches):
        ours, theirs = results[BASELINE]['batches'][b], results[PUBLISHED]['batches'][b]
        out[b] = ratio(ours.get('images_per_s'), theirs.get('images_per_s'))
    return out

#----------------------------------------------------------------------------
# (b) Sampling.

def measure_sampling(network_kwargs: dict, config: dict, batch: int, device: torch.device, warmup: int, runs: int) -> dict:
    """images/s of edm_sampler (18 Heun steps, 35 evaluations) for one config; warm-up runs excluded."""
    precision_lib.configure_backends(config['precision'], cudnn_benchmark=True)
    net = make_network(network_kwargs, config, device, train=False)
    model = torch.compile(net) if config['compile'] else net
    gen = torch.Generator(device=device).manual_seed(2)
    shape = [batch, network_kwargs['img_channels'], network_kwargs['img_resolution'], network_kwargs['img_resolution']]
    latents = pfgmpp.sample_prior(shape, 80, D=network_kwargs['D'], generator=gen, device=device)

    @torch.no_grad()
    def sample() -> None:
        edm_sampler(model, latents, num_steps=18)  # torch.compile's wrapper forwards round_sigma and the sigma range.

    warmup_s, run_s = time_repeated(sample, device, warmup, runs)
    return dict(images_per_s=batch / run_s, seconds_per_batch=run_s, warmup_s=warmup_s)


def run_sampling(network_kwargs: dict, configs: list[str], batch: int, device: torch.device, warmup: int, runs: int) -> dict:
    """Part (b) for every config; failures are recorded as {'error': ...}."""
    results = {}
    for name in configs:
        try:
            entry = measure_sampling(network_kwargs, CONFIGS[name], batch, device, warmup, runs)
        except Exception as err:
            entry = dict(error=first_line(err))
        results[name] = dict(CONFIGS[name], **entry)
        reset_backends()
        free_memory(device)
    base = results.get(BASELINE, {}).get('images_per_s')
    for entry in results.values():
        if 'error' not in entry:
            entry['ratio_to_fp32'] = ratio(entry['images_per_s'], base)
    out = dict(num_steps=18, network_evaluations=35, batch=batch, runs=runs, configs=results, fp32_over_published=None)
    if BASELINE in results and PUBLISHED in results:
        out['fp32_over_published'] = ratio(base, results[PUBLISHED].get('images_per_s'))
    return out

#----------------------------------------------------------------------------
# (c) FID feature extraction.

def fid_configs(fid_batch: int) -> dict:
    """Part (c)'s configurations: fid.py's default (fp32, batch 64, the baseline), fp32 and tf32 at fid_batch."""
    return {'fp32': dict(precision='fp32', batch=FID_DEFAULT_BATCH),
            'fp32-batch': dict(precision='fp32', batch=fid_batch),
            'tf32-batch': dict(precision='tf32', batch=fid_batch)}


def measure_features(detector: detector_lib.Detector, precision: str, images: torch.Tensor, batch: int, device: torch.device,
                     warmup: int, iters: int) -> dict:
    """images/s of detector.features on in-memory uint8 batches of `batch` images."""
    precision_lib.configure_backends(precision, cudnn_benchmark=True)
    chunk = images[:batch].to(device)

    @torch.no_grad()
    def features() -> None:
        detector.features(chunk)

    warmup_s, batch_s = time_repeated(features, device, warmup, iters)
    return dict(images_per_s=chunk.shape[0] / batch_s, seconds_per_batch=batch_s, warmup_s=warmup_s)


def write_pngs(folder: str, images: np.ndarray) -> None:
    """uint8 [N, 3, H, W] -> folder/000000.png, ..."""
    for i, image in enumerate(images):
        PIL.Image.fromarray(image.transpose(1, 2, 0), 'RGB').save(os.path.join(folder, f'{i:06d}.png'), compress_level=1)


def measure_end_to_end(detector: detector_lib.Detector, num_images: int, resolution: int, workers: int, device: torch.device) -> dict:
    """images/s of evaluation.calculate_inception_stats over a temporary folder of num_images PNGs (fp32, fid.py's batch)."""
    precision_lib.configure_backends('fp32', cudnn_benchmark=True)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=[num_images, 3, resolution, resolution], dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix='throughput-fid-') as folder:
        write_pngs(folder, images)
        seconds = timed(lambda: evaluation.calculate_inception_stats(folder, detector, max_batch_size=FID_DEFAULT_BATCH,
                                                               num_workers=workers, progress=False), device)
    return dict(num_images=num_images, batch=FID_DEFAULT_BATCH, workers=workers, seconds=seconds, images_per_s=num_images / seconds)


def run_fid(detector_source: Optional[str], fid_batch: int, resolution: int, device: torch.device, warmup: int,
            iters: int, num_images: int, workers: int) -> dict:
    """Part (c), or {'skipped': reason} when the detector cannot be loaded."""
    try:
        detector = detector_lib.load_detector(detector_source, device=device)
    except (ValueError, OSError) as err:  # Includes dnnlib.DownloadError (offline) and a missing file.
        return dict(skipped=first_line(err))
    gen = torch.Generator().manual_seed(4)
    configs = fid_configs(fid_batch)
    largest = max(c['batch'] for c in configs.values())
    images = torch.randint(0, 256, [largest, 3, resolution, resolution], generator=gen, dtype=torch.uint8)
    results = {}
    for name, c in configs.items():
        try:
            entry = measure_features(detector, c['precision'], images, c['batch'], device, warmup, iters)
        except Exception as err:
            entry = dict(error=first_line(err))
        results[name] = dict(c, **entry)
        reset_backends()
    base = results[BASELINE].get('images_per_s')
    for entry in results.values():
        if 'error' not in entry:
            entry['ratio_to_fp32'] = ratio(entry['images_per_s'], base)
    try:
        end_to_end = measure_end_to_end(detector, num_images, resolution, workers, device)
    except Exception as err:
        end_to_end = dict(error=first_line(err))
    reset_backends()
    return dict(detector=detector.source, note=FID_NOTE, image_shape=[3, resolution, resolution], configs=results,
                end_to_end=end_to_end)

#----------------------------------------------------------------------------
# Tables.

def fmt(value: Optional[float], spec: str) -> str:
    """value formatted with spec, or '-' when missing."""
    return '-' if value is None else format(value, spec)


def fmt_percent(value: Optional[float]) -> str:
    """A fraction as '12.3%', or '-' when missing."""
    return '-' if value is None else f'{100 * value:.1f}%'


def print_training(train: dict, peak_note: Optional[str], peak_flops: Optional[float]) -> None:
    """Part (a)'s table."""
    print(f'\n(a) Training step, {train["network"]}, {train["loss"]}')
    print(FLOPS_NOTE)
    for b, f in train['flops_per_step'].items():
        print(f'  batch {b}: {f / 1e9:.1f} GFLOP/step')
    print(f'MFU relative to {peak_note}: {peak_flops / 1e12:.1f} TFLOP/s (for every config)' if peak_flops else
          'MFU: not reported (no known peak for this device; pass --peak-tflops).')
    print(f'{"config":<16} {"batch":>5} {"img/s":>10} {"x fp32":>7} {"step ms":>9} {"peak GiB":>9} {"MFU":>7} {"warm-up s":>9}')
    for name, c in train['configs'].items():
        for b, e in c['batches'].items():
            if 'error' in e:
                print(f'{name:<16} {b:>5} failed: {e["error"]}')
                continue
            print(f'{name:<16} {b:>5} {e["images_per_s"]:>10.1f} {fmt(e["ratio_to_fp32"], ".2f"):>7} {e["step_ms"]:>9.1f} '
                  f'{fmt(e["peak_mem_gib"], ".2f"):>9} {fmt_percent(e["mfu"]):>7} '
                  f'{e["warmup_s"]:>9.1f}')
    if train['fp32_over_published']:
        print(f'published = {PUBLISHED_LABEL}; fp32 / published: ' +
              ', '.join(f'batch {b}: {fmt(r, ".2f")}x' for b, r in train['fp32_over_published'].items()))


def print_config_rows(header: str, entries: dict, row: Callable[[dict], str]) -> None:
    """A table with one line per configuration: its name, then row(entry), or the error it failed with."""
    print(f'{"config":<16} {header}')
    for name, e in entries.items():
        print(f'{name:<16} ' + (f'failed: {e["error"]}' if 'error' in e else row(e)))


def print_sampling(sampling: dict) -> None:
    """Part (b)'s table."""
    print(f'\n(b) Sampling: edm_sampler, {sampling["num_steps"]} Heun steps ({sampling["network_evaluations"]} evaluations), '
          f'batch {sampling["batch"]}, eval-mode network')
    print_config_rows(f'{"img/s":>10} {"x fp32":>7} {"s/batch":>9} {"warm-up s":>9}', sampling['configs'],
                      lambda e: f'{e["images_per_s"]:>10.2f} {fmt(e["ratio_to_fp32"], ".2f"):>7} {e["seconds_per_batch"]:>9.3f} {e["warmup_s"]:>9.1f}')
    if sampling['fp32_over_published'] is not None:
        print(f'fp32 / published: {sampling["fp32_over_published"]:.2f}x')


def print_fid(fid_part: dict) -> None:
    """Part (c)'s table, or the line saying why it was skipped."""
    if 'skipped' in fid_part:
        print(f'\n(c) FID feature extraction skipped: {fid_part["skipped"]}')
        return
    print(f'\n(c) FID feature extraction, detector {fid_part["detector"]}, uint8 images {fid_part["image_shape"]}')
    print(FID_NOTE)
    print_config_rows(f'{"precision":>9} {"batch":>6} {"img/s":>10} {"x fp32":>7}', fid_part['configs'],
                      lambda e: f'{e["precision"]:>9} {e["batch"]:>6} {e["images_per_s"]:>10.1f} {fmt(e["ratio_to_fp32"], ".2f"):>7}')
    e = fid_part['end_to_end']
    if 'error' in e:
        print(f'end-to-end calculate_inception_stats failed: {e["error"]}')
    else:
        print(f'end-to-end calculate_inception_stats: {e["num_images"]} PNGs, batch {e["batch"]}, {e["workers"]} workers: '
              f'{e["seconds"]:.2f} s, {e["images_per_s"]:.1f} img/s')

#----------------------------------------------------------------------------
# The benchmark as a plain function (the CLI below is a thin wrapper).

def run_benchmark(device: torch.device, configs: list[str], batches: list[int], warmup: int, iters: int,
                  sample_batch: int, sample_runs: int, fid_batch: int, fid_images: int, workers: int,
                  detector: Optional[str], peak_tflops: Optional[float], small: bool, command: str = '') -> dict:
    """Parts (a), (b) and (c) for `configs` on `device`; returns the JSON record and prints the tables."""
    with preserved_backends():
        network_kwargs = SMALL_NETWORK if small else NETWORK
        peak_flops, peak_note = peak_flops_for(device, peak_tflops)
        reset_backends()
        num_params = count_parameters(EDMPrecond(**network_kwargs))
        res = network_kwargs['img_resolution']
        network = (f'{"small test network" if small else "DDPM++ CIFAR-10"} (SongUNet, {res}x{res}x{network_kwargs["img_channels"]}, '
                   f'{num_params / 1e6:.2f}M parameters)')
        print(f'Device: {device_name(device)}, torch {torch.__version__}; configs: {", ".join(configs)}; '
              f'every ratio is relative to fp32 (fp32 eager, SDPA attention).')
        if PUBLISHED in configs:
            print(f'published = {PUBLISHED_LABEL}.')

        train = run_training(network_kwargs, configs, batches, device, warmup, iters, peak_flops)
        train = dict(network=network, network_kwargs=network_kwargs, num_params=num_params, **train,
                     mfu_note=(f'MFU relative to {peak_note}: {peak_flops / 1e12:g} TFLOP/s, for every config' if peak_flops else None))
        print_training(train, peak_note, peak_flops)
        sampling = run_sampling(network_kwargs, configs, sample_batch, device, min(warmup, 1), sample_runs)
        print_sampling(sampling)
        fid_part = run_fid(detector, fid_batch, res, device, warmup, iters, fid_images, workers)
        print_fid(fid_part)
        return dict(device=device_name(device), torch=torch.__version__,
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), command=command,
                    peak_tflops=peak_flops / 1e12 if peak_flops else None, peak_source=peak_note, small=small,
                    published_label=PUBLISHED_LABEL, train=train, sampling=sampling, fid=fid_part)


def write_json_atomic(path: str, record: dict) -> None:
    """Write record to path through a temporary file in the same folder and os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(record, f, indent=2)
            f.write('\n')
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

#----------------------------------------------------------------------------
# Command line.

def parse_configs(_ctx, _param, value: Optional[str]) -> Optional[list[str]]:
    """'fp32,bf16' -> ['fp32', 'bf16'] in the order given; unknown or repeated names are a usage error."""
    if value is None:
        return None
    names = [n.strip() for n in value.split(',') if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise click.BadParameter(f'unknown config {", ".join(map(repr, unknown)) or "(none)"}; choose from {", ".join(CONFIGS)}.')
    if len(set(names)) != len(names):
        raise click.BadParameter(f'{value!r} names a config twice.')
    return names


def parse_batches(_ctx, _param, value: Optional[str]) -> Optional[list[int]]:
    """'64,128' -> [64, 128]; every entry a positive integer."""
    if value is None:
        return None
    try:
        batches = [int(b) for b in value.split(',')]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise click.BadParameter(f'{value!r} is not a comma-separated list of positive integers.')
    return list(dict.fromkeys(batches))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu; 'cuda' without a GPU is a usage error."""
    if name == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available here; use --device=cpu or auto.', param_hint="'--device'")
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(name)


def check_out_path(path: Optional[str]) -> None:
    """--out must be a file in an existing, writable folder (checked before minutes of benchmarking)."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise click.BadParameter(f'{path} is not a writable file path in an existing folder.', param_hint="'--out'")


@click.command(context_settings=cli.CONTEXT_SETTINGS)
# What to run.
@click.option('--device',       help='Where to run', type=click.Choice(['auto', 'cuda', 'cpu']), default='auto', show_default=True)
@click.option('--configs',      help=f'Comma-separated subset of {",".join(CONFIGS)}  [default: all on CUDA, {",".join(CPU_DEFAULT_CONFIGS)} on CPU]',
              metavar='LIST', callback=parse_configs)
@click.option('--small',        help='Much smaller network and few iterations (CPU smoke test)', is_flag=True)
# Training.
@click.option('--batch',        help='Per-device training batch sizes  [default: 64,128; 4 with --small]', metavar='LIST', callback=parse_batches)
@click.option('--iters',        help='Timed iterations  [default: 2 with --small, else 20 on CUDA, 3 on CPU]', metavar='INT', type=click.IntRange(min=1))
@click.option('--warmup',       help='Untimed warm-up iterations  [default: 5 on CUDA, 1 on CPU or with --small]', metavar='INT', type=click.IntRange(min=0))
@click.option('--peak-tflops',  help='Peak FLOP/s for MFU, in TFLOP/s  [default: the dense bf16 peak of known GPUs]', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True))
# Sampling.
@click.option('--sample-batch', help='Sampling batch  [default: 4 with --small, else 64 on CUDA, 8 on CPU]', metavar='INT', type=click.IntRange(min=1))
@click.option('--sample-runs',  help='Timed sampling runs  [default: 3 on CUDA, 1 on CPU or with --small]', metavar='INT', type=click.IntRange(min=1))
# FID.
@click.option('--fid-batch',    help='FID feature batch  [default: 16 with --small, else 256 on CUDA, 64 on CPU]', metavar='INT', type=click.IntRange(min=1))
@click.option('--fid-images',   help='PNGs for the end-to-end FID figure  [default: 1024 on CUDA, 64 on CPU or with --small]', metavar='INT',
              type=click.IntRange(min=2))
@click.option('--workers',      help='DataLoader workers of the end-to-end FID figure', metavar='INT', type=click.IntRange(min=0),
              default=min(3, os.cpu_count() or 1), show_default=True)
@click.option('--detector',     help='FID detector pickle or TorchScript file  [default: Inception-v3 URL]', metavar='PATH|URL', type=str)
# Output.
@click.option('--out',          help='Write the results as JSON here', metavar='PATH.json', type=str)
def main(device: str, configs: Optional[list[str]], small: bool, batch: Optional[list[int]], iters: Optional[int],
         warmup: Optional[int], peak_tflops: Optional[float], sample_batch: Optional[int], sample_runs: Optional[int],
         fid_batch: Optional[int], fid_images: Optional[int], workers: int, detector: Optional[str], out: Optional[str]) -> None:
    """Training, sampling and FID throughput of each precision configuration against fp32."""
    dev = resolve_device(device)
    check_out_path(out)
    cuda = dev.type == 'cuda'
    record = run_benchmark(
        device=dev, configs=configs or (list(CONFIGS) if cuda else list(CPU_DEFAULT_CONFIGS)),
        batches=batch or ([4] if small else [64, 128]),
        warmup=warmup if warmup is not None else (5 if cuda and not small else 1),
        iters=iters or (2 if small else 20 if cuda else 3),
        sample_batch=sample_batch or (4 if small else 64 if cuda else 8),
        sample_runs=sample_runs or (3 if cuda and not small else 1),
        fid_batch=fid_batch or (16 if small else 256 if cuda else 64),
        fid_images=fid_images or (64 if small or not cuda else 1024),
        workers=workers, detector=detector, peak_tflops=peak_tflops, small=small, command='python ' + shlex.join(sys.argv))
    if out is not None:
        write_json_atomic(out, record)
        print(f'\nWrote {out}')


if __name__ == '__main__':
    main()
