"""training/checkpoint.py: our plain-data files, and load_network() for them and for the legacy EDM and
PFGM++ pickles, which are refused without allow_pickle and converted into our classes with it.

The helpers here (tiny networks, a legacy module in EDM's persistent-pickle format) are shared with
tests/test_generate.py."""

import importlib
import os
import pickle
import sys
import textwrap
import uuid

import pytest
import torch

from torch_utils import persistence
from training import checkpoint, networks

#----------------------------------------------------------------------------
# Tiny networks.

TINY = dict(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=8, channel_mult=[1],
            num_blocks=1, attn_resolutions=[], dropout=0)


def tiny_net(D=None, label_dim=0, seed=0, cls=networks.EDMPrecond, **kwargs):
    """A tiny EDMPrecond (8x8 RGB, 8 channels) whose weights are all visibly non-zero, so its
    output depends on every layer."""
    torch.manual_seed(seed)
    net = cls(**dict(TINY, label_dim=label_dim, D=D, **kwargs))
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return net.eval().requires_grad_(False)


def save_state(path, net, kimg):
    """A training state in our format, as far as load_network() reads it."""
    data = dict(format=checkpoint.STATE_FORMAT, version=1, net=checkpoint.network_to_dict(net),
                ema=checkpoint.network_to_dict(net), optimizer={}, kimg=kimg)
    checkpoint.save_atomic(data, str(path))


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


def import_legacy_module(folder, monkeypatch):
    """Write LEGACY_SRC (with a unique tag, so every test has its own source) and import it."""
    name = f'legacy_networks_{uuid.uuid4().hex[:8]}'
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'{name}.py'), 'w') as f:
        f.write(LEGACY_SRC.format(tag=name))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)  # Removed again after the test.
    return module


def legacy_net(module, seed=0, label_dim=0, **kwargs):
    """A legacy EDMPrecond with the weights of tiny_net(seed=seed)."""
    ours = tiny_net(seed=seed, label_dim=label_dim)
    net = module.EDMPrecond(**dict({k: v for k, v in TINY.items()}, label_dim=label_dim, **kwargs))
    net.load_state_dict(ours.state_dict())
    return net.eval().requires_grad_(False)


def write_edm_pickle(path, net, module):
    """EDM's network-snapshot-*.pkl: a pickle of a dict with the EMA network and friends."""
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=module.EDMLoss(), augment_pipe=None, dataset_kwargs={}), f)


def write_pfgmpp_state(path, net):
    """PFGM++'s training-state-*.pt: torch.save() of the pickled network and the optimizer state."""
    torch.save(dict(net=net, optimizer_state={}), path)


def outputs(net, seed=0, label_dim=0):
    x = torch.randn([2, 3, 8, 8], generator=torch.Generator().manual_seed(seed)) * 3
    labels = torch.eye(label_dim)[[0, label_dim - 1]] if label_dim else None
    return net(x, torch.tensor([0.5, 3.0]), labels)

#----------------------------------------------------------------------------
# Our files.

@pytest.mark.parametrize('D', [None, 2048.0])
def test_snapshot_round_trip(tmp_path, D):
    net = tiny_net(D=D, label_dim=3)
    path = tmp_path / checkpoint.snapshot_name(120)
    checkpoint.save_network_snapshot(str(path), net, kimg=120, training_options={'lr': 1e-3})
    data = torch.load(path, weights_only=True)
    assert data['format'] == checkpoint.SNAPSHOT_FORMAT and data['D'] == D and data['kimg'] == 120
    assert (data['img_resolution'], data['img_channels'], data['label_dim']) == (8, 3, 3)
    assert data['training_options'] == {'lr': 1e-3}
    loaded, info = checkpoint.load_network(str(path))
    assert type(loaded) is networks.EDMPrecond and loaded.D == D and not loaded.training
    assert info == dict(D=D, D_recorded=True, kimg=120, source='snapshot', path=str(path))
    assert torch.equal(outputs(loaded, label_dim=3), outputs(net, label_dim=3))


def test_training_state_uses_the_ema(tmp_path):
    net = tiny_net(D=16)
    path = tmp_path / checkpoint.state_name(300)
    data = dict(format=checkpoint.STATE_FORMAT, version=1, net=checkpoint.network_to_dict(tiny_net(seed=1, D=16)),
                ema=checkpoint.network_to_dict(net), optimizer={})
    checkpoint.save_atomic(data, str(path))
    loaded, info = checkpoint.load_network(str(path))
    assert info['source'] == 'training-state' and info['kimg'] == 300 and info['D'] == 16
    assert torch.equal(outputs(loaded), outputs(net))


def test_file_url_and_other_preconditioners(tmp_path):
    net = tiny_net(cls=networks.VPPrecond)
    path = tmp_path / 'net.pt'
    checkpoint.save_network_snapshot(str(path), net)
    loaded, info = checkpoint.load_network(path.as_uri())
    assert type(loaded) is networks.VPPrecond and info['kimg'] is None
    assert torch.equal(outputs(loaded), outputs(net))


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load_network(str(tmp_path / 'missing.pt'))
    (tmp_path / 'text.pt').write_text('not a checkpoint')
    with pytest.raises(checkpoint.CheckpointError, match='neither'):
        checkpoint.load_network(str(tmp_path / 'text.pt'))
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'foreign.pt')
    with pytest.raises(checkpoint.CheckpointError, match='not a checkpoint of this project'):
        checkpoint.load_network(str(tmp_path / 'foreign.pt'))
    path = tmp_path / 'network-snapshot-000001.pt'
    checkpoint.save_network_snapshot(str(path), tiny_net())
    (tmp_path / 'truncated.pt').write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises((checkpoint.CheckpointError, FileNotFoundError)):
        checkpoint.load_network(str(tmp_path / 'truncated.pt'))


def test_kimg_from_name():
    assert checkpoint.kimg_from_name('run/network-snapshot-000200.pt') == 200
    assert checkpoint.kimg_from_name('network-snapshot-001000.pkl') == 1000
    assert checkpoint.kimg_from_name('training-state-000050.pt') == 50
    assert checkpoint.kimg_from_name('network-snapshot-latest.pt') is None

#----------------------------------------------------------------------------
# Legacy files.

def test_edm_pickle_needs_allow_pickle_and_converts(tmp_path, monkeypatch):
    module = import_legacy_module(tmp_path / 'mods', monkeypatch)
    legacy = legacy_net(module, label_dim=2)
    path = tmp_path / 'network-snapshot-000500.pkl'
    write_edm_pickle(path, legacy, module)
    with pytest.raises(persistence.UntrustedPickleError, match='--allow-pickle'):
        checkpoint.load_network(str(path))
    net, info = checkpoint.load_network(str(path), allow_pickle=True)
    assert type(net) is networks.EDMPrecond and not persistence.is_persistent(net)
    assert info == dict(D=None, D_recorded=False, kimg=500, source='edm-pickle', path=str(path))
    assert net.init_kwargs['model_channels'] == 8 and net.label_dim == 2
    assert torch.equal(outputs(net, label_dim=2), outputs(legacy, label_dim=2))


@pytest.mark.parametrize('pfgmpp_kwargs,D,recorded', [
    (dict(pfgmpp=True, D=2048), 2048.0, True),
    (dict(pfgmpp=False, D=128), None, True),
    ({}, None, False),
])
def test_pfgmpp_training_state_needs_allow_pickle_and_converts(tmp_path, monkeypatch, pfgmpp_kwargs, D, recorded):
    module = import_legacy_module(tmp_path / 'mods', monkeypatch)
    legacy = legacy_net(module, **pfgmpp_kwargs)
    path = tmp_path / 'training-state-000250.pt'
    write_pfgmpp_state(path, legacy)
    with pytest.raises(persistence.UntrustedPickleError, match='--allow-pickle'):
        checkpoint.load_network(str(path))
    net, info = checkpoint.load_network(str(path), allow_pickle=True)
    assert type(net) is networks.EDMPrecond and net.D == D and 'pfgmpp' not in net.init_kwargs
    assert info['source'] == 'pfgmpp-training-state' and info['D'] == D and info['D_recorded'] == recorded and info['kimg'] == 250
    assert torch.equal(outputs(net), outputs(legacy))


def test_legacy_file_without_a_network(tmp_path, monkeypatch):
    module = import_legacy_module(tmp_path / 'mods', monkeypatch)
    path = tmp_path / 'loss.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(loss_fn=module.EDMLoss()), f)
    with pytest.raises(checkpoint.CheckpointError, match='no network'):
        checkpoint.load_network(str(path), allow_pickle=True)
    with pytest.raises(checkpoint.CheckpointError, match='not one of'):
        checkpoint.network_from_legacy(torch.nn.Linear(2, 2))

#----------------------------------------------------------------------------

def test_state_architecture_check():
    kwargs = dict(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=8, channel_mult=[1],
                  num_blocks=1, attn_resolutions=[], dropout=0.0)
    net = networks.EDMPrecond(**kwargs)
    state = dict(net=checkpoint.network_to_dict(net))
    checkpoint.check_same_architecture(state, networks.EDMPrecond(**kwargs), 'x.pt')
    with pytest.raises(checkpoint.CheckpointError, match='another architecture.*model_channels'):
        checkpoint.check_same_architecture(state, networks.EDMPrecond(**dict(kwargs, model_channels=16)), 'x.pt')
    with pytest.raises(checkpoint.CheckpointError, match='another architecture.*VEPrecond'):
        checkpoint.check_same_architecture(state, networks.VEPrecond(**kwargs), 'x.pt')


def small_net(**overrides):
    kwargs = dict(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=8, channel_mult=[1],
                  num_blocks=1, attn_resolutions=[], dropout=0.0)
    return networks.EDMPrecond(**dict(kwargs, **overrides))


def test_transfer_copies_shared_weights_and_refuses_what_does_not_fit():
    torch.manual_seed(0)
    source, target = small_net(), small_net(label_dim=3)  # The target has a class embedding the source lacks.
    kept = {k: v.clone() for k, v in target.state_dict().items() if k not in source.state_dict()}
    copied = checkpoint.copy_matching_weights(source, target)
    assert copied == len(source.state_dict()) and kept
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    for k, v in kept.items():
        assert torch.equal(target.state_dict()[k], v)
    with torch.device('meta'):
        wider = small_net(model_channels=16)
    with pytest.raises(checkpoint.CheckpointError, match='does not fit.*differ in shape'):
        checkpoint.check_transfer_fits(source, wider, 'src.pt')
    with pytest.raises(checkpoint.CheckpointError, match='no names in common'):
        checkpoint.check_transfer_fits(torch.nn.Linear(2, 2), target, 'src.pt')


def test_find_checkpoints_by_kind(tmp_path):
    for name in ['network-snapshot-000010.pt', 'network-snapshot-000010.pkl', 'training-state-000010.pt',
                 'network-snapshot-000020.pkl', 'training-state-000030.pkl', 'training-state-000040.pt',
                 'training-state-000040.pt.tmp', 'notes.txt']:
        (tmp_path / name).write_bytes(b'')
    for name in ['ckpt_000010', 'ckpt_000020']:
        (tmp_path / name).mkdir()
    (tmp_path / 'ckpt_000030').write_bytes(b'')  # A file, not an image folder.
    found = lambda kind, **kw: [(k, os.path.basename(p)) for k, p in checkpoint.find_checkpoints(str(tmp_path), kind, **kw)]
    assert found('network') == [(10, 'network-snapshot-000010.pt'), (20, 'network-snapshot-000020.pkl'),
                                (30, 'training-state-000030.pkl'), (40, 'training-state-000040.pt')]
    assert found('network', min_kimg=15, max_kimg=30) == [(20, 'network-snapshot-000020.pkl'), (30, 'training-state-000030.pkl')]
    assert found('state') == [(10, 'training-state-000010.pt'), (40, 'training-state-000040.pt')]
    assert found('samples') == [(10, 'ckpt_000010'), (20, 'ckpt_000020')]
    assert checkpoint.find_checkpoints(str(tmp_path / 'missing'), 'network') == []
    with pytest.raises(ValueError, match='kind'):
        checkpoint.find_checkpoints(str(tmp_path), 'snapshots')
