"""Command-line options shared by generate.py and the study scripts (generate_alpha.py,
generate_steps.py, generate_quant.py), and the study scripts' common body."""

from typing import Callable, Optional, Sequence

import click

from sampling import generation, guidance
from sampling import samplers as sampling
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import precision as precision_lib

# --help sections of generate.py and the study scripts (cli.SectionedCommand); a study's own options
# go under 'Study'.
SECTIONS = [
    ('Network and D', ['network', 'allow_pickle', 'D', 'pfgmpp', 'aug_dim', 'min_kimg', 'max_kimg']),
    ('Output', ['outdir', 'seeds', 'subdirs', 'class_idx', 'batch', 'grid', 'trajectory']),
    ('Study', ['alphas', 'steps_list', 'bits', 'scope']),
    ('Sampler', ['num_steps', 'sigma_min', 'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise', 'dtype', 'solver',
                 'discretization', 'schedule', 'scaling', 'restart', 'restart_gamma']),
    ('Guidance', ['guidance', 'gnet', 'guidance_interval', 'guidance_steps']),
    ('Performance', ['precision', 'channels_last', 'compile', 'device', 'debug']),
]


def command(**kwargs) -> Callable:
    """click.command for generate.py and the study scripts: -h, and options in SECTIONS."""
    return click.command(cls=cli.SectionedCommand, sections=SECTIONS, **kwargs)


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


def parse_steps(value: str) -> tuple[int, int]:
    """--guidance-steps FIRST,LAST -> (FIRST, LAST), inclusive main step indices."""
    values = cli.parse_int_list(value, unique=False) if value.strip() else []
    if len(values) != 2 or '-' in value:
        raise ValueError(f'{value!r} must be two step indices FIRST,LAST, e.g. 4,11.')
    return guidance.check_steps(values)


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
    """EDM's sampler options (--steps unless a study varies it), EDM2's sampler, the ablation options, Restart, and guidance."""
    options = [click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT', type=click.IntRange(min=1), default=generation.SAMPLER_DEFAULTS['num_steps'], show_default=True)] if with_steps else []
    options += [
        click.option('--sigma-min', '--sigma_min', 'sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
        click.option('--sigma-max', '--sigma_max', 'sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True)),
        click.option('--rho', help='Time step exponent', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=generation.SAMPLER_DEFAULTS['rho'], show_default=True),
        click.option('--S-churn', '--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT', type=click.FloatRange(min=0), default=generation.SAMPLER_DEFAULTS['S_churn'], show_default=True),
        click.option('--S-min', '--S_min', 'S_min', help='Stoch. min noise level', metavar='FLOAT', type=click.FloatRange(min=0), default=generation.SAMPLER_DEFAULTS['S_min'], show_default=True),
        click.option('--S-max', '--S_max', 'S_max', help='Stoch. max noise level', metavar='FLOAT', type=click.FloatRange(min=0), default=generation.SAMPLER_DEFAULTS['S_max'], show_default=True),
        click.option('--S-noise', '--S_noise', 'S_noise', help='Stoch. noise inflation', metavar='FLOAT', type=float, default=generation.SAMPLER_DEFAULTS['S_noise'], show_default=True),
        click.option('--sampler-dtype', 'dtype', help="EDM2's sampler in this arithmetic (float32 gives EDM2's images)  [default: EDM's float64 sampler]", type=click.Choice(list(sampling.SAMPLER_DTYPES))),
        click.option('--solver', help='Ablate ODE solver', metavar='euler|heun', type=click.Choice(list(sampling.SOLVERS))),
        click.option('--disc', 'discretization', help='Ablate time step discretization {t_i}', metavar='vp|ve|iddpm|edm', type=click.Choice(list(sampling.DISCRETIZATIONS))),
        click.option('--schedule', help='Ablate noise schedule sigma(t)', metavar='vp|ve|linear', type=click.Choice(list(sampling.SCHEDULES))),
        click.option('--scaling', help='Ablate signal scaling s(t)', metavar='vp|none', type=click.Choice(list(sampling.SCALINGS))),
        click.option('--restart', help=f'Restart sampling: a preset ({", ".join(sampling.RESTART_PRESETS)}), the published JSON, or N:K:t_min:t_max[;...]', metavar='SPEC', type=str),
        click.option('--restart-gamma', 'restart_gamma', help='Restart: churn inside restart passes  [default: 0, the preset\'s with a preset]', metavar='FLOAT', type=click.FloatRange(min=0)),
        click.option('--guidance', help='Guidance weight w (1 = none): classifier-free, or autoguidance with --gnet', metavar='FLOAT', type=float, default=1.0, show_default=True),
        click.option('--gnet', help='Guide network for autoguidance (same data and D)', metavar='PATH|URL', type=str),
        click.option('--guidance-interval', 'guidance_interval', help='Guide only for sigma in (LO, HI]  [default: everywhere]', metavar='LO,HI', type=str, callback=cli.click_list(parse_interval)),
        click.option('--guidance-steps', 'guidance_steps', help='Guide only the sampler\'s main steps FIRST..LAST (of 0..N-1), instead of --guidance-interval', metavar='FIRST,LAST', type=str, callback=cli.click_list(parse_steps)),
    ]
    return _apply(options)


def network_options(required: bool = True) -> Callable:
    """--network --allow-pickle --D (--pfgmpp --aug-dim) --device --debug."""
    network_help = ('Network checkpoint filename or URL' if required else
                    'Network checkpoint filename or URL  [default: every checkpoint in --outdir, a training run]')
    return _apply([
        click.option('--network', 'network', help=network_help, metavar='PATH|URL', type=str, required=required),
        click.option('--allow-pickle', 'allow_pickle', help='Allow legacy EDM/PFGM++ pickles, which run code from the file; only for files you trust', is_flag=True),
        cli.D_options(default_help='from the checkpoint'),
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
            D = generation.D_to_load(options['D'], options['pfgmpp'], options['aug_dim'])
            generation.run_study(options['network'], options['outdir'], settings, options['seeds'], options['allow_pickle'], D,
                                 device=device, **generation.sampling_options(options, device))
            dist.print0('Done.')
    finally:
        dist.shutdown()


def study_command(help: str, study_options: Sequence[Callable], settings: Callable[..., list], with_steps: bool = True) -> click.Command:
    """A study script's command: generate.py's options (but --steps where the study varies it) plus the
    study's own (study_options); settings(*the study's option values, in order) gives run_study()'s settings."""
    study_names = [option(lambda: None).__click_params__[0].name for option in study_options]

    @command(help=help)
    @network_options(required=True)
    @output_options
    @_apply(list(study_options))
    @sampler_options(with_steps=with_steps)
    @performance_options
    def cmdline(**options):
        run_study_command(options, settings(*[options.pop(name) for name in study_names]))
    return cmdline

#----------------------------------------------------------------------------
