"""torch_utils/rng.py: seed derivation, draws on the generator's device, and the forked global RNG."""

import hashlib

import torch

from torch_utils import rng


def sha256_u64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'little')


def test_derive_seed_is_the_documented_hash_and_separates_every_key():
    # The documented derivation, computed here from the definition: the top 63 of the first 64 bits.
    assert rng.derive_seed(3, 1, 7, 'loss') == sha256_u64('3:1:7:loss') >> 1
    seeds = {rng.derive_seed(s, r, t, k) for s in (0, 1) for r in (0, 1) for t in (0, 1, 2) for k in ('loss', 'global')}
    assert len(seeds) == 24 and all(0 <= x < 2 ** 63 for x in seeds)
    # Keys that a naive seed * K + step scheme would confuse.
    assert rng.derive_seed(1, 0, 0, 'loss') != rng.derive_seed(0, 0, 1, 'loss')


def test_epoch_seed_keeps_the_low_63_bits():
    assert rng.epoch_seed(5, 2) == sha256_u64('5:2') & (2 ** 63 - 1)
    assert len({rng.epoch_seed(s, e) for s in range(3) for e in range(-1, 4)}) == 15


def test_draws_come_from_the_generator_in_order():
    draws = rng.Draws(torch.Generator().manual_seed(4), 'cpu')
    got = [draws.rand(3), draws.randn(2, 2), draws.randint(5, 4)]
    reference = torch.Generator().manual_seed(4)
    expected = [torch.rand(3, generator=reference), torch.randn(2, 2, generator=reference), torch.randint(5, (4,), generator=reference)]
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert got[2].dtype == torch.int64 and draws.rand(2, dtype=torch.float64).dtype == torch.float64


def test_draws_are_made_on_the_generators_device_and_moved():
    # A CPU generator with tensors wanted elsewhere (the meta device stands in for a GPU): the
    # generator advances exactly as for CPU tensors, so the numbers do not depend on the target device.
    gen = torch.Generator().manual_seed(9)
    draws = rng.Draws(gen, 'meta')
    out = draws.randn(5)
    assert out.device.type == 'meta' and draws.draw_device.type == 'cpu'
    reference = torch.Generator().manual_seed(9)
    torch.randn(5, generator=reference)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=reference))
    # Without a generator: the global RNG of the target device.
    assert rng.Draws(None, 'cpu').draw_device.type == 'cpu'


def test_seeded_global_rng_is_reproducible_and_leaves_no_trace():
    torch.manual_seed(123)
    untouched = torch.rand(4)  # What the global generator gives next without the block.
    torch.manual_seed(123)
    with rng.seeded_global_rng(77):
        inside = torch.rand(4)
        dropout = torch.nn.functional.dropout(torch.ones(16), p=0.5, training=True)
    after = torch.rand(4)
    assert torch.equal(after, untouched)
    assert torch.equal(inside, torch.rand(4, generator=torch.Generator().manual_seed(77)))
    with rng.seeded_global_rng(77):
        torch.rand(4)
        assert torch.equal(torch.nn.functional.dropout(torch.ones(16), p=0.5, training=True), dropout)
    with rng.seeded_global_rng(78):
        torch.rand(4)
        assert not torch.equal(torch.nn.functional.dropout(torch.ones(16), p=0.5, training=True), dropout)
