"""The quick-start demo (`make quickstart`): the whole PFGM++ pipeline on scikit-learn's bundled 8x8
handwritten digits; studies/quickstart.py runs the steps."""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import click  # noqa: E402

from studies import quickstart  # noqa: E402
from torch_utils import cli  # noqa: E402

#----------------------------------------------------------------------------

@click.command(context_settings=dict(cli.CONTEXT_SETTINGS, show_default=True))
@click.option('--outdir',     help='Where training runs go', metavar='DIR', type=str, default='training-runs')
@click.option('--name',       help='Run directory name under --outdir', metavar='STR', type=str, default='quickstart')
@click.option('--data-dir',   help='Where the 16x16 dataset ZIP goes', metavar='DIR', type=str, default='datasets')
@click.option('--source-dir', help='Where the exported 8x8 PNGs go', metavar='DIR', type=str, default='downloads/sklearn-digits-8x8')
@cli.device_option(help='Where to train and sample')
@click.option('--duration',   help='Training duration', metavar='MIMG', type=click.FloatRange(min=0, min_open=True), default=quickstart.DEFAULT_DURATION)
@click.option('--per-class',  help='Samples of each digit', metavar='INT', type=click.IntRange(min=1), default=quickstart.PER_CLASS)
@click.option('--seed',       help='Training seed (train.py --seed)', metavar='INT', type=click.IntRange(min=0), default=0)
@click.option('--fresh',      help='Start over: delete the exported digits, the dataset and the run first', is_flag=True)
@click.option('--min-score',  help='Fail unless this fraction of samples is recognised', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.8)
@cli.debug_option
def cmdline(debug: bool, **kwargs):
    """The quick-start demo: train a small class-conditional PFGM++ model (D=128) on scikit-learn's
    bundled 8x8 digits with train.py, draw 10 samples of each digit with generate.py and score them
    with a classifier trained on the real digits (metrics/quality.py).

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
    with cli.one_line_errors(debug):
        quickstart.run_quickstart(**kwargs)

main = cmdline  # The name tools/make_help_docs.py imports.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()
