"""Small torch helpers shared by the scripts: the device choice."""

import torch

#----------------------------------------------------------------------------

DEVICE_CHOICES = ('auto', 'cuda', 'cpu')


def resolve_device(name: str = 'auto', local_rank: int = 0) -> torch.device:
    """Map --device auto|cuda|cpu to a torch.device. 'auto' takes CUDA when present, else the CPU;
    'cuda' without CUDA is an error rather than a silent fallback. Under torchrun each rank uses
    GPU `local_rank`."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f'Unknown device {name!r}; choose one of {", ".join(DEVICE_CHOICES)}.')
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('--device=cuda was asked for, but PyTorch sees no CUDA device; use --device=cpu.')
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    return torch.device('cpu')

