"""Robustness to post-training quantisation (PFGM++, Section 5): the network's weights are quantised
to k bits per tensor and dequantised, for each k in a list, as in PFGM++'s published study. One folder
of PNGs per setting, OUTDIR/bits_<k>/ (OUTDIR/bits_<k>_all/ with --scope=all), ready for fid.py
(complete folders are skipped on a rerun).

The rule of each scope: sampling/quantization.py.

\b
python generate_quant.py --network=network-snapshot-200000.pt --outdir=quant \\
    --bits=5,6,7,8,9 --seeds=0-49999
"""

import click

from sampling import quantization
from sampling.options import command, network_options, output_options, performance_options, run_study_command, sampler_options
from studies import robustness
from torch_utils import cli

#----------------------------------------------------------------------------

@command(help=__doc__)
@network_options(required=True)
@output_options
@click.option('--bits', help='Bit widths of the quantised weights, one folder each', metavar='LIST', type=str,
              default='5,6,7,8,9', show_default=True, callback=cli.click_list(robustness.parse_bits))
@click.option('--scope', help='Which parameters: the published rule, or every float parameter', type=click.Choice(list(quantization.SCOPES)),
              default='published', show_default=True)
@sampler_options(with_steps=True)
@performance_options
def cmdline(bits, scope, **options):
    run_study_command(options, robustness.quant_settings(bits, scope))

#----------------------------------------------------------------------------

main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
