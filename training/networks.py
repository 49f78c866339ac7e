"""Model architectures and preconditioning schemes used in the paper
"Elucidating the Design Space of Diffusion-Based Generative Models" (EDM, Karras et al. 2022),
reused unchanged by "PFGM++: Unlocking the Potential of Physics-Inspired Generative Models"
(Xu et al. 2023).

Parameter and buffer names, shapes and registration order follow NVlabs/edm exactly, so that its
checkpoints load with load_state_dict(strict=True). The only PFGM++ addition is the `D` argument of
the preconditioners: it is recorded on the network (a checkpoint knows the D it was trained with) but
never enters the computation, because PFGM++ trains the same denoiser D_theta(x, sigma) with
sigma = r / sqrt(D)."""

import contextlib
import copy
import functools
import inspect
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.nn.functional import silu

from training.pfgmpp import check_D

SigmaLike = Union[float, torch.Tensor]

def float32_region(device_type: str) -> torch.autocast | contextlib.nullcontext:
    """A region that autocast (bf16 / fp16 training and sampling, torch_utils/precision.py) leaves
    alone: its operations run in the dtype of their inputs. The meta device (shape checks) has no
    autocast to leave."""
    return contextlib.nullcontext() if device_type == 'meta' else torch.autocast(device_type=device_type, enabled=False)

#----------------------------------------------------------------------------
# Unified routine for initializing weights and biases.

def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random tensor of `shape`: xavier_uniform U(+-sqrt(6/(fan_in+fan_out))), xavier_normal
    N(0, 2/(fan_in+fan_out)), kaiming_uniform U(+-sqrt(3/fan_in)) or kaiming_normal N(0, 1/fan_in)."""
    if mode == 'xavier_uniform': return np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':  return np.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform': return np.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':  return np.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'Invalid init mode "{mode}"; expected xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal.')

#----------------------------------------------------------------------------
# Fully-connected layer.

class Linear(torch.nn.Module):
    """y = x W^T + b, with W [out_features, in_features] drawn by weight_init() times init_weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = 'kaiming_normal',
                 init_weight: float = 1, init_bias: float = 0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        init_kwargs = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **init_kwargs) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **init_kwargs) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_features] -> [..., out_features], computed in x's dtype (weights stay float32)."""
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype))
        return x

#----------------------------------------------------------------------------
# Convolutional layer with optional up/downsampling.

class Conv2d(torch.nn.Module):
    """Same-padded kernel x kernel convolution (kernel=0: none), optionally preceded by 2x upsampling
    or downsampling with the separable FIR filter f f^T / (sum f)^2."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = 'kaiming_normal', init_weight: float = 1, init_bias: float = 0):
        assert not (up and down)
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        init_kwargs = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **init_kwargs) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **init_kwargs) * init_bias) if kernel and bias else None
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        # Persistent, as in EDM, whose checkpoints carry it; None keeps it out of the state dict.
        self.register_buffer('resample_filter', f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, H, W] -> [B, out_channels, H', W'] with H' = 2H (up), H/2 (down) or H."""
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        # The fused variants order resampling and convolution so the convolution runs at the lower
        # resolution; the padding makes them match the unfused result up to border effects.
        if self.fused_resample and self.up and w is not None:
            x = torch.nn.functional.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=max(f_pad - w_pad, 0))
            x = torch.nn.functional.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = torch.nn.functional.conv2d(x, w, padding=w_pad + f_pad)
            x = torch.nn.functional.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                # Zero insertion keeps 1/4 of the samples, hence the gain of 4.
                x = torch.nn.functional.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = torch.nn.functional.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = torch.nn.functional.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x.add_(b.reshape(1, -1, 1, 1))
        return x

#----------------------------------------------------------------------------
# Group normalization.

class GroupNorm(torch.nn.Module):
    """Group normalization with min(num_groups, num_channels // min_channels_per_group) groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean_g) / sqrt(var_g + eps) * weight + bias over each group g of [B, C, H, W], in x's
        dtype. For float16/bfloat16 x, PyTorch's kernels accumulate the group statistics in float32;
        autocast is left out so that it does not turn the output into float32 (tests/test_precision.py
        checks the statistics against a float64 computation)."""
        with float32_region(x.device.type):
            return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype), bias=self.bias.to(x.dtype), eps=self.eps)

#----------------------------------------------------------------------------
# Self-attention: a[n, :, i] = sum_j softmax_j(q[n, :, i] . k[n, :, j] / sqrt(C)) v[n, :, j].

ATTENTION_BACKENDS = ('sdpa', 'einsum')

def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """w[n, i, j] = softmax_j(q[n, :, i] . k[n, :, j] / sqrt(C)) for q, k [N, C, L]; at least float32
    inside because float16 logits overflow, returned in q's dtype."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    with float32_region(q.device.type):
        return torch.einsum('ncq,nck->nqk', q.to(dtype), (k / np.sqrt(k.shape[1])).to(dtype)).softmax(dim=2).to(q.dtype)

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = 'sdpa') -> torch.Tensor:
    """Multi-head attention on [B, heads, C, L] queries, keys and values -> [B, heads, C, L].

    'sdpa': torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels on
    GPUs, whose softmax accumulates in float32); 'einsum': the explicit formulation of the published
    EDM and PFGM++ code (attention_weights, then a weighted sum), kept as the reference."""
    if backend == 'sdpa':
        # SDPA wants [..., L, C]; its default scale is 1 / sqrt(C), as above.
        return torch.nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)).transpose(-1, -2)
    if backend == 'einsum':
        shape = q.shape
        q, k, v = (t.reshape(-1, *shape[-2:]) for t in (q, k, v))
        w = attention_weights(q, k)
        return torch.einsum('nqk,nck->ncq', w, v).reshape(shape)
    raise ValueError(f'Unknown attention backend {backend!r}; expected one of {", ".join(ATTENTION_BACKENDS)}.')

#----------------------------------------------------------------------------
# Unified U-Net block with optional up/downsampling and self-attention.
# Represents the union of all features employed by the DDPM++, NCSN++, and ADM architectures.

class UNetBlock(torch.nn.Module):
    """Residual block: x' = (skip(x) + conv1(silu(mod(norm1(conv0(silu(norm0(x))))), emb))) * skip_scale,
    where mod is norm1(.) * (scale + 1) + shift (adaptive_scale) or norm1(. + bias); then optional
    multi-head self-attention x'' = (x' + proj(attn(qkv(norm2(x'))))) * skip_scale."""

    attention_backend = 'sdpa'  # See attention(); set_attention_backend() changes it for a whole network.

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: Optional[int] = None, channels_per_head: int = 64,
                 dropout: float = 0, skip_scale: float = 1, eps: float = 1e-5, resample_filter: Sequence[float] = (1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True, init: dict = dict(),
                 init_zero: dict = dict(init_weight=0), init_attn: Optional[dict] = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            # A pure resampling skip (kernel 0) keeps the identity path parameter-free where possible.
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, H, W], emb [B or 1, emb_channels] -> [B, out_channels, H', W']."""
        orig = x
        x = self.conv0(silu(self.norm0(x)))

        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x.add_(params)))

        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * self.skip_scale

        if self.num_heads:
            # The 3C qkv channels are laid out as [heads, C / heads, 3]; checkpoints depend on it.
            q, k, v = self.qkv(self.norm2(x)).reshape(x.shape[0], self.num_heads, x.shape[1] // self.num_heads, 3, -1).unbind(3)
            a = attention(q, k, v, backend=self.attention_backend)
            x = self.proj(a.reshape(*x.shape)).add_(x)
            x = x * self.skip_scale
        return x

#----------------------------------------------------------------------------
# Timestep embedding used in the DDPM++ and ADM architectures.

class PositionalEmbedding(torch.nn.Module):
    """emb = [cos(x w_i), sin(x w_i)] with w_i = (1 / max_positions)^(i / (num_channels/2 - endpoint)),
    i = 0 .. num_channels/2 - 1."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N] -> [N, num_channels]."""
        freqs = torch.arange(start=0, end=self.num_channels // 2, dtype=torch.float32, device=x.device)
        freqs = freqs / (self.num_channels // 2 - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = x.ger(freqs.to(x.dtype))
        x = torch.cat([x.cos(), x.sin()], dim=1)
        return x

#----------------------------------------------------------------------------
# Timestep embedding used in the NCSN++ architecture.

class FourierEmbedding(torch.nn.Module):
    """emb = [cos(2 pi x f_i), sin(2 pi x f_i)] with fixed random f_i ~ N(0, scale^2)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N] -> [N, num_channels]."""
        x = x.ger((2 * np.pi * self.freqs).to(x.dtype))
        x = torch.cat([x.cos(), x.sin()], dim=1)
        return x

#----------------------------------------------------------------------------
# What EDM's two U-Net families share: the embedding runs in float32, then the U-Net proper.

class UNet(torch.nn.Module):
    """Base of SongUNet and DhariwalUNet: subclasses give mapping() (noise, class and augmentation
    embedding) and unet() (the encoder-decoder); no parameters of its own."""

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: Optional[torch.Tensor],
                augment_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, in_channels, H, W], noise_labels [B or 1], class_labels [B or 1, label_dim] or None,
        augment_labels [B, augment_dim] or None -> [B, out_channels, H, W]."""
        with float32_region(x.device.type):
            emb = self.mapping(x, noise_labels, class_labels, augment_labels)
        return self.unet(x, emb)

#----------------------------------------------------------------------------
# Reimplementation of the DDPM++ and NCSN++ architectures from the paper
# "Score-Based Generative Modeling through Stochastic Differential Equations".
# Equivalent to the original implementation by Song et al., available at
# https://github.com/yang-song/score_sde_pytorch

EMBEDDING_TYPES = ('positional', 'fourier')
ENCODER_TYPES = ('standard', 'skip', 'residual')
DECODER_TYPES = ('standard', 'skip')

def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f'Unknown {name} {value!r}; expected one of {", ".join(map(repr, allowed))}.')

class SongUNet(UNet):
    """F_theta(x, c_noise, class_labels) [B, in_channels, H, W] -> [B, out_channels, H, W] for DDPM++
    (positional, standard, standard, [1,1]) and NCSN++ (fourier, residual, standard, [1,3,3,1])."""

    def __init__(self,
        img_resolution: int,                        # Image resolution at input/output.
        in_channels: int,                           # Number of color channels at input.
        out_channels: int,                          # Number of color channels at output.
        label_dim: int = 0,                         # Number of class labels, 0 = unconditional.
        augment_dim: int = 0,                       # Augmentation label dimensionality, 0 = no augmentation.

        model_channels: int = 128,                  # Base multiplier for the number of channels.
        channel_mult: Sequence[int] = (1, 2, 2, 2), # Per-resolution multipliers for the number of channels.
        channel_mult_emb: int = 4,                  # Multiplier for the dimensionality of the embedding vector.
        num_blocks: int = 4,                        # Number of residual blocks per resolution.
        attn_resolutions: Sequence[int] = (16,),    # List of resolutions with self-attention.
        dropout: float = 0.10,                      # Dropout probability of intermediate activations.
        label_dropout: float = 0,                   # Dropout probability of class labels for classifier-free guidance.

        embedding_type: str = 'positional',         # Timestep embedding type: 'positional' for DDPM++, 'fourier' for NCSN++.
        channel_mult_noise: int = 1,                # Timestep embedding size: 1 for DDPM++, 2 for NCSN++.
        encoder_type: str = 'standard',             # Encoder architecture: 'standard' for DDPM++, 'residual' for NCSN++.
        decoder_type: str = 'standard',             # Decoder architecture: 'standard' for both DDPM++ and NCSN++.
        resample_filter: Sequence[int] = (1, 1),    # Resampling filter: [1,1] for DDPM++, [1,3,3,1] for NCSN++.
    ):
        _check_choice('embedding_type', embedding_type, EMBEDDING_TYPES)
        _check_choice('encoder_type', encoder_type, ENCODER_TYPES)
        _check_choice('decoder_type', decoder_type, DECODER_TYPES)
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )

        # Mapping.
        self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True) if embedding_type == 'positional' else FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = model_channels
                self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(in_channels=caux, out_channels=caux, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(in_channels=caux, out_channels=cout, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin = cout
                cout = model_channels * mult
                attn = (res in attn_resolutions)
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=attn, **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = model_channels * mult
                attn = (idx == num_blocks and res in attn_resolutions)
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=attn, **block_kwargs)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def mapping(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: Optional[torch.Tensor],
                augment_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The embedding [B or 1, emb_channels] of noise level, class and augmentation (in float32)."""
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape) # swap cos/sin to [sin, cos], as score_sde does
        if self.map_label is not None:
            tmp = class_labels
            if self.training and self.label_dropout:
                tmp = tmp * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(tmp.dtype)
            # Scaling one-hot labels by sqrt(label_dim) gives them unit mean square, like the noise embedding.
            emb = emb + self.map_label(tmp * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))
        return emb

    def unet(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder: x [B, in_channels, H, W] -> [B, out_channels, H, W]."""
        skips = []
        aux = x
        for name, block in self.enc.items():
            if 'aux_down' in name:
                aux = block(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + block(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # Decoder.
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if 'aux_up' in name:
                aux = block(aux)
            elif 'aux_norm' in name:
                tmp = block(x)
            elif 'aux_conv' in name:
                tmp = block(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux

#----------------------------------------------------------------------------
# Reimplementation of the ADM architecture from the paper
# "Diffusion Models Beat GANS on Image Synthesis". Equivalent to the
# original implementation by Dhariwal and Nichol, available at
# https://github.com/openai/guided-diffusion

class DhariwalUNet(UNet):
    """F_theta(x, c_noise, class_labels) [B, in_channels, H, W] -> [B, out_channels, H, W] (ADM)."""

    def __init__(self,
        img_resolution: int,                            # Image resolution at input/output.
        in_channels: int,                               # Number of color channels at input.
        out_channels: int,                              # Number of color channels at output.
        label_dim: int = 0,                             # Number of class labels, 0 = unconditional.
        augment_dim: int = 0,                           # Augmentation label dimensionality, 0 = no augmentation.

        model_channels: int = 192,                      # Base multiplier for the number of channels.
        channel_mult: Sequence[int] = (1, 2, 3, 4),     # Per-resolution multipliers for the number of channels.
        channel_mult_emb: int = 4,                      # Multiplier for the dimensionality of the embedding vector.
        num_blocks: int = 3,                            # Number of residual blocks per resolution.
        attn_resolutions: Sequence[int] = (32, 16, 8),  # List of resolutions with self-attention.
        dropout: float = 0.10,                          # Dropout probability of intermediate activations.
        label_dropout: float = 0,                       # Dropout probability of class labels for classifier-free guidance.
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        # Mapping.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False, init_mode='kaiming_normal', init_weight=np.sqrt(label_dim)) if label_dim else None

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin = cout
                cout = model_channels * mult
                self.enc[f'{res}x{res}_conv'] = Conv2d(in_channels=cin, out_channels=cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin = cout
                cout = model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = cout + skips.pop()
                cout = model_channels * mult
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=(res in attn_resolutions), **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def mapping(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: Optional[torch.Tensor],
                augment_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """The embedding [B or 1, emb_channels] of noise level, class and augmentation (in float32)."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            tmp = class_labels
            if self.training and self.label_dropout:
                tmp = tmp * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(tmp.dtype)
            emb = emb + self.map_label(tmp)
        emb = silu(emb)
        return emb

    def unet(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Encoder and decoder: x [B, in_channels, H, W] -> [B, out_channels, H, W]."""
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)

        # Decoder.
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        x = self.out_conv(silu(self.out_norm(x)))
        return x

#----------------------------------------------------------------------------
# Helpers shared by the preconditioners.

MODEL_TYPES = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet}

def make_unet(model_type: str, **kwargs) -> torch.nn.Module:
    """Construct the architecture named by model_type ('SongUNet' or 'DhariwalUNet') with kwargs."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f'Unknown model_type {model_type!r}; expected one of {", ".join(map(repr, MODEL_TYPES))}.')
    return MODEL_TYPES[model_type](**kwargs)

def prepare_inputs(x: torch.Tensor, sigma: SigmaLike, class_labels: Optional[torch.Tensor], label_dim: int
                   ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """x -> float32 [B, C, H, W]; sigma (float, 0-dim, [B] or [B,1,1,1]) -> float32 [B or 1, 1, 1, 1];
    class_labels -> None if unconditional, zeros [1, label_dim] if not given, else float32 [B, label_dim]."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
    if label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, label_dim)
    return x, sigma, class_labels

def precision_region(device: torch.device, amp_dtype: Optional[torch.dtype], force_fp32: bool):
    """Where a network's forward pass runs: float32 when forced, else autocast to amp_dtype (--precision),
    else as it is."""
    if force_fp32:
        return float32_region(device.type)
    if amp_dtype is not None:
        return torch.autocast(device_type=device.type, dtype=amp_dtype)
    return contextlib.nullcontext()


def model_dtype(use_fp16: bool, force_fp32: bool, device: torch.device) -> torch.dtype:
    """float16 only when use_fp16, not force_fp32, and running on CUDA (as EDM); float32 otherwise."""
    return torch.float16 if (use_fp16 and not force_fp32 and device.type == 'cuda') else torch.float32

def set_attention_backend(net: torch.nn.Module, backend: str) -> torch.nn.Module:
    """Compute every self-attention of `net` with `backend` ('sdpa' or 'einsum', see attention())."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f'Unknown attention backend {backend!r}; expected one of {", ".join(ATTENTION_BACKENDS)}.')
    for module in net.modules():
        if isinstance(module, UNetBlock):
            module.attention_backend = backend
    return net

class Preconditioner(torch.nn.Module):
    """What the four preconditioners share: the constructor's common arguments and the U-Net F, and
    the denoiser D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)) around
    it. A subclass gives its own arguments and coefficients().

    The preconditioning arithmetic around F stays float32. F runs in float16 when EDM's use_fp16 is
    set (CUDA only, as EDM), and under autocast to amp_dtype when torch_utils.precision has set one;
    force_fp32 turns both off."""

    amp_dtype: Optional[torch.dtype] = None  # Run-time setting, not part of checkpoints.
    learned_variance: bool = False           # iDDPM: F also predicts a variance per channel, which D ignores.

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool,
                 model_type: str, D: Optional[float], **model_kwargs):
        """Keep what every preconditioner records and build F, model_type's U-Net from img_channels to
        img_channels (twice as many with learned_variance) channels at img_resolution."""
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.D = check_D(D)
        out_channels = img_channels * 2 if self.learned_variance else img_channels
        self.model = make_unet(model_type, img_resolution=img_resolution, in_channels=img_channels, out_channels=out_channels, label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> tuple[SigmaLike, SigmaLike, SigmaLike, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for float32 sigma [B or 1, 1, 1, 1]; each subclass has its own."""
        raise NotImplementedError(f'{type(self).__name__} must define coefficients(sigma).')

    def forward(self, x: torch.Tensor, sigma: SigmaLike, class_labels: Optional[torch.Tensor] = None,
                force_fp32: bool = False, **model_kwargs) -> torch.Tensor:
        """Denoised D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) [B, C, H, W] for noisy x [B, C, H, W]
        at noise level sigma (scalar or [B]), according to EDM's Equation 7."""
        x, sigma, class_labels = prepare_inputs(x, sigma, class_labels, self.label_dim)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.run_model(c_in * x, c_noise, class_labels, force_fp32, **model_kwargs)
        if self.learned_variance:
            F_x = F_x[:, :self.img_channels]
        D_x = c_skip * x + c_out * F_x
        return D_x

    def run_model(self, x_in: torch.Tensor, c_noise: torch.Tensor, class_labels: Optional[torch.Tensor],
                  force_fp32: bool, **model_kwargs) -> torch.Tensor:
        """F(x_in, c_noise, class_labels) as float32."""
        dtype = model_dtype(self.use_fp16, force_fp32, x_in.device)
        with precision_region(x_in.device, self.amp_dtype, force_fp32):
            F_x = self.model(x_in.to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return F_x.to(torch.float32)

    def round_sigma(self, sigma: SigmaLike) -> torch.Tensor:
        """Identity: a network of continuous noise levels accepts any sigma (iDDPM's overrides it)."""
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
# Constructor arguments kept on the network, so a checkpoint can rebuild it from plain data.

def records_init_kwargs(cls: type) -> type:
    """Class decorator: after __init__, `self.init_kwargs` holds every constructor argument by name
    (with the **keyword arguments, e.g. **model_kwargs, merged in), a plain dict that checkpoints store
    beside the state dict."""
    init = cls.__init__
    signature = inspect.signature(init)
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD), None)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop('self')
        arguments.update(arguments.pop(var_keyword, {}) if var_keyword else {})
        init(self, *args, **kwargs)
        self.init_kwargs = copy.deepcopy(arguments)

    cls.__init__ = __init__
    return cls

#----------------------------------------------------------------------------
# Preconditioning corresponding to the variance preserving (VP) formulation
# from the paper "Score-Based Generative Modeling through Stochastic
# Differential Equations".

@records_init_kwargs
class VPPrecond(Preconditioner):
    """D(x; sigma) = x - sigma F((x / sqrt(sigma^2 + 1)), (M - 1) sigma^-1(sigma)) (EDM Table 1, VP column)."""

    def __init__(self,
        img_resolution: int,            # Image resolution.
        img_channels: int,              # Number of color channels.
        label_dim: int = 0,             # Number of class labels, 0 = unconditional.
        use_fp16: bool = False,         # Execute the underlying model at FP16 precision?
        beta_d: float = 19.9,           # Extent of the noise level schedule.
        beta_min: float = 0.1,          # Initial slope of the noise level schedule.
        M: int = 1000,                  # Original number of timesteps in the DDPM formulation.
        epsilon_t: float = 1e-5,        # Minimum t-value used during training.
        model_type: str = 'SongUNet',   # Class name of the underlying model.
        D: Optional[float] = None,      # PFGM++ augmentation dimension the net is trained for, None = diffusion.
        **model_kwargs,                 # Keyword arguments for the underlying model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, D, **model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        with torch.device('cpu'): # float() needs real data, also when built under torch.device('meta')
            self.sigma_min = float(self.sigma(epsilon_t))
            self.sigma_max = float(self.sigma(1))

    def coefficients(self, sigma: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma) (EDM Table 1, VP)."""
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise

    def sigma(self, t: SigmaLike) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1, VP schedule)."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: SigmaLike) -> torch.Tensor:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d, the inverse of sigma(t)."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

#----------------------------------------------------------------------------
# Preconditioning corresponding to the variance exploding (VE) formulation
# from the paper "Score-Based Generative Modeling through Stochastic
# Differential Equations".

@records_init_kwargs
class VEPrecond(Preconditioner):
    """D(x; sigma) = x + sigma F(x, log(sigma / 2)) (EDM Table 1, VE column)."""

    def __init__(self,
        img_resolution: int,            # Image resolution.
        img_channels: int,              # Number of color channels.
        label_dim: int = 0,             # Number of class labels, 0 = unconditional.
        use_fp16: bool = False,         # Execute the underlying model at FP16 precision?
        sigma_min: float = 0.02,        # Minimum supported noise level.
        sigma_max: float = 100,         # Maximum supported noise level.
        model_type: str = 'SongUNet',   # Class name of the underlying model.
        D: Optional[float] = None,      # PFGM++ augmentation dimension the net is trained for, None = diffusion.
        **model_kwargs,                 # Keyword arguments for the underlying model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, D, **model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma: torch.Tensor) -> tuple[int, torch.Tensor, int, torch.Tensor]:
        """c_skip = 1, c_out = sigma, c_in = 1, c_noise = log(sigma / 2) (EDM Table 1, VE)."""
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = (0.5 * sigma).log()
        return c_skip, c_out, c_in, c_noise

#----------------------------------------------------------------------------
# Preconditioning corresponding to improved DDPM (iDDPM) formulation from
# the paper "Improved Denoising Diffusion Probabilistic Models".

@records_init_kwargs
class iDDPMPrecond(Preconditioner):
    """D(x; sigma) = x - sigma F(x / sqrt(sigma^2 + 1), M - 1 - argmin_j |u_j - sigma|)[:, :C]
    (EDM Table 1, iDDPM column); the model predicts 2C channels, the second half being iDDPM's variance."""

    learned_variance = True

    def __init__(self,
        img_resolution: int,                # Image resolution.
        img_channels: int,                  # Number of color channels.
        label_dim: int = 0,                 # Number of class labels, 0 = unconditional.
        use_fp16: bool = False,             # Execute the underlying model at FP16 precision?
        C_1: float = 0.001,                 # Timestep adjustment at low noise levels.
        C_2: float = 0.008,                 # Timestep adjustment at high noise levels.
        M: int = 1000,                      # Original number of timesteps in the DDPM formulation.
        model_type: str = 'DhariwalUNet',   # Class name of the underlying model.
        D: Optional[float] = None,          # PFGM++ augmentation dimension the net is trained for, None = diffusion.
        **model_kwargs,                     # Keyword arguments for the underlying model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, D, **model_kwargs)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M

        # Discrete noise levels u_M = 0 < u_{M-1} < ... < u_0 of iDDPM's cosine schedule; on the CPU
        # because float() needs real data, also when built under torch.device('meta').
        with torch.device('cpu'):
            u = torch.zeros(M + 1)
            for j in range(M, 0, -1): # M, ..., 1
                u[j - 1] = ((u[j] ** 2 + 1) / (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        self.register_buffer('u', u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def coefficients(self, sigma: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = M - 1 - j(sigma) with u_j the
        level nearest sigma (EDM Table 1, iDDPM)."""
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return c_skip, c_out, c_in, c_noise

    def alpha_bar(self, j: Union[int, torch.Tensor]) -> torch.Tensor:
        """alpha_bar(j) = sin^2(pi/2 * j / (M (C_2 + 1)))."""
        j = torch.as_tensor(j)
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: SigmaLike, return_index: bool = False) -> torch.Tensor:
        """Nearest discrete level u_j to each sigma (or its index j when return_index), shaped like sigma."""
        sigma = torch.as_tensor(sigma)
        index = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1)).argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

#----------------------------------------------------------------------------
# Improved preconditioning proposed in the paper "Elucidating the Design
# Space of Diffusion-Based Generative Models" (EDM).

@records_init_kwargs
class EDMPrecond(Preconditioner):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) with c_skip = s_d^2 / (sigma^2 + s_d^2),
    c_out = sigma s_d / sqrt(sigma^2 + s_d^2), c_in = 1 / sqrt(sigma^2 + s_d^2), c_noise = ln(sigma) / 4
    (EDM Table 1, "Ours" column; Equation 7)."""

    def __init__(self,
        img_resolution: int,                # Image resolution.
        img_channels: int,                  # Number of color channels.
        label_dim: int = 0,                 # Number of class labels, 0 = unconditional.
        use_fp16: bool = False,             # Execute the underlying model at FP16 precision?
        sigma_min: float = 0,               # Minimum supported noise level.
        sigma_max: float = float('inf'),    # Maximum supported noise level.
        sigma_data: float = 0.5,            # Expected standard deviation of the training data.
        model_type: str = 'DhariwalUNet',   # Class name of the underlying model.
        D: Optional[float] = None,          # PFGM++ augmentation dimension the net is trained for, None = diffusion.
        **model_kwargs,                     # Keyword arguments for the underlying model.
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, D, **model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_skip = s_d^2 / (sigma^2 + s_d^2), c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
        c_in = 1 / sqrt(s_d^2 + sigma^2), c_noise = ln(sigma) / 4 (EDM Table 1, "Ours")."""
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

#----------------------------------------------------------------------------
