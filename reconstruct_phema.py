"""Post-hoc EMA: choose the EMA length after training (Karras et al., CVPR 2024, Section 3).

A run trained with train.py --phema=0.05,0.10 saves, with every network snapshot, the power-function
EMAs of those relative standard deviations (phema-snapshot-<kimg>.pt). This script combines them
linearly into the EMA of any other std (or EDM half-life) at one snapshot's time, and writes each as
an ordinary network snapshot, OUTDIR/phema_<std>/network-snapshot-<kimg>.pt, that generate.py (one
network or run-directory mode) and fid.py sweep read as they are.

\b
# EMA lengths 0.03 to 0.13 at the last snapshot, then sample and score each:
python reconstruct_phema.py --run=training-runs/exp_name --std=0.03,0.05,0.07,0.09,0.11,0.13
for d in training-runs/exp_name/phema_*; do python generate.py --outdir=$d --seeds=0-49999; done
python fid.py sweep --run='training-runs/exp_name/phema_*' --ref=fid-refs/cifar10-32x32.npz

It prints how well each requested profile is matched (the relative L2 error of the fitted averaging
profile) and refuses, with one line, an std the stored profiles cannot represent (error above
--max-residual), or a run without profiles. It runs on the CPU, one snapshot in memory at a time.
"""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import click  # noqa: E402

from torch_utils import cli  # noqa: E402
from training import phema, phema_reconstruct  # noqa: E402

#----------------------------------------------------------------------------

@click.command(help=__doc__, context_settings=cli.CONTEXT_SETTINGS)
@click.option('--run', help='Training run with phema-snapshot-*.pt (train.py --phema)', metavar='DIR', type=str, required=True)
@click.option('--std', help='Relative standard deviations of the EMAs to reconstruct', metavar='LIST', type=str, callback=cli.click_list(cli.parse_float_list), default=None)
@click.option('--half-life', 'half_life', help='EDM EMA half-lives to reconstruct, converted to the std', metavar='MIMG', type=str, callback=cli.click_list(cli.parse_float_list), default=None)
@click.option('--outdir', help='Where the phema_<std>/ folders go  [default: --run]', metavar='DIR', type=str)
@click.option('--kimg', help='The snapshot (training length) to reconstruct at  [default: the last]', metavar='KIMG', type=click.IntRange(min=0))
@click.option('--max-residual', 'max_residual', help='Refuse a profile matched worse than this relative L2 error', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=phema.DEFAULT_MAX_RESIDUAL, show_default=True)
@cli.debug_option
def cmdline(run, std, half_life, outdir, kimg, max_residual, debug):
    with cli.one_line_errors(debug):
        written = phema_reconstruct.reconstruct_phema(run, outdir, std or (), half_life or (), kimg, max_residual)
        print(f'{"requested":<24}{"std":>9}{"profile error":>15}{"amplification":>15}  network snapshot')
        for w in written:
            print(f'{w["asked"]:<24}{w["std"]:>9.4f}{100 * w["residual"]:>14.2f}%{w["amplification"]:>15.2f}  {w["path"]}')


main = cmdline

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
