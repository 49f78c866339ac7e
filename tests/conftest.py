"""Shared fixtures: small datasets in the layout dataset_tool.py writes; CUDA tests skipped without CUDA."""

import io
import json
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch


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


def write_dataset_zip(path, images: np.ndarray, labels=None) -> str:
    """images uint8 [N, H, W, C] (or [N, H, W]) -> an uncompressed dataset ZIP with dataset.json."""
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        names = []
        for i, img in enumerate(images):
            name = f'{i // 1000:05d}/img{i:08d}.png'
            buf = io.BytesIO()
            PIL.Image.fromarray(img.squeeze() if img.ndim == 3 and img.shape[2] == 1 else img).save(buf, format='png', compress_level=0)
            z.writestr(name, buf.getvalue())
            names.append(name)
        meta = {'labels': None if labels is None else [[n, int(c)] for n, c in zip(names, labels)]}
        z.writestr('dataset.json', json.dumps(meta))
    return str(path)


def bars_images(num: int, resolution: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Structured RGB images: class 0 a horizontal bar, class 1 a vertical bar, at random positions
    and colours on a dark background. Returns (uint8 [N, H, W, 3], labels [N])."""
    rng = np.random.default_rng(seed)
    images = np.full([num, resolution, resolution, 3], 16, dtype=np.uint8)
    labels = rng.integers(0, 2, size=num)
    for i in range(num):
        pos = rng.integers(2, resolution - 4)
        colour = rng.integers(128, 256, size=3)
        if labels[i] == 0:
            images[i, pos:pos + 3, :, :] = colour
        else:
            images[i, :, pos:pos + 3, :] = colour
    return images, labels


@pytest.fixture(scope='session')
def bars_zip(tmp_path_factory):
    """64 labelled 16x16 RGB bar images as a dataset ZIP."""
    images, labels = bars_images(64)
    return write_dataset_zip(tmp_path_factory.mktemp('data') / 'bars-16x16.zip', images, labels)


@pytest.fixture(scope='session')
def bars_zip_unlabelled(tmp_path_factory):
    images, _ = bars_images(64, seed=1)
    return write_dataset_zip(tmp_path_factory.mktemp('data') / 'bars-unlabelled-16x16.zip', images, None)
