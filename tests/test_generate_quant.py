"""generate_quant.py: the published PFGM++ quantisation rule against fixtures computed with the published
code, the laws of both scopes, the count printout and every bad input."""

import json
import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import generate
import generate_quant
from sampling import generation, quantization
from torch_utils import image_io
from training import checkpoint, networks

from helpers import tiny_net

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'pfgmpp_quant')
EDM_MANIFESTS = os.path.join(os.path.dirname(__file__), 'fixtures', 'edm_compat', 'manifests.json')


def load_fixture(name='ddpmpp_32'):
    """(network with the fixture's weights, manifest entry, weights) for one fixture network."""
    with open(os.path.join(FIXTURE_DIR, 'manifest.json')) as f:
        entry = json.load(f)[name]
    weights = dict(np.load(os.path.join(FIXTURE_DIR, f'{name}.weights.npz')))
    net = networks.EDMPrecond(**entry['kwargs'])
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return net.eval().requires_grad_(False), entry, weights


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def read_pngs(folder, seeds) -> np.ndarray:
    return np.stack([image_io.load_image(generation.image_path(str(folder), s)).numpy() for s in seeds]).astype(np.float64)


def run_cli(args):
    result = CliRunner().invoke(generate_quant.main, args)
    return result.exit_code, result.output

#----------------------------------------------------------------------------
# The published rule against the published code's output.

def test_published_rule_matches_fixture():
    net, entry, weights = load_fixture()
    assert quantization.quantised_names(net) == [n for n, _ in net.named_parameters() if n in set(entry['quantised'])]
    assert set(quantization.quantised_names(net)) == set(entry['quantised'])
    assert {n for n, _ in net.named_parameters()} - set(entry['quantised']) == set(entry['not_quantised'])
    before = state(net)
    worst = {}
    for bits in range(4, 10):
        ref = np.load(os.path.join(FIXTURE_DIR, f'ddpmpp_32.bits{bits}.npz'))
        assert set(ref.files) == set(entry['quantised'])
        quantised = quantization.quantize_weights(net, bits, scope='published').state_dict()
        worst[bits] = max(float(np.abs(quantised[n].numpy() - ref[n]).max()) for n in entry['quantised'])
        for name in quantised:  # Everything else, buffers included, is bit-identical.
            if name not in entry['quantised']:
                assert np.array_equal(quantised[name].numpy(), weights[name]), name
    # Measured: 0 for every bit width (the same float32 arithmetic as the published code).
    assert max(worst.values()) <= 1e-6, worst
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # The original is untouched.


def cifar10_ncsnpp_on_meta():
    """The network of the published CIFAR-10 study (EDM's NCSN++, augment_dim 9) on the meta device,
    and its manifest entry."""
    with open(EDM_MANIFESTS) as f:
        entry = json.load(f)['cifar10-uncond-ncsnpp-edm']
    with torch.device('meta'):
        net = networks.EDMPrecond(img_resolution=entry['img_resolution'], img_channels=entry['img_channels'],
                                  label_dim=entry['label_dim'], **entry['network_kwargs'])
    return net, entry


def test_published_rule_on_cifar10_ncsnpp():
    # The network of the published CIFAR-10 study (EDM's NCSN++ with augment_dim=9), built on the meta
    # device: the rule keeps 73 of its 421 parameter tensors, 65.1% of the parameters, in the study.
    net, entry = cifar10_ncsnpp_on_meta()
    counts = quantization.quantisation_counts(net)
    assert (counts['tensors'], counts['total_tensors']) == (73, 421)
    assert counts['total_params'] == entry['num_parameters']
    assert round(100 * counts['params'] / counts['total_params'], 1) == 65.1
    names = quantization.quantised_names(net)
    assert not any('32x32' in n or '.map_' in n or '.bias' in n or 'norm' in n for n in names)

#----------------------------------------------------------------------------
# The laws of the two quantisers.

def test_published_quantiser_laws():
    gen = torch.Generator().manual_seed(0)
    for bits in (2, 4, 5, 8, 9, 16):
        q_max = 2 ** bits - 1
        for w in [torch.randn(4000, generator=gen) * 0.1, torch.rand(3000, generator=gen) - 0.3, torch.rand(3000, generator=gen) - 0.7]:
            w[::97] = 0  # Exact zeros in the tensor.
            y = quantization.quantize_tensor_zero_point(w, bits)
            assert y.dtype == w.dtype and y.shape == w.shape
            assert torch.all(y[::97] == 0)  # 0.0 maps to 0.0 exactly.
            assert len(torch.unique(y)) <= 2 ** bits
            # Every value is an integer multiple of the scale, within one integer range of 2^bits levels.
            # (Up to float32 rounding of the products, 2^-24 relative.)
            scale = float((w.max() - w.min()) / q_max)
            j = y.double() / scale
            assert float((j - j.round()).abs().max()) < 1e-4 + 2 ** (bits - 23)
            assert float(j.round().max() - j.round().min()) <= q_max
            # The grid covers [min w, max w] except below its lowest level, less than one level above min w.
            lowest = float(y.min())
            assert float(w.min()) <= lowest + 1e-7 and lowest < float(w.min()) + scale
            err = (y.double() - w.double()).abs()
            assert float(err.max()) <= scale * (1 + 1e-4)
            assert float(err[w.double() >= lowest].max()) <= scale * (0.5 + 2 ** (bits - 22)) + 1e-7
    # A tensor of one sign: the grid still holds 0, so it spans [0, max - min] (hand-computed, 4 bits).
    y = quantization.quantize_tensor_zero_point(torch.tensor([1.0, 1.5, 2.0]), 4)
    assert torch.allclose(y, torch.tensor([1.0, 1.0, 1.0]))
    y = quantization.quantize_tensor_zero_point(torch.tensor([-0.3, 0.0, 0.2, 0.7]), 2)  # scale 1/3, zero point 0.
    assert torch.allclose(y, torch.tensor([0.0, 0.0, 1 / 3, 2 / 3]))
    # A constant tensor (the published scale would be 0) and an empty one stay as they are.
    assert torch.equal(quantization.quantize_tensor_zero_point(torch.full([4], 0.3), 4), torch.full([4], 0.3))
    assert quantization.quantize_tensor_zero_point(torch.zeros(0), 4).numel() == 0


def test_min_max_quantiser_laws():
    w = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    for bits in (2, 4, 8, 16):
        y = quantization.quantize_tensor_min_max(w, bits)
        step = float(w.max() - w.min()) / (2 ** bits - 1)
        assert len(torch.unique(y)) <= 2 ** bits and float((y - w).abs().max()) <= step / 2 + 1e-6
        assert float(y.min()) == float(w.min()) and float(y.max()) == pytest.approx(float(w.max()), abs=1e-6)
    assert torch.equal(quantization.quantize_tensor_min_max(torch.full([4], 0.3), 4), torch.full([4], 0.3))


def test_scopes_on_a_network():
    net = tiny_net()
    before = state(net)
    params = dict(net.named_parameters())
    published = set(quantization.quantised_names(net, 'published'))
    assert published and published < set(params)
    for bits in (2, 5):
        # 'all': every floating-point parameter, today's law (at most 2^k values, min and max kept).
        q_all = dict(quantization.quantize_weights(net, bits, scope='all').named_parameters())
        for name, p in params.items():
            assert len(torch.unique(q_all[name])) <= 2 ** bits, name
            assert float(q_all[name].min()) == float(p.min()) and float(q_all[name].max()) == pytest.approx(float(p.max()), abs=1e-6)
        # 'published': only its tensors change, each to at most 2^k values.
        q_pub = dict(quantization.quantize_weights(net, bits).named_parameters())
        for name, p in params.items():
            if name in published:
                assert len(torch.unique(q_pub[name])) <= 2 ** bits and not torch.equal(q_pub[name], p), name
            else:
                assert torch.equal(q_pub[name], p), name
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # The original is untouched.


def test_finest_scope_is_the_published_rule_at_any_resolution():
    # On CIFAR-10's NCSN++ (32x32) 'finest' selects exactly the published rule's tensors; on 8x8 data
    # it keeps the 8x8 layers exact, which the published '32' rule quantises.
    net, _entry = cifar10_ncsnpp_on_meta()
    assert quantization.quantised_names(net, 'finest') == quantization.quantised_names(net, 'published')
    small = tiny_net(channel_mult=[1, 2])  # Levels at 8x8 and 4x4.
    finest, published = set(quantization.quantised_names(small, 'finest')), set(quantization.quantised_names(small, 'published'))
    assert finest and finest < published and not any('8x8' in n for n in finest) and any('8x8' in n for n in published)
    quantised = dict(quantization.quantize_weights(small, 4, scope='finest').named_parameters())
    for name, p in small.named_parameters():
        assert torch.equal(quantised[name], p) == (name not in finest), name
    with pytest.raises(ValueError, match='image resolution'):
        quantization.is_quantised('model.enc.8x8_conv.weight', torch.zeros(1), 'finest')


def test_bad_scope_and_bits_raise_value_error():
    net = tiny_net()
    with pytest.raises(ValueError, match='Unknown quantisation scope'):
        quantization.quantize_weights(net, 4, scope='weights')
    for bits in (1, 17, 0, -3):
        with pytest.raises(ValueError, match='2 to 16 bits'):
            quantization.quantize_weights(net, bits)
    with pytest.raises(ValueError, match='inf or NaN'):
        quantization.quantize_tensor_zero_point(torch.tensor([0.0, float('nan')]), 4)

#----------------------------------------------------------------------------
# The command line.

COUNT_LINE = re.compile(r'^(bits_\d+(?:_all)?): quantised (\d+) of (\d+) tensors, ([\d,]+) of ([\d,]+) parameters \(([\d.]+)%\)$', re.M)


@pytest.fixture(scope='module')
def fixture_snapshot(tmp_path_factory):
    path = tmp_path_factory.mktemp('quant') / checkpoint.snapshot_name(10)
    checkpoint.save_network_snapshot(str(path), load_fixture()[0], kimg=10)
    return str(path)


def test_cli_prints_counts_and_writes_folders(tmp_path, fixture_snapshot):
    # The independent count: the fixture manifest's lists and the sizes of the saved weights.
    _, entry, weights = load_fixture()
    n_params = sum(weights[n].size for n in entry['quantised'])
    total = sum(weights[n].size for n in entry['quantised'] + entry['not_quantised'])
    n_tensors = len(entry['quantised']) + len(entry['not_quantised'])
    common = [f'--network={fixture_snapshot}', f'--outdir={tmp_path}', '--seeds=0', '--steps=2', '--device=cpu']
    code, out = run_cli([*common, '--bits=5,4'])
    assert code == 0, out
    lines = COUNT_LINE.findall(out)
    expected = (str(len(entry['quantised'])), str(n_tensors), f'{n_params:,}', f'{total:,}', f'{100 * n_params / total:.1f}')
    assert lines == [('bits_5', *expected), ('bits_4', *expected)], out
    code, out = run_cli([*common, '--bits=4', '--scope=all'])
    assert code == 0, out
    assert COUNT_LINE.findall(out) == [('bits_4_all', str(n_tensors), str(n_tensors), f'{total:,}', f'{total:,}', '100.0')], out
    assert sorted(os.listdir(tmp_path)) == ['bits_4', 'bits_4_all', 'bits_5']
    assert all(sorted(os.listdir(tmp_path / f)) == ['000000.png', 'generate.json'] for f in ['bits_4', 'bits_4_all', 'bits_5'])


def test_quantised_sampling_changes_the_images_as_far_as_the_bits_say(tmp_path):
    # The same seeds from the unquantised network (generate.py) and from 4-, 8- and 16-bit copies: the
    # images move further the fewer the bits. Sampling the original network in place of the quantised
    # one would leave every folder equal to the unquantised images. (A tiny network with every weight
    # perturbed: the fixture's zero-initialised, unquantised output layer would hide everything.)
    snapshot = tmp_path / checkpoint.snapshot_name(1)
    checkpoint.save_network_snapshot(str(snapshot), tiny_net(D=128.0), kimg=1)
    common = [f'--network={snapshot}', '--seeds=0-7', '--steps=4', '--device=cpu']
    assert CliRunner().invoke(generate.main, [*common, f'--outdir={tmp_path / "fp32"}']).exit_code == 0
    code, out = run_cli([*common, f'--outdir={tmp_path}', '--bits=4,8,16'])
    assert code == 0, out
    ref = read_pngs(tmp_path / 'fp32', range(8))
    mse = {k: float(np.mean((read_pngs(tmp_path / f'bits_{k}', range(8)) - ref) ** 2)) for k in (4, 8, 16)}
    assert mse[4] > mse[8] > 0 and mse[8] >= mse[16] and mse[4] > 1, mse  # Measured: 34.7, 0.19 and 0 (8-bit levels squared).
    assert 10 * np.log10(255 ** 2 / max(mse[16], 1e-12)) > 40, mse  # 16 bits: a rounding of the weights.


def test_cli_defaults():
    params = {p.name: p for p in generate_quant.main.params}
    assert params['bits'].default == '5,6,7,8,9' and params['scope'].default == 'published'


@pytest.mark.parametrize('arg,fragment', [('--scope=weights', "'weights' is not one of"), ('--bits=1', '2 to 16'),
                                          ('--bits=5,17', '2 to 16'), ('--bits=0', '2 to 16'), ('--bits=x', 'not a list')])
def test_cli_bad_input_is_one_line(tmp_path, fixture_snapshot, arg, fragment):
    code, out = run_cli([f'--network={fixture_snapshot}', f'--outdir={tmp_path / "out"}', '--device=cpu', arg])
    errors = [line for line in out.splitlines() if line.startswith('Error: ')]
    assert code != 0 and 'Traceback' not in out and len(errors) == 1 and fragment in errors[0], out
    assert not os.path.exists(tmp_path / 'out')
