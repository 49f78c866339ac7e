"""Sample quality against the number of sampling steps (NFE): one folder of PNGs per step count,
OUTDIR/steps_<N>/, ready for fid.py (complete folders are skipped on a rerun). Heun's method uses
NFE = 2N - 1 network evaluations for N steps (N with --solver=euler).

\b
python generate_steps.py --network=network-snapshot-200000.pt --outdir=nfe \\
    --steps-list=4,6,9,13,18 --seeds=0-49999
"""

import click

import generate
from torch_utils import cli

#----------------------------------------------------------------------------

def parse_steps(s) -> list[int]:
    """--steps-list: step counts >= 1."""
    steps = cli.parse_int_list(s, unique=True)
    if not steps or any(n < 1 for n in steps):
        raise ValueError(f'{s!r} must hold step counts >= 1.')
    return steps


def steps_settings(steps: list[int]) -> list[tuple[str, dict, None]]:
    """(folder, sampler overrides, network transform) for generate.run_study()."""
    return [(f'steps_{n}', dict(num_steps=n), None) for n in steps]

#----------------------------------------------------------------------------

@click.command(help=__doc__)
@generate.network_options(required=True)
@generate.output_options
@click.option('--steps-list', '--steps_list', 'steps_list', help='Numbers of sampling steps N, one folder each', metavar='LIST',
              type=str, default='4,6,9,13,18', show_default=True, callback=cli.click_list(parse_steps))
@generate.sampler_options(with_steps=False)
@generate.performance_options
def cmdline(steps_list, **options):
    generate.run_study_command(options, steps_settings(steps_list))

#----------------------------------------------------------------------------

main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
