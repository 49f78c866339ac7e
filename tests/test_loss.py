"""Training losses (training/loss.py): p(sigma), weights, the D=None path against EDM's recipe, the
PFGM++ noise plumbing, and learning on a toy set."""

import json
import math
import os

import numpy as np
import pytest
import scipy.stats
import torch

from training import loss as losses


class RecordingNet(torch.nn.Module):
    """Returns x scaled by a fixed factor and remembers what it was called with."""

    def __init__(self, factor=0.5):
        super().__init__()
        self.factor = factor

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        self.x, self.sigma, self.class_labels, self.augment_labels = x, sigma, class_labels, augment_labels
        return x * self.factor


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


LOSSES = [losses.VPLoss, losses.VELoss, losses.EDMLoss]

#----------------------------------------------------------------------------

@pytest.mark.parametrize('cls', LOSSES)
@pytest.mark.parametrize('D', [None, 64.0])
def test_shape_and_weight(cls, D):
    images = torch.randn([6, 3, 8, 8], generator=gen(1))
    net = RecordingNet()
    loss_fn = cls(D=D)
    out = loss_fn(net, images, generator=gen(2))
    assert out.shape == images.shape
    sigma = net.sigma.reshape(-1, 1, 1, 1)
    assert net.sigma.shape == (6, 1, 1, 1)
    # The weight, written out independently from EDM's Table 1.
    if cls is losses.EDMLoss:
        weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    else:
        weight = 1 / sigma ** 2
    expected = weight * (net.x * 0.5 - images) ** 2
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)


def test_edm_path_is_edm_recipe():
    # EDM's draw order with torch's global RNG: rnd_normal [B,1,1,1], then noise randn_like(y).
    images = torch.randn([4, 3, 8, 8], generator=gen(3))
    net = RecordingNet(0.3)
    torch.manual_seed(123)
    ours = losses.EDMLoss()(net, images)
    torch.manual_seed(123)
    rnd_normal = torch.randn([4, 1, 1, 1])
    sigma = (rnd_normal * 1.2 - 1.2).exp()
    weight = (sigma ** 2 + 0.5 ** 2) / (sigma * 0.5) ** 2
    n = torch.randn_like(images) * sigma
    ref = weight * ((images + n) * 0.3 - images) ** 2
    assert torch.equal(ours, ref)


@pytest.mark.parametrize('cls', LOSSES)
def test_sigma_distributions(cls):
    loss_fn = cls()
    sigma = loss_fn.sample_sigma(5000, torch.device('cpu'), gen(4)).double().numpy()
    if cls is losses.EDMLoss:
        law = scipy.stats.norm(-1.2, 1.2)
        stat = np.log(sigma)
    elif cls is losses.VELoss:
        law = scipy.stats.uniform(math.log(0.02), math.log(100) - math.log(0.02))
        stat = np.log(sigma)
    else:
        # Invert sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1): t ~ U(epsilon_t, 1).
        c = np.log1p(sigma ** 2)
        stat = (-0.1 + np.sqrt(0.1 ** 2 + 2 * 19.9 * c)) / 19.9
        law = scipy.stats.uniform(1e-5, 1 - 1e-5)
    assert scipy.stats.kstest(stat, law.cdf).pvalue > 1e-3


@pytest.mark.parametrize('D', [3.0, 512.0])
def test_noise_comes_from_the_kernel(D):
    # The noise the net sees, x - y, must follow the kernel at each sample's own sigma.
    images = torch.zeros([3000, 1, 4, 4])
    net = RecordingNet()
    losses.EDMLoss(D=D)(net, images, generator=gen(5))
    N = 16
    n = net.x.double().reshape(3000, -1)
    sigma = net.sigma.double().reshape(-1)
    ratio = (n.square().sum(1) / (sigma ** 2 * D)).numpy()
    assert scipy.stats.kstest(ratio, scipy.stats.betaprime(N / 2, D / 2).cdf).pvalue > 1e-3


def test_generator_reproducible_and_labels_passed():
    images = torch.randn([4, 3, 8, 8], generator=gen(6))
    labels = torch.eye(10)[:4]
    net = RecordingNet()
    a = losses.VELoss(D=10.0)(net, images, labels, generator=gen(7))
    assert torch.equal(net.class_labels, labels)
    b = losses.VELoss(D=10.0)(net, images, labels, generator=gen(7))
    assert torch.equal(a, b)


def test_augment_pipe_output_is_the_target():
    images = torch.randn([2, 3, 8, 8], generator=gen(8))
    aug_labels = torch.randn([2, 9], generator=gen(9))
    pipe = lambda x, generator=None: (x.flip(3), aug_labels)
    net = RecordingNet(0.0)
    out = losses.EDMLoss()(net, images, augment_pipe=pipe, generator=gen(10))
    assert torch.equal(net.augment_labels, aug_labels)
    sigma = net.sigma
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(out, weight * images.flip(3) ** 2)


def test_bad_input():
    with pytest.raises(ValueError, match='D must'):
        losses.EDMLoss(D=0)
    with pytest.raises(ValueError, match='D must'):
        losses.VPLoss(D=-3.0)
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        losses.EDMLoss()(RecordingNet(), torch.zeros(3, 8, 8))

#----------------------------------------------------------------------------

@pytest.mark.parametrize('D', [None, 128.0])
def test_tiny_network_learns_toy_set(D):
    from training.networks import EDMPrecond
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=8,
                     channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0, D=D)
    # Two structured 8x8 images: a bar and a checkerboard, in [-1, 1].
    bar = -torch.ones(1, 8, 8)
    bar[:, :, 3:5] = 1
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    images = torch.stack([bar, checker[None]]).repeat(4, 1, 1, 1)
    loss_fn = losses.EDMLoss(D=D)

    def evaluate():
        with torch.no_grad():
            return float(loss_fn(net, images.repeat(16, 1, 1, 1), generator=gen(99)).mean())
    before = evaluate()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = gen(11)
    for _ in range(150):
        opt.zero_grad()
        loss_fn(net, images, generator=g).mean().backward()
        opt.step()
    after = evaluate()
    assert after < 0.5 * before, (before, after)


def posterior_mean(x, sigma, points, D):
    """E[y | x] over the equally likely `points` [K, ...] under the PFGM++ kernel, written out
    directly: the log kernel of every (x, y_k) pair from explicit differences, then a softmax."""
    xf = x.double().reshape(len(x), 1, -1)
    yf = points.double().reshape(1, len(points), -1)
    N = xf.shape[-1]
    dist2 = ((xf - yf) ** 2).sum(-1)                                     # [B, K]
    sigma = sigma.double().reshape(-1, 1)
    if D is None:
        log_kernel = -dist2 / (2 * sigma ** 2)                           # Gaussian, D -> infinity.
    else:
        log_kernel = -(N + D) / 2 * torch.log(dist2 + sigma ** 2 * D)    # Equation 4 with r = sigma sqrt(D).
    w = torch.exp(log_kernel - log_kernel.max(dim=1, keepdim=True).values)
    w = w / w.sum(dim=1, keepdim=True)
    return (w[:, :, None] * yf).sum(1).reshape(x.shape)


class FlipPipe:
    """An augmentation with one random bit per image from the generator (flip left-right if 1);
    records every call: (input, generator, output)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, generator=None):
        bits = torch.randint(2, [len(x)], generator=generator)
        out = torch.where(bits.bool()[:, None, None, None], x.flip(3), x)
        self.calls.append((x.clone(), generator, out))
        return out, bits.float()[:, None]


@pytest.mark.parametrize('D', [None, 32.0])
def test_stable_target_field(D):
    # The target is the exact posterior mean over {batch} + reference, evaluated at the noisy input.
    images = torch.randn([3, 1, 4, 4], generator=gen(20))
    reference = torch.randn([5, 1, 4, 4], generator=gen(21))
    net = RecordingNet(0.0)
    out = losses.VELoss(D=D)(net, images, generator=gen(22), reference_images=reference)
    target = posterior_mean(net.x, net.sigma, torch.cat([images, reference]), D)
    torch.testing.assert_close(out, (1 / net.sigma ** 2) * target.float() ** 2, rtol=1e-5, atol=0)
    # The seeds give a target that is no single image: the law is really exercised.
    assert float((target.float() - images).abs().amax()) > 0.1
    # At a tiny sigma the posterior sits on the sample itself: STF reduces to plain denoising.
    out = losses.VELoss(sigma_min=1e-3, sigma_max=1.0001e-3, D=D)(net, images, generator=gen(23), reference_images=reference)
    torch.testing.assert_close(out, (1 / net.sigma ** 2) * images ** 2)


@pytest.mark.parametrize('D', [None, 32.0])
def test_stable_target_field_with_augmentation(D):
    # Reference set = the batch's augmented images + every other reference augmented with its own
    # draw from the loss's generator; the target is the posterior mean over that set.
    images = torch.randn([3, 1, 4, 4], generator=gen(24))
    reference = torch.randn([8, 1, 4, 4], generator=gen(25))
    net, pipe, g = RecordingNet(0.0), FlipPipe(), gen(26)
    out = losses.VELoss(D=D)(net, images, generator=g, augment_pipe=pipe, reference_images=reference)
    assert len(pipe.calls) == 2
    (batch_in, batch_gen, y), (ref_in, ref_gen, ref_aug) = pipe.calls
    assert torch.equal(batch_in, images) and torch.equal(ref_in, reference) and batch_gen is g and ref_gen is g
    assert not torch.equal(ref_aug, reference) and not torch.equal(ref_aug, reference.flip(3))  # Per-image draws.
    target = posterior_mean(net.x, net.sigma, torch.cat([y, ref_aug]), D)
    torch.testing.assert_close(out, (1 / net.sigma ** 2) * target.float() ** 2, rtol=1e-5, atol=0)
    # The references are augmented after the noise is drawn, so the batch's draws (sigma,
    # augmentation, noise) are those of the same step without STF.
    plain_net = RecordingNet(0.0)
    losses.VELoss(D=D)(plain_net, images, generator=gen(26), augment_pipe=FlipPipe())
    assert torch.equal(plain_net.x, net.x) and torch.equal(plain_net.sigma, net.sigma)
    # Reproducible from the generator's seed.
    again = losses.VELoss(D=D)(RecordingNet(0.0), images, generator=gen(26), augment_pipe=FlipPipe(), reference_images=reference)
    assert torch.equal(again, out)


def test_sigma_scale_multiplies_the_training_sigmas():
    images = torch.zeros([4000, 1, 2, 2])
    net = RecordingNet()
    losses.EDMLoss(sigma_scale=4.75)(net, images, generator=gen(30))
    log_sigma = net.sigma.double().log().reshape(-1).numpy()
    assert scipy.stats.kstest(log_sigma, scipy.stats.norm(-1.2 + math.log(4.75), 1.2).cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match='sigma_scale'):
        losses.VELoss(sigma_scale=0)

#----------------------------------------------------------------------------
# EDM2's loss: the learned uncertainty (Equation 21 of EDM2), EDM2's own numbers, and the PFGM++ noise.

EDM2_FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'edm2_networks')


class UncertainNet(RecordingNet):
    """RecordingNet with an uncertainty head u(sigma) = log(sigma) / 2 (return_logvar=True, as EDM2's)."""

    def forward(self, x, sigma, class_labels=None, return_logvar=False):
        D_x = super().forward(x, sigma, class_labels)
        return (D_x, torch.as_tensor(sigma).reshape(-1, 1, 1, 1).log() / 2) if return_logvar else D_x


@pytest.mark.parametrize('name', ['edm2_uncond16', 'edm2_cond16_latent'])
def test_edm2_loss_matches_edm2(name, monkeypatch):
    # EDM2's draws (rnd_normal, then noise = randn * sigma) are the fixture's; EDM2's network in eval mode.
    # Measured on CPU: 1.3e-5 and 3.2e-5 from EDM2's per-element loss (relative to 1 + |loss|).
    from training.networks_edm2 import EDM2Precond
    with open(os.path.join(EDM2_FIXTURES, 'manifest.json')) as f:
        case = json.load(f)[name]
    net = EDM2Precond(**case['precond_kwargs'], use_fp16=False).eval()
    weights = np.load(os.path.join(EDM2_FIXTURES, f'{name}.weights.npz'))
    net.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    io = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(EDM2_FIXTURES, f'{name}.io.npz')).items()}
    loss_fn = losses.EDM2Loss(**case['loss_kwargs'])
    sigma = (io['loss_rnd_normal'] * loss_fn.P_std + loss_fn.P_mean).exp()
    monkeypatch.setattr(loss_fn, 'sample_sigma', lambda batch, device, generator=None: sigma.reshape(-1))
    monkeypatch.setattr(losses.pfgmpp, 'sample_noise', lambda shape, s, **kwargs: io['loss_noise'] * s)
    with torch.no_grad():
        ours = loss_fn(net, io['loss_images'], io.get('class_labels'))
    assert float(((ours - io['loss']).abs() / (1 + io['loss'].abs())).max()) <= 1e-4


@pytest.mark.parametrize('D', [None, 64.0])
def test_edm2_loss_is_uncertainty_weighted(D):
    images = torch.randn([6, 3, 8, 8], generator=gen(40))
    net = UncertainNet(0.5)
    out = losses.EDM2Loss(D=D)(net, images, generator=gen(41))
    sigma = net.sigma.reshape(-1, 1, 1, 1)
    logvar = sigma.log() / 2
    weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(out, weight / logvar.exp() * (net.x * 0.5 - images) ** 2 + logvar, rtol=1e-6, atol=1e-7)
    # EDM2's sigma distribution: ln sigma ~ N(-0.4, 1.0^2), drawn before the noise (EDMLoss's order).
    big = torch.zeros([4000, 1, 2, 2])
    losses.EDM2Loss(D=D)(net, big, generator=gen(42))
    assert scipy.stats.kstest(net.sigma.double().log().reshape(-1).numpy(), scipy.stats.norm(-0.4, 1.0).cdf).pvalue > 1e-3


@pytest.mark.parametrize('D', [3.0, 512.0])
def test_edm2_loss_noise_comes_from_the_kernel(D):
    # With finite D the noise is the PFGM++ kernel's at the drawn sigma (r = sigma sqrt(D)), as for the other losses.
    net = UncertainNet()
    losses.EDM2Loss(D=D)(net, torch.zeros([3000, 1, 4, 4]), generator=gen(43))
    ratio = (net.x.double().reshape(3000, -1).square().sum(1) / (net.sigma.double().reshape(-1) ** 2 * D)).numpy()
    assert scipy.stats.kstest(ratio, scipy.stats.betaprime(16 / 2, D / 2).cdf).pvalue > 1e-3
    # The same draws as EDMLoss (same P_mean / P_std): only the per-element formula differs.
    a, b = UncertainNet(), RecordingNet()
    losses.EDM2Loss(P_mean=-1.2, P_std=1.2, D=D)(a, torch.ones([4, 3, 4, 4]), generator=gen(44))
    losses.EDMLoss(D=D)(b, torch.ones([4, 3, 4, 4]), generator=gen(44))
    assert torch.equal(a.x, b.x) and torch.equal(a.sigma, b.sigma)


def test_edm2_loss_refuses_augmentation_labels():
    pipe = lambda images, generator=None: (images, torch.zeros([len(images), 9]))
    with pytest.raises(ValueError, match='augmentation'):
        losses.EDM2Loss()(UncertainNet(), torch.zeros([2, 3, 4, 4]), augment_pipe=pipe, generator=gen(45))
