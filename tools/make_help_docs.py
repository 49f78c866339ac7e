"""Regenerate docs/<script>-help.txt from every script's --help (run: make docs, i.e.
python -m tools.make_help_docs from the repository root).

tests/test_docs.py checks that the committed files are current."""

import importlib.util
import os

import click
from click.testing import CliRunner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['dataset_tool.py', 'train.py', 'generate.py', 'generate_alpha.py', 'generate_steps.py',
           'generate_quant.py', 'fid.py', 'quickstart.py', 'reconstruct_phema.py']
WIDTH = 110


def load_command(script: str) -> click.Command:
    """The click command `main` of a top-level script, imported without running it."""
    path = os.path.join(REPO, script)
    spec = importlib.util.spec_from_file_location(f'_help_{os.path.splitext(script)[0]}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def help_texts() -> dict[str, str]:
    """{file name under docs/: help text} for every script and every subcommand of a group."""
    texts = {}
    runner = CliRunner()
    for script in SCRIPTS:
        if not os.path.isfile(os.path.join(REPO, script)):
            continue
        command = load_command(script)
        name = os.path.splitext(script)[0]
        invocations = [([], name)]
        if isinstance(command, click.Group):
            invocations += [([sub], f'{name}-{sub}') for sub in sorted(command.commands)]
        for args, doc_name in invocations:
            result = runner.invoke(command, [*args, '--help'], prog_name=script, terminal_width=WIDTH)
            assert result.exit_code == 0, f'{script} {" ".join(args)} --help failed: {result.output}'
            texts[f'{doc_name}-help.txt'] = result.output
    return texts


def main() -> None:
    os.makedirs(os.path.join(REPO, 'docs'), exist_ok=True)
    for name, text in help_texts().items():
        with open(os.path.join(REPO, 'docs', name), 'w') as f:
            f.write(text)
        print(f'docs/{name}')


if __name__ == '__main__':
    main()
