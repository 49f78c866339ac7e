"""Pieces of training/training_loop.py: EMA, learning-rate ramp-up, gradient accumulation and
sanitisation, seeds, and the resume architecture check."""

import copy
import json
import math

import pytest
import torch

from torch_utils import training_stats
from training import checkpoint, networks, training_loop as tl


def test_ema_beta_follows_half_life_and_rampup():
    # Without ramp-up: after half-life / batch steps the old weights count for exactly one half.
    beta = tl.ema_beta(cur_nimg=10 ** 9, batch_size=512, ema_halflife_kimg=500, ema_rampup_ratio=None)
    assert math.isclose(beta ** (500_000 / 512), 0.5, rel_tol=1e-12)
    # With ramp-up at 100 kimg: half-life min(500 kimg, 0.05 * 100 kimg) = 5 kimg.
    beta = tl.ema_beta(cur_nimg=100_000, batch_size=512, ema_halflife_kimg=500, ema_rampup_ratio=0.05)
    assert math.isclose(beta, 0.5 ** (512 / 5000), rel_tol=1e-12)
    # At the start the EMA simply follows the network.
    assert tl.ema_beta(cur_nimg=0, batch_size=512, ema_halflife_kimg=500, ema_rampup_ratio=0.05) == 0.0


def test_update_ema_is_the_weighted_average():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ema = copy.deepcopy(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    tl.update_ema(ema, net, 0.9)
    for p_old, p_net, p_ema in zip(before, net.parameters(), ema.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p_net, rtol=1e-6, atol=1e-7)


def test_learning_rate_rampup():
    assert tl.learning_rate(1e-3, 0, 10) == 0
    assert math.isclose(tl.learning_rate(1e-3, 5000, 10), 5e-4)
    assert tl.learning_rate(1e-3, 20000, 10) == 1e-3
    assert tl.learning_rate(1e-3, 0, 0) == 0 and tl.learning_rate(1e-3, 1, 0) == 1e-3


def test_accumulation_equals_one_big_batch():
    # A deterministic loss: two rounds of 4 must give the gradient of one round of 8.
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh(), torch.nn.Linear(5, 12))
    images = torch.randn(8, 3, 2, 2)
    loss_fn = lambda net, y, labels, **kw: (net(y).reshape(y.shape) - y * 0.5) ** 2
    one = copy.deepcopy(net)
    tl.accumulate_gradients(one, loss_fn, [(images, None, {})], loss_scaling=1, batch_gpu_total=8)
    two = copy.deepcopy(net)
    stats = training_stats.Collector()
    tl.accumulate_gradients(two, loss_fn, [(images[:4], None, {}), (images[4:], None, {})], loss_scaling=1,
                            batch_gpu_total=8, stats=stats)
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    # The statistics saw every element once.
    collected = stats.collect()
    assert collected['Loss/loss']['num'] == images.numel()
    assert math.isclose(collected['Loss/loss']['mean'], float(loss_fn(net, images, None).detach().mean()), rel_tol=1e-5)


def test_sanitize_gradients_counts_and_replaces():
    net = torch.nn.Linear(2, 2)
    net.weight.grad = torch.tensor([[float('nan'), 1.0], [float('inf'), -float('inf')]])
    net.bias.grad = torch.tensor([0.5, 2.0])
    assert int(tl.sanitize_gradients(net)) == 3
    assert torch.equal(net.weight.grad, torch.tensor([[0.0, 1.0], [1e5, -1e5]]))
    assert torch.equal(net.bias.grad, torch.tensor([0.5, 2.0]))


def test_training_stats_collector():
    stats = training_stats.Collector()
    stats.report('a', torch.tensor([1.0, 2.0, 3.0]))
    stats.report('a', torch.tensor([4.0]))
    stats.report('b', 7)
    out = stats.collect(['a', 'b', 'c'])
    assert out['a'] == dict(num=4, mean=2.5, std=math.sqrt(1.25), nonfinite=0)
    assert out['b'] == dict(num=1, mean=7.0, std=0.0, nonfinite=0)
    assert out['c']['num'] == 0 and math.isnan(out['c']['mean']) and out['c']['nonfinite'] == 0
    assert stats.collect() == {}


def test_training_stats_keep_nonfinite_values():
    # As in EDM, a NaN or inf is not dropped: it makes the mean NaN or inf, and it is counted.
    stats = training_stats.Collector()
    stats.report('nan', torch.tensor([1.0, float('nan'), 3.0]))
    stats.report('inf', torch.tensor([1.0, float('inf')]))
    stats.report('inf', torch.tensor([2.0]))
    out = stats.collect()
    assert out['nan']['num'] == 3 and math.isnan(out['nan']['mean']) and math.isnan(out['nan']['std']) and out['nan']['nonfinite'] == 1
    assert out['inf']['num'] == 3 and out['inf']['mean'] == float('inf') and math.isnan(out['inf']['std']) and out['inf']['nonfinite'] == 1


def test_json_safe_writes_strict_json():
    record = dict(loss=dict(num=3, mean=float('nan'), std=float('-inf'), nonfinite=1), kimg=1.5, seq=[float('inf'), 2])
    text = json.dumps(training_stats.json_safe(record), allow_nan=False)

    def refuse(name):
        raise AssertionError(f'{name} in strict JSON')
    assert json.loads(text, parse_constant=refuse) == dict(loss=dict(num=3, mean=None, std=None, nonfinite=1), kimg=1.5, seq=[None, 2])


def test_the_loss_takes_D_from_the_network():
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=8, channel_mult=[1],
                              num_blocks=1, attn_resolutions=[], D=2048)
    assert tl.make_loss(dict(class_name='training.loss.EDMLoss'), net).D == 2048.0
    assert tl.make_loss(dict(class_name='training.loss.VPLoss', D=2048), net).D == 2048.0
    with pytest.raises(ValueError, match='D=128.*D=2048'):
        tl.make_loss(dict(class_name='training.loss.EDMLoss', D=128), net)
    with pytest.raises(ValueError, match='D=None.*D=2048'):
        tl.make_loss(dict(class_name='training.loss.EDMLoss', D=None), net)
