"""Post-hoc EMA with power-function averaging profiles (Karras et al., "Analyzing and Improving the
Training Dynamics of Diffusion Models", CVPR 2024, Section 3 and Appendix C).

Time is measured in training images seen (nimg); only ratios of times enter the math, so any
consistent unit works (the EDM2 code uses images seen, so do we).

A power-function EMA of exponent gamma averages the training weights theta(tau) seen up to time t
with the profile p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t], whose standard deviation
relative to t is std (EDM2's sigma_rel). PowerFunctionEMA tracks a few such profiles during training;
snapshots of them saved at times t_i can later be combined linearly (solve_posthoc_coefficients,
reconstruct) into an average whose profile approximates that of any other std at one of those times.

Discrete form. With the per-step decay beta_k = (1 - delta_k / t_k)^(gamma + 1) (Equation 127) at
step k ending at time t_k = t_{k-1} + delta_k, t_0 = 0, the EMA after n steps is exactly
    sum_k w_k theta_k,   w_k = (t_k^(gamma + 1) - t_{k-1}^(gamma + 1)) / t_n^(gamma + 1),
because the product of the later decays telescopes: prod_{j>k} beta_j = (t_k / t_n)^(gamma + 1).
w_k is the mass of the continuous profile p_{t_n} over (t_{k-1}, t_k], so the tracked EMA is the
continuous-profile average of the piecewise-constant weight trajectory, and the reconstructed weights
of every parameter are off by at most ||fit - q|| * ||theta||_L2 (Cauchy-Schwarz), with fit - q the
reconstructed minus the requested profile (posthoc_residuals reports ||fit - q|| / ||q||).

Traditional EMA: halflife_to_std() gives the sigma_rel of EDM's constant half-life. While EDM's ramp-up
binds (half-life = ratio * t), beta = 2^(-delta / (ratio t)) ~ (1 - delta / t)^(ln 2 / ratio), i.e. a
power-function EMA with gamma = ln 2 / ratio - 1 (ratio 0.05: gamma 12.9, std 0.063). The EMA train.py
keeps, ramp-up included, is fitted as a whole from its per-step decays: ema_step_weights(),
solve_posthoc_coefficients_for_steps() (reconstruct_phema.py --half-life).
"""

import copy
import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ['STD_MAX', 'DEFAULT_MAX_RESIDUAL', 'std_to_exp', 'exp_to_std', 'power_function_beta',
           'power_function_inner_product', 'solve_posthoc_coefficients', 'posthoc_residuals',
           'check_representable', 'halflife_to_std', 'std_to_halflife', 'ema_step_weights', 'step_profile_std',
           'solve_posthoc_coefficients_for_steps', 'PowerFunctionEMA', 'Snapshot',
           'Reconstruction', 'noise_gain', 'used_snapshots', 'reconstruct', 'combine_snapshots']

ArrayLike = Union[float, Sequence[float], np.ndarray]

# gamma > 0 <=> std < sqrt(1/12) (Equation 123 at gamma = 0: the uniform average over [0, t]); beyond
# it the profile's density would increase towards tau = 0 and the cubic of Equation 126 has no positive root.
STD_MAX = math.sqrt(1 / 12)

# Largest relative L2 error of a reconstructed profile that reconstruct() accepts by default; see
# check_representable() for the reasoning.
DEFAULT_MAX_RESIDUAL = 0.05

#----------------------------------------------------------------------------
# Validation helpers: one-sentence ValueErrors for bad input.

def _as_float64(name: str, x: ArrayLike) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a number or an array of numbers, got {x!r}.') from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f'{name} must be finite, got {x!r}.')
    return arr


def _check_std(name: str, std: ArrayLike) -> np.ndarray:
    std = _as_float64(name, std)
    bad = (std <= 0) | (std >= STD_MAX)
    if np.any(bad):
        raise ValueError(f'{name} must lie strictly between 0 and sqrt(1/12) = {STD_MAX:.6f} '
                         f'(power-function exponent > 0), got {std[bad].ravel()[0]:g}.')
    return std


def _check_times(name: str, t: ArrayLike) -> np.ndarray:
    t = _as_float64(name, t)
    if np.any(t <= 0):
        raise ValueError(f'{name} must be positive (training time in images), got {t[t <= 0].ravel()[0]:g}.')
    return t


def _scalar_or_array(x: np.ndarray) -> Union[np.float64, np.ndarray]:
    return x[()] if x.ndim == 0 else x

#----------------------------------------------------------------------------
# Power-function profiles.

def exp_to_std(exp: ArrayLike) -> Union[np.float64, np.ndarray]:
    """Relative standard deviation sigma_rel (profile std / training time, dimensionless) of the
    power-function profile of exponent gamma > 0; scalar or any shape, float64."""
    gamma = _as_float64('exp', exp)
    if np.any(gamma <= 0):
        raise ValueError(f'exp (power-function exponent) must be positive, got {gamma[gamma <= 0].ravel()[0]:g}.')
    # according to Equation 123 (the std of Beta(gamma + 1, 1), the profile rescaled to [0, 1])
    std = np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))
    return _scalar_or_array(std)


def std_to_exp(std: ArrayLike) -> Union[np.float64, np.ndarray]:
    """Power-function exponent gamma > 0 whose profile has relative std `std` in (0, sqrt(1/12));
    scalar or any shape, float64. Inverse of exp_to_std()."""
    std = _check_std('std', std)
    flat = std.ravel()
    gamma = np.empty_like(flat)
    for i, s in enumerate(flat):
        # according to Equation 126: std^2 (gamma + 2)^2 (gamma + 3) = gamma + 1 rearranged to the cubic
        # gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0; its largest real root is the one
        # with gamma > 0 (the other real roots lie below -1/2).
        inv_var = 1 / (s * s)
        roots = np.roots([1.0, 7.0, 16.0 - inv_var, 12.0 - inv_var])
        g = roots[np.abs(roots.imag) <= 1e-9 * np.maximum(1, np.abs(roots.real))].real.max()
        # One Newton step on the cubic polishes the eigenvalue-based root to full float64 accuracy.
        f = ((g + 7) * g + 16 - inv_var) * g + 12 - inv_var
        df = (3 * g + 14) * g + 16 - inv_var
        gamma[i] = g - f / df if df != 0 else g
    return _scalar_or_array(gamma.reshape(std.shape))


def power_function_beta(std: float, t_next: float, t_delta: float) -> float:
    """Per-step EMA decay that tracks the power-function profile of relative std `std`: after a step
    of t_delta images that ends at t_next images seen, ema <- beta * ema + (1 - beta) * net.
    Exactly 0 at the first step (t_delta == t_next), so the initial weights drop out."""
    t_next = float(_check_times('t_next', t_next))
    t_delta = float(_check_times('t_delta', t_delta))
    if t_delta > t_next:
        raise ValueError(f't_delta ({t_delta:g} images) cannot exceed t_next ({t_next:g} images), the time after the step.')
    gamma = float(std_to_exp(std))
    # according to Equation 127
    return (1 - t_delta / t_next) ** (gamma + 1)


def power_function_inner_product(a_ofs: ArrayLike, a_std: ArrayLike, b_ofs: ArrayLike, b_std: ArrayLike) -> np.ndarray:
    """L2 inner product <p_a, p_b> = integral over tau of p_a(tau) p_b(tau) of the power-function
    profiles ending at times a_ofs, b_ofs (images) with relative stds a_std, b_std; broadcasts its
    arguments; unit 1 / images."""
    a_ofs, b_ofs = _check_times('a_ofs', a_ofs), _check_times('b_ofs', b_ofs)
    a_exp, b_exp = np.asarray(std_to_exp(a_std)), np.asarray(std_to_exp(b_std))
    # according to Equation 151: the integral runs to min(a_ofs, b_ofs); with t_max = max(a_ofs, b_ofs)
    # it equals (a+1)(b+1) / (a+b+1) * (t_min / t_max)^(exponent of the longer profile) / t_max.
    a_first = a_ofs < b_ofs
    t_max = np.maximum(a_ofs, b_ofs)
    ratio = np.minimum(a_ofs, b_ofs) / t_max
    exponent = np.where(a_first, b_exp, a_exp)
    return (a_exp + 1) * (b_exp + 1) / (a_exp + b_exp + 1) * ratio ** exponent / t_max


def _gram(in_ofs: np.ndarray, in_std: np.ndarray, out_ofs: np.ndarray, out_std: np.ndarray):
    col = lambda x: x.reshape(-1, 1)
    row = lambda x: x.reshape(1, -1)
    A = power_function_inner_product(col(in_ofs), col(in_std), row(in_ofs), row(in_std))
    B = power_function_inner_product(col(in_ofs), col(in_std), row(out_ofs), row(out_std))
    C = power_function_inner_product(out_ofs, out_std, out_ofs, out_std)
    return A, B, C


def _check_stored(in_ofs: ArrayLike, in_std: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    in_ofs, in_std = np.broadcast_arrays(_check_times('in_ofs', in_ofs), _check_std('in_std', in_std))
    in_ofs, in_std = (np.array(x, dtype=np.float64).ravel() for x in (in_ofs, in_std))
    if in_ofs.size == 0:
        raise ValueError('At least one stored profile (in_ofs, in_std) is needed.')
    pairs = set()
    for t, s in zip(in_ofs.tolist(), in_std.tolist()):
        if (t, s) in pairs:
            raise ValueError(f'The stored profile at time {t:g} with std {s:g} appears twice; keep one copy.')
        pairs.add((t, s))
    return in_ofs, in_std


def _check_profiles(in_ofs: ArrayLike, in_std: ArrayLike, out_ofs: ArrayLike, out_std: ArrayLike):
    in_ofs, in_std = _check_stored(in_ofs, in_std)
    out_ofs, out_std = np.broadcast_arrays(_check_times('out_ofs', out_ofs), _check_std('out_std', out_std))
    out_ofs, out_std = (np.array(x, dtype=np.float64).ravel() for x in (out_ofs, out_std))
    if out_ofs.size == 0:
        raise ValueError('At least one requested profile (out_std) is needed.')
    return in_ofs, in_std, out_ofs, out_std


def _solve_normal_equations(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    # according to Algorithm 3: the normal equations A X = B of the least-squares fit, A the Gram
    # matrix of the stored profiles, B their inner products with the requested ones.
    try:
        X = np.linalg.solve(A, B)
    except np.linalg.LinAlgError:
        raise ValueError('The stored profiles are linearly dependent; remove duplicate snapshots.') from None
    # The averaged weights must keep their scale: normalise each column to sum to 1 (Algorithm 3).
    return X / np.sum(X, axis=0, keepdims=True)


def _relative_residuals(X: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> np.ndarray:
    # ||sum_i X[i, j] p_i - q_j||^2 = x'Ax - 2x'b + <q, q>, expanded from the inner products.
    sq = np.einsum('ij,ik,kj->j', X, A, X) - 2 * np.einsum('ij,ij->j', X, B) + C
    # Rounding in the expansion is about eps * (|x|'|A||x|); below that the residual is noise.
    floor = 4 * np.finfo(np.float64).eps * np.einsum('ij,ik,kj->j', np.abs(X), np.abs(A), np.abs(X))
    return np.sqrt(np.maximum(sq, floor) / C)


def solve_posthoc_coefficients(in_ofs: ArrayLike, in_std: ArrayLike, out_ofs: ArrayLike, out_std: ArrayLike) -> np.ndarray:
    """Coefficients X [len(in_ofs), len(out_std)] such that sum_i X[i, j] p_i approximates the profile
    of std out_std[j] ending at out_ofs (broadcast with out_std) in the least-squares sense; p_i are the
    stored profiles ending at in_ofs[i] (images) with std in_std[i]. Each column sums to 1."""
    in_ofs, in_std, out_ofs, out_std = _check_profiles(in_ofs, in_std, out_ofs, out_std)
    A, B, _ = _gram(in_ofs, in_std, out_ofs, out_std)
    return _solve_normal_equations(A, B)


def posthoc_residuals(in_ofs: ArrayLike, in_std: ArrayLike, out_ofs: ArrayLike, out_std: ArrayLike,
                      coefficients: Optional[np.ndarray] = None) -> np.ndarray:
    """Relative L2 error ||sum_i X[i, j] p_i - q_j|| / ||q_j|| [len(out_std)] of the reconstructed
    profiles (dimensionless; 0.003 = matched to 0.3%), X from solve_posthoc_coefficients() if not given.
    Computed in closed form from the inner products: ||r||^2 = x'Ax - 2x'b + <q, q>."""
    in_ofs, in_std, out_ofs, out_std = _check_profiles(in_ofs, in_std, out_ofs, out_std)
    X = solve_posthoc_coefficients(in_ofs, in_std, out_ofs, out_std) if coefficients is None else np.asarray(coefficients, dtype=np.float64)
    if X.shape != (in_ofs.size, out_std.size):
        raise ValueError(f'coefficients must have shape {(in_ofs.size, out_std.size)}, got {X.shape}.')
    return _relative_residuals(X, *_gram(in_ofs, in_std, out_ofs, out_std))


def _refuse_unrepresentable(out_std: np.ndarray, residuals: np.ndarray, max_residual: float) -> None:
    bad = np.flatnonzero(residuals > max_residual)
    if bad.size:
        j = bad[0]
        raise ValueError(f'EMA std {out_std[j]:.4f} cannot be reconstructed from the stored snapshots: its profile is '
                         f'matched only to {100 * residuals[j]:.1f}% (limit {100 * max_residual:.1f}%); choose a std closer to '
                         f'the tracked ones or save snapshots more often.')


def check_representable(in_ofs: ArrayLike, in_std: ArrayLike, out_ofs: float, out_std: ArrayLike,
                        max_residual: float = DEFAULT_MAX_RESIDUAL) -> np.ndarray:
    """Relative profile errors [len(out_std)] (posthoc_residuals) of reconstructing out_std at out_ofs
    from the stored profiles; ValueError if one exceeds max_residual. Needs no weights, so a command
    can refuse before loading any snapshot.

    The rule: a requested profile is representable when its least-squares reconstruction is within
    max_residual (relative L2) of it. The default 5% is the distance between the profiles of std s
    and 1.05 s at s = 0.15 (3.5% at s = 0.01, 3.8% at 0.05, 4.4% at 0.10), so an accepted
    reconstruction is as close to the requested profile as a profile whose std is 5-7% off. With
    EDM2's stds 0.05 and 0.10 and snapshots at equal spacing it accepts (on a 0.005 grid) 0.03 to
    0.23 from 16 snapshots per std, 0.02 to 0.255 from 32, and 0.01 to 0.275 from 128."""
    out_std_arr = np.atleast_1d(_check_std('out_std', out_std)).ravel()
    res = posthoc_residuals(in_ofs, in_std, out_ofs, out_std_arr)
    _refuse_unrepresentable(out_std_arr, res, max_residual)
    return res


#----------------------------------------------------------------------------
# Traditional EMA with a half-life, seen as an averaging profile.

def _exponential_profile_var(a: np.ndarray) -> np.ndarray:
    """Variance of the exponential profile truncated to [0, t], relative to t^2, for a = ln(2) t / half-life."""
    small = a < 0.1
    a_big = np.where(small, 1.0, a)
    # Density lambda exp(-lambda (t - tau)) / (1 - exp(-lambda t)): variance 1/lambda^2 - t^2 e^(-a) / (1 - e^(-a))^2.
    direct = 1 / a_big ** 2 - np.exp(-a_big) / np.expm1(-a_big) ** 2
    # Near a = 0 the two terms cancel; their Taylor series (to a^8, error < 1e-18) is exact enough.
    a2 = a * a
    series = 1 / 12 - a2 / 240 + a2 ** 2 / 6048 - a2 ** 3 / 172800 + a2 ** 4 / 5322240
    return np.where(small, series, direct)


def halflife_to_std(ema_halflife_mimg: ArrayLike, training_mimg: ArrayLike) -> Union[np.float64, np.ndarray]:
    """Relative std (sigma_rel, EDM2's measure of EMA length) of EDM's traditional EMA with a constant
    half-life of ema_halflife_mimg (no ramp-up) after training_mimg million images.

    The EMA weights the network at time tau <= t by lambda exp(-lambda (t - tau)), lambda = ln(2) /
    half-life; we take that density truncated to [0, t] and renormalised (the weight left on the
    initial network, 2^(-t / half-life), is dropped, as the power-function EMA drops it), and return its
    standard deviation divided by t (EDM2's definition of sigma_rel, Section 3.1). With a = ln(2) t / half-life:
        sigma_rel = sqrt(1 / a^2 - e^(-a) / (1 - e^(-a))^2),
    which falls from sqrt(1/12) (a -> 0, the uniform average) to ~ 1/a (half-life << t)."""
    h = _check_times('ema_halflife_mimg', ema_halflife_mimg)
    t = _check_times('training_mimg', training_mimg)
    a = math.log(2) * t / h
    return _scalar_or_array(np.sqrt(_exponential_profile_var(np.asarray(a))))


def std_to_halflife(std: ArrayLike, training_mimg: ArrayLike) -> Union[np.float64, np.ndarray]:
    """Inverse of halflife_to_std(): the half-life (Mimg) whose truncated exponential profile after
    training_mimg million images has relative std `std` in (0, sqrt(1/12))."""
    std, t = np.broadcast_arrays(_check_std('std', std), _check_times('training_mimg', training_mimg))
    # sigma_rel(a) decreases monotonically in a; bisect log(a) between 1e-6 and 1e12.
    target = std ** 2
    lo, hi = np.full(std.shape, math.log(1e-6)), np.full(std.shape, math.log(1e12))
    for _ in range(200):
        mid = (lo + hi) / 2
        too_wide = _exponential_profile_var(np.exp(mid)) > target
        lo, hi = np.where(too_wide, mid, lo), np.where(too_wide, hi, mid)
    a = np.exp((lo + hi) / 2)
    return _scalar_or_array(math.log(2) * t / a)

#----------------------------------------------------------------------------
# Any EMA given by its per-step decays (EDM's half-life with ramp-up), fitted step by step.
#
# An EMA updated ema <- beta_k ema + (1 - beta_k) theta_k at step k (from t_{k-1} to t_k images seen,
# t_0 = 0) holds sum_k v_k theta_k + v_0 theta_0 with v_k = (1 - beta_k) prod_{j>k} beta_j, and a
# power-function EMA ending at T_i holds sum_k w_ik theta_k with w_ik the mass of its profile p_i on
# (t_{k-1}, t_k] (module docstring). So what a combination sum_i x_i (EMA i) gets right or wrong is
# only the step masses: we fit them by least squares in the L2 norm of step profiles (mass / step
# length on each step), ||a - v||^2 = sum_k (a_k - v_k)^2 / delta_k with a = W x. It is the L2 norm
# of the profiles averaged over each step, so it tends to posthoc_residuals()' norm as the steps
# shrink, without the profiles' variation within a step, which no combination of snapshots can see.

def _log_power_mass(g1: float, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    # log(hi^g1 - lo^g1) = g1 log(hi) + log(1 - (lo / hi)^g1), without forming hi^g1 (it underflows).
    return g1 * np.log(hi) + np.log(-np.expm1(g1 * (np.log(lo) - np.log(hi))))


def ema_step_weights(betas: ArrayLike) -> tuple[np.ndarray, float]:
    """Weights [n] of the networks after steps 1..n, and the weight of the initial network, in an EMA
    with per-step decays betas [n] (ema <- beta_k ema + (1 - beta_k) net after step k); they sum to 1."""
    betas = _as_float64('betas', betas).ravel()
    if betas.size == 0 or np.any((betas < 0) | (betas > 1)):
        raise ValueError('betas must be one EMA decay in [0, 1] per step, at least one step.')
    later = np.append(np.cumprod(betas[::-1])[::-1][1:], 1.0)  # prod_{j>k} beta_j for k = 1..n.
    return (1 - betas) * later, float(np.prod(betas))


def _check_steps(t_end: ArrayLike, weights: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t_end, weights = _check_times('t_end', t_end).ravel(), _as_float64('weights', weights).ravel()
    if t_end.size == 0 or t_end.size != weights.size:
        raise ValueError(f'A step profile needs one weight per step end, got {weights.size} weights for {t_end.size} steps.')
    if np.any(np.diff(t_end) <= 0):
        raise ValueError('The step ends t_end must increase (images seen after each step).')
    if np.any(weights < 0) or not np.sum(weights) > 0:
        raise ValueError('The step weights must be >= 0 with a positive sum.')
    return t_end, weights / np.sum(weights)


def step_profile_std(t_end: ArrayLike, weights: ArrayLike) -> float:
    """Relative std (sigma_rel: std / t_n, as exp_to_std()) of the step profile that spreads weights[k]
    evenly over (t_end[k-1], t_end[k]] (t_end[-1] read as 0 before the first step); the weights are
    normalised to sum to 1, so the initial network's weight (ema_step_weights()) is dropped, as
    the power-function EMA drops it."""
    t, w = _check_steps(t_end, weights)
    u = t / t[-1]
    u0 = np.concatenate([[0.0], u[:-1]])
    mid = (u + u0) / 2
    mean = np.sum(w * mid)
    # Law of total variance: between the steps, plus (step length)^2 / 12 within each.
    return float(np.sqrt(np.sum(w * ((mid - mean) ** 2 + (u - u0) ** 2 / 12))))


def _step_gram(in_ofs: np.ndarray, in_std: np.ndarray, t: np.ndarray, w: np.ndarray):
    # Sums over the steps as cumulative log-sum-exps, so long runs and steep profiles (t^(gamma + 1))
    # neither overflow nor underflow; time in units of the last step's end (inner products scale as 1 / t[-1]).
    k = np.searchsorted(t, in_ofs)
    if np.any(k >= t.size) or np.any(t[np.minimum(k, t.size - 1)] != in_ofs):
        raise ValueError('Every stored profile must end at a step end no later than the last one (t_end), as snapshots are saved between steps.')
    u = t / t[-1]
    u0 = np.concatenate([[0.0], u[:-1]])
    log_du = np.log(u - u0)
    log_b, log_A = np.empty(in_ofs.size), np.empty((in_ofs.size, in_ofs.size))
    groups = {s: np.flatnonzero(in_std == s) for s in np.unique(in_std).tolist()}
    g1 = {s: float(std_to_exp(s)) + 1 for s in groups}
    with np.errstate(divide='ignore'):  # log(0) = -inf (a zero weight, u0 = 0) is what the sums need.
        log_w = np.log(w)
        log_mass = {s: _log_power_mass(g1[s], u, u0) for s in groups}  # log (u_k^g1 - u0_k^g1), the mass times U^g1.
        log_norm = np.log(in_ofs / t[-1]) * np.array([g1[s] for s in in_std.tolist()])  # log U_i^g1.
        # np.logaddexp.accumulate(terms)[k]: the log of the sum over the steps up to k.
        for s, rows in groups.items():
            log_b[rows] = np.logaddexp.accumulate(log_mass[s] + log_w - log_du)[k[rows]]
            for r, cols in groups.items():
                cum = np.logaddexp.accumulate(log_mass[s] + log_mass[r] - log_du)
                log_A[np.ix_(rows, cols)] = cum[np.minimum.outer(k[rows], k[cols])]
    A = np.exp(log_A - log_norm[:, None] - log_norm[None, :]) / t[-1]
    return A, np.exp(log_b - log_norm) / t[-1], float(np.sum(w ** 2 / (u - u0)) / t[-1])


def solve_posthoc_coefficients_for_steps(in_ofs: ArrayLike, in_std: ArrayLike, t_end: ArrayLike,
                                         weights: ArrayLike) -> tuple[np.ndarray, float]:
    """(x [len(in_ofs)], residual): the coefficients, summing to 1, of the stored power-function
    profiles (ending at in_ofs images, each one of the step ends t_end, with stds in_std) whose
    combination's step masses are the least-squares closest to `weights` (an EMA's weights of the
    networks after each step, ema_step_weights(); normalised to sum to 1), and the relative error
    ||a - v|| / ||v|| of that fit, in the step profiles' L2 norm ||a||^2 = sum_k a_k^2 / (t_k - t_{k-1})."""
    in_ofs, in_std = _check_stored(in_ofs, in_std)
    t, w = _check_steps(t_end, weights)
    A, b, c = _step_gram(in_ofs, in_std, t, w)
    X = _solve_normal_equations(A, b[:, None])
    return X[:, 0], float(_relative_residuals(X, A, b[:, None], np.array([c]))[0])

#----------------------------------------------------------------------------
# Tracking power-function EMAs during training.

def _module_bytes(net: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))


class PowerFunctionEMA:
    """One EMA copy of a network per relative std, each tracking its power-function profile.

    The copies start as deep copies of the network (eval mode, no gradients) on its device and dtype.
    update() blends the parameters after every optimizer step and copies the buffers (constants in our
    networks), so the copies are ready to be saved at any time. state_dict() is plain data (float
    stds and tensors) for training states; resuming from it continues bit for bit."""

    def __init__(self, net: torch.nn.Module, stds: Sequence[float] = (0.050, 0.100)):
        stds = [float(s) for s in np.atleast_1d(_check_std('stds', stds)).ravel()]
        if len(stds) == 0:
            raise ValueError('PowerFunctionEMA needs at least one std.')
        if len(set(stds)) != len(stds):
            raise ValueError(f'The tracked stds must be distinct, got {stds}.')
        self.stds = stds
        self.exps = [float(std_to_exp(s)) for s in stds]
        with torch.no_grad():
            self.emas = [copy.deepcopy(net).eval().requires_grad_(False) for _ in stds]

    @torch.no_grad()
    def update(self, net: torch.nn.Module, cur_nimg: int, batch_size: int) -> None:
        """Account for one optimizer step of batch_size images that started at cur_nimg images seen
        (EDM's loop calls it before cur_nimg += batch_size; EDM2's after, passing the new count, so
        both use t_next = images seen after the step)."""
        if batch_size <= 0 or cur_nimg < 0:
            raise ValueError(f'cur_nimg must be >= 0 and batch_size > 0, got {cur_nimg} and {batch_size}.')
        t_next = cur_nimg + batch_size
        params = list(net.parameters())
        buffers = list(net.buffers())
        for exp, ema in zip(self.exps, self.emas):
            # according to Equation 127, with the exponent computed once in __init__
            beta = (1 - batch_size / t_next) ** (exp + 1)
            ema_params = list(ema.parameters())
            if len(ema_params) != len(params):
                raise ValueError('The network passed to update() does not match the one the EMA was built from.')
            for p_ema, p_net in zip(ema_params, params):
                p_ema.lerp_(p_net.detach(), 1 - beta)
            for b_ema, b_net in zip(ema.buffers(), buffers):
                b_ema.copy_(b_net)

    def networks(self) -> list[tuple[float, torch.nn.Module]]:
        """[(std, EMA network)] for saving snapshots; the modules are live, copy before modifying."""
        return list(zip(self.stds, self.emas))

    def memory_bytes(self) -> int:
        """Bytes held by the EMA copies: (number of stds) x (parameter + buffer bytes of the network)."""
        return sum(_module_bytes(ema) for ema in self.emas)

    def state_dict(self) -> dict:
        """{'stds': [float], 'emas': [state dict per std]}: CPU copies of every tensor, loadable with
        torch.load(weights_only=True)."""
        return dict(stds=list(self.stds),
                    emas=[{k: v.detach().to('cpu', copy=True) for k, v in ema.state_dict().items()} for ema in self.emas])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from state_dict() output; the tracked stds and network must be the same."""
        if not isinstance(state, Mapping) or 'stds' not in state or 'emas' not in state:
            raise ValueError("A power-function EMA state must be a dict with 'stds' and 'emas'.")
        stds = [float(s) for s in state['stds']]
        if stds != self.stds or len(state['emas']) != len(self.emas):
            raise ValueError(f'The saved EMA tracks stds {stds} but this run tracks {self.stds}; use the same stds to resume.')
        for std, ema, sd in zip(self.stds, self.emas, state['emas']):
            try:
                ema.load_state_dict(sd, strict=True)
            except (RuntimeError, TypeError, AttributeError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(f'The saved EMA of std {std:g} does not fit this network ({first}).') from None

#----------------------------------------------------------------------------
# Post-hoc reconstruction from stored snapshots.

StateDict = Mapping[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One stored EMA: the profile of std `std` at nimg images seen; state_dict is the EMA network's
    state dict, or a function returning it (called once, so snapshots can be loaded one at a time)."""
    nimg: int
    std: float
    state_dict: Union[StateDict, Callable[[], StateDict]]


class Reconstruction(NamedTuple):
    """reconstruct()'s result, one entry per requested std (in the order requested)."""
    state_dicts: list[dict[str, torch.Tensor]]
    residuals: np.ndarray       # [len(out_std)] relative L2 profile error (posthoc_residuals).
    noise_gain: np.ndarray      # [len(out_std)] noise_gain(coefficients): how much errors in the snapshots can grow.
    coefficients: np.ndarray    # [len(used), len(out_std)] coefficients X of the used snapshots.
    used: list[Snapshot]        # the snapshots that entered the sum (nimg in (0, out_nimg]).
    nimg: int                   # the time reconstructed, images seen.


def noise_gain(coefficients: np.ndarray) -> np.ndarray:
    """sum_i |X[i, j]| [columns of X]: the most by which errors in the stored snapshots (weights rounded
    to float32, bf16 ...) can grow in the combination sum_i X[i, j] theta_i, because
    |sum_i x_i e_i| <= sum_i |x_i| max_i |e_i|. The columns sum to 1, so it is 1 for non-negative
    coefficients and large when large coefficients of both signs cancel."""
    return np.abs(np.asarray(coefficients, dtype=np.float64)).sum(axis=0)


def _as_snapshot(i: int, s: Any) -> Snapshot:
    if isinstance(s, Snapshot):
        return s
    if isinstance(s, Mapping) and {'nimg', 'std', 'state_dict'} <= set(s):
        return Snapshot(nimg=s['nimg'], std=s['std'], state_dict=s['state_dict'])
    raise ValueError(f"Snapshot {i} must be a Snapshot or a dict with 'nimg', 'std' and 'state_dict'.")


def used_snapshots(snapshots: Sequence[Union[Snapshot, Mapping[str, Any]]], out_nimg: Optional[int] = None) -> tuple[list[Snapshot], int]:
    """(used, out_nimg): the snapshots saved after 0 and up to out_nimg images, ordered by (nimg, std)
    (the rows of the coefficients that combine_snapshots() takes), and out_nimg (default the latest
    snapshot's time; otherwise it must be one of the snapshots' times)."""
    snaps = [_as_snapshot(i, s) for i, s in enumerate(snapshots)]
    if len(snaps) == 0:
        raise ValueError('No snapshots to reconstruct from.')
    for s in snaps:
        if not isinstance(s.nimg, (int, np.integer)) or isinstance(s.nimg, bool) or s.nimg < 0:
            raise ValueError(f'Snapshot times must be non-negative integers (images seen), got {s.nimg!r}.')
        _check_std('snapshot std', s.std)
    times = sorted({int(s.nimg) for s in snaps})
    if out_nimg is None:
        out_nimg = times[-1]
    elif int(out_nimg) not in times:
        raise ValueError(f'out_nimg {out_nimg} is not the time of any snapshot; choose one of them (e.g. {times[-1]}).')
    out_nimg = int(out_nimg)
    used = sorted([s for s in snaps if 0 < s.nimg <= out_nimg], key=lambda s: (s.nimg, s.std))
    if len(used) == 0:
        raise ValueError(f'No snapshot was saved after 0 and up to {out_nimg} images.')
    return used, out_nimg


def reconstruct(snapshots: Sequence[Union[Snapshot, Mapping[str, Any]]], out_std: ArrayLike, out_nimg: Optional[int] = None,
                max_residual: Optional[float] = DEFAULT_MAX_RESIDUAL) -> Reconstruction:
    """Synthesise the EMA of each std in out_std at time out_nimg (images seen; default the latest
    snapshot's, otherwise it must be one of the snapshots' times) from stored power-function EMA
    snapshots, with the coefficients of solve_posthoc_coefficients() (combine_snapshots()). Snapshots
    after out_nimg or at time 0 are ignored. ValueError if a requested profile's relative error
    exceeds max_residual (None: no limit)."""
    used, out_nimg = used_snapshots(snapshots, out_nimg)
    out_std_arr = np.atleast_1d(_check_std('out_std', out_std)).ravel()
    in_ofs = np.array([s.nimg for s in used], dtype=np.float64)
    in_std = np.array([s.std for s in used], dtype=np.float64)
    X = solve_posthoc_coefficients(in_ofs, in_std, out_nimg, out_std_arr)
    residuals = posthoc_residuals(in_ofs, in_std, out_nimg, out_std_arr, X)
    if max_residual is not None:
        _refuse_unrepresentable(out_std_arr, residuals, max_residual)
    return Reconstruction(state_dicts=combine_snapshots(used, X), residuals=residuals, noise_gain=noise_gain(X),
                          coefficients=X, used=used, nimg=out_nimg)


def _load(snap: Snapshot) -> StateDict:
    sd = snap.state_dict() if callable(snap.state_dict) else snap.state_dict
    if not isinstance(sd, Mapping):
        raise ValueError(f'The snapshot at {snap.nimg} images (std {snap.std:g}) does not hold a state dict.')
    return sd


def combine_snapshots(used: Sequence[Snapshot], coefficients: np.ndarray) -> list[dict[str, torch.Tensor]]:
    """The state dicts sum_i X[i, j] (snapshot i), one per column j of X [len(used), m], loading each
    snapshot once (a callable state_dict is called then). Floating-point tensors are summed in float64
    and cast back to their dtype; tensors equal in every snapshot (constant buffers) and non-float
    tensors are copied from the last snapshot."""
    X = np.asarray(coefficients, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != len(used) or len(used) == 0:
        raise ValueError(f'coefficients must have one row per snapshot ({len(used)}), got shape {X.shape}.')
    sums: list[dict[str, torch.Tensor]] = []
    first: dict[str, torch.Tensor] = {}
    constant: dict[str, bool] = {}
    latest: dict[str, torch.Tensor] = {}
    for i, snap in enumerate(used):
        sd = _load(snap)
        if i == 0:
            first = {k: v.detach().cpu().clone() for k, v in sd.items()}
            constant = {k: True for k in first}
            sums = [{k: torch.zeros(v.shape, dtype=torch.float64) for k, v in first.items() if v.is_floating_point()} for _ in range(X.shape[1])]
        elif set(sd) != set(first):
            diff = sorted(set(sd) ^ set(first))
            raise ValueError(f'The snapshot at {snap.nimg} images (std {snap.std:g}) has different keys from the first one (e.g. {diff[0]!r}).')
        for k, v in sd.items():
            v = v.detach().cpu()
            if v.shape != first[k].shape or v.dtype.is_floating_point != first[k].dtype.is_floating_point:
                raise ValueError(f'The snapshot at {snap.nimg} images (std {snap.std:g}) holds {k!r} with shape {tuple(v.shape)}, '
                                 f'the first one {tuple(first[k].shape)}.')
            if i > 0 and constant[k]:
                constant[k] = torch.equal(v, first[k])
            latest[k] = v
            if v.is_floating_point():
                v64 = v.to(torch.float64)
                for j in range(X.shape[1]):
                    sums[j][k].add_(v64, alpha=float(X[i, j]))
        del sd
    return [{k: sums[j][k].to(v.dtype) if v.is_floating_point() and not constant[k] else v.clone() for k, v in latest.items()}
            for j in range(X.shape[1])]
