"""Restart sampling: the forward jump (training/pfgmpp.restart_jump) against its exact laws and the
published construction, its measured distance from the kernel (pfgmpp.restart_jump_error) and the
warning generate.py prints when that is large, and the sampler (sampling/samplers.restart_sampler)
against the exact denoiser of a finite data set, EDM's sampler, an independent reference, its NFE
formula and bad input."""

import math
import re
import shutil

import numpy as np
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

import generate
import generate_steps
from sampling import samplers as sampling
from torch_utils import rng
from training import checkpoint, pfgmpp

from helpers import WEIGHTS, OracleNet, check_lands_on_data, draw_prior, make_data, one_sentence, tiny_net, trajectory

P_MIN = 1e-3  # KS tests with fixed seeds: a correct law gives p far above this.


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def seeded_randn_like(seed):
    g = gen(seed)
    return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)


def seeded_gamma_log_like(seed):
    g = gen(seed)
    return lambda x, alpha: pfgmpp.sample_gamma_log(alpha, x.shape[0], generator=g)


#----------------------------------------------------------------------------
# The jump.

def test_diffusion_jump_adds_gaussian_increments_of_variance_t_max2_minus_t_min2():
    num, N, t_min, t_max = 4000, 32, 0.3, 1.7
    x = torch.randn([1, 2, 4, 4], generator=gen(0), dtype=torch.float64).expand(num, -1, -1, -1)
    out = pfgmpp.restart_jump(x, t_min, t_max, None, seeded_randn_like(1))
    z = ((out - x) / math.sqrt(t_max ** 2 - t_min ** 2)).reshape(num, N)
    assert scipy.stats.kstest(z.flatten().numpy(), scipy.stats.norm.cdf).pvalue > P_MIN
    assert scipy.stats.kstest(z.square().sum(1).numpy(), scipy.stats.chi2(N).cdf).pvalue > P_MIN
    # Independent coordinates: the sample covariance is I within 5 standard errors (1/sqrt(num) each).
    assert (z.T @ z / num - torch.eye(N, dtype=torch.float64)).abs().max() < 5 * math.sqrt(2 / num)


def published_jump_increments(num, N, D, t_min, t_max, seed):
    """The published PFGM++ jump, built as the code does it (numpy, full N+D-dimensional vectors):
    z of norm r0 = t_min sqrt(D) in a uniformly random direction of R^D, a Gaussian direction in
    R^(N+D) scaled to a unit D-part, moved until |z + move * dir_D| = r1, taking the root the code
    takes. Returns the increments of x, [num, N]."""
    rng = np.random.default_rng(seed)
    r0, r1 = t_min * math.sqrt(D), t_max * math.sqrt(D)
    z = rng.standard_normal([num, D])
    z *= r0 / np.linalg.norm(z, axis=1, keepdims=True)
    direction = rng.standard_normal([num, N + D])
    direction /= np.linalg.norm(direction[:, N:], axis=1, keepdims=True)
    dot = (z * direction[:, N:]).sum(1)
    moves = -dot - np.sqrt(dot ** 2 + r1 ** 2 - r0 ** 2)  # torch.randint(1) is always 0: this root.
    return moves[:, None] * direction[:, :N]


@pytest.mark.parametrize('D', [1, 16, 2048])
def test_finite_D_jump_is_the_published_construction_in_law(D):
    num, N, t_min, t_max = 4000, 32, 0.3, 0.9
    x = torch.zeros([num, 2, 4, 4], dtype=torch.float64)
    ours = pfgmpp.restart_jump(x, t_min, t_max, D, seeded_randn_like(2), seeded_gamma_log_like(3)).reshape(num, N).numpy()
    theirs = published_jump_increments(num, N, D, t_min, t_max, seed=4)
    for a, b in [(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1)), (ours[:, 0], theirs[:, 0]), (ours[:, 7], theirs[:, 7])]:
        p = scipy.stats.ks_2samp(a, b).pvalue
        assert p > P_MIN, f'D={D}: the jump does not follow the published construction (KS p={p:.2e})'


@pytest.mark.parametrize('D', [16, 2048, None])
def test_jump_from_the_kernel_at_t_min_against_the_kernel_at_t_max(D):
    """One data point y = 0: before the jump x ~ p_{t_min}, the exact marginal; the exact marginal at
    t_max would be p_{t_max}, i.e. (|x| / (t_max sqrt(D)))^2 ~ BetaPrime(N/2, D/2). The published jump
    is exact for diffusion only. Measured here (N = 32, t 0.14 -> 0.30, the CIFAR-10 PFGM++ interval),
    KS distance of |x| from the exact law: D=16: 0.031 (n = 20000; 0.0265 at n = 200000, p ~ 1e-122;
    E|x|^2 2.6% too large); D=2048: 0.006, at the noise floor (0.0031 at n = 200000, p = 0.04; E|x|^2
    0.06% too large). At N = 3072, D = 2048: 0.008 at n = 50000 (noise floor 0.006). The jump
    overshoots slightly, the more so the smaller D and the closer t_max is to t_min (D=16, 1.0 -> 1.1:
    0.082)."""
    num, N, t_min, t_max = 20000, 32, 0.14, 0.30
    x = pfgmpp.sample_noise([num, 2, 4, 4], t_min, D, generator=gen(5), dtype=torch.float64)
    out = pfgmpp.restart_jump(x, t_min, t_max, D, seeded_randn_like(6), seeded_gamma_log_like(7)).reshape(num, N)
    if D is None:
        ks = scipy.stats.kstest((out.square().sum(1) / t_max ** 2).numpy(), scipy.stats.chi2(N).cdf)
    else:
        ks = scipy.stats.kstest((out.square().sum(1) / (t_max ** 2 * D)).numpy(), scipy.stats.betaprime(N / 2, D / 2).cdf)
    if D == 16:
        # Measurably off the kernel's law (the published method's approximation), but close.
        assert ks.pvalue < 1e-6 and ks.statistic < 0.05, f'KS distance {ks.statistic:.4f} (p={ks.pvalue:.2e})'
    else:
        assert ks.pvalue > P_MIN, f'D={D}: KS distance {ks.statistic:.4f} (p={ks.pvalue:.2e})'


def test_jump_tends_to_the_diffusion_jump_as_D_grows():
    # The same Gaussian g: x + s g with s -> sqrt(t_max^2 - t_min^2) as D -> infinity.
    x = torch.randn([64, 2, 4, 4], generator=gen(8), dtype=torch.float64)
    gauss = pfgmpp.restart_jump(x, 0.5, 1.5, None, seeded_randn_like(9))
    errors = [float((pfgmpp.restart_jump(x, 0.5, 1.5, D, seeded_randn_like(9), seeded_gamma_log_like(10)) - gauss).abs().max())
              for D in (1e2, 1e4, 1e6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2


def test_jump_draws_in_the_documented_order():
    # g = randn_like(x), then h1 = randn_like([B, 1]), then log(q/2) = gamma_log_like(x, (D - 1)/2):
    # recompute the move from those draws with the formula of the docstring.
    D, t_min, t_max = 40.0, 0.2, 0.7
    x = torch.randn([5, 2, 4, 4], generator=gen(11), dtype=torch.float64)
    out = pfgmpp.restart_jump(x, t_min, t_max, D, seeded_randn_like(12), seeded_gamma_log_like(13))
    g_gen = gen(12)
    g = torch.randn(x.shape, generator=g_gen, dtype=torch.float64)
    h1 = torch.randn([5, 1], generator=g_gen, dtype=torch.float64).reshape(5)
    q = 2 * pfgmpp.sample_gamma_log((D - 1) / 2, 5, generator=gen(13)).exp()
    G, r0, r1 = h1 ** 2 + q, t_min * math.sqrt(D), t_max * math.sqrt(D)
    s = ((r0 ** 2 * h1 ** 2 + G * (r1 ** 2 - r0 ** 2)).sqrt() - r0 * h1) / G
    torch.testing.assert_close(out, x + s.reshape(5, 1, 1, 1) * g, rtol=1e-12, atol=1e-12)
    # The augmented radius reaches r1 exactly: |z + s h|^2 = r1^2 with |z| = r0, <z/|z|, h> = h1, |h|^2 = G.
    torch.testing.assert_close(r0 ** 2 + 2 * s * r0 * h1 + s ** 2 * G, torch.full([5], r1 ** 2, dtype=torch.float64))


#----------------------------------------------------------------------------
# How far the finite-D jump lands from the kernel (pfgmpp.restart_jump_error), and the warning.

# N = 3 x 32 x 32 and the interval of the published PFGM++ preset 'cifar10-pfgmpp-d2048', t 0.14 -> 0.30,
# 200000 samples from seed 0: {D: (KS distance, its standard error)}, as docs/sampling.md tabulates them.
# Twelve seeds give standard deviations of 0.0005 (D=2048) to 0.0011, as the returned errors say.
JUMP_ERROR_N, JUMP_ERROR_INTERVAL, JUMP_ERROR_NUM = 3072, (0.14, 0.30), 200_000
JUMP_ERRORS = {1: (0.1539, 0.0011), 2: (0.1145, 0.0011), 4: (0.0785, 0.0011), 8: (0.0533, 0.0011), 16: (0.0348, 0.0011),
               128: (0.0128, 0.0011), 2048: (0.0036, 0.0008)}


@pytest.fixture(scope='module')
def measured_jump_errors():
    return {D: pfgmpp.restart_jump_error(D, JUMP_ERROR_N, *JUMP_ERROR_INTERVAL, num=JUMP_ERROR_NUM, seed=0) for D in JUMP_ERRORS}


@pytest.mark.parametrize('D', list(JUMP_ERRORS))
def test_jump_error_is_the_measured_one(measured_jump_errors, D):
    """Fixed seeds give the same numbers; 3 standard errors of room, so that a change to the jump's law
    (or to its draws, which would leave the law alone) fails only when the law moves."""
    distance, error = measured_jump_errors[D]
    expected, expected_error = JUMP_ERRORS[D]
    assert error == pytest.approx(expected_error, abs=3e-4)
    assert abs(distance - expected) <= 3 * expected_error, f'D={D}: KS distance {distance:.4f}, measured {expected} +- {expected_error}'


def test_jump_error_decreases_with_D(measured_jump_errors):
    distances = [measured_jump_errors[D][0] for D in sorted(JUMP_ERRORS)]
    assert all(a > b + 3 * 0.0011 for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 3 * sampling.RESTART_JUMP_KS_BOUND > 30 * distances[-1]


def test_jump_error_is_scipys_ks_statistic_and_the_N_dimensional_jumps():
    D, N, (t_min, t_max), num = 4, JUMP_ERROR_N, JUMP_ERROR_INTERVAL, 20_000
    distance, error = pfgmpp.restart_jump_error(D, N, t_min, t_max, num=num, seed=21)
    two_coordinates = pfgmpp._jumped_radii2(D, N, t_min, t_max, num, gen(21), full=False).numpy()
    ks = scipy.stats.kstest(two_coordinates, scipy.stats.betaprime(N / 2, D / 2).cdf)
    assert distance == pytest.approx(ks.statistic, abs=1e-9) and ks.pvalue < 1e-20
    # The two-coordinate reduction moves radii as the [num, N] vectors do (the same law), and both
    # measure the same distance within their errors.
    vectors = pfgmpp._jumped_radii2(D, N, t_min, t_max, num, gen(22), full=True).numpy()
    assert scipy.stats.ks_2samp(two_coordinates, vectors).pvalue > P_MIN
    full_distance, full_error = pfgmpp.restart_jump_error(D, N, t_min, t_max, num=num, seed=22, full=True)
    assert abs(full_distance - distance) < 3 * math.hypot(error, full_error)


@pytest.mark.parametrize('D', [1, 16])
def test_jump_error_of_an_exact_jump_is_noise(D):
    # From t_min -> 0 the jump is x + t_max sqrt(D / chi^2(D)) g, exactly the kernel at t_max: the
    # measurement must then find only the noise of 100000 samples (Kolmogorov's law).
    distance, _ = pfgmpp.restart_jump_error(D, JUMP_ERROR_N, 1e-10, 0.30, num=100_000, seed=23)
    assert scipy.stats.kstwobign.sf(distance * math.sqrt(100_000)) > P_MIN


def test_jump_error_grows_as_t_min_nears_t_max():
    distances = [pfgmpp.restart_jump_error(16, JUMP_ERROR_N, t_min, 0.30, num=50_000)[0] for t_min in (0.03, 0.06, 0.14, 0.27)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


@pytest.mark.parametrize('call,match', [
    (lambda: pfgmpp.restart_jump_error(None, 32, 0.1, 0.3), 'exact'),
    (lambda: pfgmpp.restart_jump_error(4, 0, 0.1, 0.3), 'N '),
    (lambda: pfgmpp.restart_jump_error(4, 32, 0.1, 0.3, num=1), 'num'),
    (lambda: pfgmpp.restart_jump_error(4, 32, 0.3, 0.1), 't_max > t_min'),
    (lambda: pfgmpp.restart_jump_error(0.5, 32, 0.1, 0.3), 'D >= 1'),
])
def test_bad_jump_error_measurements_raise(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert one_sentence(str(err.value))


@pytest.fixture(scope='module')
def restart_snapshots(tmp_path_factory):
    """Tiny unconditional networks (N = 3 x 8 x 8) for D=4, D=2048 and diffusion."""
    folder = tmp_path_factory.mktemp('restart_nets')
    paths = {}
    for D in (4.0, 2048.0, None):
        paths[D] = str(folder / f'D{D}.pt')
        checkpoint.save_network_snapshot(paths[D], tiny_net(D=D), kimg=1)
    return paths


def jump_warnings(output):
    return [line for line in output.splitlines() if 'Kolmogorov-Smirnov' in line]


# 4 main steps: 80, 9.72, 0.470, 0.002; t_min = 0.47 is a main level. For N = 192: D=4 lands 0.080
# from the kernel for t 0.47 -> 1 and 0.003 for 0.47 -> 9.
@pytest.mark.parametrize('D,restart,warns', [
    (4.0, '2:1:0.47:1', True),
    (4.0, '2:1:0.47:1;2:2:9.72:40', True),   # The farthest interval is named.
    (4.0, '2:1:0.47:9', False),              # A wide interval: the jump is nearly exact.
    (4.0, None, False),                      # No Restart.
    (2048.0, '2:1:0.47:1', False),
    (None, '2:1:0.47:1', False),             # Diffusion: the jump is exact.
])
def test_generate_warns_once_when_the_jump_is_far_from_the_kernel(tmp_path, restart_snapshots, D, restart, warns):
    args = [f'--network={restart_snapshots[D]}', f'--outdir={tmp_path / "out"}', '--seeds=0-3', '--batch=2', '--steps=4', '--device=cpu']
    result = CliRunner().invoke(generate.main, args + ([f'--restart={restart}'] if restart else []))
    assert result.exit_code == 0 and 'Traceback' not in result.output, result.output
    lines = jump_warnings(result.output)
    assert len(lines) == (1 if warns else 0), result.output  # Once per command, not per batch.
    if warns:
        assert lines[0].startswith('Warning:') and 'D=4 ' in lines[0] and 'above 0.05' in lines[0] and 'interval 0.47 -> 1,' in lines[0]
        distance = float(re.search(r'distance of ([0-9.]+)', lines[0]).group(1))
        assert distance == pytest.approx(pfgmpp.restart_jump_error(4, 192, 0.46997905799774714, 1.0)[0], abs=1e-3)


def test_jump_warning_once_in_run_directory_and_study_modes(tmp_path, restart_snapshots):
    run = tmp_path / 'run'
    run.mkdir()
    for kimg in (1, 2):
        shutil.copy(restart_snapshots[4.0], run / checkpoint.snapshot_name(kimg))
    result = CliRunner().invoke(generate.main, [f'--outdir={run}', '--seeds=0', '--steps=4', '--restart=2:1:0.47:1', '--device=cpu'])
    assert result.exit_code == 0 and len(jump_warnings(result.output)) == 1, result.output
    # generate_steps.py: 4 and 7 steps snap t_min = 0.6 to the main level 0.470, 6 steps to 0.965, so
    # two settings warn alike and one otherwise.
    result = CliRunner().invoke(generate_steps.main, [f'--network={restart_snapshots[4.0]}', f'--outdir={tmp_path / "steps"}', '--seeds=0',
                                                      '--steps-list=4,6,7', '--restart=2:1:0.6:1', '--device=cpu'])
    assert result.exit_code == 0 and len(jump_warnings(result.output)) == 2, result.output


@pytest.mark.parametrize('call,match', [
    (lambda x: pfgmpp.restart_jump(x, 1.0, 1.0), 't_max > t_min'),
    (lambda x: pfgmpp.restart_jump(x, 2.0, 1.0, 16), 't_max > t_min'),
    (lambda x: pfgmpp.restart_jump(x, 0.5, 1.0, 0.5), 'D >= 1'),
    (lambda x: pfgmpp.restart_jump(x, 0.5, 1.0, -3), 'D must'),
    (lambda x: pfgmpp.restart_jump(x, float('nan'), 1.0), 'sigma'),
    (lambda x: pfgmpp.restart_jump(x[0, 0, 0], 0.5, 1.0), 'x must'),
])
def test_bad_jumps_raise(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call(torch.zeros([2, 2, 4, 4], dtype=torch.float64))
    assert one_sentence(str(err.value))

#----------------------------------------------------------------------------
# The configuration.

def test_config_forms_agree():
    expected = (sampling.RestartInterval(4, 1, 1.09, 1.92), sampling.RestartInterval(3, 2, 0.14, 0.30))
    forms = ['{"0": [3, 2, 0.14, 0.30], "1": [4, 1, 1.09, 1.92]}', '[[4, 1, 1.09, 1.92], [3, 2, 0.14, 0.30]]',
             '3:2:0.14:0.30; 4:1:1.09:1.92', {'a': [3, 2, 0.14, 0.3], 'b': (4, 1, 1.09, 1.92)},
             [sampling.RestartInterval(3, 2, 0.14, 0.30), [4.0, 1.0, 1.09, 1.92]]]
    for form in forms:
        parsed = sampling.parse_restart(form)
        assert parsed == expected and all(type(v.steps) is int and type(v.K) is int for v in parsed), form
    assert sampling.parse_restart(None) == sampling.parse_restart('') == sampling.parse_restart('{}') == ()
    assert sampling.parse_restart('cifar10-pfgmpp-d2048') == (sampling.RestartInterval(3, 2, 0.14, 0.30),)


def test_nfe_of_the_published_configurations():
    # The published README gives NFE = 203 for its ImageNet-64 command; hyperparam.py counts
    # 2 steps - 1 + sum 2 K (N_Restart - 1).
    assert sampling.restart_nfe(36, 'imagenet64-edm-nfe203') == 203
    presets = sampling.RESTART_PRESETS
    nfe = {name: sampling.restart_nfe(p['num_steps'], p['restart']) for name, p in presets.items()}
    assert nfe['cifar10-pfgmpp-d2048'] == 35 + 2 * 2 * 2
    assert [nfe[f'cifar10-vp-k{k}'] for k in (2, 5, 10, 20)] == [35 + 4 * k for k in (2, 5, 10, 20)]
    assert nfe['cifar10-vp-k30'] == 39 + 2 * 30 * 8
    assert sampling.restart_nfe(18, None) == 35 and sampling.restart_nfe(1, None) == 1


@pytest.mark.parametrize('restart,match', [
    ('{"0": [3, 2, 0.14]}', 'four numbers'),
    ('{"0": [1, 2, 0.14, 0.3]}', 'N_Restart'),
    ('{"0": [2.5, 2, 0.14, 0.3]}', 'N_Restart'),
    ('{"0": [3, 0, 0.14, 0.3]}', 'K'),
    ('{"0": [3, true, 0.14, 0.3]}', 'K'),
    ('{"0": [3, 2, 0.3, 0.3]}', 't_min < t_max'),
    ('{"0": [3, 2, 0.5, 0.3]}', 't_min < t_max'),
    ('{"0": [3, 2, -0.1, 0.3]}', 't_min < t_max'),
    ('{"0": [3, 2, "a", 0.3]}', 't_min < t_max'),
    ('3:2:0.14', 'compact form'),
    ('cifar-10', 'preset'),
    ('{"0": [3, 2, 0.14, 0.3]', 'not valid JSON'),
    (5, 'must be a string, a dict or a list'),
])
def test_bad_config_strings_raise(restart, match):
    with pytest.raises(ValueError, match=match) as err:
        sampling.parse_restart(restart)
    assert one_sentence(str(err.value)), str(err.value)


@pytest.mark.parametrize('kwargs,match', [
    (dict(restart='3:2:0.001:0.3'), 'noise range'),                       # t_min below sigma_min
    (dict(restart='3:2:1:90'), 'noise range'),                            # t_max above sigma_max
    (dict(restart='3:2:1:40', sigma_max=30), 'noise range'),              # ... of the sampler
    (dict(restart='3:2:70:79'), 'not below its t_max'),                   # t_min snaps to t_0 = 80
    (dict(restart='3:2:0.5:0.55'), 'not below its t_max'),                # snaps to a level above t_max
    (dict(restart='3:2:0.5:2;3:1:0.52:3'), 'same main noise level'),
])
def test_bad_intervals_for_the_sampler_raise(kwargs, match):
    net = OracleNet(make_data())
    with pytest.raises(ValueError, match=match) as err:
        sampling.restart_plan(net, **{'num_steps': 18, **kwargs})
    assert one_sentence(str(err.value)), str(err.value)
    with pytest.raises(ValueError, match=match):
        sampling.restart_sampler(net, torch.zeros([1, 2, 4, 4], dtype=torch.float64), **{'num_steps': 18, **kwargs})


def test_D_must_agree_with_the_network():
    x = torch.zeros([1, 2, 4, 4], dtype=torch.float64)
    with pytest.raises(ValueError, match='pass D=16') as err:
        sampling.restart_sampler(OracleNet(make_data(), D=16), x, restart='3:2:0.5:2')
    assert one_sentence(str(err.value))
    with pytest.raises(ValueError, match='pass D=16'):
        sampling.restart_sampler(OracleNet(make_data(), D=16), x, restart='3:2:0.5:2', D=2048)
    with pytest.raises(ValueError, match='restart_gamma'):
        sampling.restart_sampler(OracleNet(make_data()), x, restart='3:2:0.5:2', restart_gamma=-1)


def test_t_min_snaps_to_the_nearest_main_level():
    net = OracleNet(make_data())
    t_steps, plan = sampling.restart_plan(net, 18, 0.002, 80, 7, '{"0": [4, 2, 0.5, 2.0], "1": [3, 1, 0.14, 0.3]}')
    main = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)] + [0.0]
    for t_min, t_max, steps in [(0.5, 2.0, 4), (0.14, 0.3, 3)]:
        i = min(range(19), key=lambda k: abs(main[k] - t_min))
        interval, levels = plan[i]
        assert (interval.t_min, interval.t_max, interval.steps) == (t_min, t_max, steps)
        assert float(levels[-1]) == float(t_steps[i]) == pytest.approx(main[i], rel=1e-12)
        expected = [(t_max ** (1 / 7) + j / (steps - 1) * (main[i] ** (1 / 7) - t_max ** (1 / 7))) ** 7 for j in range(steps)]
        np.testing.assert_allclose(levels.numpy(), expected, rtol=1e-12)

#----------------------------------------------------------------------------
# The sampler.

CONFIG = '{"0": [4, 2, 0.5, 2.0], "1": [3, 2, 0.14, 0.30]}'  # Where the oracle's points separate, and the PFGM++ interval.


@pytest.mark.parametrize('D', [16, 2048, None])
def test_restart_sampler_lands_on_data_with_the_right_frequencies(D):
    data = make_data()
    net = OracleNet(data, D, WEIGHTS)
    x = sampling.restart_sampler(net, draw_prior(net, D, 2000), randn_like=seeded_randn_like(14), restart=CONFIG, D=D,
                                 gamma_log_like=seeded_gamma_log_like(15))
    check_lands_on_data(x, data, WEIGHTS)


@pytest.mark.parametrize('D', [16, None])
def test_restart_sampler_with_published_churn_lands_on_data(D):
    # The published runs' settings: restart_gamma = 0.05 inside restart passes for t in [0.01, 1].
    data = make_data()
    net = OracleNet(data, D, WEIGHTS)
    x = sampling.restart_sampler(net, draw_prior(net, D, 1000), randn_like=seeded_randn_like(16), restart=CONFIG, D=D,
                                 gamma_log_like=seeded_gamma_log_like(17), S_min=0.01, S_max=1, restart_gamma=0.05)
    check_lands_on_data(x, data, WEIGHTS)


@pytest.mark.parametrize('kwargs', [dict(), dict(num_steps=7, S_churn=30, S_min=0.05, S_max=10, S_noise=1.007, rho=3)])
def test_without_intervals_it_is_edm_sampler(kwargs):
    net = OracleNet(make_data(), 16, WEIGHTS)
    x0 = draw_prior(net, 16, 8)
    a = trajectory(sampling.edm_sampler, net, x0, randn_like=seeded_randn_like(18), **kwargs)
    b = trajectory(sampling.restart_sampler, net, x0, randn_like=seeded_randn_like(18), D=16, **kwargs)
    assert torch.equal(a, b)


def reference_restart(net, x0, randn_like, num_steps, t_min, t_max, steps, K, rho=7, sigma_min=0.002, sigma_max=80):
    """Xu et al.'s Algorithm 1 for diffusion with one interval, in plain Python floats as the published
    code reads: Heun on EDM's schedule, t_min snapped to the nearest main level. Returns the state at
    the start of every main step and the result (N + 1 states)."""
    t = [(sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho for i in range(num_steps)] + [0.0]
    snap = min(range(len(t)), key=lambda k: abs(t[k] - t_min))

    def heun(x, t_cur, t_next, last):
        d = (x - net(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d
        if not last:
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * (x_next - net(x_next, t_next)) / t_next)
        return x_next

    x = x0.to(torch.float64)
    states = []
    for i in range(num_steps):
        states.append(x)
        randn_like(x)  # EDM's sampler draws the churn noise (zero here) at every main step.
        x = heun(x, t[i], t[i + 1], last=(i == num_steps - 1))
        if i + 1 == snap:
            levels = [(t_max ** (1 / rho) + j / (steps - 1) * (t[snap] ** (1 / rho) - t_max ** (1 / rho))) ** rho for j in range(steps)]
            for _ in range(K):
                x = x + math.sqrt(levels[0] ** 2 - levels[-1] ** 2) * randn_like(x)
                for j in range(steps - 1):
                    x = heun(x, levels[j], levels[j + 1], last=False)
    return states + [x]


@pytest.mark.parametrize('restart,t_min,t_max,steps,K', [('5:3:0.4:1.5', 0.4, 1.5, 5, 3), ('2:1:3:20', 3, 20, 2, 1)])
def test_restart_sampler_matches_a_reference(restart, t_min, t_max, steps, K):
    # The whole trajectory: the end points alone are data points for both, whatever happened.
    net = OracleNet(make_data(), None, WEIGHTS)
    x0 = draw_prior(net, None, 16)
    states = []
    sampling.restart_sampler(net, x0, randn_like=seeded_randn_like(19), num_steps=12, restart=restart,
                             callback=lambda i, t, x: states.append(x))
    ref = reference_restart(net, x0, seeded_randn_like(19), 12, t_min, t_max, steps, K)
    assert len(states) == len(ref) == 13
    for ours, theirs in zip(states, ref):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('kwargs', [
    sampling.RESTART_PRESETS['cifar10-pfgmpp-d2048'],   # Presets are sampler settings as they stand.
    sampling.RESTART_PRESETS['imagenet64-edm-nfe203'],
    dict(num_steps=18, restart=CONFIG, restart_gamma=0.05, S_min=0.01, S_max=1),
    dict(num_steps=36, restart='cifar10-vp-k30', S_churn=10),
    dict(num_steps=5),
])
def test_nfe_counts_network_calls(kwargs):
    net = OracleNet(make_data(), None, WEIGHTS)
    sampling.restart_sampler(net, draw_prior(net, None, 3), randn_like=seeded_randn_like(20), **kwargs)
    assert len(net.seen_labels) == sampling.restart_nfe(kwargs['num_steps'], kwargs.get('restart'))


@pytest.mark.parametrize('D', [16, None])
def test_per_seed_images_do_not_depend_on_the_batch(D):
    """Each sample's draws (prior, churn, jumps) come from its own seed's generator, so splitting the
    seeds into other batches gives the same samples."""
    net = OracleNet(make_data(), D, WEIGHTS)
    seeds = [3, 1, 4, 1000, 5, 9]
    kwargs = dict(num_steps=10, restart=CONFIG, D=D, S_churn=5, S_min=0.05, S_max=10, restart_gamma=0.05)

    def run(batch_seeds):
        rnd = rng.StackedRandomGenerator('cpu', batch_seeds)
        latents = rnd.prior([2, 4, 4], sampling.first_sigma(net), D)
        return trajectory(sampling.restart_sampler, net, latents, randn_like=rnd.randn_like, gamma_log_like=rnd.gamma_log_like, **kwargs)

    whole = run(seeds)
    parts = torch.cat([run(seeds[:1]), run(seeds[1:3]), run(seeds[3:])], dim=1)
    torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)
    assert len({tuple(row.flatten().tolist()) for row in whole[5]}) == len(seeds)  # The seeds do matter.

#----------------------------------------------------------------------------
