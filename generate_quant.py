"""Robustness to post-training quantisation (PFGM++, Section 5): every floating-point parameter of the
network is rounded to k bits, per tensor, for each k in a list. One folder of PNGs per setting,
OUTDIR/bits_<k>/, ready for fid.py (complete folders are skipped on a rerun).

Quantisation is uniform and affine per tensor: with lo = min(w) and hi = max(w), the 2^k levels are
lo + j (hi - lo) / (2^k - 1), j = 0 .. 2^k - 1, and each weight moves to the nearest one. Buffers
(e.g. iDDPM's noise levels) stay exact; computation stays in float32.

\b
python generate_quant.py --network=network-snapshot-200000.pt --outdir=quant \\
    --bits=8,6,4 --seeds=0-49999
"""

import copy
import functools

import click
import torch

import generate

#----------------------------------------------------------------------------

def quantize_tensor(w: torch.Tensor, bits: int) -> torch.Tensor:
    """w with each element replaced by the nearest of 2^bits evenly spaced levels from min(w) to
    max(w) (a constant tensor stays as it is); computed in float64, returned in w's dtype."""
    if not 1 <= bits <= 32:
        raise ValueError(f'Quantisation needs 1 to 32 bits, got {bits}.')
    w64 = w.detach().to(torch.float64)
    lo, hi = w64.min(), w64.max()
    if w.numel() == 0 or not bool(hi > lo):
        return w.detach().clone()
    step = (hi - lo) / (2 ** bits - 1)
    return (lo + torch.round((w64 - lo) / step) * step).to(w.dtype)


def quantize_weights(net: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A copy of `net` whose floating-point parameters are quantize_tensor()'d to `bits` bits, each
    tensor with its own range; `net` itself is unchanged."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for param in net.parameters():
            if param.is_floating_point():
                param.copy_(quantize_tensor(param, bits))
    return net


def parse_bits(s) -> list[int]:
    """--bits: bit widths from 1 to 32."""
    bits = generate.parse_int_list(s)
    if not bits or any(not 1 <= k <= 32 for k in bits):
        raise ValueError(f'{s!r} must hold bit widths from 1 to 32.')
    return bits


def quant_settings(bits: list[int]) -> list[tuple[str, dict, object]]:
    """(folder, sampler overrides, network transform) for generate.run_study()."""
    return [(f'bits_{k}', {}, functools.partial(quantize_weights, bits=k)) for k in bits]

#----------------------------------------------------------------------------

@click.command(help=__doc__)
@generate.network_options(required=True)
@generate.output_options
@click.option('--bits', help='Bit widths of the quantised weights, one folder each', metavar='LIST', type=str,
              default='8,6,4', show_default=True, callback=generate._click_list(parse_bits))
@generate.sampler_options(with_steps=True)
@generate.performance_options
def main(bits, **options):
    generate.run_study_cli(options, quant_settings(bits))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
