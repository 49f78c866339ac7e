"""What train.py does, as plain functions: its options (TrainOptions, by their Python names), the
training_loop() arguments made from them, the run directory, and train(**options), which trains and
returns {'status': 'done' | 'stopped' | 'dry-run', 'run_dir', 'cur_nimg'}."""

import dataclasses
import inspect
import json
import os
import re
from typing import Optional

import torch

import dnnlib
from torch_utils import cli, distributed
from training import checkpoint, networks, phema
from training.dataset import ImageFolderDataset
from training.presets import ARCHITECTURES, EDM2_PRESETS, EDM2_RECIPE, PRECONDITIONERS, RECIPES
from training.training_loop import training_loop

EXIT_STOPPED = 75  # EX_TEMPFAIL of sysexits.h: stopped early, try again (--resume=auto).

#----------------------------------------------------------------------------
# The options.

@dataclasses.dataclass
class TrainOptions:
    """train.py's options by their Python names, with the command line's defaults."""
    outdir: str
    data: str
    cond: bool = False
    arch: str = 'ddpmpp'
    precond: str = 'edm'
    preset: Optional[str] = None       # An EDM2 preset (presets.EDM2_PRESETS); after construction, the one in use (or None).
    D: Optional[float] = None          # PFGM++ D (None or inf: diffusion); after construction, the resolved D.
    pfgmpp: Optional[bool] = None      # Published alias (cli.resolve_D); None after construction.
    aug_dim: Optional[float] = None    # Published alias of D; None after construction.
    name: Optional[str] = None
    stf: bool = False
    rbatch: int = 4096
    sigma_scale: float = 1.0
    duration: float = 200
    batch: int = 512
    batch_gpu: Optional[int] = None
    cbase: Optional[int] = None
    cres: Optional[list] = None
    nblock: Optional[int] = None
    lr: float = 10e-4
    lr_rampup: float = 10000
    decay: Optional[float] = None      # EDM2's learning-rate decay t_ref, in batches (--arch=edm2 only).
    P_mean: Optional[float] = None     # EDM2's lognormal sigma (--arch=edm2 only).
    P_std: Optional[float] = None
    ema: float = 0.5
    ema_rampup: float = 0.05
    phema: Optional[list] = None
    dropout: float = 0.13
    cond_drop: float = 0.0
    augment: float = 0.12
    xflip: bool = False
    precision: Optional[str] = None
    fp16: bool = False
    channels_last: bool = False
    compile: bool = False
    ls: float = 1
    bench: bool = True
    cache: bool = True
    workers: int = 1
    device: str = 'auto'
    desc: Optional[str] = None
    nosubdir: bool = False
    tick: float = 50
    snap: int = 50
    dump: int = 500
    seed: int = 0
    transfer: Optional[str] = None
    resume: Optional[str] = None
    allow_pickle: bool = False
    dry_run: bool = False
    given: dataclasses.InitVar[Optional[frozenset]] = None  # The options given (train()); None: those not at their defaults.

    def __post_init__(self, given: Optional[frozenset]):
        """The EDM2 preset applied (apply_preset), and D from --D or its aliases, resolved here once
        (cli.resolve_D); D None means diffusion."""
        apply_preset(self, given)
        _given, self.D = cli.resolve_D(self.D, self.pfgmpp, self.aug_dim)
        self.pfgmpp = self.aug_dim = None


DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.default is not dataclasses.MISSING}
LIST_OPTIONS = {'cres': cli.parse_int_list, 'phema': cli.parse_float_list}  # Recipes hold these as the command line does.


def apply_preset(opts: TrainOptions, given: Optional[frozenset] = None) -> None:
    """--preset NAME, or for --arch=edm2 without one EDM2_RECIPE's default: the preset's options
    (training/presets.py RECIPES) replace those not `given` (without that record: those at their
    defaults), its arch, edm2, too. ValueError for an unknown preset and for one given with another --arch."""
    if opts.preset is None and opts.arch != 'edm2':
        return
    name = opts.preset or EDM2_RECIPE['default_preset']
    if name not in EDM2_PRESETS:
        raise ValueError(f'Unknown --preset={name}; choose one of {", ".join(EDM2_PRESETS)}.')
    for key, value in RECIPES[name].items():
        if (key not in given) if given is not None else (getattr(opts, key) == DEFAULTS[key]):
            setattr(opts, key, LIST_OPTIONS[key](value) if key in LIST_OPTIONS and isinstance(value, str) else value)
    if opts.arch != 'edm2':
        raise ValueError(f'--preset={name} is an EDM2 preset, for --arch=edm2, not --arch={opts.arch}; drop one of them.')
    opts.preset = name

#----------------------------------------------------------------------------
# Configuration: the training_loop() arguments.

def setup_training_config(opts: TrainOptions, world_size: int) -> dnnlib.EasyDict:
    """The training_loop() arguments for the options (D only in network_kwargs: the loss takes it from
    the network); ValueError for inconsistent options."""
    c = dnnlib.EasyDict()
    if opts.sigma_scale <= 0:
        raise ValueError(f'--sigma-scale must be > 0, got {opts.sigma_scale}.')
    c.dataset_kwargs = dict(path=opts.data, use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    network_class, loss_class = network_and_loss(opts)
    c.network_kwargs = dict(class_name=network_class, **ARCHITECTURES[opts.arch])
    if opts.cbase is not None:
        c.network_kwargs['model_channels'] = opts.cbase
    if opts.cres is not None:
        c.network_kwargs['channel_mult'] = opts.cres
    if opts.nblock is not None:
        c.network_kwargs['num_blocks'] = opts.nblock
    c.network_kwargs.update(dropout=opts.dropout, D=opts.D)
    if opts.cond_drop:
        # EDM's networks zero each sample's class label with this probability (training only), from the
        # step's seeded generator: the same network is then also the unconditional one, for guidance.
        if not opts.cond:
            raise ValueError(f'--cond-drop={opts.cond_drop} drops class labels, but the model is unconditional; use --cond=1 or drop --cond-drop.')
        c.network_kwargs['label_dropout'] = opts.cond_drop
    c.loss_kwargs = dict(class_name=loss_class)
    if opts.sigma_scale != 1:
        c.loss_kwargs['sigma_scale'] = opts.sigma_scale
    c.optimizer_kwargs = dict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8)
    if opts.arch == 'edm2':
        setup_edm2_recipe(opts, c)
    c.augment_kwargs = None
    if opts.augment:
        c.augment_kwargs = dict(class_name='training.augment.AugmentPipe', p=opts.augment, xflip=1e8, yflip=1,
                                scale=1, rotate_frac=1, aniso=1, translate_frac=1)
        c.network_kwargs['augment_dim'] = 9
    batch_gpu = check_batch(opts, world_size)
    c.update(seed=opts.seed, batch_size=opts.batch, batch_gpu=batch_gpu, total_kimg=round(opts.duration * 1000, 6),  # Exact; round: 1.001 * 1000 is 1000.999...
             ema_halflife_kimg=opts.ema * 1000, ema_rampup_ratio=ema_rampup_ratio(opts), lr_rampup_kimg=opts.lr_rampup,
             phema_stds=check_phema(opts.phema),
             loss_scaling=opts.ls, kimg_per_tick=opts.tick, snapshot_ticks=opts.snap or None,
             state_dump_ticks=opts.dump or None, workers=opts.workers, cudnn_benchmark=opts.bench,
             precision=resolve_precision(opts), channels_last=opts.channels_last, compile=opts.compile,
             stf_rbatch=(opts.rbatch - batch_gpu) if opts.stf else None)
    return c


def network_and_loss(opts: TrainOptions) -> tuple[str, str]:
    """The preconditioner's and the loss's class names: --precond's for EDM's architectures, EDM2's own
    for --arch=edm2 (EDM's preconditioning with the uncertainty head); ValueError for options that
    only one of them takes."""
    if opts.arch != 'edm2':
        for name, value in (('--decay', opts.decay), ('--P-mean', opts.P_mean), ('--P-std', opts.P_std)):
            if value is not None:
                raise ValueError(f'{name} is an option of EDM2\'s recipe, for --arch=edm2; drop it for --arch={opts.arch}.')
        return PRECONDITIONERS[opts.precond]
    if opts.precond != 'edm':
        raise ValueError(f'--arch=edm2 uses EDM\'s preconditioning (with EDM2\'s uncertainty head), not --precond={opts.precond}; drop --precond.')
    if opts.augment:
        raise ValueError(f'--augment={opts.augment:g}: EDM2\'s network takes no augmentation labels, so --arch=edm2 trains without '
                         f'EDM\'s augmentation; pass --augment=0 (--xflip=1 flips the dataset).')
    return EDM2_RECIPE['network_class'], EDM2_RECIPE['loss_class']


def setup_edm2_recipe(opts: TrainOptions, c: dnnlib.EasyDict) -> None:
    """EDM2's recipe in the training_loop() arguments: fp32 unless --precision says otherwise (EDM2's
    use_fp16 off), the loss's lognormal sigma, Adam with betas (0.9, 0.99), and EDM2's learning-rate
    schedule with --lr as alpha_ref, --decay as t_ref (batches) and --lr-rampup as its warm-up."""
    c.network_kwargs['use_fp16'] = False
    c.loss_kwargs.update({key: value for key, value in (('P_mean', opts.P_mean), ('P_std', opts.P_std)) if value is not None})
    c.optimizer_kwargs = dict(EDM2_RECIPE['optimizer_kwargs'], lr=opts.lr)
    c.lr_kwargs = dict(func_name=EDM2_RECIPE['lr_func'], ref_lr=opts.lr, ref_batches=opts.decay if opts.decay is not None else 0,
                       rampup_Mimg=opts.lr_rampup / 1000)


def check_batch(opts: TrainOptions, world_size: int) -> int:
    """The batch per rank and round, after checking --batch, --batch-gpu and --rbatch agree with the ranks."""
    if opts.batch % world_size != 0:
        raise ValueError(f'--batch={opts.batch} is not divisible by the {world_size} ranks.')
    batch_gpu = opts.batch_gpu or opts.batch // world_size
    if opts.batch % (batch_gpu * world_size) != 0:
        raise ValueError(f'--batch={opts.batch} must be a multiple of --batch-gpu x ranks = {batch_gpu} x {world_size}.')
    if opts.stf:
        # The reference set carries no labels, so its posterior mean is the unconditional one.
        if opts.cond:
            raise ValueError('--stf is for unconditional training; use --cond=0.')
        if opts.rbatch <= batch_gpu:
            raise ValueError(f'--rbatch={opts.rbatch} must exceed the per-rank batch {batch_gpu}; it counts the batch itself.')
    return batch_gpu


def check_phema(stds: Optional[list]) -> Optional[list]:
    """--phema: distinct relative stds in (0, sqrt(1/12)) (EDM2's range), or None."""
    if not stds:
        return None
    stds = [float(x) for x in stds]
    if any(not 0 < x < phema.STD_MAX for x in stds) or len(set(stds)) != len(stds):
        raise ValueError(f'--phema={",".join(f"{x:g}" for x in stds)}: the relative stds must be distinct and in (0, {phema.STD_MAX:.4f}), '
                         f'e.g. 0.05,0.10 (EDM2\'s pair).')
    return stds


def ema_rampup_ratio(opts: TrainOptions) -> Optional[float]:
    """--ema-rampup, or None (no ramp-up) for 0 and for --transfer: fine-tuning starts from trained
    weights, so the EMA keeps the plain half-life from the first step (as EDM's train.py does). A run
    resumed with the same --transfer keeps it off too, so the resume stays exact."""
    if opts.transfer:
        return None
    return opts.ema_rampup or None


def num_blocks(opts: TrainOptions) -> int:
    """Residual blocks per resolution: --nblock, or the architecture's default (SongUNet 4, DhariwalUNet 3, EDM2 3)."""
    if opts.nblock is not None:
        return opts.nblock
    if 'num_blocks' in ARCHITECTURES[opts.arch]:
        return ARCHITECTURES[opts.arch]['num_blocks']
    model_class = networks.MODEL_TYPES[ARCHITECTURES[opts.arch]['model_type']]
    return inspect.signature(model_class).parameters['num_blocks'].default


def resolve_precision(opts: TrainOptions) -> str:
    """--precision, or fp16 for EDM's --fp16=1 (its alias), or fp32; the two may not disagree."""
    if opts.fp16 and opts.precision not in (None, 'fp16'):
        raise ValueError(f'--fp16=1 means --precision=fp16, but --precision={opts.precision} was given; drop one.')
    return opts.precision or ('fp16' if opts.fp16 else 'fp32')

#----------------------------------------------------------------------------
# The run directory: where it is, what to resume, what to transfer.

def run_description(opts: TrainOptions, dataset_name: str, world_size: int) -> str:
    cond = 'cond' if opts.cond else 'uncond'
    kind = f'pfgmpp{opts.D:g}' if opts.D is not None else opts.precond
    desc = f'{dataset_name:s}-{cond:s}-{opts.arch:s}-{kind}-gpus{world_size:d}-batch{opts.batch:d}'
    return desc + (f'-{opts.desc}' if opts.desc else '')


def build_meta_network(network_kwargs: dict, dataset: ImageFolderDataset, opts: TrainOptions) -> torch.nn.Module:
    """The network for the dataset's images on the meta device (shapes only, no memory), after one
    forward pass that shows it fits them: ValueError in one line, before anything is written, for a
    --cres with more resolution levels than the images can be halved, or any other misfit."""
    res, levels = dataset.resolution, len(network_kwargs.get('channel_mult', ()))
    if levels and (res % (1 << (levels - 1)) or res >> (levels - 1) < 1):
        raise ValueError(f'--cres has {levels} resolution levels, but {res}x{res} images can be halved only '
                         f'{res.bit_length() - 1} times; pass at most {res.bit_length()} values, e.g. --cres={",".join(["2"] * min(levels - 1, res.bit_length()))}.')
    with torch.device('meta'):
        net = dnnlib.construct_class_by_name(**network_kwargs, img_resolution=res, img_channels=dataset.num_channels,
                                             label_dim=dataset.label_dim)
        labels = torch.zeros([1, dataset.label_dim]) if dataset.label_dim else None
        try:
            with torch.no_grad():
                net(torch.zeros([1, dataset.num_channels, res, res]), torch.ones([1]), labels)
        except RuntimeError as err:
            raise ValueError(f'The network ({opts.arch}, --cbase/--cres/--nblock) does not fit {res}x{res} images: '
                             f'{cli.first_line(err)}.') from None
    return net


def check_writable(run_dir: str) -> None:
    """ValueError in one line unless run_dir exists as a writable folder or can be created (its nearest
    existing ancestor is a writable folder); nothing is created here."""
    path = os.path.abspath(run_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ValueError(f'Cannot create the run directory {run_dir}: {path} is a file; choose another --outdir.')
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f'Cannot create the run directory {run_dir}: {path} is not writable; choose another --outdir.')


def rampup_warning(lr_rampup_kimg: float, total_kimg: float, lr: float) -> Optional[str]:
    """One line when the learning-rate ramp-up is longer than the run (the rate never reaches --lr), else None."""
    if lr_rampup_kimg <= total_kimg:
        return None
    return (f'Warning: the learning-rate ramp-up (--lr-rampup={lr_rampup_kimg:g} kimg) is longer than the run ({total_kimg:g} kimg), '
            f'so the learning rate ends at {lr * total_kimg / lr_rampup_kimg:.3g} instead of --lr={lr:g}; '
            f'pass --lr-rampup={total_kimg / 10:g} or less (or 0) for a short run.')


def choose_run_dir(opts: TrainOptions, desc: str) -> str:
    """--nosubdir: --outdir itself; --name: OUTDIR/NAME (fixed, so --resume=auto can find it again);
    otherwise EDM's OUTDIR/<next id>-<description>."""
    if os.path.exists(opts.outdir) and not os.path.isdir(opts.outdir):
        raise ValueError(f'--outdir={opts.outdir} is a file; choose a directory.')
    if opts.nosubdir:
        return opts.outdir
    if opts.name:
        return os.path.join(opts.outdir, opts.name)
    ids = [int(m.group()) for x in (os.listdir(opts.outdir) if os.path.isdir(opts.outdir) else [])
           if os.path.isdir(os.path.join(opts.outdir, x)) and (m := re.match(r'^\d+', x))]
    return os.path.join(opts.outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')


def resolve_resume(opts: TrainOptions, run_dir: str, meta_net: torch.nn.Module) -> Optional[str]:
    """The training state to continue from (--resume=auto: the newest valid one in run_dir, if any),
    checked to hold this architecture; refuses to start a new run over an existing named one."""
    resume = opts.resume
    if resume == 'auto':
        if not (opts.name or opts.nosubdir):
            raise ValueError('--resume=auto needs a fixed run directory: pass --name (or --nosubdir).')
        resume = checkpoint.newest_valid_state(run_dir, log=distributed.print0)
        distributed.print0(f'--resume=auto: {"continuing from " + resume if resume else "no training state found, starting a new run"}')
    if resume is not None:
        try:
            checkpoint.load_training_state(resume, meta_net)
        except checkpoint.CheckpointError as err:
            raise checkpoint.CheckpointError(f'--resume: {err}') from None
    elif opts.name and checkpoint.find_checkpoints(run_dir, 'network'):
        raise ValueError(f'{run_dir} already holds a run; pass --resume=auto to continue it, or choose another --name.')
    return resume


def load_transfer(opts: TrainOptions, meta_net: torch.nn.Module) -> dict:
    """--transfer: the network whose weights start the run, checked to fit this architecture."""
    try:
        net, _info = checkpoint.load_network(opts.transfer, allow_pickle=opts.allow_pickle)
        checkpoint.check_transfer_fits(net, meta_net, opts.transfer)
    except (ValueError, OSError) as err:
        raise ValueError(f'--transfer: {cli.first_line(err)}') from None
    return dict(net=net, source=opts.transfer)

#----------------------------------------------------------------------------

def print_summary(opts: TrainOptions, c: dnnlib.EasyDict, options: dict, run_dir: str, world_size: int, device: torch.device) -> None:
    """The options and the choices made from them, as EDM's train.py prints them."""
    print()
    print('Training options:')
    print(json.dumps(options, indent=2))
    print()
    print(f'Output directory:        {run_dir}')
    print(f'Dataset path:            {opts.data}')
    print(f'Class-conditional:       {opts.cond}{f" (labels dropped with probability {opts.cond_drop:g})" if opts.cond_drop else ""}')
    print(f'Network architecture:    {opts.arch}')
    print(f'Blocks per resolution:   {num_blocks(opts)}')
    edm2 = " with EDM2's uncertainty head, loss and learning-rate schedule" if opts.arch == 'edm2' else ''
    print(f'Preconditioning & loss:  {opts.precond}{edm2}')
    if opts.preset:
        print(f'EDM2 preset:             {opts.preset} (its options where none were given)')
    print(f'PFGM++ D:                {opts.D if opts.D is not None else "infinity (diffusion)"}')
    print(f'Number of ranks:         {world_size}')
    print(f'Batch size:              {c.batch_size}')
    if c.phema_stds:
        print(f'Post-hoc EMA stds:       {", ".join(f"{x:g}" for x in c.phema_stds)} (reconstruct_phema.py)')
    print(f'EMA ramp-up:             {c.ema_rampup_ratio if c.ema_rampup_ratio is not None else "off" + (" (--transfer)" if opts.transfer else "")}')
    if opts.stf:
        print(f'STF reference batch:     {opts.rbatch} per rank and round{" (augmented)" if opts.augment else ""}')
    print(f'Precision:               {c.precision}')
    print(f'Device:                  {device}')
    print()


def train(**kwargs) -> dict:
    """Train with train.py's options given by name (TrainOptions); the body of the command, callable
    from Python. Returns {'status': 'done' | 'stopped' | 'dry-run', 'run_dir', 'cur_nimg'}; raises
    ValueError / OSError for bad options and files, with one sentence."""
    try:
        opts = TrainOptions(**kwargs, given=frozenset(kwargs))
    except TypeError as err:
        raise ValueError(f'train(): {err}') from None
    device = distributed.init(opts.device)
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    D = opts.D  # Resolved and validated once, by TrainOptions.
    c = setup_training_config(opts, world_size)

    # Validate the dataset now, with a clear message, before anything is written.
    try:
        dataset = ImageFolderDataset(**c.dataset_kwargs)
    except ValueError as err:
        raise ValueError(f'--data: {err}') from None
    meta_net = build_meta_network(c.network_kwargs, dataset, opts)
    assert meta_net.D == D
    run_dir = choose_run_dir(opts, run_description(opts, dataset.name, world_size))
    check_writable(run_dir)
    resume = resolve_resume(opts, run_dir, meta_net)
    transfer = load_transfer(opts, meta_net) if (opts.transfer and not resume) else None
    c.update(run_dir=run_dir, resume_state=resume, transfer=transfer, device=device)
    options = json.loads(json.dumps(dict(dataclasses.asdict(opts), run_dir=run_dir, resume_state=resume, world_size=world_size), default=str))
    if rank == 0:
        print_summary(opts, c, options, run_dir, world_size, device)
        warning = rampup_warning(c.lr_rampup_kimg, c.total_kimg, opts.lr)
        if warning:
            print(warning, flush=True)
    if opts.dry_run:
        distributed.print0('Dry run; exiting.')
        return dict(status='dry-run', run_dir=run_dir, cur_nimg=0)
    return launch_training(c, options)


def launch_training(c: dnnlib.EasyDict, options: dict) -> dict:
    """Create the run directory with training_options.json (rank 0) and run the training loop."""
    if distributed.get_rank() == 0:
        os.makedirs(c.run_dir, exist_ok=True)
        dnnlib.util.write_atomic(os.path.join(c.run_dir, 'training_options.json'),
                                 lambda f: f.write(json.dumps(options, indent=2).encode()))
    distributed.barrier()
    result = training_loop(**c, options=options)
    return dict(result, run_dir=c.run_dir)

#----------------------------------------------------------------------------
