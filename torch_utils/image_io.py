"""Image files: the one place that reads them (training datasets, fid.py, dataset_tool.py, the quick
start's scorer) and writes them (PNGs, grids, GIF trajectories). Sources are folders or ZIPs, listed
alike (images at any depth, sorted relative paths, hidden files and __MACOSX left out); every image
decodes to uint8 [C, H, W] by one rule (8-bit grayscale -> C = 1, any other mode -> RGB; 16-bit and
float refused rather than clipped); dataset.json holds labels. Float images in [-1, 1] are written as
EDM's generate.py writes them, (x * 127.5 + 128) clipped and truncated, to a hidden temporary name
renamed into place, so a file that exists is complete.
"""

import io
import json
import math
import os
import struct
import zipfile
from typing import Any, Optional, Sequence

import numpy as np
import PIL.Image
import torch

import dnnlib

__all__ = ['IMAGE_EXTENSIONS', 'is_image_name', 'image_channels', 'png_shape', 'decode_image', 'ImageSource',
           'read_labels', 'labels_array', 'parse_labels', 'folder_labels',
           'to_uint8', 'save_image', 'load_image', 'grid_layout', 'make_grid', 'save_grid', 'save_trajectory_gif']

# Still-image formats that Pillow reads. GIF is left out on purpose: generate.py writes denoising
# trajectories as GIFs, and one of them in a folder of samples must never count as a sample.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.tif', '.tiff', '.ppm', '.pgm', '.pbm', '.pnm')

# PIL modes that decode to one channel; every other 8-bit mode (RGB, RGBA, P, PA, CMYK, YCbCr, ...) decodes to RGB.
_GRAY_MODES = frozenset(['1', 'L', 'LA', 'La'])

# 16-bit integer and float modes: converting them to 8 bits clips every value above 255.
_HIGH_BIT_MODES = frozenset(['I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'])

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

#----------------------------------------------------------------------------
# File names.

def is_image_name(name: str) -> bool:
    """True for an image file by extension (any case), skipping hidden files and folders and macOS
    archive debris; `name` is a relative path with '/' or '\\' separators."""
    parts = name.replace('\\', '/').split('/')
    if any(part.startswith('.') or part == '__MACOSX' for part in parts):
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS

#----------------------------------------------------------------------------
# Decoding one image.

def image_channels(mode: str, where: str) -> int:
    """The channel count C that decode_image() gives an image of PIL mode `mode`: 1 or 3. Raises
    ValueError naming `where` for 16-bit and float images."""
    if mode in _HIGH_BIT_MODES:
        raise ValueError(f'{where} is a {mode}-mode (16-bit or float) image; convert it to 8-bit grayscale or RGB first.')
    return 1 if mode in _GRAY_MODES else 3


def png_shape(head: bytes) -> Optional[tuple[int, int, int]]:
    """[C, H, W] from a PNG's first 26 bytes (signature + IHDR), or None if they are not an 8-bit
    (or lower) PNG, which PIL's header parser must then look at.

    Reading the IHDR directly costs a few microseconds per image, against ~60 for PIL's header
    parser, which makes checking every image's shape of a dataset affordable (0.6 s per 50k)."""
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b'IHDR':
        return None
    width, height = struct.unpack('>II', head[16:24])
    bit_depth, color_type = head[24], head[25]
    # PIL opens 16-bit gray as I;16 (refused) and 16-bit gray + alpha as RGBA (3 channels).
    if bit_depth > 8 or color_type not in (0, 2, 3, 4, 6):
        return None
    # 0 = gray, 4 = gray + alpha: PIL opens them as 1, L or LA, which decode to one channel.
    return (1 if color_type in (0, 4) else 3), height, width


def _cannot_read(where: str, err: Exception) -> ValueError:
    return ValueError(f'Cannot read image {where} ({type(err).__name__}: {err}); remove or replace the file.')


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode an encoded image file's bytes to uint8 [C, H, W]: 8-bit grayscale -> C = 1, anything
    else -> RGB, C = 3 (alpha dropped). Raises ValueError naming `where` if the bytes cannot be
    decoded or hold a 16-bit or float image."""
    try:
        img = PIL.Image.open(io.BytesIO(data))
    except Exception as err:  # PIL: UnidentifiedImageError, OSError, SyntaxError, ...
        raise _cannot_read(where, err) from err
    with img:
        gray = image_channels(img.mode, where) == 1
        try:
            if not gray and img.mode == 'P' and 'transparency' in img.info:
                img = img.convert('RGBA')  # Direct P -> RGB warns when the transparency is given as bytes.
            array = np.asarray(img.convert('L' if gray else 'RGB'), dtype=np.uint8)
        except Exception as err:  # Truncated or damaged pixel data: OSError, zlib.error, ...
            raise _cannot_read(where, err) from err
    array = array[np.newaxis] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.array(array, order='C')  # A writable copy: PIL's buffer is read-only.

#----------------------------------------------------------------------------
# Folders and ZIP archives.

class ImageSource:
    """The files of a folder or a ZIP archive. `names`: every file, by relative '/'-separated path,
    sorted; `image_names`: those that are images (is_image_name). A ZIP is opened lazily by each
    process that reads it, so that forked DataLoader workers never share the parent's file offset;
    pickling drops the open handle."""

    def __init__(self, path: str, hint: str = 'pass a folder or a ZIP archive of images'):
        self.path = str(path)
        self._zip: Optional[zipfile.ZipFile] = None
        self._zip_pid: Optional[int] = None
        if os.path.isdir(self.path):
            self.is_zip = False
            self.names = sorted(self._list_folder())
        elif os.path.exists(self.path):
            self.is_zip = True
            try:
                self.names = sorted(name for name in self._get_zip().namelist() if not name.endswith('/'))
            except zipfile.BadZipFile as err:
                raise ValueError(f'Cannot read {self.path}: it is neither a folder nor a ZIP archive ({err}); {hint}.') from err
            except OSError as err:
                raise ValueError(f'Cannot read {self.path} ({err.strerror or err}); {hint}.') from err
        else:
            raise ValueError(f'{self.path} does not exist; {hint}.')
        self.image_names = [name for name in self.names if is_image_name(name)]

    def _list_folder(self) -> list[str]:
        def walk_error(err: OSError) -> None:
            raise ValueError(f'Cannot read folder {err.filename} ({err.strerror}); check its permissions.')
        names = []
        for root, _dirs, files in os.walk(self.path, onerror=walk_error):
            names += [os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, '/') for f in files]
        return names

    def _get_zip(self) -> zipfile.ZipFile:
        # One handle per process: a handle inherited across fork() shares the file offset with the
        # parent and its siblings, so concurrent reads would return each other's bytes.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def where(self, name: str) -> str:
        """A file of the source, as messages name it."""
        return f'{self.path}:{name}' if self.is_zip else os.path.join(self.path, name)

    def read_bytes(self, name: str, size: int = -1) -> bytes:
        """The first `size` bytes (all for -1) of a file of the source."""
        try:
            if self.is_zip:
                with self._get_zip().open(name, 'r') as f:
                    return f.read(size)
            with open(os.path.join(self.path, name), 'rb') as f:
                return f.read(size)
        except Exception as err:  # zipfile reports bad CRCs and truncation in several ways.
            raise ValueError(f'Cannot read {self.where(name)} ({type(err).__name__}: {err}); the file or archive is damaged.') from err

    def read_shape(self, name: str) -> tuple[int, int, int]:
        """[C, H, W] that read_image() will return, from the file's header only."""
        shape = png_shape(self.read_bytes(name, 26))
        if shape is not None:
            return shape
        try:
            with (self._get_zip().open(name, 'r') if self.is_zip else open(os.path.join(self.path, name), 'rb')) as f:
                with PIL.Image.open(f) as img:
                    width, height, mode = img.width, img.height, img.mode
        except Exception as err:  # PIL: UnidentifiedImageError, OSError, SyntaxError, ...
            raise _cannot_read(self.where(name), err) from err
        return image_channels(mode, self.where(name)), height, width

    def read_image(self, name: str, where: Optional[str] = None) -> np.ndarray:
        """uint8 [C, H, W] of an image of the source (decode_image); `where` names it in messages."""
        return decode_image(self.read_bytes(name), where or self.where(name))

    def read_labels(self, names: Sequence[str]) -> Optional[list]:
        """read_labels() of the source's dataset.json (None when it has none) for `names`."""
        return read_labels(self.read_bytes('dataset.json') if 'dataset.json' in self.names else None, names, self.path)

    def close(self) -> None:
        """Close the ZIP handle of this process (it reopens on the next read)."""
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip, self._zip_pid = None, None

    def __getstate__(self) -> dict:
        # Spawned DataLoader workers and pickles get no open file; they reopen on first read.
        return dict(self.__dict__, _zip=None, _zip_pid=None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

#----------------------------------------------------------------------------
# Labels: dataset.json, or the top-level folders.

def read_labels(dataset_json: Optional[bytes], names: Sequence[str], where: str) -> Optional[list]:
    """The labels that dataset.json (its bytes; None when there is no file) gives `names`, as JSON
    values in the order of `names`; None for no file or {"labels": null}. Raises ValueError naming
    `where` for a malformed file or an image without a label."""
    if dataset_json is None:
        return None
    try:
        listed = json.loads(dataset_json)['labels']
        table = None if listed is None else {str(path).replace('\\', '/'): label for path, label in listed}
    except Exception as err:  # json, KeyError, TypeError and unpacking all signal a malformed file.
        raise ValueError(f'Cannot parse dataset.json in {where} ({err}); it must read {{"labels": [[relpath, label], ...]}} or {{"labels": null}}.') from err
    if table is None:
        return None
    missing = [name for name in names if name not in table]
    if missing:
        raise ValueError(f'dataset.json in {where} has no label for {missing[0]} ({len(missing)} of {len(names)} images unlabelled); '
                         f'give every image a label, or write {{"labels": null}} for none.')
    return [table[name] for name in names]


def labels_array(values: Sequence[Any], where: str) -> np.ndarray:
    """Labels as training reads them: whole numbers are class indices, int64 [n] (>= 0); anything
    else must be numeric vectors of one length, float32 [n, k]. Raises ValueError naming `where`."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        labels = np.asarray(values, dtype=np.int64)
        if labels.size and labels.min() < 0:
            raise ValueError(f'dataset.json in {where} has a negative class index ({labels.min()}); class indices must be 0, 1, 2, ...')
        return labels
    try:
        labels = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise ValueError(f'dataset.json in {where} mixes label types or vector lengths ({err}); labels must all be class indices or all numeric vectors of one length.') from err
    labels = labels.reshape(len(values), -1) if labels.ndim <= 1 else labels
    if labels.ndim != 2 or not np.isfinite(labels).all():
        raise ValueError(f'dataset.json in {where} has labels of shape {list(labels.shape[1:])} or non-finite values; labels must be class indices or flat numeric vectors.')
    return labels


def parse_labels(dataset_json: Optional[bytes], names: Sequence[str], where: str) -> Optional[np.ndarray]:
    """Labels of `names` from dataset.json: int64 [n] class indices, float32 [n, k] vectors, or None
    (no dataset.json, or {"labels": null}); read_labels() then labels_array()."""
    values = read_labels(dataset_json, names, where)
    return None if values is None else labels_array(values, where)


def folder_labels(names: Sequence[str]) -> Optional[list[int]]:
    """Classes from the top-level folders: when every image sits in one and there are at least two,
    the sorted folder names are classes 0..K-1 (folders 0..9 give the digits); else None."""
    folders = [name.split('/')[0] if '/' in name else None for name in names]
    if None in folders or len(set(folders)) < 2:
        return None
    class_index = {folder: idx for idx, folder in enumerate(sorted(set(folders)))}
    return [class_index[folder] for folder in folders]

#----------------------------------------------------------------------------
# Writing.

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] (or [C, H, W]) on the CPU: uint8 input unchanged, float input mapped from
    [-1, 1] by (x * 127.5 + 128).clip(0, 255), truncated (EDM's conversion)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f'Expected a tensor of images, got {type(images).__name__}.')
    if images.dtype == torch.uint8:
        return images.cpu()
    if not images.is_floating_point():
        raise ValueError(f'Images must be uint8 or floating point in [-1, 1], got {images.dtype}.')
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).cpu()


def _to_pil(image: torch.Tensor) -> PIL.Image.Image:
    """A [C, H, W] image with C = 1 (grey) or 3 (RGB) as a PIL image."""
    image = to_uint8(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f'An image must be [C, H, W] with 1 or 3 channels, got shape {list(image.shape)}.')
    array = image.permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(array[:, :, 0], 'L') if array.shape[2] == 1 else PIL.Image.fromarray(array, 'RGB')


def _save_atomic(pil_images: Sequence[PIL.Image.Image], path: str, **save_kwargs) -> None:
    def write(f):
        if len(pil_images) == 1:
            pil_images[0].save(f, **save_kwargs)
        else:
            pil_images[0].save(f, save_all=True, append_images=list(pil_images[1:]), **save_kwargs)
    dnnlib.util.write_atomic(path, write)


def save_image(image: torch.Tensor, path: str) -> None:
    """Write one image [C, H, W] (float in [-1, 1] or uint8; C = 1 or 3) as a PNG, atomically."""
    _save_atomic([_to_pil(image)], path, format='PNG')


def load_image(path: str) -> torch.Tensor:
    """Read an image file as uint8 [C, H, W] with C = 1 (grey) or 3 (RGB), by decode_image()'s rule."""
    with open(path, 'rb') as f:
        return torch.from_numpy(decode_image(f.read(), path))

#----------------------------------------------------------------------------
# Grids.

GRID_GAP = 2                # Pixels of background between neighbouring images.
GRID_MIN_ROW_WIDTH = 256    # Images are upscaled (nearest neighbour, whole factors) until a row is this wide.
GRID_BACKGROUND = 128       # Mid grey: it stands apart from black and white backgrounds alike.


def grid_layout(num: int, cols: Optional[int] = None, labels: Optional[Sequence[int]] = None) -> tuple[int, int, list]:
    """Where make_grid() puts `num` images: (rows, cols, [(row, col) or None per image]).

    Without labels, row by row, `cols` (default ceil(sqrt(num))) to a row. With class labels [num]
    (integers >= 0), one row per class: row c holds the images of class c in their order, up to
    `cols` of them (default: as many as the largest class has); rows run from class 0 to the largest
    label, so a class without images leaves its row empty. None marks an image left out."""
    if num < 1:
        raise ValueError('A grid needs at least one image.')
    if labels is None:
        cols = max(1, min(int(cols or math.ceil(math.sqrt(num))), num))
        return math.ceil(num / cols), cols, [divmod(i, cols) for i in range(num)]
    labels = [int(c) for c in labels]
    if len(labels) != num or min(labels) < 0:
        raise ValueError(f'A grid by class needs one class index >= 0 per image, got {len(labels)} labels for {num} images.')
    counts = [0] * (max(labels) + 1)
    cells = []
    for c in labels:
        cells.append((c, counts[c]))
        counts[c] += 1
    cols = max(1, int(cols or max(counts)))
    return len(counts), cols, [(row, col) if col < cols else None for row, col in cells]


def make_grid(images: torch.Tensor, cols: Optional[int] = None, labels: Optional[Sequence[int]] = None,
              gap: int = GRID_GAP, min_row_width: int = GRID_MIN_ROW_WIDTH, background: int = GRID_BACKGROUND) -> torch.Tensor:
    """Tile images [B, C, H, W] as grid_layout() places them into one uint8 image
    [C, rows * s * H + (rows - 1) * gap, cols * s * W + (cols - 1) * gap], where every image is
    upscaled by the whole factor s = ceil(min_row_width / (cols * W)) (nearest neighbour; at least 1),
    and `gap` pixels of `background` grey separate neighbours and fill empty cells."""
    images = to_uint8(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f'make_grid needs images [B, C, H, W] with B >= 1, got shape {list(images.shape)}.')
    B, C, H, W = images.shape
    rows, cols, cells = grid_layout(B, cols, labels)
    scale = max(1, math.ceil(min_row_width / (cols * W)))
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    h, w = H * scale, W * scale
    grid = torch.full([C, rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap], background, dtype=torch.uint8)
    for image, cell in zip(images, cells):
        if cell is not None:
            y, x = cell[0] * (h + gap), cell[1] * (w + gap)
            grid[:, y:y + h, x:x + w] = image
    return grid


def save_grid(images: torch.Tensor, path: str, cols: Optional[int] = None, labels: Optional[Sequence[int]] = None) -> None:
    """make_grid() written as one PNG, atomically."""
    save_image(make_grid(images, cols, labels), path)


def save_trajectory_gif(frames: Sequence[torch.Tensor], path: str, duration_ms: int = 150,
                        final_hold: int = 5) -> None:
    """An animated GIF of a denoising trajectory: frame i shows the states x_i [B, C, H, W] of the
    B samples side by side as one strip (make_grid with one row; values clipped to [-1, 1]); the last
    frame is held `final_hold` times longer. Written atomically."""
    if len(frames) == 0:
        raise ValueError('A trajectory needs at least one frame.')
    strips = [_to_pil(make_grid(frame.clamp(-1, 1) if frame.is_floating_point() else frame, cols=frame.shape[0]))
              for frame in frames]
    durations = [duration_ms] * (len(strips) - 1) + [duration_ms * max(1, final_hold)]
    # GIF is a palette format; an adaptive palette per frame keeps colours close.
    strips = [s.convert('P', palette=PIL.Image.Palette.ADAPTIVE) if s.mode == 'RGB' else s for s in strips]
    _save_atomic(strips, path, format='GIF', duration=durations, loop=0)

#----------------------------------------------------------------------------
