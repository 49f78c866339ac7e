"""Generate images with a trained PFGM++ (or EDM) network: EDM's samplers (sampling/samplers.py) started
from the PFGM++ prior for the network's D (training/pfgmpp.sample_prior), one PNG per seed, optionally
with guidance (sampling/guidance.py) or Restart sampling.

Examples:

\b
# 64 images from one checkpoint (our .pt, or EDM/PFGM++ legacy files with --allow-pickle)
python generate.py --network=training-runs/00000-cifar10/network-snapshot-200000.pt \\
    --outdir=out --seeds=0-63 --batch=64

\b
# Every checkpoint of a training run, each into RUN/ckpt_<kimg>/, 8 GPUs (as the PFGM++ code base)
torchrun --standalone --nproc_per_node=8 generate.py --seeds=0-49999 --outdir=./training-runs/exp_name

\b
# Restart sampling with the published CIFAR-10 D=2048 configuration (43 network evaluations)
python generate.py --network=NET --outdir=out --seeds=0-49999 --restart=cifar10-pfgmpp-d2048

\b
# Classifier-free guidance 1.5, applied for sigma in (0.28, 2.9]
python generate.py --network=NET --outdir=out --seeds=0-63 --guidance=1.5 --guidance-interval=0.28,2.9

A rerun of a command samples only the seeds whose image is missing, so it completes an interrupted
run; each folder's generate.json records the seeds requested and those written.

Each image depends only on its seed: the seed's own torch.Generator draws, in this order, the prior
sample, the class label (conditional networks) and the sampler's noise (S_churn, alpha, Restart
jumps), as EDM does, so for D -> infinity an EDM checkpoint gives EDM's images for the same seeds.
The network knows its D from its checkpoint; --D is needed only for a legacy file that records none.
The study scripts generate_alpha.py, generate_steps.py and generate_quant.py share this script's
options and code (sampling/). From Python, sampling.generation.generate(**options) takes the same
options by name.
"""

from torch_utils.threads import use_passive_threads

use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).

import click  # noqa: E402

from sampling import generation  # noqa: E402
from sampling.options import command, network_options, output_options, performance_options, sampler_options  # noqa: E402
from torch_utils import cli  # noqa: E402
from torch_utils import distributed as dist  # noqa: E402

#----------------------------------------------------------------------------

@command(help=__doc__)

# Network and PFGM++.
@network_options(required=False)
@click.option('--ckpt', 'min_kimg', help='Run directory mode: first checkpoint to sample, in kimg', metavar='KIMG', type=click.IntRange(min=0))
@click.option('--end-ckpt', '--end_ckpt', 'max_kimg', help='Run directory mode: last checkpoint to sample, in kimg', metavar='KIMG', type=click.IntRange(min=0))

# Output.
@output_options
@click.option('--grid', help='Also save a grid of the first 64 images (a path outside --outdir)', metavar='PNG', type=str)
@click.option('--trajectory', help='Also save the denoising trajectory of the first 8 images as a GIF', metavar='GIF', type=str)

# Sampler and guidance.
@sampler_options(with_steps=True)

# Speed.
@performance_options

def cmdline(debug: bool, **options) -> None:
    # The help text is the module docstring.
    try:
        with cli.one_line_errors(debug):
            generation.generate(**options)
            dist.print0('Done.')
    finally:
        dist.shutdown()


main = cmdline  # EDM's name.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
