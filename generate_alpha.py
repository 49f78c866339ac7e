"""Robustness to errors in the sampling trajectory (PFGM++, Section 5): before every sampler step,
add alpha * sigma_t * N(0, I) to the state x_t, for each alpha in a list. One folder of PNGs per
setting, OUTDIR/alpha_<alpha>/, ready for fid.py (complete folders are skipped on a rerun).

\b
python generate_alpha.py --network=network-snapshot-200000.pt --outdir=robustness \\
    --alphas=0,0.05,0.1,0.2 --seeds=0-49999
torchrun --standalone --nproc_per_node=8 fid.py calc --images=robustness/alpha_0.1 --ref=...
"""

import click

import generate
from torch_utils import cli

#----------------------------------------------------------------------------

def parse_alphas(s) -> list[float]:
    """--alphas: non-negative noise strengths."""
    alphas = cli.parse_float_list(s)
    if any(a < 0 for a in alphas):
        raise ValueError(f'{s!r} holds negative values; alpha scales a noise level and must be >= 0.')
    return alphas


def alpha_settings(alphas: list[float]) -> list[tuple[str, dict, None]]:
    """(folder, sampler overrides, network transform) for generate.run_study()."""
    return [(f'alpha_{alpha:g}', dict(alpha=alpha), None) for alpha in alphas]

#----------------------------------------------------------------------------

@click.command(help=__doc__)
@generate.network_options(required=True)
@generate.output_options
@click.option('--alphas', help='Noise injection strengths alpha, one folder each', metavar='LIST', type=str,
              default='0,0.05,0.1,0.2', show_default=True, callback=cli.click_list(parse_alphas))
@generate.sampler_options(with_steps=True)
@generate.performance_options
def cmdline(alphas, **options):
    generate.run_study_command(options, alpha_settings(alphas))

#----------------------------------------------------------------------------

main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
