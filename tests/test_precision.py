"""Tests for the fast paths (torch_utils/precision.py and the network changes behind it): what stays
float32 under autocast, and how far bf16, fp16, SDPA attention, channels-last and torch.compile move
the results away from the float32 reference.

Bounds (measured on this file's tiny networks with random N(0, 0.2^2) weights, then given margin):
- network output F, relative L2 error: bf16 <= 2e-2 (measured 4e-3 to 6e-3), fp16 <= 5e-3 (6e-4);
- gradients: cosine similarity to fp32 >= 0.999 (bf16 0.999995, fp16 with loss scaling 0.9999999);
- SDPA vs the einsum formulation, channels-last vs contiguous, all float32 (torch.compile: tests/test_compile.py):
  max |difference| <= 1e-5 x max |reference| (measured below 1e-6);
- 18-step Heun sampling (35 evaluations, D=128): PSNR of the images against fp32 within 6 dB of the
  measured 70.7 dB (bf16) and 88.5 dB (fp16), images in [-1, 1].
- group normalisation of bfloat16 / float16 input: within 4 ulps of a float64 computation on the same
  input (measured 0.5 ulp for bfloat16, 3 for float16 on the CPU); statistics accumulated in
  bfloat16 would be about 250 ulps off.
"""

import math

import pytest
import torch

from sampling import generation
from torch_utils import precision
from training import networks

from helpers import TINY_ADM, TINY_SONG, inputs, output_dtypes, random_net, rel_l2, rel_max

CONFIGS = {'ddpmpp': TINY_SONG, 'adm': TINY_ADM}


def model_output(net, x, sigma, prec: str) -> torch.Tensor:
    """The U-Net's F(c_in x, c_noise) of an EDMPrecond, in float32, under `prec`."""
    precision.set_network_precision(net, prec)
    try:
        sigma = sigma.reshape(-1, 1, 1, 1)
        return net.run_model(x / (net.sigma_data ** 2 + sigma ** 2).sqrt(), sigma.log().flatten() / 4, None, False)
    finally:
        precision.set_network_precision(net, 'fp32')

#----------------------------------------------------------------------------
# The precision names.

def test_precision_names():
    assert precision.PRECISIONS == ('fp32', 'tf32', 'bf16', 'fp16')
    assert [precision.autocast_dtype(p) for p in precision.PRECISIONS] == [None, None, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match='fp64'):
        precision.check_precision('fp64')
    assert precision.make_grad_scaler('bf16', 'cpu') is None
    assert isinstance(precision.make_grad_scaler('fp16', 'cpu'), torch.amp.GradScaler)


def test_configure_backends_switches_tf32_only_for_tf32():
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark)
    try:
        for prec, mode in [('tf32', 'tf32'), ('fp32', 'ieee'), ('bf16', 'ieee'), ('fp16', 'ieee')]:
            precision.configure_backends(prec, cudnn_benchmark=(prec == 'bf16'))
            assert torch.backends.cuda.matmul.fp32_precision == mode
            assert torch.backends.cudnn.conv.fp32_precision == mode
            assert torch.backends.cudnn.benchmark == (prec == 'bf16')
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark = saved

#----------------------------------------------------------------------------
# What stays float32.

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_group_norm_statistics_are_float32(dtype):
    # A large common offset: the mean must be subtracted with float32 accuracy or the output is ruined.
    gen = torch.Generator().manual_seed(0)
    x = (100 + torch.randn([2, 64, 32, 32], generator=gen)).to(dtype)
    norm = networks.GroupNorm(64)
    with torch.autocast('cpu', dtype=dtype):
        y = norm(x)
    assert y.dtype == dtype  # Not turned into float32 by autocast.
    ref = torch.nn.functional.group_norm(x.double(), norm.num_groups, eps=norm.eps)
    mantissa_bits = 7 if dtype == torch.bfloat16 else 10
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-30))) - mantissa_bits)
    assert float(((y.detach().double() - ref).abs() / ulp).max()) <= 4.0


@pytest.mark.parametrize('prec', ['bf16', 'fp16'])
def test_embedding_and_preconditioning_stay_float32(prec):
    seen, out = output_dtypes(random_net(), prec)
    amp = precision.autocast_dtype(prec)
    assert seen == {'emb': torch.float32, 'conv': amp, 'norm': amp}
    assert out.dtype == torch.float32


def test_force_fp32_turns_autocast_off():
    net = random_net()
    x, sigma = inputs()
    ref = net(x, sigma)
    precision.set_network_precision(net, 'bf16')
    assert torch.equal(net(x, sigma, force_fp32=True), ref)
    assert not torch.equal(net(x, sigma), ref)


def test_set_network_precision_turns_off_edm_use_fp16():
    net = random_net(use_fp16=True)
    precision.set_network_precision(net, 'bf16')
    assert net.use_fp16 is False and net.amp_dtype == torch.bfloat16
    assert net.init_kwargs['use_fp16'] is True  # The checkpoint's record is untouched.

#----------------------------------------------------------------------------
# Closeness to float32.

@pytest.mark.parametrize('arch', sorted(CONFIGS))
@pytest.mark.parametrize('prec, bound', [('bf16', 2e-2), ('fp16', 5e-3)])
def test_mixed_precision_output_close_to_fp32(arch, prec, bound):
    net = random_net(arch=CONFIGS[arch])
    x, sigma = inputs()
    ref = model_output(net, x, sigma, 'fp32')
    out = model_output(net, x, sigma, prec)
    assert 0 < rel_l2(out, ref) <= bound


@pytest.mark.parametrize('prec', ['bf16', 'fp16'])
def test_mixed_precision_gradients_close_to_fp32(prec):
    net = random_net()
    x, sigma = inputs()

    def gradient(p):
        precision.set_network_precision(net, p)
        net.zero_grad()
        loss = net(x, sigma).square().mean()
        scaler = precision.make_grad_scaler(p, 'cpu')
        (scaler.scale(loss) if scaler else loss).backward()
        grad = torch.cat([q.grad.flatten() for q in net.parameters()]).double()
        return grad / scaler.get_scale() if scaler else grad

    ref, grad = gradient('fp32'), gradient(prec)
    assert float(grad @ ref / (grad.norm() * ref.norm())) >= 0.999


@pytest.mark.parametrize('arch', sorted(CONFIGS))
def test_sdpa_attention_matches_einsum_formulation(arch):
    net = random_net(arch=CONFIGS[arch])
    x, sigma = inputs()
    out = net(x, sigma)
    ref = networks.set_attention_backend(net, 'einsum')(x, sigma)
    assert rel_max(out, ref) <= 1e-5
    with pytest.raises(ValueError, match='flash'):
        networks.set_attention_backend(net, 'flash')


def test_attention_function_against_explicit_softmax():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn([2, 3, 16, 10], generator=gen, dtype=torch.float64) for _ in range(3))
    w = torch.softmax(torch.einsum('bhci,bhcj->bhij', q, k) / 4.0, dim=-1)  # 1/sqrt(16)
    ref = torch.einsum('bhij,bhcj->bhci', w, v)
    for backend in networks.ATTENTION_BACKENDS:
        assert torch.allclose(networks.attention(q, k, v, backend=backend), ref, rtol=0, atol=1e-12)


def test_channels_last_matches_contiguous():
    net = random_net()
    x, sigma = inputs()
    ref = net(x, sigma)
    precision.prepare_network(net, 'fp32', channels_last=True)
    assert net.model.enc['8x8_block0'].conv0.weight.is_contiguous(memory_format=torch.channels_last)
    assert rel_max(net(x, sigma), ref) <= 1e-5


@pytest.mark.parametrize('prec, measured', [('bf16', 70.7), ('fp16', 88.5)])
def test_sampling_psnr_against_fp32(prec, measured):
    net = random_net()
    net.D = 128.0  # The prior of PFGM++ with D=128.

    def sample(p):
        precision.set_network_precision(net, p)
        with torch.no_grad():
            return generation.sample_batch(net, list(range(8)), sampler_kwargs=dict(num_steps=18))

    ref, out = sample('fp32'), sample(prec)
    mse = float((out - ref).square().mean())
    # Within 6 dB of the measurement: not fp32 (mse 0), and not the other reduced precision.
    assert mse > 0 and abs(10 * math.log10(2 ** 2 / mse) - measured) <= 6, mse
