"""Tests for dataset_tool.py: every source format built tiny in its real layout, the output layout,
the transforms against independent PIL computations, and every bad input."""

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import types
import zipfile
from fractions import Fraction

import click
import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from dataprep import conversion

from helpers import REPO as ROOT
from helpers import needs_webp

#----------------------------------------------------------------------------
# Helpers.

def run_cli(*args: str):
    return CliRunner().invoke(dataset_tool.main, list(args))

def read_dataset(dest: str) -> tuple[dict, object]:
    """(name -> [H, W] or [H, W, 3] uint8 array, the 'labels' of dataset.json) of a ZIP or folder."""
    images, files = {}, {}
    if zipfile.is_zipfile(dest):
        with zipfile.ZipFile(dest) as z:
            assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
            files = {name: z.read(name) for name in z.namelist()}
    else:
        for root, _dirs, names in os.walk(dest):
            for name in names:
                path = os.path.join(root, name)
                with open(path, 'rb') as f:
                    files[os.path.relpath(path, dest).replace(os.sep, '/')] = f.read()
    for name, data in files.items():
        if name != 'dataset.json':
            with PIL.Image.open(io.BytesIO(data)) as img:
                assert img.format == 'PNG'
                images[name] = np.asarray(img)
    return images, json.loads(files['dataset.json'])['labels']

def png_name(idx: int) -> str:
    return f'{idx // 1000:05d}/img{idx:08d}.png'

def save_image(path: str, arr: np.ndarray) -> None:
    """Save [H, W] (L), [H, W, 3] (RGB) or [H, W, 4] (RGBA) uint8 in the format the name implies."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(arr).save(path)

def random_image(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)

def assert_failed_cleanly(result, dest: str, *fragments: str) -> None:
    """Non-zero exit, a one-line 'Error:' message containing fragments, no traceback, nothing at dest."""
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), repr(result.exception)
    assert 'Traceback' not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert not os.path.exists(dest)
    parent = os.path.dirname(dest)
    if os.path.isdir(parent):
        assert not [n for n in os.listdir(parent) if '.tmp-' in n], os.listdir(parent)

#----------------------------------------------------------------------------
# Tiny archives in the real formats.

def write_cifar10(path: str, rng: np.random.Generator, batch_sizes=(3, 2, 4, 1, 2)) -> tuple[np.ndarray, list]:
    """cifar-10-python.tar.gz with data_batch_1..N (plus test_batch and batches.meta, which must be
    ignored); returns the expected [N, 32, 32, 3] images and labels in source order."""
    images, labels = [], []
    with tarfile.open(path, 'w:gz') as tar:
        def add(name, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        # Written out of order to check that the batches are read by name.
        for i in reversed(range(len(batch_sizes))):
            n = batch_sizes[i]
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            batch_labels = [int(x) for x in rng.integers(0, 10, size=n)]
            # The real pickles have byte-string keys once loaded in Python 3 without latin1.
            add(f'data_batch_{i + 1}', {b'batch_label': b'training batch', b'labels': batch_labels, b'data': data, b'filenames': [b'x.png'] * n})
            images.insert(0, data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
            labels[:0] = batch_labels
        add('test_batch', {'labels': [0], 'data': np.zeros((1, 3072), np.uint8)})
        add('batches.meta', {'label_names': ['airplane'] * 10})
    return np.concatenate(images), labels

def write_idx(path: str, magic: int, arr: np.ndarray) -> None:
    header = np.array([magic, *arr.shape], dtype='>u4').tobytes()
    with gzip.open(path, 'wb') as f:
        f.write(header + arr.astype(np.uint8).tobytes())

def write_mnist(folder: str, rng: np.random.Generator, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    os.makedirs(folder, exist_ok=True)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(os.path.join(folder, 'train-images-idx3-ubyte.gz'), 0x0803, images)
    write_idx(os.path.join(folder, 'train-labels-idx1-ubyte.gz'), 0x0801, labels)
    return images, labels

#----------------------------------------------------------------------------
# CIFAR-10 and MNIST: pixel-exact, labels in source order.

def test_cifar10_pixel_exact(tmp_path):
    rng = np.random.default_rng(0)
    source = str(tmp_path / 'cifar-10-python.tar.gz')
    images, labels = write_cifar10(source, rng)
    dest = str(tmp_path / 'datasets' / 'cifar10-32x32.zip') # The parent folder does not exist yet.
    result = run_cli(f'--source={source}', f'--dest={dest}')
    assert result.exit_code == 0, result.output
    out, out_labels = read_dataset(dest)
    assert sorted(out) == [png_name(i) for i in range(12)]
    for i in range(12):
        assert out[png_name(i)].shape == (32, 32, 3)
        np.testing.assert_array_equal(out[png_name(i)], images[i])
    assert out_labels == [[png_name(i), labels[i]] for i in range(12)]
    assert sorted(os.listdir(tmp_path / 'datasets')) == ['cifar10-32x32.zip']

def test_cifar10_str_keys_and_max_images(tmp_path):
    rng = np.random.default_rng(1)
    source = str(tmp_path / 'cifar-10-python.tar.gz')
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    with tarfile.open(source, 'w:gz') as tar:
        blob = pickle.dumps({'data': data, 'labels': [3, 1, 4, 1]}, protocol=2)
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    dest = str(tmp_path / 'out.zip')
    assert conversion.convert_dataset(source, dest, max_images=3, progress=False).written == 3
    out, labels = read_dataset(dest)
    assert len(out) == 3
    np.testing.assert_array_equal(out[png_name(2)][:, :, 1], data[2, 1024:2048].reshape(32, 32)) # Green plane.
    assert labels == [[png_name(0), 3], [png_name(1), 1], [png_name(2), 4]]

def test_mnist_padded_pixel_exact(tmp_path):
    rng = np.random.default_rng(2)
    images, labels = write_mnist(str(tmp_path / 'mnist'), rng)
    dest = str(tmp_path / 'mnist-32x32')
    result = run_cli(f'--source={tmp_path / "mnist" / "train-images-idx3-ubyte.gz"}', f'--dest={dest}')
    assert result.exit_code == 0, result.output
    out, out_labels = read_dataset(dest)
    assert sorted(out) == [png_name(i) for i in range(5)]
    for i in range(5):
        img = out[png_name(i)]
        assert img.shape == (32, 32) # One channel, stored as an 'L' PNG.
        np.testing.assert_array_equal(img[2:30, 2:30], images[i])
        assert img.sum() == images[i].astype(np.int64).sum() # Zero border.
    assert out_labels == [[png_name(i), int(labels[i])] for i in range(5)]

#----------------------------------------------------------------------------
# Folder and ZIP sources.

def make_class_tree(root: str, rng: np.random.Generator) -> dict:
    """Three class folders (sorted: bird, cat, dog) with 8x8 and 16x16 RGB images and a nested one."""
    files = {
        'dog/b.png': random_image(rng, 8, 8),
        'cat/z.png': random_image(rng, 16, 16),
        'cat/a.png': random_image(rng, 8, 8),
        'bird/deep/x.png': random_image(rng, 8, 8),
        'bird/c.jpg': random_image(rng, 16, 16),
    }
    for name, arr in files.items():
        save_image(os.path.join(root, name), arr)
    with open(os.path.join(root, 'bird', 'notes.txt'), 'w') as f:
        f.write('not an image')
    save_image(os.path.join(root, '.hidden', 'junk.png'), random_image(rng, 5, 5))
    return files

def test_class_folder_tree_resized(tmp_path):
    rng = np.random.default_rng(3)
    source = str(tmp_path / 'tree')
    files = make_class_tree(source, rng)
    dest = str(tmp_path / 'tree-16x16.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}', '--resolution=16x16')
    assert result.exit_code == 0, result.output
    out, labels = read_dataset(dest)
    order = ['bird/c.jpg', 'bird/deep/x.png', 'cat/a.png', 'cat/z.png', 'dog/b.png'] # Sorted relative paths.
    assert sorted(out) == [png_name(i) for i in range(5)]
    assert labels == [[png_name(i), cls] for i, cls in enumerate([0, 0, 1, 1, 2])]
    for i, name in enumerate(order):
        with PIL.Image.open(os.path.join(source, name)) as src:
            expected = np.asarray(src.convert('RGB').resize((16, 16), PIL.Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(out[png_name(i)], expected)
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(os.path.join(source, 'cat/a.png'))), files['cat/a.png'])

def test_digits_style_grayscale_tree(tmp_path):
    # The quick-start path: 8x8 grayscale digits in class folders 0..9, upsampled to 16x16.
    rng = np.random.default_rng(4)
    source = str(tmp_path / 'digits')
    arrays = {}
    for cls in range(10):
        for j in range(2):
            arrays[f'{cls}/{j:04d}.png'] = random_image(rng, 8, 8, c=1)
            save_image(os.path.join(source, f'{cls}/{j:04d}.png'), arrays[f'{cls}/{j:04d}.png'])
    dest = str(tmp_path / 'digits-16x16.zip')
    assert conversion.convert_dataset(source, dest, resolution=(16, 16), progress=False) == (20, 0)
    out, labels = read_dataset(dest)
    for i, name in enumerate(sorted(arrays)):
        expected = np.asarray(PIL.Image.fromarray(arrays[name]).resize((16, 16), PIL.Image.Resampling.LANCZOS))
        assert out[png_name(i)].shape == (16, 16)
        np.testing.assert_array_equal(out[png_name(i)], expected)
    assert labels == [[png_name(i), i // 2] for i in range(20)]

def test_flat_folder_modes_pixel_exact(tmp_path):
    rng = np.random.default_rng(5)
    source = str(tmp_path / 'flat')
    rgb = random_image(rng, 16, 16)
    rgba = random_image(rng, 16, 16, c=4)
    gray = random_image(rng, 16, 16, c=1)
    palette = PIL.Image.fromarray(rgb).quantize(colors=16)
    save_image(os.path.join(source, 'a_rgb.png'), rgb)
    save_image(os.path.join(source, 'b_rgba.png'), rgba)
    palette.save(os.path.join(source, 'c_palette.png'), transparency=0)
    save_image(os.path.join(source, 'd_gray.png'), gray)
    dest = str(tmp_path / 'flat.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}')
    assert result.exit_code == 0, result.output
    out, labels = read_dataset(dest)
    assert labels is None # Images at the top level: no classes.
    np.testing.assert_array_equal(out[png_name(0)], rgb)
    np.testing.assert_array_equal(out[png_name(1)], rgba[:, :, :3]) # Alpha dropped.
    np.testing.assert_array_equal(out[png_name(2)], np.asarray(palette.convert('RGB')))
    np.testing.assert_array_equal(out[png_name(3)], np.repeat(gray[:, :, None], 3, axis=2)) # Promoted in an RGB dataset.

def test_grayscale_folder_stays_one_channel(tmp_path):
    rng = np.random.default_rng(6)
    source = str(tmp_path / 'gray')
    grays = [random_image(rng, 8, 8, c=1) for _ in range(3)]
    for i, g in enumerate(grays):
        save_image(os.path.join(source, f'{i}.png'), g)
    dest = str(tmp_path / 'gray-out')
    os.makedirs(dest) # An existing empty folder is an acceptable destination.
    assert conversion.convert_dataset(source, dest, progress=False).written == 3
    out, labels = read_dataset(dest)
    assert labels is None
    for i, g in enumerate(grays):
        assert out[png_name(i)].shape == (8, 8)
        np.testing.assert_array_equal(out[png_name(i)], g)

def test_source_dataset_json_takes_precedence(tmp_path):
    rng = np.random.default_rng(7)
    source = str(tmp_path / 'tree')
    make_class_tree(source, rng)
    listed = {'bird/c.jpg': 7, 'bird/deep/x.png': 3, 'cat/a.png': 9, 'cat/z.png': 0, 'dog/b.png': 5}
    with open(os.path.join(source, 'dataset.json'), 'w') as f:
        json.dump({'labels': [[k, v] for k, v in listed.items()]}, f)
    dest = str(tmp_path / 'out.zip')
    conversion.convert_dataset(source, dest, resolution=(8, 8), progress=False)
    _out, labels = read_dataset(dest)
    assert labels == [[png_name(i), listed[name]] for i, name in enumerate(sorted(listed))]

def test_zip_source_and_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    source = str(tmp_path / 'src.zip')
    arrays = {'b/2.png': random_image(rng, 8, 8), 'a/1.png': random_image(rng, 8, 8), 'b/1.png': random_image(rng, 8, 8)}
    with zipfile.ZipFile(source, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            PIL.Image.fromarray(arr).save(buf, format='png')
            z.writestr(name, buf.getvalue())
        z.writestr('__MACOSX/a/._1.png', b'AppleDouble debris')
        z.writestr('a/', b'')
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}')
    assert result.exit_code == 0, result.output
    out, labels = read_dataset(dest)
    for i, name in enumerate(['a/1.png', 'b/1.png', 'b/2.png']):
        np.testing.assert_array_equal(out[png_name(i)], arrays[name])
    assert labels == [[png_name(0), 0], [png_name(1), 1], [png_name(2), 1]]

    # Our own output is a valid source; its dataset.json keeps the labels as they are.
    again = str(tmp_path / 'again.zip')
    conversion.convert_dataset(dest, again, progress=False)
    out2, labels2 = read_dataset(again)
    assert labels2 == labels
    for name in out:
        np.testing.assert_array_equal(out2[name], out[name])

def test_max_images_folder(tmp_path):
    rng = np.random.default_rng(19)
    source = tmp_path / 'imgs'
    arrays = [random_image(rng, 8, 8) for _ in range(4)]
    for i, arr in enumerate(arrays):
        save_image(str(source / f'{i}.png'), arr)
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}', '--max-images=2')
    assert result.exit_code == 0, result.output
    out, _ = read_dataset(dest)
    assert sorted(out) == [png_name(0), png_name(1)]
    np.testing.assert_array_equal(out[png_name(1)], arrays[1])
    assert run_cli(f'--source={source}', f'--dest={tmp_path / "x.zip"}', '--max-images=0').exit_code == 2

def test_many_images_use_several_folders(tmp_path):
    rng = np.random.default_rng(9)
    source = str(tmp_path / 'mnist')
    write_mnist(source, rng, n=1003)
    dest = str(tmp_path / 'out.zip')
    assert conversion.convert_dataset(os.path.join(source, 'train-images-idx3-ubyte.gz'), dest, max_images=1001, progress=False).written == 1001
    with zipfile.ZipFile(dest) as z:
        names = z.namelist()
    assert '00000/img00000999.png' in names and '00001/img00001000.png' in names and len(names) == 1002

#----------------------------------------------------------------------------
# Transforms, against independent PIL computations.

def test_center_crop(tmp_path):
    rng = np.random.default_rng(10)
    source = str(tmp_path / 'wide')
    arr = random_image(rng, 24, 40)
    save_image(os.path.join(source, 'x.png'), arr)
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}', '--resolution=16x16', '--transform=center-crop')
    assert result.exit_code == 0, result.output
    out, _ = read_dataset(dest)
    expected = PIL.Image.fromarray(arr).crop((8, 0, 32, 24)).resize((16, 16), PIL.Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(out[png_name(0)], np.asarray(expected))

def expected_center_crop_wide(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """EDM's center-crop-wide computed independently: the row count with exact rational
    arithmetic (round half to even), the strip cut with PIL's crop box, the result pasted onto a
    black PIL canvas."""
    h, w = arr.shape[:2]
    rows = round(Fraction(width * h, w))
    top = (h - rows) // 2
    strip = PIL.Image.fromarray(arr).crop((0, top, w, top + rows)).resize((width, height), PIL.Image.Resampling.LANCZOS)
    canvas = PIL.Image.new(strip.mode, (width, width))
    canvas.paste(strip, (0, (width - height) // 2))
    return np.asarray(canvas)

def striped_image(h: int, w: int) -> np.ndarray:
    """[h, w, 3] uint8 whose row r is the constant colour (7r + 3, 255 - 7r, r): every row is
    recognisable, and a horizontal-only Lanczos resize leaves a constant row unchanged."""
    r = np.arange(h)
    colours = np.stack([7 * r + 3, 255 - 7 * r, r], axis=1).astype(np.uint8)
    return np.repeat(colours[:, np.newaxis, :], w, axis=1)

def test_center_crop_wide_keeps_the_middle_rows(tmp_path):
    # 64x33 at 32x16: round(32 * 33 / 64) = round(16.5) = 16 rows (half to even; half up would
    # keep 17 and resample them), rows (33 - 16) // 2 = 8 .. 23, only the width is resized.
    arr = striped_image(33, 64)
    source = str(tmp_path / 'imgs')
    save_image(os.path.join(source, 'a.png'), arr)
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}', '--transform=center-crop-wide', '--resolution=32x16')
    assert result.exit_code == 0, result.output
    assert 'Skipped' not in result.output
    out = read_dataset(dest)[0][png_name(0)]
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[:8], 0)                   # Black band above.
    np.testing.assert_array_equal(out[24:], 0)                  # Black band below.
    np.testing.assert_array_equal(out[8:24], arr[8:24, :32])    # Source rows 8..23, whole width.

def test_center_crop_wide_against_independent_geometry(tmp_path):
    rng = np.random.default_rng(11)
    source = str(tmp_path / 'imgs')
    images = [random_image(rng, 64, 48),     # Taller than wide: 43 of 64 rows kept, resized.
              random_image(rng, 35, 64),     # round(17.5) = 18 rows kept, resized to 16.
              random_image(rng, 16, 32),     # Exactly W x H: unchanged, padded.
              random_image(rng, 30, 40, 1)]  # Grayscale stays one channel.
    for i, arr in enumerate(images[:3]):
        save_image(os.path.join(source, f'{i}.png'), arr)
    dest = str(tmp_path / 'out.zip')
    result = conversion.convert_dataset(source, dest, transform='center-crop-wide', resolution=(32, 16), progress=False)
    assert result == (3, 0)
    out, _ = read_dataset(dest)
    for i, arr in enumerate(images[:3]):
        np.testing.assert_array_equal(out[png_name(i)], expected_center_crop_wide(arr, 32, 16))
    gray = conversion.center_crop_wide(images[3][:, :, np.newaxis], 32, 16)
    np.testing.assert_array_equal(gray[:, :, 0], expected_center_crop_wide(images[3], 32, 16))

def test_center_crop_wide_skips_and_counts(tmp_path):
    # Class folders give labels; the kept images must keep theirs, in order, numbered 0, 1, ...
    rng = np.random.default_rng(12)
    source = tmp_path / 'imgs'
    cases = [('a', 'keep0.png', (32, 64), True),    # round(32 * 32 / 64) = 16 rows: just enough.
             ('a', 'narrow.png', (40, 31), False),  # Narrower than 32.
             ('b', 'keep1.png', (48, 40), True),
             ('b', 'wide.png', (31, 64), True),     # round(15.5) = 16 rows: kept ...
             ('b', 'wider.png', (29, 64), False),   # ... round(14.5) = 14 rows: too wide.
             ('c', 'keep2.png', (40, 40, 1), True)] # Grayscale among RGB.
    arrays = {}
    for folder, name, size, _keep in cases:
        arrays[folder, name] = random_image(rng, *size)
        save_image(str(source / folder / name), arrays[folder, name])
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}', '--transform=center-crop-wide', '--resolution=32x16')
    assert result.exit_code == 0, result.output
    assert 'Wrote 4 images' in result.output and 'Skipped 2 images smaller than 32x16' in result.output
    out, labels = read_dataset(dest)
    kept = [(folder, name) for folder, name, _size, keep in sorted(cases) if keep]
    assert sorted(out) == [png_name(i) for i in range(len(kept))]
    assert labels == [[png_name(i), 'abc'.index(folder)] for i, (folder, _name) in enumerate(kept)]
    for i, key in enumerate(kept):
        expected = expected_center_crop_wide(arrays[key], 32, 16)
        if expected.ndim == 2: # A grayscale image in a colour dataset is replicated to RGB.
            expected = np.repeat(expected[:, :, np.newaxis], 3, axis=2)
        np.testing.assert_array_equal(out[png_name(i)], expected)

def test_center_crop_wide_all_skipped(tmp_path):
    source = tmp_path / 'imgs'
    save_image(str(source / 'a.png'), random_image(np.random.default_rng(13), 8, 8))
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}', '--transform=center-crop-wide', '--resolution=32x16')
    assert_failed_cleanly(result, dest, 'All 1 images were skipped', '--resolution')

#----------------------------------------------------------------------------
# LSUN through a stand-in for the optional lmdb package.

def fake_lmdb(records: list) -> types.ModuleType:
    class Env:
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def stat(self): return {'entries': len(records)}
        def begin(self, write=False): return self
        def cursor(self): return iter(records)
    module = types.ModuleType('lmdb')
    module.open = lambda path, readonly, lock: Env()
    return module

@needs_webp  # LSUN's records are WebP images.
def test_lsun_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(12)
    arrays = [random_image(rng, 8, 8) for _ in range(3)]
    def webp(arr):
        buf = io.BytesIO()
        PIL.Image.fromarray(arr).save(buf, format='webp', lossless=True)
        return buf.getvalue()
    records = [(b'k0', webp(arrays[0])), (b'k1', b'not an image'), (b'k2', webp(arrays[1])), (b'k3', webp(arrays[2]))]
    monkeypatch.setitem(sys.modules, 'lmdb', fake_lmdb(records))
    source = tmp_path / 'bedroom_train_lmdb'
    source.mkdir()
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={source}', f'--dest={dest}')
    assert result.exit_code == 0, result.output
    assert 'k1' in result.output # The undecodable record is reported and skipped.
    out, labels = read_dataset(dest)
    assert labels is None and len(out) == 3
    for i, arr in enumerate(arrays):
        np.testing.assert_array_equal(out[png_name(i)], arr)

def test_lsun_without_lmdb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'lmdb', None) # Makes 'import lmdb' raise ImportError.
    source = tmp_path / 'cat_lmdb'
    source.mkdir()
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'pip install lmdb')

#----------------------------------------------------------------------------
# Bad input: a clear message, non-zero exit, no destination.

def test_missing_source(tmp_path):
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={tmp_path / "nope"}', f'--dest={dest}'), dest, 'does not exist')

@pytest.mark.parametrize('name', ['cifar-10-python.tar.gz', 'train-images-idx3-ubyte.gz', 'broken.zip'])
def test_unreadable_archives(tmp_path, name):
    source = tmp_path / name
    source.write_bytes(b'this is not the archive you are looking for')
    if name.startswith('train'):
        write_idx(str(tmp_path / 'train-labels-idx1-ubyte.gz'), 0x0801, np.zeros(1, np.uint8))
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'Cannot read', name)

def test_unreadable_source_file(tmp_path, monkeypatch):
    source = tmp_path / 'cifar-10-python.tar.gz'
    write_cifar10(str(source), np.random.default_rng(13))
    source.chmod(0)
    if os.geteuid() == 0:
        # Root reads files whatever their permissions; deny access the way the kernel would for a user.
        real_access = os.access
        monkeypatch.setattr(os, 'access', lambda path, mode, **kw: False if str(path) == str(source) else real_access(path, mode, **kw))
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'not readable')

def test_cifar_without_batches_and_mnist_without_labels(tmp_path):
    source = str(tmp_path / 'cifar-10-python.tar.gz')
    with tarfile.open(source, 'w:gz') as tar:
        info = tarfile.TarInfo('cifar-10-batches-py/readme.html')
        tar.addfile(info, io.BytesIO(b''))
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'data_batch')

    images = tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz'
    images.parent.mkdir()
    write_idx(str(images), 0x0803, np.zeros((2, 28, 28), np.uint8))
    assert_failed_cleanly(run_cli(f'--source={images}', f'--dest={dest}'), dest, 'train-labels-idx1-ubyte.gz')
    write_idx(str(tmp_path / 'mnist' / 'train-labels-idx1-ubyte.gz'), 0x0801, np.zeros(3, np.uint8))
    assert_failed_cleanly(run_cli(f'--source={images}', f'--dest={dest}'), dest, '2 images but', '3 labels')

def test_unknown_format_and_empty_folder(tmp_path):
    source = tmp_path / 'notes.txt'
    source.write_text('hello')
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'Unknown source format')
    empty = tmp_path / 'empty'
    (empty / 'sub').mkdir(parents=True)
    (empty / 'sub' / 'readme.txt').write_text('no images here')
    assert_failed_cleanly(run_cli(f'--source={empty}', f'--dest={dest}'), dest, 'No image files')

def test_sizes_differ_without_resolution(tmp_path):
    rng = np.random.default_rng(14)
    source = str(tmp_path / 'tree')
    make_class_tree(source, rng)
    dest = str(tmp_path / 'sub' / 'out.zip') # The made parent folder is removed again too.
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'deep/x.png is 8x8', '16x16', '--resolution')
    assert not os.path.exists(tmp_path / 'sub')

def test_corrupt_image_named(tmp_path):
    rng = np.random.default_rng(15)
    source = tmp_path / 'imgs'
    for i in range(3):
        save_image(str(source / f'{i}.png'), random_image(rng, 8, 8))
    good = (source / '2.png').read_bytes()
    (source / '2.png').write_bytes(good[: len(good) // 2]) # Truncated after two good images were written.
    for dest in [str(tmp_path / 'out.zip'), str(tmp_path / 'out-folder')]:
        assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'Cannot read image', '2.png')

def test_colour_after_grayscale(tmp_path):
    rng = np.random.default_rng(16)
    source = tmp_path / 'imgs'
    save_image(str(source / 'a.png'), random_image(rng, 8, 8, c=1))
    save_image(str(source / 'b.png'), random_image(rng, 8, 8))
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'b.png is in colour')

@pytest.mark.parametrize('size, args, fragments', [
    ((16, 24), [], ['24x16', 'square', 'power-of-two']),       # Non-square source, no resolution.
    ((24, 24), [], ['24x24', 'power-of-two']),                 # Square but not a power of two.
    ((16, 16), ['--resolution=32x16'], ['32x16', 'square']),   # Non-square resolution.
    ((16, 16), ['--resolution=48x48'], ['48x48', 'power-of-two']),
    ((16, 16), ['--resolution=48x48', '--transform=center-crop'], ['48x48', 'power-of-two']),
    ((16, 16), ['--resolution=48x24', '--transform=center-crop-wide'], ['48x48', 'power-of-two']),
    ((16, 16), ['--resolution=16x32', '--transform=center-crop-wide'], ['height <= width']),
    ((16, 16), ['--transform=center-crop'], ['--resolution']), # Transform without a size.
    ((16, 16), ['--transform=center-crop-wide'], ['--resolution']),
])
def test_bad_output_geometry(tmp_path, size, args, fragments):
    source = tmp_path / 'imgs'
    save_image(str(source / 'a.png'), random_image(np.random.default_rng(17), *size))
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}', *args), dest, *fragments)

@pytest.mark.parametrize('value', ['64', '64x', 'x64', '0x0', '64x-64', 'axb'])
def test_bad_resolution_string(tmp_path, value):
    save_image(str(tmp_path / 'imgs' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={tmp_path / "imgs"}', f'--dest={dest}', f'--resolution={value}')
    assert result.exit_code == 2 and 'WxH' in result.output and not os.path.exists(dest)

def test_existing_destination_refused(tmp_path):
    save_image(str(tmp_path / 'imgs' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    dest = tmp_path / 'out.zip'
    dest.write_bytes(b'precious')
    result = run_cli(f'--source={tmp_path / "imgs"}', f'--dest={dest}')
    assert result.exit_code == 1 and 'already exists' in result.output
    assert dest.read_bytes() == b'precious'
    folder = tmp_path / 'folder'
    folder.mkdir()
    (folder / 'keep.txt').write_text('keep')
    result = run_cli(f'--source={tmp_path / "imgs"}', f'--dest={folder}')
    assert result.exit_code == 1 and 'already exists' in result.output
    assert os.listdir(folder) == ['keep.txt']

def test_bad_source_dataset_json(tmp_path):
    source = tmp_path / 'imgs'
    save_image(str(source / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    save_image(str(source / 'b.png'), np.zeros((8, 8, 3), np.uint8))
    dest = str(tmp_path / 'out.zip')
    (source / 'dataset.json').write_text('{"labels": [["a.png", 1]]}')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'no label for b.png')
    (source / 'dataset.json').write_text('{"labels": 3}')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'Cannot parse dataset.json')
    # Labels that training could not read are refused now; label vectors are kept as given.
    (source / 'dataset.json').write_text('{"labels": [["a.png", 1], ["b.png", -2]]}')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'negative class index')
    (source / 'dataset.json').write_text('{"labels": [["a.png", [0.5, 1e-9]], ["b.png", [2, 3]]]}')
    conversion.convert_dataset(source=str(source), dest=dest, progress=False)
    assert read_dataset(dest)[1] == [[png_name(0), [0.5, 1e-9]], [png_name(1), [2, 3]]]

#----------------------------------------------------------------------------
# convert_dataset() from Python: named arguments, ordinary exceptions.

def test_convert_dataset_with_keyword_arguments(tmp_path):
    rng = np.random.default_rng(20)
    source = str(tmp_path / 'tree')
    files = make_class_tree(source, rng)
    dest = str(tmp_path / 'out.zip')
    result = conversion.convert_dataset(source=source, dest=dest, max_images=3, transform='center-crop', resolution='8x8', progress=False)
    assert result == conversion.ConversionResult(written=3, skipped=0)
    out, labels = read_dataset(dest)
    order = ['bird/c.jpg', 'bird/deep/x.png', 'cat/a.png'] # The first three sorted relative paths.
    assert labels == [[png_name(i), cls] for i, cls in enumerate([0, 0, 1])] # Folder classes of all five images.
    with PIL.Image.open(os.path.join(source, order[0])) as src: # A 16x16 JPEG: square already, so crop = resize.
        expected = np.asarray(src.convert('RGB').resize((8, 8), PIL.Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out[png_name(0)], expected)
    np.testing.assert_array_equal(out[png_name(2)], files['cat/a.png']) # 8x8 already: untouched.

@pytest.mark.parametrize('kwargs, fragment', [
    (dict(resolution=(24, 24)), 'power-of-two'),
    (dict(resolution='64'), 'WxH'),
    (dict(transform='zoom', resolution=(8, 8)), 'Unknown transform'),
    (dict(transform='center-crop'), '--resolution'),
    (dict(max_images=0), 'max_images'),
    (dict(source='notes.txt'), 'Unknown source format'),
    (dict(source='imgs/dataset.json'), 'Unknown source format'),
])
def test_convert_dataset_raises_value_error(tmp_path, kwargs, fragment):
    save_image(str(tmp_path / 'imgs' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / 'imgs' / 'dataset.json').write_text('{"labels": null}')
    (tmp_path / 'notes.txt').write_text('hello')
    kwargs = dict(dict(source='imgs', dest='out.zip', progress=False), **kwargs)
    kwargs['source'] = str(tmp_path / kwargs['source'])
    kwargs['dest'] = str(tmp_path / kwargs['dest'])
    with pytest.raises(ValueError, match=fragment) as info:
        conversion.convert_dataset(**kwargs)
    assert not isinstance(info.value, click.ClickException)
    assert not os.path.exists(kwargs['dest'])

def test_convert_dataset_raises_os_errors(tmp_path):
    save_image(str(tmp_path / 'imgs' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        conversion.convert_dataset(source=str(tmp_path / 'nowhere'), dest=str(tmp_path / 'out.zip'), progress=False)
    (tmp_path / 'taken.zip').write_bytes(b'precious')
    with pytest.raises(FileExistsError, match='already exists'):
        conversion.convert_dataset(source=str(tmp_path / 'imgs'), dest=str(tmp_path / 'taken.zip'), progress=False)
    assert (tmp_path / 'taken.zip').read_bytes() == b'precious'

def test_debug_shows_the_traceback(tmp_path):
    dest = str(tmp_path / 'out.zip')
    result = run_cli(f'--source={tmp_path / "nope"}', f'--dest={dest}', '--debug')
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError) and not os.path.exists(dest)

#----------------------------------------------------------------------------
# The script as a user runs it.

def test_subprocess(tmp_path):
    source = str(tmp_path / 'cifar-10-python.tar.gz')
    images, labels = write_cifar10(source, np.random.default_rng(18), batch_sizes=(2,))
    dest = str(tmp_path / 'cifar10-32x32.zip')
    cmd = [sys.executable, 'dataset_tool.py', f'--source={source}', f'--dest={dest}']
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    out, out_labels = read_dataset(dest)
    np.testing.assert_array_equal(out[png_name(1)], images[1])
    assert out_labels == [[png_name(0), labels[0]], [png_name(1), labels[1]]]

    broken = tmp_path / 'imgs'
    save_image(str(broken / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    (broken / 'b.png').write_bytes(b'\x89PNG garbage')
    dest2 = str(tmp_path / 'broken.zip')
    bad = subprocess.run([sys.executable, 'dataset_tool.py', f'--source={broken}', f'--dest={dest2}'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert 'Traceback' not in bad.stderr and 'Error: Cannot read image' in bad.stderr and 'b.png' in bad.stderr
    assert not os.path.exists(dest2)

#----------------------------------------------------------------------------

class _RunsCode:
    """Pickles to a call of os.system, as a tampered archive could."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / 'executed'
    source = tmp_path / 'cifar-10-python.tar.gz'
    with tarfile.open(source, 'w:gz') as tar:
        data = pickle.dumps({'data': _RunsCode(marker), 'labels': [0]}, protocol=2)
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    dest = str(tmp_path / 'out.zip')
    assert_failed_cleanly(run_cli(f'--source={source}', f'--dest={dest}'), dest, 'not allowed')
    assert not marker.exists()
