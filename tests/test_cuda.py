"""CUDA acceptance tests: what the CPU suite cannot reach. Every test here is marked `cuda`: collected
everywhere, skipped with the reason "needs CUDA" without a GPU (tests/conftest.py), and run by
`make gpu-check` (benchmarks/gpu_check.py), which records each test's outcome and the measured numbers
that the tests attach with record_property.

Bounds (float32 means TF32 off, as precision 'fp32' sets; "rel_max" is max |a - b| / max |b|):
- network outputs CPU vs CUDA, float32, DDPM++ / NCSN++ / ADM: rel_max <= 1e-4; gradients of the
  parameters: relative L2 error <= 1e-4. Rounding of float32 kernels differs by about 1e-6; TF32
  (10-bit mantissa) would be about 1e-3, so a TF32 leak fails.
- 18-step Heun sampling CPU vs CUDA from the same latents, float32: rel_max <= 1e-4.
- one training step CPU vs CUDA (same draws, from a CPU generator), float32, for PFGM++ with D=128
  and for diffusion: first-step loss within
  1e-5 relative and gradients within 1e-4 relative L2; after 4 Adam steps (fused on CUDA), losses
  within 1e-4 and the parameter updates within 1e-2 relative L2. Adam divides by sqrt(v), so entries
  whose gradient is at rounding level can move by up to lr; a 1e-6 relative perturbation of the
  gradients on the CPU moves the 4-step updates by 1e-4 to 4e-4 relative L2, hence the bound.
- under bf16 and fp16 autocast on CUDA, the mapping network, the preconditioning, the output and the
  loss stay float32 while convolutions and group norms run in the autocast type; group-norm
  statistics of bf16/fp16 input within 4 ulps of float64 (as on the CPU).
- the prior drawn with per-seed CUDA generators follows the kernel: KS test of (R/r)^2 against
  BetaPrime(N/2, D/2) for D = 1, 128, 2048, p > 1e-3.
- per-seed sampling on CUDA: prior draws bitwise identical for any batch composition; images within
  rel_max 1e-4 across batch sizes (cuDNN may choose other kernels per batch size).
- bf16 + channels-last + torch.compile training of PFGM++ (D=128) on CUDA against fp32 eager, 4 steps:
  each step's loss within 0.1%, the bound tests/test_train.py uses on the CPU.
- two-process torchrun training of PFGM++ (D=128) with NCCL, when there are two GPUs (NCCL takes one
  per rank; tests/test_train.py runs the same check on gloo on the CPU): 1 kimg in one go, and the
  same run resumed from its state at 512 images, end with bitwise identical weights, EMA and Adam
  state (deterministic kernels: tests/deterministic_train.py).
- generation on CUDA: bf16 + channels-last PNGs differ from fp32's, by >= 45 dB PSNR (54 dB on the CPU); FID
  statistics of those PNGs with a stand-in detector on CUDA against the CPU: mu and sigma within
  1e-5 x their largest entry.
The fused-Adam and pinned-memory tests sit beside the modules they test (tests/test_training_loop.py,
tests/test_dataset.py).
"""

import copy
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

import dnnlib
import fid
import generate
from metrics import detector as detector_lib
from metrics import evaluation
from sampling import generation
from sampling import samplers as sampling
from torch_utils import image_io, precision, rng
from training import checkpoint, networks, training_loop

from helpers import (REPO, TINY_ADM, TINY_NCSNPP, TINY_SONG, TINY_TRAIN, inputs, loop_config, noise_images, output_dtypes, random_net,
                     read_stats, rel_l2, rel_max, save_standin_detector, tiny_net)

pytestmark = pytest.mark.cuda

ARCHS = {'ddpmpp': TINY_SONG, 'ncsnpp': TINY_NCSNPP, 'adm': TINY_ADM}
ADAM = dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8)


@pytest.fixture
def cuda():
    """The device under test, in strict float32 (TF32 off, no cuDNN autotuning) unless a test asks for
    more; the process-wide settings are restored afterwards."""
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark)
    precision.configure_backends('fp32', cudnn_benchmark=False)
    yield torch.device('cuda')
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.benchmark = saved


def flat_grads(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().double().cpu() for p in net.parameters()])


def flat_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double().cpu() for p in net.parameters()])

#----------------------------------------------------------------------------
# CPU and CUDA agree in float32.

@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_network_output_and_gradients_match_cpu(arch, cuda, record_property):
    net = random_net(label_dim=2 if arch == 'adm' else 0, arch=ARCHS[arch])
    x, sigma = inputs()
    labels = torch.eye(2)[[0, 1, 1, 0]] if arch == 'adm' else None
    outputs, grads = {}, {}
    for name, device in [('cpu', torch.device('cpu')), ('cuda', cuda)]:
        model = copy.deepcopy(net).to(device).requires_grad_(True)
        out = model(x.to(device), sigma.to(device), None if labels is None else labels.to(device))
        out.square().mean().backward()
        outputs[name], grads[name] = out, flat_grads(model)
    err_out, err_grad = rel_max(outputs['cuda'], outputs['cpu']), rel_l2(grads['cuda'], grads['cpu'])
    record_property('output_rel_max', err_out)
    record_property('grad_rel_l2', err_grad)
    assert outputs['cuda'].device.type == 'cuda' and outputs['cuda'].dtype == torch.float32
    assert err_out <= 1e-4 and err_grad <= 1e-4, (err_out, err_grad)


def test_sampler_matches_cpu_for_the_same_latents(cuda, record_property):
    net = tiny_net(D=128.0)
    latents = rng.StackedRandomGenerator('cpu', range(6)).prior([3, 8, 8], 80, 128.0)
    with torch.no_grad():
        ref = sampling.edm_sampler(net, latents, num_steps=18)
        out = sampling.edm_sampler(copy.deepcopy(net).to(cuda), latents.to(cuda), num_steps=18)
    err = rel_max(out, ref)
    record_property('image_rel_max', err)
    assert out.device.type == 'cuda' and err <= 1e-4, err


def train_steps(device: torch.device, D, num_steps: int = 4) -> dict:
    """num_steps optimizer steps of training_loop()'s step (accumulate_gradients with the loss
    make_loss builds for the network's D, sanitize_gradients, Adam with optimizer_options for
    `device`, EMA) on a tiny randomised network; every random draw comes from CPU generators, so both
    devices see the same sigmas and noise."""
    net = random_net(D=D).train().requires_grad_(True).to(device)
    start = flat_params(net)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    options = training_loop.optimizer_options(ADAM, device)
    optimizer = dnnlib.construct_class_by_name(params=net.parameters(), **options)
    images = (torch.rand([8, 3, 8, 8], generator=torch.Generator().manual_seed(3)) * 2 - 1).to(device)
    generator = torch.Generator().manual_seed(5)
    loss_fn, losses, first_grads = training_loop.make_loss(dict(class_name='training.loss.EDMLoss'), net), [], None

    def recorded_loss(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        losses.append(float(loss.detach().double().mean()))
        return loss

    for _ in range(num_steps):
        optimizer.zero_grad(set_to_none=True)
        training_loop.accumulate_gradients(net, recorded_loss, [(images, None, {})], 1, images.shape[0], generator=generator)
        if first_grads is None:
            first_grads = flat_grads(net)
        training_loop.sanitize_gradients(net)
        optimizer.step()
        training_loop.update_ema(ema, net, 0.5)
    return dict(losses=losses, first_grads=first_grads, update=flat_params(net) - start,
                ema_update=flat_params(ema) - start, fused=options.get('fused', False))


@pytest.mark.parametrize('D', [128.0, None])
def test_training_step_matches_cpu(cuda, record_property, D):
    # PFGM++ with a finite D and diffusion: the same losses, gradients and updates on both devices.
    cpu, gpu = train_steps(torch.device('cpu'), D), train_steps(cuda, D)
    assert gpu['fused'] and not cpu['fused']  # CUDA takes the fused Adam kernel, as training does.
    first_loss = abs(gpu['losses'][0] - cpu['losses'][0]) / cpu['losses'][0]
    losses = max(abs(g - c) / c for g, c in zip(gpu['losses'], cpu['losses']))
    grads = rel_l2(gpu['first_grads'], cpu['first_grads'])
    update, ema_update = rel_l2(gpu['update'], cpu['update']), rel_l2(gpu['ema_update'], cpu['ema_update'])
    for name, value in [('first_loss_rel', first_loss), ('loss_rel_max', losses), ('grad_rel_l2', grads),
                        ('update_rel_l2', update), ('ema_update_rel_l2', ema_update)]:
        record_property(name, value)
    assert first_loss <= 1e-5 and grads <= 1e-4, (first_loss, grads)
    assert losses <= 1e-4, (cpu['losses'], gpu['losses'])
    assert update <= 1e-2 and ema_update <= 1e-2, (update, ema_update)
    assert float(cpu['update'].abs().max()) > 1e-4  # The steps really moved the weights.

#----------------------------------------------------------------------------
# What stays float32 under autocast on CUDA (tests/test_precision.py checks the CPU).

@pytest.mark.parametrize('prec', ['bf16', 'fp16'])
def test_embedding_preconditioning_and_loss_stay_float32(cuda, prec):
    net = random_net(D=128.0).to(cuda)
    seen, out = output_dtypes(net, prec, cuda)
    amp = precision.autocast_dtype(prec)
    assert seen == {'emb': torch.float32, 'conv': amp, 'norm': amp}
    assert out.dtype == torch.float32 and out.device.type == 'cuda'
    x, _sigma = inputs()
    # The loss of PFGM++ (D=128) is float32 too, with the noise drawn from a CPU generator.
    loss_fn = training_loop.make_loss(dict(class_name='training.loss.EDMLoss'), net)
    loss = loss_fn(net, x.to(cuda), generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and loss.device.type == 'cuda' and bool(torch.isfinite(loss).all())


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_group_norm_statistics_are_float32(cuda, dtype):
    # A large common offset: the mean must be subtracted with float32 accuracy or the output is ruined.
    x = (100 + torch.randn([2, 64, 32, 32], generator=torch.Generator().manual_seed(0))).to(dtype).to(cuda)
    norm = networks.GroupNorm(64).to(cuda)
    with torch.autocast('cuda', dtype=dtype):
        y = norm(x)
    assert y.dtype == dtype
    ref = torch.nn.functional.group_norm(x.double().cpu(), norm.num_groups, eps=norm.eps)
    mantissa_bits = 7 if dtype == torch.bfloat16 else 10
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-30))) - mantissa_bits)
    assert float(((y.detach().double().cpu() - ref).abs() / ulp).max()) <= 4.0


@pytest.mark.parametrize('D', [1.0, 128.0, 2048.0])
def test_prior_drawn_on_cuda_follows_the_kernel(cuda, D):
    # Per-seed CUDA generators (as generate.py draws the prior): (R / r)^2 ~ BetaPrime(N/2, D/2) with
    # r = sigma_max sqrt(D), N = 3 x 8 x 8.
    sigma_max, N = 80.0, 3 * 8 * 8
    x = rng.StackedRandomGenerator(cuda, range(2000)).prior([3, 8, 8], sigma_max, D)
    assert x.device.type == 'cuda' and x.dtype == torch.float64
    ratio = (x.flatten(1).norm(dim=1) / (sigma_max * math.sqrt(D))).square().cpu().numpy()
    p = scipy.stats.kstest(ratio, scipy.stats.betaprime(N / 2, D / 2).cdf).pvalue
    assert p > 1e-3, p

#----------------------------------------------------------------------------
# Sampling: every image depends only on its seed.

def test_per_seed_sampling_does_not_depend_on_the_batch(cuda, record_property):
    net = tiny_net(D=16.0, label_dim=2).to(cuda)
    seeds = list(range(7))
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    whole = rng.StackedRandomGenerator(cuda, seeds).prior(shape, 80, 16.0)
    parts = torch.cat([rng.StackedRandomGenerator(cuda, part).prior(shape, 80, 16.0) for part in ([0, 1, 2], [3], [4, 5, 6])])
    assert whole.device.type == 'cuda' and torch.equal(whole, parts)  # Prior draws: bitwise per seed.
    kwargs = dict(num_steps=4, S_churn=5)  # Churn draws per-seed noise at every step as well.
    with torch.no_grad():
        ref = generation.sample_batch(net, seeds, kwargs, device=cuda)
        errors = []
        for batches in ([[s] for s in seeds], [[0, 1, 2], [3, 4, 5, 6]]):
            out = torch.cat([generation.sample_batch(net, b, kwargs, device=cuda) for b in batches])
            errors.append(rel_max(out, ref))
    record_property('image_rel_max', max(errors))
    assert max(errors) <= 1e-4, errors
    assert rel_max(ref[1:], ref[:-1]) > 0.1  # Different seeds, different images.

#----------------------------------------------------------------------------
# The fast configuration tracks fp32 on CUDA.

def test_fast_configuration_losses_track_fp32(bars16_zip, tmp_path, cuda, record_property):
    # training_loop() on CUDA, PFGM++ with D=128, 4 steps of 16 images, one DataLoader worker (pinned
    # memory): bf16 + channels-last + torch.compile (inductor) against fp32 eager; the bound of
    # tests/test_train.py.
    losses = {}
    for name, args in [('eager', []), ('fast', ['--precision=bf16', '--channels-last=1', '--compile=1'])]:
        config = loop_config(tmp_path, bars16_zip, '--pfgmpp=1', '--aug_dim=128', '--augment=0.12', '--workers=1', *args)
        config.update(device=cuda, run_dir=str(tmp_path / name), total_kimg=0.064, state_dump_ticks=None)
        (tmp_path / name).mkdir()
        training_loop.training_loop(**config)
        losses[name] = [s['Loss/loss']['mean'] for s in read_stats(str(tmp_path / name))]
    rel = [abs(f - e) / e for f, e in zip(losses['fast'], losses['eager'])]
    record_property('loss_rel_max', max(rel))
    assert len(losses['fast']) == len(losses['eager']) == 4
    assert max(rel) <= 1e-3, losses
    assert losses['fast'] != losses['eager']  # bf16 really ran.
    with open(tmp_path / 'fast' / 'log.txt') as f:
        log = f.read()
    assert 'Precision: bf16, channels-last, torch.compile' in log and 'device cuda' in log

#----------------------------------------------------------------------------
# Two processes under torchrun, resumed bitwise.

def run_deterministic_train(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """train.py through tests/deterministic_train.py under torchrun with `nproc` processes."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
           os.path.join('tests', 'deterministic_train.py'), *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', CUBLAS_WORKSPACE_CONFIG=':4096:8')
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs (NCCL takes one per rank); '
                    'tests/test_train.py resumes two ranks on gloo on the CPU')
def test_torchrun_two_ranks_resume_bitwise(bars16_zip, tmp_path, record_property):
    device = 'cuda'
    record_property('backend', 'nccl, 2 GPUs')
    # 1 kimg in ticks of half a kimg (16-image steps: ticks end at 512 and 1008 images), a training
    # state at each; then the same run resumed from the state at 512 images.
    tiny_args = [a for a in TINY_TRAIN if not a.startswith(('--device=', '--workers=', '--duration=', '--tick='))]
    common = [f'--outdir={tmp_path}', f'--data={bars16_zip}', *tiny_args, f'--device={device}', '--workers=1', '--pfgmpp=1', '--aug_dim=128',
              '--augment=0', '--bench=0', '--tick=0.5', '--snap=0', '--dump=1', '--duration=0.001']
    full = run_deterministic_train([*common, '--name=full'])
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    assert 'Number of ranks:         2' in full.stdout and f'device {device}' in full.stdout
    half = torch.load(tmp_path / 'full' / checkpoint.state_name(0), weights_only=True)
    assert half['cur_nimg'] == 512
    resumed = run_deterministic_train([*common, '--name=resumed', f'--resume={tmp_path / "full" / checkpoint.state_name(0)}'])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert 'Resuming from' in resumed.stdout
    a = torch.load(tmp_path / 'full' / checkpoint.state_name(1), weights_only=True)
    b = torch.load(tmp_path / 'resumed' / checkpoint.state_name(1), weights_only=True)
    assert a['cur_nimg'] == b['cur_nimg'] == 1008
    for key in ('net', 'ema'):
        for name, tensor in a[key]['state_dict'].items():
            assert torch.equal(tensor, b[key]['state_dict'][name]), (key, name)
    assert len(a['optimizer']['state']) == len(b['optimizer']['state']) > 0
    for pa, pb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(t, a['net']['state_dict'][k]) for k, t in half['net']['state_dict'].items())  # It trained on.
    # Both ranks contributed: each of the 496 images of the last tick counts 3*16*16 losses.
    assert read_stats(tmp_path / 'full')[-1]['Loss/loss']['num'] == 496 * 3 * 16 * 16

#----------------------------------------------------------------------------
# generate.py and fid.py on CUDA.

def read_pngs(folder, seeds) -> np.ndarray:
    return np.stack([image_io.load_image(generation.image_path(str(folder), s)).numpy() for s in seeds]).astype(np.float64)


def test_generation_and_fid_features_on_cuda(tmp_path, cuda, record_property):
    snapshot = tmp_path / checkpoint.snapshot_name(100)
    checkpoint.save_network_snapshot(str(snapshot), tiny_net(D=2048.0), kimg=100)
    seeds = list(range(16))
    common = [f'--network={snapshot}', '--seeds=0-15', '--batch=8', '--steps=18', '--device=cuda']
    for name, args in [('fp32', []), ('bf16', ['--precision=bf16', '--channels-last=1'])]:
        result = CliRunner().invoke(generate.main, [*common, f'--outdir={tmp_path / name}', *args])
        assert result.exit_code == 0, result.output
    ref = read_pngs(tmp_path / 'fp32', seeds)
    mse = np.mean((read_pngs(tmp_path / 'bf16', seeds) - ref) ** 2)
    psnr = 10 * np.log10(255 ** 2 / max(mse, 1e-12))
    record_property('bf16_psnr_db', float(psnr))
    assert mse > 0 and psnr >= 45 and len(np.unique(ref)) > 50, psnr  # mse > 0: bf16 really ran (54 dB on the CPU).

    # FID statistics of the fp32 images: fid.py ref on CUDA (one worker) against the CPU.
    detector = tmp_path / 'standin.pt'
    save_standin_detector(detector)
    dest = tmp_path / 'cuda.npz'
    result = CliRunner().invoke(fid.main, ['ref', f'--data={tmp_path / "fp32"}', f'--dest={dest}', f'--detector={detector}',
                                           '--device=cuda', '--workers=1', '--batch=8'])
    assert result.exit_code == 0, result.output
    on_cuda = np.load(dest)
    on_cpu = evaluation.calculate_inception_stats(str(tmp_path / 'fp32'), detector_lib.load_detector(str(detector)), num_workers=0, progress=False)
    errors = [float(np.abs(on_cuda[k] - on_cpu[k]).max() / np.abs(on_cpu[k]).max()) for k in ('mu', 'sigma')]
    record_property('fid_stats_rel_max', max(errors))
    assert max(errors) <= 1e-5, errors

    # The detector itself on CUDA: features of uint8 batches as on the CPU.
    images = torch.from_numpy(noise_images(tmp_path / 'random', 9, np.random.default_rng(0), (40, 215)))
    feats = detector_lib.load_detector(str(detector), device=cuda).features(images)
    assert feats.device.type == 'cuda'
    assert rel_max(feats, detector_lib.load_detector(str(detector)).features(images)) <= 1e-5
