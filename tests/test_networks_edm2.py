"""Tests for training/networks_edm2.py: EDM2's network against EDM2's own outputs (tests/fixtures/edm2_networks:
state-dict keys, eval and training-mode outputs, the uncertainty head, forced weight normalisation), the
magnitude-preserving primitives against their laws, and the PFGM++ D, label dropout and checkpoint round trip."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from torch_utils import precision
from training import checkpoint, networks_edm2
from training.networks_edm2 import EDM2Precond

from helpers import REPO

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'edm2_networks')
with open(os.path.join(FIXTURE_DIR, 'manifest.json')) as f:
    MANIFEST = json.load(f)
CASES = sorted(name for name in MANIFEST if name.startswith('edm2_'))

# A tiny EDM2 network for 8x8 RGB images: two levels, attention at 4x4 (16 channels, one head).
TINY_EDM2 = dict(model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4], channels_per_head=16, logvar_channels=8)

#----------------------------------------------------------------------------
# Helpers.

def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / (1 + |ref|), the bound of tests/fixtures/README.md."""
    ours, ref = (np.asarray(a.detach().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64) for a in (ours, ref))
    return float(np.max(np.abs(ours - ref) / (1 + np.abs(ref))))


def fixture_net(name: str) -> tuple[EDM2Precond, dict]:
    """The fixture's network with its weights (float32, use_fp16 off), and its io arrays."""
    net = EDM2Precond(**MANIFEST[name]['precond_kwargs'], use_fp16=False)
    weights = np.load(os.path.join(FIXTURE_DIR, f'{name}.weights.npz'))
    net.load_state_dict({key: torch.from_numpy(weights[key]) for key in weights.files}, strict=True)
    io = np.load(os.path.join(FIXTURE_DIR, f'{name}.io.npz'))
    return net, {key: torch.from_numpy(io[key]) for key in io.files}


def tiny_edm2(seed: int = 0, label_dim: int = 0, gains: float = 0.7, **kwargs) -> EDM2Precond:
    """TINY_EDM2 after torch.manual_seed(seed), its zero-initialised gains set to `gains` so that every branch shows."""
    torch.manual_seed(seed)
    net = EDM2Precond(img_resolution=8, img_channels=3, label_dim=label_dim, **dict(TINY_EDM2, **kwargs))
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.endswith('gain'):
                param.fill_(gains)
    return net.eval()

#----------------------------------------------------------------------------
# EDM2's own outputs.

@pytest.mark.parametrize('name', CASES)
def test_state_dict_is_edm2s(name):
    with torch.device('meta'):
        net = EDM2Precond(**MANIFEST[name]['precond_kwargs'])
    weights = np.load(os.path.join(FIXTURE_DIR, f'{name}.weights.npz'))
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == [(k, weights[k].shape) for k in weights.files]
    assert sum(p.numel() for p in net.parameters()) == MANIFEST[name]['num_params']


@pytest.mark.parametrize('name', CASES)
def test_eval_output_and_uncertainty_match_edm2(name):
    # Measured on CPU: 0 and 3.5e-7 (out), 1.2e-7 and 6e-8 (logvar).
    net, io = fixture_net(name)
    with torch.no_grad():
        out, logvar = net.eval()(io['x'], io['sigma'], io.get('class_labels'), return_logvar=True)
    assert rel_err(out, io['out']) <= 1e-4
    assert logvar.shape == io['logvar'].shape and float((logvar - io['logvar']).abs().max()) <= 1e-4
    with torch.no_grad():  # Eval mode never writes the weights.
        assert torch.equal(net(io['x'], io['sigma'], io.get('class_labels')), out)
    weights = np.load(os.path.join(FIXTURE_DIR, f'{name}.weights.npz'))
    assert all(np.array_equal(tensor.numpy(), weights[key]) for key, tensor in net.state_dict().items())


@pytest.mark.parametrize('name', CASES)
def test_training_forward_normalises_the_weights_as_edm2(name):
    # Forced weight normalisation (Equation 66) rewrites every MPConv weight before use; measured on
    # CPU: outputs 0 and 2.4e-7 from EDM2's, weights identical.
    net, io = fixture_net(name)
    with torch.no_grad():
        out, _logvar = net.train()(io['x'], io['sigma'], io.get('class_labels'), return_logvar=True)
    assert rel_err(out, io['out_train']) <= 1e-4
    after = np.load(os.path.join(FIXTURE_DIR, f'{name}.weights_after_train_forward.npz'))
    state = net.state_dict()
    assert max(rel_err(state[key], after[key]) for key in after.files) <= 1e-5
    for key in after.files:  # Unit magnitude per output channel, up to normalize()'s eps: rms0 / (1e-4 + rms0).
        if key.endswith('.weight'):
            rms = state[key].reshape(len(state[key]), -1).square().mean(dim=1).sqrt()
            assert ((rms > 1 - 1e-3) & (rms < 1)).all(), key


def test_uncertainty_head_learns_with_the_network():
    # u(sigma) depends on sigma only, and its gradient reaches the head's weights (the loss learns it).
    net = tiny_edm2()
    x, sigma = torch.randn([3, 3, 8, 8]), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        _, logvar = net(x, sigma, return_logvar=True)
        _, same = net(x.flip(0), sigma, return_logvar=True)
    assert torch.equal(logvar, same) and logvar.shape == (3, 1, 1, 1) and len(set(logvar.flatten().tolist())) == 3
    _, logvar = net.train()(x, sigma, return_logvar=True)
    logvar.sum().backward()
    assert net.logvar_linear.weight.grad.abs().sum() > 0

#----------------------------------------------------------------------------
# The magnitude-preserving primitives keep unit magnitude on unit-variance inputs.

def test_magnitude_preserving_primitives():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn([4, 64, 32, 32], generator=gen), torch.randn([4, 192, 32, 32], generator=gen)
    rms = lambda x: float(x.square().mean().sqrt())
    assert abs(rms(networks_edm2.mp_silu(a)) - 1) < 0.01                                  # Equation 81.
    assert abs(rms(networks_edm2.mp_sum(a, b[:, :64], t=0.3)) - 1) < 0.01                 # Equation 88.
    cat = networks_edm2.mp_cat(a, b, t=0.7)                                               # Equation 103.
    assert cat.shape[1] == 256 and abs(rms(cat) - 1) < 0.01
    assert math.isclose(rms(cat[:, 64:]) ** 2 * 192 / (rms(cat[:, :64]) ** 2 * 64), (0.7 / 0.3) ** 2, rel_tol=0.02)
    fourier = networks_edm2.MPFourier(512)(torch.randn([256], generator=gen))              # Equation 75.
    assert abs(rms(fourier) - 1) < 0.02
    x = networks_edm2.normalize(torch.randn([5, 3, 4, 4], generator=gen) * 7)
    assert torch.allclose(x.square().mean(dim=[1, 2, 3]), torch.full([5], (1 / (1 + 1e-4 / 7)) ** 2), rtol=1e-4)


@pytest.mark.parametrize('kernel', [[], [3, 3]])
def test_mpconv_preserves_magnitude_whatever_the_weight_scale(kernel):
    # Equation 47: the normalised weight scaled by gain / sqrt(fan_in) keeps unit magnitude, for any weight scale.
    conv = networks_edm2.MPConv(64, 32, kernel).eval()
    with torch.no_grad():
        conv.weight.mul_(123.0)
        x = torch.randn([1024, 64] if not kernel else [16, 64, 16, 16], generator=torch.Generator().manual_seed(1))
        y = conv(x, gain=2.0)
    inner = y if not kernel else y[:, :, 1:-1, 1:-1]  # Zero padding lowers the border's magnitude.
    assert abs(float(inner.square().mean().sqrt()) - 2.0) < 0.1

#----------------------------------------------------------------------------
# PFGM++, label dropout, checkpoints.

def test_D_is_recorded_and_does_not_change_the_output():
    x, sigma = torch.randn([2, 3, 8, 8]), torch.tensor([0.3, 3.0])
    diffusion, pfgmpp = tiny_edm2(), tiny_edm2(D=64)
    assert diffusion.D is None and pfgmpp.D == 64.0
    with torch.no_grad():
        assert torch.equal(diffusion(x, sigma), pfgmpp(x, sigma))
    with pytest.raises(ValueError, match='D must be'):
        tiny_edm2(D=0)


def test_checkpoint_round_trip_keeps_edm2s_arguments():
    net = tiny_edm2(D=128.0, label_dim=3, label_dropout=0.1)
    data = checkpoint.network_to_dict(net)
    assert data['class_name'] == 'EDM2Precond'
    assert {'img_resolution', 'img_channels', 'label_dim', 'use_fp16', 'sigma_data', 'logvar_channels', 'model_channels',
            'channel_mult', 'num_blocks', 'attn_resolutions', 'channels_per_head', 'D', 'label_dropout'} <= set(data['init_kwargs'])
    again = checkpoint.network_from_dict(data)
    x, sigma, labels = torch.randn([2, 3, 8, 8]), torch.tensor([0.3, 3.0]), torch.eye(3)[[0, 2]]
    with torch.no_grad():
        assert torch.equal(again(x, sigma, labels, return_logvar=True)[1], net(x, sigma, labels, return_logvar=True)[1])
        assert torch.equal(again(x, sigma, labels), net(x, sigma, labels)) and again.D == 128.0


def test_label_dropout_zeroes_labels_in_training_only():
    net = tiny_edm2(label_dim=3, label_dropout=0.5)
    x, sigma, labels = torch.randn([64, 3, 8, 8]), torch.full([64], 1.0), torch.eye(3)[torch.arange(64) % 3]
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), tiny_edm2(label_dim=3)(x, sigma, labels))  # Eval mode: no dropout.
        net.train()(x, sigma, labels)  # Forced weight normalisation first, so that the weights then stay (nearly) put.
        torch.manual_seed(5)
        train_out = net(x, sigma, labels)
        net.eval()
        conditional, unconditional = net(x, sigma, labels), net(x, sigma, torch.zeros_like(labels))
    dropped = [bool(torch.allclose(train_out[i], unconditional[i], atol=1e-4)) for i in range(64)]
    kept = [bool(torch.allclose(train_out[i], conditional[i], atol=1e-4)) for i in range(64)]
    assert all(a != b for a, b in zip(dropped, kept)) and 16 < sum(dropped) < 48  # About half: Binomial(64, 0.5).


def test_fp16_gains_compute_as_edm2_runs_its_float16_snapshots():
    # EDM2 divides a float16 gain by sqrt(fan_in) in float16; fp16_gains does that with float32 weights.
    net = tiny_edm2(gains=0.3)
    fp16 = tiny_edm2(gains=0.3).half().float()  # Weights rounded as EDM2's snapshots store them.
    x, sigma = torch.randn([2, 3, 8, 8]), torch.tensor([0.3, 3.0])
    emulated = EDM2Precond(img_resolution=8, img_channels=3, fp16_gains=True, **TINY_EDM2).eval()
    emulated.load_state_dict(fp16.state_dict())
    half_params = tiny_edm2(gains=0.3).half()  # EDM2's snapshot as EDM2 runs it: float16 parameters, float32 arithmetic on the CPU.
    with torch.no_grad():
        for param in half_params.parameters():
            param.requires_grad_(False)
        reference = half_params(x, sigma)
        assert torch.equal(emulated(x, sigma), reference)
        assert not torch.equal(fp16(x, sigma), reference) and torch.allclose(net(x, sigma), reference, atol=1e-2)


def test_autocast_keeps_the_embedding_and_the_uncertainty_in_float32():
    # --precision=bf16: the U-Net's convolutions in bfloat16; the embedding, u(sigma) and D(x) in float32.
    net = tiny_edm2()
    seen = {}
    record = lambda name: (lambda module, args, output: seen.update({name: output.dtype}))
    net.unet.enc['8x8_block0'].conv_res0.register_forward_hook(record('conv'))
    net.unet.emb_noise.register_forward_hook(record('emb'))
    net.logvar_linear.register_forward_hook(record('logvar'))
    x, sigma = torch.randn([2, 3, 8, 8]), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        reference = net(x, sigma)
        out, logvar = precision.set_network_precision(net, 'bf16')(x, sigma, return_logvar=True)
    assert seen == dict(emb=torch.float32, conv=torch.bfloat16, logvar=torch.float32)
    assert out.dtype == logvar.dtype == torch.float32 and 0 < float((out - reference).abs().max()) < 0.1

#----------------------------------------------------------------------------
# Several ranks: every rank normalises its own copy in its forward passes, and the copies stay equal.

DDP_SCRIPT = textwrap.dedent('''\
    import torch, torch.distributed as dist
    from training.loss import EDM2Loss
    from training.networks_edm2 import EDM2Precond
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = EDM2Precond(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4],
                      channels_per_head=16, logvar_channels=8, dropout=0.1).train()
    ddp = torch.nn.parallel.DistributedDataParallel(net, forward_sync_buffers=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(100 + rank)  # Each rank its own images, noise and dropout.
    for step in range(3):
        optimizer.zero_grad()
        torch.manual_seed(1000 * rank + step)
        with ddp.no_sync():  # Two accumulation rounds, as the training loop runs them.
            EDM2Loss(D=64.0)(ddp, torch.randn([4, 3, 8, 8], generator=gen), generator=gen).sum().backward()
        EDM2Loss(D=64.0)(ddp, torch.randn([4, 3, 8, 8], generator=gen), generator=gen).sum().backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        print('identical' if torch.equal(gathered[0], gathered[1]) else 'DIFFERENT', float((gathered[0] - gathered[1]).abs().max()))
    del ddp  # Its reducer first, then the group, both ranks together: a clean exit on gloo.
    dist.barrier()
    dist.destroy_process_group()
    ''')


@pytest.mark.slow
def test_ddp_ranks_stay_identical_with_forced_weight_normalisation(tmp_path):
    script = tmp_path / 'ddp_edm2.py'
    script.write_text(DDP_SCRIPT)
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script)],
                            cwd=REPO, capture_output=True, text=True, timeout=240,
                            env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO))
    assert result.returncode == 0 and 'identical' in result.stdout, result.stdout + result.stderr

#----------------------------------------------------------------------------
