"""The PFGM++ kernel (training/pfgmpp.py) against its exact laws, with fixed seeds."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from training import pfgmpp

P_MIN = 1e-3  # KS tests with fixed seeds: a correct law gives p far above this.


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def norm_ratio(n, sigma, D):
    """(R / r)^2 per sample, computed in float64 from the drawn noise."""
    n = n.double().reshape(n.shape[0], -1)
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    return (n.square().sum(1) / (sigma ** 2 * D)).numpy()

#----------------------------------------------------------------------------
# The norm law.

@pytest.mark.parametrize('N', [2, 3072, 196608])
@pytest.mark.parametrize('D', [1, 2.5, 128, 2048])
def test_norm_is_betaprime(N, D):
    num = 2000 if N < 10000 else 400
    # Per-sample sigmas: the law must hold with each sample's own r = sigma sqrt(D).
    sigma = torch.rand(num, generator=gen(1), dtype=torch.float64) * 3 + 0.1
    n = pfgmpp.sample_noise([num, N], sigma, D=D, generator=gen(N + int(10 * D)))
    assert n.dtype == torch.float32 and n.shape == (num, N)
    p = scipy.stats.kstest(norm_ratio(n, sigma, D), scipy.stats.betaprime(N / 2, D / 2).cdf).pvalue
    assert p > P_MIN, f'(R/r)^2 does not follow BetaPrime({N}/2, {D}/2): KS p={p:.2g}'


def test_ks_detects_the_clipped_beta_kernel():
    # The published code draws Beta(N/2, D/2), clips it to [1e-3, 1-1e-3] and maps it to R; at
    # N=196608, D=128 almost every draw is clipped. The same KS check must reject that law.
    N, D, num = 196608, 128, 400
    rng = np.random.default_rng(0)
    beta = np.clip(rng.beta(N / 2, D / 2, size=num), 1e-3, 1 - 1e-3)
    assert np.mean(beta == 1 - 1e-3) > 0.99
    ratio = beta / (1 - beta)  # BetaPrime from Beta, as the published code does.
    p = scipy.stats.kstest(ratio, scipy.stats.betaprime(N / 2, D / 2).cdf).pvalue
    assert p < 1e-10


@pytest.mark.parametrize('N', [2, 3072])
def test_gaussian_case_is_chi_square(N):
    sigma = 0.7
    n = pfgmpp.sample_noise([2000, N], sigma, D=None, generator=gen(3))
    stat = n.double().square().sum(1).numpy() / sigma ** 2
    assert scipy.stats.kstest(stat, scipy.stats.chi2(N).cdf).pvalue > P_MIN


def test_gaussian_case_is_edm_stream():
    # D=None must be sigma * torch.randn(shape) from the same generator, as EDM draws it.
    sigma = torch.tensor([0.5, 2.0, 80.0])
    n = pfgmpp.sample_noise([3, 2, 4, 4], sigma, D=None, generator=gen(7))
    ref = torch.randn([3, 2, 4, 4], generator=gen(7)) * sigma.reshape(-1, 1, 1, 1)
    assert torch.equal(n, ref)


@pytest.mark.parametrize('D', [1.0, 128.0])
def test_directions_are_uniform(D):
    # On the sphere S^2 each coordinate of a uniform direction is uniform on [-1, 1] (Archimedes).
    n = pfgmpp.sample_noise([3000, 3], 1.0, D=D, generator=gen(4)).double()
    u = n / n.norm(dim=1, keepdim=True)
    for k in range(3):
        assert scipy.stats.kstest(u[:, k].numpy(), scipy.stats.uniform(-1, 2).cdf).pvalue > P_MIN
    # In higher dimension: E[u] = 0 and E[u u^T] = I / N, within 5 standard errors.
    N, num = 16, 20000
    n = pfgmpp.sample_noise([num, N], 1.0, D=D, generator=gen(5)).double()
    u = n / n.norm(dim=1, keepdim=True)
    assert u.mean(0).abs().max() < 5 / math.sqrt(num * N)
    second = (u.T @ u / num).numpy()
    assert np.abs(second - np.eye(N) / N).max() < 5 * math.sqrt(2 / (N * (N + 2))) / math.sqrt(num)


@pytest.mark.parametrize('D', [4.5, 128, 2048])
def test_mean_squared_norm(D):
    # E|n|^2 = sigma^2 N D / (D - 2) for D > 2; the bound is 5 standard errors of the sample mean,
    # from Var[BetaPrime(a, b)] = a (a + b - 1) / ((b - 2)(b - 1)^2) (finite only for D > 4).
    N, sigma, num = 3072, 1.3, 4000
    n = pfgmpp.sample_noise([num, N], sigma, D=D, generator=gen(6)).double()
    sq = n.square().sum(1)
    expected = sigma ** 2 * N * D / (D - 2)
    a, b = N / 2, D / 2
    std = sigma ** 2 * D * math.sqrt(a * (a + b - 1) / ((b - 2) * (b - 1) ** 2))
    assert abs(float(sq.mean()) - expected) < 5 * std / math.sqrt(num)


def test_large_D_tends_to_gaussian_noise():
    # The same generator gives the same g; the per-sample scale sqrt(D / chi^2_D) -> 1.
    shape, sigma = [64, 3, 8, 8], 2.0
    gauss = pfgmpp.sample_noise(shape, sigma, D=None, generator=gen(8))
    errors = [float((pfgmpp.sample_noise(shape, sigma, D=D, generator=gen(8)) - gauss).abs().max() / gauss.abs().max())
              for D in (1e2, 1e4, 1e6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2


def test_seeded_draws_repeat_exactly():
    for D in (None, 2.5, 2048):
        a = pfgmpp.sample_noise([5, 3, 4, 4], torch.tensor([1.0, 2, 3, 4, 5]), D=D, generator=gen(9))
        b = pfgmpp.sample_noise([5, 3, 4, 4], torch.tensor([1.0, 2, 3, 4, 5]), D=D, generator=gen(9))
        c = pfgmpp.sample_noise([5, 3, 4, 4], torch.tensor([1.0, 2, 3, 4, 5]), D=D, generator=gen(10))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_sigma_zero_gives_zero_noise_and_scalar_sigma_broadcasts():
    n = pfgmpp.sample_noise([3, 4], torch.tensor([0.0, 1.0, 2.0]), D=5.0, generator=gen(0))
    assert torch.all(n[0] == 0)
    a = pfgmpp.sample_noise([3, 4], 1.5, D=5.0, generator=gen(0))
    b = pfgmpp.sample_noise([3, 4], torch.full([3], 1.5), D=5.0, generator=gen(0))
    c = pfgmpp.sample_noise([3, 4], torch.full([3, 1, 1, 1], 1.5), D=5.0, generator=gen(0))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_prior_is_kernel_at_sigma_max():
    a = pfgmpp.sample_prior([6, 3, 4, 4], 80.0, D=128, generator=gen(11))
    b = pfgmpp.sample_noise([6, 3, 4, 4], torch.full([6], 80.0), D=128, generator=gen(11))
    assert torch.equal(a, b)
    # D = None: sigma_max times a standard normal, as EDM's latents.
    c = pfgmpp.sample_prior([6, 3, 4, 4], 80.0, D=None, generator=gen(12))
    assert torch.equal(c, torch.randn([6, 3, 4, 4], generator=gen(12)) * 80.0)
    # In float64 it is EDM's latents to the bit: randn in float32, then * sigma_max in float64.
    d = pfgmpp.sample_prior([6, 3, 4, 4], 80.0, D=None, generator=gen(12), dtype=torch.float64)
    assert d.dtype == torch.float64
    assert torch.equal(d, torch.randn([6, 3, 4, 4], generator=gen(12)).to(torch.float64) * 80.0)


@pytest.mark.parametrize('alpha', [0.05, 0.5, 1.0, 3.7, 1024.0])
def test_gamma_sampler_law(alpha):
    x = torch.exp(pfgmpp.sample_gamma_log(alpha, 4000, generator=gen(13))).numpy()
    assert scipy.stats.kstest(x, scipy.stats.gamma(alpha).cdf).pvalue > P_MIN

#----------------------------------------------------------------------------
# The ideal denoiser.

def direct_posterior_mean(x, sigma, data, D, weights):
    """Naive float64 evaluation of E[y | x] for small N, where nothing overflows."""
    x = x.double().reshape(x.shape[0], -1).numpy()
    y = data.double().reshape(data.shape[0], -1).numpy()
    out = []
    for i in range(x.shape[0]):
        d2 = ((x[i][None] - y) ** 2).sum(1)
        if D is None:
            k = np.exp(-d2 / (2 * sigma[i] ** 2))
        else:
            k = (d2 + sigma[i] ** 2 * D) ** (-(x.shape[1] + D) / 2)
        w = weights * k
        out.append((w[:, None] * y).sum(0) / w.sum())
    return np.stack(out)


@pytest.mark.parametrize('D', [None, 1.0, 3.5, 40.0])
def test_ideal_denoiser_matches_direct_computation(D):
    g = gen(14)
    data = torch.randn([5, 2, 2], generator=g)
    x = torch.randn([7, 2, 2], generator=g) * 1.5
    sigma = np.array([0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0])
    weights = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    ours = pfgmpp.ideal_denoiser(x.double(), torch.tensor(sigma), data.double(), D=D, weights=torch.tensor(weights))
    ref = direct_posterior_mean(x, sigma, data, D, weights)
    np.testing.assert_allclose(ours.reshape(7, -1).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_ideal_denoiser_tends_to_gaussian_case():
    g = gen(15)
    data = torch.randn([6, 3, 4, 4], generator=g, dtype=torch.float64)
    x = data[[0, 2, 4]] + 0.8 * torch.randn([3, 3, 4, 4], generator=g, dtype=torch.float64)
    gauss = pfgmpp.ideal_denoiser(x, 0.8, data, D=None)
    errors = [float((pfgmpp.ideal_denoiser(x, 0.8, data, D=D) - gauss).abs().max()) for D in (10.0, 1e3, 1e6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


@pytest.mark.parametrize('D', [None, 128.0, 2048.0])
def test_ideal_denoiser_no_overflow_at_256x256(D):
    g = gen(16)
    N_shape = [3, 256, 256]
    data = torch.rand([3] + N_shape, generator=g) * 2 - 1
    # A noisy copy of point 1 at a small sigma: the exponent (N+D)/2 ~ 1e5 would overflow naively.
    x = data[1:2] + 0.05 * torch.randn([1] + N_shape, generator=g)
    out = pfgmpp.ideal_denoiser(x, 0.05, data, D=D)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, data[1:2], atol=1e-5)
    # A point half-way between two data points is their average, by symmetry.
    mid = 0.5 * (data[0:1] + data[2:3])
    far = pfgmpp.ideal_denoiser(mid, 10.0, data[[0, 2]], D=D)
    assert torch.allclose(far, mid, atol=1e-5)

#----------------------------------------------------------------------------
# Bad input: a ValueError that says what was wrong.

@pytest.mark.parametrize('D, match', [(0, 'D must'), (-1.0, 'D must'), (float('nan'), 'D must'),
                                      (float('inf'), 'D must'), ('128', 'D must'), (True, 'D must')])
def test_bad_D(D, match):
    with pytest.raises(ValueError, match=match):
        pfgmpp.sample_noise([2, 3], 1.0, D=D)
    with pytest.raises(ValueError, match=match):
        pfgmpp.ideal_denoiser(torch.zeros(1, 3), 1.0, torch.zeros(2, 3), D=D)


@pytest.mark.parametrize('sigma', [float('nan'), -1.0, torch.tensor([1.0, float('nan')]), torch.tensor([1.0, -2.0]),
                                   float('inf')])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match='sigma'):
        pfgmpp.sample_noise([2, 3], sigma, D=4.0)


def test_bad_shapes():
    with pytest.raises(ValueError, match='one value per sample'):
        pfgmpp.sample_noise([4, 3], torch.ones(3), D=None)
    with pytest.raises(ValueError, match='shape'):
        pfgmpp.sample_noise([4], 1.0)
    with pytest.raises(ValueError, match='data shape'):
        pfgmpp.ideal_denoiser(torch.zeros(2, 3), 1.0, torch.zeros(5, 4))
    with pytest.raises(ValueError, match='weights'):
        pfgmpp.ideal_denoiser(torch.zeros(2, 3), 1.0, torch.zeros(5, 3), weights=torch.ones(4))
    with pytest.raises(ValueError, match='sigma > 0'):
        pfgmpp.ideal_denoiser(torch.zeros(2, 3), 0.0, torch.zeros(5, 3))
    with pytest.raises(ValueError, match='sigma_max'):
        pfgmpp.sample_prior([2, 3], 0.0)
