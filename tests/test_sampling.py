"""sampling/samplers.py: the samplers, checked against the exact denoiser of a finite data set (prior,
schedule and solver together, no training) and against EDM's Algorithm 2 written out independently;
the registry SAMPLERS, with a toy sampler registered in it."""

import inspect
import math

import pytest
import scipy.stats
import torch

from sampling import generation, provenance
from sampling import samplers as sampling
from torch_utils.rng import StackedRandomGenerator
from training import pfgmpp

from helpers import WEIGHTS, OracleNet, check_lands_on_data, draw_prior, make_data, nearest_points

#----------------------------------------------------------------------------
# The oracle: prior + schedule + solver land on the data with the right frequencies.

@pytest.mark.parametrize('D', [16, 2048, None])
def test_edm_sampler_lands_on_data_with_the_right_frequencies(D):
    data = make_data()
    net = OracleNet(data, D, WEIGHTS)
    states = {}
    x = sampling.edm_sampler(net, draw_prior(net, D, 2000), callback=lambda i, t, x: states.__setitem__(i, (float(t), x)))
    check_lands_on_data(x, data, WEIGHTS)

    # Along the way, the state at sigma_i must be distributed as the data perturbed by the kernel at
    # sigma_i. Where the points are resolved (sigma ~ 1) the distance to the nearest point depends on
    # the kernel's radial law, so this fails if the prior's law is wrong (e.g. Gaussian for D = 16),
    # which the end points alone cannot show: they depend mostly on the prior's directions.
    i = min(states, key=lambda i: abs(states[i][0] - 1))
    sigma, x_i = states[i]
    gen = torch.Generator().manual_seed(2)
    y = data[torch.multinomial(WEIGHTS, len(x_i), replacement=True, generator=gen)]
    reference = y + pfgmpp.sample_noise(y.shape, sigma, D, generator=gen, dtype=torch.float64)
    p = scipy.stats.ks_2samp(nearest_points(x_i, data)[0].numpy(), nearest_points(reference, data)[0].numpy()).pvalue
    assert p > 1e-3, f'states at sigma = {sigma:.3f} are not distributed as the perturbed data (KS p = {p:.2e})'


@pytest.mark.parametrize('D', [16, None])
def test_stochastic_edm_sampler_lands_on_data(D):
    data = make_data()
    net = OracleNet(data, D, WEIGHTS)
    gen = torch.Generator().manual_seed(5)
    randn_like = lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype)
    x = sampling.edm_sampler(net, draw_prior(net, D, 1000), randn_like=randn_like, num_steps=32,
                             S_churn=20, S_min=0.05, S_max=50, S_noise=1.003)
    check_lands_on_data(x, data, WEIGHTS)


@pytest.mark.parametrize('D,kwargs', [
    (16, dict(solver='heun', discretization='edm', schedule='linear', scaling='none')),
    (None, dict(solver='heun', discretization='vp', schedule='linear', scaling='vp')),
    (2048, dict(solver='heun', discretization='ve', schedule='linear', scaling='none')),
    (None, dict(solver='heun', discretization='iddpm', schedule='linear', scaling='none', num_steps=40)),
    (16, dict(solver='euler', discretization='edm', schedule='linear', scaling='none', num_steps=40)),
    (None, dict(solver='heun', discretization='edm', schedule='linear', scaling='none', alpha_heun=0.5)),
])
def test_ablation_sampler_lands_on_data(D, kwargs):
    data = make_data()
    net = OracleNet(data, D, WEIGHTS)
    x = sampling.ablation_sampler(net, draw_prior(net, D, 1000, 'ablation', **kwargs), **kwargs)
    check_lands_on_data(x, data, WEIGHTS)


@pytest.mark.parametrize('schedule', ['vp', 've'])
def test_ablation_sampler_vp_ve_schedules_converge(schedule):
    # sigma(t) ~ sqrt(t) near 0 makes the last Euler step go half way, so the samples end about
    # sigma_min sqrt(N) / 2 from the data, and the ODE needs many steps (EDM, Figure 2); with enough
    # steps the hit frequencies must still match the weights.
    data = make_data()
    net = OracleNet(data, None, WEIGHTS)
    kwargs = dict(solver='heun', discretization=schedule, schedule=schedule, scaling='vp' if schedule == 'vp' else 'none', num_steps=256)
    x = sampling.ablation_sampler(net, draw_prior(net, None, 500, 'ablation', **kwargs), **kwargs)
    sigma_min = float(sampling.ablation_sigma_steps(net, **{k: v for k, v in kwargs.items() if k in ('num_steps', 'discretization')})[0][-1])
    dist, index = nearest_points(x, data)
    assert dist.max() < sigma_min * math.sqrt(data[0].numel())
    counts = torch.bincount(index, minlength=len(data)).double()
    assert scipy.stats.chisquare(counts.numpy(), (WEIGHTS * len(x)).numpy()).pvalue > 1e-3

#----------------------------------------------------------------------------
# EDM's Algorithm 2, written out independently in plain Python floats.

def reference_algorithm_2(net, x0, randn_like, num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise):
    N = num_steps
    t = [(sigma_max ** (1 / rho) + i / (N - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho for i in range(N)] + [0.0]
    x = x0.to(torch.float64)
    for i in range(N):
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_min <= t[i] <= S_max else 0.0
        eps = randn_like(x) * S_noise
        t_hat = t[i] + gamma * t[i]
        x_hat = x + math.sqrt(t_hat ** 2 - t[i] ** 2) * eps
        d = (x_hat - net(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x_next - net(x_next, t[i + 1])) / t[i + 1]
            x_next = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


@pytest.mark.parametrize('kwargs', [
    dict(num_steps=18, sigma_min=0.002, sigma_max=80, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1),
    dict(num_steps=7, sigma_min=0.01, sigma_max=20, rho=3, S_churn=30, S_min=0.05, S_max=10, S_noise=1.007),
])
def test_edm_sampler_matches_algorithm_2(kwargs):
    net = OracleNet(make_data(), None, WEIGHTS)
    x0 = draw_prior(net, None, 16, sigma_max=kwargs['sigma_max'])
    results = []
    for fn in (sampling.edm_sampler, reference_algorithm_2):
        gen = torch.Generator().manual_seed(9)
        randn_like = lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if fn is sampling.edm_sampler:
            results.append(fn(net, x0, randn_like=randn_like, **kwargs))
        else:
            results.append(fn(net, x0, randn_like, **kwargs))
    assert results[0].dtype == torch.float64
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-9)


def test_ablation_sampler_with_edm_settings_equals_edm_sampler():
    # Heun, EDM discretization, sigma(t) = t, s(t) = 1 is Algorithm 2 again.
    net = OracleNet(make_data(), 16, WEIGHTS)
    x0 = draw_prior(net, 16, 8)
    a = sampling.edm_sampler(net, x0, num_steps=10)
    b = sampling.ablation_sampler(net, x0, num_steps=10, solver='heun', discretization='edm', schedule='linear', scaling='none')
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

#----------------------------------------------------------------------------
# Noise levels, the starting level, noise injection, callbacks and bad input.

def test_edm_sigma_steps_equation_5():
    steps = sampling.edm_sigma_steps(5, 0.002, 80, 7)
    assert steps.dtype == torch.float64 and float(steps[0]) == pytest.approx(80) and float(steps[-1]) == pytest.approx(0.002)
    assert bool((steps[1:] < steps[:-1]).all())
    i = 2
    assert float(steps[i]) == pytest.approx((80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7)


def test_first_sigma_clamps_to_the_network():
    data = make_data()
    assert sampling.first_sigma(OracleNet(data)) == 80
    assert sampling.first_sigma(OracleNet(data, sigma_max=50)) == 50
    assert sampling.first_sigma(OracleNet(data), sigma_max=30) == 30
    assert sampling.first_sigma(OracleNet(data), 'ablation', discretization='ve') == 100
    vp = sampling.first_sigma(OracleNet(data), 'ablation', discretization='vp')
    # The VP discretization's default range is the VP training schedule's: sigma(1) at the top and
    # sigma(epsilon_s) at the bottom, with VPLoss's and VPPrecond's beta_d and beta_min.
    from training.loss import VPLoss
    from training.networks import VPPrecond
    precond_defaults = inspect.signature(VPPrecond.__init__).parameters
    schedule = VPLoss()
    assert (schedule.beta_d, schedule.beta_min) == (precond_defaults['beta_d'].default, precond_defaults['beta_min'].default)
    assert vp == pytest.approx(float(schedule.sigma(torch.tensor(1.0, dtype=torch.float64))), rel=1e-12)
    steps, _, _ = sampling.ablation_sigma_steps(OracleNet(data), 5, discretization='vp', epsilon_s=1e-3)
    assert float(steps[-1]) == pytest.approx(float(schedule.sigma(torch.tensor(1e-3, dtype=torch.float64))), rel=1e-9)


@pytest.mark.parametrize('sampler,kwargs', [
    ('edm', dict(num_steps=7)),
    ('edm', dict(num_steps=5, sigma_min=0.01, sigma_max=200)),  # Clamped to the network's range below.
    ('ablation', dict(num_steps=6, solver='euler', discretization='vp', schedule='vp', scaling='vp')),
    ('ablation', dict(num_steps=6, discretization='iddpm')),
    ('restart', dict(num_steps=7, restart='2:1:0.5:1.5')),
    ('edm2', dict(num_steps=7, dtype='float32')),
    ('edm2', dict(num_steps=5, sigma_min=0.01, sigma_max=200, dtype='float64')),
])
def test_sigma_steps_are_the_levels_each_sampler_steps_from(sampler, kwargs):
    # The noise level at the start of each main step, as the sampler's callback reports it.
    net = OracleNet(make_data(), 16, WEIGHTS, sigma_min=0.005, sigma_max=100)
    net.round_sigma = lambda sigma: torch.round(torch.as_tensor(sigma, dtype=torch.float64) * 1e4) / 1e4  # A grid, as iDDPM's.
    levels = []
    fn = sampling.SAMPLERS[sampler].fn
    extra = dict(D=16) if sampler == 'restart' else {}
    latents = draw_prior(net, 16, 2, sampler, **kwargs)
    fn(net, latents, callback=lambda i, t, x: levels.append(float(t)), **extra, **kwargs)
    expected = sampling.sigma_steps(net, sampler, **kwargs)
    assert expected.dtype == torch.float64 and expected.shape == (kwargs['num_steps'],)
    torch.testing.assert_close(torch.tensor(levels[:-1], dtype=torch.float64), expected, rtol=1e-12, atol=0)
    assert float(expected[0]) == sampling.first_sigma(net, sampler, **kwargs)


def test_a_sampler_without_a_schedule_refuses_guidance_by_step(monkeypatch):
    monkeypatch.setitem(sampling.SAMPLERS, 'toy', sampling.SAMPLERS['edm']._replace(sigma_steps=None))
    with pytest.raises(ValueError, match='guide by noise level instead'):
        sampling.sigma_steps(OracleNet(make_data()), 'toy')


def test_alpha_injects_noise_scaled_by_sigma():
    net = OracleNet(make_data(), None, WEIGHTS)
    x0 = draw_prior(net, None, 4)
    seen = []
    gen = torch.Generator().manual_seed(0)
    randn_like = lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype)
    sampling.edm_sampler(net, x0, randn_like=randn_like, num_steps=3, alpha=0.5, callback=lambda i, t, x: seen.append((i, float(t), x)))
    gen.manual_seed(0)
    expected = x0 + 0.5 * 80 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    assert [i for i, _, _ in seen] == [0, 1, 2, 3] and seen[-1][1] == 0
    torch.testing.assert_close(seen[0][2], expected)
    # alpha = 0 draws nothing extra, so the deterministic sampler is unchanged.
    a = sampling.edm_sampler(net, x0, num_steps=3, alpha=0)
    b = sampling.edm_sampler(net, x0, num_steps=3)
    assert torch.equal(a, b)


@pytest.mark.parametrize('call,match', [
    (lambda net, x: sampling.ablation_sampler(net, x, solver='rk4'), 'solver'),
    (lambda net, x: sampling.ablation_sampler(net, x, discretization='cosine'), 'discretization'),
    (lambda net, x: sampling.ablation_sampler(net, x, schedule='cosine'), 'schedule'),
    (lambda net, x: sampling.ablation_sampler(net, x, scaling='ve'), 'scaling'),
    (lambda net, x: sampling.ablation_sampler(net, x, num_steps=1), 'num_steps'),
    (lambda net, x: sampling.edm_sampler(net, x, num_steps=0), 'num_steps'),
    (lambda net, x: sampling.edm_sampler(net, x, sigma_min=5, sigma_max=1), 'sigma_min < sigma_max'),
])
def test_bad_sampler_settings_raise(call, match):
    net = OracleNet(make_data())
    with pytest.raises(ValueError, match=match):
        call(net, torch.zeros([1, 2, 4, 4], dtype=torch.float64))

#----------------------------------------------------------------------------
# EDM2's sampler: Algorithm 2 as EDM2's generate_images.py runs it (tests/test_generate.py compares its
# images with EDM2's script written out).

def test_edm2_sampler_in_float64_is_edms_deterministic_sampler():
    net = OracleNet(make_data(), None, WEIGHTS)
    latents = draw_prior(net, None, 6, 'edm2', dtype='float64')
    ours = sampling.edm2_sampler(net, latents, num_steps=9, dtype='float64')
    assert ours.dtype == torch.float64 and torch.equal(ours, sampling.edm_sampler(net, latents, num_steps=9))


def test_edm2_sampler_runs_in_float32_from_its_float32_levels():
    net = OracleNet(make_data(), None, WEIGHTS)
    levels = sampling.edm2_sigma_steps(32, 0.002, 80, 7)
    assert levels.dtype == torch.float32 and sampling.first_sigma(net, 'edm2') == float(levels[0]) != 80.0
    seen = []
    x = sampling.edm2_sampler(net, draw_prior(net, None, 4, 'edm2'), num_steps=4, callback=lambda i, t, x: seen.append((t.dtype, x.dtype)))
    assert x.dtype == torch.float32 and set(seen) == {(torch.float32, torch.float32)} and len(seen) == 5
    name, settings = sampling.resolve_sampler(dict(dtype='float32'))
    assert name == 'edm2' and settings['num_steps'] == 18 and generation.nfe(dict(dtype='float32', num_steps=32)) == 63
    with pytest.raises(ValueError, match='Unknown sampler dtype'):
        sampling.sampler_settings(net, dict(dtype='float16'))
    with pytest.raises(ValueError, match="EDM2's sampler .* takes no alpha"):
        sampling.sampler_settings(net, dict(dtype='float32', alpha=0.1))


def test_edm2_sampler_draws_churn_noise_only_where_it_churns():
    # EDM's sampler draws at every step (gamma = 0 outside [S_min, S_max]); EDM2's only where it churns,
    # which is what keeps its per-seed streams, and so its images, apart from EDM's.
    net = OracleNet(make_data(), None, WEIGHTS)
    latents = draw_prior(net, None, 2, 'edm2')
    calls = []
    randn_like = lambda x: (calls.append(1), torch.zeros_like(x))[1]
    settings = dict(num_steps=10, S_churn=10, S_min=0.5, S_max=5)
    sampling.edm2_sampler(net, latents, randn_like=randn_like, **settings)
    churning = [t for t in sampling.edm2_sigma_steps(10, 0.002, 80, 7).tolist() if 0.5 <= t <= 5]
    assert len(calls) == len(churning) == 2
    calls.clear()
    sampling.edm_sampler(net, latents.double(), randn_like=randn_like, **settings)
    assert len(calls) == 10
    calls.clear()
    sampling.edm2_sampler(net, latents, randn_like=randn_like, num_steps=10)
    assert not calls

#----------------------------------------------------------------------------
# The registry: a sampler is one entry in sampling.SAMPLERS, and everything else follows from it.

def test_the_registry_gives_the_settings_and_defaults_of_the_built_in_samplers():
    assert set(sampling.sampler_keys()) >= {'num_steps', 'sigma_min', 'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise',
                                            'solver', 'discretization', 'schedule', 'scaling', 'alpha', 'restart', 'restart_gamma'}
    assert 'D' not in sampling.sampler_keys() and 'gamma_log_like' not in sampling.sampler_keys()  # Extra inputs, not settings.
    # The command line's defaults: the settings every sampler takes with the same default.
    assert generation.SAMPLER_DEFAULTS == dict(num_steps=18, rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1)
    assert generation.nfe(dict(num_steps=5)) == 9 and generation.nfe(dict(num_steps=5, solver='euler')) == 5
    assert generation.nfe(dict(num_steps=5, restart='3:2:0.5:2')) == 9 + 2 * 2 * 2



@pytest.mark.parametrize('kwargs,match', [
    (dict(restart='2:1:0.5:1.5', alpha=0), 'Restart sampling runs EDM.* takes no alpha'),  # Once a TypeError while sampling.
    (dict(restart_gamma=0.05), 'takes no restart_gamma; drop it, or give restart'),
    (dict(solver='euler', restart_gamma=0.05), 'ablation sampler .* takes no restart_gamma; drop it[.]$'),
    (dict(restart='2:1:0.5:1.5', solver='euler'), 'do not combine'),
    (dict(steps=3), 'Unknown sampler settings'),
])
def test_settings_the_chosen_sampler_does_not_take_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampling.sampler_settings(OracleNet(make_data()), kwargs)
    with pytest.raises(ValueError, match=match):
        generation.sample_batch(OracleNet(make_data()), [0], kwargs)


def test_a_sampler_registered_in_the_table_needs_no_other_change(monkeypatch):
    received = {}

    def toy_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=4, sigma_min=0.5,
                    sigma_max=30.0, toy_mode='plain', offsets=None, callback=None):
        received.update(latents=latents, offsets=offsets, num_steps=num_steps, toy_mode=toy_mode)
        return latents + offsets

    # Unlike any built-in sampler: its own start level, cost and per-seed draws, chosen by its own setting.
    monkeypatch.setitem(sampling.SAMPLERS, 'toy', sampling.SamplerSpec(
        toy_sampler, 'The toy sampler adds a per-seed offset', chosen_by=('toy_mode',),
        first_sigma=lambda net, settings: settings['sigma_max'] / 2,
        sigma_range=lambda net, settings: (settings['sigma_min'], settings['sigma_max']),
        nfe=lambda settings: 3 * settings['num_steps'],
        extra_inputs=dict(offsets=lambda net, rnd: rnd.randn([len(rnd.generators), 1, 1, 1], dtype=torch.float64)),
        presets=dict(toy_mode={'quick': dict(toy_mode='quick', num_steps=2)})))
    net = OracleNet(make_data(), 16, WEIGHTS)
    seeds = [3, 7, 11]

    # sample_batch: per seed the prior at the toy's first level, then its extra draw; then the toy.
    x = generation.sample_batch(net, seeds, dict(toy_mode='fast', num_steps=5, sigma_max=20))
    rnd = StackedRandomGenerator('cpu', seeds)
    latents = rnd.prior([2, 4, 4], 10.0, 16)
    offsets = rnd.randn([len(seeds), 1, 1, 1], dtype=torch.float64)
    assert torch.equal(received['latents'], latents) and torch.equal(received['offsets'], offsets)
    assert received['num_steps'] == 5 and received['toy_mode'] == 'fast' and torch.equal(x, latents + offsets)

    # The cost, the manifest's settings (defaults filled in, the range the spec reports) and presets.
    assert generation.nfe(dict(toy_mode='fast', num_steps=5)) == 15 and generation.nfe(dict(toy_mode='fast')) == 12
    manifest = provenance.make_manifest(net, seeds, dict(toy_mode='fast', sigma_min=None))
    assert manifest['sampler'] == dict(sampler='toy', num_steps=4, sigma_min=0.5, sigma_max=30.0, toy_mode='fast')
    assert list(manifest['sampler']) == ['sampler', 'num_steps', 'sigma_min', 'sigma_max', 'toy_mode']
    assert generation.sampler_kwargs_from(dict(toy_mode='quick', num_steps=18, guidance=2)) == dict(toy_mode='quick', num_steps=2)
    assert 'toy_mode' in sampling.sampler_keys() and sampling.first_sigma(net, 'toy') == 15.0

    # Its settings are its own: the built-in samplers' are refused, and it combines with no other sampler.
    with pytest.raises(ValueError, match='takes no S_churn'):
        generation.sample_batch(net, seeds, dict(toy_mode='fast', S_churn=1))
    with pytest.raises(ValueError, match='do not combine'):
        generation.nfe(dict(toy_mode='fast', solver='euler'))

#----------------------------------------------------------------------------
