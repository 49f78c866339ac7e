"""Samplers: EDM's deterministic/stochastic Heun sampler (Karras et al., 2022, Algorithm 2) and its
generalised ablation sampler (Algorithm 1 with Table 1's schedules and scalings).

The samplers are pure functions of (net, latents, noise levels). `latents` is the starting point at
the first noise level, already drawn from the prior (training.pfgmpp.sample_prior; for D=None that is
sigma_max times a standard normal): nothing here knows or depends on D. Use first_sigma() to learn
the noise level the prior must be drawn at for given sampler settings.

`net` is anything with net(x, sigma, class_labels) returning the denoised x, plus round_sigma(),
sigma_min and sigma_max (EDM's preconditioners, or an exact denoiser in tests).
"""

import math
from typing import Callable, Optional

import numpy as np
import torch

__all__ = ['edm_sigma_steps', 'edm_sampler', 'ablation_sampler', 'ablation_sigma_steps', 'first_sigma', 'sigma_range']

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

        # Increase noise temporarily.
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)

        # Euler step.
        denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Apply 2nd order correction.
        if i < num_steps - 1:
            denoised = net(x_next, t_next, class_labels).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    if callback is not None:
        callback(num_steps, t_steps[-1], x_next)
    return x_next

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
    sigma_min, sigma_max = sigma_range(net, 'ablation', sigma_min, sigma_max, discretization, epsilon_s)

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


def sigma_range(net, sampler: str = 'edm', sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                discretization: str = 'edm', epsilon_s: float = 1e-3) -> tuple[float, float]:
    """The noise range (sigma_min, sigma_max) a sampler actually uses: the one requested, else the
    sampler's default (edm_sampler: 0.002 to 80; ablation_sampler: the discretization's), clamped
    to the network's range."""
    if sampler == 'edm':
        sigma_min = 0.002 if sigma_min is None else sigma_min
        sigma_max = 80 if sigma_max is None else sigma_max
    else:
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f'Unknown discretization {discretization!r}; choose one of {", ".join(DISCRETIZATIONS)}.')
        # Default VP range: the training schedule's (VPLoss / VPPrecond, beta_d = 19.9, beta_min = 0.1), as
        # EDM's current generate.py has it (its first release had 19.1, a typo). Explicit sigma_min /
        # sigma_max override it.
        vp_default = _vp_sigma(VP_BETA_D, VP_BETA_MIN)
        if sigma_min is None:
            sigma_min = {'vp': float(vp_default(epsilon_s)), 've': 0.02, 'iddpm': 0.002, 'edm': 0.002}[discretization]
        if sigma_max is None:
            sigma_max = {'vp': float(vp_default(1)), 've': 100, 'iddpm': 81, 'edm': 80}[discretization]
    return _clamp_to_net(net, sigma_min, sigma_max)


def first_sigma(net, sampler: str = 'edm', num_steps: int = 18, sigma_min: Optional[float] = None,
                sigma_max: Optional[float] = None, rho: float = 7, discretization: str = 'edm', **kwargs) -> float:
    """The noise level the sampler starts at, where the prior must be drawn (pfgmpp.sample_prior):
    sigma_max clamped to the network's range and rounded, or the first level of the discretization."""
    if sampler == 'edm':
        _, sigma_max = sigma_range(net, 'edm', sigma_min, sigma_max)
        return float(net.round_sigma(torch.as_tensor(sigma_max, dtype=torch.float64)))
    steps, _, _ = ablation_sigma_steps(net, num_steps, sigma_min, sigma_max, rho, discretization,
                                       **{k: v for k, v in kwargs.items() if k in ('epsilon_s', 'C_1', 'C_2', 'M')})
    return float(steps[0])

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
