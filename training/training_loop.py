"""The training loop: PFGM++ / diffusion training of an EDM-style denoiser (Karras et al., 2022,
Section 5 and Appendix F), one process or many under torchrun.

Reproducibility and exact resume. Every random draw of a training step (sigma, noise, augmentation,
dropout) comes from generators seeded with (seed, rank, step) (torch_utils/rng.py); the data order is
a function of (seed, dataset size) and the number of images consumed. A training state therefore
needs only the weights, the EMA, the optimizer and the image count to continue bit for bit.

training_loop() runs the named steps of a Training: setup (data, networks, resume, data streams), one
optimisation step, the EMA update, the tick report, and checkpointing.
"""

import contextlib
import copy
import json
import math
import os
import signal
import time
from typing import Optional

import psutil
import torch

import dnnlib
from torch_utils import distributed, rng, training_stats
from torch_utils import precision as precision_lib
from training import checkpoint, phema
from training.dataset import ImageFolderDataset, make_dataloader

#----------------------------------------------------------------------------
# Small pure helpers (tested directly).

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


def learning_rate_schedule(cur_nimg: int, batch_size: int, ref_lr: float = 100e-4, ref_batches: float = 70e3,
                           rampup_Mimg: float = 10) -> float:
    """EDM2's learning rate after cur_nimg images: the inverse square-root decay
    alpha = ref_lr / sqrt(max(t / t_ref, 1)) that EDM2 introduces with forced weight normalisation
    (Equation 66), with t = cur_nimg / batch_size steps and t_ref = ref_batches (0: no decay), times a
    linear warm-up over the first rampup_Mimg million images (0: none). Computed in EDM2's order of
    operations, so the values are EDM2's."""
    lr = ref_lr
    if ref_batches > 0:
        lr /= math.sqrt(max(cur_nimg / (ref_batches * batch_size), 1))
    if rampup_Mimg > 0:
        lr *= min(cur_nimg / (rampup_Mimg * 1e6), 1)
    return lr


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
# The training loop, in named steps.

class Training:
    """One training run: its configuration (training_loop()'s arguments) and state (networks, optimizer,
    data streams, the number of images seen cur_nimg and the tick counters)."""

    def __init__(self, c: dnnlib.EasyDict):
        self.c = c
        self.device = c.device
        self.rank, self.world_size = distributed.get_rank(), distributed.get_world_size()
        self.batch_gpu_total = c.batch_size // self.world_size
        self.batch_gpu = c.batch_gpu or self.batch_gpu_total
        self.num_rounds = self.batch_gpu_total // self.batch_gpu
        assert c.batch_size == self.batch_gpu * self.num_rounds * self.world_size
        self.log_path = os.path.join(c.run_dir, 'log.txt')
        self.stats_path = os.path.join(c.run_dir, 'stats.jsonl')
        self.stats = training_stats.Collector()
        self.loss_generator = torch.Generator(device=self.device)
        self.cur_nimg = self.cur_tick = self.tick_start_nimg = 0
        self.maintenance_time = 0.0

    def log(self, message: str) -> None:
        """A line on stdout and in log.txt (rank 0)."""
        if self.rank == 0:
            print(message, flush=True)
            with open(self.log_path, 'a') as f:
                f.write(message + '\n')

    #------------------------------------------------------------------------
    # Setup.

    def setup_networks(self) -> None:
        """Dataset, network (seeded with --seed), loss, optimizer, loss scaler, augmentation, EMA."""
        c = self.c
        self.dataset = ImageFolderDataset(**c.dataset_kwargs)
        self.log(f'Dataset: {self.dataset.name}, {len(self.dataset)} images of shape {list(self.dataset.image_shape)}, label_dim {self.dataset.label_dim}')
        with rng.seeded_global_rng(c.seed):  # The networks' initialisation draws from the global generator.
            net = dnnlib.construct_class_by_name(**c.network_kwargs, img_resolution=self.dataset.resolution,
                                                 img_channels=self.dataset.num_channels, label_dim=self.dataset.label_dim)
        net.train().requires_grad_(True).to(self.device)
        precision_lib.prepare_network(net, c.precision, channels_last=c.channels_last)
        self.log(f'Network: {type(net).__name__}/{net.init_kwargs.get("model_type", "UNet")}, {sum(p.numel() for p in net.parameters()):,} parameters, D={net.D}')
        self.log(f'Precision: {c.precision}{", channels-last" if c.channels_last else ""}{", torch.compile" if c.compile else ""}')
        self.loss_fn = make_loss(c.loss_kwargs, net)
        self.optimizer = dnnlib.construct_class_by_name(params=net.parameters(), **optimizer_options(c.optimizer_kwargs, self.device))
        self.grad_scaler = precision_lib.make_grad_scaler(c.precision, self.device.type)
        self.augment_pipe = dnnlib.construct_class_by_name(**c.augment_kwargs) if c.augment_kwargs else None
        if c.transfer is not None:
            copied = checkpoint.copy_matching_weights(c.transfer['net'], net, c.transfer.get('source', 'the checkpoint'))
            self.log(f'Transfer: copied {copied} tensors from {c.transfer.get("source", "the checkpoint")}')
        self.net = net
        self.ema = copy.deepcopy(net).eval().requires_grad_(False)
        self.phema = None
        if c.phema_stds:
            self.phema = phema.PowerFunctionEMA(net, c.phema_stds)
            self.log(f'Post-hoc EMA: {len(c.phema_stds)} power-function profiles (std {", ".join(f"{x:g}" for x in c.phema_stds)}), '
                     f'{self.phema.memory_bytes() / 2 ** 20:.1f} MiB more memory (one copy of the network each)')

    def resume(self, path: str) -> None:
        """Continue from a training state of the same architecture."""
        state = checkpoint.load_training_state(path, self.net)
        self.net.load_state_dict(state['net']['state_dict'])
        self.ema.load_state_dict(state['ema']['state_dict'])
        self.optimizer.load_state_dict(state['optimizer'])
        if self.grad_scaler is not None and state.get('grad_scaler'):
            self.grad_scaler.load_state_dict(state['grad_scaler'])
        saved_stds = (state.get('phema') or {}).get('stds')
        if (saved_stds or None) != (list(self.phema.stds) if self.phema else None):
            raise ValueError(f'{path} tracks post-hoc EMA stds {saved_stds or "none"}, this run {self.phema.stds if self.phema else "none"}; '
                             f'resume with the --phema it was trained with.')
        if self.phema is not None:
            self.phema.load_state_dict(state['phema'])
        self.cur_nimg, self.cur_tick, self.tick_start_nimg = state['cur_nimg'], state['cur_tick'], state['tick_start_nimg']
        self.log(f'Resuming from {path} at {self.cur_nimg / 1000:.3f} kimg, tick {self.cur_tick}')

    def setup_streams(self) -> None:
        """DDP and torch.compile around the network, and the data streams at this run's position: this
        rank's position is the number of images it consumed."""
        c, device = self.c, self.device
        self.ddp = self.net
        if self.world_size > 1:
            # Our buffers are constants (resampling filters), so they need no syncing at every forward.
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=[device] if device.type == 'cuda' else None,
                                                                 forward_sync_buffers=False)
        self.ddp_module = self.ddp
        if c.compile:
            self.ddp = torch.compile(self.ddp, dynamic=False)  # Fixed shapes: one graph per batch shape.
        steps_done = self.cur_nimg // c.batch_size
        self.loader = make_dataloader(self.dataset, self.batch_gpu, rank=self.rank, num_replicas=self.world_size, seed=c.seed,
                                      start_index=steps_done * self.batch_gpu_total, workers=c.workers, device_type=device.type)
        self.ref_loader = None
        if c.stf_rbatch:
            self.ref_loader = make_dataloader(self.dataset, c.stf_rbatch, rank=self.rank, num_replicas=self.world_size, seed=c.seed + 1,
                                              start_index=steps_done * self.num_rounds * c.stf_rbatch, workers=0, device_type=device.type)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(images in [-1, 1], labels, extra loss arguments) of this rank's next round."""
        images, labels = next(self.loader)
        images = images.to(self.device, non_blocking=True).to(torch.float32) / 127.5 - 1
        extra = {}
        if self.ref_loader is not None:
            extra['reference_images'] = next(self.ref_loader)[0].to(self.device).to(torch.float32) / 127.5 - 1
        return images, labels.to(self.device, non_blocking=True), extra

    #------------------------------------------------------------------------
    # One step.

    def optimization_step(self) -> None:
        """Accumulate the gradients of one batch and take one optimizer step; every random stream of the
        step (sigma, noise, augmentation: 'loss'; dropout: 'global') is seeded by (seed, rank, step)."""
        c = self.c
        step = self.cur_nimg // c.batch_size
        self.loss_generator.manual_seed(rng.derive_seed(c.seed, self.rank, step, 'loss'))
        with rng.seeded_global_rng(rng.derive_seed(c.seed, self.rank, step, 'global'), self.device):  # Dropout.
            self.optimizer.zero_grad(set_to_none=True)
            batches = (self.next_batch() for _ in range(self.num_rounds))
            accumulate_gradients(self.ddp, self.loss_fn, batches, c.loss_scaling, self.batch_gpu_total, self.stats,
                                 grad_scaler=self.grad_scaler, no_sync_module=self.ddp_module,
                                 augment_pipe=self.augment_pipe, generator=self.loss_generator)
        for group in self.optimizer.param_groups:
            group['lr'] = self.learning_rate()
        if self.grad_scaler is not None:
            # Unscaling records whether fp16 overflowed; the step is then skipped and the scale lowered.
            self.grad_scaler.unscale_(self.optimizer)
        self.stats.report('Loss/nonfinite_grads', sanitize_gradients(self.net))
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def learning_rate(self) -> float:
        """The step's learning rate, at cur_nimg images before it: EDM's warm-up to the optimizer's lr
        over lr_rampup_kimg, or the schedule lr_kwargs names (EDM2's learning_rate_schedule)."""
        c = self.c
        if c.lr_kwargs is None:
            return learning_rate(c.optimizer_kwargs['lr'], self.cur_nimg, c.lr_rampup_kimg)
        kwargs = dict(c.lr_kwargs)
        return dnnlib.get_obj_by_name(kwargs.pop('func_name'))(cur_nimg=self.cur_nimg, batch_size=c.batch_size, **kwargs)

    def update_averages(self) -> None:
        """The averages of the weights after a step: the EMA (EDM's half-life with ramp-up) and the
        power-function EMAs of --phema (training/phema.py), both at cur_nimg images before the step."""
        c = self.c
        update_ema(self.ema, self.net, ema_beta(self.cur_nimg, c.batch_size, c.ema_halflife_kimg, c.ema_rampup_ratio))
        if self.phema is not None:
            self.phema.update(self.net, self.cur_nimg, c.batch_size)

    #------------------------------------------------------------------------
    # Ticks.

    def report_tick(self, tick_start_time: float, start_time: float) -> None:
        """The tick's progress line in log.txt and its record in stats.jsonl."""
        tick_end_time = time.time()
        collected = self.stats.collect(['Loss/loss', 'Loss/nonfinite_grads'])
        kimg = self.cur_nimg / 1000
        tick_kimg = max((self.cur_nimg - self.tick_start_nimg) / 1000, 1e-8)
        sec_per_kimg = (tick_end_time - tick_start_time) / tick_kimg
        cpu_mem = psutil.Process(os.getpid()).memory_info().rss / 2 ** 30
        gpu_mem = torch.cuda.max_memory_allocated(self.device) / 2 ** 30 if self.device.type == 'cuda' else 0.0
        fields = [
            f'tick {self.cur_tick:<5d}', f'kimg {kimg:<9.3f}', f'time {tick_end_time - start_time:<8.1f}',
            f'sec/tick {tick_end_time - tick_start_time:<7.2f}', f'sec/kimg {sec_per_kimg:<7.3f}',
            f'loss {collected["Loss/loss"]["mean"]:<8.4f}',
            f'maintenance {self.maintenance_time:<6.2f}', f'cpumem {cpu_mem:<6.2f}', f'gpumem {gpu_mem:<6.2f}',
        ]
        if self.grad_scaler is not None:
            fields.append(f'loss_scale {self.grad_scaler.get_scale():<8g}')
        if collected['Loss/loss']['nonfinite'] > 0:
            fields.append(f'nonfinite_loss {collected["Loss/loss"]["nonfinite"]}')
        grads = collected['Loss/nonfinite_grads']
        if grads['mean'] > 0:
            fields.append(f'nonfinite_grads {int(grads["mean"] * grads["num"])}')
        self.log('  '.join(fields))
        if self.rank == 0:
            record = dict(collected, timestamp=tick_end_time, tick=self.cur_tick, kimg=kimg,
                          sec_per_kimg=sec_per_kimg, cpumem_gb=cpu_mem, gpumem_gb=gpu_mem)
            with open(self.stats_path, 'a') as f:
                f.write(json.dumps(training_stats.json_safe(record), allow_nan=False) + '\n')
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)

    def save_checkpoints(self, done: bool, stopping: Optional[str]) -> None:
        """Rank 0 writes the network snapshot every snapshot_ticks and the training state every
        state_dump_ticks, both at the end, and the state when stopping (the signal's name)."""
        c, kimg = self.c, checkpoint.kimg_of(self.cur_nimg)  # The exact point: names never collide (checkpoint.kimg_tag).
        tick = self.cur_tick - 1  # The tick just finished: 0, 1, ... (EDM's count; tick 0 is snapshotted).
        if self.rank != 0:
            return
        if c.snapshot_ticks is not None and (done or tick % c.snapshot_ticks == 0):
            checkpoint.save_network_snapshot(os.path.join(c.run_dir, checkpoint.snapshot_name(kimg)), self.ema, kimg=kimg,
                                             cur_nimg=self.cur_nimg, training_options=c.options)
            if self.phema is not None:
                checkpoint.save_phema_snapshot(os.path.join(c.run_dir, checkpoint.phema_name(kimg)), self.phema.networks(),
                                               self.cur_nimg, training_options=c.options)
        if (c.state_dump_ticks is not None and (done or tick % c.state_dump_ticks == 0)) or stopping:
            path = os.path.join(c.run_dir, checkpoint.state_name(kimg))
            checkpoint.save_atomic(checkpoint.training_state(self.net, self.ema, self.optimizer, self.cur_nimg, self.cur_tick,
                                                             self.tick_start_nimg, c.options, self.grad_scaler,
                                                             phema=self.phema.state_dict() if self.phema else None), path)
            if stopping:
                self.log(f'Received {stopping}: wrote {path}; continue with --resume=auto.')

    #------------------------------------------------------------------------

    def run(self) -> dict:
        """Optimisation steps until total_kimg or a stop signal, with a tick every kimg_per_tick."""
        c = self.c
        total_nimg = max(int(round(c.total_kimg * 1000)), 1)  # At least one step; the last step may pass it.
        self.log(f'Training for {c.total_kimg} kimg: batch {c.batch_size} = {self.batch_gpu} per rank and round x '
                 f'{self.num_rounds} rounds x {self.world_size} ranks, device {self.device}')
        if self.cur_nimg >= total_nimg:
            self.log(f'Already at {self.cur_nimg / 1000:.3f} kimg of {c.total_kimg} kimg: nothing to do.')
            return dict(status='done', cur_nimg=self.cur_nimg)
        start_time = tick_start_time = time.time()
        with StopRequest() as stop:
            while True:
                self.optimization_step()
                self.update_averages()
                self.cur_nimg += c.batch_size
                done = self.cur_nimg >= total_nimg
                stopping = stop.requested(self.device) if self.world_size > 1 or stop.signal_name else False
                # Tick 0 ends after the first step, as EDM's: a status line and a snapshot at once.
                tick_due = self.cur_tick == 0 or self.cur_nimg >= self.tick_start_nimg + c.kimg_per_tick * 1000
                if not (done or stopping or tick_due):
                    continue
                self.report_tick(tick_start_time, start_time)
                self.cur_tick += 1
                self.tick_start_nimg = self.cur_nimg
                tick_start_time = time.time()
                self.save_checkpoints(done, (stop.signal_name or 'a stop signal on another rank') if stopping else None)
                distributed.barrier()
                self.maintenance_time = time.time() - tick_start_time
                if stopping or done:
                    break
        status = 'stopped' if stopping else 'done'
        self.log('Exiting...' if status == 'done' else 'Stopped.')
        return dict(status=status, cur_nimg=self.cur_nimg)


def make_loss(loss_kwargs: dict, net: torch.nn.Module):
    """The loss named by loss_kwargs, for the D of the network it trains (the one source of D): a D in
    loss_kwargs that disagrees with net.D is an error."""
    kwargs = dict(loss_kwargs)
    if 'D' in kwargs and kwargs['D'] != net.D:
        raise ValueError(f'The loss was configured for D={kwargs["D"]} but the network is built for D={net.D}; '
                         f'leave D out of loss_kwargs, the loss takes it from the network.')
    kwargs['D'] = net.D
    return dnnlib.construct_class_by_name(**kwargs)

#----------------------------------------------------------------------------

def training_loop(
    run_dir: str,                           # Output directory (exists).
    dataset_kwargs: dict,                   # ImageFolderDataset arguments.
    network_kwargs: dict,                   # class_name (training.networks.*Precond) and its arguments, D included.
    loss_kwargs: dict,                      # class_name (training.loss.*Loss) and its arguments; D comes from the network.
    optimizer_kwargs: dict,                 # class_name (torch.optim.*) and its arguments, incl. lr.
    augment_kwargs: Optional[dict] = None,  # class_name (training.augment.AugmentPipe) and arguments, or None.
    seed: int = 0,                          # Seed of every random stream.
    batch_size: int = 512,                  # Total batch over all ranks and accumulation rounds.
    batch_gpu: Optional[int] = None,        # Batch per rank and round, None = no accumulation.
    total_kimg: float = 200000,             # Training duration, in thousands of images.
    ema_halflife_kimg: float = 500,         # EMA half-life, kimg.
    ema_rampup_ratio: Optional[float] = 0.05,  # EMA ramp-up: half-life at most cur_nimg * ratio.
    phema_stds: Optional[list] = None,      # Post-hoc EMA: relative stds of the power-function profiles to track.
    lr_rampup_kimg: float = 10000,          # Learning-rate warm-up, kimg.
    lr_kwargs: Optional[dict] = None,       # func_name (e.g. training.training_loop.learning_rate_schedule, EDM2's) and its arguments; None = EDM's warm-up.
    loss_scaling: float = 1,                # Multiplier of the loss before backpropagation.
    kimg_per_tick: float = 50,              # Progress line, statistics and checks every this many kimg.
    snapshot_ticks: Optional[int] = 50,     # Network snapshot every this many ticks, None = never.
    state_dump_ticks: Optional[int] = 500,  # Training state every this many ticks, None = never.
    resume_state: Optional[str] = None,     # Training state to continue from.
    transfer: Optional[dict] = None,        # {'net': network (checkpoint.load_network), 'source': name} whose weights start the run.
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
    c = dnnlib.EasyDict(locals())
    c.options = options or {}
    precision_lib.configure_backends(precision, cudnn_benchmark)
    training = Training(c)
    training.setup_networks()
    if resume_state is not None:
        training.resume(resume_state)
    training.setup_streams()
    return training.run()

#----------------------------------------------------------------------------
