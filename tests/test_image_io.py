"""torch_utils/image_io.py: one extension list for training, fid.py and dataset_tool.py, one decoding
rule (checked per PIL mode against values computed by hand), folder and ZIP listings alike,
dataset.json labels and their errors, and the grid geometry against an independent layout."""

import io
import json
import os
import pathlib
import struct
import zipfile
import zlib

import numpy as np
import PIL.features
import PIL.Image
import pytest
import torch

from metrics import evaluation
from torch_utils import image_io
from training.dataset import ImageFolderDataset

from helpers import needs_webp


def encode(image: PIL.Image.Image, fmt: str = 'png', **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_files(root: pathlib.Path, files: dict) -> str:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return str(root)


def write_zip(path, files: dict) -> str:
    with zipfile.ZipFile(path, 'w') as z:
        for name, data in files.items():
            z.writestr(name, data)
    return str(path)


def png_16bit(width: int, height: int, color_type: int, raw_rows: list) -> bytes:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit gray + alpha): IHDR, one IDAT, IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    ihdr = struct.pack('>IIBBBBB', width, height, 16, color_type, 0, 0, 0)
    idat = zlib.compress(b''.join(b'\x00' + row for row in raw_rows))  # Filter type 0 per row.
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat) + chunk(b'IEND', b'')

#----------------------------------------------------------------------------
# One extension list: training and fid.py read the same files.

def test_training_and_fid_read_the_same_files(tmp_path):
    rng = np.random.default_rng(0)
    expected = ['a.png', 'c.bmp', 'd/e.tif', 'f.JPG']  # WebP: the next test.
    arrays = {name: rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for name in expected}
    formats = {'.webp': 'webp', '.bmp': 'bmp', '.tif': 'tiff', '.jpg': 'jpeg', '.png': 'png'}
    files = {name: encode(PIL.Image.fromarray(arr), formats[os.path.splitext(name)[1].lower()], **({'lossless': True} if name.endswith('.webp') else {}))
             for name, arr in arrays.items()}
    files.update({'.hidden.png': files['a.png'], '__MACOSX/._a.png': b'AppleDouble', 'notes.txt': b'text',
                  'trajectory.gif': encode(PIL.Image.fromarray(arrays['a.png']), 'gif'), 'generate.json': b'{}'})
    path = write_files(tmp_path / 'images', files)

    dataset = ImageFolderDataset(path)
    images = evaluation.ImageFiles(path)
    assert [dataset.image_name(i) for i in range(len(dataset))] == expected
    assert images.names == expected
    for i, name in enumerate(expected[:-1]):  # Lossless formats: pixel for pixel.
        np.testing.assert_array_equal(dataset[i][0], arrays[name].transpose(2, 0, 1))
        index, image = images[i]
        assert index == i and image.dtype == torch.uint8
        np.testing.assert_array_equal(image.numpy(), arrays[name].transpose(2, 0, 1))
    assert dataset[3][0].shape == (3, 8, 8) and images[3][1].shape == (3, 8, 8)


@needs_webp
def test_training_and_fid_read_lossless_webp_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {name: rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for name in ['a.png', 'b.webp']}
    path = write_files(tmp_path / 'images', {'a.png': encode(PIL.Image.fromarray(arrays['a.png'])),
                                             'b.webp': encode(PIL.Image.fromarray(arrays['b.webp']), 'webp', lossless=True)})
    dataset, images = ImageFolderDataset(path), evaluation.ImageFiles(path)
    assert [dataset.image_name(i) for i in range(2)] == images.names == ['a.png', 'b.webp']
    for i, name in enumerate(images.names):
        np.testing.assert_array_equal(dataset[i][0], arrays[name].transpose(2, 0, 1))
        np.testing.assert_array_equal(images[i][1].numpy(), arrays[name].transpose(2, 0, 1))


def test_fid_repeats_grayscale_to_three_channels(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, size=(8, 8), dtype=np.uint8)
    path = write_files(tmp_path / 'images', {'g.bmp': encode(PIL.Image.fromarray(gray, 'L'), 'bmp')})
    assert ImageFolderDataset(path).image_shape == [1, 8, 8]
    _, image = evaluation.ImageFiles(path)[0]
    np.testing.assert_array_equal(image.numpy(), np.stack([gray] * 3))


def test_fid_reports_an_unreadable_image_as_a_message(tmp_path):
    path = write_files(tmp_path / 'images', {'3.png': b'\x89PNG but broken'})
    index, message = evaluation.ImageFiles(path)[0]
    assert index == 0 and message.startswith(f'Cannot read image 3.png in {path} (')

#----------------------------------------------------------------------------
# One decoding rule.

def palette_image(rng: np.random.Generator) -> tuple[PIL.Image.Image, np.ndarray]:
    """A 16-colour palette image and its RGB pixels looked up by hand."""
    indices = rng.integers(0, 16, size=(8, 8), dtype=np.uint8)
    palette = rng.integers(0, 256, size=(16, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(indices, 'P')
    image.putpalette(palette.flatten().tolist())
    return image, palette[indices].transpose(2, 0, 1)


def mode_cases():
    """{name: (file bytes, expected uint8 [C, H, W])} for every mode the rule distinguishes."""
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    bits = rng.integers(0, 2, size=(8, 8)).astype(bool)
    palette, palette_rgb = palette_image(rng)
    # 16-bit gray + alpha: PIL opens it as RGBA, keeping the high byte of each sample.
    raw16 = rng.integers(0, 256, size=(8, 8 * 4), dtype=np.uint8)
    gray_hi = raw16[:, 0::4]
    return {
        '1': (encode(PIL.Image.fromarray(bits)), np.where(bits, 255, 0).astype(np.uint8)[np.newaxis]),
        'L': (encode(PIL.Image.fromarray(gray, 'L')), gray[np.newaxis]),
        'LA': (encode(PIL.Image.fromarray(np.stack([gray, alpha], axis=2), 'LA')), gray[np.newaxis]),
        'RGB': (encode(PIL.Image.fromarray(rgb, 'RGB')), rgb.transpose(2, 0, 1)),
        'RGBA': (encode(PIL.Image.fromarray(np.dstack([rgb, alpha]), 'RGBA')), rgb.transpose(2, 0, 1)),
        'P': (encode(palette), palette_rgb),
        'P+transparency': (encode(palette, transparency=3), palette_rgb),
        'LA16': (png_16bit(8, 8, 4, [row.tobytes() for row in raw16]), np.stack([gray_hi] * 3)),
    } | ({'RGBA.webp': (encode(PIL.Image.fromarray(np.dstack([rgb, alpha]), 'RGBA'), 'webp', lossless=True, exact=True),
                        rgb.transpose(2, 0, 1))} if PIL.features.check('webp') else {})


@pytest.mark.parametrize('case', ['1', 'L', 'LA', 'RGB', 'RGBA', pytest.param('RGBA.webp', marks=needs_webp), 'P', 'P+transparency', 'LA16'])
def test_decoding_rule(tmp_path, case):
    data, expected = mode_cases()[case]
    np.testing.assert_array_equal(image_io.decode_image(data, case), expected)
    # The shape read from the header alone (PNG fast path or PIL) agrees with the decoded one.
    source = image_io.ImageSource(write_files(tmp_path / 'images', {'x.png': data}))
    assert source.read_shape('x.png') == expected.shape
    np.testing.assert_array_equal(source.read_image('x.png'), expected)


@pytest.mark.parametrize('mode', ['I;16', 'F'])
def test_16_bit_and_float_images_are_refused(tmp_path, mode):
    if mode == 'I;16':
        data = encode(PIL.Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    else:
        data = encode(PIL.Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)), 'tiff')
    with pytest.raises(ValueError, match=f'x.png is a {mode}-mode \\(16-bit or float\\) image'):
        image_io.decode_image(data, 'x.png')
    path = write_files(tmp_path / 'images', {'a.png': encode(PIL.Image.new('L', (8, 8))), 'b.png': data})
    with pytest.raises(ValueError, match='16-bit or float'):  # At construction, from the header.
        ImageFolderDataset(path)


def test_undecodable_bytes(tmp_path):
    with pytest.raises(ValueError, match=r'Cannot read image where/x.png \(UnidentifiedImageError'):
        image_io.decode_image(b'not an image', 'where/x.png')
    truncated = encode(PIL.Image.fromarray(np.random.default_rng(3).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)))[:80]
    with pytest.raises(ValueError, match='Cannot read image t.png'):
        image_io.decode_image(truncated, 't.png')

#----------------------------------------------------------------------------
# Listing: folders and ZIPs alike.

def test_folder_and_zip_list_the_same_sorted_names(tmp_path):
    data = encode(PIL.Image.new('RGB', (4, 4)))
    names = ['b.png', 'a/z/deep.png', 'a/b.PNG', 'a0.jpg', 'B.png', 'a/b.png.txt', '.hidden/x.png', 'a/.x.png',
             '__MACOSX/a/._b.png', 'dataset.json', 'folder with space/i.bmp']
    files = {name: data for name in reversed(names)}  # Written in reverse: sorting must give the order.
    folder = image_io.ImageSource(write_files(tmp_path / 'data', files))
    with zipfile.ZipFile(tmp_path / 'data.zip', 'w') as z:
        z.writestr('a/', b'')  # Folder entries are not files.
        for name, content in files.items():
            z.writestr(name, content)
    archive = image_io.ImageSource(str(tmp_path / 'data.zip'))
    expected_images = ['B.png', 'a/b.PNG', 'a/z/deep.png', 'a0.jpg', 'b.png', 'folder with space/i.bmp']
    assert folder.image_names == archive.image_names == expected_images
    assert folder.names == archive.names == sorted(names)
    assert not folder.is_zip and archive.is_zip
    assert archive.where('a0.jpg') == f'{tmp_path / "data.zip"}:a0.jpg'
    assert folder.where('a0.jpg') == os.path.join(str(tmp_path / 'data'), 'a0.jpg')


def test_is_image_name():
    assert image_io.is_image_name('x/y.Webp') and image_io.is_image_name('x\\y.bmp')
    for name in ['x.gif', 'x.txt', 'x', '.x.png', 'a\\.b\\x.png', '__MACOSX/x.png', 'a/__MACOSX/x.png']:
        assert not image_io.is_image_name(name), name


def test_missing_and_foreign_sources(tmp_path):
    with pytest.raises(ValueError, match='nowhere does not exist; check --data'):
        image_io.ImageSource(str(tmp_path / 'nowhere'), hint='check --data')
    (tmp_path / 'data.tar').write_bytes(b'not an archive')
    with pytest.raises(ValueError, match='Cannot read .*data.tar: it is neither a folder nor a ZIP archive'):
        image_io.ImageSource(str(tmp_path / 'data.tar'))


def test_damaged_zip_member_is_named(tmp_path):
    data = encode(PIL.Image.new('RGB', (4, 4), (10, 20, 30)))
    path = write_zip(tmp_path / 'data.zip', {'a.png': data})
    blob = bytearray((tmp_path / 'data.zip').read_bytes())
    offset = blob.index(data) + len(data) // 2
    blob[offset] ^= 0xff  # The CRC no longer matches.
    (tmp_path / 'data.zip').write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r'Cannot read .*data.zip:a.png \(BadZipFile'):
        image_io.ImageSource(path).read_bytes('a.png')

#----------------------------------------------------------------------------
# Labels.

def labels_json(pairs) -> bytes:
    return json.dumps({'labels': pairs}).encode()


def test_labels_in_name_order():
    names = ['a.png', 'sub/b.png']
    assert image_io.read_labels(labels_json([['sub\\b.png', 1], ['a.png', 0], ['extra.png', 5]]), names, 'here') == [0, 1]
    classes = image_io.parse_labels(labels_json([['sub/b.png', 3], ['a.png', 0]]), names, 'here')
    assert classes.dtype == np.int64 and classes.tolist() == [0, 3]
    vectors = image_io.parse_labels(labels_json([['a.png', [0.5, 1]], ['sub/b.png', [2, -1]]]), names, 'here')
    assert vectors.dtype == np.float32 and vectors.tolist() == [[0.5, 1], [2, -1]]
    scalars = image_io.parse_labels(labels_json([['a.png', 0.5], ['sub/b.png', 2]]), names, 'here')
    assert scalars.shape == (2, 1)
    assert image_io.parse_labels(None, names, 'here') is None
    assert image_io.parse_labels(labels_json(None), names, 'here') is None


@pytest.mark.parametrize('text, message', [
    (b'{not json', 'Cannot parse dataset.json in here'),
    (b'{"classes": []}', 'Cannot parse dataset.json in here'),
    (b'{"labels": 3}', 'Cannot parse dataset.json in here'),
    (b'{"labels": [["a.png"]]}', 'Cannot parse dataset.json in here'),
    (labels_json([['a.png', 1]]), r'has no label for b.png \(1 of 2 images unlabelled\)'),
    (labels_json([['a.png', 0], ['b.png', -1]]), 'negative class index'),
    (labels_json([['a.png', [1.0, 2.0]], ['b.png', [1.0]]]), 'mixes label types'),
    (labels_json([['a.png', 0], ['b.png', 'cat']]), 'mixes label types'),
    (b'{"labels": [["a.png", [1, NaN]], ["b.png", [1, 2]]]}', 'non-finite'),
    (labels_json([['a.png', [[1]]], ['b.png', [[2]]]]), 'shape'),
])
def test_label_errors(text, message):
    with pytest.raises(ValueError, match=message):
        image_io.parse_labels(text, ['a.png', 'b.png'], 'here')


def test_folder_labels():
    assert image_io.folder_labels(['dog/1.png', 'cat/a/2.png', 'dog/0.png', 'bird/3.png']) == [2, 1, 2, 0]
    assert image_io.folder_labels([f'{d}/x.png' for d in range(10)]) == list(range(10))
    assert image_io.folder_labels(['cat/1.png', 'cat/2.png']) is None  # One folder: no classes.
    assert image_io.folder_labels(['cat/1.png', 'top.png']) is None  # An image outside the folders.

#----------------------------------------------------------------------------
# Grids, against a layout computed independently with PIL.

def expected_grid(images: np.ndarray, cells: list, rows: int, cols: int) -> np.ndarray:
    """uint8 [C, H', W']: each image [C, H, W] of `cells` ((row, col) or None) pasted, upscaled with
    PIL's nearest-neighbour resize by the least whole factor that makes cols * W at least 256, on a
    grey (128) canvas with 2 pixels between neighbours."""
    _, C, H, W = images.shape
    scale = 1
    while cols * W * scale < 256:
        scale += 1
    h, w = H * scale, W * scale
    mode = 'L' if C == 1 else 'RGB'
    canvas = PIL.Image.new(mode, (cols * w + (cols - 1) * 2, rows * h + (rows - 1) * 2), (128,) * C if C == 3 else 128)
    for image, cell in zip(images, cells):
        if cell is not None:
            pil = PIL.Image.fromarray(image[0] if C == 1 else image.transpose(1, 2, 0), mode)
            canvas.paste(pil.resize((w, h), PIL.Image.Resampling.NEAREST), (cell[1] * (w + 2), cell[0] * (h + 2)))
    array = np.asarray(canvas)
    return array[np.newaxis] if C == 1 else array.transpose(2, 0, 1)


def random_uint8(shape, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8))


@pytest.mark.parametrize('shape, cols, cells', [
    ([5, 3, 8, 8], None, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]),       # ceil(sqrt(5)) = 3 columns; scale 11.
    ([4, 1, 16, 16], 4, [(0, 0), (0, 1), (0, 2), (0, 3)]),               # One row; scale 4.
    ([3, 3, 300, 300], 2, [(0, 0), (0, 1), (1, 0)]),                    # Wide enough already: scale 1.
])
def test_grid_geometry(shape, cols, cells):
    images = random_uint8(shape)
    rows = max(r for r, _ in cells) + 1
    grid = image_io.make_grid(images, cols=cols)
    assert grid.dtype == torch.uint8
    np.testing.assert_array_equal(grid.numpy(), expected_grid(images.numpy(), cells, rows, max(c for _, c in cells) + 1))


def test_grid_rows_per_class():
    images = random_uint8([7, 1, 8, 8], seed=1)
    labels = [2, 0, 2, 1, 0, 2, 0]
    # Row c holds class c in image order; three columns (the largest class has three images).
    cells = [(2, 0), (0, 0), (2, 1), (1, 0), (0, 1), (2, 2), (0, 2)]
    grid = image_io.make_grid(images, labels=labels)
    np.testing.assert_array_equal(grid.numpy(), expected_grid(images.numpy(), cells, 3, 3))
    # At most `cols` per row; a class without images leaves its row empty (grey).
    grid = image_io.make_grid(images[:3], cols=1, labels=[3, 0, 0])
    np.testing.assert_array_equal(grid.numpy(), expected_grid(images[:3].numpy(), [(3, 0), (0, 0), None], 4, 1))
    with pytest.raises(ValueError, match='one class index >= 0 per image'):
        image_io.make_grid(images, labels=[0, 1])


def test_float_images_and_saved_grid(tmp_path):
    images = torch.linspace(-1.2, 1.2, 2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    as_uint8 = torch.from_numpy(np.clip(images.numpy() * 127.5 + 128, 0, 255).astype(np.uint8))  # EDM's rule, truncated.
    assert torch.equal(image_io.to_uint8(images), as_uint8)
    image_io.save_grid(images, str(tmp_path / 'grid.png'), labels=[1, 0])
    assert torch.equal(image_io.load_image(str(tmp_path / 'grid.png')), image_io.make_grid(as_uint8, labels=[1, 0]))
    assert os.listdir(tmp_path) == ['grid.png']  # No temporary file left behind.


def test_trajectory_gif_is_one_row_per_frame(tmp_path):
    frames = [torch.rand([3, 1, 8, 8], generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(4)]
    image_io.save_trajectory_gif(frames, str(tmp_path / 'traj.gif'))
    with PIL.Image.open(tmp_path / 'traj.gif') as gif:
        # Three 8x8 images in a row, upscaled 11x (3 * 8 * 11 >= 256), 2-pixel gaps.
        assert gif.n_frames == 4 and gif.size == (3 * 88 + 2 * 2, 88)
        gif.seek(3)
        np.testing.assert_array_equal(np.asarray(gif.convert('L')), image_io.make_grid(frames[3], cols=3)[0].numpy())

#----------------------------------------------------------------------------
