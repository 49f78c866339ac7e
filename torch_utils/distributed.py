"""Multi-process helpers for scripts started with torchrun. Without torchrun (WORLD_SIZE absent or 1)
every function works as in a single process and no process group is made."""

import os
from typing import Any

import torch
import torch.distributed

from . import misc

#----------------------------------------------------------------------------

def init(device_name: str = 'auto') -> torch.device:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and return this process's device: GPU LOCAL_RANK with NCCL,
    or the CPU with Gloo. Calling it again is harmless."""
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = misc.resolve_device(device_name, local_rank)
    if int(os.environ.get('WORLD_SIZE', '1')) > 1 and not torch.distributed.is_initialized():
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        torch.distributed.init_process_group(backend=backend, init_method='env://')
    return device


def shutdown() -> None:
    """Leave the process group, if any, so that the process exits cleanly."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def get_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def get_world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()

#----------------------------------------------------------------------------
# Collectives that return new tensors on the caller's device.

def _comm_device() -> torch.device:
    # NCCL communicates GPU tensors only; Gloo is used here with CPU tensors.
    if torch.distributed.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of `x` over all processes (float64 works with both Gloo and NCCL)."""
    if get_world_size() == 1:
        return x.clone()
    y = x.detach().to(_comm_device(), copy=True)
    torch.distributed.all_reduce(y, op=torch.distributed.ReduceOp.SUM)
    return y.to(x.device)


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's `x` along dim 0, in rank order; the first dimensions may differ."""
    if get_world_size() == 1:
        return x.clone()
    device = _comm_device()
    y = x.detach().to(device)
    sizes = [torch.zeros([], dtype=torch.int64, device=device) for _ in range(get_world_size())]
    torch.distributed.all_gather(sizes, torch.tensor(y.shape[0], dtype=torch.int64, device=device))
    sizes = [int(s) for s in sizes]
    padded = torch.zeros([max(sizes), *y.shape[1:]], dtype=y.dtype, device=device)
    padded[:y.shape[0]] = y
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(x.device)

#----------------------------------------------------------------------------
