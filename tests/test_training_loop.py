"""Pieces of training/training_loop.py: EMA, learning-rate ramp-up and EDM2's schedule, gradient accumulation and
sanitisation, seeds, the resume architecture check, and the optimizer options (fused Adam on CUDA)."""

import copy
import json
import math
import os

import pytest
import torch

import dnnlib
from torch_utils import training_stats
from training import networks
from training import training_loop as tl
from training.loss import EDMLoss

from helpers import random_net


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


def test_edm2_learning_rate_schedule_is_edm2s():
    # EDM2's own values (tests/fixtures/edm2_networks/manifest.json): equal to the last bit (required: 1e-12 relative).
    with open(os.path.join(os.path.dirname(__file__), 'fixtures', 'edm2_networks', 'manifest.json')) as f:
        cases = json.load(f)['learning_rate_schedule']
    for case in cases:
        lr = tl.learning_rate_schedule(case['cur_nimg'], case['batch_size'], case['ref_lr'], case['ref_batches'], case['rampup_Mimg'])
        assert lr == case['lr'], case
    # The law: warm-up to ref_lr over rampup_Mimg, then ref_lr / sqrt(t / t_ref) after t_ref steps.
    assert tl.learning_rate_schedule(5_000_000, 2048, 0.01, 70000, 10) == 0.005
    assert math.isclose(tl.learning_rate_schedule(4 * 70000 * 2048, 2048, 0.01, 70000, 10), 0.005, rel_tol=1e-15)


def test_the_training_loop_follows_the_recipes_schedule():
    # lr_kwargs names EDM2's schedule; without it, EDM's warm-up of the optimizer's lr.
    c = dnnlib.EasyDict(optimizer_kwargs=dict(lr=2e-3), lr_rampup_kimg=1, batch_size=64, lr_kwargs=None)
    training = tl.Training.__new__(tl.Training)
    training.c, training.cur_nimg = c, 500
    assert training.learning_rate() == tl.learning_rate(2e-3, 500, 1) == 1e-3
    c.lr_kwargs = dict(func_name='training.training_loop.learning_rate_schedule', ref_lr=0.01, ref_batches=4, rampup_Mimg=0)
    training.cur_nimg = 64 * 16
    assert training.learning_rate() == 0.005


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

#----------------------------------------------------------------------------
# Optimizer options: Adam's fused kernel on CUDA.

ADAM = dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8)


def test_optimizer_options_fuse_adam_only_on_cuda():
    cuda, cpu = torch.device('cuda'), torch.device('cpu')
    assert tl.optimizer_options(ADAM, cuda) == dict(ADAM, fused=True)
    assert tl.optimizer_options(dict(ADAM, class_name='torch.optim.AdamW'), cuda)['fused'] is True
    assert tl.optimizer_options(ADAM, cpu) == ADAM
    assert tl.optimizer_options(dict(ADAM, class_name='torch.optim.SGD'), cuda) == dict(ADAM, class_name='torch.optim.SGD')
    for chosen in (dict(foreach=False), dict(fused=False)):  # An explicit choice is kept.
        assert tl.optimizer_options(dict(ADAM, **chosen), cuda) == dict(ADAM, **chosen)
    assert 'fused' not in ADAM  # Not changed in place.


@pytest.mark.cuda
def test_fused_adam_on_cuda_matches_unfused(record_property):
    # The optimizer training_loop() builds on CUDA is the fused kernel; fed the same gradients (of a
    # tiny network's EDMLoss) for 20 steps, it must match the single-tensor implementation: the
    # parameters within 1e-6 x max |p|, the summed updates and Adam's moments within 1e-5 relative
    # L2. The two differ only in the float32 rounding of each step; measured with the CPU's fused
    # kernel in place of CUDA's: 3.6e-8 x max |p|, 1.3e-7 and 1.7e-7.
    device = torch.device('cuda')
    reference = random_net().train().requires_grad_(True).to(device)
    fused = copy.deepcopy(reference)
    start = flat(reference.parameters())
    opt_ref = torch.optim.Adam(reference.parameters(), lr=ADAM['lr'], betas=ADAM['betas'], eps=ADAM['eps'], foreach=False)
    opt_fused = dnnlib.construct_class_by_name(params=fused.parameters(), **tl.optimizer_options(ADAM, device))
    assert opt_fused.defaults['fused'] is True
    images = (torch.rand([8, 3, 8, 8], generator=torch.Generator().manual_seed(3)) * 2 - 1).to(device)
    generator, loss_fn = torch.Generator().manual_seed(5), EDMLoss(D=128)
    for _ in range(20):
        opt_ref.zero_grad(set_to_none=True)
        tl.accumulate_gradients(reference, loss_fn, [(images, None, {})], 1, images.shape[0], generator=generator)
        for p, q in zip(fused.parameters(), reference.parameters()):
            p.grad = q.grad.clone()
        opt_ref.step()
        opt_fused.step()
    a, b = flat(fused.parameters()), flat(reference.parameters())
    param_err = float((a - b).abs().max() / b.abs().max())
    update_err = float((a - b).norm() / (b - start).norm())
    moment_errs = []
    for key in ('exp_avg', 'exp_avg_sq'):
        ma = flat(opt_fused.state[p][key] for p in fused.parameters())
        mb = flat(opt_ref.state[p][key] for p in reference.parameters())
        moment_errs.append(float((ma - mb).norm() / mb.norm()))
    record_property('param_rel_max', param_err)
    record_property('update_rel_l2', update_err)
    record_property('moment_rel_l2', max(moment_errs))
    assert float((b - start).abs().max()) > 1e-3  # 20 steps moved the weights.
    assert param_err <= 1e-6 and update_err <= 1e-5 and max(moment_errs) <= 1e-5, (param_err, update_err, moment_errs)


def flat(tensors) -> torch.Tensor:
    """The tensors flattened into one float64 CPU vector."""
    return torch.cat([t.detach().flatten().double().cpu() for t in tensors])
