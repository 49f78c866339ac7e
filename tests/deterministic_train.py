"""train.py with deterministic kernels, for the bitwise resume check of tests/test_cuda.py:

    CUBLAS_WORKSPACE_CONFIG=:4096:8 torchrun --standalone --nproc_per_node=2 tests/deterministic_train.py ...

Exact resume needs each step to compute the same bits again. On the CPU it does; on CUDA, cuDNN
autotuning (train.py --bench, on by default) and kernels that accumulate with atomics may not, so
this switches PyTorch to its deterministic implementations (an operation without one raises) before
running train.py's command line unchanged."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # The repository root.

import torch  # noqa: E402

torch.use_deterministic_algorithms(True)

import train  # noqa: E402

if __name__ == '__main__':
    train.main()
