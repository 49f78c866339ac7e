"""Every command README.md documents parses: the scripts' own click parsers read each one (options,
types, choices), so a renamed or mistyped option fails here. "Reproducing the paper" must document
every stage; elsewhere, commands abbreviated with '...' are skipped."""

import importlib
import os
import re
import shlex
from typing import Optional

import click
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ('train.py', 'generate.py', 'generate_alpha.py', 'generate_steps.py', 'generate_quant.py',
           'fid.py', 'dataset_tool.py')


def section(title: Optional[str] = None) -> str:
    """The README's section `title` (a '## ' heading), or all of it."""
    text = open(os.path.join(REPO, 'README.md'), encoding='utf-8').read()
    if title is None:
        return text
    start = text.index(f'\n## {title}\n')
    end = text.find('\n## ', start + 1)
    return text[start:end if end >= 0 else len(text)]


def documented_commands(title: Optional[str] = None) -> list[list[str]]:
    """The commands of the section's bash blocks, continuation lines joined, each as argv from the
    script name on (whatever launches it: python, torchrun ...)."""
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', section(title), flags=re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            scripts = [i for i, w in enumerate(words) if w in SCRIPTS]
            if scripts and '...' not in words:
                argv = words[scripts[0]:]
                ends = [i for i, w in enumerate(argv) if w.endswith(';')]  # A shell loop's body ends there.
                if ends:
                    argv = argv[:ends[0]] + [argv[ends[0]][:-1]]
                commands.append([w for w in argv if w])
    return commands


def parse(argv: list[str]) -> None:
    """Parse argv with the script's click command without running it; raises click.UsageError."""
    command = importlib.import_module(argv[0][:-3]).main
    if isinstance(command, click.Group):  # fid.py SUBCOMMAND ...: the group itself takes no options.
        if argv[1] not in command.commands:
            raise click.UsageError(f'No such command {argv[1]!r}.')
        command, argv = command.commands[argv[1]], argv[1:]
    command.make_context(argv[0], list(argv[1:]))


COMMANDS = documented_commands('Reproducing the paper')
ALL_COMMANDS = documented_commands()


def test_the_section_documents_every_stage():
    scripts = {argv[0] for argv in COMMANDS}
    assert {'dataset_tool.py', 'train.py', 'generate.py', 'fid.py', 'generate_alpha.py', 'generate_steps.py',
            'generate_quant.py'} <= scripts
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize('argv', ALL_COMMANDS, ids=[' '.join(a)[:60] for a in ALL_COMMANDS])
def test_documented_command_parses(argv):
    parse(argv)


@pytest.mark.parametrize('argv', [
    ['train.py', '--outdir=x', '--data=y', '--arch=ncsnp'],        # A typo in a choice.
    ['generate.py', '--outdir=x', '--step=18'],                      # An option that does not exist.
    ['generate_quant.py', '--network=n', '--outdir=x', '--scope=mine'],
    ['fid.py', 'sweep', '--run=r', '--ref=f', '--ranges=three'],
])
def test_a_mistyped_command_fails_to_parse(argv):
    with pytest.raises(click.UsageError):
        parse(argv)
