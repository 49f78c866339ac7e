"""Shared fixtures: small datasets in the layout dataset_tool.py writes, a URL that refuses connections;
CUDA tests skipped without CUDA."""

import socket

import pytest
import torch

from helpers import bars_images, write_dataset_zip


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are collected everywhere (so `pytest -m cuda --collect-only` lists them) and
    skipped, with one reason, where PyTorch sees no CUDA device."""
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
    """64 labelled 16x16 RGB bar images as a dataset ZIP."""
    images, labels = bars_images(64)
    return write_dataset_zip(tmp_path_factory.mktemp('data') / 'bars-16x16.zip', images, labels)


@pytest.fixture(scope='session')
def bars_zip_unlabelled(tmp_path_factory):
    images, _ = bars_images(64, seed=1)
    return write_dataset_zip(tmp_path_factory.mktemp('data') / 'bars-unlabelled-16x16.zip', images, None)


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
