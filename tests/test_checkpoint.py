"""training/checkpoint.py: our plain-data files, and load_network() for them and for the legacy EDM and
PFGM++ pickles, which are refused without allow_pickle and converted into our classes with it."""

import os
import pickle

import pytest
import torch

from torch_utils import persistence
from training import checkpoint, networks
from training.networks_edm2 import EDM2Precond

from helpers import (edm2_legacy_net, import_edm2_module, import_legacy_module, legacy_net, one_sentence, tiny_net, write_edm2_pickle,
                     write_edm_pickle, write_pfgmpp_state)

#----------------------------------------------------------------------------
# Helpers.

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
    assert info == dict(D=D, D_recorded=True, kimg=120, source='snapshot', path=str(path), training_options={'lr': 1e-3})
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
    net = tiny_net(networks.VPPrecond)
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
    with pytest.raises(checkpoint.CheckpointError, match='incomplete or damaged checkpoint'):
        checkpoint.load_network(str(tmp_path / 'truncated.pt'))


def test_names_carry_the_exact_point_and_sort_in_training_order(tmp_path):
    # Whole kimg as EDM names them; otherwise thousandths of a kimg, so no two points share a name.
    assert checkpoint.snapshot_name(2) == 'network-snapshot-000002.pt' and checkpoint.state_name(200000) == 'training-state-200000.pt'
    assert checkpoint.snapshot_name(2.048) == 'network-snapshot-000002.048.pt' and checkpoint.phema_name(0.016) == 'phema-snapshot-000000.016.pt'
    assert checkpoint.samples_dir_name(1.5) == 'ckpt_000001.500' and checkpoint.kimg_tag(1001.001) == '001001.001'
    nimgs = [16, 528, 1000, 1008, 2000, 2048, 2560, 999999, 1000000]
    assert len({checkpoint.kimg_tag(checkpoint.kimg_of(n)) for n in nimgs}) == len(nimgs)
    for n in nimgs:
        assert round(checkpoint.kimg_from_name(checkpoint.snapshot_name(checkpoint.kimg_of(n))) * 1000) == n
        (tmp_path / checkpoint.state_name(checkpoint.kimg_of(n))).write_bytes(b'')
        (tmp_path / checkpoint.samples_dir_name(checkpoint.kimg_of(n))).mkdir()
    for kind in ('state', 'samples'):
        assert [round(k * 1000) for k, _ in checkpoint.find_checkpoints(str(tmp_path), kind)] == nimgs
    assert [round(k * 1000) for k, _ in checkpoint.find_checkpoints(str(tmp_path), 'state', min_kimg=1, max_kimg=2.048)] == [1000, 1008, 2000, 2048]


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
    assert info == dict(D=None, D_recorded=False, kimg=500, source='edm-pickle', path=str(path), training_options=None)
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
# EDM2's snapshot pickles (pixel-space only).

def test_edm2_pickle_needs_allow_pickle_and_converts(tmp_path, monkeypatch):
    module = import_edm2_module(tmp_path / 'mods', monkeypatch)
    legacy = edm2_legacy_net(module, label_dim=2)
    path = tmp_path / 'network-snapshot-0000512.pkl'
    write_edm2_pickle(path, legacy, module)
    with pytest.raises(persistence.UntrustedPickleError, match='--allow-pickle'):
        checkpoint.load_network(str(path))
    net, info = checkpoint.load_network(str(path), allow_pickle=True)
    assert type(net) is EDM2Precond and not persistence.is_persistent(net) and not net.training
    assert info['source'] == 'edm2-pickle' and info['D'] is None and not info['D_recorded']
    assert {k: net.init_kwargs[k] for k in ('model_channels', 'label_dim', 'use_fp16', 'dropout', 'fp16_gains')} == \
        dict(model_channels=16, label_dim=2, use_fp16=True, dropout=0.0, fp16_gains=True)
    assert all(t.dtype == torch.float32 for t in net.state_dict().values())
    with open(path, 'rb') as f:  # EDM2's own way: its pickled float16 network, run as it is.
        edm2 = pickle.load(f)['ema']
    x, sigma, labels = torch.randn([2, 3, 8, 8]), torch.tensor([0.5, 3.0]), torch.eye(2)[[0, 1]]
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), edm2(x, sigma, labels))
        assert torch.equal(net(x, sigma, labels, return_logvar=True)[1], edm2(x, sigma, labels, return_logvar=True)[1])
    # It is ours from then on: a snapshot of ours round-trips it, fp16_gains included.
    checkpoint.save_network_snapshot(str(tmp_path / 'network-snapshot-000001.pt'), net, kimg=1)
    again, _ = checkpoint.load_network(str(tmp_path / 'network-snapshot-000001.pt'))
    with torch.no_grad():
        assert torch.equal(again(x, sigma, labels), edm2(x, sigma, labels))
    pfgmpp, info = checkpoint.load_network(str(path), allow_pickle=True, D=64.0)  # EDM2 records no D: --D decides.
    assert pfgmpp.D == 64.0 and not info['D_recorded']


def test_latent_edm2_pickle_is_refused_in_one_line(tmp_path, monkeypatch):
    module = import_edm2_module(tmp_path / 'mods', monkeypatch)
    monkeypatch.chdir(tmp_path)
    write_edm2_pickle('edm2-img512-xs-2147483-0.135.pkl', edm2_legacy_net(module, img_channels=4), module, latent=True)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_network('edm2-img512-xs-2147483-0.135.pkl', allow_pickle=True)
    assert one_sentence(str(err.value)) and 'StabilityVAEEncoder' in str(err.value) and 'VAE decoder' in str(err.value)

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


def test_transfer_copies_shared_weights_and_refuses_what_does_not_fit():
    # Other seeds, so that a copy that did nothing shows; the target has a class embedding the source lacks.
    source, target = tiny_net(weights='init', seed=0), tiny_net(weights='init', seed=1, label_dim=3)
    assert not torch.equal(source.state_dict()['model.enc.8x8_conv.weight'], target.state_dict()['model.enc.8x8_conv.weight'])
    kept = {k: v.clone() for k, v in target.state_dict().items() if k not in source.state_dict()}
    copied = checkpoint.copy_matching_weights(source, target)
    assert copied == len(source.state_dict()) and kept
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    for k, v in kept.items():
        assert torch.equal(target.state_dict()[k], v)
    with torch.device('meta'):
        wider = tiny_net(weights='init', model_channels=16)
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
