"""Sample quality against the number of sampling steps (NFE): one folder of PNGs per step count,
OUTDIR/steps_<N>/, ready for fid.py (complete folders are skipped on a rerun). Heun's method uses
NFE = 2N - 1 network evaluations for N steps (N with --solver=euler).

\b
python generate_steps.py --network=network-snapshot-200000.pt --outdir=nfe \\
    --steps-list=4,6,9,13,18 --seeds=0-49999
"""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import click  # noqa: E402

from sampling.options import study_command  # noqa: E402
from studies import robustness  # noqa: E402
from torch_utils import cli  # noqa: E402

#----------------------------------------------------------------------------

cmdline = study_command(
    __doc__,
    [click.option('--steps-list', '--steps_list', 'steps_list', help='Numbers of sampling steps N, one folder each', metavar='LIST',
                  type=str, default='4,6,9,13,18', show_default=True, callback=cli.click_list(robustness.parse_steps))],
    robustness.steps_settings, with_steps=False)

#----------------------------------------------------------------------------

main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
