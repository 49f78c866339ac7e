"""torch_utils/threads.py: every command asks for OpenMP's passive wait policy before torch is loaded,
unless the user chose a policy."""

import ast
import os
import subprocess
import sys

import pytest

from torch_utils import threads

from helpers import REPO

COMMANDS = ['train.py', 'generate.py', 'generate_alpha.py', 'generate_steps.py', 'generate_quant.py', 'fid.py', 'dataset_tool.py',
            'reconstruct_phema.py', 'quickstart.py']


def test_passive_unless_chosen():
    env = {}
    threads.use_passive_threads(env)
    assert env == {'OMP_WAIT_POLICY': 'PASSIVE'}
    env = {'OMP_WAIT_POLICY': 'ACTIVE'}
    threads.use_passive_threads(env)
    assert env == {'OMP_WAIT_POLICY': 'ACTIVE'}


@pytest.mark.parametrize('script', COMMANDS)
def test_commands_set_the_policy_before_any_other_import(script):
    # The policy is read when torch loads OpenMP: the call must come before anything can import torch.
    with open(os.path.join(REPO, script)) as f:
        body = ast.parse(f.read()).body
    statements = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]  # After the docstring.
    first, second = statements[:2]
    assert isinstance(first, ast.ImportFrom) and first.module == 'torch_utils.threads', script
    assert isinstance(second, ast.Expr) and ast.unparse(second.value) == 'use_passive_threads()', script


@pytest.mark.parametrize('chosen,expected', [(None, 'PASSIVE'), ('ACTIVE', 'ACTIVE')])
def test_a_fresh_process_loads_torch_with_the_policy(chosen, expected):
    # Importing a command (as running it does) sets the policy before torch is imported.
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    if chosen is not None:
        env['OMP_WAIT_POLICY'] = chosen
    code = ('import os, sys\nimport generate\n'
            'assert "torch" in sys.modules\nprint(os.environ["OMP_WAIT_POLICY"])\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr
