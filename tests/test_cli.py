"""torch_utils/cli.py: list options, D and its published aliases, one-line errors, help in sections."""

import click
import numpy as np
import pytest
from click.testing import CliRunner

from torch_utils import cli


def test_parse_int_list():
    assert cli.parse_int_list('0-3,7,10-11') == [0, 1, 2, 3, 7, 10, 11]
    assert cli.parse_int_list('5') == [5] and cli.parse_int_list([4, 2]) == [4, 2]
    assert cli.parse_int_list('2,2,1') == [2, 2, 1]  # --cres=2,2,2 keeps its repeats ...
    assert cli.parse_int_list('2,2,1,0-2', unique=True) == [2, 1, 0]  # ... seeds do not.
    for bad in ['', 'a', '3-1', '-2', '1,,2', '1.5']:
        with pytest.raises(ValueError):
            cli.parse_int_list(bad)


def test_parse_float_list():
    assert cli.parse_float_list('0,0.05,1e-1') == [0, 0.05, 0.1]
    assert cli.parse_float_list('1,1,2') == [1, 2] and cli.parse_float_list('1,1,2', unique=False) == [1, 1, 2]
    for bad in ['', 'x', 'nan', '1,inf']:
        with pytest.raises(ValueError):
            cli.parse_float_list(bad)


def test_format_int_list_round_trip():
    gen = np.random.default_rng(0)
    for _ in range(50):
        values = gen.choice(60, size=gen.integers(1, 30), replace=False).tolist()
        text = cli.format_int_list(values)
        assert cli.parse_int_list(text) == sorted(values)
        assert len(text.split(',')) == 1 + int(np.sum(np.diff(sorted(values)) > 1))  # One part per run.
    assert cli.format_int_list([3, 0, 1, 2, 2, 7]) == '0-3,7' and cli.format_int_list([]) == ''


@click.command()
@click.option('--seeds', type=str, callback=cli.click_list(cli.parse_int_list, unique=True))
@click.option('--fail', type=click.Choice(['value', 'os', 'runtime']))
@cli.debug_option
def command(seeds, fail, debug):
    with cli.one_line_errors(debug):
        if fail == 'value':
            raise ValueError('The value is wrong; do this instead.\nA second line nobody should see.')
        if fail == 'os':
            raise FileNotFoundError('No such file; pass another.')
        if fail == 'runtime':
            raise RuntimeError('A bug, not the user\'s fault.')
        click.echo(repr(seeds))


def test_user_errors_are_one_line_and_bugs_are_not_hidden():
    runner = CliRunner()
    assert runner.invoke(command, ['--seeds=3,1-2,3']).output.strip() == '[3, 1, 2]'
    result = runner.invoke(command, ['--seeds=3-1'])
    assert result.exit_code == 2 and "Invalid value for '--seeds'" in result.output and 'Traceback' not in result.output
    for fail, message in [('value', 'The value is wrong; do this instead.'), ('os', 'No such file; pass another.')]:
        result = runner.invoke(command, [f'--fail={fail}'])
        assert result.exit_code == 1 and result.output == f'Error: {message}\n'
        assert isinstance(runner.invoke(command, [f'--fail={fail}', '--debug']).exception, (ValueError, OSError))
    result = runner.invoke(command, ['--fail=runtime'])
    assert isinstance(result.exception, RuntimeError)  # Not turned into a user error.


def test_first_line():
    assert cli.first_line(ValueError('\n  first \nsecond')) == 'first'
    assert cli.first_line(KeyError()) == 'KeyError'


@pytest.mark.parametrize('D,pfgmpp,aug_dim,expected', [
    (None, None, None, (False, None)),   # Nothing given.
    ('2048', None, None, (True, 2048.0)),
    ('inf', None, None, (True, None)),   # inf is diffusion.
    (1, None, None, (True, 1.0)),        # D=1: PFGM.
    (None, True, '2048', (True, 2048.0)),
    (None, None, '2048', (True, 2048.0)),  # --aug_dim alone means that D, never silent diffusion.
    (None, True, None, (True, 128.0)),     # --pfgmpp=1 alone: the published default D.
    (None, False, None, (True, None)),
    (None, False, 'inf', (True, None)),
    ('64', True, 64, (True, 64.0)),        # Agreeing spellings.
    (None, False, '64', '--pfgmpp=0 means diffusion'),
    (None, True, 'inf', '--aug_dim=inf is diffusion'),
    ('64', None, '128', 'disagree'),
    ('inf', True, None, 'disagree'),
    ('0.5', None, None, 'must be a number >= 1'),
    ('nan', None, None, 'must be a number >= 1'),
    ('x', None, None, 'must be a number >= 1'),
    (None, None, '-3', '--aug_dim must be a number >= 1'),
])
def test_resolve_D(D, pfgmpp, aug_dim, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected.replace('(', r'\(')) as err:
            cli.resolve_D(D, pfgmpp, aug_dim)
        assert '\n' not in str(err.value) and str(err.value).endswith('.')
    else:
        assert cli.resolve_D(D, pfgmpp, aug_dim) == expected


def test_sectioned_help_lists_every_option_once_under_its_section():
    @click.command(cls=cli.SectionedCommand, sections=[('First', ['b']), ('Second', ['a'])])
    @click.option('--a', help='option a')
    @click.option('--b', help='option b')
    @click.option('--c', help='option c')
    def command(a, b, c):
        pass
    out = CliRunner().invoke(command, ['-h']).output
    assert out.index('First:') < out.index('--b') < out.index('Second:') < out.index('--a') < out.index('Other options:') < out.index('--c')
    assert all(out.count(f'--{name} ') == 1 for name in 'abc') and out.count('-h, --help') == 1
