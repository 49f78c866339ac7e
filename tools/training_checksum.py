"""Checksums of a small CPU training run, uninterrupted and resumed, through train.py's command line.

Used to show that a change to the code leaves training bit for bit as it was: run it before and
after the change and compare the printed checksums (or pass --expect=FILE with the JSON an earlier
run wrote). Every random stream of training takes part: PFGM++ noise (D=128), sigma, EDM's
augmentation, dropout, the data order, the stable target field, Adam, the EMA and its ramp-up.

    python tools/training_checksum.py --out=before.json
    ... change the code ...
    python tools/training_checksum.py --expect=before.json

The checksums hold for one machine and PyTorch build: other CPUs and builds may round differently.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile

import click
import numpy as np
import PIL.Image
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    # A tiny PFGM++ run with every stream: 16x16 RGB bars, 8 channels, 32 images per step, 3 kimg.
    'pfgmpp-augment-dropout': ['--cond=1', '--pfgmpp=1', '--aug_dim=128', '--augment=0.5', '--dropout=0.1'],
    'diffusion-stf-augment': ['--cond=0', '--stf=1', '--rbatch=48', '--augment=0.5', '--dropout=0.1'],
}
COMMON = ['--arch=ddpmpp', '--cbase=8', '--cres=1', '--batch=32', '--tick=1', '--lr=2e-3', '--lr-rampup=1',
          '--ema=0.001', '--workers=0', '--device=cpu', '--seed=7', '--snap=1', '--dump=1']


def make_dataset(folder: str) -> str:
    """64 labelled 16x16 RGB bar images in class folders, converted with dataset_tool.py."""
    rng = np.random.default_rng(0)
    for i in range(64):
        label = i % 2
        image = np.full([16, 16, 3], 16, dtype=np.uint8)
        pos = rng.integers(2, 12)
        if label == 0:
            image[pos:pos + 3, :, :] = rng.integers(128, 256, size=3)
        else:
            image[:, pos:pos + 3, :] = rng.integers(128, 256, size=3)
        os.makedirs(os.path.join(folder, 'source', f'class{label}'), exist_ok=True)
        PIL.Image.fromarray(image).save(os.path.join(folder, 'source', f'class{label}', f'{i:03d}.png'))
    dest = os.path.join(folder, 'bars-16x16.zip')
    run([sys.executable, 'dataset_tool.py', f'--source={os.path.join(folder, "source")}', f'--dest={dest}'])
    return dest


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    if result.returncode != 0:
        raise click.ClickException(f'{" ".join(cmd[1:3])} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}')


def state_checksum(path: str) -> str:
    """SHA-256 over the network, EMA and optimizer tensors of a training state, in key order."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    digest = hashlib.sha256()

    def feed(prefix, value):
        if isinstance(value, torch.Tensor):
            digest.update(prefix.encode())
            digest.update(value.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                feed(f'{prefix}/{key}', value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                feed(f'{prefix}/{i}', item)
        elif isinstance(value, (int, float, bool)) or value is None:
            digest.update(f'{prefix}={value!r}'.encode())

    feed('net', state['net']['state_dict'])
    feed('ema', state['ema']['state_dict'])
    feed('optimizer', state['optimizer'])
    feed('cur_nimg', state['cur_nimg'])
    return digest.hexdigest()


def checksums(workdir: str) -> dict:
    data = make_dataset(workdir)
    results = {}
    for name, options in CONFIGS.items():
        outdir = os.path.join(workdir, name)
        base = [sys.executable, 'train.py', f'--outdir={outdir}', f'--data={data}', *COMMON, *options]
        run(base + ['--name=full', '--duration=0.003'])
        run(base + ['--name=resumed', '--duration=0.0015'])
        run(base + ['--name=resumed', '--duration=0.003', '--resume=auto'])
        # The newest state (names sort in training order): 3 kimg at 32 images per step ends at 3,008 images.
        final = sorted(name for name in os.listdir(os.path.join(outdir, 'full')) if name.startswith('training-state-'))[-1]
        full = state_checksum(os.path.join(outdir, 'full', final))
        resumed = state_checksum(os.path.join(outdir, 'resumed', final))
        results[name] = dict(uninterrupted=full, resumed=resumed)
        print(f'{name}: uninterrupted {full[:16]}  resumed {resumed[:16]}  {"equal" if full == resumed else "DIFFERENT"}')
    return results


@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.option('--out', help='Write the checksums to this JSON file', metavar='JSON', type=str)
@click.option('--expect', help='Compare with the checksums in this JSON file', metavar='JSON', type=str)
def main(out, expect):
    """Train two tiny configurations, uninterrupted and resumed, and print their checksums."""
    with tempfile.TemporaryDirectory() as workdir:
        results = checksums(workdir)
    record = dict(torch=torch.__version__, results=results)
    if out:
        with open(out, 'w') as f:
            json.dump(record, f, indent=2)
    failed = [name for name, r in results.items() if r['uninterrupted'] != r['resumed']]
    if expect:
        expected = json.load(open(expect))['results']
        failed += [f'{name} (differs from {expect})' for name, r in results.items() if expected.get(name) != r]
    if failed:
        raise click.ClickException(f'Not bit-identical: {", ".join(failed)}.')
    print('All bit-identical.' if not expect else f'All bit-identical, and equal to {expect}.')


if __name__ == '__main__':
    main()
