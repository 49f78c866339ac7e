"""Post-training quantisation of a network's weights (PFGM++, Section 5, the published study's rule),
for generate_quant.py.

scope='published' (the default) is the published study's rule. A parameter is quantised when its name
contains "weight" and none of "norm", "affine", "map", "32": convolution, attention and skip weights
are, biases, GroupNorm, the embedding's affine layers, the mapping network and every layer at 32x32
are not ("32" is matched in the name, at any resolution; CIFAR-10 NCSN++: 73 of 421 tensors, 65.1%
of the parameters). Each such tensor w goes
through an asymmetric min-max quantiser with an integer zero point, in float32 as published:
scale = (max w - min w) / (2^k - 1); z = -min(w) / scale clamped to [0, 2^k - 1] and truncated to an
integer; q = round(clamp(z + w / scale, 0, 2^k - 1)), ties to even; w' = scale (q - z). So 0 stays
exactly 0, while min(w) may move up by less than a level (z is truncated) and max(w) by half a level.
The grid always holds 0: for a tensor of one sign it spans [0, max - min] or [min - max, 0], as
published. A constant tensor, where the published code divides by zero, is left as it is.

scope='finest': the published rule's intent at any resolution. "32" keeps CIFAR-10's finest stage (its
32x32 layers, 35% of the parameters) exact; on other data it matches nothing, or the wrong layers. This
scope keeps exact the layers at the network's own finest resolution (names holding '<R>x<R>', R the
image resolution), with the published rule's other exclusions (norm, affine, map); on 32x32 data it
selects exactly what the published rule does.

scope='all': every floating-point parameter moves to the nearest of the 2^k levels
min(w) + j (max(w) - min(w)) / (2^k - 1), j = 0 .. 2^k - 1 (computed in float64; no exact zero).

Bits from 2 to 16. At 1 bit the published zero point truncates to 0 for any tensor that holds both
signs, and the two levels {0, max - min} round (nearly) all its weights to 0. The top, 16 (an
int16), keeps the float32 error of w / scale, up to 2^(k-24) of a level, small (1/256 at 16 bits; it
reaches half a level at 23 bits, where the grid is no longer the one asked for); the published
study's settings lie in 5 to 9. Buffers (e.g. iDDPM's noise levels) stay exact; the dequantised
weights stay float32 (keep --precision=fp32).
"""

import copy
import math
import numbers
from typing import Optional

import torch

#----------------------------------------------------------------------------
# Which parameters a scope quantises.

SCOPES = ('published', 'finest', 'all')
BITS_RANGE = (2, 16)                                  # Inclusive; the module docstring says why.
PUBLISHED_EXCLUDED = ('norm', 'affine', 'map', '32')  # Name parts that keep a weight exact in the published study.
FINEST_EXCLUDED = ('norm', 'affine', 'map')           # ... and for 'finest', the '<R>x<R>' of the finest resolution.


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f'Unknown quantisation scope {scope!r}; choose one of {", ".join(SCOPES)}.')
    return scope


def check_bits(bits: int) -> int:
    lo, hi = BITS_RANGE
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not lo <= bits <= hi:
        raise ValueError(f'Quantisation takes {lo} to {hi} bits, got {bits!r}.')
    return bits


def is_quantised(name: str, param: torch.Tensor, scope: str = 'published', resolution: Optional[int] = None) -> bool:
    """Whether `scope` quantises the parameter `name` (as named_parameters() of the preconditioner,
    e.g. 'model.enc.16x16_block0.conv0.weight', calls it): 'all' takes every floating-point one, the
    published rule those whose name holds 'weight' and none of PUBLISHED_EXCLUDED, 'finest' those whose
    name holds 'weight', none of FINEST_EXCLUDED and not the finest '<resolution>x<resolution>'."""
    check_scope(scope)
    if not param.is_floating_point():
        return False
    if scope == 'all':
        return True
    if scope == 'finest':
        if resolution is None:
            raise ValueError("The 'finest' quantisation scope needs the network's image resolution.")
        excluded = FINEST_EXCLUDED + (f'{int(resolution)}x{int(resolution)}',)
        return 'weight' in name and not any(part in name for part in excluded)
    return 'weight' in name and not any(part in name for part in PUBLISHED_EXCLUDED)


def quantised_names(net: torch.nn.Module, scope: str = 'published') -> list[str]:
    """The names of the parameters of `net` that quantize_weights(net, k, scope) changes, in order."""
    resolution = getattr(net, 'img_resolution', None)
    return [name for name, param in net.named_parameters() if is_quantised(name, param, scope, resolution)]


def quantisation_counts(net: torch.nn.Module, scope: str = 'published') -> dict[str, int]:
    """How much of `net` a scope quantises: tensors and scalar parameters, quantised and in total."""
    params = list(net.named_parameters())
    chosen = [param for name, param in params if is_quantised(name, param, scope, getattr(net, 'img_resolution', None))]
    return dict(tensors=len(chosen), total_tensors=len(params),
                params=sum(p.numel() for p in chosen), total_params=sum(p.numel() for _, p in params))


def describe_counts(folder: str, counts: dict[str, int]) -> str:
    """'bits_5: quantised 73 of 421 tensors, 36,707,072 of 56,397,827 parameters (65.1%)'."""
    share = 100 * counts['params'] / counts['total_params'] if counts['total_params'] else 0.0
    return (f'{folder}: quantised {counts["tensors"]} of {counts["total_tensors"]} tensors, '
            f'{counts["params"]:,} of {counts["total_params"]:,} parameters ({share:.1f}%)')

#----------------------------------------------------------------------------
# The two quantisers, one tensor at a time.

def quantize_tensor_zero_point(w: torch.Tensor, bits: int) -> torch.Tensor:
    """The published study's quantiser: per-tensor asymmetric min-max with an integer zero point,
    quantised and dequantised (module docstring), in float32 as published; returned in w's dtype.
    Exactly representable zero: 0 -> 0. A constant tensor is returned unchanged."""
    check_bits(bits)
    x = w.detach().to(torch.float32)
    if x.numel() == 0:
        return w.detach().clone()
    if not bool(torch.isfinite(x).all()):
        raise ValueError('Cannot quantise a tensor that holds inf or NaN.')
    q_max = float(2 ** bits - 1)
    lo, hi = x.min(), x.max()
    if not bool(hi > lo):
        return w.detach().clone()  # The published scale would be 0 and its division undefined.
    scale = (hi - lo) / q_max  # float32, as the arithmetic below.
    # The zero point is clamped into the integer range and then truncated (not rounded), as published.
    zero_point = math.floor(min(max(float(-lo / scale), 0.0), q_max))
    q = torch.round(torch.clamp(zero_point + x / scale, 0.0, q_max))  # Round half to even.
    return (scale * (q - zero_point)).to(w.dtype)


def quantize_tensor_min_max(w: torch.Tensor, bits: int) -> torch.Tensor:
    """--scope=all: w with each element replaced by the nearest of 2^bits evenly spaced levels from
    min(w) to max(w), both kept (a constant tensor stays as it is); computed in float64, returned in
    w's dtype. Zero is generally not one of the levels."""
    check_bits(bits)
    w64 = w.detach().to(torch.float64)
    if w.numel() == 0:
        return w.detach().clone()
    lo, hi = w64.min(), w64.max()
    if not bool(hi > lo):
        return w.detach().clone()
    step = (hi - lo) / (2 ** bits - 1)
    return (lo + torch.round((w64 - lo) / step) * step).to(w.dtype)


def quantize_weights(net: torch.nn.Module, bits: int, scope: str = 'published') -> torch.nn.Module:
    """A copy of `net` in which the parameters that `scope` selects (is_quantised()) are quantised to
    `bits` bits, each tensor on its own grid: 'published' and 'finest' with the published
    quantize_tensor_zero_point(), 'all' with quantize_tensor_min_max(). `net` itself is unchanged;
    buffers are not touched."""
    check_scope(scope)
    check_bits(bits)
    quantize = quantize_tensor_min_max if scope == 'all' else quantize_tensor_zero_point
    net = copy.deepcopy(net)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if is_quantised(name, param, scope, getattr(net, 'img_resolution', None)):
                param.copy_(quantize(param, bits))
    return net

#----------------------------------------------------------------------------
