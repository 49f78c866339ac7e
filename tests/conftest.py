"""Shared fixtures: small datasets in the layout dataset_tool.py writes, a URL that refuses connections;
CUDA tests skipped without CUDA."""

import os
import socket

# One thread per process, for this process and every process a test starts (train.py, torchrun ranks,
# the quick start's steps, torch.compile's compiler workers): test processes share a small machine, and
# OpenMP threads that spin while another process holds the core stall each other. Set before torch
# starts OpenMP.
os.environ.update(OMP_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE')

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import bars_images, write_dataset_zip


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist reads the order.
def pytest_collection_modifyitems(config, items):
    """Modules with slow tests run first (file order otherwise): `make test` runs the suite on two
    pytest-xdist workers, one test module at a time each (--dist loadfile, so that a module's fixtures
    are built once), and a long module started last would leave the other worker idle. Tests marked
    `cuda` are collected everywhere (so `pytest -m cuda --collect-only` lists them) and skipped, with
    one reason, where PyTorch sees no CUDA device."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker('slow') is not None}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)  # Stable: file order within each part.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs CUDA')
    for item in items:
        if item.get_closest_marker('cuda') is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny tensors: one thread avoids contention between test processes on small machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def bars_zip(tmp_path_factory):
    """64 labelled 8x8 RGB bar images as a dataset ZIP: the data of the tiny training runs (DDPM++ has
    no attention below 16x16, which makes a kimg about five times cheaper than at 16x16)."""
    images, labels = bars_images(64, resolution=8)
    return write_dataset_zip(tmp_path_factory.mktemp('data') / 'bars-8x8.zip', images, labels)


@pytest.fixture(scope='session')
def bars16_zip(tmp_path_factory):
    """64 labelled 16x16 RGB bar images: training with DDPM++'s attention layers in play."""
    images, labels = bars_images(64)
    return write_dataset_zip(tmp_path_factory.mktemp('data') / 'bars-16x16.zip', images, labels)


@pytest.fixture(scope='session')
def bars_zip_unlabelled(tmp_path_factory):
    images, _ = bars_images(64, resolution=8, seed=1)
    return write_dataset_zip(tmp_path_factory.mktemp('data') / 'bars-unlabelled-8x8.zip', images, None)


@pytest.fixture
def refused_url(monkeypatch):
    """url(path): an http URL on 127.0.0.1 whose port is bound but not listening, so that a download
    fails at once with 'connection refused': no DNS look-up, no network, no proxy, and no other
    process can take the port while the test runs."""
    monkeypatch.setenv('NO_PROXY', '*')
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
        yield lambda path: f'http://127.0.0.1:{port}/{path}'
