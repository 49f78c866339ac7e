"""Two torchrun launchers on this machine, joined by a c10d rendezvous on 127.0.0.1, as two nodes of
a cluster would be (gloo on the CPU)."""

import datetime
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed

from training import checkpoint

from helpers import REPO

pytestmark = pytest.mark.slow


def test_two_node_training_run(bars_zip, tmp_path):
    # The rendezvous store is hosted here, on a port the system picks as it binds (port 0), and both
    # launchers join it as clients (is_host=0): no port is chosen first and bound later, so no other
    # process can take it in between. The workers' own store is rank 0's, also bound to port 0.
    store = torch.distributed.TCPStore('127.0.0.1', 0, is_master=True, multi_tenant=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=300))
    launchers = []
    for node_rank in (0, 1):
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', '--nproc_per_node=1',
               f'--node_rank={node_rank}', '--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{store.port}',
               '--rdzv_conf=is_host=0', '--rdzv_id=two-node-test', 'train.py', f'--outdir={tmp_path}', '--name=mn',
               f'--data={bars_zip}', '--cond=1', '--cbase=8', '--cres=1', '--batch=16', '--tick=1', '--lr-rampup=0',
               '--ema=0.0005', '--dropout=0', '--augment=0', '--workers=0', '--device=cpu', '--duration=0.001', '--snap=1',
               '--dump=1']
        launchers.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=dict(os.environ, OMP_NUM_THREADS='1')))
    outputs = [p.communicate(timeout=300)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], '\n'.join(outputs)
    log = (tmp_path / 'mn' / 'log.txt').read_text()
    assert '8 per rank and round x 1 rounds x 2 ranks' in log
    state = torch.load(tmp_path / 'mn' / checkpoint.state_name(1.008), weights_only=True)
    assert state['cur_nimg'] == 1008 and state['training_options']['world_size'] == 2
