"""training/guidance.py: classifier-free guidance, autoguidance and the guidance interval, with the
exact denoisers of a small labelled data set as the network (per class and over all classes)."""

import math

import pytest
import torch

from sampling import guidance
from sampling import samplers as sampling
from torch_utils import rng
from training import pfgmpp

from helpers import OracleNet, check_lands_on_data, make_data, nearest_points, one_sentence, trajectory

#----------------------------------------------------------------------------
# An exact labelled "network".

class LabelledOracle:
    """net(x, sigma, class_labels): for a one-hot label c the exact denoiser of the points weighted by
    class_weights[c] (p(y | c)); for a zero label (or none) the exact denoiser of p(y) = the mean of
    the rows, the unconditional one (what a network trained with label dropout learns for zeros).
    Records the batch size of every call."""

    def __init__(self, data, class_weights, D=None, sigma_min=0.0, sigma_max=float('inf')):
        self.data, self.D, self.class_weights = data, D, class_weights
        self.img_channels, self.img_resolution = data.shape[1], data.shape[2]
        self.label_dim = class_weights.shape[0]
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.batch_sizes = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None):
        batch = x.shape[0]
        self.batch_sizes.append(batch)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        if class_labels is None:
            labels = torch.zeros([batch, self.label_dim], dtype=torch.float64)
        else:
            labels = class_labels.to(torch.float64).reshape(-1, self.label_dim).expand(batch, -1)
        weights = labels @ self.class_weights
        weights[labels.sum(1) == 0] = self.class_weights.mean(0)
        out = torch.empty_like(x)
        for row in torch.unique(weights, dim=0):
            rows = (weights == row).all(1)
            out[rows] = pfgmpp.ideal_denoiser(x[rows], sigma[rows], self.data, self.D, row)
        return out


# Points A, B, C; class 0 = {A, B}, class 1 = {B, C}, so B is shared and conditional sampling of class
# 0 (w = 1) lands on A only half of the time: p(A | c=0) = 0.5, p(y) = (0.25, 0.5, 0.25).
CLASS_WEIGHTS = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)


def check_lands_on_support(x, data, weights):
    """check_lands_on_data where some weights are 0: no sample on those points, and the hit counts
    of the others consistent with their weights."""
    support = weights > 0
    dist, index = nearest_points(x, data)
    assert not bool(torch.isin(index, torch.nonzero(~support).flatten()).any()), 'samples landed on points of weight 0'
    check_lands_on_data(x, data[support], weights[support])


def one_hot(num, c, label_dim=2):
    labels = torch.zeros([num, label_dim], dtype=torch.float64)
    labels[:, c] = 1
    return labels


def draw(net, D, num, seed=1):
    return pfgmpp.sample_prior([num, net.img_channels, net.img_resolution, net.img_resolution], 80, D,
                               generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

#----------------------------------------------------------------------------
# Classifier-free guidance against the exact conditional and unconditional samplers.

@pytest.mark.parametrize('D', [None, 16])
def test_weight_one_is_conditional_sampling_to_the_bit(D):
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, D)
    x0, labels = draw(net, D, 500), one_hot(500, 0)
    plain = trajectory(sampling.edm_sampler, net, x0, labels)
    assert guidance.guided_network(net, 1.0) is net
    wrapped = trajectory(sampling.edm_sampler, guidance.GuidedDenoiser(net, 1.0), x0, labels)
    assert torch.equal(plain, wrapped)
    check_lands_on_support(plain[-1], net.data, CLASS_WEIGHTS[0])


@pytest.mark.parametrize('D', [None, 16])
def test_weight_zero_is_unconditional_sampling(D):
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, D)
    x0 = draw(net, D, 1000)
    guided = trajectory(sampling.edm_sampler, guidance.guided_network(net, 0.0), x0, one_hot(1000, 0))
    unconditional = trajectory(sampling.edm_sampler, net, x0, torch.zeros([1000, 2], dtype=torch.float64))
    torch.testing.assert_close(guided, unconditional, rtol=1e-12, atol=1e-12)
    check_lands_on_data(guided[-1], net.data, CLASS_WEIGHTS.mean(0))


@pytest.mark.parametrize('D', [None, 16])
def test_weight_above_one_puts_more_samples_on_the_class_own_points(D):
    # At w = 1 a sample of class 0 lands on A (class 0's own point) with probability 0.5 and on the
    # shared B otherwise; guidance sharpens towards the points where p(c | y) is high. Two-proportion
    # z-test at fixed seeds, one-sided, z > 4.
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, D)
    num = 1000
    x0, labels = draw(net, D, num), one_hot(num, 0)
    shares = {}
    for w in (1.0, 3.0):
        x = sampling.edm_sampler(guidance.guided_network(net, w), x0, labels)
        dist, index = nearest_points(x, net.data)
        assert float(dist.max()) < 1e-2 * math.sqrt(net.data[0].numel())  # On data points...
        assert not bool((index == 2).any())  # ... of class 0.
        shares[w] = float((index == 0).double().mean())
    pooled = (shares[1.0] + shares[3.0]) / 2
    z = (shares[3.0] - shares[1.0]) / math.sqrt(2 * pooled * (1 - pooled) / num)
    assert z > 4, f'share on A: w=1 {shares[1.0]:.3f}, w=3 {shares[3.0]:.3f} (z = {z:.1f})'
    assert abs(shares[1.0] - 0.5) < 4 * math.sqrt(0.25 / num)  # w = 1 is exact conditional sampling.


def test_classifier_free_guidance_is_one_batched_forward():
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS)
    guided = guidance.guided_network(net, 2.0)
    x = draw(net, None, 5)[:, :, :, :] * 0.01 + net.data[1]
    labels = one_hot(5, 0)
    out = guided(x, torch.tensor(1.3, dtype=torch.float64), labels)
    assert net.batch_sizes == [10]
    # The combination, from separate evaluations: D_u + w (D_c - D_u).
    d_c, d_u = net(x, 1.3, labels), net(x, 1.3, None)
    torch.testing.assert_close(out, d_u + 2.0 * (d_c - d_u), rtol=1e-12, atol=1e-12)
    # Per-sample sigmas and a single label row broadcast like the network's own inputs.
    sigma = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5], dtype=torch.float64)
    out = guided(x, sigma, labels[:1])
    d_c, d_u = net(x, sigma, labels), net(x, sigma, None)
    torch.testing.assert_close(out, d_u + 2.0 * (d_c - d_u), rtol=1e-12, atol=1e-12)


def test_counters_over_a_sampler_run():
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS)
    guided = guidance.GuidedDenoiser(net, 2.0, interval=(0.5, 5.0))
    sampling.edm_sampler(guided, draw(net, None, 4), one_hot(4, 1), num_steps=18)
    # The sampler's evaluations: t_i for i < 18 and t_{i+1} for i < 17 (EDM's 35).
    t = sampling.edm_sigma_steps(18, 0.002, 80).tolist()
    levels = t + t[1:]
    inside = sum(0.5 < s <= 5.0 for s in levels)
    assert guided.calls == 35 == len(net.batch_sizes) == guided.net_forwards
    assert guided.guided_calls == inside and guided.gnet_forwards == 0
    assert guided.evaluations == 35 + inside
    assert sorted(set(net.batch_sizes)) == [4, 8] and net.batch_sizes.count(8) == inside
    guided.reset_counts()
    assert (guided.calls, guided.guided_calls, guided.net_forwards, guided.evaluations) == (0, 0, 0, 0)

#----------------------------------------------------------------------------
# The guidance interval (sigma_lo, sigma_hi].

def test_outside_the_interval_it_is_the_main_network_alone():
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS)
    guided = guidance.GuidedDenoiser(net, 3.0, interval=(0.5, 2.0))
    x, labels = draw(net, None, 6) * 0.02, one_hot(6, 0)
    for sigma in (0.3, 0.5, 2.0001, 10.0):  # sigma_lo itself is outside.
        net.batch_sizes.clear()
        sigma = torch.tensor(sigma, dtype=torch.float64)
        assert torch.equal(guided(x, sigma, labels), net(x, sigma, labels))
        assert net.batch_sizes == [6, 6]  # One evaluation each: no unconditional one.
    for sigma in (0.5001, 1.0, 2.0):  # sigma_hi itself is inside.
        d_c, d_u = net(x, sigma, labels), net(x, sigma, None)
        torch.testing.assert_close(guided(x, torch.tensor(sigma, dtype=torch.float64), labels), d_u + 3.0 * (d_c - d_u), rtol=1e-12, atol=1e-12)
    # Per-sample sigmas on both sides: guided rows inside, the main network's rows outside.
    sigma = torch.tensor([0.3, 1.0, 3.0, 2.0, 0.5, 0.7], dtype=torch.float64)
    d_c, d_u = net(x, sigma, labels), net(x, sigma, None)
    inside = ((sigma > 0.5) & (sigma <= 2.0)).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(guided(x, sigma, labels), torch.where(inside, d_u + 3.0 * (d_c - d_u), d_c), rtol=1e-12, atol=1e-12)


def test_interval_changes_the_samples_only_through_the_interval():
    # An interval that holds no sampler level is unguided sampling to the bit; one that holds them
    # all is guidance everywhere.
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, 16)
    x0, labels = draw(net, 16, 50), one_hot(50, 0)
    plain = trajectory(sampling.edm_sampler, net, x0, labels, num_steps=8)
    none_inside = trajectory(sampling.edm_sampler, guidance.guided_network(net, 3.0, interval=(81, 100)), x0, labels, num_steps=8)
    assert torch.equal(plain, none_inside)
    everywhere = trajectory(sampling.edm_sampler, guidance.guided_network(net, 3.0), x0, labels, num_steps=8)
    all_inside = trajectory(sampling.edm_sampler, guidance.guided_network(net, 3.0, interval=(0, math.inf)), x0, labels, num_steps=8)
    assert torch.equal(everywhere, all_inside) and not torch.equal(plain, everywhere)

#----------------------------------------------------------------------------
# Autoguidance.

def test_autoguidance_with_the_main_network_as_guide_is_unguided():
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, 16)
    x0, labels = draw(net, 16, 200), one_hot(200, 1)
    plain = trajectory(sampling.edm_sampler, net, x0, labels, num_steps=10)
    guided = guidance.guided_network(net, 2.5, gnet=net)
    assert torch.equal(trajectory(sampling.edm_sampler, guided, x0, labels, num_steps=10), plain)
    assert guided.net_forwards == guided.gnet_forwards == guided.calls == 19


def test_autoguidance_combines_main_and_guide():
    # The guide: a "worse" model of the same data (its class weights blurred towards uniform).
    data = make_data(3)
    net = LabelledOracle(data, CLASS_WEIGHTS, 16)
    gnet = LabelledOracle(data, 0.5 * CLASS_WEIGHTS + 0.5 / 3, 16)
    guided = guidance.GuidedDenoiser(net, 2.0, gnet=gnet)
    x, labels = draw(net, 16, 5) * 0.02, one_hot(5, 0)
    expected = gnet(x, 0.8, labels) + 2.0 * (net(x, 0.8, labels) - gnet(x, 0.8, labels))
    torch.testing.assert_close(guided(x, torch.tensor(0.8, dtype=torch.float64), labels), expected, rtol=1e-12, atol=1e-12)
    assert (guided.net_forwards, guided.gnet_forwards) == (1, 1)
    # An unconditional guide gets no labels (EDM2's classifier-free guidance by a separate network).
    uncond = OracleNet(data, 16, CLASS_WEIGHTS.mean(0))
    guided = guidance.GuidedDenoiser(net, 2.0, gnet=uncond)
    expected = net(x, 0.8, None) + 2.0 * (net(x, 0.8, labels) - net(x, 0.8, None))
    torch.testing.assert_close(guided(x, torch.tensor(0.8, dtype=torch.float64), labels), expected, rtol=1e-12, atol=1e-12)
    assert uncond.seen_labels == [None]


def test_autoguidance_on_an_unconditional_network():
    data = make_data()
    net = OracleNet(data, None)
    gnet = OracleNet(data, None, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))
    guided = guidance.guided_network(net, 1.5, gnet=gnet)
    x = draw(net, None, 3) * 0.03
    expected = gnet(x, 1.0) + 1.5 * (net(x, 1.0) - gnet(x, 1.0))
    torch.testing.assert_close(guided(x, torch.tensor(1.0, dtype=torch.float64)), expected, rtol=1e-12, atol=1e-12)

#----------------------------------------------------------------------------
# Samplers see a network.

def test_attributes_are_forwarded():
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, 16, sigma_min=0.01, sigma_max=50)
    gnet = LabelledOracle(make_data(3), CLASS_WEIGHTS, 16, sigma_min=0.02, sigma_max=70)
    net.round_sigma = lambda sigma: torch.round(torch.as_tensor(sigma, dtype=torch.float64) * 10) / 10  # A grid, as iDDPM's.
    for guided, limits in [(guidance.GuidedDenoiser(net, 2.0), (0.01, 50)), (guidance.GuidedDenoiser(net, 2.0, gnet), (0.02, 50))]:
        assert (guided.img_resolution, guided.img_channels, guided.label_dim, guided.D) == (4, 2, 2, 16.0)
        assert (guided.sigma_min, guided.sigma_max) == limits
        assert sampling.first_sigma(guided) == 50
        assert float(guided.round_sigma(0.33)) == 0.3


@pytest.mark.parametrize('D', [16, None])
def test_guided_and_restart_samples_do_not_depend_on_the_batch(D):
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, D)
    seeds = [7, 0, 2, 11, 5]

    def run(batch_seeds):
        guided = guidance.guided_network(net, 2.0, interval=(0.2, 10))
        rnd = rng.StackedRandomGenerator('cpu', batch_seeds)
        latents = rnd.prior([2, 4, 4], sampling.first_sigma(guided), D)
        labels = torch.eye(2, dtype=torch.float64)[rnd.randint(2, size=[len(batch_seeds)])]
        return trajectory(sampling.restart_sampler, guided, latents, labels, randn_like=rnd.randn_like, gamma_log_like=rnd.gamma_log_like,
                          num_steps=10, restart='4:2:0.5:2.0', D=D, S_churn=5, S_min=0.05, S_max=10)

    whole = run(seeds)
    parts = torch.cat([run(seeds[:2]), run(seeds[2:3]), run(seeds[3:])], dim=1)
    torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)
    assert len({tuple(row.flatten().tolist()) for row in whole[5]}) == len(seeds)

#----------------------------------------------------------------------------
# Bad input: a ValueError of one sentence.

def bad_guides():
    data = make_data(3)
    net = LabelledOracle(data, CLASS_WEIGHTS, 16)
    three_classes = torch.cat([CLASS_WEIGHTS, torch.tensor([[1.0, 0, 0]], dtype=torch.float64)])
    return net, [
        (LabelledOracle(data, CLASS_WEIGHTS, 2048), 'D='),
        (LabelledOracle(data, CLASS_WEIGHTS, None), 'diffusion'),
        (LabelledOracle(data[:, :1], CLASS_WEIGHTS, 16), 'img_channels'),
        (LabelledOracle(data[:, :, :2, :2], CLASS_WEIGHTS, 16), 'img_resolution'),
        (LabelledOracle(data, three_classes, 16), 'label_dim'),
    ]


def test_bad_guides_raise():
    net, cases = bad_guides()
    for gnet, match in cases:
        for w in (1.0, 2.0):  # Checked even when the guide would not be used.
            with pytest.raises(ValueError, match=match) as err:
                guidance.guided_network(net, w, gnet=gnet)
            assert one_sentence(str(err.value)), str(err.value)
    # A conditional guide for an unconditional network.
    with pytest.raises(ValueError, match='label_dim'):
        guidance.guided_network(OracleNet(make_data(3), 16), 2.0, gnet=net)


@pytest.mark.parametrize('kwargs,match', [
    (dict(guidance=2.0), 'unconditional'),
    (dict(guidance=float('nan')), 'finite'),
    (dict(guidance=float('inf')), 'finite'),
    (dict(guidance=2.0, interval=(2.0, 1.0)), 'sigma_lo < sigma_hi'),
    (dict(guidance=2.0, interval=(-1.0, 1.0)), 'sigma_lo < sigma_hi'),
    (dict(guidance=2.0, interval=(math.nan, 1.0)), 'sigma_lo < sigma_hi'),
    (dict(guidance=2.0, interval=(1.0,)), 'two numbers'),
    (dict(guidance=2.0, interval='0.2-5'), 'two numbers'),
    (dict(guidance=2.0, interval='15'), 'two numbers'),
])
def test_bad_settings_raise(kwargs, match):
    uncond = OracleNet(make_data(3))
    net = uncond if match == 'unconditional' else LabelledOracle(make_data(3), CLASS_WEIGHTS)
    with pytest.raises(ValueError, match=match) as err:
        guidance.guided_network(net, **kwargs)
    assert one_sentence(str(err.value)), str(err.value)


def test_classifier_free_guidance_without_labels_raises():
    guided = guidance.guided_network(LabelledOracle(make_data(3), CLASS_WEIGHTS), 2.0)
    with pytest.raises(ValueError, match='class labels') as err:
        guided(torch.zeros([2, 2, 4, 4], dtype=torch.float64), torch.tensor(1.0), None)
    assert one_sentence(str(err.value))

#----------------------------------------------------------------------------
# Guidance by step index: the sampler's main steps first..last, mapped to its noise levels.

class StepLog(guidance.GuidedDenoiser):
    """A GuidedDenoiser that logs (main step, sigma, guided) for every call; the sampler's callback
    sets `step` at the start of each main step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step, self.log = None, []

    def __call__(self, x, sigma, class_labels=None):
        before = self.guided_calls
        out = super().__call__(x, sigma, class_labels)
        self.log.append((self.step, float(sigma), self.guided_calls > before))
        return out


def schedule_of(sampler_kwargs):
    """denoiser -> the main noise levels of the sampler sampler_kwargs choose (what generation passes)."""
    name, settings = sampling.resolve_sampler(sampler_kwargs)
    return lambda denoiser: sampling.sigma_steps(denoiser, name, **settings)


def run_logged(net, sampler_kwargs, **guide):
    name, settings = sampling.resolve_sampler(sampler_kwargs)
    guided = StepLog(net, 3.0, sigma_steps=schedule_of(sampler_kwargs), **guide)
    rnd = rng.StackedRandomGenerator('cpu', [0, 1, 2])
    latents = rnd.prior([2, 4, 4], sampling.first_sigma(guided, name, **settings), 16)
    extra = dict(D=16, gamma_log_like=rnd.gamma_log_like) if name == 'restart' else {}
    x = sampling.SAMPLERS[name].fn(guided, latents, one_hot(3, 0), randn_like=rnd.randn_like, **settings, **extra,
                                   callback=lambda i, t, x: setattr(guided, 'step', i))
    return guided, x


@pytest.mark.parametrize('sampler_kwargs', [
    dict(num_steps=8),
    dict(num_steps=8, solver='euler', discretization='vp', schedule='vp', scaling='vp'),  # sigma(t(sigma)) is not exact.
    dict(num_steps=8, restart='3:2:0.3:1.2'),
])
def test_guidance_steps_guide_those_steps_and_their_noise_levels(sampler_kwargs):
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, 16)
    guided, _ = run_logged(net, sampler_kwargs, steps=(2, 5))
    levels = torch.log(schedule_of(sampler_kwargs)(guided))
    first_calls = {}
    for step, sigma, guided_call in guided.log:
        first_calls.setdefault(step, guided_call)
        nearest = int(torch.argmin((levels - math.log(sigma)).abs()))
        assert guided_call == (2 <= nearest <= 5), (step, sigma)  # Every evaluation goes with its nearest main level ...
    assert first_calls == {i: 2 <= i <= 5 for i in range(8)}  # ... and each step's own evaluation with the step.


@pytest.mark.parametrize('sampler_kwargs', [dict(num_steps=8), dict(num_steps=8, restart='3:2:0.3:1.2')])
def test_guidance_steps_equal_the_noise_interval_of_the_same_levels(sampler_kwargs):
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS, 16)
    by_steps, x_steps = run_logged(net, sampler_kwargs, steps=(1, 4))
    t = schedule_of(sampler_kwargs)(net)
    by_sigma, x_sigma = run_logged(net, sampler_kwargs, interval=(float(t[5]), float(t[1])))
    assert torch.equal(x_steps, x_sigma) and by_steps.guided_calls == by_sigma.guided_calls > 0
    # Every step is every noise level; the first step through the last, all of them.
    everywhere = run_logged(net, sampler_kwargs, steps=(0, 7))[1]
    assert torch.equal(everywhere, run_logged(net, sampler_kwargs)[1])
    assert guidance.steps_interval(t, (0, 7)) == (0.0, math.inf)


def test_steps_interval_borders_lie_between_levels():
    levels = torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    assert guidance.steps_interval(levels, (1, 2)) == pytest.approx((math.sqrt(2), math.sqrt(32)), rel=1e-15)
    assert guidance.steps_interval(levels, (0, 0)) == (pytest.approx(math.sqrt(32)), math.inf)
    assert guidance.steps_interval(levels, (3, 3)) == (0.0, pytest.approx(math.sqrt(2)))


@pytest.mark.parametrize('call,match', [
    (lambda: guidance.check_steps((2, 1)), 'first <= last'),
    (lambda: guidance.check_steps((-1, 2)), 'first <= last'),
    (lambda: guidance.check_steps((0.5, 2)), 'two step indices'),
    (lambda: guidance.check_steps('0,2'), 'two step indices'),
    (lambda: guidance.check_steps((0, 1, 2)), 'two step indices'),
    (lambda: guidance.check_steps((0, 4), 4), 'sampler has 4 steps'),
    (lambda: guidance.steps_interval(torch.tensor([2.0, 1.0, 1.0]), (1, 1)), 'do not decrease'),
    (lambda: guidance.GuidedDenoiser(LabelledOracle(make_data(3), CLASS_WEIGHTS), 2.0, interval=(0.1, 1), steps=(0, 1),
                                     sigma_steps=schedule_of({})), 'give one of them'),
    (lambda: guidance.GuidedDenoiser(LabelledOracle(make_data(3), CLASS_WEIGHTS), 2.0, steps=(0, 1)), 'noise levels'),
    (lambda: guidance.guided_network(LabelledOracle(make_data(3), CLASS_WEIGHTS), 1.0, steps=(0, 18),
                                     sigma_steps=schedule_of({})), 'sampler has 18 steps'),  # Checked at weight 1 too.
])
def test_bad_guidance_steps_raise(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert one_sentence(str(err.value)), str(err.value)

#----------------------------------------------------------------------------
# Networks trained without label dropout.

@pytest.mark.parametrize('options,kwargs,warns', [
    (dict(cond_drop=0.0), dict(guidance=2.0), True),
    (dict(cond_drop=0), dict(guidance=0.5), True),
    (dict(cond_drop=0.1), dict(guidance=2.0), False),
    (dict(cond_drop=0.0), dict(guidance=1.0), False),
    (dict(cond_drop=0.0), dict(guidance=2.0, gnet='a guide'), False),
    (None, dict(guidance=2.0), False),                 # Unknown: a legacy file.
    ({}, dict(guidance=2.0), False),                   # Options without cond_drop (older runs): unknown too.
    (dict(cond_drop='0.1'), dict(guidance=2.0), False),
])
def test_untrained_unconditional_branch_is_warned_about(options, kwargs, warns):
    net = LabelledOracle(make_data(3), CLASS_WEIGHTS)
    message = guidance.untrained_unconditional(net, options, **kwargs)
    assert (message is not None) == warns
    if warns:
        assert message.startswith('Warning:') and one_sentence(message), message
    assert guidance.untrained_unconditional(OracleNet(make_data(3)), options, **kwargs) is None  # Unconditional networks.

#----------------------------------------------------------------------------
