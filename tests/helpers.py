"""What several test modules share, in one place: small datasets, tiny networks, the exact denoiser of
a finite data set, legacy EDM pickles, tiny training runs, a stand-in for the Inception detector, and
the one-sentence rule for user errors. Test modules import from here, never from each other."""

import importlib
import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
import zipfile

import numpy as np
import PIL.features
import PIL.Image
import pytest
import scipy.stats
import torch

from sampling import samplers as sampling
from torch_utils import persistence
from training import checkpoint, networks, pfgmpp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#----------------------------------------------------------------------------
# User errors: one sentence.

def one_sentence(message: str) -> bool:
    """One line of at most 300 characters, ending in a full stop, with no second sentence in it."""
    return '\n' not in message and len(message) <= 300 and message.endswith('.') and '. ' not in message.replace('e.g. ', '')

#----------------------------------------------------------------------------
# Small datasets in the layout dataset_tool.py writes.

# WebP is an optional part of Pillow's build; the tests that write WebP files need it.
needs_webp = pytest.mark.skipif(not PIL.features.check('webp'), reason='Pillow was built without WebP support')


def write_dataset_zip(path, images: np.ndarray, labels=None) -> str:
    """images uint8 [N, H, W, C] (or [N, H, W]) -> an uncompressed dataset ZIP with dataset.json."""
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        names = []
        for i, img in enumerate(images):
            name = f'{i // 1000:05d}/img{i:08d}.png'
            buf = io.BytesIO()
            PIL.Image.fromarray(img.squeeze() if img.ndim == 3 and img.shape[2] == 1 else img).save(buf, format='png', compress_level=0)
            z.writestr(name, buf.getvalue())
            names.append(name)
        meta = {'labels': None if labels is None else [[n, int(c)] for n, c in zip(names, labels)]}
        z.writestr('dataset.json', json.dumps(meta))
    return str(path)


def bars_images(num: int, resolution: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Structured RGB images: class 0 a horizontal bar, class 1 a vertical bar, at random positions
    and colours on a dark background. Returns (uint8 [N, H, W, 3], labels [N])."""
    rng = np.random.default_rng(seed)
    images = np.full([num, resolution, resolution, 3], 16, dtype=np.uint8)
    labels = rng.integers(0, 2, size=num)
    for i in range(num):
        pos = rng.integers(2, resolution - 4)
        colour = rng.integers(128, 256, size=3)
        if labels[i] == 0:
            images[i, pos:pos + 3, :, :] = colour
        else:
            images[i, :, pos:pos + 3, :] = colour
    return images, labels

def noise_images(folder, num: int, gen: np.random.Generator, brightness: tuple, resolution: int = 8) -> np.ndarray:
    """Random PNGs in nested folders, every fourth one grayscale; returns what a detector must see,
    uint8 [N, 3, H, W] in file-name order."""
    expected = []
    for i in range(num):
        base = gen.uniform(*brightness)
        if i % 4 == 0:
            gray = np.clip(base + gen.normal(0, 60, [resolution, resolution]), 0, 255).astype(np.uint8)
            image, seen = PIL.Image.fromarray(gray, 'L'), np.stack([gray] * 3)
        else:
            rgb = np.clip(base + gen.normal(0, 60, [resolution, resolution, 3]), 0, 255).astype(np.uint8)
            image, seen = PIL.Image.fromarray(rgb, 'RGB'), rgb.transpose(2, 0, 1)
        path = os.path.join(folder, f'{i - i % 10:06d}', f'{i:06d}.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path)
        expected.append(seen)
    return np.stack(expected)

#----------------------------------------------------------------------------
# Tiny networks: 8x8 RGB preconditioned U-Nets that run in milliseconds.

# Two resolution levels with attention at 4x4: every layer type in play (numeric checks).
TINY_SONG = dict(model_type='SongUNet', model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0)
TINY_ADM = dict(model_type='DhariwalUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0)
TINY_NCSNPP = dict(TINY_SONG, embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
# One level, no attention: the smallest network, for checkpoints, sampling plumbing and studies.
FLAT_SONG = dict(model_type='SongUNet', model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0)


def tiny_net(precond=networks.EDMPrecond, *, arch: dict = FLAT_SONG, weights: str = 'perturbed', D=None, label_dim: int = 0,
             seed: int = 0, img_resolution: int = 8, img_channels: int = 3, **overrides) -> torch.nn.Module:
    """A tiny preconditioned network in eval mode, built after torch.manual_seed(seed); overrides go to
    the constructor on top of `arch`. weights:
    - 'perturbed': the constructor's plus N(0, 0.05^2), so that the zero-initialised output layers no
      longer hide the rest; gradients off (for checkpoints and sampling);
    - 'random': every parameter replaced by N(0, 0.2^2) from a generator seeded with `seed`, so that
      precision effects reach the output; gradients on (for numeric checks);
    - 'init': the constructor's, gradients off."""
    torch.manual_seed(seed)
    net = precond(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, D=D, **dict(arch, **overrides))
    with torch.no_grad():
        if weights == 'perturbed':
            for param in net.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        elif weights == 'random':
            gen = torch.Generator().manual_seed(seed)
            for param in net.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        elif weights != 'init':
            raise ValueError(weights)
    return net.eval().requires_grad_(weights == 'random')


def random_net(precond=networks.EDMPrecond, **kwargs) -> torch.nn.Module:
    """tiny_net() with TINY_SONG (unless arch says otherwise) and random weights."""
    return tiny_net(precond, **dict(dict(arch=TINY_SONG, weights='random'), **kwargs))


def inputs(batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x [batch, 3, 8, 8] ~ N(0, I) and sigma [batch] spanning low to high noise."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn([batch, 3, 8, 8], generator=gen), torch.tensor([0.01, 0.5, 2.0, 40.0])[:batch]


def output_dtypes(net, precision: str, device='cpu') -> tuple[dict, torch.Tensor]:
    """Run random_net()-shaped `net` under `precision` (torch_utils/precision.py) on inputs(); returns
    ({'emb', 'conv', 'norm': the output dtype of the mapping network, a convolution and a group norm},
    the network's output)."""
    from torch_utils import precision as precision_lib
    seen = {}
    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, output.dtype)
        return hook
    net.model.map_layer1.register_forward_hook(record('emb'))
    net.model.enc['8x8_block0'].conv0.register_forward_hook(record('conv'))
    net.model.enc['8x8_block0'].norm1.register_forward_hook(record('norm'))
    precision_lib.set_network_precision(net, precision)
    x, sigma = inputs()
    return seen, net(x.to(device), sigma.to(device))


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max())


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (L2 norms), in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())

#----------------------------------------------------------------------------
# An exact "network": the posterior mean of a small weighted data set under the PFGM++ kernel.

class OracleNet:
    """net(x, sigma, class_labels) = pfgmpp.ideal_denoiser(x, sigma, data, D, weights), with the
    attributes the samplers and generate.py use. Records the class labels it was called with."""

    def __init__(self, data, D=None, weights=None, label_dim=0, sigma_min=0.0, sigma_max=float('inf')):
        self.data, self.D, self.weights = data, D, weights
        self.img_channels, self.img_resolution = data.shape[1], data.shape[2]
        self.label_dim = label_dim
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.seen_labels = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None):
        self.seen_labels.append(class_labels)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        return pfgmpp.ideal_denoiser(x, sigma, self.data, self.D, self.weights)

    def to(self, *args, **kwargs):
        return self


def make_data(num_points=4, shape=(2, 4, 4), seed=0):
    """num_points points [K, C, H, W] of unit-variance noise: pairwise distances ~ sqrt(2N), far apart."""
    return torch.randn([num_points, *shape], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


WEIGHTS = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)


def nearest_points(x, data):
    """(distance to the nearest data point [B], its index [B])."""
    return torch.cdist(x.reshape(len(x), -1), data.reshape(len(data), -1)).min(1)


def check_lands_on_data(x, data, weights, min_hit=0.99, min_p=1e-3):
    """>= min_hit of the samples within 1e-2 sqrt(N) of a point, hit counts consistent with the weights."""
    N = data[0].numel()
    dist, index = nearest_points(x, data)
    hit = dist < 1e-2 * math.sqrt(N)
    assert hit.double().mean() >= min_hit, f'only {hit.double().mean():.3f} of the samples landed on a data point'
    counts = torch.bincount(index[hit], minlength=len(data)).double()
    expected = weights / weights.sum() * counts.sum()
    p = scipy.stats.chisquare(counts.numpy(), expected.numpy()).pvalue
    assert p > min_p, f'hit counts {counts.tolist()} do not match the weights (chi-square p = {p:.2e})'


def draw_prior(net, D, num, sampler='edm', seed=1, **kwargs):
    sigma = sampling.first_sigma(net, sampler, **kwargs)
    shape = [num, net.img_channels, net.img_resolution, net.img_resolution]
    return pfgmpp.sample_prior(shape, sigma, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def trajectory(sampler, *args, **kwargs):
    """The sampler's main states x_0..x_N, stacked [N + 1, B, ...]: the end points of the exact
    denoiser's samplers are data points, which would hide most differences."""
    states = []
    sampler(*args, callback=lambda i, t, x: states.append(x), **kwargs)
    return torch.stack(states)

#----------------------------------------------------------------------------
# A legacy module in EDM's persistent-pickle format: its classes pickle with the module's source, and
# loading runs that source. The architecture comes from training.networks (a real EDM file embeds its
# whole networks.py); the preconditioner is EDM's, written out, with PFGM++'s extra arguments.

LEGACY_SRC = textwrap.dedent('''\
    # {tag}
    import torch
    from torch_utils import persistence
    from training import networks as _ours

    @persistence.persistent_class
    class SongUNet(_ours.SongUNet):
        pass

    @persistence.persistent_class
    class EDMPrecond(torch.nn.Module):
        def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                     sigma_max=float('inf'), sigma_data=0.5, model_type='SongUNet', pfgmpp=False, D=128,
                     **model_kwargs):
            super().__init__()
            self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
            self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
            self.model = globals()[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                               out_channels=img_channels, label_dim=label_dim, **model_kwargs)

        def forward(self, x, sigma, class_labels=None):
            x = x.to(torch.float32)
            sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
            if self.label_dim == 0:
                class_labels = None
            elif class_labels is None:
                class_labels = torch.zeros([1, self.label_dim])
            c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
            c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
            c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
            F_x = self.model(c_in * x, (sigma.log() / 4).flatten(), class_labels=class_labels)
            return c_skip * x + c_out * F_x.to(torch.float32)

        def round_sigma(self, sigma):
            return torch.as_tensor(sigma)

    @persistence.persistent_class
    class EDMLoss:
        def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
            self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data
    ''')


def import_source(source, prefix, folder, monkeypatch):
    """Write `source` (formatted with a unique tag, so every test has its own module) into folder and
    import it; the module leaves sys.modules and sys.path again after the test."""
    name = f'{prefix}_{uuid.uuid4().hex[:8]}'
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'{name}.py'), 'w') as f:
        f.write(source.format(tag=name))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def import_legacy_module(folder, monkeypatch):
    """LEGACY_SRC (EDM's classes) as a module of its own."""
    return import_source(LEGACY_SRC, 'legacy_networks', folder, monkeypatch)


def legacy_net(module, seed=0, label_dim=0, **kwargs):
    """A legacy EDMPrecond with the weights of tiny_net(seed=seed)."""
    ours = tiny_net(seed=seed, label_dim=label_dim)
    net = module.EDMPrecond(img_resolution=8, img_channels=3, **dict(FLAT_SONG, label_dim=label_dim, **kwargs))
    net.load_state_dict(ours.state_dict())
    return net.eval().requires_grad_(False)


def write_edm_pickle(path, net, module):
    """EDM's network-snapshot-*.pkl: a pickle of a dict with the EMA network and friends."""
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=module.EDMLoss(), augment_pipe=None, dataset_kwargs={}), f)


def write_pfgmpp_state(path, net):
    """PFGM++'s training-state-*.pt: torch.save() of the pickled network and the optimizer state."""
    torch.save(dict(net=net, optimizer_state={}), path)


#----------------------------------------------------------------------------
# A legacy module in EDM2's format: its classes carry EDM2's names and constructor arguments, so that
# pickles of them have EDM2's layout (a snapshot is an EasyDict with 'ema' in float16, 'encoder',
# 'loss_fn', 'dataset_kwargs', as EDM2's training loop writes it). The U-Net comes from
# training.networks_edm2 (a real EDM2 file embeds its whole networks_edm2.py); the preconditioner, the
# loss and the encoders are EDM2's, written out. It imports what EDM2's modules import, so loading its
# pickles here shows that those imports resolve.

EDM2_SRC = textwrap.dedent('''\
    # {tag}
    import numpy as np
    import torch
    import dnnlib
    from torch_utils import persistence
    from torch_utils import misc
    from torch_utils import distributed as dist
    from torch_utils import training_stats
    from training import networks_edm2 as _ours

    @persistence.persistent_class
    class UNet(_ours.UNet):
        pass

    @persistence.persistent_class
    class Precond(torch.nn.Module):
        def __init__(self, img_resolution, img_channels, label_dim, use_fp16=True, sigma_data=0.5, logvar_channels=128,
                     **unet_kwargs):
            super().__init__()
            self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
            self.use_fp16, self.sigma_data = use_fp16, sigma_data
            self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
            self.logvar_fourier = _ours.MPFourier(logvar_channels)
            self.logvar_linear = _ours.MPConv(logvar_channels, 1, kernel=[])

        def forward(self, x, sigma, class_labels=None, force_fp32=False, return_logvar=False):
            x = x.to(torch.float32)
            sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
            if self.label_dim == 0:
                class_labels = None
            elif class_labels is None:
                class_labels = torch.zeros([1, self.label_dim], device=x.device)
            else:
                class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
            dtype = torch.float16 if (self.use_fp16 and not force_fp32 and x.device.type == 'cuda') else torch.float32
            c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
            c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
            c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
            c_noise = sigma.flatten().log() / 4
            F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels)
            D_x = c_skip * x + c_out * F_x.to(torch.float32)
            if return_logvar:
                return D_x, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
            return D_x

    @persistence.persistent_class
    class EDM2Loss:
        def __init__(self, P_mean=-0.4, P_std=1.0, sigma_data=0.5):
            self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    @persistence.persistent_class
    class Encoder:
        def __init__(self):
            pass

        def init(self, device):
            pass

    @persistence.persistent_class
    class StandardRGBEncoder(Encoder):
        def decode(self, x):
            return (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)

    @persistence.persistent_class
    class StabilityVAEEncoder(Encoder):
        def __init__(self, vae_name='stabilityai/sd-vae-ft-mse', raw_mean=[5.81, 3.25, 0.12, -2.15], raw_std=[4.17, 4.62, 3.71, 3.28],
                     final_mean=0, final_std=0.5, batch_size=8):
            super().__init__()
            self.vae_name, self.batch_size, self._vae = vae_name, batch_size, None
            self.scale = np.float32(final_std) / np.float32(raw_std)
            self.bias = np.float32(final_mean) - np.float32(raw_mean) * self.scale
    ''')

# A tiny EDM2 network for 8x8 images: two levels, attention at 4x4 (16 channels, one head); gains non-zero.
TINY_EDM2 = dict(model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4], channels_per_head=16, logvar_channels=8)


def import_edm2_module(folder, monkeypatch):
    """EDM2_SRC (EDM2's classes) as a module of its own."""
    return import_source(EDM2_SRC, 'edm2_networks', folder, monkeypatch)


def edm2_legacy_net(module, seed=0, label_dim=0, img_channels=3, gains=0.3, **kwargs):
    """EDM2's Precond as EDM2's training loop builds it (keyword arguments), TINY_EDM2 (kwargs on top),
    initialised after torch.manual_seed(seed), its zero-initialised gains set to `gains` times 1, 2, 3, ..."""
    torch.manual_seed(seed)
    net = module.Precond(**dict(TINY_EDM2, **kwargs), dropout=0.0, use_fp16=True, img_resolution=8,
                         img_channels=img_channels, label_dim=label_dim)
    with torch.no_grad():
        for i, (name, param) in enumerate(p for p in net.named_parameters() if p[0].endswith('gain')):
            param.fill_(gains * (1 + i))
    return net.eval().requires_grad_(False)


def write_edm2_pickle(path, net, module, latent=False):
    """EDM2's network-snapshot-*.pkl as its training loop writes it: the EMA in float16 beside the
    encoder (StabilityVAEEncoder for a latent model), the loss and the dataset arguments."""
    import copy

    import dnnlib
    encoder = module.StabilityVAEEncoder() if latent else module.StandardRGBEncoder()
    data = dnnlib.EasyDict(encoder=encoder, dataset_kwargs=dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path='x'),
                           loss_fn=module.EDM2Loss())
    data.ema = copy.deepcopy(net).cpu().eval().requires_grad_(False).to(torch.float16)
    with open(path, 'wb') as f:
        pickle.dump(data, f)


def save_state(path, net, kimg):
    """A training state in our format, as far as load_network() reads it."""
    data = dict(format=checkpoint.STATE_FORMAT, version=1, net=checkpoint.network_to_dict(net),
                ema=checkpoint.network_to_dict(net), optimizer={}, kimg=kimg)
    checkpoint.save_atomic(data, str(path))

#----------------------------------------------------------------------------
# Tiny training runs: 8x8 data (the bars_zip fixture), 8 base channels, one resolution level, 16 images per step.

TINY_TRAIN = ['--cond=1', '--arch=ddpmpp', '--cbase=8', '--cres=1', '--batch=16', '--tick=1', '--lr=2e-3',
              '--lr-rampup=0', '--ema=0.0005', '--dropout=0', '--workers=0', '--device=cpu', '--seed=3',
              '--duration=0.001']  # Every test that trains longer says so; a mistake never trains for 200 Mimg.


def run_train(args, timeout=240, torchrun=False) -> subprocess.CompletedProcess:
    """train.py in a fresh process (with torchrun: two ranks on gloo), one thread per process."""
    cmd = [sys.executable, 'train.py', *args]
    if torchrun:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py', *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))


def train_here(args):
    """train.py's command line run in this process (click's CliRunner): a tiny run without a new
    interpreter's start-up; the click Result (exit_code, output) comes back."""
    from click.testing import CliRunner

    import train
    return CliRunner().invoke(train.main, [str(a) for a in args])


def read_stats(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]


def loop_config(tmp_path, bars_zip, *args):
    """training_loop() arguments for TINY_TRAIN plus args, one tick per 16-image step, states every tick;
    for runs shorter than train.py's 1-kimg unit, called in-process."""
    import train
    from training import launch
    ctx = train.main.make_context('train.py', [f'--outdir={tmp_path}', f'--data={bars_zip}', *TINY_TRAIN, *args])
    params = {k: v for k, v in ctx.params.items() if k != 'debug'}
    config = launch.setup_training_config(launch.TrainOptions(**params), world_size=1)
    config.update(kimg_per_tick=0.016, snapshot_ticks=None, state_dump_ticks=1, device=torch.device('cpu'))
    return config


def assert_same_states(path_a, path_b):
    """Two training states with bitwise equal progress, weights, EMA and Adam state."""
    a, b = (torch.load(p, weights_only=True) for p in (path_a, path_b))
    assert a['cur_nimg'] == b['cur_nimg'] and a['cur_tick'] == b['cur_tick']
    for key in ('net', 'ema'):
        for name, tensor in a[key]['state_dict'].items():
            assert torch.equal(tensor, b[key]['state_dict'][name]), (key, name)
    assert a['optimizer']['state'].keys() == b['optimizer']['state'].keys() and len(a['optimizer']['state']) > 0
    for pa, pb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)

#----------------------------------------------------------------------------
# A stand-in detector with Inception-v3's call signature: uint8 images of any size in, features (or
# class probabilities) out.

@persistence.persistent_class
class StandInDetector(torch.nn.Module):
    def __init__(self, feature_dim: int = 8, num_classes: int = 5, seed: int = 123):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Parameter(torch.randn([feature_dim, 3, 3, 3], generator=gen) * 0.5)
        self.fc = torch.nn.Parameter(torch.randn([num_classes, feature_dim], generator=gen))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = x.to(torch.float32) / 127.5 - 1
        features = torch.tanh(torch.nn.functional.conv2d(x, self.conv, padding=1)).mean(dim=[2, 3])
        if return_features:
            return features
        return torch.softmax(features @ self.fc.T * 4, dim=1)


def save_standin_detector(path, **kwargs) -> str:
    """StandInDetector(**kwargs) as TorchScript at path (what fid.py loads without --allow-pickle)."""
    torch.jit.save(torch.jit.script(StandInDetector(**kwargs)), str(path))
    return str(path)
