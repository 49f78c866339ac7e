"""The training loop: PFGM++ / diffusion training of an EDM-style denoiser (Karras et al., 2022,
Section 5 and Appendix F), one process or many under torchrun.

Reproducibility and exact resume. Every random draw of a training step (sigma, noise, augmentation,
dropout) comes from generators seeded with (seed, rank, step); the data order is a function of
(seed, dataset size) and the number of images consumed. A training state therefore needs only the
weights, the EMA, the optimizer and the image count to continue bit for bit.
"""

import contextlib
import copy
import hashlib
import json
import os
import signal
import time
from typing import Optional

import psutil
import torch

import dnnlib
from torch_utils import distributed, training_stats
from torch_utils import precision as precision_lib
from training import checkpoint
from training.dataset import ImageFolderDataset, make_dataloader

#----------------------------------------------------------------------------
# Small pure helpers (tested directly).

def step_seed(seed: int, rank: int, step: int, stream: str) -> int:
    """A 63-bit seed for one random stream ('loss', 'dropout', ...) of one rank at one step."""
    digest = hashlib.sha256(f'{seed}:{rank}:{step}:{stream}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def ema_beta(cur_nimg: int, batch_size: int, ema_halflife_kimg: float, ema_rampup_ratio: Optional[float]) -> float:
    """EMA decay per step for a half-life of ema_halflife_kimg thousand images, shortened to
    cur_nimg * ema_rampup_ratio early in training (EDM, Appendix F.1): beta = 0.5^(batch / half-life)."""
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))


def learning_rate(base_lr: float, cur_nimg: int, lr_rampup_kimg: float) -> float:
    """Linear warm-up from 0 to base_lr over the first lr_rampup_kimg thousand images."""
    return base_lr * min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net, parameter by parameter."""
    for p_ema, p_net in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p_net.detach().lerp(p_ema, beta))


@torch.no_grad()
def sanitize_gradients(net: torch.nn.Module) -> torch.Tensor:
    """Replace NaN/inf gradient entries by 0/+-1e5 in place (as EDM does); return how many there were."""
    count = torch.zeros([], dtype=torch.int64)
    for param in net.parameters():
        if param.grad is not None:
            count = count.to(param.grad.device) + (~torch.isfinite(param.grad)).sum()
            torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
    return count


def accumulate_gradients(ddp: torch.nn.Module, loss_fn, batches, loss_scaling: float, batch_gpu_total: int,
                         stats: Optional[training_stats.Collector] = None, grad_scaler: Optional[torch.amp.GradScaler] = None,
                         no_sync_module: Optional[torch.nn.Module] = None, **loss_kwargs) -> None:
    """Backpropagate the loss of every round's batch into .grad, summed and divided by the per-rank
    batch, so that the result equals one pass over the whole per-rank batch. Under DDP only the
    last round synchronises gradients across ranks (they are then averaged over ranks).
    grad_scaler (fp16): the loss is multiplied by its current scale before backward.
    no_sync_module: the DistributedDataParallel module when `ddp` is its torch.compile wrapper."""
    batches = list(batches)
    no_sync_module = no_sync_module if no_sync_module is not None else ddp
    for round_idx, (images, labels, extra) in enumerate(batches):
        sync = round_idx == len(batches) - 1
        no_sync = no_sync_module.no_sync() if (not sync and hasattr(no_sync_module, 'no_sync')) else contextlib.nullcontext()
        with no_sync:
            loss = loss_fn(ddp, images, labels, **extra, **loss_kwargs)
            if stats is not None:
                stats.report('Loss/loss', loss.detach())
            loss = loss.sum().mul(loss_scaling / batch_gpu_total)
            (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()

def optimizer_options(optimizer_kwargs: dict, device: torch.device) -> dict:
    """optimizer_kwargs with the fused CUDA kernel of torch.optim.Adam / AdamW on CUDA (one kernel for
    all parameters instead of several per tensor), unless the options choose an implementation."""
    kwargs = dict(optimizer_kwargs)
    if device.type == 'cuda' and kwargs.get('class_name') in ('torch.optim.Adam', 'torch.optim.AdamW') \
            and not any(k in kwargs for k in ('fused', 'foreach')):
        kwargs['fused'] = True
    return kwargs

#----------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT ask the loop to write a training state and stop at the next step.

class StopRequest:
    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # Not the main thread: no handlers, no preemption support.
                pass
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, device: torch.device) -> bool:
        """True if any rank received a signal (every rank must call this at the same step)."""
        flag = torch.tensor([1.0 if self.signal_name else 0.0], dtype=torch.float64, device=device)
        return bool(distributed.all_reduce_sum(flag).item() > 0)

#----------------------------------------------------------------------------
# Training states.

def training_state(net, ema, optimizer, cur_nimg: int, cur_tick: int, tick_start_nimg: int, options: dict,
                   grad_scaler: Optional[torch.amp.GradScaler] = None) -> dict:
    """Everything needed to continue a run exactly, as plain data (torch.load(weights_only=True));
    with fp16, the loss scaler's state (its current scale and growth count) too."""
    return dict(
        format=checkpoint.STATE_FORMAT, version=checkpoint.FORMAT_VERSION,
        net=checkpoint.network_to_dict(net), ema=checkpoint.network_to_dict(ema),
        optimizer=optimizer.state_dict(), grad_scaler=(grad_scaler.state_dict() if grad_scaler is not None else None),
        cur_nimg=int(cur_nimg), cur_tick=int(cur_tick),
        tick_start_nimg=int(tick_start_nimg), kimg=cur_nimg // 1000, D=ema.D,
        img_resolution=ema.img_resolution, img_channels=ema.img_channels, label_dim=ema.label_dim,
        training_options=options,
    )


def check_state_matches(state: dict, net: torch.nn.Module, path: str) -> None:
    """A resume state must hold the same architecture as the run being continued."""
    ours = dict(class_name=type(net).__name__, init_kwargs=net.init_kwargs)
    theirs = state['net']
    if theirs['class_name'] != ours['class_name'] or theirs['init_kwargs'] != ours['init_kwargs']:
        diff = sorted(k for k in set(ours['init_kwargs']) | set(theirs['init_kwargs'])
                      if ours['init_kwargs'].get(k) != theirs['init_kwargs'].get(k))
        detail = f'{theirs["class_name"]} vs {ours["class_name"]}' if theirs['class_name'] != ours['class_name'] else 'differing ' + ', '.join(diff)
        raise checkpoint.CheckpointError(f'{path} belongs to another architecture ({detail}); resume with the options it was trained with.')

#----------------------------------------------------------------------------

def training_loop(
    run_dir: str,                           # Output directory (exists).
    dataset_kwargs: dict,                   # ImageFolderDataset arguments.
    network_kwargs: dict,                   # class_name (training.networks.*Precond) and its arguments.
    loss_kwargs: dict,                      # class_name (training.loss.*Loss) and its arguments.
    optimizer_kwargs: dict,                 # class_name (torch.optim.*) and its arguments, incl. lr.
    augment_kwargs: Optional[dict] = None,  # class_name (training.augment.AugmentPipe) and arguments, or None.
    seed: int = 0,                          # Seed of every random stream.
    batch_size: int = 512,                  # Total batch over all ranks and accumulation rounds.
    batch_gpu: Optional[int] = None,        # Batch per rank and round, None = no accumulation.
    total_kimg: float = 200000,             # Training duration, in thousands of images.
    ema_halflife_kimg: float = 500,         # EMA half-life, kimg.
    ema_rampup_ratio: Optional[float] = 0.05,  # EMA ramp-up: half-life at most cur_nimg * ratio.
    lr_rampup_kimg: float = 10000,          # Learning-rate warm-up, kimg.
    loss_scaling: float = 1,                # Multiplier of the loss before backpropagation.
    kimg_per_tick: float = 50,              # Progress line, statistics and checks every this many kimg.
    snapshot_ticks: Optional[int] = 50,     # Network snapshot every this many ticks, None = never.
    state_dump_ticks: Optional[int] = 500,  # Training state every this many ticks, None = never.
    resume_state: Optional[str] = None,     # Training state to continue from.
    transfer: Optional[dict] = None,        # Network (from checkpoint.load_network) whose weights start the run.
    stf_rbatch: Optional[int] = None,       # Stable target field: reference images per rank and round beyond the batch.
    workers: int = 1,                       # DataLoader worker processes per rank.
    cudnn_benchmark: bool = True,           # torch.backends.cudnn.benchmark.
    precision: str = 'fp32',                # fp32 | tf32 | bf16 | fp16 (torch_utils/precision.py).
    channels_last: bool = False,            # Channels-last (NHWC) weights and activations.
    compile: bool = False,                  # torch.compile the network (with DDP, the DDP module).
    device: torch.device = torch.device('cpu'),
    options: Optional[dict] = None,         # training_options.json, stored in checkpoints.
) -> dict:
    """Train until total_kimg or a stop signal; return {'status': 'done' | 'stopped', 'cur_nimg'}."""
    options = options or {}
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    batch_gpu_total = batch_size // world_size
    batch_gpu = batch_gpu or batch_gpu_total
    num_rounds = batch_gpu_total // batch_gpu
    assert batch_size == batch_gpu * num_rounds * world_size
    precision_lib.configure_backends(precision, cudnn_benchmark)
    log_path = os.path.join(run_dir, 'log.txt')

    def log(message: str) -> None:
        if rank == 0:
            print(message, flush=True)
            with open(log_path, 'a') as f:
                f.write(message + '\n')

    # Data.
    dataset = ImageFolderDataset(**dataset_kwargs)
    log(f'Dataset: {dataset.name}, {len(dataset)} images of shape {list(dataset.image_shape)}, label_dim {dataset.label_dim}')

    # Network, EMA, loss, optimizer, augmentation.
    torch.manual_seed(seed)
    net = dnnlib.construct_class_by_name(**network_kwargs, img_resolution=dataset.resolution,
                                         img_channels=dataset.num_channels, label_dim=dataset.label_dim)
    net.train().requires_grad_(True).to(device)
    precision_lib.prepare_network(net, precision, channels_last=channels_last)
    num_params = sum(p.numel() for p in net.parameters())
    log(f'Network: {type(net).__name__}/{net.init_kwargs.get("model_type")}, {num_params:,} parameters, D={net.D}')
    log(f'Precision: {precision}{", channels-last" if channels_last else ""}{", torch.compile" if compile else ""}')
    loss_fn = dnnlib.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.construct_class_by_name(params=net.parameters(), **optimizer_options(optimizer_kwargs, device))
    grad_scaler = precision_lib.make_grad_scaler(precision, device.type)
    augment_pipe = dnnlib.construct_class_by_name(**augment_kwargs) if augment_kwargs else None
    if transfer is not None:
        copied = copy_matching_weights(transfer, net)
        log(f'Transfer: copied {copied} tensors from {transfer.get("source", "the checkpoint")}')
    ema = copy.deepcopy(net).eval().requires_grad_(False)

    # Resume.
    cur_nimg, cur_tick, tick_start_nimg = 0, 0, 0
    if resume_state is not None:
        state = checkpoint.load_plain(resume_state, expected_format=checkpoint.STATE_FORMAT)
        check_state_matches(state, net, resume_state)
        net.load_state_dict(state['net']['state_dict'])
        ema.load_state_dict(state['ema']['state_dict'])
        optimizer.load_state_dict(state['optimizer'])
        if grad_scaler is not None and state.get('grad_scaler'):
            grad_scaler.load_state_dict(state['grad_scaler'])
        cur_nimg, cur_tick, tick_start_nimg = state['cur_nimg'], state['cur_tick'], state['tick_start_nimg']
        log(f'Resuming from {resume_state} at {cur_nimg / 1000:.3f} kimg, tick {cur_tick}')
        del state

    ddp = net
    if world_size > 1:
        # Our buffers are constants (resampling filters), so they need no syncing at every forward.
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None,
                                                        forward_sync_buffers=False)
    ddp_module = ddp
    if compile:
        ddp = torch.compile(ddp, dynamic=False)  # Fixed shapes: one graph per batch shape.

    # Data streams: this rank's position is the number of images it consumed.
    steps_done = cur_nimg // batch_size
    loader = make_dataloader(dataset, batch_gpu, rank=rank, num_replicas=world_size, seed=seed,
                             start_index=steps_done * batch_gpu_total, workers=workers, device_type=device.type)
    ref_loader = None
    if stf_rbatch:
        ref_loader = make_dataloader(dataset, stf_rbatch, rank=rank, num_replicas=world_size, seed=seed + 1,
                                     start_index=steps_done * num_rounds * stf_rbatch, workers=0, device_type=device.type)

    def next_batch():
        images, labels = next(loader)
        images = images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1
        extra = {}
        if ref_loader is not None:
            extra['reference_images'] = next(ref_loader)[0].to(device).to(torch.float32) / 127.5 - 1
        return images, labels.to(device, non_blocking=True), extra

    stats = training_stats.Collector()
    stat_names = ['Loss/loss', 'Loss/nonfinite_grads']
    loss_generator = torch.Generator(device=device)
    base_lr = optimizer_kwargs['lr']
    total_nimg = int(total_kimg * 1000)
    start_time = tick_start_time = time.time()
    maintenance_time = 0.0
    stats_path = os.path.join(run_dir, 'stats.jsonl')
    log(f'Training for {total_kimg} kimg: batch {batch_size} = {batch_gpu} per rank and round x {num_rounds} rounds x {world_size} ranks, device {device}')

    if cur_nimg >= total_nimg:
        log(f'Already at {cur_nimg / 1000:.3f} kimg of {total_kimg} kimg: nothing to do.')
        return dict(status='done', cur_nimg=cur_nimg)
    status = 'done'
    with StopRequest() as stop:
        while True:
            done = cur_nimg >= total_nimg
            if not done:
                # One optimizer step; every random stream is seeded by (seed, rank, step).
                step = cur_nimg // batch_size
                torch.manual_seed(step_seed(seed, rank, step, 'global'))  # Dropout and label dropout.
                loss_generator.manual_seed(step_seed(seed, rank, step, 'loss'))
                optimizer.zero_grad(set_to_none=True)
                batches = (next_batch() for _ in range(num_rounds))
                accumulate_gradients(ddp, loss_fn, batches, loss_scaling, batch_gpu_total, stats, grad_scaler=grad_scaler,
                                     no_sync_module=ddp_module, augment_pipe=augment_pipe, generator=loss_generator)
                for group in optimizer.param_groups:
                    group['lr'] = learning_rate(base_lr, cur_nimg, lr_rampup_kimg)
                if grad_scaler is not None:
                    # Unscaling records whether fp16 overflowed; the step is then skipped and the scale lowered.
                    grad_scaler.unscale_(optimizer)
                stats.report('Loss/nonfinite_grads', sanitize_gradients(net))
                if grad_scaler is not None:
                    grad_scaler.step(optimizer)
                    grad_scaler.update()
                else:
                    optimizer.step()
                update_ema(ema, net, ema_beta(cur_nimg, batch_size, ema_halflife_kimg, ema_rampup_ratio))
                cur_nimg += batch_size
                done = cur_nimg >= total_nimg

            stopping = stop.requested(device) if world_size > 1 or stop.signal_name else False
            tick_end = cur_nimg >= tick_start_nimg + kimg_per_tick * 1000
            if not (done or stopping or tick_end):
                continue

            # Tick: progress line, statistics, checkpoints.
            tick_end_time = time.time()
            collected = stats.collect(stat_names)
            kimg = cur_nimg / 1000
            tick_kimg = max((cur_nimg - tick_start_nimg) / 1000, 1e-8)
            cpu_mem = psutil.Process(os.getpid()).memory_info().rss / 2 ** 30
            gpu_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else 0.0
            fields = [
                f'tick {cur_tick:<5d}', f'kimg {kimg:<9.3f}', f'time {tick_end_time - start_time:<8.1f}',
                f'sec/tick {tick_end_time - tick_start_time:<7.2f}',
                f'sec/kimg {(tick_end_time - tick_start_time) / tick_kimg:<7.3f}',
                f'loss {collected["Loss/loss"]["mean"]:<8.4f}',
                f'maintenance {maintenance_time:<6.2f}', f'cpumem {cpu_mem:<6.2f}', f'gpumem {gpu_mem:<6.2f}',
            ]
            if grad_scaler is not None:
                fields.append(f'loss_scale {grad_scaler.get_scale():<8g}')
            if collected['Loss/loss']['nonfinite'] > 0:
                fields.append(f'nonfinite_loss {collected["Loss/loss"]["nonfinite"]}')
            if collected['Loss/nonfinite_grads']['mean'] > 0:
                fields.append(f'nonfinite_grads {int(collected["Loss/nonfinite_grads"]["mean"] * collected["Loss/nonfinite_grads"]["num"])}')
            log('  '.join(fields))
            if rank == 0:
                record = dict(collected, timestamp=tick_end_time, tick=cur_tick, kimg=kimg,
                              sec_per_kimg=(tick_end_time - tick_start_time) / tick_kimg, cpumem_gb=cpu_mem, gpumem_gb=gpu_mem)
                with open(stats_path, 'a') as f:
                    f.write(json.dumps(training_stats.json_safe(record), allow_nan=False) + '\n')
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)

            cur_tick += 1
            tick_start_nimg = cur_nimg
            tick_start_time = time.time()
            maintenance_start = tick_start_time
            if rank == 0:
                if snapshot_ticks is not None and (done or cur_tick % snapshot_ticks == 0):
                    path = os.path.join(run_dir, checkpoint.snapshot_name(cur_nimg // 1000))
                    checkpoint.save_network_snapshot(path, ema, kimg=cur_nimg // 1000, cur_nimg=cur_nimg, training_options=options)
                if (state_dump_ticks is not None and (done or cur_tick % state_dump_ticks == 0)) or stopping:
                    path = os.path.join(run_dir, checkpoint.state_name(cur_nimg // 1000))
                    checkpoint.save_atomic(training_state(net, ema, optimizer, cur_nimg, cur_tick, tick_start_nimg, options, grad_scaler), path)
                    if stopping:
                        log(f'Received {stop.signal_name or "a stop signal on another rank"}: wrote {path}; continue with --resume=auto.')
            distributed.barrier()
            maintenance_time = time.time() - maintenance_start
            if stopping:
                status = 'stopped'
                break
            if done:
                break
    log('Exiting...' if status == 'done' else 'Stopped.')
    return dict(status=status, cur_nimg=cur_nimg)

#----------------------------------------------------------------------------

@torch.no_grad()
def copy_matching_weights(transfer: dict, net: torch.nn.Module) -> int:
    """Copy every tensor of transfer['net'] into the tensor of `net` with the same name (as EDM's
    --transfer does); tensors only `net` has keep their initialisation. A name whose shapes differ,
    or no name in common, is an error. Returns the number copied."""
    source = transfer['net'].state_dict()
    target = net.state_dict()
    matching = [k for k in source if k in target]
    mismatched = [k for k in matching if target[k].shape != source[k].shape]
    if mismatched or not matching:
        raise checkpoint.CheckpointError(f'--transfer: the checkpoint does not fit this network ({len(mismatched)} tensors differ in shape).')
    for k in matching:
        target[k].copy_(source[k])
    return len(matching)
