"""Train PFGM++ or diffusion models (EDM, VP, VE) with EDM's architectures and recipes, or with EDM2's
network and recipe (--arch=edm2, --preset).

    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs --name=exp_name \\
        --data=datasets/cifar10-32x32.zip --cond=0 --arch=ncsnpp --D=2048 --batch=512

From Python, training.launch.train(**options) takes the same options by name (outdir=..., data=...,
D=2048, ...) and returns {'status': 'done' | 'stopped' | 'dry-run', 'run_dir', 'cur_nimg'}.

Exit status: 0 when the run reached --duration (or a dry run), EXIT_STOPPED (75) when SIGTERM or
SIGINT stopped it after writing a training state (run the same command with --resume=auto to
continue: a job script can requeue on 75), 1 for an error.
"""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import sys  # noqa: E402

import click  # noqa: E402
from click.core import ParameterSource  # noqa: E402

from torch_utils import cli, distributed  # noqa: E402
from torch_utils.precision import PRECISIONS  # noqa: E402
from training import launch, presets  # noqa: E402

#----------------------------------------------------------------------------

@click.command(cls=cli.SectionedCommand, context_settings=dict(cli.CONTEXT_SETTINGS, show_default=True), sections=[
    ('Main options', ['outdir', 'data', 'cond', 'arch', 'precond', 'preset', 'name']),
    ('PFGM++', ['D', 'pfgmpp', 'aug_dim', 'stf', 'rbatch', 'sigma_scale']),
    ('Hyperparameters', ['duration', 'batch', 'batch_gpu', 'cbase', 'cres', 'nblock', 'lr', 'lr_rampup', 'decay', 'ema', 'ema_rampup',
                         'phema', 'dropout', 'cond_drop', 'augment', 'xflip', 'P_mean', 'P_std']),
    ('Performance', ['precision', 'fp16', 'channels_last', 'compile', 'ls', 'bench', 'cache', 'workers', 'device']),
    ('I/O', ['desc', 'nosubdir', 'tick', 'snap', 'dump', 'seed', 'transfer', 'resume', 'allow_pickle', 'dry_run', 'debug'])])

# Main options.
@click.option('--outdir',        help='Where to save the results', metavar='DIR', type=str, required=True)
@click.option('--data',          help='Path to the dataset (ZIP or folder)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--cond',          help='Train class-conditional model', metavar='BOOL', type=bool, default=False)
@click.option('--arch',          help='Network architecture', type=click.Choice(list(presets.ARCHITECTURES)), default='ddpmpp')
@click.option('--precond',       help='Preconditioning & loss function (edm2: edm only)', type=click.Choice(list(presets.PRECONDITIONERS)), default='edm')
@click.option('--preset',        help='EDM2 preset (edm2-img64-xs..xl, edm2-img512-xxs..xxl): sets the options not given; implies --arch=edm2  [default: edm2-img64-s with --arch=edm2]', metavar='NAME', type=click.Choice(list(presets.EDM2_PRESETS)))
@click.option('--name',          help='Run directory name under --outdir (fixed, so --resume=auto finds it)', metavar='STR', type=str)

# PFGM++.
@cli.D_options(default_help='inf, diffusion')
@click.option('--stf',           help='Stable target field: regress the exact posterior mean over a reference batch', metavar='BOOL', type=bool, default=False)
@click.option('--rbatch',        help='STF reference batch per rank, including the batch itself', metavar='INT', type=click.IntRange(min=2), default=4096)
@click.option('--sigma-scale', 'sigma_scale', help='Multiply the training sigmas (e.g. 380/80=4.75 for 256x256 data)', metavar='FLOAT', type=float, default=1.0)

# Hyperparameters.
@click.option('--duration',      help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True), default=200)
@click.option('--batch',         help='Total batch size', metavar='INT', type=click.IntRange(min=1), default=512)
@click.option('--batch-gpu',     help='Limit batch size per GPU', metavar='INT', type=click.IntRange(min=1))
@click.option('--cbase',         help='Channel multiplier  [default: varies]', metavar='INT', type=int)
@click.option('--cres',          help='Channels per resolution  [default: varies]', metavar='LIST', type=str, callback=cli.click_list(cli.parse_int_list))
@click.option('--nblock',        help='Residual blocks per resolution  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--lr',            help='Learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=10e-4)
@click.option('--lr-rampup',     help='Learning rate ramp-up', metavar='KIMG', type=click.FloatRange(min=0), default=10000)
@click.option('--decay',         help='edm2: learning rate decay t_ref (0 = none)  [default: the preset\'s]', metavar='BATCHES', type=click.FloatRange(min=0))
@click.option('--ema',           help='EMA half-life', metavar='MIMG', type=click.FloatRange(min=0), default=0.5)
@click.option('--ema-rampup',    help='EMA ramp-up ratio (0 = none)', metavar='FLOAT', type=click.FloatRange(min=0), default=0.05)
@click.option('--phema',         help='Post-hoc EMA: relative stds of power-function EMAs to save with each snapshot, e.g. 0.05,0.10', metavar='LIST', type=str, callback=cli.click_list(cli.parse_float_list))
@click.option('--dropout',       help='Dropout probability', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.13)
@click.option('--cond-drop', 'cond_drop', help='Class-label dropout probability, for classifier-free guidance', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.0)
@click.option('--augment',       help='Augment probability (edm2: 0 only)', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.12)
@click.option('--xflip',         help='Enable dataset x-flips', metavar='BOOL', type=bool, default=False)
@click.option('--P-mean', '--P_mean', 'P_mean', help='edm2: noise level mean  [default: the preset\'s]', metavar='FLOAT', type=float)
@click.option('--P-std', '--P_std', 'P_std', help='edm2: noise level standard deviation  [default: the preset\'s]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))

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
def cmdline(debug: bool, **kwargs) -> None:
    """Train PFGM++ or diffusion models with EDM's or EDM2's networks and recipes.

    \b
    # PFGM++ on CIFAR-10 with D=2048, 8 GPUs:
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs --name=exp_name \\
        --data=datasets/cifar10-32x32.zip --cond=0 --arch=ncsnpp --D=2048 --batch=512
    \b
    # EDM (diffusion) on CIFAR-10:
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp
    \b
    # PFGM++ (D=64) on EDM2's network and recipe, EDM2's ImageNet-64 S preset:
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/imagenet-64x64.zip --cond=1 --preset=edm2-img64-s --pfgmpp=1 --aug_dim=64

    With --arch=edm2 (EDM2's network, loss and learning-rate schedule) --cbase, --cres, --nblock,
    --dropout and --cond-drop set EDM2's model_channels, channel_mult, num_blocks, dropout and label
    dropout; --lr is alpha_ref, --decay t_ref and --lr-rampup the warm-up of EDM2's schedule; --augment
    and --precond other than edm do not apply (EDM2's network takes no augmentation labels).

    Exit status 75 means that SIGTERM/SIGINT stopped the run after it wrote a training state: run the
    same command with --resume=auto to continue.
    """
    # Only the options given on the command line: a preset (--preset, --arch=edm2) sets the others.
    context = click.get_current_context()
    kwargs = {name: value for name, value in kwargs.items() if context.get_parameter_source(name) is not ParameterSource.DEFAULT}
    try:
        with cli.one_line_errors(debug):
            result = launch.train(**kwargs)
    finally:
        distributed.shutdown()
    if result['status'] == 'stopped':
        sys.exit(launch.EXIT_STOPPED)


main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
