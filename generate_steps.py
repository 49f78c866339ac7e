"""Sample quality against the number of sampling steps (NFE): one folder of PNGs per step count,
OUTDIR/steps_<N>/, ready for fid.py (complete folders are skipped on a rerun). Heun's method uses
NFE = 2N - 1 network evaluations for N steps (N with --solver=euler).

\b
python generate_steps.py --network=network-snapshot-200000.pt --outdir=nfe \\
    --steps-list=4,6,9,13,18 --seeds=0-49999
"""

import click

from sampling.options import command, network_options, output_options, performance_options, run_study_command, sampler_options
from studies import robustness
from torch_utils import cli

#----------------------------------------------------------------------------

@command(help=__doc__)
@network_options(required=True)
@output_options
@click.option('--steps-list', '--steps_list', 'steps_list', help='Numbers of sampling steps N, one folder each', metavar='LIST',
              type=str, default='4,6,9,13,18', show_default=True, callback=cli.click_list(robustness.parse_steps))
@sampler_options(with_steps=False)
@performance_options
def cmdline(steps_list, **options):
    run_study_command(options, robustness.steps_settings(steps_list))

#----------------------------------------------------------------------------

main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
