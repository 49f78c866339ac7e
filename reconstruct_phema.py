"""Post-hoc EMA: choose the EMA length after training (Karras et al., CVPR 2024, Section 3).

A run trained with train.py --phema=0.05,0.10 saves, with every network snapshot, the power-function
EMAs of those relative standard deviations (phema-snapshot-<kimg>.pt). This script combines them
linearly into the EMA of any other std at one snapshot's time, and writes each as an ordinary network
snapshot, OUTDIR/phema_<std>/network-snapshot-<kimg>.pt, that generate.py (one network or
run-directory mode) and fid.py sweep read as they are.

\b
# EMA lengths 0.03 to 0.13 at the last snapshot, then sample and score each:
python reconstruct_phema.py --run=training-runs/exp_name --std=0.03,0.05,0.07,0.09,0.11,0.13
for d in training-runs/exp_name/phema_*; do python generate.py --outdir=$d --seeds=0-49999; done
python fid.py sweep --run='training-runs/exp_name/phema_*' --ref=fid-refs/cifar10-32x32.npz

--half-life=H (Mimg) reconstructs the EMA that train.py --ema=H keeps, ramp-up included: its
averaging profile is computed step by step with the run's batch and --ema-rampup (recorded with the
snapshots) and fitted as a whole, not only its std, into OUTDIR/phema_halflife_<H>/; the std column
shows that profile's std. --half-life=<the run's --ema> gives back the run's own EMA.

Each line shows the profile error (the relative L2 distance between the fitted averaging profile and
the requested one) and the noise gain: the sum of the absolute combination coefficients, the most by
which errors stored in the snapshots (rounding, noise) can grow in the result (1 when every
coefficient is positive; large when large coefficients cancel). Lengths whose profile error exceeds
--max-residual are not written; they are named in one line at the end and the exit status is 1
(the others are written); if none can be represented, nothing is written. It runs on the CPU, one
snapshot in memory at a time.
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
@click.option('--half-life', 'half_life', help="EMAs that train.py's --ema half-life keeps, ramp-up included", metavar='MIMG', type=str, callback=cli.click_list(cli.parse_float_list), default=None)
@click.option('--outdir', help='Where the phema_<std>/ folders go  [default: --run]', metavar='DIR', type=str)
@click.option('--kimg', help='The snapshot (training length) to reconstruct at  [default: the last]', metavar='KIMG', type=click.FloatRange(min=0))
@click.option('--max-residual', 'max_residual', help='Skip a profile matched worse than this relative L2 error', metavar='FLOAT',
              type=click.FloatRange(min=0, min_open=True), default=phema.DEFAULT_MAX_RESIDUAL, show_default=True)
@cli.debug_option
def cmdline(run, std, half_life, outdir, kimg, max_residual, debug):
    with cli.one_line_errors(debug):
        rows = phema_reconstruct.reconstruct_phema(run, outdir, std or (), half_life or (), kimg, max_residual)
    click.echo(f'{"requested":<24}{"std":>9}{"profile error":>15}{"noise gain":>12}  network snapshot')
    for row in rows:
        if row['path'] is not None:
            click.echo(f'{row["asked"]:<24}{row["std"]:>9.4f}{100 * row["residual"]:>14.2f}%{row["noise_gain"]:>12.2f}  {row["path"]}')
    if any(row['path'] is None for row in rows):
        raise click.ClickException(f'Not written: {phema_reconstruct.describe_refused(rows, max_residual)}.')


main = cmdline

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
