"""Guidance: classifier-free guidance (Ho & Salimans, 2022), autoguidance (Karras et al., NeurIPS 2024)
and the guidance interval (Kynkaanniemi et al., NeurIPS 2024), given as a noise range or as a range of
the sampler's main steps (mapped to its noise levels here, so the sampler stays a pure function of the
denoiser it is given). All of them change only the denoiser the sampler calls, never the sampler or
the prior (so they are D-independent): guided_network() returns a wrapper that behaves as a network
(net(x, sigma, class_labels), round_sigma(), sigma_min, sigma_max, img_resolution, img_channels,
label_dim, D). Wrap networks already prepared for sampling
(torch_utils.precision.prepare_network): the wrapper is not a torch.nn.Module.
"""

import math
from typing import Callable, Optional, Sequence

import torch

__all__ = ['GuidedDenoiser', 'guided_network', 'check_guide', 'check_interval', 'check_steps', 'steps_interval',
           'untrained_unconditional']

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


def check_steps(steps: Optional[Sequence[int]], num_steps: Optional[int] = None) -> Optional[tuple[int, int]]:
    """(first, last), the inclusive range of main step indices to guide, with 0 <= first <= last (and
    last < num_steps when the sampler's step count is given), or None (every step)."""
    if steps is None:
        return None
    try:
        if isinstance(steps, (str, bytes)):
            raise TypeError
        first, last = steps
        if any(isinstance(v, bool) or int(v) != v for v in (first, last)):
            raise ValueError
        first, last = int(first), int(last)
    except (TypeError, ValueError):
        raise ValueError(f'The guidance steps must be two step indices (first, last), got {steps!r}.') from None
    if not 0 <= first <= last:
        raise ValueError(f'The guidance steps need 0 <= first <= last, got ({first}, {last}).')
    if num_steps is not None and last >= num_steps:
        raise ValueError(f'The guidance steps ({first}, {last}) name step {last}, but the sampler has {num_steps} steps '
                         f'(0 to {num_steps - 1}); lower the last step or use more --steps.')
    return first, last


def steps_interval(sigma_steps: torch.Tensor, steps: Sequence[int]) -> tuple[float, float]:
    """The noise range (sigma_lo, sigma_hi] that guides main steps first..last (inclusive) of a sampler
    whose main noise levels are sigma_steps = [t_0, ..., t_{N-1}] (samplers.sigma_steps): its borders lie
    halfway, geometrically, between t_first and t_{first-1} (infinity for first = 0) and between t_last
    and t_{last+1} (0 for the last step), so the evaluations at t_first..t_last are guided whatever the
    rounding of a schedule's round trip, and a level in between (churn, a Restart pass) goes with the
    nearer main level."""
    levels = [float(t) for t in torch.as_tensor(sigma_steps, dtype=torch.float64).flatten()]
    first, last = check_steps(steps, len(levels))
    hi = math.inf if first == 0 else math.sqrt(levels[first - 1] * levels[first])
    lo = 0.0 if last == len(levels) - 1 else math.sqrt(levels[last] * levels[last + 1])
    if not lo < levels[last] <= levels[first] <= hi:
        raise ValueError(f'The sampler\'s noise levels for steps {first} to {last} do not decrease ({levels[first]:g} to '
                         f'{levels[last]:g}), so no noise range selects them; guide by noise level instead.')
    return lo, hi


def untrained_unconditional(net, training_options: Optional[dict], guidance: float, gnet=None) -> Optional[str]:
    """A one-line warning when classifier-free guidance (weight != 1, no guide network) is asked of a
    class-conditional network whose training options record no label dropout (cond_drop 0): its
    unconditional denoiser, the network with zero labels, was never trained. None otherwise, also when
    the options are unknown (legacy files and others that record none)."""
    if float(guidance) == 1 or gnet is not None or not net.label_dim or not isinstance(training_options, dict):
        return None
    cond_drop = training_options.get('cond_drop')
    if not isinstance(cond_drop, (int, float)) or isinstance(cond_drop, bool) or cond_drop > 0:
        return None
    return ('Warning: classifier-free guidance uses this class-conditional network with zero labels, but it was trained '
            'without label dropout (cond_drop=0), so that unconditional branch was never trained; train with --cond-drop '
            'or guide with --gnet.')

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
    al.'s (sigma_lo, sigma_hi]; outside it the guide is not evaluated at all. Instead of an interval,
    `steps` = (first, last) guides the sampler's main steps first..last (inclusive, of 0..N-1): with
    `sigma_steps`, a function that gives the sampler's main noise levels [t_0, ..., t_{N-1}] for a
    denoiser (samplers.sigma_steps for its settings; called with this wrapper, whose noise range it
    must respect), they become the interval steps_interval() gives.

    Counters, for reporting the cost (reset with reset_counts()):
        calls          times the sampler called the denoiser (its NFE),
        guided_calls   of those, calls inside the interval (two network evaluations each),
        net_forwards   forward passes of `net` (a batched classifier-free call is one),
        gnet_forwards  forward passes of `gnet`,
        evaluations    network evaluations per sample: calls + guided_calls.
    """

    def __init__(self, net, guidance: float = 1.0, gnet=None, interval: Optional[tuple[float, float]] = None,
                 steps: Optional[tuple[int, int]] = None, sigma_steps: Optional[Callable] = None):
        guidance = float(guidance)
        if not math.isfinite(guidance):
            raise ValueError(f'The guidance weight must be a finite number, got {guidance}.')
        if interval is not None and steps is not None:
            raise ValueError('Guidance was limited both to a noise interval and to a range of steps; give one of them.')
        if steps is not None and sigma_steps is None:
            raise ValueError('Guidance by step index needs the sampler\'s noise levels (sigma_steps); pass them, or give a noise interval.')
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
        self.steps = check_steps(steps)
        if self.steps is not None:  # The schedule of the noise range just set: the one the sampler will see.
            self.interval = steps_interval(sigma_steps(self), self.steps)
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


def guided_network(net, guidance: float = 1.0, gnet=None, interval: Optional[tuple[float, float]] = None,
                   steps: Optional[tuple[int, int]] = None, sigma_steps: Optional[Callable] = None):
    """The denoiser a sampler should call: `net` itself when guidance is 1 (nothing to do, so the
    sampler's output is unchanged to the bit; EDM2 skips the guide then too), else
    GuidedDenoiser(net, guidance, gnet, interval, steps, sigma_steps). The arguments are checked either way."""
    guided = GuidedDenoiser(net, guidance, gnet, interval, steps, sigma_steps)
    return net if guided.guidance == 1 else guided

#----------------------------------------------------------------------------
