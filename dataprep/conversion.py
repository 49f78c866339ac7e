"""Convert image datasets into the ZIP (or folder) layout that training/dataset.py reads.

Layout of the output, as in EDM: PNGs named 00000/img00000000.png, 00000/img00000001.png, ...
(1000 per folder), and dataset.json holding {"labels": [[png name, class], ...]} or
{"labels": null}. A ZIP is written uncompressed (ZIP_STORED) because the PNGs are what the data
loader reads; images are 1-channel (grayscale) or 3-channel (RGB), square, with a power-of-two side.
"""

import contextlib
import gzip
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np
import PIL.Image
import tqdm

from torch_utils import image_io

TRANSFORMS = ('center-crop', 'center-crop-wide')

#----------------------------------------------------------------------------

class ImageEntry(NamedTuple):
    name: str               # Where the image came from (file, archive member, key), for messages.
    img: np.ndarray         # [H, W, C] uint8 with C = 1 (grayscale) or 3 (RGB).
    label: Any              # Class index (or any JSON value from a source dataset.json), or None.


def decode_hwc(data: bytes, where: str) -> np.ndarray:
    """image_io.decode_image() as [H, W, C] uint8, the layout of the transforms below."""
    return image_io.decode_image(data, where).transpose(1, 2, 0)

#----------------------------------------------------------------------------
# Sources. Each returns (number of images it will yield, iterator of ImageEntry); the listing
# happens at once so that a bad source fails before any output is written.

def open_image_files(source: str, max_images: Optional[int]) -> tuple[int, Iterator[ImageEntry]]:
    """The images of a folder or ZIP archive at any depth, sorted by relative path
    (image_io.ImageSource). Labels: a dataset.json in the source ({"labels": [[relpath, label], ...]}
    or {"labels": null}) takes precedence; without one, the top-level folders are the classes when
    every image sits in one of two or more (image_io.folder_labels); else there are none."""
    files = image_io.ImageSource(source, hint='check --source')
    names = files.image_names
    if not names:
        raise ValueError(f'No image files found in {source}; check --source.')
    if 'dataset.json' in files.names:
        labels = files.read_labels(names)
        if labels is not None:
            image_io.labels_array(labels, source)  # Refuse now labels that training could not read.
    else:
        labels = image_io.folder_labels(names)
    names = names[:max_images]

    def iterate() -> Iterator[ImageEntry]:
        for idx, name in enumerate(names):
            where = files.where(name)
            yield ImageEntry(where, decode_hwc(files.read_bytes(name), where), None if labels is None else labels[idx])
        files.close()
    return len(names), iterate()

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-10 batches: plain containers and numpy arrays only, so a tampered
    archive cannot run code while it is read."""
    _allowed = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
                ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar')}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR-10 batch')
        return super().find_class(module, name)

def open_cifar10(tarball: str, max_images: Optional[int]) -> tuple[int, Iterator[ImageEntry]]:
    """The training half of cifar-10-python.tar.gz: data_batch_1..5, in order, as [32, 32, 3].

    Each batch is a pickled dict with 'data' uint8 [n, 3072] (channel-major: R plane, G, B) and
    'labels' [n]; batches of any size are accepted.
    """
    images, labels = [], []
    try:
        with tarfile.open(tarball, 'r:gz') as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and os.path.basename(m.name).startswith('data_batch_')), key=lambda m: m.name)
            for member in members:
                # The batches are Python 2 pickles; 'latin1' is the decoding numpy documents for them.
                batch = _ArrayUnpickler(tar.extractfile(member), encoding='latin1').load()
                batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
                data = np.asarray(batch['data'], dtype=np.uint8)
                if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch['labels']) != data.shape[0]:
                    raise ValueError(f'{member.name} has data of shape {data.shape} and {len(batch["labels"])} labels')
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)) # NCHW -> NHWC
                labels += [int(label) for label in batch['labels']]
    except Exception as e: # tarfile, gzip, pickle and KeyError all signal a damaged or foreign archive.
        raise ValueError(f'Cannot read CIFAR-10 archive {tarball} ({type(e).__name__}: {e}); download cifar-10-python.tar.gz again.') from e
    if not members:
        raise ValueError(f'{tarball} holds no data_batch_* files; pass the original cifar-10-python.tar.gz.')
    images = np.concatenate(images)[:max_images]

    def iterate() -> Iterator[ImageEntry]:
        for idx, img in enumerate(images):
            yield ImageEntry(f'{tarball}[{idx}]', img, labels[idx])
    return len(images), iterate()

def read_idx(path: str, magic: int) -> np.ndarray:
    """Read a gzipped IDX file (MNIST's format): big-endian magic, dimensions, then uint8 data."""
    try:
        with gzip.open(path, 'rb') as f:
            data = f.read()
        found, *dims = np.frombuffer(data, dtype='>u4', count=1 + (magic & 0xff), offset=0)
        if found != magic:
            raise ValueError(f'magic number {found}, expected {magic}')
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + len(dims)))
        return arr.reshape(*[int(d) for d in dims])
    except Exception as e:
        raise ValueError(f'Cannot read MNIST file {path} ({e}); download it again.') from e

def open_mnist(images_gz: str, max_images: Optional[int]) -> tuple[int, Iterator[ImageEntry]]:
    """MNIST images (train-images-idx3-ubyte.gz) with the labels file beside it, padded to [32, 32, 1]."""
    labels_gz = os.path.join(os.path.dirname(images_gz), os.path.basename(images_gz).replace('images-idx3', 'labels-idx1'))
    if not os.path.isfile(labels_gz):
        raise FileNotFoundError(f'MNIST labels {labels_gz} not found; put the labels file beside the images file.')
    images = read_idx(images_gz, magic=0x0803)
    labels = read_idx(labels_gz, magic=0x0801)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f'{images_gz} has {images.shape[0]} images but {labels_gz} has {labels.shape[0]} labels; download both again.')
    images = np.pad(images[:max_images], [(0, 0), (2, 2), (2, 2)]) # 28x28 -> 32x32, zero border.

    def iterate() -> Iterator[ImageEntry]:
        for idx, img in enumerate(images):
            yield ImageEntry(f'{images_gz}[{idx}]', img[:, :, np.newaxis], int(labels[idx]))
    return len(images), iterate()

def open_lsun(lmdb_dir: str, max_images: Optional[int]) -> tuple[int, Iterator[ImageEntry]]:
    """An LSUN category (*_lmdb folder): encoded images stored as lmdb values, no labels."""
    try:
        import lmdb
    except ImportError as e:
        raise ValueError('Reading LSUN needs the lmdb package; install it with: pip install lmdb') from e
    try:
        with lmdb.open(lmdb_dir, readonly=True, lock=False) as env:
            total = env.stat()['entries']
    except Exception as e:
        raise ValueError(f'Cannot open LSUN database {lmdb_dir} ({e}); check --source.') from e
    total = total if max_images is None else min(total, max_images)

    def iterate() -> Iterator[ImageEntry]:
        count = 0
        with lmdb.open(lmdb_dir, readonly=True, lock=False) as env, env.begin(write=False) as txn:
            for key, value in txn.cursor():
                if count == total:
                    break
                where = f'{lmdb_dir}[{bytes(key).decode(errors="replace")}]'
                try:
                    img = decode_hwc(bytes(value), where)
                except ValueError as e:
                    # LSUN ships a few undecodable records; the reference converters skip them too.
                    tqdm.tqdm.write(f'Skipping: {e}')
                    continue
                count += 1
                yield ImageEntry(where, img, None)
    return total, iterate()

def open_source(source: str, max_images: Optional[int] = None) -> tuple[int, Iterator[ImageEntry]]:
    """Guess the format of --source as EDM does and open it; returns (image count, entries)."""
    name = os.path.basename(os.path.normpath(source))
    if os.path.isdir(source):
        if name.endswith('_lmdb'):
            return open_lsun(source, max_images)
        return open_image_files(source, max_images)
    if not os.path.exists(source):
        raise FileNotFoundError(f'Source {source} does not exist; check --source.')
    if not os.access(source, os.R_OK):
        raise PermissionError(f'Source {source} is not readable; check its permissions.')
    if name == 'cifar-10-python.tar.gz':
        return open_cifar10(source, max_images)
    if name.endswith('images-idx3-ubyte.gz'):
        return open_mnist(source, max_images)
    if name.lower().endswith('.zip'):
        return open_image_files(source, max_images)
    raise ValueError(f'Unknown source format: {source}; pass a folder of images, a ZIP of images, an LSUN *_lmdb folder, '
        'cifar-10-python.tar.gz or train-images-idx3-ubyte.gz.')

#----------------------------------------------------------------------------
# Transforms: [H, W, C] uint8 in, [H, W, C] uint8 out.

def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize to width x height, as EDM does; an image already that size is left untouched."""
    if img.shape[1] == width and img.shape[0] == height:
        return img
    pil = PIL.Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    out = np.asarray(pil.resize((width, height), PIL.Image.Resampling.LANCZOS))
    return out.reshape(height, width, img.shape[2])

def center_crop(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Crop the largest centred square, then resize to width x height (the ImageNet recipe)."""
    h, w = img.shape[:2]
    crop = min(h, w)
    img = img[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
    return resize_image(img, width, height)

def center_crop_wide(img: np.ndarray, width: int, height: int) -> Optional[np.ndarray]:
    """EDM's (and StyleGAN2-ADA's) LSUN recipe, geometry kept exactly: for a w x h image, keep all
    w columns and the centred round(width * h / w) rows, resize that strip to width x height
    (Lanczos), and paste it centred on a black width x width square. Returns None (the image is
    skipped) when w < width or the strip would have fewer than height rows, i.e. for images
    narrower than width or with an aspect ratio wider than width:height.

    The strip has as many source rows as the image would have output rows at width pixels across,
    so an image wider than width pixels is squeezed horizontally by w / width but not vertically;
    we keep that so that datasets match the ones the published tool makes.
    """
    h, w = img.shape[:2]
    crop_h = int(round(width * h / w)) # Half to even, as numpy's round in EDM.
    if w < width or crop_h < height:
        return None
    img = img[(h - crop_h) // 2 : (h + crop_h) // 2]
    img = resize_image(img, width, height)
    canvas = np.zeros([width, width, img.shape[2]], dtype=np.uint8)
    canvas[(width - height) // 2 : (width - height) // 2 + height] = img
    return canvas

def make_transform(transform: Optional[str], resolution: Optional[tuple[int, int]]) -> Callable[[np.ndarray], Optional[np.ndarray]]:
    """The per-image transform for --transform and --resolution (width, height); it returns None
    for an image the transform skips (only center-crop-wide does)."""
    if transform is None:
        return (lambda img: img) if resolution is None else (lambda img: resize_image(img, *resolution))
    if resolution is None:
        raise ValueError(f'--transform={transform} needs an output size; add --resolution=WxH.')
    fn = {'center-crop': center_crop, 'center-crop-wide': center_crop_wide}[transform]
    return lambda img: fn(img, *resolution)

def check_output_size(width: int, height: int, hint: str) -> None:
    """Output images must be square with a power-of-two side (the networks halve it repeatedly)."""
    if width != height or width < 1 or (width & (width - 1)) != 0:
        raise ValueError(f'Output images would be {width}x{height}, but they must be square with a power-of-two side; {hint}.')

#----------------------------------------------------------------------------
# Destination: written under a temporary name beside dest and renamed at the end.

def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of [H, W, C] uint8, stored without compression (the ZIP is uncompressed too)."""
    buf = io.BytesIO()
    PIL.Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()

def check_dest_free(dest: str) -> None:
    """Refuse an existing ZIP or non-empty folder at dest rather than overwrite hours of work."""
    if os.path.isfile(dest) or (os.path.isdir(dest) and (dest.lower().endswith('.zip') or os.listdir(dest))):
        raise FileExistsError(f'Destination {dest} already exists; delete it or choose another --dest.')

def cannot_write(dest: str, e: OSError) -> OSError:
    """The error for a failed write to the destination (full disk, no permission, bad path)."""
    return OSError(f'Cannot write {dest} ({e.strerror or e}); check the path, permissions and free space.')

@contextlib.contextmanager
def open_dest(dest: str) -> Iterator[Callable[[str, bytes], None]]:
    """Yield save_bytes(name, data) that writes into a new ZIP (dest ending in .zip) or folder.

    Everything goes to a temporary sibling of dest that replaces dest only when the block exits
    normally; on any error it is removed (with any parent folders made for it), so a failed run
    leaves no destination behind.
    """
    dest = os.path.normpath(dest)
    check_dest_free(dest)
    parent, base = os.path.split(os.path.abspath(dest))
    is_zip = base.lower().endswith('.zip')
    created_dirs = [] # Innermost first.
    tmp = None
    archive = None
    try:
        try:
            missing = parent
            while not os.path.isdir(missing):
                created_dirs.append(missing)
                missing = os.path.dirname(missing)
            os.makedirs(parent, exist_ok=True)
            if is_zip:
                fd, tmp = tempfile.mkstemp(prefix=f'{base}.tmp-', dir=parent)
                os.close(fd)
                archive = zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED)
            else:
                tmp = tempfile.mkdtemp(prefix=f'{base}.tmp-', dir=parent)
        except OSError as e:
            raise cannot_write(dest, e) from e

        def save_bytes(name: str, data: bytes) -> None:
            try:
                if archive is not None:
                    archive.writestr(name, data)
                else:
                    path = os.path.join(tmp, name)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, 'wb') as f:
                        f.write(data)
            except OSError as e:
                raise cannot_write(dest, e) from e
        yield save_bytes

        try:
            if archive is not None:
                archive.close() # Writes the central directory.
            if os.path.isdir(dest):
                os.rmdir(dest) # An empty folder given as dest; os.replace cannot overwrite it.
            os.replace(tmp, dest)
            tmp = None
        except OSError as e:
            raise cannot_write(dest, e) from e
    finally:
        if archive is not None:
            with contextlib.suppress(OSError):
                archive.close()
        if tmp is not None:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            for d in created_dirs: # Only folders this call made, and only if still empty.
                with contextlib.suppress(OSError):
                    os.rmdir(d)

#----------------------------------------------------------------------------

class ConversionResult(NamedTuple):
    written: int            # Images in the output.
    skipped: int            # Images the transform dropped (center-crop-wide only).

def skip_reason(resolution: tuple[int, int]) -> str:
    """Why center-crop-wide drops an image, for messages."""
    width, height = resolution
    return f'center-crop-wide keeps only images at least {width} pixels wide and no wider than {width}:{height}'

def parse_resolution(value: str) -> tuple[int, int]:
    """'WxH' -> (W, H), positive integers."""
    parts = str(value).lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f'{value!r} is not WxH with positive integers, e.g. 64x64.')
    return int(parts[0]), int(parts[1])

def check_geometry(transform: Optional[str], resolution: Optional[tuple[int, int]]) -> None:
    """Refuse a transform or output size that cannot give square power-of-two images."""
    if transform is not None and transform not in TRANSFORMS:
        raise ValueError(f'Unknown transform {transform}; use one of {", ".join(TRANSFORMS)}.')
    if resolution is None:
        return
    width, height = resolution
    if transform == 'center-crop-wide':
        if height > width:
            raise ValueError(f'--transform=center-crop-wide pads a wide box to a square, so --resolution={width}x{height} must have height <= width.')
        check_output_size(width, width, 'choose a power-of-two width in --resolution')
    else:
        check_output_size(width, height, 'choose a square power-of-two --resolution such as 64x64')

def write_images(entries: Iterator[ImageEntry], num_images: int, save_bytes: Callable[[str, bytes], None],
                 apply_transform: Callable[[np.ndarray], Optional[np.ndarray]], size_hint: str, progress: bool) -> tuple[list, int]:
    """Transform and save every entry as 00000/img00000000.png, ...; returns ([[png name, label], ...],
    number skipped by the transform). All images must come out with the shape of the first; a
    grayscale image among colour ones is replicated to RGB."""
    labels = []
    skipped = 0
    shape = None # Output [H, W, C] of the first image; all others must match.
    for entry in tqdm.tqdm(entries, total=num_images, unit='img', disable=not progress):
        img = apply_transform(entry.img)
        if img is None:
            skipped += 1
            continue
        if shape is None:
            shape = img.shape
            check_output_size(shape[1], shape[0], size_hint)
        if img.shape[2] != shape[2]:
            if img.shape[2] == 1: # A grayscale image in a colour dataset (ImageNet has some): replicate.
                img = img.repeat(3, axis=2)
            else:
                raise ValueError(f'{entry.name} is in colour but the images before it are grayscale; convert the dataset to one mode first.')
        if img.shape != shape:
            raise ValueError(f'{entry.name} is {img.shape[1]}x{img.shape[0]} but earlier images are {shape[1]}x{shape[0]}; pass --resolution=WxH to resize all images to one size.')
        idx_str = f'{len(labels):08d}'
        fname = f'{idx_str[:5]}/img{idx_str}.png'
        save_bytes(fname, encode_png(img))
        labels.append([fname, entry.label])
    return labels, skipped

def convert_dataset(
    source: str,                                # Folder, ZIP, *_lmdb folder, cifar-10-python.tar.gz or train-images-idx3-ubyte.gz.
    dest: str,                                  # Output ZIP (if it ends in .zip) or folder.
    max_images: Optional[int] = None,           # Convert at most this many images.
    transform: Optional[str] = None,            # None, 'center-crop' or 'center-crop-wide'.
    resolution: Optional[tuple[int, int] | str] = None, # Output (width, height) or 'WxH'; None keeps the source size.
    progress: bool = True,                      # Show a tqdm progress bar on stderr.
) -> ConversionResult:
    """Convert source into the dataset layout of training/dataset.py; returns how many images
    were written and how many the transform skipped (center-crop-wide skips, as EDM does, images
    narrower than W or wider than W:H). Written images are numbered consecutively, and each keeps
    its own label.

    Labels are kept only when every image has one. Mistakes a user can make raise ValueError or
    OSError with one sentence, and no destination is left behind.
    """
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f'max_images must be a positive integer or None, got {max_images!r}.')
    resolution = parse_resolution(resolution) if isinstance(resolution, str) else resolution
    check_geometry(transform, resolution)
    apply_transform = make_transform(transform, resolution)
    check_dest_free(os.path.normpath(dest)) # Before listing a large source, not after.

    num_images, entries = open_source(source, max_images)
    size_hint = f'pass --resolution=NxN to resize{"" if transform else " (with --transform=center-crop to keep the aspect ratio)"}'
    with open_dest(dest) as save_bytes:
        labels, skipped = write_images(entries, num_images, save_bytes, apply_transform, size_hint, progress)
        if not labels and skipped:
            raise ValueError(f'All {skipped} images were skipped: {skip_reason(resolution)}; choose a smaller --resolution.')
        if not labels:
            raise ValueError(f'No images could be read from {source}; check --source.')
        has_labels = all(label is not None for _, label in labels)
        save_bytes('dataset.json', json.dumps({'labels': labels if has_labels else None}).encode())
    return ConversionResult(len(labels), skipped)

#----------------------------------------------------------------------------
