"""The quick-start demo (`make quickstart`, quickstart.py): the whole PFGM++ pipeline on scikit-learn's bundled 8x8
handwritten digits (1,797 real images, 10 classes), within minutes on a laptop CPU.

    python quickstart.py                    # Export, convert, train, generate, score.
    python quickstart.py --device=cuda      # The same on a GPU (much faster).
    python quickstart.py --fresh            # Start over: new dataset and a new training run.

Steps, each with the project's own tools (every command is printed first, as one could type it):
  1. export the digits as PNGs into a class-folder tree (folders 0..9, so class index = digit);
  2. dataset_tool.py's convert_dataset() (dataprep/conversion.py) converts them to a 16x16 dataset ZIP;
  3. train.py trains a small class-conditional PFGM++ model (D=128), in its own process;
  4. generate.py's generate_images() (sampling/generation.py) draws 10 samples of each digit (--class; seeds 0-99) into
     SAMPLES/<digit>/, and a grid with one row per digit;
  5. metrics/quality.py's classifier, trained on the real digits, scores the samples.

Re-running is cheap: the exported digits and the dataset ZIP are reused, and train.py continues the
run with --resume=auto (a finished run is not trained again; a longer --duration continues it). The
samples are always drawn anew from the newest snapshot. --fresh deletes the demo's own files first.
Needs scikit-learn (pip install -r requirements-demo.txt).
"""

import os
import sys
import json
import shlex
import shutil
import subprocess
import time
from typing import Optional

import torch

import dnnlib
from dataprep import conversion
from metrics import quality as quickstart_quality
from sampling import generation, provenance
from torch_utils import image_io, misc
from training import checkpoint, presets
from training.launch import EXIT_STOPPED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The repository: its scripts are the steps' commands.

NUM_CLASSES = quickstart_quality.NUM_CLASSES
PER_CLASS = 10  # Samples per digit: seeds 0..99, class c drawn from seeds 10c..10c+9.
DEFAULT_DURATION = 0.035  # Mimg: 2.5 to 5 minutes of training on 2 CPU cores.

TRAIN_OPTIONS = presets.RECIPES['quickstart']  # train.py options of the demo, beyond the I/O options.

#----------------------------------------------------------------------------
# Helpers.

class StepError(ValueError):
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
    if returncode == EXIT_STOPPED:
        raise StepError(f'{step} was stopped early after saving its state; run the quick start again to continue where it stopped.')
    if returncode != 0:
        raise StepError(f'{step} failed (exit status {returncode}); see its output above.')


def script(name: str) -> str:
    """A top-level script of this repository, as a path relative to the working directory when possible."""
    path = os.path.join(ROOT, name)
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


def cli_options(options: dict) -> list[str]:
    """{'lr_rampup': 1} -> ['--lr-rampup=1'], train.py's spelling of its options."""
    return [f'--{k.replace("_", "-")}={v}' for k, v in options.items()]


def export_digits(dest: str) -> int:
    """Write scikit-learn's real 8x8 digits as grayscale PNGs DEST/<digit>/<index>.png (folders 0..9, so
    dataset_tool.py's sorted folder labels equal the digits). Written to a temporary folder and
    renamed, so an existing DEST is complete. Returns the number of images."""
    images, labels = quickstart_quality.load_real_digits()
    tmp = dest.rstrip('/\\') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    for idx, (image, label) in enumerate(zip(images, labels)):
        image_io.save_image(torch.from_numpy(image)[None], os.path.join(tmp, str(int(label)), f'{idx:04d}.png'))
    os.replace(tmp, dest)
    return len(images)


def newest_snapshot(run_dir: str) -> Optional[str]:
    """The newest checkpoint of the run to sample (checkpoint.find_checkpoints), or None."""
    found = checkpoint.find_checkpoints(run_dir, 'network')
    return found[-1][1] if found else None


def remove_export(source_dir: str) -> None:
    """Delete digits exported by export_digits(), refusing folders that hold anything else."""
    if not os.path.isdir(source_dir):
        return
    if not set(os.listdir(source_dir)) <= {str(c) for c in range(NUM_CLASSES)}:
        raise StepError(f'{source_dir} holds more than the exported digits (folders 0..9); remove it yourself or choose another --source-dir.')
    shutil.rmtree(source_dir)


def remove_run(run_dir: str) -> None:
    """Delete a previous quick-start run, refusing folders that are not training runs."""
    if not os.path.isdir(run_dir):
        return
    if os.listdir(run_dir) and not os.path.isfile(os.path.join(run_dir, 'training_options.json')):
        raise StepError(f'{run_dir} does not look like a training run (no training_options.json); remove it yourself or choose another --outdir/--name.')
    shutil.rmtree(run_dir)

def clear_samples(samples: str) -> None:
    """Delete the samples of an earlier run (for generate.py a newer snapshot is another
    configuration), refusing a folder that holds anything the quick start did not write."""
    if not os.path.isdir(samples):
        return
    def ours(name: str) -> bool:
        return name.endswith('.png') or name == provenance.MANIFEST_NAME
    for entry in os.listdir(samples):
        path = os.path.join(samples, entry)
        if not ((ours(entry) and os.path.isfile(path)) or (entry.isdigit() and os.path.isdir(path) and all(map(ours, os.listdir(path))))):
            raise StepError(f'{samples} holds {entry}, which the quick start did not write; remove it yourself or choose another --outdir/--name.')
    shutil.rmtree(samples)


def demo_paths(outdir: str, name: str, data_dir: str, source_dir: str) -> dnnlib.EasyDict:
    """Every file and folder of the demo."""
    run_dir = os.path.join(outdir, name)
    return dnnlib.EasyDict(outdir=outdir, name=name, data_dir=data_dir, digits=source_dir, dataset=os.path.join(data_dir, 'digits-16x16.zip'),
                           run_dir=run_dir, samples=os.path.join(run_dir, 'samples'), grid=os.path.join(run_dir, 'samples-grid.png'),
                           quality=os.path.join(run_dir, 'quality.json'), network=None)


def remove_previous(paths: dnnlib.EasyDict) -> None:
    """--fresh: delete the exported digits, the dataset and the run."""
    print(f'--fresh: removing {paths.digits}, {paths.dataset} and {paths.run_dir}')
    remove_export(paths.digits)
    if os.path.isfile(paths.dataset):
        os.remove(paths.dataset)
    remove_run(paths.run_dir)

#----------------------------------------------------------------------------
# The steps. Each returns a line saying what it did.

def export_step(paths: dnnlib.EasyDict) -> str:
    """1. The real digits as a class-folder tree (reused when it exists)."""
    if os.path.isdir(paths.digits):
        print(f'Reusing the exported digits in {paths.digits}')
        return f'reused the 1,797 real 8x8 digits exported to {paths.digits}/<digit>/'
    print(f'Exporting scikit-learn\'s 8x8 digits to {paths.digits}/<digit>/ ...')
    os.makedirs(os.path.dirname(os.path.abspath(paths.digits)), exist_ok=True)
    count = export_digits(paths.digits)
    return f'exported {count:,} real 8x8 digits (scikit-learn) to {paths.digits}/<digit>/'


def convert_step(paths: dnnlib.EasyDict) -> str:
    """2. The dataset ZIP, converted to 16x16 by dataset_tool.convert_dataset (reused when it exists;
    the function writes it atomically, so one that exists is complete)."""
    if os.path.isfile(paths.dataset):
        print(f'Reusing the dataset {paths.dataset}')
        return f'reused the 16x16 dataset {paths.dataset}'
    print('$ ' + shlex.join(['python', script('dataset_tool.py'), f'--source={paths.digits}', f'--dest={paths.dataset}', '--resolution=16x16']), flush=True)
    result = conversion.convert_dataset(source=paths.digits, dest=paths.dataset, resolution=(16, 16))
    return f'converted {result.written:,} of them with dataset_tool.py to the 16x16 dataset {paths.dataset}'


def train_step(paths: dnnlib.EasyDict, device: str, duration: float, seed: int = 0) -> str:
    """3. Training with train.py; --resume=auto continues (or just re-confirms) an earlier run of the
    same name. Sets paths.network to the newest snapshot."""
    run_dir = paths.run_dir
    state_kimg = max((kimg for kimg, _ in checkpoint.find_checkpoints(run_dir, 'state')), default=None)
    tick = max(round(duration * 1000 / 10, 3), 0.001)  # About ten progress lines.
    run_command([sys.executable, script('train.py'), f'--outdir={paths.outdir}', f'--name={paths.name}', f'--data={paths.dataset}',
                 *cli_options(TRAIN_OPTIONS), f'--duration={duration:g}', f'--tick={tick:g}', f'--device={device}',
                 f'--seed={seed}', '--resume=auto'], 'train.py')
    paths.network = newest_snapshot(run_dir)
    target_kimg = round(duration * 1000, 6)  # train.py's total_kimg: the run ends at the first step that reaches it.
    if paths.network is None or checkpoint.kimg_from_name(paths.network) < target_kimg:
        raise StepError(f'train.py stopped before {target_kimg} kimg (newest snapshot: {paths.network}); run the quick start again to continue.')
    model = f'class-conditional PFGM++ model (D={TRAIN_OPTIONS["D"]:g}, DDPM++ with --cbase={TRAIN_OPTIONS["cbase"]} --cres={TRAIN_OPTIONS["cres"]})'
    if state_kimg is None:
        return f'trained a {model} for {duration * 1000:g} kimg with train.py in {run_dir}'
    if state_kimg >= target_kimg:
        return f'reused the {model} trained earlier to {state_kimg} kimg in {run_dir} (train.py --resume=auto had nothing to do)'
    return f'continued the training of the {model} in {run_dir} from {state_kimg} to {duration * 1000:g} kimg (train.py --resume=auto)'


def generate_step(paths: dnnlib.EasyDict, device: str, per_class: int) -> str:
    """4. `per_class` samples of every digit c (seeds per_class * c ...) with generate.py's
    generate_images() into SAMPLES/<c>/, always from the newest snapshot, and a grid with one row
    per digit. Runs in this process: ten generate.py processes would spend more time starting than
    sampling."""
    clear_samples(paths.samples)
    torch_device = misc.resolve_device(device)
    net, info = generation.load_for_sampling(paths.network, allow_pickle=False, device=torch_device)
    images, labels = [], []
    for c in range(NUM_CLASSES):
        seeds = list(range(c * per_class, (c + 1) * per_class))
        outdir = os.path.join(paths.samples, str(c))
        print('$ ' + shlex.join(['python', script('generate.py'), f'--network={paths.network}', f'--outdir={outdir}',
                                 f'--seeds={seeds[0]}-{seeds[-1]}', f'--class={c}', f'--device={device}']) + '  # in this process', flush=True)
        generation.generate_images(net, seeds, outdir, batch_size=per_class, class_idx=c, device=torch_device, progress=False,
                                 network=paths.network, network_sha256=info['sha256'])
        images += [image_io.load_image(generation.image_path(outdir, seed)) for seed in seeds]
        labels += [c] * per_class
    image_io.save_grid(torch.stack(images), paths.grid, labels=labels)
    num = NUM_CLASSES * per_class
    return (f'generated {num} samples ({per_class} of each digit, seeds 0-{num - 1}) with generate.py --class from '
            f'{os.path.basename(paths.network)}, and a grid with one row per digit')


def score_step(paths: dnnlib.EasyDict, min_score: float) -> tuple[dict, list[str]]:
    """5. The classifier's verdict on the samples, written to QUALITY; returns (quality, problems)."""
    print('Scoring the samples with a classifier trained on the real digits (metrics/quality.py) ...', flush=True)
    try:
        quality = quickstart_quality.score_samples(paths.samples)
    except (ValueError, ImportError, OSError) as err:
        raise StepError(f'Scoring failed: {err}') from None
    problems = quickstart_quality.failures(quality, min_score)
    quality.update(network=paths.network, min_score=min_score, passed=not problems, problems=problems)
    text = json.dumps(quality, indent=2).encode()
    dnnlib.util.write_atomic(paths.quality, lambda f: f.write(text))
    return quality, problems

#----------------------------------------------------------------------------

def print_summary(paths: dnnlib.EasyDict, done: list[str], seconds: dict, quality: dict) -> None:
    print()
    print('Quick start done. What it did:')
    for i, line in enumerate(done, 1):
        print(f'  {i}. {line}')
    print('Time per step: ' + ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items()) + f' (total {sum(seconds.values()):.0f} s)')
    print('Files:')
    print(f'  dataset:   {paths.dataset}')
    print(f'  run:       {paths.run_dir}/ (log.txt, training_options.json, network snapshots, training states)')
    print(f'  network:   {paths.network}')
    print(f'  samples:   {paths.samples}/<digit>/ ({quality["num_images"]} PNGs)')
    print(f'  grid:      {paths.grid}')
    print(f'  quality:   {paths.quality}')
    print(quickstart_quality.summary_line(quality))


def run_quickstart(
    outdir: str = 'training-runs',          # Training runs go here, as with train.py.
    name: str = 'quickstart',               # Run directory name: OUTDIR/NAME.
    data_dir: str = 'datasets',             # Where the 16x16 dataset ZIP goes.
    source_dir: str = 'downloads/sklearn-digits-8x8',  # Where the exported 8x8 PNGs go.
    device: str = 'auto',                   # auto | cuda | cpu, for training and sampling.
    duration: float = DEFAULT_DURATION,     # Training duration, Mimg.
    per_class: int = PER_CLASS,             # Samples of each digit.
    seed: int = 0,                          # Training seed (train.py --seed).
    fresh: bool = False,                    # Delete the exported digits, the dataset and the run first.
    min_score: float = 0.8,                 # Fail if fewer samples are recognised as digits.
) -> dict:
    """Run the demo's five steps; return {'paths', 'seconds' (per step), 'quality' (score_samples),
    'passed'}. Raises StepError (a ValueError) with a one-line message when a step fails or the
    samples fail the quality bar."""
    if not duration > 0 or isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f'The duration must be > 0 Mimg and per_class a positive integer, got {duration!r} and {per_class!r}.')
    try:
        import sklearn  # noqa: F401  (only to fail early, with the fix)
    except ImportError:
        raise StepError('The quick start needs scikit-learn; install it with: pip install -r requirements-demo.txt') from None
    paths = demo_paths(outdir, name, data_dir, source_dir)
    if fresh:
        remove_previous(paths)
    seconds, done = {}, []
    def timed(step: str, fn, *args):
        start = time.time()
        result = fn(paths, *args)
        seconds[step] = time.time() - start
        return result
    done.append(timed('export', export_step))
    done.append(timed('convert', convert_step))
    done.append(timed('train', train_step, device, duration, seed))
    done.append(timed('generate', generate_step, device, per_class))
    quality, problems = timed('score', score_step, min_score)
    done.append('scored them with a classifier trained on the real digits')
    print_summary(paths, done, seconds, quality)
    if problems:
        raise StepError('The samples fail the quality bar: ' + '; '.join(problems) + '; train longer (--duration) or see docs/quickstart.md.')
    return dict(paths=dict(paths), seconds=seconds, quality=quality, passed=True)

#----------------------------------------------------------------------------
