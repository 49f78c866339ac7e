"""EDM2's magnitude-preserving U-Net and its preconditioning with learned uncertainty, from the paper
"Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2, Karras et al., CVPR 2024),
reused by PFGM++ as EDM's networks are: the denoiser D_theta(x, sigma) does not change with D.

Parameter and buffer names, shapes and registration order follow NVlabs/edm2's
training/networks_edm2.py exactly, so that its snapshots load with load_state_dict(strict=True);
EDM2Precond takes EDM2's constructor keywords (those of its `Precond`) plus our `D`, which is recorded
and never enters the computation, `label_dropout` for --cond-drop, and `fp16_gains`, with which a
network converted from EDM2's float16 snapshots computes as EDM2 runs them (MPConv).

Forced weight normalisation. In training mode every MPConv first rewrites its own weight with the
normalised one (EDM2's Equation 66), inside forward(), as EDM2 does; so a training-mode forward pass
changes the parameters. The training loop therefore never runs the EMA or post-hoc EMA copies in
training mode, and a resumed run repeats the forward passes of the uninterrupted one exactly (every
rank of a DDP run normalises its identical copy the same way). Eval-mode passes never write.
"""

import math
from typing import Optional, Sequence

import numpy as np
import torch

from training.networks import SigmaLike, float32_region, model_dtype, precision_region, prepare_inputs, records_init_kwargs
from training.pfgmpp import check_D

#----------------------------------------------------------------------------
# Small pure helpers.

def normalize(x: torch.Tensor, dim: Optional[Sequence[int]] = None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + |x| / sqrt(n)) over `dim` (default: every dimension but the first), n the number of
    elements each norm covers: unit root-mean-square magnitude per slice, according to Equation 66.
    The norm is accumulated in float32 whatever x's dtype."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = 'keep') -> torch.Tensor:
    """[B, C, H, W] unchanged ('keep'), halved ('down') or doubled ('up') with the separable filter
    f f^T / (sum f)^2 (times 4 for 'up', whose zero insertion keeps a quarter of the samples)."""
    if mode == 'keep':
        return x
    f = np.float32(f)
    if f.ndim != 1 or len(f) % 2 != 0:
        raise ValueError(f'The resampling filter must be 1-D of even length, got {list(f)}.')
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    f = torch.as_tensor(np.outer(f, f)[np.newaxis, np.newaxis], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mode == 'down':
        return torch.nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    if mode == 'up':
        return torch.nn.functional.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    raise ValueError(f'Unknown resampling mode {mode!r}; expected keep, down or up.')


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU(x) / 0.596: unit magnitude out for unit-variance Gaussian input, according to Equation 81."""
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """((1 - t) a + t b) / sqrt((1 - t)^2 + t^2), according to Equation 88."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """[w_a a, w_b b] along `dim` with w_a = C (1 - t) / sqrt(N_a), w_b = C t / sqrt(N_b) and
    C = sqrt((N_a + N_b) / ((1 - t)^2 + t^2)), according to Equation 103."""
    Na, Nb = a.shape[dim], b.shape[dim]
    C = math.sqrt((Na + Nb) / ((1 - t) ** 2 + t ** 2))
    wa = C / math.sqrt(Na) * (1 - t)
    wb = C / math.sqrt(Nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)

#----------------------------------------------------------------------------
# Magnitude-preserving Fourier features.

class MPFourier(torch.nn.Module):
    """[B] -> [B, num_channels]: sqrt(2) cos(2 pi (f x + p)) with f ~ N(0, bandwidth^2) and p ~ U[0, 1),
    computed in float32, according to Equation 75."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer('freqs', 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer('phases', 2 * np.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32)
        y = y.ger(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        y = y.cos() * np.sqrt(2)
        return y.to(x.dtype)

#----------------------------------------------------------------------------
# Magnitude-preserving convolution or fully-connected layer.

class MPConv(torch.nn.Module):
    """A bias-free convolution (kernel [k, k]) or fully-connected layer (kernel []) whose weight is
    normalised per output channel before use and scaled by gain / sqrt(fan_in).

    gain_dtype: the dtype in which a tensor gain is divided by sqrt(fan_in); None: the gain's own, as
    EDM2 does, which is float16 when it runs its float16 snapshot pickles. EDM2Precond sets float16
    here for float32 networks converted from those (fp16_gains), so that they compute as EDM2 runs them."""

    gain_dtype: Optional[torch.dtype] = None

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        """[B, in_channels, H, W] -> [B, out_channels, H, W] (same padding), or [B, in] -> [B, out]."""
        w = self.weight.to(torch.float32)  # The parameter itself when it is float32, as in EDM2.
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # Forced weight normalisation, according to Equation 66.
        w = normalize(w)
        if isinstance(gain, torch.Tensor) and self.gain_dtype is not None:
            gain = gain.to(self.gain_dtype)
        w = w * (gain / np.sqrt(w[0].numel()))  # Magnitude-preserving scaling, according to Equation 47.
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))

#----------------------------------------------------------------------------
# U-Net encoder/decoder block with optional self-attention (EDM2's Figure 21).

class Block(torch.nn.Module):
    """One residual block: the main branch (resampling; in the encoder a 1x1 channel change and pixel
    normalisation), the residual branch conv -> modulation by the embedding -> conv, their
    magnitude-preserving sum, optional cosine self-attention, and clipping of the activations."""

    def __init__(self,
        in_channels: int,                   # Number of input channels.
        out_channels: int,                  # Number of output channels.
        emb_channels: int,                  # Number of embedding channels.
        flavor: str = 'enc',                # Flavor: 'enc' or 'dec'.
        resample_mode: str = 'keep',        # Resampling: 'keep', 'up', or 'down'.
        resample_filter: Sequence[float] = (1, 1),  # Resampling filter.
        attention: bool = False,            # Include self-attention?
        channels_per_head: int = 64,        # Number of channels per attention head.
        dropout: float = 0,                 # Dropout probability.
        res_balance: float = 0.3,           # Balance between main branch (0) and residual branch (1).
        attn_balance: float = 0.3,          # Balance between main branch (0) and self-attention (1).
        clip_act: Optional[float] = 256,    # Clip output activations. None = do not clip.
    ):
        super().__init__()
        if flavor not in ('enc', 'dec'):
            raise ValueError(f'Unknown block flavor {flavor!r}; expected enc or dec.')
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = list(resample_filter)
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == 'enc' else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads != 0 else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads != 0 else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, H, W], emb [B, emb_channels] -> [B, out_channels, H', W']."""
        # Main branch.
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == 'enc':
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # Pixel normalisation.

        # Residual branch, modulated by the embedding: c = 1 + gain * linear(emb).
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        # Connect the branches.
        if self.flavor == 'dec' and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        # Cosine self-attention: q, k, v normalised per pixel and head; the qkv channels are laid out
        # as [heads, C / heads, 3] (checkpoints depend on it).
        if self.num_heads != 0:
            y = self.attn_qkv(x)
            y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
            q, k, v = normalize(y, dim=2).unbind(3)
            w = torch.einsum('nhcq,nhck->nhqk', q, k / np.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum('nhqk,nhck->nhcq', w, v)
            y = self.attn_proj(y.reshape(*x.shape))
            x = mp_sum(x, y, t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip_(-self.clip_act, self.clip_act)
        return x

#----------------------------------------------------------------------------
# EDM2's U-Net (Figure 21).

class UNet(torch.nn.Module):
    """F(x, c_noise, class_labels): [B, img_channels, R, R] -> the same shape. label_dropout (ours,
    for --cond-drop) zeroes each sample's class label with that probability in training mode, drawn
    from torch's global generator as EDM's networks draw it."""

    def __init__(self,
        img_resolution: int,                            # Image resolution.
        img_channels: int,                              # Image channels.
        label_dim: int,                                 # Class label dimensionality. 0 = unconditional.
        model_channels: int = 192,                      # Base multiplier for the number of channels.
        channel_mult: Sequence[int] = (1, 2, 3, 4),     # Per-resolution multipliers for the number of channels.
        channel_mult_noise: Optional[int] = None,       # Multiplier for noise embedding dimensionality. None = select based on channel_mult.
        channel_mult_emb: Optional[int] = None,         # Multiplier for final embedding dimensionality. None = select based on channel_mult.
        num_blocks: int = 3,                            # Number of residual blocks per resolution.
        attn_resolutions: Sequence[int] = (16, 8),      # List of resolutions with self-attention.
        label_balance: float = 0.5,                     # Balance between noise embedding (0) and class embedding (1).
        concat_balance: float = 0.5,                    # Balance between skip connections (0) and main path (1).
        label_dropout: float = 0,                       # Dropout probability of class labels (ours, for classifier-free guidance).
        **block_kwargs,                                 # Arguments for Block.
    ):
        super().__init__()
        cblock = [model_channels * x for x in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.label_dropout = label_dropout
        self.out_gain = torch.nn.Parameter(torch.zeros([]))

        # Embedding.
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None

        # Encoder: per level a 3x3 input convolution (first level) or a downsampling block, then num_blocks blocks.
        self.enc = torch.nn.ModuleDict()
        cout = img_channels + 1  # The input gets a constant channel of ones.
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = channels
                self.enc[f'{res}x{res}_conv'] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f'{res}x{res}_down'] = Block(cout, cout, cemb, flavor='enc', resample_mode='down', **block_kwargs)
            for idx in range(num_blocks):
                cin = cout
                cout = channels
                self.enc[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='enc', attention=(res in attn_resolutions), **block_kwargs)

        # Decoder: at the lowest resolution two blocks (the first with attention), elsewhere an
        # upsampling block; then num_blocks + 1 blocks, each taking one skip connection.
        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f'{res}x{res}_in0'] = Block(cout, cout, cemb, flavor='dec', attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = Block(cout, cout, cemb, flavor='dec', **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = Block(cout, cout, cemb, flavor='dec', resample_mode='up', **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = channels
                self.dec[f'{res}x{res}_block{idx}'] = Block(cin, cout, cemb, flavor='dec', attention=(res in attn_resolutions), **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def embedding(self, noise_labels: torch.Tensor, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The embedding [B, cemb]: Fourier features of c_noise, mixed with the class embedding (one-hot
        labels scaled by sqrt(label_dim) to unit magnitude) by mp_sum, then mp_silu."""
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if self.training and self.label_dropout:
                keep = torch.rand([class_labels.shape[0], 1], device=class_labels.device) >= self.label_dropout
                class_labels = class_labels * keep.to(class_labels.dtype)
            emb = mp_sum(emb, self.emb_label(class_labels * np.sqrt(class_labels.shape[1])), t=self.label_balance)
        return mp_silu(emb)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """x [B, img_channels, R, R] (float16 with EDM2's use_fp16), noise_labels c_noise [B], class_labels
        [B, label_dim] or None -> [B, img_channels, R, R]. The embedding is float32 (as in EDM2's fp16
        mode, and outside autocast, as EDM's networks keep theirs)."""
        with float32_region(x.device.type):
            emb = self.embedding(noise_labels, class_labels)

        # Encoder.
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if 'conv' in name else block(x, emb)
            skips.append(x)

        # Decoder.
        for name, block in self.dec.items():
            if 'block' in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)

#----------------------------------------------------------------------------
# Preconditioning and uncertainty estimation.

@records_init_kwargs
class EDM2Precond(torch.nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) with EDM's coefficients (EDM, Table 1 and
    Equation 7) around EDM2's U-Net, plus the uncertainty head u(sigma) = linear(MPFourier(c_noise))
    that EDM2's loss learns (return_logvar=True).

    The preconditioning and the head stay float32. The U-Net runs in float16 when EDM2's use_fp16 is
    set (CUDA only, as EDM2), and under autocast to amp_dtype when torch_utils.precision has set one
    (which also turns use_fp16 off); force_fp32 turns both off. fp16_gains: see MPConv.gain_dtype
    (checkpoint.network_from_legacy sets it for EDM2's float16 snapshot pickles)."""

    amp_dtype: Optional[torch.dtype] = None  # Run-time setting, not part of checkpoints.

    def __init__(self,
        img_resolution: int,            # Image resolution.
        img_channels: int,              # Image channels.
        label_dim: int = 0,             # Class label dimensionality. 0 = unconditional.
        use_fp16: bool = True,          # Run the model at FP16 precision (CUDA only)?
        sigma_data: float = 0.5,        # Expected standard deviation of the training data.
        logvar_channels: int = 128,     # Intermediate dimensionality for uncertainty estimation.
        D: Optional[float] = None,      # PFGM++ augmentation dimension the net is trained for, None = diffusion.
        fp16_gains: bool = False,       # Divide the gains by sqrt(fan_in) in float16, as EDM2 runs its float16 snapshots.
        **unet_kwargs,                  # Keyword arguments for UNet.
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.D = check_D(D)
        self.sigma_min = 0
        self.sigma_max = float('inf')
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])
        self.fp16_gains = bool(fp16_gains)
        for module in self.modules():
            if isinstance(module, MPConv):
                module.gain_dtype = torch.float16 if self.fp16_gains else None

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_skip = s_d^2 / (sigma^2 + s_d^2), c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
        c_in = 1 / sqrt(s_d^2 + sigma^2), c_noise = ln(sigma) / 4 [B] (EDM, Table 1)."""
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.flatten().log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: SigmaLike, class_labels: Optional[torch.Tensor] = None,
                force_fp32: bool = False, return_logvar: bool = False, **unet_kwargs):
        """Denoised D(x; sigma) [B, C, H, W] for noisy x [B, C, H, W] at sigma (scalar or [B]); with
        return_logvar also u(sigma) [B, 1, 1, 1], the log-variance of Equation 21."""
        x, sigma, class_labels = prepare_inputs(x, sigma, class_labels, self.label_dim)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        dtype = model_dtype(self.use_fp16, force_fp32, x.device)
        with precision_region(x.device, self.amp_dtype, force_fp32):
            F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels, **unet_kwargs)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if return_logvar:
            with float32_region(x.device.type):
                logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)  # u(sigma), according to Equation 21.
            return D_x, logvar
        return D_x

    def round_sigma(self, sigma: SigmaLike) -> torch.Tensor:
        """Identity: EDM2's network takes any continuous noise level."""
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
