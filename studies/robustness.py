"""The settings of the paper's three robustness studies (PFGM++, Section 5), each a list of
(folder, sampler overrides, network transform) for sampling.generation.run_study(): noise injection
into the sampling trajectory (alpha), the number of sampling steps, and post-training quantisation."""

import functools

import torch

from sampling.quantization import BITS_RANGE, check_bits, check_scope, describe_counts, quantisation_counts, quantize_weights
from torch_utils import cli
from torch_utils import distributed as dist

#----------------------------------------------------------------------------
# Noise injection: alpha * sigma_t * N(0, I) added to x_t before every step.

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
# Sampling steps.

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
# Weight quantisation.

def parse_bits(s) -> list[int]:
    """--bits: a list of bit widths within BITS_RANGE."""
    lo, hi = BITS_RANGE
    bits = cli.parse_int_list(s, unique=True)
    if not bits or any(not lo <= k <= hi for k in bits):
        raise ValueError(f'{s!r} must hold bit widths from {lo} to {hi}.')
    return bits


def setting_folder(bits: int, scope: str = 'published') -> str:
    """bits_<k> for the published rule, bits_<k>_<scope> for the others (finest, all), so that all fit
    in one OUTDIR and a rerun never mistakes one for another."""
    return f'bits_{bits}' if check_scope(scope) == 'published' else f'bits_{bits}_{scope}'


def quantize_and_report(net: torch.nn.Module, bits: int, scope: str, folder: str) -> torch.nn.Module:
    """quantize_weights(), after printing how much of the network it quantises."""
    dist.print0(describe_counts(folder, quantisation_counts(net, scope)))
    return quantize_weights(net, bits, scope)


def quant_settings(bits: list[int], scope: str = 'published') -> list[tuple[str, dict, object]]:
    """(folder, sampler overrides, network transform) for generate.run_study(); each transform
    prints how much of the network it quantises, and its description names it in the manifest as
    quantize_weights(bits=5, scope='published')."""
    check_scope(scope)
    settings = []
    for k in bits:
        folder = setting_folder(check_bits(k), scope)
        transform = functools.partial(quantize_and_report, bits=k, scope=scope, folder=folder)
        transform.description = f'quantize_weights(bits={k}, scope={scope!r})'
        settings.append((folder, {}, transform))
    return settings

#----------------------------------------------------------------------------
