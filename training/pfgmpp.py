"""The PFGM++ perturbation kernel: the one place where the augmented dimension D enters.

PFGM++ (Xu et al., 2023) embeds N-dimensional data in N+D dimensions. With r = sigma * sqrt(D), the
perturbation kernel is

    p_r(x | y)  proportional to  (|x - y|^2 + r^2)^(-(N+D)/2)                      (Equation 4)

whose norm R = |x - y| satisfies (R / r)^2 ~ BetaPrime(N/2, D/2) with a uniformly random direction.
That is exactly the multivariate Student t distribution with D degrees of freedom and scale sigma:

    n = sigma * g / sqrt(c / D),   g ~ N(0, I_N),   c ~ chi^2(D) = 2 * Gamma(D/2)

because |g|^2 ~ chi^2(N) is independent of the direction g / |g|, and (|g|^2/2) / (c/2) is a ratio of
independent Gamma(N/2) and Gamma(D/2) draws, i.e. BetaPrime(N/2, D/2). The law is exact for every N
and D (no clipping of a Beta draw), costs one Gaussian per element plus one Gamma draw per sample, and
tends to sigma * g, the diffusion kernel, as D -> infinity (D=None), using the same g.

Training draws its noise from sample_noise(), sampling draws its starting point from sample_prior()
and the Restart sampler its forward jumps from restart_jump() (whose distance from the kernel
restart_jump_error() measures); nothing else in the code base depends on D.
"""

import math
import numbers
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from torch_utils import rng

__all__ = ['check_D', 'sample_noise', 'sample_prior', 'ideal_denoiser', 'sample_gamma_log', 'restart_jump',
           'restart_jump_error']

SigmaLike = Union[float, int, torch.Tensor]
RandnLike = Callable[[torch.Tensor], torch.Tensor]
GammaLogLike = Callable[[torch.Tensor, float], torch.Tensor]

#----------------------------------------------------------------------------
# Argument checks shared by everything that takes D or sigma.

def check_D(D: Optional[float]) -> Optional[float]:
    """Validate the augmented dimension: None (D -> infinity, diffusion) or a finite real D > 0."""
    if D is None:
        return None
    if isinstance(D, bool) or not isinstance(D, numbers.Real):
        raise ValueError(f'D must be a positive number or None (diffusion), got {D!r}.')
    D = float(D)
    if not math.isfinite(D) or D <= 0:
        raise ValueError(f'D must be a finite number > 0 (or None for diffusion), got {D}.')
    return D


def _sigma_per_sample(sigma: SigmaLike, batch: int, device: Optional[torch.device]) -> torch.Tensor:
    """Return sigma as a float64 tensor of shape [batch], checking it is finite and >= 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, torch.Tensor)):
        raise ValueError(f'sigma must be a float or a tensor, got {type(sigma).__name__}.')
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    if sigma.numel() == 1:
        sigma = sigma.reshape(1).expand(batch)
    elif sigma.numel() == batch and sigma.ndim >= 1 and sigma.shape[0] == batch:
        sigma = sigma.reshape(batch)
    else:
        raise ValueError(f'sigma must be a scalar or hold one value per sample ({batch}), got shape {list(sigma.shape)}.')
    if not bool(torch.isfinite(sigma).all()) or bool((sigma < 0).any()):
        raise ValueError('sigma must be finite and >= 0; got NaN, infinite or negative values.')
    return sigma


def _check_shape(shape: Sequence[int]) -> tuple:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f'shape must be [batch, ...] with at least one data dimension and positive sizes, got {list(shape)}.')
    return shape

#----------------------------------------------------------------------------
# Gamma draws from an explicit torch.Generator (torch.distributions.Gamma cannot take one).

def sample_gamma_log(alpha: float, num: int, generator: Optional[torch.Generator] = None,
                     device: Optional[torch.device] = None) -> torch.Tensor:
    """log of `num` independent Gamma(alpha, 1) draws, float64 [num].

    Marsaglia and Tsang's (2000) exact rejection method, vectorised over the batch: each round
    redraws only the rejected entries, so the result depends only on the generator's state. For
    alpha < 1 it draws Gamma(alpha + 1) and multiplies by U^(1/alpha), done in log space so that a
    tiny alpha cannot underflow to log(0).
    """
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f'Gamma shape must be finite and > 0, got {alpha}.')
    kw = dict(dtype=torch.float64, device=device, generator=generator)
    a = alpha + 1 if alpha < 1 else alpha
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(num, dtype=torch.float64, device=device)
    pending = torch.arange(num, device=device)
    while pending.numel() > 0:
        x = torch.randn(pending.numel(), **kw)
        u = torch.rand(pending.numel(), **kw)
        v = (1 + c * x) ** 3
        log_v = torch.log(v.clamp(min=torch.finfo(torch.float64).tiny))
        accept = (v > 0) & (torch.log(u) < 0.5 * x ** 2 + d - d * v + d * log_v)
        out[pending[accept]] = math.log(d) + log_v[accept]
        pending = pending[~accept]
    if alpha < 1:
        out = out + torch.log(torch.rand(num, **kw)) / alpha
    return out

#----------------------------------------------------------------------------
# The kernel: training noise and prior.

def sample_noise(shape: Sequence[int], sigma: SigmaLike, D: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Draw n ~ p_r(. | 0) for each sample: [B, ...] on sigma's device (or `device`), float32 unless
    `dtype` says otherwise (the Gaussian is always drawn in float32, the scale applied in `dtype`).

    D=None:  n = sigma * g, g ~ N(0, I_N)  (EDM's diffusion noise).
    D > 0:   n = sigma * g / sqrt(c / D), c ~ chi^2(D), so (|n| / r)^2 ~ BetaPrime(N/2, D/2) with
             r = sigma * sqrt(D) and a uniform direction (the PFGM++ kernel, Equation 4).
    `sigma` is a float or a tensor with one value per sample (any shape with B elements). The
    Gaussian g is drawn first, on the generator's device, so D=None reproduces EDM's stream and a
    large D converges to it sample by sample.
    """
    shape = _check_shape(shape)
    D = check_D(D)
    if device is None:
        device = sigma.device if isinstance(sigma, torch.Tensor) else (generator.device if generator is not None else torch.device('cpu'))
    device = torch.device(device)
    batch = shape[0]
    sigma = _sigma_per_sample(sigma, batch, device)
    draws = rng.Draws(generator, device)

    g = draws.randn(*shape)
    if D is None:
        scale = sigma
    else:
        # sqrt(D / c) with c = 2 * Gamma(D/2), in float64 and log space.
        log_gamma = sample_gamma_log(D / 2, batch, generator=generator, device=draws.draw_device).to(device)
        scale = sigma * torch.exp(0.5 * (math.log(D / 2) - log_gamma))
    scale = scale.to(dtype).reshape([batch] + [1] * (len(shape) - 1))
    return g.to(dtype) * scale


def sample_prior(shape: Sequence[int], sigma_max: float, D: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Starting point of the sampler: the kernel at sigma = sigma_max for every sample, [B, ...].

    For D=None this is sigma_max * N(0, I), the diffusion prior; for finite D it is the PFGM++
    prior p_{r_max} with r_max = sigma_max * sqrt(D). With dtype=torch.float64 and D=None this is
    EDM's starting point to the bit: randn(shape).to(float64) * sigma_max.
    """
    if isinstance(sigma_max, torch.Tensor):
        if sigma_max.numel() != 1:
            raise ValueError('sigma_max must be a single number.')
        sigma_max = float(sigma_max)
    if isinstance(sigma_max, bool) or not isinstance(sigma_max, (int, float)) or not math.isfinite(sigma_max) or sigma_max <= 0:
        raise ValueError(f'sigma_max must be a finite number > 0, got {sigma_max!r}.')
    return sample_noise(shape, float(sigma_max), D=D, generator=generator, device=device, dtype=dtype)

#----------------------------------------------------------------------------
# The exact denoiser for a finite data set (an oracle for tests, and the stable target field).

def ideal_denoiser(x: torch.Tensor, sigma: SigmaLike, data: torch.Tensor, D: Optional[float] = None,
                   weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Posterior mean E[y | x] when y is drawn from the points `data` [K, ...] (with probabilities
    `weights` [K], uniform by default) and x = y + n with n from the kernel at noise level sigma.

        E[y | x] = sum_k w_k(x) y_k,   log w_k = log p_k - (N+D)/2 * log(|x - y_k|^2 + sigma^2 D)
                                         (D = None: log w_k = log p_k - |x - y_k|^2 / (2 sigma^2))

    x is [B, ...] with the same data shape as `data`; sigma a float or one value per sample, > 0.
    Computed in float64 and log space (softmax), so it never overflows, even for N = 3*256*256.
    Returns x's dtype and shape.
    """
    D = check_D(D)
    if not isinstance(x, torch.Tensor) or not isinstance(data, torch.Tensor):
        raise ValueError('x and data must be tensors.')
    if x.ndim < 2 or data.ndim != x.ndim or tuple(x.shape[1:]) != tuple(data.shape[1:]):
        raise ValueError(f'x [B, ...] and data [K, ...] must share their data shape, got {list(x.shape)} and {list(data.shape)}.')
    if data.shape[0] == 0:
        raise ValueError('data must hold at least one point.')
    batch, num_points = x.shape[0], data.shape[0]
    sigma = _sigma_per_sample(sigma, batch, x.device)
    if bool((sigma <= 0).any()):
        raise ValueError('ideal_denoiser needs sigma > 0.')
    if weights is None:
        log_p = torch.zeros(num_points, dtype=torch.float64, device=x.device)
    else:
        weights = torch.as_tensor(weights, dtype=torch.float64, device=x.device)
        if weights.shape != (num_points,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f'weights must be {num_points} finite non-negative numbers with a positive sum.')
        log_p = torch.log(weights)

    xf = x.reshape(batch, -1).to(torch.float64)
    yf = data.reshape(num_points, -1).to(device=x.device, dtype=torch.float64)
    N = xf.shape[1]
    # |x - y|^2 expanded into norms and a matrix product: memory B*K rather than B*K*N.
    dist2 = (xf.square().sum(1, keepdim=True) + yf.square().sum(1)[None, :] - 2 * xf @ yf.T).clamp(min=0)
    if D is None:
        logits = -dist2 / (2 * sigma[:, None] ** 2)
    else:
        logits = -(N + D) / 2 * torch.log(dist2 + sigma[:, None] ** 2 * D)
    w = torch.softmax(logits + log_p[None, :], dim=1)
    return (w @ yf).reshape(x.shape).to(x.dtype)

#----------------------------------------------------------------------------
# The forward jump of the Restart sampler (Xu et al., 2023), from noise level t_min up to t_max.

def restart_jump(x: torch.Tensor, t_min: SigmaLike, t_max: SigmaLike, D: Optional[float] = None,
                 randn_like: RandnLike = torch.randn_like, gamma_log_like: Optional[GammaLogLike] = None) -> torch.Tensor:
    """Move each sample x [B, ...] from noise level t_min to t_max > t_min, as the published Restart
    code does; returns x's dtype and shape.

    D=None (diffusion):  x + sqrt(t_max^2 - t_min^2) * g,  g ~ N(0, I_N); the exact transition of the
        forward process, so a state with the marginal at t_min gets the marginal at t_max.
    D finite (PFGM++):   in the N+D-dimensional picture the sample sits at augmented radius
        r0 = t_min sqrt(D) (augmented part z, |z| = r0, uniformly random direction); it moves along a
        uniformly random direction of R^(N+D) until the augmented radius is r1 = t_max sqrt(D). With
        that direction written as (g, h) / |h|, g ~ N(0, I_N), h ~ N(0, I_D), and h decomposed along z,
        only three things matter per sample: g, h1 = <h, z/|z|> ~ N(0, 1) and q = |h|^2 - h1^2 ~
        chi^2(D - 1) = 2 Gamma((D - 1)/2), independent. With G = |h|^2 = h1^2 + q the move is x + s g,
        where s > 0 solves |z + s h|^2 = r1^2, i.e. G s^2 + 2 r0 h1 s - (r1^2 - r0^2) = 0:
            s = (sqrt(r0^2 h1^2 + G (r1^2 - r0^2)) - r0 h1) / G.
        This is the published construction in law for every D >= 1, without drawing D-dimensional
        vectors, and it is defined for non-integer D too. (The published code takes the other root,
        always, since its torch.randint(1) is always 0; flipping the sign of (g, h) maps one root's move
        onto the other's, so the law is the same.) The result is close to, but not exactly, the kernel
        at t_max, and the farther the smaller D and the closer t_min is to t_max: restart_jump_error()
        measures it (Kolmogorov-Smirnov distance for one data point; 0.154 for D=1, 0.079 for D=4,
        0.035 for D=16, 0.013 for D=128 and 0.004 for D=2048 with N = 3072, t 0.14 -> 0.30). As D ->
        infinity, G / D -> 1 and s -> sqrt(t_max^2 - t_min^2): the diffusion jump.

    Randomness is per sample, so a sample depends only on its own stream: randn_like(t) draws standard
    normals shaped like t, row i from sample i's generator (generate.StackedRandomGenerator.randn_like);
    gamma_log_like(t, alpha) returns float64 [B], row i the log of a Gamma(alpha, 1) draw from sample
    i's generator (None: sample_gamma_log from the global generator). Per sample the draws come in this
    order: g (randn_like(x)), then for finite D: h1 (randn_like of a [B, 1] tensor) and log(q/2)
    (gamma_log_like, only when D > 1).
    """
    D = check_D(D)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError('x must be a tensor [B, ...] with at least one data dimension.')
    batch = x.shape[0]
    t_min = _sigma_per_sample(t_min, batch, x.device)
    t_max = _sigma_per_sample(t_max, batch, x.device)
    if bool((t_max <= t_min).any()):
        raise ValueError('restart_jump needs t_max > t_min; a jump goes up in noise level.')
    if D is not None and D < 1:
        raise ValueError(f'The Restart jump of PFGM++ needs D >= 1 (a direction in D dimensions), got D={D:g}.')
    view = [batch] + [1] * (x.ndim - 1)

    g = randn_like(x).to(torch.float64)
    if D is None:
        scale = (t_max ** 2 - t_min ** 2).sqrt()
    else:
        h1 = randn_like(x.new_empty([batch, 1])).to(torch.float64).reshape(batch)
        if D > 1:
            if gamma_log_like is None:
                log_gamma = sample_gamma_log((D - 1) / 2, batch, device=x.device)
            else:
                log_gamma = torch.as_tensor(gamma_log_like(x, (D - 1) / 2), dtype=torch.float64, device=x.device).reshape(batch)
            q = 2 * log_gamma.exp()
        else:
            q = torch.zeros_like(h1)
        G = h1 ** 2 + q
        r0, dr2 = t_min * math.sqrt(D), (t_max ** 2 - t_min ** 2) * D
        root = (r0 ** 2 * h1 ** 2 + G * dr2).sqrt()
        # The same root in two forms, each a sum of non-negative terms for its sign of h1, so that
        # neither loses digits to cancellation.
        scale = torch.where(h1 > 0, dr2 / (root + r0 * h1), (root - r0 * h1) / G)
    return (x.to(torch.float64) + scale.reshape(view) * g).to(x.dtype)


def _jumped_radii2(D: float, N: int, t_min: float, t_max: float, num: int, generator: torch.Generator,
                   full: bool, chunk: int = 4096) -> torch.Tensor:
    """(|x'| / r_max)^2, float64 [num], for x ~ p_{t_min}(. | 0) moved by restart_jump() to t_max, with
    r_max = t_max sqrt(D): what the kernel at t_max says is BetaPrime(N/2, D/2)."""
    randn_like = lambda t: torch.randn(t.shape, generator=generator, dtype=t.dtype)
    gamma_log_like = lambda t, alpha: sample_gamma_log(alpha, t.shape[0], generator=generator)
    if full:  # The N-dimensional vectors themselves, in chunks of rows.
        parts = []
        for start in range(0, num, chunk):
            x = sample_noise([min(chunk, num - start), N], t_min, D, generator=generator, dtype=torch.float64)
            parts.append(restart_jump(x, t_min, t_max, D, randn_like, gamma_log_like).square().sum(1))
        return torch.cat(parts) / (t_max ** 2 * D)
    # The same law in two coordinates. x = |x| e with e a uniform direction and the move is s g with g ~
    # N(0, I_N) independent of s (restart_jump's docstring), so |x + s g|^2 = (|x| + s g_1)^2 + s^2 q
    # with g_1 = <e, g> ~ N(0, 1) and q = |g|^2 - g_1^2 ~ chi^2(N - 1) independent: x = (|x|, 0) and
    # g = (g_1, sqrt(q)) move the same radius. |x|^2 = t_min^2 D Gamma(N/2) / Gamma(D/2) is the kernel's.
    log_ratio = sample_gamma_log(N / 2, num, generator=generator) - sample_gamma_log(D / 2, num, generator=generator)
    radius = t_min * math.sqrt(D) * (0.5 * log_ratio).exp()
    x = torch.stack([radius, torch.zeros_like(radius)], dim=1)
    rest = (2 * sample_gamma_log((N - 1) / 2, num, generator=generator).exp()).sqrt() if N > 1 else torch.zeros(num, dtype=torch.float64)
    move = lambda t: torch.stack([randn_like(t[:, 0]), rest], dim=1) if t.shape == x.shape else randn_like(t)
    return restart_jump(x, t_min, t_max, D, move, gamma_log_like).square().sum(1) / (t_max ** 2 * D)


def restart_jump_error(D: float, N: int, t_min: float, t_max: float, num: int = 100_000, seed: int = 0,
                       full: bool = False) -> tuple[float, float]:
    """How far restart_jump() lands from the kernel at t_max, for finite D >= 1 and N data dimensions:
    the Kolmogorov-Smirnov distance sup_u |F_num(u) - F(u)| of u = (|x'| / (t_max sqrt(D)))^2, with x
    drawn from the exact kernel at t_min around one data point (the origin) and x' = restart_jump(x),
    against F, the BetaPrime(N/2, D/2) law of u under the exact kernel at t_max (Equation 4).
    Returns (distance, standard error), the error sqrt(F_num (1 - F_num) / num) at the supremum (the
    statistic's spread when the distance is well above the noise floor of about 0.9 / sqrt(num)).

    num samples from a torch.Generator seeded with `seed` (never the global one), drawn in the two
    coordinates that carry |x'| (exact in law and O(num) work; see _jumped_radii2), or with full=True
    as [num, N] vectors. The distance depends on t_min / t_max, not on the scale, and little on N
    once N is in the thousands; docs/sampling.md tabulates it for the published presets.
    """
    D = check_D(D)
    if D is None:
        raise ValueError('restart_jump_error() measures the jump of a finite D; for diffusion (D=None) the jump is exact.')
    if isinstance(N, bool) or not isinstance(N, int) or N < 1 or isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f'N (data dimensions) must be an integer >= 1 and num an integer >= 2, got N={N!r} and num={num!r}.')
    import scipy.special  # Here, so that training, which never measures the jump, does not load SciPy.
    generator = torch.Generator().manual_seed(int(seed))
    u = _jumped_radii2(D, N, float(t_min), float(t_max), num, generator, full).sort().values.numpy()
    cdf = scipy.special.betainc(N / 2, D / 2, u / (1 + u))  # The BetaPrime(N/2, D/2) CDF.
    steps = np.arange(num + 1) / num
    gaps = np.maximum(steps[1:] - cdf, cdf - steps[:-1])
    i = int(np.argmax(gaps))
    empirical = steps[i + 1] if steps[i + 1] - cdf[i] >= cdf[i] - steps[i] else steps[i]
    return float(gaps[i]), math.sqrt(empirical * (1 - empirical) / num)
