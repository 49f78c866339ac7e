"""Command-line helpers shared by every script: list options, the PFGM++ D and its published aliases,
the device option, help grouped into sections, and the rule that an error a user can cause ends the
command with one line (exit status 1) instead of a traceback.

Each script is a plain function with named parameters that raises ordinary exceptions (ValueError,
OSError, ...) and a click `cmdline()` that only parses the options and calls it inside
`one_line_errors()`, as EDM2's scripts are built.
"""

import contextlib
import math
import re
from typing import Callable, Iterable, Iterator, Optional, Sequence

import click

import dnnlib
from torch_utils import misc

__all__ = ['parse_int_list', 'format_int_list', 'parse_float_list', 'click_list', 'parse_D', 'resolve_D', 'D_options', 'first_line',
           'USER_ERRORS', 'one_line_errors', 'device_option', 'debug_option', 'CONTEXT_SETTINGS', 'SectionedCommand', 'SectionedGroup']

#----------------------------------------------------------------------------
# Lists on the command line.

def parse_int_list(s: str | Sequence[int], unique: bool = False) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]: comma-separated non-negative integers and inclusive ranges a-b, in
    the order given. unique=True drops repeats, keeping the first (seeds: each image once)."""
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
        raise ValueError(f'{s!r} holds negative numbers; expected integers >= 0.')
    return list(dict.fromkeys(values)) if unique else values


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


def parse_float_list(s: str | Sequence[float], unique: bool = True) -> list[float]:
    """'0,0.05,0.1' -> [0.0, 0.05, 0.1]: at least one finite number; unique=True drops repeats."""
    if isinstance(s, (list, tuple)):
        values = [float(v) for v in s]
    else:
        try:
            values = [float(part) for part in str(s).replace(' ', '').split(',')]
        except ValueError:
            raise ValueError(f'{s!r} is not a comma-separated list of numbers like 0,0.05,0.1.') from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f'{s!r} must hold at least one finite number.')
    return list(dict.fromkeys(values)) if unique else values


def click_list(parse: Callable, **kwargs) -> Callable:
    """A click callback that parses a list option with `parse(value, **kwargs)` and reports a bad value
    as a usage error naming the option."""
    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is None:
            return None
        try:
            return parse(value, **kwargs)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return callback

#----------------------------------------------------------------------------
# D: one option, --D, with PFGM++'s published spellings --pfgmpp/--aug_dim as aliases, parsed here only.

PUBLISHED_DEFAULT_D = 128.0  # PFGM++'s --aug_dim default: what --pfgmpp=1 alone means.


def parse_D(value: str | float, option: str = '--D') -> float:
    """A D from the command line: a number >= 1, or inf (infinity) for diffusion; returns a float
    (math.inf for diffusion)."""
    text = str(value).strip().lower()
    try:
        D = math.inf if text in ('inf', 'infinity') else float(text)
    except ValueError:
        D = math.nan
    if not (D >= 1):  # Also refuses NaN.
        raise ValueError(f'{option} must be a number >= 1 (the PFGM++ augmentation dimension), or inf for diffusion; got {value}.')
    return D


def resolve_D(D: Optional[float] = None, pfgmpp: Optional[bool] = None, aug_dim: Optional[float] = None) -> tuple[bool, Optional[float]]:
    """(given, D) from --D and the aliases, each None when not given; D None means diffusion (D -> inf).
    --pfgmpp=1 --aug_dim=X and --aug_dim=X alone mean --D=X, --pfgmpp=1 alone --D=128, --pfgmpp=0
    --D=inf; spellings that contradict each other are a ValueError."""
    alias = None
    if pfgmpp is not None or aug_dim is not None:
        alias = parse_D(aug_dim, '--aug_dim') if aug_dim is not None else (PUBLISHED_DEFAULT_D if pfgmpp else math.inf)
        if pfgmpp is False and math.isfinite(alias):
            raise ValueError(f'--pfgmpp=0 means diffusion, but --aug_dim={alias:g} asks for PFGM++ with that D; pass --D={alias:g} or --D=inf.')
        if pfgmpp is True and math.isinf(alias):
            raise ValueError('--pfgmpp=1 asks for PFGM++, but --aug_dim=inf is diffusion; pass --D with the augmentation dimension.')
    if D is not None:
        D = parse_D(D)
        if alias is not None and alias != D:
            raise ValueError(f'--D={D:g} and --pfgmpp/--aug_dim (D={alias:g}) disagree; pass --D alone.')
    value = D if D is not None else alias
    if value is None:
        return False, None
    return True, (None if math.isinf(value) else float(value))


def D_options(default_help: str) -> Callable:
    """--D, and the published aliases --pfgmpp and --aug-dim/--aug_dim (all None when not given);
    resolve_D() reads them."""
    def decorator(fn: Callable) -> Callable:
        for option in reversed([
            click.option('--D', 'D', help=f'PFGM++ augmentation dimension D >= 1, or inf for diffusion  [default: {default_help}]',
                         metavar='D|inf', type=str, default=None, callback=click_list(parse_D)),
            click.option('--pfgmpp', help='Published alias: PFGM++ (1, D from --aug-dim, 128 without it) or diffusion (0)', metavar='BOOL',
                         type=click.BOOL, default=None),
            click.option('--aug-dim', '--aug_dim', 'aug_dim', help='Published alias of --D', metavar='FLOAT', type=str, default=None,
                         callback=click_list(parse_D, option='--aug_dim')),
        ]):
            fn = option(fn)
        return fn
    return decorator

#----------------------------------------------------------------------------
# Errors: one line for what the user got wrong.

# CheckpointError, the pickle errors and DownloadError are ValueErrors or OSErrors.
USER_ERRORS = (ValueError, OSError, dnnlib.DownloadError)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its class name if there is none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


@contextlib.contextmanager
def one_line_errors(debug: bool = False) -> Iterator[None]:
    """Turn USER_ERRORS raised inside into click.ClickException (one line on stderr, exit status 1);
    with debug=True let them through with their traceback. click's own errors pass unchanged."""
    try:
        yield
    except (click.ClickException, click.Abort):
        raise
    except USER_ERRORS as err:
        if debug:
            raise
        raise click.ClickException(first_line(err)) from None

#----------------------------------------------------------------------------
# Options every script has.

def device_option(help: str = 'Where to run', name: str = 'device') -> Callable:
    """--device auto|cuda|cpu (default auto: CUDA when present)."""
    return click.option('--device', name, help=help, type=click.Choice(list(misc.DEVICE_CHOICES)), default='auto', show_default=True)


def debug_option(fn: Optional[Callable] = None):
    """--debug: show the full traceback of errors."""
    option = click.option('--debug', help='Show the full traceback of errors', is_flag=True)
    return option(fn) if fn is not None else option

#----------------------------------------------------------------------------
# Help: -h as well as --help, and options in sections.

CONTEXT_SETTINGS = dict(help_option_names=['-h', '--help'], max_content_width=110)


class SectionedCommand(click.Command):
    """A click command whose --help lists its options in sections: sections=[(title, [parameter
    names])], in order; options in no section come last under 'Other options'."""

    def __init__(self, *args, sections: Sequence[tuple[str, Sequence[str]]] = (), **kwargs):
        kwargs.setdefault('context_settings', CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)
        self.sections = [(title, list(names)) for title, names in sections]

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {param.name: param.get_help_record(ctx) for param in self.get_params(ctx)}
        placed = set()
        for title, names in self.sections + [('Other options', [n for n in records if not any(n in ns for _, ns in self.sections)])]:
            rows = [records[n] for n in names if records.get(n) is not None and n not in placed]
            placed.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class SectionedGroup(click.Group):
    """A click group with -h as well as --help, for its own help and its subcommands'."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('context_settings', CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)

#----------------------------------------------------------------------------
