"""Training losses: EDM's VP, VE and EDM formulations (Karras et al., 2022, Table 1) and EDM2's loss with
learned uncertainty (Karras et al., 2024), with the noise drawn from the PFGM++ kernel. D=None is the
diffusion model and reproduces EDM's and EDM2's losses exactly; a finite D changes only the noise,
through training.pfgmpp.sample_noise."""

from typing import Optional

import torch

from torch_utils import rng
from training import pfgmpp

#----------------------------------------------------------------------------
# Shared body: sigma ~ p(sigma), n ~ p_r(. | 0), loss = lambda(sigma) * |D_theta(y + n, sigma) - y|^2.

class _DenoisingLoss:
    """Base class; subclasses define sample_sigma() (the training p(sigma)) and weight() (lambda).
    sigma_scale multiplies every drawn sigma (PFGM++ uses 380/80 for 256x256 data)."""

    def __init__(self, D: Optional[float] = None, sigma_scale: float = 1):
        self.D = pfgmpp.check_D(D)
        if not sigma_scale > 0:
            raise ValueError(f'sigma_scale must be > 0, got {sigma_scale}.')
        self.sigma_scale = float(sigma_scale)

    def sample_sigma(self, batch: int, device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, net, images: torch.Tensor, labels: Optional[torch.Tensor] = None, augment_pipe=None,
                 generator: Optional[torch.Generator] = None, reference_images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-element weighted loss [B, C, H, W] for clean `images` [B, C, H, W].

        Random draws, in EDM's order: sigma, then the augmentation, then the noise; all from
        `generator` (or torch's global generator when None). `augment_pipe(images, generator=...)`
        returns (augmented images, augment labels), as training.augment.AugmentPipe does.

        reference_images [K, C, H, W] switches on the stable target field (Xu et al., 2023): the
        target is then not y but the exact posterior mean E[y | y + n] (pfgmpp.ideal_denoiser) over
        the reference set {y} + A(reference_images), which lowers the variance of the target. As in
        the published PFGM++ code, the set holds the batch's own augmented images y, and the other
        references are augmented too, each with its own draw (one more augment_pipe call, drawn from
        `generator` after the noise), so the references follow the same law as the batch."""
        if images.ndim != 4:
            raise ValueError(f'images must be [B, C, H, W], got shape {list(images.shape)}.')
        sigma = self.sample_sigma(images.shape[0], images.device, generator).reshape(-1, 1, 1, 1) * self.sigma_scale
        weight = self.weight(sigma)
        y, augment_labels = augment_pipe(images, generator=generator) if augment_pipe is not None else (images, None)
        n = pfgmpp.sample_noise(y.shape, sigma, D=self.D, generator=generator, device=y.device).to(y.dtype)
        D_yn, logvar = self.denoise(net, y + n, sigma, labels, augment_labels)
        target = y
        if reference_images is not None:
            others = reference_images.to(y.dtype)
            if augment_pipe is not None:
                others, _ = augment_pipe(others, generator=generator)
            reference = torch.cat([y, others.to(y.dtype)]).detach()
            target = pfgmpp.ideal_denoiser((y + n).detach(), sigma, reference, D=self.D)
        return self.per_element(weight, D_yn, target, logvar)

    def denoise(self, net, x: torch.Tensor, sigma: torch.Tensor, labels: Optional[torch.Tensor],
                augment_labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(D_theta(x; sigma), None): the network's denoised images, and no uncertainty."""
        return net(x, sigma, labels, augment_labels=augment_labels), None

    def per_element(self, weight: torch.Tensor, D_yn: torch.Tensor, target: torch.Tensor,
                    logvar: Optional[torch.Tensor]) -> torch.Tensor:
        """lambda(sigma) |D_theta - target|^2 per element."""
        return weight * ((D_yn - target) ** 2)


#----------------------------------------------------------------------------
# VP (Song et al., 2021): t ~ U(epsilon_t, 1), sigma = sigma_vp(t), lambda = 1 / sigma^2.

class VPLoss(_DenoisingLoss):
    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5, D: Optional[float] = None,
                 sigma_scale: float = 1):
        super().__init__(D, sigma_scale)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM, Table 1, VP)."""
        t = torch.as_tensor(t)
        return (0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp().sub(1).sqrt()

    def sample_sigma(self, batch, device, generator=None):
        rnd_uniform = rng.Draws(generator, device).rand(batch)
        return self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))

    def weight(self, sigma):
        return 1 / sigma ** 2

#----------------------------------------------------------------------------
# VE (Song et al., 2021): log sigma ~ U(log sigma_min, log sigma_max), lambda = 1 / sigma^2.

class VELoss(_DenoisingLoss):
    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100, D: Optional[float] = None, sigma_scale: float = 1):
        super().__init__(D, sigma_scale)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sample_sigma(self, batch, device, generator=None):
        rnd_uniform = rng.Draws(generator, device).rand(batch)
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** rnd_uniform)

    def weight(self, sigma):
        return 1 / sigma ** 2

#----------------------------------------------------------------------------
# EDM (Karras et al., 2022): ln sigma ~ N(P_mean, P_std^2),
# lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1).

class EDMLoss(_DenoisingLoss):
    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5, D: Optional[float] = None,
                 sigma_scale: float = 1):
        super().__init__(D, sigma_scale)
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def sample_sigma(self, batch, device, generator=None):
        rnd_normal = rng.Draws(generator, device).randn(batch)
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

#----------------------------------------------------------------------------
# EDM2 (Karras et al., 2024): EDM's lognormal sigma and weighting (with EDM2's P_mean = -0.4,
# P_std = 1.0), each sigma's loss divided by the learned exp(u(sigma)) plus u(sigma).

class EDM2Loss(EDMLoss):
    """lambda(sigma) / exp(u(sigma)) |D_theta(y + n; sigma) - y|^2 + u(sigma) per element, with u the
    network's uncertainty head (training.networks_edm2.EDM2Precond, return_logvar=True), so that the
    loss of every noise level is normalised by its own expected magnitude. The draws are EDMLoss's:
    ln sigma ~ N(P_mean, P_std^2), then the noise from the PFGM++ kernel at sigma for the network's D
    (EDM2's Gaussian for D=None). EDM2's network takes no augmentation labels."""

    def __init__(self, P_mean: float = -0.4, P_std: float = 1.0, sigma_data: float = 0.5, D: Optional[float] = None,
                 sigma_scale: float = 1):
        super().__init__(P_mean, P_std, sigma_data, D, sigma_scale)

    def denoise(self, net, x, sigma, labels, augment_labels):
        if augment_labels is not None:
            raise ValueError("EDM2's network takes no augmentation labels; train it without an augmentation pipe (--augment=0).")
        return net(x, sigma, labels, return_logvar=True)

    def per_element(self, weight, D_yn, target, logvar):
        """(lambda / exp(u)) |D_theta - target|^2 + u, according to Equation 21 (with Equations 14 to 16)."""
        return (weight / logvar.exp()) * ((D_yn - target) ** 2) + logvar

#----------------------------------------------------------------------------
