"""The quick-start demo (`make quickstart`): the whole PFGM++ pipeline on scikit-learn's bundled 8x8
handwritten digits (1,797 real images, 10 classes), within minutes on a laptop CPU.

    python quickstart.py                    # Export, convert, train, generate, score.
    python quickstart.py --device=cuda      # The same on a GPU (much faster).
    python quickstart.py --fresh            # Start over: new dataset and a new training run.

Steps, each through the project's ordinary command-line tools (every command is printed first):
  1. export the digits as PNGs into a class-folder tree (folders 0..9, so class index = digit);
  2. dataset_tool.py converts them to a 16x16 dataset ZIP;
  3. train.py trains a small class-conditional PFGM++ model (D=128);
  4. generate.py draws 100 samples (seeds 0-99) and a grid image;
  5. benchmarks/quickstart_quality.py's classifier, trained on the real digits, scores the samples.

Re-running is cheap: the exported digits and the dataset ZIP are reused, and train.py continues the
run with --resume=auto (a finished run is not trained again; a longer --duration continues it). The
samples are always drawn anew from the newest snapshot. --fresh deletes the demo's own files first.
Needs scikit-learn (pip install -r requirements-demo.txt).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional

import click

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # Run from anywhere.
from benchmarks import quickstart_quality  # noqa: E402
from training import checkpoint  # noqa: E402

NUM_SAMPLES = 100  # Seeds 0..99.
DEFAULT_DURATION = 0.03  # Mimg: about 3 to 4 minutes of training on 2 idle CPU cores.

# train.py options of the demo, beyond --outdir, --name, --data, --device, --duration, --tick and --resume:
# a DDPM++ with 16 channels at 16x16 and 32 at 8x8 and 4x4 (0.6M parameters; EDM's CIFAR-10 model has
# 56M), a high learning rate with a 1 kimg warm-up and a 2 kimg EMA half-life, because the whole run is
# only 30 kimg (~1,000 steps). Measured on 2 CPU cores: ~6 s/kimg; 94% of 300 samples recognised.
TRAIN_OPTIONS = dict(
    cond=1, arch='ddpmpp', precond='edm', pfgmpp=1, aug_dim=128,
    cbase=16, cres='1,2,2', batch=64, lr=2e-3, lr_rampup=1, ema=0.002, ema_rampup=0.05,
    dropout=0, augment=0, snap=4, dump=4, seed=0, workers=0,
)

# For train.py and generate.py. Spinning OpenMP threads (GNU OpenMP's default) stall each other when
# the CPU is shared with other work, slowing training by 3x to 30x; sleeping ones cost ~15% on an
# idle machine. A value the user set wins.
CHILD_ENV = dict(OMP_WAIT_POLICY='PASSIVE')

#----------------------------------------------------------------------------
# Helpers.

class StepError(Exception):
    """A step of the demo failed; the message is one line for the user."""


def run_command(cmd: list[str], step: str, env: Optional[dict] = None) -> None:
    """Print a command (as one could paste it), run it with this terminal, and raise StepError if it
    fails. `env`: variables to set for it, unless the user has set them. On Ctrl-C the command, which
    received the same SIGINT, is given time to stop cleanly (train.py writes a training state first);
    a second Ctrl-C kills it."""
    env = {k: v for k, v in (env or {}).items() if k not in os.environ}
    exe = os.path.relpath(cmd[0]) if not os.path.relpath(cmd[0]).startswith('..') else cmd[0]
    print('$ ' + ''.join(f'{k}={v} ' for k, v in env.items()) + shlex.join([exe, *cmd[1:]]), flush=True)
    try:
        proc = subprocess.Popen(cmd, env={**os.environ, **env})
    except OSError as err:
        raise StepError(f'{step} could not start ({err}).') from None
    interrupted = False
    while True:
        try:
            returncode = proc.wait()
            break
        except KeyboardInterrupt:
            if interrupted:
                proc.kill()
                proc.wait()
                raise StepError(f'{step} was killed.') from None
            interrupted = True
            print(f'Waiting for {step} to stop; press Ctrl-C again to kill it.', file=sys.stderr, flush=True)
    if interrupted:
        raise StepError(f'{step} was interrupted; run the quick start again to continue where it stopped.')
    if returncode != 0:
        raise StepError(f'{step} failed (exit status {returncode}); see its output above.')


def script(name: str) -> str:
    """A top-level script of this repository, as a path relative to the working directory when possible."""
    path = os.path.join(ROOT, name)
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


def cli_options(options: dict) -> list[str]:
    """{'lr_rampup': 1} -> ['--lr-rampup=1']; train.py spells aug_dim with an underscore."""
    return [f'--{k if k == "aug_dim" else k.replace("_", "-")}={v}' for k, v in options.items()]


def export_digits(dest: str) -> int:
    """Write scikit-learn's real 8x8 digits as grayscale PNGs DEST/<digit>/<index>.png (folders 0..9, so
    dataset_tool.py's sorted folder labels equal the digits). Written to a temporary folder and
    renamed, so an existing DEST is complete. Returns the number of images."""
    import PIL.Image
    images, labels = quickstart_quality.load_real_digits()
    tmp = dest.rstrip('/\\') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    for idx, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(tmp, str(int(label)))
        os.makedirs(folder, exist_ok=True)
        PIL.Image.fromarray(image, 'L').save(os.path.join(folder, f'{idx:04d}.png'))
    os.replace(tmp, dest)
    return len(images)


def newest_snapshot(run_dir: str) -> Optional[str]:
    """RUN/network-snapshot-<kimg>.pt with the largest kimg, or None."""
    names = [x for x in os.listdir(run_dir) if x.startswith('network-snapshot-') and x.endswith('.pt')
             and checkpoint.kimg_from_name(x) is not None] if os.path.isdir(run_dir) else []
    return os.path.join(run_dir, max(names, key=checkpoint.kimg_from_name)) if names else None


def remove_export(source_dir: str) -> None:
    """Delete digits exported by export_digits(), refusing folders that hold anything else."""
    if not os.path.isdir(source_dir):
        return
    if not set(os.listdir(source_dir)) <= {str(c) for c in range(quickstart_quality.NUM_CLASSES)}:
        raise StepError(f'{source_dir} holds more than the exported digits (folders 0..9); remove it yourself or choose another --source-dir.')
    shutil.rmtree(source_dir)


def remove_run(run_dir: str) -> None:
    """Delete a previous quick-start run, refusing folders that are not training runs."""
    if not os.path.isdir(run_dir):
        return
    if os.listdir(run_dir) and not os.path.isfile(os.path.join(run_dir, 'training_options.json')):
        raise StepError(f'{run_dir} does not look like a training run (no training_options.json); remove it yourself or choose another --outdir/--name.')
    shutil.rmtree(run_dir)

#----------------------------------------------------------------------------

def run_quickstart(
    outdir: str = 'training-runs',          # Training runs go here, as with train.py.
    name: str = 'quickstart',               # Run directory name: OUTDIR/NAME.
    data_dir: str = 'datasets',             # Where the 16x16 dataset ZIP goes.
    source_dir: str = 'downloads/sklearn-digits-8x8',  # Where the exported 8x8 PNGs go.
    device: str = 'auto',                   # auto | cuda | cpu, for train.py and generate.py.
    duration: float = DEFAULT_DURATION,     # Training duration, Mimg.
    fresh: bool = False,                    # Delete the exported digits, the dataset and the run first.
    min_score: float = 0.8,                 # Fail if fewer samples are recognised as digits.
) -> dict:
    """Run the demo; return {'paths', 'seconds' (per step), 'quality' (score_samples), 'passed'}.
    Raises StepError with a one-line message when a step fails."""
    dataset = os.path.join(data_dir, 'digits-16x16.zip')
    run_dir = os.path.join(outdir, name)
    samples = os.path.join(run_dir, 'samples')
    grid = os.path.join(run_dir, 'samples-grid.png')
    quality_json = os.path.join(run_dir, 'quality.json')
    seconds, done = {}, []
    try:
        import sklearn  # noqa: F401  (only to fail early, with the fix)
    except ImportError:
        raise StepError('The quick start needs scikit-learn; install it with: pip install -r requirements-demo.txt') from None

    if fresh:
        print(f'--fresh: removing {source_dir}, {dataset} and {run_dir}')
        remove_export(source_dir)
        if os.path.isfile(dataset):
            os.remove(dataset)
        remove_run(run_dir)

    # 1. The real digits as a class-folder tree.
    start = time.time()
    if os.path.isdir(source_dir):
        print(f'Reusing the exported digits in {source_dir}')
        done.append(f'reused the 1,797 real 8x8 digits exported to {source_dir}/<digit>/')
    else:
        print(f'Exporting scikit-learn\'s 8x8 digits to {source_dir}/<digit>/ ...')
        os.makedirs(os.path.dirname(os.path.abspath(source_dir)), exist_ok=True)
        count = export_digits(source_dir)
        done.append(f'exported {count:,} real 8x8 digits (scikit-learn) to {source_dir}/<digit>/')
    seconds['export'] = time.time() - start

    # 2. The dataset ZIP, converted to 16x16.
    start = time.time()
    if os.path.isfile(dataset):
        print(f'Reusing the dataset {dataset}')
        done.append(f'reused the 16x16 dataset {dataset}')
    else:
        os.makedirs(data_dir, exist_ok=True)
        try:
            run_command([sys.executable, script('dataset_tool.py'), f'--source={source_dir}', f'--dest={dataset}', '--resolution=16x16'], 'dataset_tool.py')
        except BaseException:  # Leave no half-written ZIP for the next run to reuse.
            if os.path.isfile(dataset):
                os.remove(dataset)
            raise
        done.append(f'converted them with dataset_tool.py to the 16x16 dataset {dataset}')
    seconds['convert'] = time.time() - start

    # 3. Training; --resume=auto continues (or just re-confirms) an earlier run of the same name.
    start = time.time()
    state_kimgs = [checkpoint.kimg_from_name(x) for x in (os.listdir(run_dir) if os.path.isdir(run_dir) else []) if x.startswith('training-state-')]
    state_kimg = max([k for k in state_kimgs if k is not None], default=None)
    tick = max(round(duration * 1000 / 10, 3), 0.001)  # About ten progress lines.
    run_command([sys.executable, script('train.py'), f'--outdir={outdir}', f'--name={name}', f'--data={dataset}',
                 *cli_options(TRAIN_OPTIONS), f'--duration={duration:g}', f'--tick={tick:g}', f'--device={device}',
                 '--resume=auto'], 'train.py', env=CHILD_ENV)
    seconds['train'] = time.time() - start
    network = newest_snapshot(run_dir)
    target_kimg = max(int(duration * 1000), 1)  # train.py's total_kimg.
    if network is None or checkpoint.kimg_from_name(network) < target_kimg:
        # train.py exits normally when a signal stops it early, after writing a training state.
        raise StepError(f'train.py stopped before {target_kimg} kimg (newest snapshot: {network}); run the quick start again to continue.')
    model = f'class-conditional PFGM++ model (D={TRAIN_OPTIONS["aug_dim"]}, DDPM++ with --cbase={TRAIN_OPTIONS["cbase"]} --cres={TRAIN_OPTIONS["cres"]})'
    if state_kimg is None:
        done.append(f'trained a {model} for {duration * 1000:g} kimg with train.py in {run_dir}')
    elif state_kimg >= target_kimg:
        done.append(f'reused the {model} trained earlier to {state_kimg} kimg in {run_dir} (train.py --resume=auto had nothing to do)')
    else:
        done.append(f'continued the training of the {model} in {run_dir} from {state_kimg} to {duration * 1000:g} kimg (train.py --resume=auto)')

    # 4. Samples and a grid, always from the newest snapshot.
    start = time.time()
    if os.path.isdir(samples):
        for x in os.listdir(samples):
            if x.endswith('.png') or x == 'generate.json':  # A newer snapshot is another configuration for generate.py.
                os.remove(os.path.join(samples, x))
    run_command([sys.executable, script('generate.py'), f'--network={network}', f'--outdir={samples}',
                 f'--seeds=0-{NUM_SAMPLES - 1}', f'--batch={NUM_SAMPLES}', f'--grid={grid}', f'--device={device}'], 'generate.py', env=CHILD_ENV)
    seconds['generate'] = time.time() - start
    done.append(f'generated {NUM_SAMPLES} samples (seeds 0-{NUM_SAMPLES - 1}) with generate.py from {os.path.basename(network)}')

    # 5. Quality.
    start = time.time()
    print('Scoring the samples with a classifier trained on the real digits (benchmarks/quickstart_quality.py) ...', flush=True)
    try:
        quality = quickstart_quality.score_samples(samples)
    except (ValueError, ImportError, OSError) as err:
        raise StepError(f'Scoring failed: {err}') from None
    problems = quickstart_quality.failures(quality, min_score)
    quality.update(network=network, min_score=min_score, passed=not problems)
    with open(quality_json, 'w') as f:
        json.dump(quality, f, indent=2)
    seconds['score'] = time.time() - start
    done.append('scored them with a classifier trained on the real digits')

    paths = dict(digits=source_dir, dataset=dataset, run_dir=run_dir, network=network, samples=samples, grid=grid, quality=quality_json)
    print()
    print('Quick start done. What it did:')
    for i, line in enumerate(done, 1):
        print(f'  {i}. {line}')
    print('Time per step: ' + ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items()) + f' (total {sum(seconds.values()):.0f} s)')
    print('Files:')
    print(f'  dataset:   {dataset}')
    print(f'  run:       {run_dir}/ (log.txt, training_options.json, network snapshots, training states)')
    print(f'  network:   {network}')
    print(f'  samples:   {samples}/ ({NUM_SAMPLES} PNGs)')
    print(f'  grid:      {grid}')
    print(f'  quality:   {quality_json}')
    print(quickstart_quality.summary_line(quality))
    if problems:
        raise StepError('The samples fail the quality bar: ' + '; '.join(problems) + '; train longer (--duration) or see README.md.')
    return dict(paths=paths, seconds=seconds, quality=quality, passed=not problems)

#----------------------------------------------------------------------------

@click.command(context_settings=dict(show_default=True))
@click.option('--outdir',     help='Where training runs go', metavar='DIR', type=str, default='training-runs')
@click.option('--name',       help='Run directory name under --outdir', metavar='STR', type=str, default='quickstart')
@click.option('--data-dir',   help='Where the 16x16 dataset ZIP goes', metavar='DIR', type=str, default='datasets')
@click.option('--source-dir', help='Where the exported 8x8 PNGs go', metavar='DIR', type=str, default='downloads/sklearn-digits-8x8')
@click.option('--device',     help='Where to train and sample', type=click.Choice(['auto', 'cuda', 'cpu']), default='auto')
@click.option('--duration',   help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True), default=DEFAULT_DURATION)
@click.option('--fresh',      help='Start over: delete the exported digits, the dataset and the run first', is_flag=True)
@click.option('--min-score',  help='Fail unless this fraction of samples is recognised', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.8)
def main(**kwargs):
    """The quick-start demo: train a small class-conditional PFGM++ model (D=128) on scikit-learn's
    bundled 8x8 digits with train.py, draw 100 samples with generate.py and score them with a
    classifier trained on the real digits (benchmarks/quickstart_quality.py).

    \b
    # About 5 minutes on 2 CPU cores, set-up included (make quickstart):
    python quickstart.py
    \b
    # Start over, on a GPU:
    python quickstart.py --fresh --device=cuda

    A second run reuses the dataset and continues the run (train.py --resume=auto; a longer
    --duration trains on), then samples and scores again. Exits with status 1 when a step fails or
    fewer than --min-score of the samples are recognised as digits.
    """
    try:
        run_quickstart(**kwargs)
    except StepError as err:
        raise click.ClickException(str(err)) from None

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()
