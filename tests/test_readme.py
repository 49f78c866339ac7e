"""Every command that README.md and docs/*.md document parses: the commands' own click parsers read
each one (options, types, choices), so a renamed or mistyped option fails here. docs/reproducing.md
must document every stage of reproducing the paper; elsewhere, commands abbreviated with '...' are
skipped."""

import glob
import importlib
import os
import re
import shlex

import click
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ['README.md'] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))
SCRIPTS = ('train.py', 'generate.py', 'generate_alpha.py', 'generate_steps.py', 'generate_quant.py',
           'fid.py', 'dataset_tool.py', 'reconstruct_phema.py', 'quickstart.py', 'tools/training_checksum.py')
MODULES = ('studies.d_study', 'studies.oracle', 'metrics.quality', 'metrics.digits', 'benchmarks.throughput', 'benchmarks.gpu_check',
           'benchmarks.contention')


def documented_commands(path: str) -> list[list[str]]:
    """The commands of a document's bash blocks, continuation lines joined, each as argv from the
    script (or `-m` module) name on, whatever launches it (python, torchrun ...)."""
    text = open(os.path.join(REPO, path), encoding='utf-8').read()
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            starts = [i for i, w in enumerate(words)
                      if w in SCRIPTS or (w in MODULES and i > 0 and words[i - 1] == '-m')]
            if starts and '...' not in words:
                argv = words[starts[0]:]
                ends = [i for i, w in enumerate(argv) if w.endswith(';')]  # A shell loop's body ends there.
                if ends:
                    argv = argv[:ends[0]] + [argv[ends[0]][:-1]]
                commands.append([w for w in argv if w])
    return commands


def parse(argv: list[str]) -> None:
    """Parse argv with the command's click command without running it; raises click.UsageError."""
    module = importlib.import_module(argv[0][:-3].replace('/', '.') if argv[0].endswith('.py') else argv[0])
    command = getattr(module, 'main', None) or module.cmdline
    if isinstance(command, click.Group):  # fid.py SUBCOMMAND ...: the group itself takes no options.
        if argv[1] not in command.commands:
            raise click.UsageError(f'No such command {argv[1]!r}.')
        command, argv = command.commands[argv[1]], argv[1:]
    command.make_context(argv[0], list(argv[1:]))


ALL_COMMANDS = [(path, argv) for path in DOCUMENTS for argv in documented_commands(path)]


def test_every_document_is_read():
    assert 'docs/reproducing.md' in DOCUMENTS and len(DOCUMENTS) >= 5
    assert {path for path, _ in ALL_COMMANDS} >= {'README.md', 'docs/training.md', 'docs/sampling.md', 'docs/reproducing.md'}


def test_reproducing_the_paper_documents_every_stage():
    commands = documented_commands('docs/reproducing.md')
    scripts = {argv[0] for argv in commands}
    assert {'dataset_tool.py', 'train.py', 'generate.py', 'fid.py', 'generate_alpha.py', 'generate_steps.py',
            'generate_quant.py'} <= scripts
    assert {argv[1] for argv in commands if argv[0] == 'fid.py'} >= {'ref', 'sweep', 'calc'}
    assert len(commands) >= 15


@pytest.mark.parametrize('path, argv', ALL_COMMANDS, ids=[f'{path}: {" ".join(argv)[:60]}' for path, argv in ALL_COMMANDS])
def test_documented_command_parses(path, argv):
    parse(argv)


@pytest.mark.parametrize('argv', [
    ['train.py', '--outdir=x', '--data=y', '--arch=ncsnp'],        # A typo in a choice.
    ['generate.py', '--outdir=x', '--step=18'],                      # An option that does not exist.
    ['generate_quant.py', '--network=n', '--outdir=x', '--scope=mine'],
    ['fid.py', 'sweep', '--run=r', '--ref=f', '--ranges=three'],
    ['studies.d_study', '--studies=alpha', '--num-samples=many'],
])
def test_a_mistyped_command_fails_to_parse(argv):
    with pytest.raises(click.UsageError):
        parse(argv)
