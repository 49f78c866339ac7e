"""Training data: the image datasets that dataset_tool.py writes, and the deterministic, resumable
stream of indices and batches that feeds the training loop.

Layout (a folder or an uncompressed ZIP; both read the same way):

    00000/img00000000.png  00000/img00000001.png  ...     images at any depth, sorted by relative path
    dataset.json                                           optional: {"labels": [["00000/img00000000.png", 6], ...]}
                                                                     or {"labels": null}

Every image of a dataset has the same shape [C, H, W] with H = W and C = 1 (grayscale) or 3 (RGB).
"""

import os
from typing import Iterator, Optional

import numpy as np
import torch

from torch_utils import image_io
from torch_utils.rng import epoch_seed, make_generator

__all__ = ['ImageFolderDataset', 'InfiniteSampler', 'epoch_seed', 'make_dataloader']

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
        self._cache = bool(cache)
        self._cached_images: dict[int, np.ndarray] = {}
        self._source = image_io.ImageSource(self._path, hint='check --data, or create the dataset with dataset_tool.py')
        self._image_names = self._source.image_names
        if not self._image_names:
            raise ValueError(f'No image files ({", ".join(image_io.IMAGE_EXTENSIONS)}) found in {self._path}; '
                             f'check the path, or create the dataset with dataset_tool.py.')
        self._raw_labels = self._load_labels() if use_labels else np.zeros([len(self._image_names), 0], dtype=np.float32)
        if self._raw_labels.dtype == np.int64:
            self._label_shape = [int(self._raw_labels.max()) + 1]
        else:
            self._label_shape = list(self._raw_labels.shape[1:])
        self._raw_idx, self._xflip = self._choose_items(max_size, random_seed, xflip)
        self._image_shape = self._check_shapes(resolution)

    def _load_labels(self) -> np.ndarray:
        """Labels of every image, before subsetting, so that label_dim does not depend on max_size."""
        values = self._source.read_labels(self._image_names)
        if values is None:
            raise ValueError(f'Dataset {self._path} has no labels (dataset.json missing or "labels": null); '
                             f'use --cond=0, or convert the source with labels using dataset_tool.py.')
        return image_io.labels_array(values, self._path)

    def _choose_items(self, max_size: Optional[int], random_seed: int, xflip: bool) -> tuple[np.ndarray, np.ndarray]:
        """(raw image index, mirrored?) of every item: the max_size subset, then the mirrored copies."""
        raw_idx = np.arange(len(self._image_names), dtype=np.int64)
        if max_size is not None:
            if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
                raise ValueError(f'max_size must be a positive integer or None, got {max_size!r}.')
            if raw_idx.size > max_size:
                rnd = np.random.RandomState(random_seed)
                raw_idx = np.sort(rnd.permutation(raw_idx)[:max_size])
        mirrored = np.zeros(raw_idx.size, dtype=np.uint8)
        if xflip:
            raw_idx = np.tile(raw_idx, 2)
            mirrored = np.concatenate([mirrored, np.ones_like(mirrored)])
        return raw_idx, mirrored

    def _check_shapes(self, resolution: Optional[int]) -> list[int]:
        """[C, H, W] of the dataset: every kept image must agree with the first, be square, and match
        `resolution`; only headers are read."""
        kept = np.unique(self._raw_idx)
        first = self._image_names[kept[0]]
        shape0 = self._source.read_shape(first)
        for raw_idx in kept[1:]:
            name = self._image_names[raw_idx]
            shape = self._source.read_shape(name)
            if shape != shape0:
                raise ValueError(f'Image {self._source.where(name)} has shape [C, H, W] = {list(shape)} but {first} has {list(shape0)}; '
                                 f'convert the source with dataset_tool.py so that all images share one resolution and channel count.')
        if shape0[1] != shape0[2]:
            raise ValueError(f'Images in {self._path} are {shape0[2]}x{shape0[1]} (WxH) but must be square; convert with dataset_tool.py --resolution=RxR.')
        if resolution is not None and shape0[1] != resolution:
            raise ValueError(f'Dataset {self._path} holds {shape0[2]}x{shape0[1]} images but resolution {resolution} was requested; '
                             f'convert with dataset_tool.py --resolution={resolution}x{resolution}, or do not ask for a resolution.')
        return list(shape0)

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        name = self._image_names[raw_idx]
        image = self._source.read_image(name)
        if list(image.shape) != self._image_shape:
            raise ValueError(f'Image {self._source.where(name)} decodes to shape {list(image.shape)} but the dataset is {self._image_shape}; '
                             f'convert the source again with dataset_tool.py.')
        return image

    def close(self) -> None:
        """Close the ZIP handle of this process (it reopens on the next read)."""
        self._source.close()

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
        generator = make_generator(epoch_seed(self.seed, epoch))
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
        generator=make_generator(epoch_seed(seed, -1)),
    )
    return iter(loader)

#----------------------------------------------------------------------------
