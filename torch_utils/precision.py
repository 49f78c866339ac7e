"""Numerical precision of training and sampling, one name per mode for every entry point: fp32
(float32, TF32 off: the reference), tf32 (CUDA matmuls and convolutions may round to TF32), bf16 and
fp16 (autocast; fp16 training with dynamic loss scaling). Under bf16 and fp16 the parameters, the
optimizer and the EMA stay float32, and the networks keep in float32 what is sensitive to rounding:
the preconditioning, the noise and class embedding, group-norm statistics, the attention softmax and
the loss (training/networks.py; docs/PERFORMANCE.md).
"""

from typing import Optional

import torch

PRECISIONS = ('fp32', 'tf32', 'bf16', 'fp16')
AUTOCAST_DTYPES = {'fp32': None, 'tf32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def check_precision(precision: str) -> str:
    """precision itself if it is one of PRECISIONS, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f'Unknown precision {precision!r}; expected one of {", ".join(PRECISIONS)}.')
    return precision


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a precision, None for fp32 and tf32."""
    return AUTOCAST_DTYPES[check_precision(precision)]


def configure_backends(precision: str, cudnn_benchmark: bool = True) -> None:
    """Process-wide settings for a precision: TF32 on for tf32 and off for every other mode (in bf16
    and fp16 it would only touch the few float32 matmuls kept outside autocast), and cuDNN's
    autotuner (EDM's --bench), which picks the fastest convolution algorithm per input shape."""
    check_precision(precision)
    mode = 'tf32' if precision == 'tf32' else 'ieee'
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def set_network_precision(net: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Make a preconditioned network (training.networks.*Precond) run its U-Net under the autocast of
    `precision` on every call, whoever calls it (loss, sampler, DDP, torch.compile). The setting is a
    run-time choice: it is not stored in checkpoints. EDM's own mixed-precision switch, use_fp16
    (a float16 cast of the whole U-Net), is turned off, so the precision alone decides. Returns net."""
    net.amp_dtype = autocast_dtype(precision)
    if hasattr(net, 'use_fp16'):
        net.use_fp16 = False
    return net


def make_grad_scaler(precision: str, device_type: str) -> Optional[torch.amp.GradScaler]:
    """Dynamic loss scaling for fp16 (gradients of float16 activations underflow without it), None for
    the other modes."""
    if check_precision(precision) != 'fp16':
        return None
    return torch.amp.GradScaler(device_type)


def prepare_network(net: torch.nn.Module, precision: str = 'fp32', channels_last: bool = False,
                    compile: bool = False) -> torch.nn.Module:
    """A network set up to run fast: `precision` (set_network_precision), its 4-d weights in the
    channels-last memory layout (NHWC, the layout tensor-core convolutions use natively; outputs then
    follow it), and torch.compile. The first two change `net` in place; the returned module is the
    compiled wrapper (with `net`'s attributes) or `net` itself."""
    set_network_precision(net, precision)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return torch.compile(net, dynamic=False) if compile else net
