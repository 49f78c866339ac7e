"""Samplers: EDM's deterministic/stochastic Heun sampler (Karras et al., 2022, Algorithm 2), the same
as EDM2's generate_images.py runs it (in float32), EDM's generalised ablation sampler (Algorithm 1
with Table 1's schedules and scalings), and Restart sampling (Xu et al., 2023) on EDM's Heun sampler. SAMPLERS, the registry, says everything the rest
of the code needs to know about each (SamplerSpec); choose_sampler() picks one from settings.

The samplers are pure functions of (net, latents, noise levels). `latents` is the starting point at
the first noise level, already drawn from the prior (training.pfgmpp.sample_prior; for D=None that is
sigma_max times a standard normal): nothing here knows or depends on D. Use first_sigma() to learn
the noise level the prior must be drawn at for given sampler settings.

`net` is anything with net(x, sigma, class_labels) returning the denoised x, plus round_sigma(),
sigma_min and sigma_max (EDM's preconditioners, or an exact denoiser in tests).
"""

import inspect
import json
import math
import re
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from training import pfgmpp

__all__ = ['edm_sigma_steps', 'heun_step', 'edm_sampler', 'edm2_sigma_steps', 'edm2_sampler', 'SAMPLER_DTYPES', 'ablation_sampler', 'ablation_sigma_steps', 'RestartInterval',
           'RESTART_PRESETS', 'parse_restart', 'restart_nfe', 'restart_plan', 'restart_sampler', 'SamplerSpec', 'SAMPLERS',
           'sampler_keys', 'shared_defaults', 'preset_settings', 'choose_sampler', 'resolve_sampler', 'first_sigma',
           'sigma_range', 'sigma_steps', 'sampler_settings', 'sampling_warning', 'RESTART_JUMP_KS_BOUND',
           'restart_jump_warning']

SOLVERS = ('euler', 'heun')
DISCRETIZATIONS = ('vp', 've', 'iddpm', 'edm')
SCHEDULES = ('vp', 've', 'linear')
SCALINGS = ('vp', 'none')
VP_BETA_D = 19.9    # The VP training schedule (EDM, Table 1): the default range of the VP discretization.
VP_BETA_MIN = 0.1

#----------------------------------------------------------------------------
# Noise levels.

def edm_sigma_steps(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7,
                    device: Optional[torch.device] = None) -> torch.Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..N-1
    (EDM, Equation 5), float64 [N]."""
    if num_steps < 1:
        raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=device)
    frac = step_indices / max(num_steps - 1, 1)
    return (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _clamp_to_net(net, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """The noise range the sampler uses: the request, within what the network supports."""
    sigma_min = max(float(sigma_min), float(net.sigma_min))
    sigma_max = min(float(sigma_max), float(net.sigma_max))
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f'Need 0 < sigma_min < sigma_max within the network\'s range, got {sigma_min} and {sigma_max}.')
    return sigma_min, sigma_max

#----------------------------------------------------------------------------
# EDM's sampler (Algorithm 2), with optional noise injection for the robustness study.

def heun_step(net, x_cur: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
              randn_like: Callable = torch.randn_like, gamma: float = 0, S_noise: float = 1, churn: bool = True,
              correct: bool = True) -> torch.Tensor:
    """One step of EDM's Algorithm 2 (lines 5-10), from x_cur at t_cur to t_next, float64: increase the
    noise temporarily to t_hat = t_cur + gamma t_cur, then an Euler step and the 2nd-order correction
    (correct=False skips it, as EDM does on the last step, to t = 0). churn=True draws the churn noise
    even when gamma = 0, as EDM's sampler does at every step (so the per-seed stream matches EDM's);
    churn=False draws nothing and uses x_hat = x_cur."""
    # Increase noise temporarily.
    t_hat = net.round_sigma(t_cur + gamma * t_cur)
    x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur) if churn else x_cur

    # Euler step.
    denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
    d_cur = (x_hat - denoised) / t_hat
    x_next = x_hat + (t_next - t_hat) * d_cur

    # Apply 2nd order correction.
    if correct:
        denoised = net(x_next, t_next, class_labels).to(torch.float64)
        d_prime = (x_next - denoised) / t_next
        x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def edm_sampler(net, latents: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                randn_like: Callable = torch.randn_like, num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80, rho: float = 7, S_churn: float = 0, S_min: float = 0,
                S_max: float = float('inf'), S_noise: float = 1, alpha: float = 0,
                callback: Optional[Callable] = None) -> torch.Tensor:
    """Solve dx/dsigma = (x - D(x; sigma)) / sigma from the first noise level t_0 to 0 with Heun's
    method on EDM's rho-schedule (Algorithm 2); S_churn > 0 adds EDM's stochastic churn.

    latents: [B, C, H, W], the starting point x_0 at t_0 = first_sigma(net, 'edm', ...), drawn from the
    prior. alpha > 0 adds alpha * t_i * randn_like(x) to the state before every step (the paper's
    robustness study, Section 5). callback(i, t_cur, x_cur) sees each state. Returns float64 x_N.
    """
    sigma_min, sigma_max = _clamp_to_net(net, sigma_min, sigma_max)
    t_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device)
    t_steps = torch.cat([net.round_sigma(t_steps), torch.zeros_like(t_steps[:1])])  # t_N = 0

    x_next = latents.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next
        if alpha > 0:
            x_cur = x_cur + alpha * t_cur * randn_like(x_cur)
        if callback is not None:
            callback(i, t_cur, x_cur)
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        x_next = heun_step(net, x_cur, t_cur, t_next, class_labels, randn_like, gamma, S_noise, correct=(i < num_steps - 1))
    if callback is not None:
        callback(num_steps, t_steps[-1], x_next)
    return x_next


def _edm_sigma_range(net, settings: dict) -> tuple[float, float]:
    """EDM's sampler's (sigma_min, sigma_max): the settings' (0.002 to 80 by default), within the network's."""
    return _clamp_to_net(net, settings['sigma_min'], settings['sigma_max'])


def _edm_first_sigma(net, settings: dict) -> float:
    """t_0 of EDM's sampler: sigma_max within the network's range, rounded by the network."""
    return float(net.round_sigma(torch.as_tensor(_edm_sigma_range(net, settings)[1], dtype=torch.float64)))


def _edm_sigma_steps(net, settings: dict) -> torch.Tensor:
    """The main noise levels t_0 > ... > t_{N-1} of EDM's sampler (and Restart's main ODE), float64 [N],
    computed as edm_sampler computes them."""
    sigma_min, sigma_max = _edm_sigma_range(net, settings)
    t_steps = edm_sigma_steps(settings['num_steps'], sigma_min, sigma_max, settings['rho'])
    return torch.as_tensor(net.round_sigma(t_steps), dtype=torch.float64)


def _heun_nfe(settings: dict) -> int:
    """2N - 1 network evaluations for N Heun steps: the last step, to t = 0, has no correction."""
    if settings['num_steps'] < 1:
        raise ValueError(f'num_steps must be >= 1, got {settings["num_steps"]}.')
    return 2 * settings['num_steps'] - 1

#----------------------------------------------------------------------------
# EDM2's sampler: Algorithm 2 as EDM2's generate_images.py runs it.

SAMPLER_DTYPES = {'float32': torch.float32, 'float64': torch.float64}


def _sampler_dtype(dtype: str) -> torch.dtype:
    if dtype not in SAMPLER_DTYPES:
        raise ValueError(f'Unknown sampler dtype {dtype!r}; choose one of {", ".join(SAMPLER_DTYPES)}.')
    return SAMPLER_DTYPES[dtype]


def edm2_sigma_steps(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7, dtype: str = 'float32',
                     device: Optional[torch.device] = None) -> torch.Tensor:
    """EDM's Equation 5, sigma_i for i = 0..N-1, evaluated in `dtype` in the order EDM2's
    generate_images.py evaluates it (so the float32 levels are EDM2's to the bit), [N]."""
    if num_steps < 1:
        raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
    step_indices = torch.arange(num_steps, dtype=_sampler_dtype(dtype), device=device)
    return (sigma_max ** (1 / rho) + step_indices / max(num_steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def edm2_sampler(net, latents: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                 randn_like: Callable = torch.randn_like, num_steps: int = 18, sigma_min: float = 0.002,
                 sigma_max: float = 80, rho: float = 7, S_churn: float = 0, S_min: float = 0,
                 S_max: float = float('inf'), S_noise: float = 1, dtype: str = 'float32',
                 callback: Optional[Callable] = None) -> torch.Tensor:
    """EDM's Heun sampler (Algorithm 2) as EDM2's generate_images.py runs it, so that a network gives
    EDM2's images for the same seeds: the state, the noise levels (edm2_sigma_steps) and the denoiser's
    output in `dtype` (EDM2: float32), no rounding of the noise levels, and churn noise drawn only at
    the steps that churn (S_churn > 0 and S_min <= t_cur <= S_max), where EDM's sampler draws at every
    step. EDM2 samples with 32 steps (num_steps=32). latents [B, C, H, W]: the prior's draw at t_0 =
    first_sigma(net, 'edm2', ...). callback(i, t_cur, x_cur) sees each state. Returns x_N in `dtype`."""
    torch_dtype = _sampler_dtype(dtype)
    sigma_min, sigma_max = _clamp_to_net(net, sigma_min, sigma_max)
    t_steps = edm2_sigma_steps(num_steps, sigma_min, sigma_max, rho, dtype, device=latents.device)
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])  # t_N = 0
    denoise = lambda x, t: net(x, t, class_labels).to(torch_dtype)

    x_next = latents.to(torch_dtype)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next
        if callback is not None:
            callback(i, t_cur, x_cur)

        # Increase noise temporarily.
        if S_churn > 0 and S_min <= t_cur <= S_max:
            gamma = min(S_churn / num_steps, math.sqrt(2) - 1)
            t_hat = t_cur + gamma * t_cur
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        else:
            t_hat = t_cur
            x_hat = x_cur

        # Euler step.
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd order correction.
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    if callback is not None:
        callback(num_steps, t_steps[-1], x_next)
    return x_next


def _edm2_sigma_steps_of(net, settings: dict) -> torch.Tensor:
    """The main noise levels of EDM2's sampler, as it computes them, in float64 [N]."""
    sigma_min, sigma_max = _edm_sigma_range(net, settings)
    return edm2_sigma_steps(settings['num_steps'], sigma_min, sigma_max, settings['rho'], settings['dtype']).to(torch.float64)


def _edm2_first_sigma(net, settings: dict) -> float:
    """t_0 of EDM2's sampler: sigma_max within the network's range, as a `dtype` number."""
    return float(_edm2_sigma_steps_of(net, settings)[0])


def _check_edm2(net, settings: dict) -> dict:
    """The settings, if the dtype is one of SAMPLER_DTYPES."""
    _sampler_dtype(settings['dtype'])
    return settings

#----------------------------------------------------------------------------
# Schedules of the generalised sampler (EDM, Table 1): sigma(t), sigma'(t), sigma^-1, s(t), s'(t).

def _vp_sigma(beta_d, beta_min):
    return lambda t: (torch.as_tensor(0.5 * beta_d * (t ** 2) + beta_min * t, dtype=torch.float64).exp() - 1).sqrt()


def _vp_sigma_deriv(beta_d, beta_min):
    sigma = _vp_sigma(beta_d, beta_min)
    return lambda t: 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))


def _vp_sigma_inv(beta_d, beta_min):
    return lambda sigma: ((beta_min ** 2 + 2 * beta_d * (sigma ** 2 + 1).log()).sqrt() - beta_min) / beta_d


def _iddpm_sigmas(M: int, C_1: float, C_2: float, device) -> torch.Tensor:
    """u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1) - 1) (EDM, Table 1, iDDPM)."""
    u = torch.zeros(M + 1, dtype=torch.float64, device=device)
    alpha_bar = lambda j: math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2
    for j in range(M, 0, -1):
        u[j - 1] = ((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1).sqrt()
    return u


def ablation_sigma_steps(net, num_steps: int = 18, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                         rho: float = 7, discretization: str = 'edm', epsilon_s: float = 1e-3, C_1: float = 0.001,
                         C_2: float = 0.008, M: int = 1000, device=None) -> tuple[torch.Tensor, float, float]:
    """Noise levels sigma_0 > ... > sigma_{N-1} of a time-step discretization (EDM, Table 1), rounded
    by the network; also returns the VP schedule parameters (beta_d, beta_min) fitted to that range."""
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f'Unknown discretization {discretization!r}; choose one of {", ".join(DISCRETIZATIONS)}.')
    if num_steps < 2:
        raise ValueError(f'num_steps must be >= 2, got {num_steps}.')
    sigma_min, sigma_max = _ablation_sigma_range(net, dict(sigma_min=sigma_min, sigma_max=sigma_max, discretization=discretization,
                                                           epsilon_s=epsilon_s))

    # The VP schedule through (epsilon_s, sigma_min) and (1, sigma_max).
    vp_beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
    vp_beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * vp_beta_d

    step_indices = torch.arange(num_steps, dtype=torch.float64, device=device)
    if discretization == 'vp':
        orig_t_steps = 1 + step_indices / (num_steps - 1) * (epsilon_s - 1)
        sigma_steps = _vp_sigma(vp_beta_d, vp_beta_min)(orig_t_steps)
    elif discretization == 've':
        orig_t_steps = (sigma_max ** 2) * ((sigma_min ** 2 / sigma_max ** 2) ** (step_indices / (num_steps - 1)))
        sigma_steps = orig_t_steps.sqrt()
    elif discretization == 'iddpm':
        u = _iddpm_sigmas(M, C_1, C_2, device)
        u_filtered = u[(u >= sigma_min) & (u <= sigma_max)]
        sigma_steps = u_filtered[((len(u_filtered) - 1) / (num_steps - 1) * step_indices).round().to(torch.int64)]
    else:
        sigma_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=device)
    return torch.as_tensor(net.round_sigma(sigma_steps), dtype=torch.float64), float(vp_beta_d), float(vp_beta_min)


def _ablation_sigma_range(net, settings: dict) -> tuple[float, float]:
    """The ablation sampler's (sigma_min, sigma_max): the settings', else the discretization's default
    range (EDM, Table 1), within the network's."""
    sigma_min, sigma_max, discretization = settings['sigma_min'], settings['sigma_max'], settings['discretization']
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f'Unknown discretization {discretization!r}; choose one of {", ".join(DISCRETIZATIONS)}.')
    # Default VP range: the training schedule's (VPLoss / VPPrecond, beta_d = 19.9, beta_min = 0.1), as
    # EDM's current generate.py has it (its first release had 19.1, a typo). Explicit sigma_min /
    # sigma_max override it.
    vp_default = _vp_sigma(VP_BETA_D, VP_BETA_MIN)
    if sigma_min is None:
        sigma_min = {'vp': float(vp_default(settings['epsilon_s'])), 've': 0.02, 'iddpm': 0.002, 'edm': 0.002}[discretization]
    if sigma_max is None:
        sigma_max = {'vp': float(vp_default(1)), 've': 100, 'iddpm': 81, 'edm': 80}[discretization]
    return _clamp_to_net(net, sigma_min, sigma_max)


def _ablation_sigma_steps_of(net, settings: dict) -> torch.Tensor:
    """The ablation sampler's main noise levels sigma(t_0) > ... > sigma(t_{N-1}), float64 [N]."""
    s = settings
    return ablation_sigma_steps(net, s['num_steps'], s['sigma_min'], s['sigma_max'], s['rho'], s['discretization'],
                                s['epsilon_s'], s['C_1'], s['C_2'], s['M'])[0]


def _ablation_first_sigma(net, settings: dict) -> float:
    """sigma(t_0) of the ablation sampler: the first level of its discretization."""
    return float(_ablation_sigma_steps_of(net, settings)[0])


def _ablation_nfe(settings: dict) -> int:
    """N network evaluations for N Euler steps, 2N - 1 for Heun's (no correction on the last step)."""
    return settings['num_steps'] if settings['solver'] == 'euler' else _heun_nfe(settings)


def _check_ablation(net, settings: dict) -> dict:
    """The settings, if the solver, discretization, schedule and scaling are known ones."""
    for key, choices in [('solver', SOLVERS), ('discretization', DISCRETIZATIONS), ('schedule', SCHEDULES), ('scaling', SCALINGS)]:
        if settings[key] not in choices:
            raise ValueError(f'Unknown {key} {settings[key]!r}; choose one of {", ".join(choices)}.')
    return settings

#----------------------------------------------------------------------------
# EDM's generalised sampler (Algorithm 1 with Table 1's choices), for the ablations.

def ablation_sampler(net, latents: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                     randn_like: Callable = torch.randn_like, num_steps: int = 18, sigma_min: Optional[float] = None,
                     sigma_max: Optional[float] = None, rho: float = 7, solver: str = 'heun',
                     discretization: str = 'edm', schedule: str = 'linear', scaling: str = 'none',
                     epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                     alpha_heun: float = 1, S_churn: float = 0, S_min: float = 0, S_max: float = float('inf'),
                     S_noise: float = 1, alpha: float = 0, callback: Optional[Callable] = None) -> torch.Tensor:
    """Solve the probability-flow ODE dx/dt = [sigma'(t)/sigma(t) + s'(t)/s(t)] x
    - sigma'(t) s(t)/sigma(t) D(x/s(t); sigma(t)) (EDM, Equation 4) with the chosen solver,
    discretization, noise schedule sigma(t) and scaling s(t).

    latents: [B, C, H, W], the unscaled starting point at sigma(t_0) = first_sigma(net, 'ablation', ...),
    drawn from the prior; the sampler multiplies it by s(t_0). alpha_heun is Heun's intermediate step
    fraction (EDM's `alpha`); alpha > 0 injects alpha * sigma(t_i) * s(t_i) * randn_like(x) noise
    before every step. Returns float64 x_N.
    """
    if solver not in SOLVERS:
        raise ValueError(f'Unknown solver {solver!r}; choose one of {", ".join(SOLVERS)}.')
    if schedule not in SCHEDULES:
        raise ValueError(f'Unknown schedule {schedule!r}; choose one of {", ".join(SCHEDULES)}.')
    if scaling not in SCALINGS:
        raise ValueError(f'Unknown scaling {scaling!r}; choose one of {", ".join(SCALINGS)}.')
    sigma_steps, vp_beta_d, vp_beta_min = ablation_sigma_steps(
        net, num_steps, sigma_min, sigma_max, rho, discretization, epsilon_s, C_1, C_2, M, device=latents.device)

    # Noise level schedule sigma(t).
    if schedule == 'vp':
        sigma, sigma_deriv = _vp_sigma(vp_beta_d, vp_beta_min), _vp_sigma_deriv(vp_beta_d, vp_beta_min)
        sigma_inv = _vp_sigma_inv(vp_beta_d, vp_beta_min)
    elif schedule == 've':
        sigma, sigma_deriv, sigma_inv = (lambda t: t.sqrt()), (lambda t: 0.5 / t.sqrt()), (lambda s: s ** 2)
    else:
        sigma, sigma_deriv, sigma_inv = (lambda t: t), (lambda t: 1), (lambda s: s)

    # Scaling schedule s(t).
    if scaling == 'vp':
        s = lambda t: 1 / (1 + sigma(t) ** 2).sqrt()
        s_deriv = lambda t: -sigma(t) * sigma_deriv(t) * (s(t) ** 3)
    else:
        s, s_deriv = (lambda t: 1), (lambda t: 0)

    def ode_derivative(x, t):
        denoised = net(x / s(t), sigma(t), class_labels).to(torch.float64)
        return (sigma_deriv(t) / sigma(t) + s_deriv(t) / s(t)) * x - sigma_deriv(t) * s(t) / sigma(t) * denoised

    t_steps = sigma_inv(sigma_steps)
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])  # t_N = 0

    x_next = latents.to(torch.float64) * s(t_steps[0])
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next
        if alpha > 0:
            x_cur = x_cur + alpha * sigma(t_cur) * s(t_cur) * randn_like(x_cur)
        if callback is not None:
            callback(i, sigma(t_cur), x_cur / s(t_cur))

        # Increase noise temporarily.
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= sigma(t_cur) <= S_max else 0
        t_hat = sigma_inv(net.round_sigma(sigma(t_cur) + gamma * sigma(t_cur)))
        x_hat = s(t_hat) / s(t_cur) * x_cur + (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt() * s(t_hat) * S_noise * randn_like(x_cur)

        # Euler step.
        h = t_next - t_hat
        d_cur = ode_derivative(x_hat, t_hat)
        x_prime = x_hat + alpha_heun * h * d_cur
        t_prime = t_hat + alpha_heun * h

        # Apply 2nd order correction.
        if solver == 'euler' or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            d_prime = ode_derivative(x_prime, t_prime)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha_heun)) * d_cur + 1 / (2 * alpha_heun) * d_prime)
    if callback is not None:
        callback(num_steps, t_steps[-1], x_next)
    return x_next

#----------------------------------------------------------------------------
# Restart sampling (Xu et al., "Restart Sampling for Improving Generative Processes", NeurIPS 2023):
# the configuration, its cost, and the sampler.

class RestartInterval(NamedTuple):
    """One restart interval in the published format [N_Restart, K, t_min, t_max]: after the main ODE
    reaches (the main noise level nearest to) t_min, K times: jump forward to t_max, then solve back
    to t_min with Heun on EDM's rho-schedule of `steps` noise levels from t_max to t_min (steps - 1
    Heun steps, 2 (steps - 1) network evaluations)."""
    steps: int
    K: int
    t_min: float
    t_max: float


# The published configurations (github.com/Newbeeer/diffusion_restart_sampling): restart is the
# --restart_info string, num_steps the main --steps; the published runs also set S_min=0.01, S_max=1
# and S_noise (1 for CIFAR-10, 1.003 for ImageNet) and kept generate_restart.py's default
# --restart_gamma=0.05, a small EDM churn inside the restart intervals for t in [S_min, S_max].
RESTART_PRESETS = {
    # benchmarks/params_cifar10_pfgmpp.txt: PFGM++ D=2048, unconditional CIFAR-10; 43 NFE.
    'cifar10-pfgmpp-d2048': dict(num_steps=18, restart='{"0": [3, 2, 0.14, 0.30]}', S_min=0.01, S_max=1, S_noise=1, restart_gamma=0.05),
    # benchmarks/params_cifar10_vp.txt: VP, unconditional CIFAR-10 (Table 3); 43, 55, 75, 115, 519 NFE.
    'cifar10-vp-k2': dict(num_steps=18, restart='{"0": [3, 2, 0.06, 0.30]}', S_min=0.01, S_max=1, S_noise=1, restart_gamma=0.05),
    'cifar10-vp-k5': dict(num_steps=18, restart='{"0": [3, 5, 0.06, 0.30]}', S_min=0.01, S_max=1, S_noise=1, restart_gamma=0.05),
    'cifar10-vp-k10': dict(num_steps=18, restart='{"0": [3, 10, 0.06, 0.30]}', S_min=0.01, S_max=1, S_noise=1, restart_gamma=0.05),
    'cifar10-vp-k20': dict(num_steps=18, restart='{"0": [3, 20, 0.06, 0.30]}', S_min=0.01, S_max=1, S_noise=1, restart_gamma=0.05),
    'cifar10-vp-k30': dict(num_steps=20, restart='{"0": [9, 30, 0.06, 0.20]}', S_min=0.01, S_max=1, S_noise=1, restart_gamma=0.05),
    # Restart's README: EDM, class-conditional ImageNet-64, NFE 203, FID 1.41.
    'imagenet64-edm-nfe203': dict(num_steps=36, restart='{"0": [4, 1, 19.35, 40.79], "1": [4, 1, 1.09, 1.92], '
                                  '"2": [4, 5, 0.59, 1.09], "3": [4, 5, 0.30, 0.59], "4": [6, 6, 0.06, 0.30]}',
                                  S_min=0.01, S_max=1, S_noise=1.003, restart_gamma=0.05),
}

RestartLike = Union[str, Sequence[Sequence[float]], dict, None]
_NUMBER = r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?'


def _count(value, at_least: int) -> Optional[int]:
    """value as an int if it is a whole number >= at_least (3 or 3.0), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if value == int(value) and value >= at_least else None


def _check_interval(values, where: str) -> RestartInterval:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 4:
        raise ValueError(f'{where} must be four numbers [N_Restart, K, t_min, t_max], got {values!r}.')
    steps, K, t_min, t_max = values
    if _count(steps, 2) is None:
        raise ValueError(f'{where}: N_Restart (noise levels of a restart pass, ends included) must be an integer >= 2, got {steps!r}.')
    if _count(K, 1) is None:
        raise ValueError(f'{where}: K (restarts) must be an integer >= 1, got {K!r}.')
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in (t_min, t_max)) or not 0 < t_min < t_max:
        raise ValueError(f'{where}: need 0 < t_min < t_max (finite noise levels), got t_min={t_min!r} and t_max={t_max!r}.')
    return RestartInterval(_count(steps, 2), _count(K, 1), float(t_min), float(t_max))


def parse_restart(restart: RestartLike) -> tuple[RestartInterval, ...]:
    """Restart intervals from any of these forms (None or '' = none):

        a preset name              'cifar10-pfgmpp-d2048' (RESTART_PRESETS; its intervals only)
        the published JSON         '{"0": [3, 2, 0.14, 0.30], "1": [4, 1, 1.09, 1.92]}'  (keys are labels)
        a JSON list                '[[3, 2, 0.14, 0.30], [4, 1, 1.09, 1.92]]'
        the compact form           '3:2:0.14:0.30;4:1:1.09:1.92'  (N_Restart:K:t_min:t_max per interval)
        Python objects             a dict as JSON gives it, or a sequence of 4-sequences/RestartInterval

    Returns the intervals sorted by t_max, highest first. Format errors are ValueErrors; whether the
    intervals fit a sampler's noise range is checked by restart_plan()."""
    if restart is None:
        return ()
    if isinstance(restart, str):
        text = restart.strip()
        if text in RESTART_PRESETS:
            return parse_restart(RESTART_PRESETS[text]['restart'])
        if text == '':
            return ()
        if text[0] in '{[':
            try:
                restart = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f'{restart!r} is not valid JSON; write it like \'{{"0": [3, 2, 0.14, 0.30]}}\'.') from None
        else:
            parts = [part for part in text.replace(' ', '').split(';') if part]
            if not parts or not all(re.fullmatch(':'.join([_NUMBER] * 4), part) for part in parts):
                raise ValueError(f'{restart!r} is neither a preset ({", ".join(RESTART_PRESETS)}), JSON, '
                                 f'nor the compact form N_Restart:K:t_min:t_max[;...] like 3:2:0.14:0.30.')
            restart = [[float(v) for v in part.split(':')] for part in parts]
    if isinstance(restart, dict):
        items = [(f'Restart interval {key!r}', value) for key, value in restart.items()]
    elif isinstance(restart, Sequence) and not isinstance(restart, (str, bytes)):
        items = [(f'Restart interval {i}', value) for i, value in enumerate(restart)]
    else:
        raise ValueError(f'Restart intervals must be a string, a dict or a list, got {type(restart).__name__}.')
    intervals = [_check_interval(value, where) for where, value in items]
    return tuple(sorted(intervals, key=lambda interval: -interval.t_max))


def restart_nfe(num_steps: int, restart: RestartLike) -> int:
    """Network evaluations per sample: 2 num_steps - 1 for the main Heun ODE (no correction on the last
    step to t = 0) plus 2 K (N_Restart - 1) for each interval (Heun throughout: a restart pass ends at
    t_min > 0), as the published hyperparam.py counts them."""
    if num_steps < 1:
        raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
    return 2 * num_steps - 1 + sum(2 * interval.K * (interval.steps - 1) for interval in parse_restart(restart))


def restart_plan(net, num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80, rho: float = 7,
                 restart: RestartLike = None, device: Optional[torch.device] = None) -> tuple[torch.Tensor, dict]:
    """The main noise levels t_0 > ... > t_{N-1} > t_N = 0 (float64 [N + 1], as edm_sampler) and
    {i: (interval, levels)}: after main step i - 1 has reached t_i, `interval.K` restarts on `levels`
    (float64 [N_Restart], t_max down to t_i). As the published code does, t_min is replaced by the
    nearest main noise level t_i. ValueError if an interval leaves the sampler's (sigma_min,
    sigma_max] (after clamping to the network's range), if t_min is nearest to t_0 (no main step
    ends there) or if two intervals share a t_i."""
    sigma_min, sigma_max = _clamp_to_net(net, sigma_min, sigma_max)
    t_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=device)
    t_steps = torch.cat([net.round_sigma(t_steps).to(torch.float64), torch.zeros_like(t_steps[:1])])  # t_N = 0
    plan = {}
    for interval in parse_restart(restart):
        if not sigma_min < interval.t_min or interval.t_max > sigma_max:
            raise ValueError(f'The restart interval [t_min, t_max] = [{interval.t_min:g}, {interval.t_max:g}] must lie in the '
                             f'sampler\'s noise range ({sigma_min:g}, {sigma_max:g}]; narrow it or widen --sigma_min/--sigma_max.')
        i = int(torch.argmin((t_steps - interval.t_min).abs()))
        if i == 0 or not t_steps[i] < interval.t_max:
            raise ValueError(f'The restart interval\'s t_min={interval.t_min:g} is nearest to the main noise level '
                             f'{float(t_steps[i]):g}, which is not below its t_max={interval.t_max:g}; lower t_min or use more --steps.')
        if i in plan:
            raise ValueError(f'Two restart intervals (t_min={plan[i][0].t_min:g} and {interval.t_min:g}) start at the same main '
                             f'noise level {float(t_steps[i]):g}; merge them or use more --steps.')
        levels = net.round_sigma(edm_sigma_steps(interval.steps, float(t_steps[i]), interval.t_max, rho, device=device)).to(torch.float64)
        levels[-1] = t_steps[i]  # Exactly the main level, which the rho-power round trip may miss by an ulp.
        plan[i] = (interval, levels)
    return t_steps, plan


def restart_sampler(net, latents: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                    randn_like: Callable = torch.randn_like, num_steps: int = 18, sigma_min: float = 0.002,
                    sigma_max: float = 80, rho: float = 7, restart: RestartLike = None, D: Optional[float] = None,
                    gamma_log_like: Optional[Callable] = None, S_churn: float = 0, S_min: float = 0,
                    S_max: float = float('inf'), S_noise: float = 1, restart_gamma: float = 0,
                    callback: Optional[Callable] = None) -> torch.Tensor:
    """Restart sampling (Xu et al., 2023, Algorithm 1): EDM's Heun sampler (Algorithm 2, edm_sampler,
    with the same settings it is edm_sampler to the bit) on the main schedule, and at each restart
    interval's t_min (snapped to the nearest main level, restart_plan), K times: jump forward to t_max
    with pfgmpp.restart_jump (the D-dependent part) and solve the ODE back to t_min with Heun on the
    interval's own rho-schedule.

    latents: [B, C, H, W] at t_0 = first_sigma(net, 'restart', ...), from the prior for D. D: the PFGM++
    augmentation dimension the prior was drawn for (None: diffusion); it must agree with net.D where
    the network records one. Randomness per sample: randn_like(x) as in edm_sampler, and for finite
    D > 1 gamma_log_like(x, alpha) -> float64 [B], log Gamma(alpha, 1) from each sample's own generator
    (see pfgmpp.restart_jump; None: the global generator). S_noise scales the jump (as published) and
    the churn noise; restart_gamma > 0 adds EDM's churn t_hat = (1 + restart_gamma) t inside restart
    passes where S_min <= t <= S_max (the published code's --restart_gamma, 0.05 in its runs; 0 is
    the paper's pure ODE, and draws no noise). callback(i, t_cur, x_cur) sees the main states only.
    Network evaluations: restart_nfe(num_steps, restart). Returns float64 x_N.
    """
    net_D = getattr(net, 'D', None)
    D = pfgmpp.check_D(D)
    if net_D is not None and (D is None or not math.isclose(D, net_D, rel_tol=1e-9)):
        raise ValueError(f'The network was trained for D={net_D:g}, but the Restart jumps were asked for '
                         f'{"diffusion (D=None)" if D is None else f"D={D:g}"}; pass D={net_D:g}.')
    if not (math.isfinite(restart_gamma) and restart_gamma >= 0):
        raise ValueError(f'restart_gamma must be a finite number >= 0, got {restart_gamma}.')
    t_steps, plan = restart_plan(net, num_steps, sigma_min, sigma_max, rho, restart, device=latents.device)

    x_next = latents.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):  # 0, ..., N-1
        x_cur = x_next
        if callback is not None:
            callback(i, t_cur, x_cur)

        # Main ODE: EDM's Algorithm 2, step for step as edm_sampler.
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        x_next = heun_step(net, x_cur, t_cur, t_next, class_labels, randn_like, gamma, S_noise, correct=(i < num_steps - 1))

        # Restart: K times forward to t_max, back to t_min = t_{i+1} (Xu et al., Algorithm 1).
        if i + 1 in plan:
            interval, levels = plan[i + 1]
            for _ in range(interval.K):
                x_jump = pfgmpp.restart_jump(x_next, levels[-1], levels[0], D, randn_like, gamma_log_like)
                x_next = x_jump if S_noise == 1 else x_next + S_noise * (x_jump - x_next)
                for s_cur, s_next in zip(levels[:-1], levels[1:]):
                    churn = restart_gamma > 0 and S_min <= s_cur <= S_max
                    x_next = heun_step(net, x_next, s_cur, s_next, class_labels, randn_like, restart_gamma if churn else 0, S_noise, churn=churn)
    if callback is not None:
        callback(num_steps, t_steps[-1], x_next)
    return x_next



def _check_restart(net, settings: dict) -> dict:
    """The settings with the restart intervals as [[N_Restart, K, t_min, t_max], ...], if restart_plan()
    accepts them."""
    restart_plan(net, settings['num_steps'], settings['sigma_min'], settings['sigma_max'], settings['rho'], settings['restart'])
    return dict(settings, restart=[list(interval) for interval in parse_restart(settings['restart'])])


# The largest Kolmogorov-Smirnov distance from the kernel at t_max (pfgmpp.restart_jump_error) that
# Restart's forward jump may have before restart_jump_warning() speaks; docs/sampling.md says why.
RESTART_JUMP_KS_BOUND = 0.05


def restart_jump_warning(net, settings: dict) -> Optional[str]:
    """A one-line warning when the finite-D jump (pfgmpp.restart_jump) of some restart interval lands
    farther than RESTART_JUMP_KS_BOUND from the kernel at t_max, measured by pfgmpp.restart_jump_error
    for net.D, N = img_channels * img_resolution^2 and the interval's levels as the sampler runs them
    (t_min snapped to the main schedule); it names the farthest. None for diffusion (D=None, where the
    jump is exact) and when every interval is within the bound. ValueError for settings that
    restart_plan() refuses."""
    D = getattr(net, 'D', None)
    _, plan = restart_plan(net, settings['num_steps'], settings['sigma_min'], settings['sigma_max'], settings['rho'], settings['restart'])
    if D is None or not plan:
        return None
    N = int(net.img_channels) * int(net.img_resolution) ** 2
    errors = [(pfgmpp.restart_jump_error(D, N, float(levels[-1]), float(levels[0]))[0], float(levels[-1]), float(levels[0]))
              for _interval, levels in plan.values()]
    distance, t_min, t_max = max(errors)
    if distance <= RESTART_JUMP_KS_BOUND:
        return None
    return (f'Warning: Restart\'s forward jump is approximate for finite D: for D={D:g} it lands a Kolmogorov-Smirnov distance '
            f'of {distance:.3f} from the PFGM++ kernel at t_max (interval {t_min:.3g} -> {t_max:.3g}, N={N}), above '
            f'{RESTART_JUMP_KS_BOUND:g}; a larger D, or a t_min farther below t_max, brings it closer (docs/sampling.md).')

#----------------------------------------------------------------------------
# The registry: each sampler is one entry of SAMPLERS; choosing one, its settings, its starting noise
# level and its cost all come from there (generate.py, the study scripts and the manifests).

# Arguments of every sampler that are not settings: the network, the state, the labels, the per-seed
# noise and the observer.
_CALL_ARGUMENTS = ('net', 'latents', 'class_labels', 'randn_like', 'callback')


def _as_given(net, settings: dict) -> dict:
    """No checks beyond the sampler's first_sigma(); the settings as they are."""
    return settings


def _no_warning(net, settings: dict) -> None:
    """Nothing to warn about."""
    return None


class SamplerSpec(NamedTuple):
    """A sampler, as the rest of the code needs to know it. `settings` below is always complete: the
    given settings over the sampler's defaults (SamplerSpec.defaults).

        fn            the pure sampler fn(net, latents, class_labels, randn_like, callback=callback,
                      **settings, **extra inputs) -> x_N [B, C, H, W] (float64; EDM2's sampler: its dtype);
                      latents [B, C, H, W] is the prior's draw at first_sigma
        about         what it is, one clause for error messages ("Restart sampling runs ...")
        chosen_by     the settings that choose it when given; exactly one sampler has none, the default
        first_sigma   (net, settings) -> the noise level it starts at, where the prior is drawn
        sigma_range   (net, settings) -> (sigma_min, sigma_max) it actually uses (for the manifest)
        nfe           settings -> network evaluations per sample, without guidance
        sigma_steps   (net, settings) -> float64 [N], the main noise levels t_0 > ... > t_{N-1} of its N
                      steps (guidance by step index maps steps to them); None: it has no such schedule
        extra_inputs  {argument: (net, rnd) -> value}: what fn needs besides settings, from the network
                      or from rnd, the batch's per-seed generators (torch_utils.rng.StackedRandomGenerator),
                      made after the prior and the class labels are drawn
        check         (net, settings) -> the settings as a manifest records them; ValueError for ones
                      the sampler would refuse (sampler_settings() also runs first_sigma and sigma_range)
        warning       (net, settings) -> a one-line warning about running these settings on this
                      network, or None; generation prints it once per command (sampling_warning())
        presets       {setting: {name: settings}}: a value of `setting` that names a preset brings the
                      preset's other settings (preset_settings())
    """
    fn: Callable[..., torch.Tensor]
    about: str
    chosen_by: tuple[str, ...]
    first_sigma: Callable[[Any, dict], float]
    sigma_range: Callable[[Any, dict], tuple[float, float]]
    nfe: Callable[[dict], int]
    sigma_steps: Optional[Callable[[Any, dict], torch.Tensor]] = None
    extra_inputs: Mapping[str, Callable[[Any, Any], Any]] = MappingProxyType({})
    check: Callable[[Any, dict], dict] = _as_given
    warning: Callable[[Any, dict], Optional[str]] = _no_warning
    presets: Mapping[str, Mapping[str, dict]] = MappingProxyType({})

    @property
    def defaults(self) -> dict:
        """{setting: default}, the settings it takes, in fn's order: fn's keyword arguments with a
        default, other than the call's own (net, latents, class_labels, randn_like, callback) and the
        extra inputs."""
        return {name: param.default for name, param in inspect.signature(self.fn).parameters.items()
                if name not in _CALL_ARGUMENTS and name not in self.extra_inputs and param.default is not inspect.Parameter.empty}


SAMPLERS: dict[str, SamplerSpec] = {
    'edm': SamplerSpec(
        edm_sampler, "EDM's sampler runs Heun's method on the rho-schedule of Algorithm 2", chosen_by=(),
        first_sigma=_edm_first_sigma, sigma_range=_edm_sigma_range, nfe=_heun_nfe, sigma_steps=_edm_sigma_steps),
    'edm2': SamplerSpec(
        edm2_sampler, "EDM2's sampler runs Heun's method in the given dtype as EDM2's generate_images.py does", chosen_by=('dtype',),
        first_sigma=_edm2_first_sigma, sigma_range=_edm_sigma_range, nfe=_heun_nfe, sigma_steps=_edm2_sigma_steps_of,
        check=_check_edm2),
    'ablation': SamplerSpec(
        ablation_sampler, "The ablation sampler runs EDM's Algorithm 1 with Table 1's choices",
        chosen_by=('solver', 'discretization', 'schedule', 'scaling'),
        first_sigma=_ablation_first_sigma, sigma_range=_ablation_sigma_range, nfe=_ablation_nfe,
        sigma_steps=_ablation_sigma_steps_of, check=_check_ablation),
    'restart': SamplerSpec(
        restart_sampler, "Restart sampling runs EDM's Heun sampler with restart intervals", chosen_by=('restart',),
        first_sigma=_edm_first_sigma, sigma_range=_edm_sigma_range,
        nfe=lambda settings: restart_nfe(settings['num_steps'], settings['restart']), sigma_steps=_edm_sigma_steps,
        extra_inputs=dict(D=lambda net, rnd: net.D, gamma_log_like=lambda net, rnd: rnd.gamma_log_like),
        check=_check_restart, warning=restart_jump_warning, presets=dict(restart=RESTART_PRESETS)),
}

#----------------------------------------------------------------------------
# What the registry implies: the settings, the choice, the settings a run records.

def _default_sampler() -> str:
    defaults = [name for name, spec in SAMPLERS.items() if not spec.chosen_by]
    assert len(defaults) == 1, f'Exactly one sampler must have no chosen_by (the default), not {defaults}.'
    return defaults[0]


def _spec(sampler: str) -> SamplerSpec:
    if sampler not in SAMPLERS:
        raise ValueError(f'Unknown sampler {sampler!r}; choose one of {", ".join(SAMPLERS)}.')
    return SAMPLERS[sampler]


def sampler_keys() -> tuple[str, ...]:
    """Every setting some sampler takes (SamplerSpec.defaults), in the registry's order."""
    return tuple(dict.fromkeys(key for spec in SAMPLERS.values() for key in spec.defaults))


def shared_defaults() -> dict:
    """{setting: default} for the settings that every sampler takes with the same default, in the default
    sampler's order (num_steps, rho, S_churn, S_min, S_max, S_noise): the ones a command line can
    default without ruling out a sampler."""
    all_defaults = [spec.defaults for spec in SAMPLERS.values()]
    return {key: value for key, value in SAMPLERS[_default_sampler()].defaults.items()
            if all(key in defaults and defaults[key] == value for defaults in all_defaults)}


def preset_settings(sampler_kwargs: dict) -> dict:
    """The settings a preset named in sampler_kwargs brings (SamplerSpec.presets), other than the
    setting that names it; {} when none is named. E.g. restart='cifar10-pfgmpp-d2048' brings
    num_steps=18, S_min=0.01, S_max=1, S_noise=1 and restart_gamma=0.05."""
    for spec in SAMPLERS.values():
        for key, presets in spec.presets.items():
            preset = presets.get(str(sampler_kwargs.get(key, '')).strip())
            if preset is not None:
                return {k: v for k, v in preset.items() if k != key}
    return {}


def _refusal(sampler: str, foreign: list[str], given: dict) -> str:
    """The error message for settings `foreign` that `sampler`, chosen for `given`, does not take."""
    spec, default = SAMPLERS[sampler], SAMPLERS[_default_sampler()]
    if spec is default:  # Another sampler may take them: say how to choose it.
        ways = [f'give {" or ".join(other.chosen_by)} ({other.about})' for other in SAMPLERS.values()
                if other.chosen_by and all(key in other.defaults for key in foreign)]
    else:  # The default may take them: say how to fall back to it.
        ways = [f'drop {", ".join(key for key in spec.chosen_by if key in given)} ({default.about})']
        ways = ways if all(key in default.defaults for key in foreign) else []
    return (f'{spec.about} and takes no {", ".join(foreign)}; drop {"it" if len(foreign) == 1 else "them"}'
            + ''.join(f', or {way}' for way in ways) + '.')


def choose_sampler(sampler_kwargs: dict) -> tuple[Callable, str]:
    """EDM's rule, over the registry: the sampler whose chosen_by settings are given (the ablation
    sampler for solver/discretization/schedule/scaling, Restart sampling for restart, EDM2's sampler
    for dtype), else the
    default one (edm_sampler). None values count as not given. Returns (function, name); ValueError
    for unknown settings, for settings that choose two samplers, and for settings the chosen one
    does not take."""
    given = {key: value for key, value in sampler_kwargs.items() if value is not None}
    unknown = set(given) - set(sampler_keys())
    if unknown:
        raise ValueError(f'Unknown sampler settings {sorted(unknown)}; expected some of {", ".join(sampler_keys())}.')
    chosen = {name: [key for key in spec.chosen_by if key in given] for name, spec in SAMPLERS.items()}
    chosen = {name: keys for name, keys in chosen.items() if keys}
    if len(chosen) > 1:
        raise ValueError(' and '.join(f'{SAMPLERS[name].about} (chosen by {", ".join(keys)})' for name, keys in chosen.items())
                         + '; these do not combine, so keep the settings of one.')
    name = next(iter(chosen), _default_sampler())
    foreign = [key for key in given if key not in SAMPLERS[name].defaults]
    if foreign:
        raise ValueError(_refusal(name, foreign, given))
    return SAMPLERS[name].fn, name


def resolve_sampler(sampler_kwargs: Optional[dict]) -> tuple[str, dict]:
    """(name, settings): the sampler choose_sampler() picks for sampler_kwargs, and its every setting,
    the given ones (those not None) over its defaults. Run it as SAMPLERS[name].fn(net, latents,
    class_labels, randn_like, callback=callback, **settings, **its extra inputs)."""
    given = {key: value for key, value in (sampler_kwargs or {}).items() if value is not None}
    _, name = choose_sampler(given)
    return name, {**SAMPLERS[name].defaults, **given}


def _with_defaults(sampler: str, settings: dict) -> dict:
    """The sampler's settings: those given (not None) over its defaults; others are ignored."""
    spec = _spec(sampler)
    return {**spec.defaults, **{key: value for key, value in settings.items() if value is not None and key in spec.defaults}}


def first_sigma(net, sampler: str = 'edm', **settings) -> float:
    """The noise level `sampler` (a name in SAMPLERS) starts at with these settings (over its defaults;
    None values and settings it does not take are ignored), where the prior must be drawn
    (pfgmpp.sample_prior): for EDM's sampler and Restart sampling sigma_max clamped to the network's
    range and rounded, for EDM2's the same in its dtype, for the ablation sampler the first level of
    its discretization."""
    return _spec(sampler).first_sigma(net, _with_defaults(sampler, settings))


def sigma_range(net, sampler: str = 'edm', **settings) -> tuple[float, float]:
    """The noise range (sigma_min, sigma_max) `sampler` actually uses with these settings (over its
    defaults, as first_sigma()): the one requested, else the sampler's default (edm_sampler: 0.002 to
    80; ablation_sampler: the discretization's), clamped to the network's range."""
    return _spec(sampler).sigma_range(net, _with_defaults(sampler, settings))


def sigma_steps(net, sampler: str = 'edm', **settings) -> torch.Tensor:
    """The main noise levels t_0 > ... > t_{N-1} that `sampler` steps through with these settings (over its
    defaults, as first_sigma()), float64 [N], rounded by the network as the sampler rounds them: step i
    goes from t_i to t_{i+1} (t_N = 0). Restart passes and churn evaluate between these levels.
    ValueError for a sampler whose registry entry gives none (SamplerSpec.sigma_steps)."""
    spec = _spec(sampler)
    if spec.sigma_steps is None:
        raise ValueError(f'The {sampler} sampler does not say which noise levels its steps use; guide by noise level instead.')
    return spec.sigma_steps(net, _with_defaults(sampler, settings))


def sampling_warning(net, sampler_kwargs: Optional[dict] = None) -> Optional[str]:
    """The one-line warning (SamplerSpec.warning) of the sampler choose_sampler() picks for
    sampler_kwargs, for `net`, or None; e.g. restart_jump_warning() for Restart sampling with a small
    D. ValueError for settings the sampler would refuse."""
    name, settings = resolve_sampler(sampler_kwargs)
    return SAMPLERS[name].warning(net, settings)


def sampler_settings(net, sampler_kwargs: Optional[dict] = None) -> dict:
    """Every setting of the sampler choose_sampler() picks for sampler_kwargs, after defaults:
    {'sampler': its name in SAMPLERS, each of its settings with its value}, with sigma_min and
    sigma_max the range actually used (SamplerSpec.sigma_range) and the rest as SamplerSpec.check
    records them (e.g. restart intervals as [[N_Restart, K, t_min, t_max], ...]). Raises ValueError
    for settings the sampler would refuse."""
    name, settings = resolve_sampler(sampler_kwargs)
    spec = SAMPLERS[name]
    recorded = dict(spec.check(net, settings))
    spec.first_sigma(net, settings)  # Refuses what the sampler would.
    recorded['sigma_min'], recorded['sigma_max'] = spec.sigma_range(net, settings)
    return dict(sampler=name, **recorded)

#----------------------------------------------------------------------------
