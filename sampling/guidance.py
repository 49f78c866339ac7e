"""Guidance: classifier-free guidance (Ho & Salimans, 2022), autoguidance (Karras et al., NeurIPS 2024)
and the guidance interval (Kynkaanniemi et al., NeurIPS 2024). All three change only the denoiser the
sampler calls, never the sampler or the prior (so they are D-independent): guided_network() returns a
wrapper that behaves as a network (net(x, sigma, class_labels), round_sigma(), sigma_min, sigma_max,
img_resolution, img_channels, label_dim, D). Wrap networks already prepared for sampling
(torch_utils.precision.prepare_network): the wrapper is not a torch.nn.Module.
"""

import math
from typing import Optional

import torch

__all__ = ['GuidedDenoiser', 'guided_network', 'check_guide', 'check_interval']

#----------------------------------------------------------------------------
# Argument checks.

def check_guide(net, gnet) -> None:
    """ValueError unless gnet can guide net: the same image shape, channel count and D, and the same
    label_dim or an unconditional guide (label_dim 0, which gets no labels, as EDM2's
    classifier-free guidance presets use one)."""
    for name in ('img_resolution', 'img_channels'):
        if getattr(gnet, name) != getattr(net, name):
            raise ValueError(f'The guide network has {name}={getattr(gnet, name)}, the main network {getattr(net, name)}; '
                             f'a guide must produce images of the same shape.')
    D, gD = getattr(net, 'D', None), getattr(gnet, 'D', None)
    if D != gD:
        describe = lambda d: 'diffusion (D=None)' if d is None else f'D={d:g}'
        raise ValueError(f'The guide network is trained for {describe(gD)}, the main network for {describe(D)}; '
                         f'guide with a network of the same D.')
    if gnet.label_dim and gnet.label_dim != net.label_dim:
        raise ValueError(f'The guide network has label_dim={gnet.label_dim}, the main network {net.label_dim}; '
                         f'a guide must take the same class labels or be unconditional.')


def check_interval(interval: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
    """(sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi (sigma_hi may be inf), or None (everywhere)."""
    if interval is None:
        return None
    try:
        if isinstance(interval, (str, bytes)):
            raise TypeError
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f'The guidance interval must be two numbers (sigma_lo, sigma_hi), got {interval!r}.') from None
    if math.isnan(lo) or math.isnan(hi) or not 0 <= lo < hi or math.isinf(lo):
        raise ValueError(f'The guidance interval needs 0 <= sigma_lo < sigma_hi, got ({lo:g}, {hi:g}).')
    return lo, hi

#----------------------------------------------------------------------------
# The guided denoiser.

class GuidedDenoiser:
    """D_w(x; sigma) = D_ref(x; sigma) + w (D(x; sigma) - D_ref(x; sigma)) for sigma in the interval
    (sigma_lo, sigma_hi], D(x; sigma) elsewhere.

    D is `net` with the sampler's class labels. D_ref is, without a guide (classifier-free guidance),
    `net` with zero labels, the unconditional denoiser of a network trained with label dropout; both
    run as ONE forward pass of the batch [x, x] with labels [c, 0]. With a guide `gnet`
    (autoguidance, or classifier-free guidance by a separate unconditional network as in EDM2),
    D_ref = gnet(x; sigma) with the same labels (none for an unconditional guide). The combination is
    EDM2's ref.lerp(D, w), computed in the networks' output dtype. The interval is Kynkaanniemi et
    al.'s (sigma_lo, sigma_hi]; outside it the guide is not evaluated at all.

    Counters, for reporting the cost (reset with reset_counts()):
        calls          times the sampler called the denoiser (its NFE),
        guided_calls   of those, calls inside the interval (two network evaluations each),
        net_forwards   forward passes of `net` (a batched classifier-free call is one),
        gnet_forwards  forward passes of `gnet`,
        evaluations    network evaluations per sample: calls + guided_calls.
    """

    def __init__(self, net, guidance: float = 1.0, gnet=None, interval: Optional[tuple[float, float]] = None):
        guidance = float(guidance)
        if not math.isfinite(guidance):
            raise ValueError(f'The guidance weight must be a finite number, got {guidance}.')
        if gnet is not None:
            check_guide(net, gnet)
        elif guidance != 1 and not net.label_dim:
            raise ValueError('Classifier-free guidance needs a conditional network; this one is unconditional, so give a '
                             'guide network (autoguidance) or use guidance 1.')
        self.net, self.gnet, self.guidance, self.interval = net, gnet, guidance, check_interval(interval)
        self.img_resolution, self.img_channels = net.img_resolution, net.img_channels
        self.label_dim, self.D = net.label_dim, getattr(net, 'D', None)
        self.sigma_min, self.sigma_max = net.sigma_min, net.sigma_max
        if gnet is not None:  # Both networks must support the noise levels used.
            self.sigma_min, self.sigma_max = max(net.sigma_min, gnet.sigma_min), min(net.sigma_max, gnet.sigma_max)
        self.reset_counts()

    def reset_counts(self) -> None:
        self.calls = self.guided_calls = self.net_forwards = self.gnet_forwards = 0

    @property
    def evaluations(self) -> int:
        return self.calls + self.guided_calls

    def round_sigma(self, sigma):
        return self.net.round_sigma(sigma)

    def _inside(self, sigma: torch.Tensor) -> torch.Tensor:
        """Bool, sigma's shape: whether guidance applies at each noise level."""
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.interval
        return (sigma > lo) & (sigma <= hi)

    def _plain(self, x, sigma, class_labels):
        self.net_forwards += 1
        return self.net(x, sigma, class_labels)

    def _guided(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided, plain): D_w(x; sigma) and D(x; sigma) from the same evaluations."""
        if self.gnet is not None:
            denoised = self._plain(x, sigma, class_labels)
            self.gnet_forwards += 1
            ref = self.gnet(x, sigma, class_labels if self.gnet.label_dim else None)
            return ref.to(denoised.dtype).lerp(denoised, self.guidance), denoised
        if class_labels is None:
            raise ValueError('Classifier-free guidance needs the class labels of the samples; the sampler passed none.')
        labels = class_labels.reshape(-1, self.label_dim)
        labels = labels.expand(x.shape[0], -1) if labels.shape[0] == 1 else labels
        sigma2 = torch.cat([sigma, sigma]) if sigma.numel() == x.shape[0] and sigma.numel() > 1 else sigma
        denoised, ref = self._plain(torch.cat([x, x]), sigma2, torch.cat([labels, torch.zeros_like(labels)])).chunk(2)
        return ref.lerp(denoised, self.guidance), denoised

    def __call__(self, x: torch.Tensor, sigma, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The guided denoised x [B, C, H, W] for x [B, C, H, W] at sigma (scalar or one per sample)."""
        self.calls += 1
        if self.guidance == 1:
            return self._plain(x, sigma, class_labels)
        sigma_t = torch.as_tensor(sigma, device=x.device)
        inside = self._inside(sigma_t)
        if not bool(inside.any()):
            return self._plain(x, sigma, class_labels)
        self.guided_calls += 1
        guided, plain = self._guided(x, sigma_t, class_labels)
        if bool(inside.all()):
            return guided
        # Per-sample noise levels on both sides of the interval (no sampler here does that): guided rows
        # inside, and outside the main network's output from the same evaluation.
        return torch.where(inside.reshape([-1] + [1] * (x.ndim - 1)), guided, plain)


def guided_network(net, guidance: float = 1.0, gnet=None, interval: Optional[tuple[float, float]] = None):
    """The denoiser a sampler should call: `net` itself when guidance is 1 (nothing to do, so the
    sampler's output is unchanged to the bit; EDM2 skips the guide then too), else
    GuidedDenoiser(net, guidance, gnet, interval). The arguments are checked either way."""
    guided = GuidedDenoiser(net, guidance, gnet, interval)
    return net if guided.guidance == 1 else guided

#----------------------------------------------------------------------------
