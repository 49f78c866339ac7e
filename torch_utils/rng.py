"""Randomness: the one place that derives seeds and draws from explicit generators.

Every random number of training and sampling comes from a torch.Generator seeded from the user's
--seed (and the sample's seed when generating), never from hidden global state:

- derive_seed(seed, rank, step, stream): the seed of one random stream ('loss', 'global') of one
  rank at one training step, so that a step's draws depend on nothing but these four values and a
  resumed run repeats them exactly;
- epoch_seed(seed, epoch): the seed of the data order's permutation in one epoch;
- Draws(generator, device): uniform, normal and integer draws made on the generator's device and then
  moved to `device`, so that a CPU generator gives the same numbers whatever device the tensors are on;
- seeded_global_rng(seed, device): for code that can only use torch's global generator (dropout inside
  the networks), a fork of the global state seeded for one step and restored afterwards;
- StackedRandomGenerator(device, seeds): one generator per sample seed (generation), so that sample
  i depends on seeds[i] alone, whatever the batch.
"""

import contextlib
import hashlib
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

__all__ = ['make_generator', 'derive_seed', 'epoch_seed', 'Draws', 'seeded_global_rng', 'StackedRandomGenerator']

_MASK_63 = (1 << 63) - 1

#----------------------------------------------------------------------------

def make_generator(seed: int, device: torch.device | str = 'cpu') -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: the only source of randomness we pass around."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen

#----------------------------------------------------------------------------
# Seeds: SHA-256 of the stream's key, so that nearby keys give unrelated streams and no two keys share
# one by arithmetic coincidence (as seed * K + step can).

def _hash_u64(*keys: object) -> int:
    """The first 8 bytes of SHA-256('k1:k2:...') as an unsigned little-endian integer."""
    digest = hashlib.sha256(':'.join(str(k) for k in keys).encode()).digest()
    return int.from_bytes(digest[:8], 'little')


def derive_seed(seed: int, rank: int, step: int, stream: str) -> int:
    """A 63-bit seed for one random stream of one rank at one training step."""
    return _hash_u64(seed, rank, step, stream) >> 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for the permutation of the data in epoch `epoch` (epoch -1: the data loader's own
    generator). The low 63 bits rather than the high ones, as training runs have always used."""
    return _hash_u64(int(seed), int(epoch)) & _MASK_63

#----------------------------------------------------------------------------
# Draws from an explicit generator.

class Draws:
    """Random tensors from `generator` (torch's global RNG of `device` when None), drawn on the
    generator's device and returned on `device`."""

    def __init__(self, generator: Optional[torch.Generator], device: torch.device | str):
        self.generator = generator
        self.device = torch.device(device)
        self.draw_device = generator.device if generator is not None else self.device

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U[0, 1) of `shape`."""
        return torch.rand(shape, generator=self.generator, device=self.draw_device, dtype=dtype).to(self.device)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, 1) of `shape`."""
        return torch.randn(shape, generator=self.generator, device=self.draw_device, dtype=dtype).to(self.device)

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Integers uniform on {0, ..., high - 1}, int64, of `shape`."""
        return torch.randint(high, shape, generator=self.generator, device=self.draw_device).to(self.device)

#----------------------------------------------------------------------------
# Global state, forked.

@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device | str = 'cpu') -> Iterator[None]:
    """Inside: torch's global CPU generator (and that of `device`, if a GPU) seeded with `seed`, so that
    code drawing from global state (dropout, EDM's label dropout) is reproducible. Outside: the
    global state exactly as it was before, as though nothing had been drawn."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=cuda, device_type='cuda'):
        torch.random.default_generator.manual_seed(int(seed))
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(int(seed))
        yield

#----------------------------------------------------------------------------
# Per-seed streams for generation.

class StackedRandomGenerator:
    """One torch.Generator per seed (seeded with seed mod 2^32, as EDM); every draw for a batch is the
    per-seed draws of the trailing shape stacked along dim 0, so sample i depends only on seeds[i]."""

    def __init__(self, device: torch.device | str, seeds: Iterable[int]):
        self.device = torch.device(device)
        self.generators = [make_generator(int(seed) % (1 << 32), self.device) for seed in seeds]

    def draw(self, fn: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        """fn(generator) for each seed's generator, concatenated along dim 0 (fn returns [1, ...])."""
        return torch.cat([fn(gen) for gen in self.generators])

    def randn(self, size: Sequence[int], **kwargs) -> torch.Tensor:
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input: torch.Tensor) -> torch.Tensor:
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size: Sequence[int], **kwargs) -> torch.Tensor:
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])

    def gamma_log_like(self, input: torch.Tensor, alpha: float) -> torch.Tensor:
        """float64 [B]: row i the log of a Gamma(alpha, 1) draw from seed i's generator (the Restart
        jump of PFGM++, training.pfgmpp.restart_jump), on input's device."""
        from training import pfgmpp  # The kernel's module imports this one.
        return self.draw(lambda gen: pfgmpp.sample_gamma_log(alpha, 1, generator=gen, device=self.device)).to(input.device)

    def prior(self, shape: Sequence[int], sigma: float, D: Optional[float]) -> torch.Tensor:
        """float64 [B, *shape]: each seed's draw from the prior at noise level sigma
        (training.pfgmpp.sample_prior); for D=None exactly EDM's latents * sigma."""
        from training import pfgmpp
        return self.draw(lambda gen: pfgmpp.sample_prior([1, *shape], sigma, D, generator=gen, device=self.device, dtype=torch.float64))

#----------------------------------------------------------------------------
