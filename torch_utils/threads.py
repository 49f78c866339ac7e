"""CPU threads of the commands: OpenMP's passive wait policy unless the user chose one.

With GNU OpenMP's default policy, threads waiting for work spin before they sleep; beside another
process on a shared CPU they steal its cores and each other's (measured by benchmarks/contention.py,
docs/PERFORMANCE.md). The policy is read when torch loads OpenMP, so every command calls
use_passive_threads() before anything imports torch. The number of threads stays torch's default
(the physical cores; one per process under torchrun)."""

import os
from typing import MutableMapping


def use_passive_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """OMP_WAIT_POLICY=PASSIVE in `environ` unless it holds a policy already."""
    environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
