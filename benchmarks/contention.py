"""Speed of generate.py and train.py on a shared CPU, by OpenMP wait policy.

    python -m benchmarks.contention                       # About 10 minutes on 2 cores.
    python -m benchmarks.contention --repeats=1 --out=c.json
    python -m benchmarks.contention --policies=default,PASSIVE --repeats=7   # The default against PASSIVE only.

A competing PyTorch process (matrix products on every core, as another user's job would run) shares
the CPU while a tiny generate.py run (--seeds images of a small network) and a tiny train.py run
(--kimg of 16x16 images) are timed under each policy: the commands' default (torch_utils/threads.py:
PASSIVE unless set), OMP_WAIT_POLICY=PASSIVE and ACTIVE set by hand, and GNU OpenMP's own default
(OMP_WAIT_POLICY set but empty, which it ignores). The same runs without the competitor show what
each policy costs on an idle machine. Runs alternate between policies (in a rotated order each
repeat), and the median of --repeats is reported; the JSON keeps every run. One JSON record (--out) and a table on stdout."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import click

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = {'default': None, 'PASSIVE': 'PASSIVE', 'ACTIVE': 'ACTIVE', 'gomp-default': ''}

# The competitor: float32 matrix products on torch's default threads, until killed or until this
# benchmark is gone (its parent changes), so that killing the benchmark never leaves it running.
COMPETITOR = ('import os, torch\nparent = os.getppid()\nx = torch.randn(512, 512)\n'
              'while os.getppid() == parent:\n    x = torch.tanh(x @ x / 512)\n')



def make_inputs(folder: str) -> tuple[str, str]:
    """A small PFGM++ (D=128) network snapshot and a folder of 64 random 16x16 RGB images."""
    import numpy as np
    import torch
    from torch_utils import image_io
    from training import checkpoint, networks
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=16, img_channels=3, model_type='SongUNet', model_channels=16, channel_mult=[1, 2], D=128.0)
    snapshot = os.path.join(folder, 'net.pt')
    checkpoint.save_network_snapshot(snapshot, net, kimg=1)
    images = np.random.default_rng(0).integers(0, 256, size=[64, 3, 16, 16], dtype=np.uint8)
    for i, image in enumerate(images):
        image_io.save_image(torch.from_numpy(image), os.path.join(folder, 'data', f'{i:03d}.png'))
    return snapshot, os.path.join(folder, 'data')


def environment(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    if POLICIES[policy] is not None:
        env['OMP_WAIT_POLICY'] = POLICIES[policy]
    return env


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def commands(folder: str, seeds: int, kimg: float) -> dict:
    snapshot, data = make_inputs(folder)
    return {
        'generate.py': lambda run: [sys.executable, 'generate.py', f'--network={snapshot}', f'--outdir={folder}/img{run}',
                                    f'--seeds=0-{seeds - 1}', '--steps=18', '--batch=25', '--device=cpu'],
        'train.py': lambda run: [sys.executable, 'train.py', f'--outdir={folder}/runs', f'--name=r{run}', f'--data={data}',
                                 '--cbase=16', '--cres=1,2', '--batch=32', '--lr-rampup=0', f'--duration={kimg / 1000}',
                                 '--workers=0', '--device=cpu', '--snap=0', '--dump=0'],
    }


def measure(cmds: dict, policies: list[str], repeats: int, competitor: bool) -> dict:
    """{command: {policy: {'median': seconds, 'runs': [seconds, ...]}}} with or without the competing
    process. Each repeat runs the policies in a rotated order, so that none always goes first."""
    times = {name: {policy: [] for policy in policies} for name in cmds}
    proc = subprocess.Popen([sys.executable, '-c', COMPETITOR]) if competitor else None
    try:
        run = 0
        for repeat in range(repeats):
            order = policies[repeat % len(policies):] + policies[:repeat % len(policies)]
            for name, make in cmds.items():
                for policy in order:
                    run += 1
                    times[name][policy].append(timed(make(f'{int(competitor)}-{run}'), environment(policy)))
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    return {name: {policy: dict(median=statistics.median(t), runs=t) for policy, t in by_policy.items()}
            for name, by_policy in times.items()}


@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.option('--repeats', help='Runs per command and policy (the median is reported)', type=click.IntRange(min=1), default=3, show_default=True)
@click.option('--seeds', help='Images generate.py draws per run', type=click.IntRange(min=1), default=100, show_default=True)
@click.option('--kimg', help='Training length per train.py run', type=click.FloatRange(min=0.016), default=0.4, show_default=True)
@click.option('--policies', help='Policies to time, of ' + ', '.join(POLICIES), type=str, default=','.join(POLICIES), show_default=True)
@click.option('--out', help='Write the record to this JSON file', type=str, default=None)
def main(repeats: int, seeds: int, kimg: float, policies: str, out: str) -> None:
    chosen = [p for p in policies.split(',') if p]
    unknown = sorted(set(chosen) - set(POLICIES))
    if not chosen or unknown:
        raise click.BadParameter(f'unknown policies {unknown}; choose from {", ".join(POLICIES)}', param_hint='--policies')
    with tempfile.TemporaryDirectory() as folder:
        cmds = commands(folder, seeds, kimg)
        record = dict(cpus=os.cpu_count(), repeats=repeats, seeds=seeds, kimg=kimg,
                      policies=chosen, contended=measure(cmds, chosen, repeats, competitor=True),
                      idle=measure(cmds, chosen, repeats, competitor=False))
    print(f'{"command":<13}{"load":<11}' + ''.join(f'{p:>14}' for p in chosen) + '   (median seconds)')
    for load in ('contended', 'idle'):
        for name, by_policy in record[load].items():
            print(f'{name:<13}{load:<11}' + ''.join(f'{by_policy[p]["median"]:>14.1f}' for p in chosen))
    if out:
        with open(out, 'w') as f:
            json.dump(record, f, indent=2)


if __name__ == '__main__':
    main()
