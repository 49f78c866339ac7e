"""Reference statistics, Frechet Inception Distance (FID), Inception Score (IS) and Kernel Inception
Distance (KID), computed with the Inception-v3 detector that EDM and PFGM++ report their numbers with.

    python fid.py ref --data=datasets/cifar10-32x32.zip --dest=fid-refs/cifar10-32x32.npz
    torchrun --standalone --nproc_per_node=8 -- fid.py calc --images=out --ref=fid-refs/cifar10-32x32.npz --num=50000
    python fid.py sweep --run=training-runs/exp_name --ref=fid-refs/cifar10-32x32.npz
"""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import functools  # noqa: E402
import os  # noqa: E402
from typing import Any, Callable  # noqa: E402

import click  # noqa: E402

from metrics.evaluation import calc, check_metrics, ref, sweep  # noqa: E402
from torch_utils import cli  # noqa: E402
from torch_utils import distributed as dist  # noqa: E402

#----------------------------------------------------------------------------
# Command line: thin wrappers.

def common_options(fn: Callable) -> Callable:
    """Options that every subcommand has, and one-line errors for what the user got wrong."""
    @click.option('--detector', help='Detector pickle or TorchScript file  [default: Inception-v3]', metavar='PATH|URL', type=str, default=None)
    @click.option('--allow-pickle', help='Load a pickle from a source other than the official URL (runs its code)', is_flag=True)
    @click.option('--batch', help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
    @click.option('--workers', help='DataLoader worker processes per process', metavar='INT', type=click.IntRange(min=0),
                  default=min(3, os.cpu_count() or 1), show_default=True)
    @cli.device_option('Where to run the detector')
    @cli.debug_option
    @functools.wraps(fn)
    def wrapper(debug: bool, **kwargs: Any) -> None:
        try:
            with cli.one_line_errors(debug):
                fn(**kwargs)
        finally:
            dist.shutdown()
    return wrapper


@click.group(cls=cli.SectionedGroup)
def main():
    """Calculate FID, IS and KID with the Inception-v3 detector of EDM and PFGM++.

    \b
    # Reference statistics of a dataset
    python fid.py ref --data=datasets/cifar10-32x32.zip --dest=fid-refs/cifar10-32x32.npz

    \b
    # FID of generated images, on 8 GPUs ('--' keeps torchrun from reading --num)
    torchrun --standalone --nproc_per_node=8 -- fid.py calc --images=out \\
        --ref=fid-refs/cifar10-32x32.npz --num=50000

    \b
    # Every ckpt_*/ folder of a run, best checkpoint last
    python fid.py sweep --run=training-runs/exp_name --ref=fid-refs/cifar10-32x32.npz
    """

metrics_option = click.option('--metrics', help='Comma-separated list of fid, is, kid', metavar='LIST', type=str, default='fid',
                              show_default=True, callback=cli.click_list(check_metrics))


@main.command('ref')
@click.option('--data', help='Dataset: folder or .zip of images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', help='Where to save the statistics', metavar='NPZ', type=str, required=True)
@click.option('--features', help='Also save the features, which KID needs', is_flag=True)
@common_options
def ref_command(**kwargs) -> None:
    """Calculate reference statistics of a dataset, for 'calc' and 'sweep'."""
    ref(**kwargs)


def evaluation_options(num_help: str, seed_help: str, json_help: str) -> Callable:
    """--ref --num --subset-seed --metrics --json, and common_options: what 'calc' and 'sweep' share."""
    options = [
        click.option('--ref', help='Reference statistics', metavar='NPZ|URL', type=str, required=True),
        click.option('--num', help=num_help, metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True),
        click.option('--subset-seed', '--seed', 'seed', help=seed_help, metavar='INT', type=int, default=0, show_default=True),
        metrics_option,
        click.option('--json', 'json_path', help=json_help, metavar='FILE', type=str, default=None),
        common_options,
    ]
    def decorator(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorator


@main.command('calc')
@click.option('--images', help='Generated images: folder or .zip', metavar='PATH|ZIP', type=str, required=True)
@evaluation_options('Number of images to use', 'Random seed for choosing the images',
                    'Also write the results and their provenance to this JSON file')
def calc_command(**kwargs) -> None:
    """Calculate metrics of generated images; the last line printed is the FID."""
    calc(**kwargs)


@main.command('sweep')
@click.option('--run', help='Folder with the ckpt_*/ image folders that generate.py wrote, or a pattern of such folders', metavar='DIR|GLOB', type=str, required=True)
@click.option('--ranges', help='Disjoint blocks of --num images to evaluate per folder, in name (seed) order', metavar='INT',
              type=click.IntRange(min=1), default=1, show_default=True)
@evaluation_options('Number of images per evaluation', 'Random seed for choosing the images (with --ranges=1)',
                    'Also write the table, the best checkpoint and this sweep\'s records to this JSON file')
def sweep_command(**kwargs) -> None:
    """Evaluate every ckpt_*/ folder of a run; results go to RUN/metrics.jsonl.

    --run may be a pattern such as 'RUN/phema_*' (quoted): every matching folder is swept, e.g. the
    post-hoc EMA reconstructions of reconstruct_phema.py, and the table covers them all.
    Folders already recorded there are skipped, and the table ends with the checkpoint of lowest FID
    (the minimum over its --ranges blocks: --ranges=3 with 150000 images per folder gives EDM's three
    seed ranges 0-49999, 50000-99999, 100000-149999)."""
    sweep(**kwargs)


cmdline = main

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
