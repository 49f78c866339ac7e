"""Train PFGM++ or diffusion models (EDM, VP, VE) with EDM's architectures and recipes.

    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs --name exp_name \\
        --data=datasets/cifar10-32x32.zip --cond=0 --arch=ddpmpp --pfgmpp=1 --batch 512 --aug_dim 2048
"""

import inspect
import json
import os
import re
import traceback
from typing import Optional

import click
import torch

import dnnlib
from torch_utils import distributed
from torch_utils.precision import PRECISIONS
from training import checkpoint, networks, pfgmpp
from training.dataset import ImageFolderDataset
from training.training_loop import check_state_matches, training_loop

#----------------------------------------------------------------------------
# Option parsing helpers.

def parse_int_list(s: str) -> list[int]:
    """'1,2,2' or '1-3' -> a list of ints."""
    if isinstance(s, list):
        return s
    result = []
    for part in s.split(','):
        match = re.fullmatch(r'\s*(\d+)\s*-\s*(\d+)\s*', part)
        if match:
            result.extend(range(int(match.group(1)), int(match.group(2)) + 1))
        else:
            try:
                result.append(int(part))
            except ValueError:
                raise click.BadParameter(f'{s!r} is not a comma-separated list of integers.') from None
    return result

#----------------------------------------------------------------------------
# Configuration: EDM's train.py recipes as plain dicts.

ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}
PRECONDITIONERS = {
    'vp':  ('training.networks.VPPrecond', 'training.loss.VPLoss'),
    've':  ('training.networks.VEPrecond', 'training.loss.VELoss'),
    'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
}


def make_config(opts: dnnlib.EasyDict, world_size: int) -> dnnlib.EasyDict:
    """The training_loop() arguments for the command-line options; raises click.ClickException for
    inconsistent options."""
    c = dnnlib.EasyDict()
    D = None
    if opts.pfgmpp:
        try:
            D = pfgmpp.check_D(opts.aug_dim)
        except ValueError:
            raise click.ClickException(f'--aug_dim must be a positive number (the PFGM++ D), got {opts.aug_dim}.') from None
    if opts.sigma_scale <= 0:
        raise click.ClickException(f'--sigma-scale must be > 0, got {opts.sigma_scale}.')

    c.dataset_kwargs = dict(path=opts.data, use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    network_class, loss_class = PRECONDITIONERS[opts.precond]
    c.network_kwargs = dict(class_name=network_class, **ARCHITECTURES[opts.arch])
    if opts.cbase is not None:
        c.network_kwargs['model_channels'] = opts.cbase
    if opts.cres is not None:
        c.network_kwargs['channel_mult'] = opts.cres
    if opts.nblock is not None:
        c.network_kwargs['num_blocks'] = opts.nblock
    c.network_kwargs.update(dropout=opts.dropout, D=D)
    c.loss_kwargs = dict(class_name=loss_class, D=D)
    if opts.sigma_scale != 1:
        c.loss_kwargs['sigma_scale'] = opts.sigma_scale
    c.optimizer_kwargs = dict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8)
    c.augment_kwargs = None
    if opts.augment:
        c.augment_kwargs = dict(class_name='training.augment.AugmentPipe', p=opts.augment, xflip=1e8, yflip=1,
                                scale=1, rotate_frac=1, aniso=1, translate_frac=1)
        c.network_kwargs['augment_dim'] = 9

    if opts.batch % world_size != 0:
        raise click.ClickException(f'--batch={opts.batch} is not divisible by the {world_size} ranks.')
    batch_gpu = opts.batch_gpu or opts.batch // world_size
    if opts.batch % (batch_gpu * world_size) != 0:
        raise click.ClickException(f'--batch={opts.batch} must be a multiple of --batch-gpu x ranks = {batch_gpu} x {world_size}.')
    if opts.stf:
        # The reference set carries no labels, so its posterior mean is the unconditional one.
        if opts.cond:
            raise click.ClickException('--stf is for unconditional training; use --cond=0.')
        if opts.rbatch <= batch_gpu:
            raise click.ClickException(f'--rbatch={opts.rbatch} must exceed the per-rank batch {batch_gpu}; it counts the batch itself.')

    c.update(seed=opts.seed, batch_size=opts.batch, batch_gpu=batch_gpu, total_kimg=max(int(opts.duration * 1000), 1),
             ema_halflife_kimg=opts.ema * 1000, ema_rampup_ratio=ema_rampup_ratio(opts), lr_rampup_kimg=opts.lr_rampup,
             loss_scaling=opts.ls, kimg_per_tick=opts.tick, snapshot_ticks=opts.snap or None,
             state_dump_ticks=opts.dump or None, workers=opts.workers, cudnn_benchmark=opts.bench,
             precision=resolve_precision(opts), channels_last=opts.channels_last, compile=opts.compile,
             stf_rbatch=(opts.rbatch - batch_gpu) if opts.stf else None)
    return c


def ema_rampup_ratio(opts) -> Optional[float]:
    """--ema-rampup, or None (no ramp-up) for 0 and for --transfer: fine-tuning starts from trained
    weights, so the EMA keeps the plain half-life from the first step (as EDM's train.py does). A run
    resumed with the same --transfer keeps it off too, so the resume stays exact."""
    if opts.transfer:
        return None
    return opts.ema_rampup or None


def num_blocks(opts) -> int:
    """Residual blocks per resolution: --nblock, or the architecture's default (SongUNet 4, DhariwalUNet 3)."""
    if opts.nblock is not None:
        return opts.nblock
    model_class = networks.MODEL_TYPES[ARCHITECTURES[opts.arch]['model_type']]
    return inspect.signature(model_class).parameters['num_blocks'].default


def resolve_precision(opts) -> str:
    """--precision, or fp16 for EDM's --fp16=1 (its alias), or fp32; the two may not disagree."""
    if opts.fp16 and opts.precision not in (None, 'fp16'):
        raise click.ClickException(f'--fp16=1 means --precision=fp16, but --precision={opts.precision} was given; drop one.')
    return opts.precision or ('fp16' if opts.fp16 else 'fp32')


def run_description(opts, dataset_name: str, world_size: int) -> str:
    cond = 'cond' if opts.cond else 'uncond'
    kind = f'pfgmpp{opts.aug_dim:g}' if opts.pfgmpp else opts.precond
    desc = f'{dataset_name:s}-{cond:s}-{opts.arch:s}-{kind}-gpus{world_size:d}-batch{opts.batch:d}'
    return desc + (f'-{opts.desc}' if opts.desc else '')


def choose_run_dir(opts, desc: str) -> str:
    """--nosubdir: --outdir itself; --name: OUTDIR/NAME (fixed, so --resume=auto can find it again);
    otherwise EDM's OUTDIR/<next id>-<description>."""
    if os.path.exists(opts.outdir) and not os.path.isdir(opts.outdir):
        raise click.ClickException(f'--outdir={opts.outdir} is a file; choose a directory.')
    if opts.nosubdir:
        return opts.outdir
    if opts.name:
        return os.path.join(opts.outdir, opts.name)
    ids = [int(m.group()) for x in (os.listdir(opts.outdir) if os.path.isdir(opts.outdir) else [])
           if os.path.isdir(os.path.join(opts.outdir, x)) and (m := re.match(r'^\d+', x))]
    return os.path.join(opts.outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')


def newest_valid_state(run_dir: str, log=print) -> Optional[str]:
    """The training state with the largest kimg in run_dir that loads; unreadable ones are reported
    and skipped."""
    if not os.path.isdir(run_dir):
        return None
    names = [x for x in os.listdir(run_dir) if x.startswith('training-state-') and checkpoint.kimg_from_name(x) is not None]
    for name in sorted(names, key=checkpoint.kimg_from_name, reverse=True):
        path = os.path.join(run_dir, name)
        try:
            checkpoint.load_plain(path, expected_format=checkpoint.STATE_FORMAT)
            return path
        except checkpoint.CheckpointError as err:
            log(f'Skipping {path}: {err}')
    return None

#----------------------------------------------------------------------------

@click.command(context_settings=dict(show_default=True, max_content_width=110))

# Main options.
@click.option('--outdir',        help='Where to save the results', metavar='DIR', type=str, required=True)
@click.option('--data',          help='Path to the dataset (ZIP or folder)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--cond',          help='Train class-conditional model', metavar='BOOL', type=bool, default=False)
@click.option('--arch',          help='Network architecture', type=click.Choice(list(ARCHITECTURES)), default='ddpmpp')
@click.option('--precond',       help='Preconditioning & loss function', type=click.Choice(list(PRECONDITIONERS)), default='edm')

# PFGM++.
@click.option('--pfgmpp',        help='Train PFGM++ (else diffusion, D -> infinity)', metavar='BOOL', type=bool, default=False)
@click.option('--aug_dim', 'aug_dim', help='PFGM++ augmented dimension D (a positive real)', metavar='FLOAT', type=float, default=128)
@click.option('--name',          help='Run directory name under --outdir (fixed, so --resume=auto finds it)', metavar='STR', type=str)
@click.option('--stf',           help='Stable target field: regress the exact posterior mean over a reference batch', metavar='BOOL', type=bool, default=False)
@click.option('--rbatch',        help='STF reference batch per rank, including the batch itself', metavar='INT', type=click.IntRange(min=2), default=4096)
@click.option('--sigma-scale', 'sigma_scale', help='Multiply the training sigmas (e.g. 380/80=4.75 for 256x256 data)', metavar='FLOAT', type=float, default=1.0)

# Hyperparameters.
@click.option('--duration',      help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True), default=200)
@click.option('--batch',         help='Total batch size', metavar='INT', type=click.IntRange(min=1), default=512)
@click.option('--batch-gpu',     help='Limit batch size per GPU', metavar='INT', type=click.IntRange(min=1))
@click.option('--cbase',         help='Channel multiplier  [default: varies]', metavar='INT', type=int)
@click.option('--cres',          help='Channels per resolution  [default: varies]', metavar='LIST', type=parse_int_list)
@click.option('--nblock',        help='Residual blocks per resolution  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--lr',            help='Learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=10e-4)
@click.option('--lr-rampup',     help='Learning rate ramp-up', metavar='KIMG', type=click.FloatRange(min=0), default=10000)
@click.option('--ema',           help='EMA half-life', metavar='MIMG', type=click.FloatRange(min=0), default=0.5)
@click.option('--ema-rampup',    help='EMA ramp-up ratio (0 = none)', metavar='FLOAT', type=click.FloatRange(min=0), default=0.05)
@click.option('--dropout',       help='Dropout probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.13)
@click.option('--augment',       help='Augment probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.12)
@click.option('--xflip',         help='Enable dataset x-flips', metavar='BOOL', type=bool, default=False)

# Performance-related.
@click.option('--precision',     help='Arithmetic: fp32, tf32 (CUDA), bf16 or fp16 autocast  [default: fp32]', type=click.Choice(list(PRECISIONS)))
@click.option('--fp16',          help='Alias of --precision=fp16 (EDM\'s option)', metavar='BOOL', type=bool, default=False)
@click.option('--channels-last', 'channels_last', help='Channels-last (NHWC) memory layout', metavar='BOOL', type=bool, default=False)
@click.option('--compile',       help='torch.compile the network', metavar='BOOL', type=bool, default=False)
@click.option('--ls',            help='Loss scaling', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1)
@click.option('--bench',         help='Enable cuDNN benchmarking', metavar='BOOL', type=bool, default=True)
@click.option('--cache',         help='Cache dataset in CPU memory', metavar='BOOL', type=bool, default=True)
@click.option('--workers',       help='DataLoader worker processes', metavar='INT', type=click.IntRange(min=0), default=1)
@click.option('--device',        help='Device', type=click.Choice(['auto', 'cuda', 'cpu']), default='auto')

# I/O-related.
@click.option('--desc',          help='String to include in result dir name', metavar='STR', type=str)
@click.option('--nosubdir',      help='Do not create a subdirectory for results', is_flag=True)
@click.option('--tick',          help='How often to print progress', metavar='KIMG', type=click.FloatRange(min=0, min_open=True), default=50)
@click.option('--snap',          help='How often to save snapshots (0 = never)', metavar='TICKS', type=click.IntRange(min=0), default=50)
@click.option('--dump',          help='How often to dump state (0 = never)', metavar='TICKS', type=click.IntRange(min=0), default=500)
@click.option('--seed',          help='Random seed', metavar='INT', type=int, default=0)
@click.option('--transfer',      help='Transfer learning from network snapshot (EMA ramp-up off)', metavar='PKL|PT|URL', type=str)
@click.option('--resume',        help='Resume from training state, or "auto" for the newest in the run directory', metavar='PT|auto', type=str)
@click.option('--allow-pickle',  help='Allow loading legacy pickles for --transfer (they run code)', is_flag=True)
@click.option('-n', '--dry-run', help='Print training options and exit', is_flag=True)
@click.option('--debug',         help='Show tracebacks of errors', is_flag=True)
def main(**kwargs):
    """Train PFGM++ or diffusion models with EDM's networks and recipes.

    \b
    # PFGM++ on CIFAR-10 with D=2048, 8 GPUs:
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs --name=exp_name \\
        --data=datasets/cifar10-32x32.zip --cond=0 --arch=ddpmpp --pfgmpp=1 --batch=512 --aug_dim=2048
    \b
    # EDM (diffusion) on CIFAR-10:
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp
    """
    opts = dnnlib.EasyDict(kwargs)
    try:
        train(opts)
    except (click.ClickException, click.Abort):
        raise
    except (ValueError, OSError, checkpoint.CheckpointError) as err:
        if opts.debug:
            traceback.print_exc()
        raise click.ClickException(str(err)) from None
    finally:
        distributed.shutdown()


def train(opts: dnnlib.EasyDict) -> dict:
    """The body of train.py, callable from Python with the command-line options as a dict."""
    try:
        device = distributed.init(opts.device)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    c = make_config(opts, world_size)

    # Validate the dataset now, with a clear message, before anything is written.
    try:
        dataset = ImageFolderDataset(**c.dataset_kwargs)
    except ValueError as err:
        raise click.ClickException(f'--data: {err}') from None
    dataset_name = dataset.name
    data_shape = dict(img_resolution=dataset.resolution, img_channels=dataset.num_channels, label_dim=dataset.label_dim)
    del dataset

    run_dir = choose_run_dir(opts, run_description(opts, dataset_name, world_size))
    resume = opts.resume
    if resume == 'auto':
        if not (opts.name or opts.nosubdir):
            raise click.ClickException('--resume=auto needs a fixed run directory: pass --name (or --nosubdir).')
        resume = newest_valid_state(run_dir, log=distributed.print0)
        distributed.print0(f'--resume=auto: {"continuing from " + resume if resume else "no training state found, starting a new run"}')
    if resume is not None:
        try:
            state = checkpoint.load_plain(resume, expected_format=checkpoint.STATE_FORMAT)
            with torch.device('meta'):  # Shapes and arguments only, no memory.
                net = dnnlib.construct_class_by_name(**c.network_kwargs, **data_shape)
            check_state_matches(state, net, resume)
        except checkpoint.CheckpointError as err:
            raise click.ClickException(f'--resume: {err}') from None
        del state, net
    if resume is None and opts.name and os.path.isdir(run_dir) and any(x.startswith(('training-state-', 'network-snapshot-')) for x in os.listdir(run_dir)):
        raise click.ClickException(f'{run_dir} already holds a run; pass --resume=auto to continue it, or choose another --name.')

    transfer = None
    if opts.transfer and not resume:
        try:
            net, info = checkpoint.load_network(opts.transfer, allow_pickle=opts.allow_pickle)
        except (ValueError, OSError) as err:
            raise click.ClickException(f'--transfer: {err}') from None
        with torch.device('meta'):
            target = dnnlib.construct_class_by_name(**c.network_kwargs, **data_shape).state_dict()
        source = net.state_dict()
        mismatched = [k for k, v in source.items() if k in target and target[k].shape != v.shape]
        if mismatched or not any(k in target for k in source):
            raise click.ClickException(f'--transfer: {opts.transfer} does not fit this network ({len(mismatched)} tensors differ in shape, '
                                       f'e.g. {mismatched[0] if mismatched else "no names in common"}); check --arch, --cbase, --cres and the resolution.')
        transfer = dict(net=net, source=opts.transfer)

    c.update(run_dir=run_dir, resume_state=resume, transfer=transfer, device=device)
    options = dict(opts, run_dir=run_dir, resume_state=resume, world_size=world_size)
    options = json.loads(json.dumps(options, default=str))

    if rank == 0:
        print()
        print('Training options:')
        print(json.dumps(options, indent=2))
        print()
        print(f'Output directory:        {run_dir}')
        print(f'Dataset path:            {opts.data}')
        print(f'Class-conditional:       {opts.cond}')
        print(f'Network architecture:    {opts.arch}')
        print(f'Blocks per resolution:   {num_blocks(opts)}')
        print(f'Preconditioning & loss:  {opts.precond}')
        print(f'PFGM++ D:                {opts.aug_dim if opts.pfgmpp else "infinity (diffusion)"}')
        print(f'Number of ranks:         {world_size}')
        print(f'Batch size:              {c.batch_size}')
        print(f'EMA ramp-up:             {c.ema_rampup_ratio if c.ema_rampup_ratio is not None else "off" + (" (--transfer)" if opts.transfer else "")}')
        if opts.stf:
            print(f'STF reference batch:     {opts.rbatch} per rank and round{" (augmented)" if opts.augment else ""}')
        print(f'Precision:               {c.precision}')
        print(f'Device:                  {device}')
        print()
    if opts.dry_run:
        distributed.print0('Dry run; exiting.')
        return dict(status='dry-run', run_dir=run_dir)

    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, 'training_options.json'), 'w') as f:
            json.dump(options, f, indent=2)
    distributed.barrier()

    result = training_loop(**c, options=options)
    result['run_dir'] = run_dir
    return result

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
