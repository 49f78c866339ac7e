"""Robustness to post-training quantisation (PFGM++, Section 5): the network's weights are quantised
to k bits per tensor and dequantised, for each k in a list, as in PFGM++'s published study. One folder
of PNGs per setting, OUTDIR/bits_<k>/ (OUTDIR/bits_<k>_<scope>/ for the other scopes), ready for fid.py
(complete folders are skipped on a rerun).

The rule of each scope: sampling/quantization.py.

\b
python generate_quant.py --network=network-snapshot-200000.pt --outdir=quant \\
    --bits=5,6,7,8,9 --seeds=0-49999
"""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import click  # noqa: E402

from sampling import quantization  # noqa: E402
from sampling.options import study_command  # noqa: E402
from studies import robustness  # noqa: E402
from torch_utils import cli  # noqa: E402

#----------------------------------------------------------------------------

cmdline = study_command(
    __doc__,
    [click.option('--bits', help='Bit widths of the quantised weights, one folder each', metavar='LIST', type=str,
                  default='5,6,7,8,9', show_default=True, callback=cli.click_list(robustness.parse_bits)),
     click.option('--scope', help='Which parameters: the published rule (keeps "32" layers exact), finest (keeps the network\'s own finest stage exact), or every float parameter', type=click.Choice(list(quantization.SCOPES)),
                  default='published', show_default=True)],
    robustness.quant_settings)

#----------------------------------------------------------------------------

main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
