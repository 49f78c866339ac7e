"""training/phema.py: EDM2's power-function EMA and post-hoc reconstruction, against EDM2's own numbers
(tests/fixtures/edm2_phema), closed forms derived independently here, numerical integration, and a
directly tracked EMA."""

import io
import json
import math
import os

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import torch

from training import phema, phema_reconstruct, training_loop

from helpers import one_sentence, tiny_net

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'edm2_phema', 'phema_math.json')
with open(FIXTURE) as f:
    EDM2 = json.load(f)

#----------------------------------------------------------------------------
# Independent helpers.

def gamma_by_bisection(std: float) -> float:
    """The exponent gamma > 0 whose profile (gamma + 1) x^gamma on [0, 1] has standard deviation std,
    from the moments of that density (mean (g+1)/(g+2), second moment (g+1)/(g+3))."""
    def excess(g):
        mean, second = (g + 1) / (g + 2), (g + 1) / (g + 3)
        return math.sqrt(second - mean ** 2) - std
    return scipy.optimize.brentq(excess, 1e-12, 1e6, xtol=1e-14, rtol=1e-15)


def profile(t: float, std: float):
    """The power-function averaging density on [0, t] with relative std `std` (gamma by bisection),
    as a function of tau (float or array)."""
    g = gamma_by_bisection(std)
    return lambda tau: np.where((0 <= tau) & (tau <= t), (g + 1) / t * (np.clip(tau, 0, t) / t) ** g, 0.0)


class Vector(torch.nn.Module):
    """A 'network' that is just a float64 parameter vector, plus a constant buffer."""
    def __init__(self, n: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
        self.register_buffer('c', torch.arange(3, dtype=torch.float32))


#----------------------------------------------------------------------------
# The math against EDM2's numbers.

def test_std_to_exp_matches_edm2():
    for std, gamma in EDM2['std_to_exp'].items():
        assert abs(phema.std_to_exp(float(std)) / gamma - 1) <= 1e-8, std
    stds = np.array([float(s) for s in EDM2['std_to_exp']]).reshape(7, 1)
    assert phema.std_to_exp(stds).shape == (7, 1)


def test_exp_to_std_matches_edm2():
    for gamma, std in EDM2['exp_to_std'].items():
        assert abs(phema.exp_to_std(float(gamma)) / std - 1) <= 1e-8, gamma


def test_beta_matches_edm2():
    for case in EDM2['beta']:
        beta = phema.power_function_beta(case['std'], case['t_next'], case['t_delta'])
        assert abs(beta - case['beta']) <= 1e-8 * abs(case['beta']), case


@pytest.mark.parametrize('case', range(len(EDM2['solve'])))
def test_solve_matches_edm2(case):
    c = EDM2['solve'][case]
    X = phema.solve_posthoc_coefficients(c['in_ofs'], c['in_std'], c['out_ofs'], c['out_std'])
    ref = np.array(c['coefficients'])
    assert X.shape == ref.shape == (len(c['in_ofs']), len(c['out_std']))
    np.testing.assert_allclose(X.sum(axis=0), 1, rtol=1e-12)
    rel = np.abs(X - ref).max(axis=0) / np.abs(ref).max(axis=0)
    assert np.all(rel <= 1e-6), rel


def test_std_and_exp_are_inverse_and_agree_with_the_moments():
    for std in [1e-3, 0.01, 0.05, 0.1, 0.2, 0.28, 0.2886]:
        gamma = phema.std_to_exp(std)
        assert abs(gamma / gamma_by_bisection(std) - 1) < 1e-9, std
        assert abs(phema.exp_to_std(gamma) / std - 1) < 1e-12, std


def test_inner_products_and_residuals_match_numerical_integration():
    cases = [(1000.0, 0.05, 1000.0, 0.10), (400.0, 0.10, 1000.0, 0.05), (1000.0, 0.02, 250.0, 0.15), (700.0, 0.01, 700.0, 0.01)]
    for a_t, a_s, b_t, b_s in cases:
        pa, pb = profile(a_t, a_s), profile(b_t, b_s)
        t_min = min(a_t, b_t)
        exact = scipy.integrate.quad(lambda x: float(pa(x) * pb(x)), 0, t_min, epsabs=0, epsrel=1e-12, limit=200)[0]
        assert abs(phema.power_function_inner_product(a_t, a_s, b_t, b_s) / exact - 1) < 1e-9
    # Residual of a three-snapshot fit, integrated on a grid (the closed form expands the same square).
    in_ofs, in_std, out_std = [500.0, 1000.0, 1000.0], [0.05, 0.05, 0.10], [0.07, 0.03]
    X = phema.solve_posthoc_coefficients(in_ofs, in_std, 1000.0, out_std)
    res = phema.posthoc_residuals(in_ofs, in_std, 1000.0, out_std, X)
    tau = np.linspace(0, 1000, 400_001)
    for j, s in enumerate(out_std):
        fit = sum(X[i, j] * profile(t, si)(tau) for i, (t, si) in enumerate(zip(in_ofs, in_std)))
        q = profile(1000.0, s)(tau)
        num = math.sqrt(scipy.integrate.trapezoid((fit - q) ** 2, tau) / scipy.integrate.trapezoid(q ** 2, tau))
        assert abs(res[j] / num - 1) < 1e-3, (s, res[j], num)
    assert 0.001 < res[0] < res[1] < 0.5

#----------------------------------------------------------------------------
# Tracking during training.

def test_update_is_the_closed_form_power_function_average():
    # A recorded trajectory w_1..w_n of one parameter, with uneven batch sizes. With t_k the images seen
    # after step k and t_0 = 0, the decays beta_j = (t_{j-1} / t_j)^(gamma + 1) telescope, so the EMA is
    # sum_k w_k (t_k^(gamma+1) - t_{k-1}^(gamma+1)) / t_n^(gamma+1), the initial value dropping out.
    rng = np.random.default_rng(1)
    batches = rng.integers(1, 64, size=300)
    trajectory = np.cumsum(rng.standard_normal(300)) + 5
    t = np.concatenate([[0], np.cumsum(batches)]).astype(np.float64)
    net = Vector(1)
    with torch.no_grad():
        net.w.fill_(123.0) # the initial network: must get weight 0
    stds = [0.03, 0.07, 0.2]
    ema = phema.PowerFunctionEMA(net, stds)
    for k in range(300):
        with torch.no_grad():
            net.w.fill_(trajectory[k])
        ema.update(net, cur_nimg=int(t[k]), batch_size=int(batches[k]))
        if k == 0:
            assert all(m.w.item() == trajectory[0] for _, m in ema.networks())
    for std, m in ema.networks():
        g1 = gamma_by_bisection(std) + 1
        weights = (t[1:] ** g1 - t[:-1] ** g1) / t[-1] ** g1
        expected = float(np.sum(weights * trajectory))
        assert abs(m.w.item() - expected) <= 1e-12 * abs(expected), std


def test_update_copies_buffers_and_keeps_the_network_untouched():
    net = Vector(4)
    ema = phema.PowerFunctionEMA(net, [0.05])
    with torch.no_grad():
        net.w.fill_(1.0)
        net.c.add_(10)
    ema.update(net, 0, 8)
    (_, m), = ema.networks()
    assert torch.equal(m.c, net.c) and torch.equal(m.w, net.w)
    assert not m.training and not m.w.requires_grad and net.w.requires_grad


def test_state_dict_round_trip_continues_bit_for_bit():
    net = tiny_net(seed=0, img_channels=1, weights="init")
    ema = phema.PowerFunctionEMA(net, [0.05, 0.10])
    def train(ema, net, start, steps):
        g = torch.Generator().manual_seed(start) # the same perturbations for both runs
        for k in range(steps):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn(p.shape, generator=g), alpha=0.01)
            ema.update(net, (start + k) * 16, 16)

    train(ema, net, 0, 5)
    buf = io.BytesIO()
    torch.save(dict(ema=ema.state_dict(), net=net.state_dict()), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(s, float) for s in state['ema']['stds'])

    net2 = tiny_net(seed=1, img_channels=1, weights="init") # different weights: everything must come from the state
    net2.load_state_dict(state['net'])
    ema2 = phema.PowerFunctionEMA(net2, [0.05, 0.10])
    ema2.load_state_dict(state['ema'])
    train(ema, net, 5, 5)
    train(ema2, net2, 5, 5)
    for (_, a), (_, b) in zip(ema.networks(), ema2.networks()):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), ka


def test_memory_bytes_is_profiles_times_network_bytes():
    net = tiny_net(seed=0, img_channels=1, weights="init")
    per_net = sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()))
    assert phema.PowerFunctionEMA(net, [0.05, 0.1, 0.15]).memory_bytes() == 3 * per_net

#----------------------------------------------------------------------------
# Post-hoc reconstruction.

def random_walk_run(tracked, direct, steps=4096, snapshot_every=256, batch=8, n=64):
    """Random-walk weights; snapshots of the tracked stds every snapshot_every steps; EMAs of the
    `direct` stds tracked during the run for comparison."""
    gen = torch.Generator().manual_seed(0)
    net = Vector(n)
    ema, ref = phema.PowerFunctionEMA(net, tracked), phema.PowerFunctionEMA(net, direct)
    snapshots = []
    for k in range(steps):
        with torch.no_grad():
            net.w.add_(torch.randn(n, generator=gen, dtype=torch.float64))
        ema.update(net, k * batch, batch)
        ref.update(net, k * batch, batch)
        if (k + 1) % snapshot_every == 0:
            for std, m in ema.networks():
                snapshots.append(phema.Snapshot((k + 1) * batch, std, {key: v.clone() for key, v in m.state_dict().items()}))
    return snapshots, dict(ref.networks())


@pytest.fixture(scope='module')
def walk():
    return random_walk_run(tracked=[0.05, 0.10], direct=[0.05, 0.07])


def test_reconstruction_matches_a_directly_tracked_ema(walk):
    snapshots, direct = walk
    target = direct[0.07].w.detach()
    rec = phema.reconstruct(snapshots, [0.07])
    err = float((rec.state_dicts[0]['w'] - target).norm() / target.norm())
    # Measured 1.05e-4 (profile residual 0.38%); with the wrong std (0.06) the error is 2.4e-2.
    assert err < 1e-3, err
    assert 0.002 < rec.residuals[0] < 0.006
    wrong = phema.reconstruct(snapshots, [0.06])
    assert float((wrong.state_dicts[0]['w'] - target).norm() / target.norm()) > 1e-2
    # A tracked std at the last snapshot comes back as that snapshot (measured 7e-18).
    rec = phema.reconstruct(snapshots, [0.05])
    exact = direct[0.05].w.detach()
    assert float((rec.state_dicts[0]['w'] - exact).norm() / exact.norm()) < 1e-12
    assert rec.residuals[0] < 1e-6 and rec.nimg == snapshots[-1].nimg


def test_reconstruction_at_an_earlier_time_and_copies(walk):
    snapshots, _ = walk
    calls = []

    def lazy(s):
        def load():
            calls.append(s.nimg)
            return s.state_dict
        return dict(nimg=s.nimg, std=s.std, state_dict=load)

    half = snapshots[len(snapshots) // 2 - 1].nimg
    rec = phema.reconstruct([lazy(s) for s in snapshots], [0.10, 0.07], out_nimg=half)
    assert rec.nimg == half and all(s.nimg <= half for s in rec.used) and len(calls) == len(rec.used)
    tracked = next(s for s in snapshots if s.nimg == half and s.std == 0.10).state_dict['w']
    assert torch.allclose(rec.state_dicts[0]['w'], tracked, rtol=0, atol=1e-9 * float(tracked.abs().max()))
    # The float32 constant buffer is copied exactly and keeps its dtype.
    assert rec.state_dicts[1]['c'].dtype == torch.float32 and torch.equal(rec.state_dicts[1]['c'], snapshots[0].state_dict['c'])
    assert rec.state_dicts[1]['w'].dtype == torch.float64
    assert rec.coefficients.shape == (len(rec.used), 2) and np.allclose(rec.coefficients.sum(0), 1)


def test_reconstruction_keeps_dtypes():
    # float32 snapshots come back as float32; integer tensors are copied, not averaged.
    sd = lambda v: {'w': torch.full([3], v, dtype=torch.float32), 'n': torch.tensor(7 if v > 1 else 3)}
    snaps = [phema.Snapshot(1000, 0.05, sd(1.0)), phema.Snapshot(2000, 0.05, sd(1.0 + 2 ** -20))]
    rec = phema.reconstruct(snaps, [0.05])
    assert rec.state_dicts[0]['w'].dtype == torch.float32
    assert torch.equal(rec.state_dicts[0]['w'], snaps[1].state_dict['w']) # exact: coefficients (0, 1)
    assert rec.state_dicts[0]['n'].item() == 7 # integer tensors come from the latest snapshot
    # A float64 tensor equal in all snapshots (a constant buffer) is copied, not re-summed: with
    # coefficients of both signs (|X|_1 ~ 16) the sum would be off by a few ulps.
    const = torch.linspace(0, 1, 101, dtype=torch.float64) / 3
    snaps = [phema.Snapshot(t, s, {'k': const.clone()}) for t in range(1000, 9000, 1000) for s in (0.05, 0.10)]
    rec = phema.reconstruct(snaps, [0.02], max_residual=None)
    assert rec.noise_gain[0] > 5 and torch.equal(rec.state_dicts[0]['k'], const)


def test_representability_rule():
    # Few snapshots (every quarter of training) cannot represent a short EMA of std 0.01.
    ofs = np.repeat([1000, 2000, 3000, 4000], 2)
    std = np.tile([0.05, 0.10], 4)
    res = phema.check_representable(ofs, std, 4000, [0.07, 0.10])
    assert res[0] < phema.DEFAULT_MAX_RESIDUAL and res[1] < 1e-6
    with pytest.raises(ValueError, match='0.0100 cannot be reconstructed') as err:
        phema.check_representable(ofs, std, 4000, [0.07, 0.01])
    assert one_sentence(str(err.value))
    snaps = [phema.Snapshot(int(t), float(s), {'w': torch.zeros(2)}) for t, s in zip(ofs, std)]
    with pytest.raises(ValueError, match='matched only to'):
        phema.reconstruct(snaps, [0.01])
    assert phema.reconstruct(snaps, [0.01], max_residual=None).residuals[0] > 0.5


def test_noise_gain_is_the_worst_case_growth_of_snapshot_errors(walk):
    # A short std from these snapshots needs coefficients of both signs. Errors of at most eps in every
    # stored weight move the result by at most noise_gain * eps, and by exactly that when each error
    # has its coefficient's sign.
    snapshots, _ = walk
    rec = phema.reconstruct(snapshots, [0.03], max_residual=None)
    X = rec.coefficients
    assert np.allclose(rec.noise_gain, np.abs(X).sum(axis=0)) and rec.noise_gain[0] > 1.5
    eps = 1e-3
    signs = np.sign(X[:, 0])
    worst = [phema.Snapshot(s.nimg, s.std, {'w': s.state_dict['w'] + eps * float(sign), 'c': s.state_dict['c']})
             for s, sign in zip(rec.used, signs)]
    moved = phema.combine_snapshots(worst, X)[0]['w'] - rec.state_dicts[0]['w']
    assert torch.allclose(moved, torch.full_like(moved, eps * rec.noise_gain[0]), rtol=1e-9, atol=0)
    gen = torch.Generator().manual_seed(1)
    noisy = [phema.Snapshot(s.nimg, s.std, {'w': s.state_dict['w'] + eps * (2 * torch.rand(64, generator=gen, dtype=torch.float64) - 1),
                                            'c': s.state_dict['c']}) for s in rec.used]
    moved = phema.combine_snapshots(noisy, X)[0]['w'] - rec.state_dicts[0]['w']
    assert float(moved.abs().max()) <= eps * rec.noise_gain[0] * (1 + 1e-9)
    # Non-negative coefficients (a tracked std) have gain 1.
    assert abs(phema.reconstruct(snapshots, [0.10]).noise_gain[0] - 1) < 1e-9

#----------------------------------------------------------------------------
# train.py's EMA (half-life with ramp-up) as step weights, and its reconstruction.

def test_ema_step_weights_are_the_weights_update_ema_applies():
    # A recorded trajectory through training_loop.update_ema with train.py's decays, with and without
    # the ramp-up: the EMA is sum_k v_k theta_k + v_0 theta_0.
    rng = np.random.default_rng(2)
    trajectory = rng.standard_normal(200)
    for halflife_kimg, ratio in [(0.3, 0.05), (0.3, None), (0.05, 0.2)]:
        betas = [training_loop.ema_beta(k * 16, 16, halflife_kimg, ratio) for k in range(200)]
        net, ema = Vector(1), Vector(1)
        with torch.no_grad():
            ema.w.fill_(7.0)  # The initial network.
            for k in range(200):
                net.w.fill_(trajectory[k])
                training_loop.update_ema(ema, net, betas[k])
        weights, initial = phema.ema_step_weights(betas)
        assert abs(float(np.sum(weights * trajectory)) + 7.0 * initial - ema.w.item()) < 1e-12
        assert abs(weights.sum() + initial - 1) < 1e-12 and (initial == 0) == (ratio is not None)


def test_step_fit_is_the_least_squares_fit_of_the_step_masses():
    # Independently: the matrix W of every stored profile's mass on every step (from the closed-form
    # profile of gamma_by_bisection), then least squares in sum_k (a_k - v_k)^2 / delta_k.
    batch, steps = 40, 100
    t, v = phema_reconstruct.edm_ema_step_profile(steps * batch, batch, 0.0005, 0.05)
    in_ofs, in_std = np.repeat([1000.0, 2000.0, 3000.0, 4000.0], 2), np.tile([0.05, 0.10], 4)
    W = np.zeros((steps, in_ofs.size))
    for i, (T, s) in enumerate(zip(in_ofs, in_std)):
        g1 = gamma_by_bisection(s) + 1
        ends = t[t <= T]
        W[:ends.size, i] = (ends ** g1 - (ends - batch) ** g1) / T ** g1
    A, b, c = W.T @ W / batch, W.T @ v / batch, v @ v / batch
    x = np.linalg.solve(A, b)
    x /= x.sum()
    residual = math.sqrt((W @ x - v) @ (W @ x - v) / batch / c)
    got, got_residual = phema.solve_posthoc_coefficients_for_steps(in_ofs, in_std, t, v)
    np.testing.assert_allclose(got, x, rtol=0, atol=1e-9)
    assert abs(got_residual / residual - 1) < 1e-6 and 0.01 < residual < 0.05
    # Its std: the moments of the step density, numerically.
    tau = np.linspace(0, t[-1], 4_000_001)
    density = v[np.minimum((tau // batch).astype(int), steps - 1)] / batch
    mean = scipy.integrate.trapezoid(tau * density, tau)
    std = math.sqrt(scipy.integrate.trapezoid((tau - mean) ** 2 * density, tau)) / t[-1]
    assert abs(phema.step_profile_std(t, v) / std - 1) < 1e-5
    # A tracked profile given as step weights comes back as itself.
    x, residual = phema.solve_posthoc_coefficients_for_steps(in_ofs, in_std, t, W[:, -1])
    assert residual < 1e-6 and abs(x[-1] - 1) < 1e-9
    # A long run with steep profiles neither overflows nor underflows (t^(gamma + 1) would).
    t_long = 512.0 * np.arange(1, 400_001)
    v_long, _ = phema.ema_step_weights([training_loop.ema_beta(k * 512, 512, 500, 0.05) for k in range(400_000)])
    x, residual = phema.solve_posthoc_coefficients_for_steps(t_long[[999, 99_999, 399_999]], [0.01, 0.05, 0.10], t_long, v_long)
    assert np.all(np.isfinite(x)) and 0 < residual < 1


def train_py_ema_walk(steps, batch, halflife_mimg, ratio, snapshot_every, tracked=(0.05, 0.10), n=256):
    """Random-walk weights with train.py's EMA (training_loop.update_ema with ema_beta, as
    update_averages() calls them) and power-function EMAs snapshotted every snapshot_every steps.
    Returns (snapshots, the kept EMA, the raw weights, images seen)."""
    gen = torch.Generator().manual_seed(0)
    net, ema = Vector(n), Vector(n)
    profiles = phema.PowerFunctionEMA(net, tracked)
    snapshots, nimg = [], 0
    for k in range(steps):
        with torch.no_grad():
            net.w.add_(torch.randn(n, generator=gen, dtype=torch.float64))
        training_loop.update_ema(ema, net, training_loop.ema_beta(nimg, batch, halflife_mimg * 1000, ratio))
        profiles.update(net, nimg, batch)
        nimg += batch
        if (k + 1) % snapshot_every == 0 or k + 1 == steps:
            snapshots += [phema.Snapshot(nimg, s, {'w': m.w.detach().clone()}) for s, m in profiles.networks()]
    return snapshots, ema.w.detach().clone(), net.w.detach().clone(), nimg


@pytest.mark.parametrize('case', [
    # The quick start's EMA (batch 64, --ema=0.002, --ema-rampup=0.05, 35 kimg = 547 steps), snapshots
    # every 16 steps: the ramp-up binds throughout, a power-function-like profile of std 0.0628; the
    # constant half-life's std (halflife_to_std) is 0.0824. Measured errors, relative to |EMA - raw
    # weights|: 5.0e-5 here, 0.23 with that std.
    dict(steps=547, batch=64, halflife=0.002, ratio=0.05, every=16, std=0.0628, error=1e-4, old_error=0.1),
    # Ramp-up over by mid-run (half-life 800 images from 16 of 32.8 kimg): an exponential tail of std
    # 0.0352 that no power function has. Measured: 8.6e-3; the power function of the same std 3.2e-2.
    dict(steps=4096, batch=8, halflife=0.0008, ratio=0.05, every=256, std=0.0352, error=0.015, old_error=0.025),
])
def test_half_life_reconstruction_matches_the_ema_train_py_keeps(case):
    snapshots, kept, raw, nimg = train_py_ema_walk(case['steps'], case['batch'], case['halflife'], case['ratio'], case['every'])
    used, out_nimg = phema.used_snapshots(snapshots)
    t, v = phema_reconstruct.edm_ema_step_profile(out_nimg, case['batch'], case['halflife'], case['ratio'])
    x, residual = phema.solve_posthoc_coefficients_for_steps([s.nimg for s in used], [s.std for s in used], t, v)
    rec = phema.combine_snapshots(used, x[:, None])[0]['w']
    scale = float((kept - raw).norm())
    assert float((rec - kept).norm()) / scale < case['error'] and residual < phema.DEFAULT_MAX_RESIDUAL
    assert abs(phema.step_profile_std(t, v) - case['std']) < 5e-5
    # What --half-life reconstructed before: the power function of the constant half-life's std.
    old = phema.reconstruct(snapshots, [phema.halflife_to_std(case['halflife'], nimg / 1e6)], max_residual=None)
    assert float((old.state_dicts[0]['w'] - kept).norm()) / scale > case['old_error']

#----------------------------------------------------------------------------
# Traditional EMA as a profile.

def test_halflife_to_std_matches_numerical_integration():
    for halflife, t in [(0.5, 200.0), (0.5, 10.0), (0.5, 1.0), (0.5, 0.01), (2.0, 0.1 * 2.0 / math.log(2))]:
        lam = math.log(2) / halflife
        density = lambda x: math.exp(-lam * (t - x))
        mass = scipy.integrate.quad(density, 0, t, epsabs=0, epsrel=1e-13)[0]
        mean = scipy.integrate.quad(lambda x: x * density(x), 0, t, epsabs=0, epsrel=1e-13)[0] / mass
        var = scipy.integrate.quad(lambda x: (x - mean) ** 2 * density(x), 0, t, epsabs=0, epsrel=1e-13)[0] / mass
        std = phema.halflife_to_std(halflife, t)
        assert abs(std / (math.sqrt(var) / t) - 1) < 1e-10, (halflife, t)
        assert abs(phema.std_to_halflife(std, t) / halflife - 1) < 1e-8, (halflife, t)
    # Long training: the exponential's std 1/lambda dominates.
    assert abs(phema.halflife_to_std(0.5, 1e4) * math.log(2) * 1e4 / 0.5 - 1) < 1e-12

#----------------------------------------------------------------------------
# Bad input.

@pytest.mark.parametrize('std', [0.0, -0.05, 0.2887, 0.5, float('nan'), float('inf')])
def test_bad_std_is_refused(std):
    for call in (lambda: phema.std_to_exp(std), lambda: phema.power_function_beta(std, 1000, 10),
                 lambda: phema.PowerFunctionEMA(Vector(2), [std]), lambda: phema.std_to_halflife(std, 1.0),
                 lambda: phema.reconstruct([phema.Snapshot(1000, 0.05, {'w': torch.zeros(1)})], [std])):
        with pytest.raises(ValueError) as err:
            call()
        assert one_sentence(str(err.value))


def test_bad_inputs_are_refused():
    sd = {'w': torch.zeros(2)}
    cases = [
        (lambda: phema.exp_to_std(0.0), 'positive'),
        (lambda: phema.power_function_beta(0.05, 100, 200), 'cannot exceed'),
        (lambda: phema.power_function_beta(0.05, 0, 0), 'positive'),
        (lambda: phema.reconstruct([], [0.05]), 'No snapshots'),
        (lambda: phema.reconstruct([phema.Snapshot(1000, 0.05, sd), phema.Snapshot(2000, 0.05, {'v': torch.zeros(2)})], [0.05]), 'different keys'),
        (lambda: phema.reconstruct([phema.Snapshot(1000, 0.05, sd), phema.Snapshot(2000, 0.05, {'w': torch.zeros(3)})], [0.05]), 'shape'),
        (lambda: phema.reconstruct([phema.Snapshot(1000, 0.05, sd), phema.Snapshot(1000, 0.05, sd)], [0.05]), 'appears twice'),
        (lambda: phema.reconstruct([phema.Snapshot(1000, 0.05, sd)], [0.05], out_nimg=1500), 'not the time of any snapshot'),
        (lambda: phema.reconstruct([phema.Snapshot(0, 0.05, sd)], [0.05]), 'No snapshot was saved'),
        (lambda: phema.reconstruct([phema.Snapshot(-5, 0.05, sd)], [0.05]), 'non-negative'),
        (lambda: phema.reconstruct([{'nimg': 1000, 'std': 0.05}], [0.05]), "'state_dict'"),
        (lambda: phema.PowerFunctionEMA(Vector(2), [0.05, 0.05]), 'distinct'),
        (lambda: phema.PowerFunctionEMA(Vector(2), []), 'at least one'),
        (lambda: phema.PowerFunctionEMA(Vector(2), [0.05]).update(Vector(2), 0, 0), 'batch_size'),
        (lambda: phema.ema_step_weights([]), 'at least one step'),
        (lambda: phema.ema_step_weights([0.5, 1.5]), 'in \\[0, 1\\]'),
        (lambda: phema.solve_posthoc_coefficients_for_steps([100], [0.05], [100, 200], [0.5]), 'one weight per step'),
        (lambda: phema.solve_posthoc_coefficients_for_steps([100], [0.05], [200, 100], [0.5, 0.5]), 'must increase'),
        (lambda: phema.solve_posthoc_coefficients_for_steps([150], [0.05], [100, 200], [0.5, 0.5]), 'step end'),
        (lambda: phema.solve_posthoc_coefficients_for_steps([300], [0.05], [100, 200], [0.5, 0.5]), 'step end'),
        (lambda: phema.step_profile_std([100, 200], [0, 0]), 'positive sum'),
        (lambda: phema.combine_snapshots([phema.Snapshot(1000, 0.05, sd)], np.ones((2, 1))), 'one row per snapshot'),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert one_sentence(str(err.value)), str(err.value)


def test_loading_a_mismatched_ema_state_is_refused():
    ema = phema.PowerFunctionEMA(Vector(2), [0.05, 0.10])
    state = ema.state_dict()
    for bad, match in [(phema.PowerFunctionEMA(Vector(2), [0.05, 0.12]), 'use the same stds'),
                       (phema.PowerFunctionEMA(Vector(3), [0.05, 0.10]), 'does not fit this network')]:
        with pytest.raises(ValueError, match=match) as err:
            bad.load_state_dict(state)
        assert one_sentence(str(err.value)), str(err.value)
    with pytest.raises(ValueError, match="'stds' and 'emas'"):
        ema.load_state_dict({'emas': []})
