"""Training data: the image datasets that dataset_tool.py writes, and the deterministic, resumable
stream of indices and batches that feeds the training loop.

Layout (a folder or an uncompressed ZIP; both read the same way):

    00000/img00000000.png  00000/img00000001.png  ...     images at any depth, sorted by relative path
    dataset.json                                           optional: {"labels": [["00000/img00000000.png", 6], ...]}
                                                                     or {"labels": null}

Every image of a dataset has the same shape [C, H, W] with H = W and C = 1 (grayscale) or 3 (RGB).
"""

import io
import json
import os
import struct
import zipfile
from typing import Iterator, Optional

import numpy as np
import PIL.Image
import torch

from torch_utils.rng import epoch_seed

__all__ = ['IMAGE_EXTENSIONS', 'decode_image', 'ImageFolderDataset', 'InfiniteSampler', 'epoch_seed', 'make_dataloader']

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')

# PIL modes that decode to one channel; every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) decodes to RGB.
_GRAY_MODES = frozenset(['1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'])

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

#----------------------------------------------------------------------------
# Reading one image.

def _is_image_name(name: str) -> bool:
    """True for image files by extension, skipping hidden files and macOS archive debris."""
    parts = name.split('/')
    if any(part.startswith('.') or part == '__MACOSX' for part in parts):
        return False
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _channels_for_mode(mode: str) -> int:
    return 1 if mode in _GRAY_MODES else 3


def _png_shape(head: bytes) -> Optional[tuple[int, int, int]]:
    """[C, H, W] from a PNG's first 26 bytes (signature + IHDR), or None if they are not a PNG.

    Reading the IHDR directly costs a few microseconds per image, against ~60 for PIL's header
    parser, which makes checking every image's shape at construction affordable (0.6 s per 50k)."""
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b'IHDR':
        return None
    width, height = struct.unpack('>II', head[16:24])
    color_type = head[25]
    if color_type not in (0, 2, 3, 4, 6):
        return None
    # 0 = gray, 4 = gray + alpha: PIL opens them as L / LA / I;16, which decode to one channel.
    return (1 if color_type in (0, 4) else 3), height, width


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode encoded image bytes to uint8 [C, H, W]: grayscale -> C=1, anything else -> RGB (C=3).

    Raises ValueError naming `where` if the bytes cannot be decoded."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as img:
            img = img.convert('L' if _channels_for_mode(img.mode) == 1 else 'RGB')
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as e: # PIL reports broken files as OSError, SyntaxError, ValueError, zlib.error, ...
        raise ValueError(f'Cannot decode image {where} ({type(e).__name__}: {e}); remove or replace the file.') from e
    arr = arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)

#----------------------------------------------------------------------------
# dataset.json.

def _parse_labels(dataset_json: Optional[bytes], names: list[str], where: str) -> Optional[np.ndarray]:
    """Labels of `names` from dataset.json: int64 [n] class indices, float32 [n, k] vectors, or None.

    None means the dataset has no labels (no dataset.json, or {"labels": null})."""
    if dataset_json is None:
        return None
    try:
        listed = json.loads(dataset_json)['labels']
        table = None if listed is None else {str(path).replace('\\', '/'): label for path, label in listed}
    except Exception as e: # json, KeyError, TypeError and unpacking all signal a malformed file.
        raise ValueError(f'Cannot parse dataset.json in {where} ({e}); it must read {{"labels": [[relpath, label], ...]}} or {{"labels": null}}.') from e
    if table is None:
        return None
    missing = [name for name in names if name not in table]
    if missing:
        raise ValueError(f'dataset.json in {where} has no label for {missing[0]} ({len(missing)} of {len(names)} images unlabelled); '
                         f'add them, or convert the source again with dataset_tool.py.')
    values = [table[name] for name in names]

    # Whole numbers are class indices (one-hot on read); anything else must be a numeric vector.
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        labels = np.asarray(values, dtype=np.int64)
        if labels.min() < 0:
            raise ValueError(f'dataset.json in {where} has a negative class index ({labels.min()}); class indices must be 0, 1, 2, ...')
        return labels
    try:
        labels = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise ValueError(f'dataset.json in {where} mixes label types or vector lengths ({e}); labels must all be class indices or all numeric vectors of one length.') from e
    labels = labels.reshape(len(names), -1) if labels.ndim <= 1 else labels
    if labels.ndim != 2 or not np.isfinite(labels).all():
        raise ValueError(f'dataset.json in {where} has labels of shape {list(labels.shape[1:])} or non-finite values; labels must be class indices or flat numeric vectors.')
    return labels

#----------------------------------------------------------------------------
# The dataset.

class ImageFolderDataset(torch.utils.data.Dataset):
    """Images (and optional labels) from a folder or uncompressed ZIP in dataset_tool.py's layout.

    dataset[idx] -> (image uint8 np.ndarray [C, H, W], label float32 np.ndarray [label_dim]).

    - Images are all image files at any depth, sorted by relative path ('/'-separated).
    - use_labels=True: integer labels become one-hot vectors of length max(label) + 1 (over the whole
      dataset, so max_size does not change label_dim); float vectors are returned as given.
      use_labels=False: label is float32 zeros [0] and dataset.json is not read.
    - max_size: keep a random subset of that many images (np.random.RandomState(random_seed), which
      only picks the subset and never touches training randomness), in sorted order.
    - xflip=True: len() doubles; index i >= n returns image i - n mirrored left-right.
    - cache=True: decoded images stay in memory (per DataLoader worker process).

    Construction reads every kept image's header, so a dataset of mixed shapes fails at once rather
    than hours into training; pixels are decoded on access. A ZIP is opened lazily by each process
    that reads it (forked DataLoader workers must not share the parent's file offset).
    """

    def __init__(self,
        path: str,                      # Folder or ZIP written by dataset_tool.py.
        resolution: Optional[int] = None, # Required H = W; None = whatever the data has.
        max_size: Optional[int] = None, # Keep at most this many images; None = all.
        use_labels: bool = False,       # Return labels from dataset.json.
        xflip: bool = False,            # Append left-right mirrored copies (doubles len()).
        random_seed: int = 0,           # Seed of the max_size subset.
        cache: bool = False,            # Keep decoded images in memory.
    ):
        self._path = str(path)
        self._name = os.path.splitext(os.path.basename(os.path.normpath(self._path)))[0]
        self._use_labels = bool(use_labels)
        self._cache = bool(cache)
        self._cached_images: dict[int, np.ndarray] = {}
        self._zipfile: Optional[zipfile.ZipFile] = None
        self._zipfile_pid: Optional[int] = None

        # List the files.
        if not os.path.exists(self._path):
            raise ValueError(f'Dataset {self._path} does not exist; check --data, or create it with dataset_tool.py.')
        if os.path.isdir(self._path):
            self._type = 'dir'
            all_names = []
            for root, _dirs, files in os.walk(self._path):
                all_names += [os.path.relpath(os.path.join(root, f), self._path).replace(os.sep, '/') for f in files]
        elif zipfile.is_zipfile(self._path):
            self._type = 'zip'
            try:
                all_names = [name for name in self._get_zipfile().namelist() if not name.endswith('/')]
            except (OSError, zipfile.BadZipFile) as e:
                raise ValueError(f'Cannot read ZIP archive {self._path} ({e}); convert the source again with dataset_tool.py.') from e
        else:
            raise ValueError(f'Dataset {self._path} is neither a folder nor a ZIP archive; point --data at the output of dataset_tool.py.')
        self._image_names = sorted(name for name in all_names if _is_image_name(name))
        if not self._image_names:
            raise ValueError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) found in {self._path}; check the path, or create the dataset with dataset_tool.py.')
        num_raw = len(self._image_names)

        # Labels of every image, before subsetting, so that label_dim does not depend on max_size.
        if self._use_labels:
            has_json = 'dataset.json' in all_names
            self._raw_labels = _parse_labels(self._read_bytes('dataset.json') if has_json else None, self._image_names, self._path)
            if self._raw_labels is None:
                raise ValueError(f'Dataset {self._path} has no labels (dataset.json missing or "labels": null); '
                                 f'use --cond=0, or convert the source with labels using dataset_tool.py.')
        else:
            self._raw_labels = np.zeros([num_raw, 0], dtype=np.float32)
        if self._raw_labels.dtype == np.int64:
            self._label_shape = [int(self._raw_labels.max()) + 1]
        else:
            self._label_shape = list(self._raw_labels.shape[1:])

        # Subset and mirror.
        self._raw_idx = np.arange(num_raw, dtype=np.int64)
        if max_size is not None:
            if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
                raise ValueError(f'max_size must be a positive integer or None, got {max_size!r}.')
            if num_raw > max_size:
                rnd = np.random.RandomState(random_seed)
                self._raw_idx = np.sort(rnd.permutation(self._raw_idx)[:max_size])
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

        # Shapes: every kept image must agree with the first, be square, and match `resolution`.
        kept = np.unique(self._raw_idx)
        first = self._image_names[kept[0]]
        shape0 = self._read_shape(first)
        for raw_idx in kept[1:]:
            name = self._image_names[raw_idx]
            shape = self._read_shape(name)
            if shape != shape0:
                raise ValueError(f'Image {self._where(name)} has shape [C, H, W] = {list(shape)} but {first} has {list(shape0)}; '
                                 f'convert the source with dataset_tool.py so that all images share one resolution and channel count.')
        if shape0[1] != shape0[2]:
            raise ValueError(f'Images in {self._path} are {shape0[2]}x{shape0[1]} (WxH) but must be square; convert with dataset_tool.py --resolution=RxR.')
        if resolution is not None and shape0[1] != resolution:
            raise ValueError(f'Dataset {self._path} holds {shape0[2]}x{shape0[1]} images but resolution {resolution} was requested; '
                             f'convert with dataset_tool.py --resolution={resolution}x{resolution}, or do not ask for a resolution.')
        self._image_shape = list(shape0)

    #------------------------------------------------------------------------
    # File access.

    def _where(self, name: str) -> str:
        return f'{self._path}:{name}' if self._type == 'zip' else os.path.join(self._path, name)

    def _get_zipfile(self) -> zipfile.ZipFile:
        # One handle per process: a handle inherited across fork() shares the file offset with the
        # parent and its siblings, so concurrent reads would return each other's bytes.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            self._zipfile = zipfile.ZipFile(self._path)
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _read_bytes(self, name: str, size: int = -1) -> bytes:
        """The first `size` bytes (all for -1) of a file in the dataset."""
        try:
            if self._type == 'zip':
                with self._get_zipfile().open(name, 'r') as f:
                    return f.read(size)
            with open(os.path.join(self._path, name), 'rb') as f:
                return f.read(size)
        except Exception as e: # zipfile reports bad CRCs and truncation in several ways.
            raise ValueError(f'Cannot read {self._where(name)} ({type(e).__name__}: {e}); the dataset is damaged, convert it again with dataset_tool.py.') from e

    def _read_shape(self, name: str) -> tuple[int, int, int]:
        """[C, H, W] that decode_image() will return, from the header only."""
        shape = _png_shape(self._read_bytes(name, 26))
        if shape is not None:
            return shape
        try:
            if self._type == 'zip':
                with self._get_zipfile().open(name, 'r') as f, PIL.Image.open(f) as img:
                    width, height, mode = img.width, img.height, img.mode
            else:
                with PIL.Image.open(os.path.join(self._path, name)) as img:
                    width, height, mode = img.width, img.height, img.mode
        except Exception as e: # PIL: UnidentifiedImageError, OSError, SyntaxError, ...
            raise ValueError(f'Cannot decode image {self._where(name)} ({type(e).__name__}: {e}); remove or replace the file.') from e
        return _channels_for_mode(mode), height, width

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        name = self._image_names[raw_idx]
        image = decode_image(self._read_bytes(name), self._where(name))
        if list(image.shape) != self._image_shape:
            raise ValueError(f'Image {self._where(name)} decodes to shape {list(image.shape)} but the dataset is {self._image_shape}; '
                             f'convert the source again with dataset_tool.py.')
        return image

    def close(self) -> None:
        """Close the ZIP handle of this process (it reopens on the next read)."""
        if self._zipfile is not None and self._zipfile_pid == os.getpid():
            self._zipfile.close()
        self._zipfile = None
        self._zipfile_pid = None

    def __getstate__(self) -> dict:
        # Spawned DataLoader workers and pickles get no open file; they reopen on first read.
        state = self.__dict__.copy()
        state['_zipfile'] = None
        state['_zipfile_pid'] = None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    #------------------------------------------------------------------------
    # Dataset protocol.

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [C, H, W], label float32 [label_dim]) of item idx (mirrored when idx >= n with xflip)."""
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        # Copies so that callers can write into the result without corrupting the cache.
        image = image[:, :, ::-1].copy() if self._xflip[idx] else image.copy()
        return image, self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        """float32 [label_dim]: one-hot for class indices, the vector as given otherwise."""
        label = self._raw_labels[self._raw_idx[idx]]
        if self._raw_labels.dtype == np.int64:
            onehot = np.zeros(self._label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.astype(np.float32, copy=True)

    def image_name(self, idx: int) -> str:
        """Relative path of the file behind item idx."""
        return self._image_names[int(self._raw_idx[idx])]

    #------------------------------------------------------------------------
    # Properties, as in EDM.

    @property
    def name(self) -> str:
        return self._name

    @property
    def image_shape(self) -> list[int]:
        """[C, H, W]."""
        return list(self._image_shape)

    @property
    def num_channels(self) -> int:
        return self._image_shape[0]

    @property
    def resolution(self) -> int:
        return self._image_shape[1]

    @property
    def label_shape(self) -> list[int]:
        return list(self._label_shape)

    @property
    def label_dim(self) -> int:
        return int(np.prod(self._label_shape))

    @property
    def has_labels(self) -> bool:
        return any(x != 0 for x in self._label_shape)

    @property
    def has_onehot_labels(self) -> bool:
        return self._raw_labels.dtype == np.int64

#----------------------------------------------------------------------------
# Deterministic, resumable index stream.

class InfiniteSampler(torch.utils.data.Sampler):
    """Dataset indices forever, in an order that depends only on (seed, dataset_size).

    Global stream: epoch e = 0, 1, 2, ... contributes a permutation of range(dataset_size) drawn by
    torch.randperm from torch.Generator().manual_seed(epoch_seed(seed, e)) (range order when
    shuffle=False); the stream is their concatenation. Rank r of num_replicas takes the global
    positions r, r + num_replicas, r + 2 num_replicas, ...

    start_index is the number of indices THIS RANK has already consumed (per-rank count of samples,
    i.e. batches done x per-rank batch size), so the first index yielded is global position
    rank + num_replicas * start_index. Skipping costs O(1) plus one permutation, for any start_index.
    With the same num_replicas this resumes a run exactly; the stream itself does not depend on
    num_replicas, so a run may also resume on a different replica count whenever the global count of
    consumed samples is divisible by it (start_index = global count / num_replicas).
    """

    def __init__(self, dataset_size: int, rank: int = 0, num_replicas: int = 1, seed: int = 0,
                 shuffle: bool = True, start_index: int = 0):
        def is_int(x):
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
        if not is_int(dataset_size) or dataset_size < 1:
            raise ValueError(f'dataset_size must be a positive integer, got {dataset_size!r}; the dataset is empty.')
        if not is_int(num_replicas) or num_replicas < 1:
            raise ValueError(f'num_replicas must be a positive integer, got {num_replicas!r}.')
        if not is_int(rank) or not 0 <= rank < num_replicas:
            raise ValueError(f'rank must be an integer in [0, num_replicas={num_replicas}), got {rank!r}.')
        if not is_int(start_index) or start_index < 0:
            raise ValueError(f'start_index must be an integer >= 0 (samples this rank has consumed), got {start_index!r}.')
        if not is_int(seed):
            raise ValueError(f'seed must be an integer, got {seed!r}.')
        super().__init__()
        self.dataset_size = int(dataset_size)
        self.rank = int(rank)
        self.num_replicas = int(num_replicas)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.start_index = int(start_index)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64 [dataset_size]: the indices of epoch `epoch` in stream order."""
        if not self.shuffle:
            return np.arange(self.dataset_size, dtype=np.int64)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.dataset_size, generator=generator).numpy()

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.rank + self.num_replicas * self.start_index, self.dataset_size)
        order = self.epoch_order(epoch)
        while True:
            yield int(order[offset])
            offset += self.num_replicas
            if offset >= self.dataset_size:
                # With num_replicas > dataset_size a step can jump over whole epochs.
                skipped, offset = divmod(offset, self.dataset_size)
                epoch += skipped
                order = self.epoch_order(epoch)

#----------------------------------------------------------------------------
# Batches for the training loop.

def make_dataloader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,                    # Per-rank batch size.
    rank: int = 0,
    num_replicas: int = 1,
    seed: int = 0,
    start_index: int = 0,               # Samples this rank has consumed (InfiniteSampler's start_index).
    workers: int = 0,                   # DataLoader worker processes; 0 = load in this process.
    device_type: str = 'cpu',           # torch.device(...).type of the training device.
    prefetch_factor: int = 2,           # Batches each worker loads ahead.
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless iterator of (images uint8 [B, C, H, W], labels float32 [B, label_dim]) on the CPU.

    The b-th batch holds this rank's sampler positions start_index + b * B ... + B - 1, so a run
    resumed with start_index = batches done x batch_size continues with exactly the batches it would
    have seen. Workers prefetch ahead of the loop; that does not matter for resuming because the
    position comes from the loop's own count, not from how far the workers got.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}.')
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f'workers must be an integer >= 0, got {workers!r}.')
    sampler = InfiniteSampler(len(dataset), rank=rank, num_replicas=num_replicas, seed=seed, start_index=start_index)
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=int(batch_size), num_workers=int(workers),
        pin_memory=(device_type == 'cuda'), persistent_workers=(workers > 0),
        prefetch_factor=(prefetch_factor if workers > 0 else None),
        # The loader draws its workers' base seed from this generator; without one it would draw from
        # torch's global RNG and shift every later global draw.
        generator=torch.Generator().manual_seed(epoch_seed(seed, -1)),
    )
    return iter(loader)

#----------------------------------------------------------------------------
