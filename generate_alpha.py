"""Robustness to errors in the sampling trajectory (PFGM++, Section 5): before every sampler step,
add alpha * sigma_t * N(0, I) to the state x_t, for each alpha in a list. One folder of PNGs per
setting, OUTDIR/alpha_<alpha>/, ready for fid.py (complete folders are skipped on a rerun).

\b
python generate_alpha.py --network=network-snapshot-200000.pt --outdir=robustness \\
    --alphas=0,0.05,0.1,0.2 --seeds=0-49999
torchrun --standalone --nproc_per_node=8 fid.py calc --images=robustness/alpha_0.1 --ref=...
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
    [click.option('--alphas', help='Noise injection strengths alpha, one folder each', metavar='LIST', type=str,
                  default='0,0.05,0.1,0.2', show_default=True, callback=cli.click_list(robustness.parse_alphas))],
    robustness.alpha_settings)

#----------------------------------------------------------------------------

main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
