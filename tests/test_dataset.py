"""training/dataset.py: reading dataset_tool.py's layout, the resumable InfiniteSampler, make_dataloader."""

import io
import itertools
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.features
import PIL.Image
import pytest
import torch

from training.dataset import ImageFolderDataset, InfiniteSampler, epoch_seed, make_dataloader

from helpers import needs_webp


def random_images(num, shape=(8, 8, 3), seed=0):
    """uint8 [H, W, C] (or [H, W] for 2-D shapes) test images."""
    rnd = np.random.RandomState(seed)
    return [rnd.randint(0, 256, size=shape, dtype=np.uint8) for _ in range(num)]


def encode(arr, fmt='png', mode=None):
    buf = io.BytesIO()
    img = PIL.Image.fromarray(arr) if mode is None else PIL.Image.fromarray(arr).convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_dataset(path, files, labels=None, kind='dir'):
    """Write {relpath: bytes} as a folder or an uncompressed ZIP, with dataset.json when labels is not
    None ('null' writes {"labels": null}; a dict writes {"labels": [[relpath, label], ...]})."""
    files = dict(files)
    if labels is not None:
        listed = None if labels == 'null' else [[name, label] for name, label in labels.items()]
        files['dataset.json'] = json.dumps({'labels': listed}).encode()
    if kind == 'zip':
        with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
            with open(os.path.join(path, name), 'wb') as f:
                f.write(data)
    return str(path)


def standard_files(num=12, shape=(8, 8, 3), seed=0):
    """dataset_tool.py's naming: 00000/img00000000.png ..., 5 per folder here to span folders."""
    images = random_images(num, shape, seed)
    names = [f'{idx // 5:05d}/img{idx:08d}.png' for idx in range(num)]
    return names, images, {name: encode(img) for name, img in zip(names, images)}


def chw(arr):
    return arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@pytest.fixture(params=['dir', 'zip'])
def kind(request):
    return request.param


def dataset_path(tmp_path, kind, name='data'):
    return tmp_path / (name + '.zip' if kind == 'zip' else name)

#----------------------------------------------------------------------------
# Reading images.

def test_reads_images_in_sorted_order(tmp_path, kind):
    names, images, files = standard_files(12)
    # Written in reverse so that sorting, not file-system order, must produce the result.
    path = write_dataset(dataset_path(tmp_path, kind), dict(reversed(list(files.items()))), kind=kind)
    ds = ImageFolderDataset(path)
    assert len(ds) == 12 and ds.image_shape == [3, 8, 8] and ds.num_channels == 3 and ds.resolution == 8
    assert ds.name == 'data' and not ds.has_labels and ds.label_dim == 0 and ds.label_shape == [0]
    for idx in range(12):
        image, label = ds[idx]
        assert ds.image_name(idx) == names[idx]
        assert image.dtype == np.uint8 and image.shape == (3, 8, 8)
        np.testing.assert_array_equal(image, chw(images[idx]))
        assert label.dtype == np.float32 and label.shape == (0,)


def test_images_at_any_depth_sorted_by_relative_path(tmp_path, kind):
    images = random_images(4)
    rel = ['b.png', 'a/z/deep.png', 'a/b.png', 'a0.png']
    files = {name: encode(img) for name, img in zip(rel, images)}
    files.update({'.hidden.png': b'junk', '__MACOSX/a/._b.png': b'junk', 'notes.txt': b'text'})
    ds = ImageFolderDataset(write_dataset(dataset_path(tmp_path, kind), files, kind=kind))
    assert [ds.image_name(i) for i in range(len(ds))] == sorted(rel) == ['a/b.png', 'a/z/deep.png', 'a0.png', 'b.png']
    np.testing.assert_array_equal(ds[0][0], chw(images[2]))


@pytest.mark.parametrize('fmt,ext', [('png', 'png'), ('jpeg', 'jpg'), ('jpeg', 'jpeg'), pytest.param('webp', 'webp', marks=needs_webp),
                                     ('bmp', 'bmp')])
def test_image_formats(tmp_path, kind, fmt, ext):
    images = random_images(2)
    files = {f'img{i}.{ext}': encode(img, fmt) for i, img in enumerate(images)}
    ds = ImageFolderDataset(write_dataset(dataset_path(tmp_path, kind), files, kind=kind))
    assert len(ds) == 2 and ds.image_shape == [3, 8, 8]
    if fmt in ('png', 'bmp'): # lossless
        np.testing.assert_array_equal(ds[1][0], chw(images[1]))


def test_grayscale_is_one_channel(tmp_path, kind):
    images = random_images(3, shape=(8, 8))
    files = {f'{i}.png': encode(img) for i, img in enumerate(images)}
    ds = ImageFolderDataset(write_dataset(dataset_path(tmp_path, kind), files, kind=kind))
    assert ds.image_shape == [1, 8, 8] and ds.num_channels == 1
    np.testing.assert_array_equal(ds[2][0], images[2][np.newaxis])


def test_rgba_and_palette_become_rgb(tmp_path):
    rgba = random_images(1, shape=(8, 8, 4))[0]
    palette = PIL.Image.fromarray(random_images(1, seed=1)[0]).convert('P')
    buf = io.BytesIO()
    palette.save(buf, format='png')
    ds = ImageFolderDataset(write_dataset(tmp_path / 'data', {'0.png': encode(rgba), '1.png': buf.getvalue()}))
    assert ds.image_shape == [3, 8, 8]
    np.testing.assert_array_equal(ds[0][0], chw(rgba[:, :, :3]))
    np.testing.assert_array_equal(ds[1][0], chw(np.asarray(palette.convert('RGB'))))

#----------------------------------------------------------------------------
# Labels.

def test_integer_labels_are_one_hot(tmp_path, kind):
    names, _images, files = standard_files(6)
    classes = [3, 0, 1, 3, 2, 0]
    path = write_dataset(dataset_path(tmp_path, kind), files, labels=dict(zip(names, classes)), kind=kind)
    ds = ImageFolderDataset(path, use_labels=True)
    assert ds.has_labels and ds.has_onehot_labels and ds.label_shape == [4] and ds.label_dim == 4
    for idx, cls in enumerate(classes):
        label = ds[idx][1]
        assert label.dtype == np.float32
        np.testing.assert_array_equal(label, np.eye(4, dtype=np.float32)[cls])
    # Without use_labels the same dataset is unconditional.
    plain = ImageFolderDataset(path)
    assert not plain.has_labels and plain[0][1].shape == (0,)


def test_float_vector_labels_as_given(tmp_path):
    names, _images, files = standard_files(3)
    vectors = [[0.5, -1.0], [2.0, 0.0], [0.25, 3.5]]
    ds = ImageFolderDataset(write_dataset(tmp_path / 'data', files, labels=dict(zip(names, vectors))), use_labels=True)
    assert ds.has_labels and not ds.has_onehot_labels and ds.label_dim == 2
    np.testing.assert_array_equal(ds[2][1], np.float32([0.25, 3.5]))


def test_xflip_doubles_with_mirrored_copies(tmp_path):
    names, images, files = standard_files(4)
    ds = ImageFolderDataset(write_dataset(tmp_path / 'data', files, labels=dict(zip(names, [0, 1, 2, 1]))), xflip=True, use_labels=True)
    assert len(ds) == 8
    for idx in range(4):
        np.testing.assert_array_equal(ds[idx][0], chw(images[idx]))
        np.testing.assert_array_equal(ds[idx + 4][0], chw(images[idx])[:, :, ::-1])
        np.testing.assert_array_equal(ds[idx + 4][1], ds[idx][1])


def test_max_size_is_a_sorted_seeded_subset(tmp_path):
    names, images, files = standard_files(20)
    labels = {name: 6 if idx == 19 else idx % 3 for idx, name in enumerate(names)} # class 6: the last image only
    path = write_dataset(tmp_path / 'data', files, labels=labels)
    subsets = {}
    for seed in [1, 1, 2]: # seeds whose subsets leave out the last image
        ds = ImageFolderDataset(path, max_size=6, random_seed=seed, use_labels=True)
        kept = [ds.image_name(i) for i in range(len(ds))]
        assert len(ds) == 6 and kept == sorted(kept) and set(kept) <= set(names)
        assert ds.label_dim == 7 and names[19] not in kept # label_dim comes from the whole dataset, not the subset
        subsets.setdefault(seed, kept)
        assert subsets[seed] == kept
        np.testing.assert_array_equal(ds[0][0], chw(images[names.index(kept[0])]))
    assert subsets[1] != subsets[2]
    assert len(ImageFolderDataset(path, max_size=100)) == 20


def test_cache_returns_private_copies(tmp_path, kind):
    _names, images, files = standard_files(3)
    ds = ImageFolderDataset(write_dataset(dataset_path(tmp_path, kind), files, kind=kind), cache=True)
    first = ds[1][0]
    first[:] = 0 # a caller scribbling on its batch must not corrupt the cache
    np.testing.assert_array_equal(ds[1][0], chw(images[1]))
    assert set(ds._cached_images) == {1}


def open_offsets(path) -> dict:
    """{file descriptor: file offset} of this process's descriptors open on `path`."""
    target = os.stat(path)
    offsets = {}
    for fd in range(1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            offsets[fd] = os.lseek(fd, 0, os.SEEK_CUR)
    return offsets


def test_pickle_after_reading_a_zip(tmp_path):
    # Spawned DataLoader workers get the dataset by pickle, after the parent has read from the ZIP.
    _names, images, files = standard_files(3)
    ds = ImageFolderDataset(write_dataset(tmp_path / 'data.zip', files, kind='zip'))
    np.testing.assert_array_equal(ds[0][0], chw(images[0]))
    clone = pickle.loads(pickle.dumps(ds))
    for idx in (2, 0, 1):
        np.testing.assert_array_equal(clone[idx][0], chw(images[idx]))
    np.testing.assert_array_equal(ds[1][0], chw(images[1]))


def test_forked_reader_leaves_the_parents_zip_offset_alone(tmp_path):
    # A forked DataLoader worker that read through the parent's ZIP handle would move the file offset
    # that the parent and every sibling share, so concurrent reads would get each other's bytes.
    _names, images, files = standard_files(3, shape=(64, 64, 3)) # 12 kB each: more than a read buffer holds
    path = write_dataset(tmp_path / 'data.zip', files, kind='zip')
    ds = ImageFolderDataset(path)
    np.testing.assert_array_equal(ds[0][0], chw(images[0])) # the parent has read: its handle is open
    before = open_offsets(path)
    pid = os.fork()
    if pid == 0: # the child: exit status 0 when it read image 2 correctly
        status = 1
        try:
            status = 0 if np.array_equal(ds[2][0], chw(images[2])) else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert open_offsets(path) == before
    np.testing.assert_array_equal(ds[1][0], chw(images[1]))

#----------------------------------------------------------------------------
# Bad input: ValueError with a sentence that names the problem.

def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        ImageFolderDataset(str(tmp_path / 'nowhere'))


def test_neither_folder_nor_zip(tmp_path):
    (tmp_path / 'data.tar').write_bytes(b'not an archive')
    with pytest.raises(ValueError, match='neither a folder nor a ZIP'):
        ImageFolderDataset(str(tmp_path / 'data.tar'))


def test_no_images(tmp_path, kind):
    path = write_dataset(dataset_path(tmp_path, kind), {'readme.txt': b'hi'}, kind=kind)
    with pytest.raises(ValueError, match='No image files'):
        ImageFolderDataset(path)


@pytest.mark.parametrize('odd_shape', [(10, 10, 3), (8, 8), (8, 10, 3)])
def test_differing_shapes(tmp_path, kind, odd_shape):
    _names, _images, files = standard_files(4)
    files['00000/img00000002.png'] = encode(random_images(1, shape=odd_shape)[0])
    with pytest.raises(ValueError, match='img00000002.png'):
        ImageFolderDataset(write_dataset(dataset_path(tmp_path, kind), files, kind=kind))


def test_resolution_mismatch_and_non_square(tmp_path):
    _names, _images, files = standard_files(2)
    path = write_dataset(tmp_path / 'data', files)
    assert ImageFolderDataset(path, resolution=8).resolution == 8
    with pytest.raises(ValueError, match='resolution 16 was requested'):
        ImageFolderDataset(path, resolution=16)
    wide = write_dataset(tmp_path / 'wide', {'a.png': encode(random_images(1, shape=(8, 12, 3))[0])})
    with pytest.raises(ValueError, match='must be square'):
        ImageFolderDataset(wide)


@pytest.mark.parametrize('labels', [None, 'null'])
def test_use_labels_without_labels(tmp_path, kind, labels):
    _names, _images, files = standard_files(2)
    path = write_dataset(dataset_path(tmp_path, kind), files, labels=labels, kind=kind)
    with pytest.raises(ValueError, match=r'has no labels \(dataset.json missing or "labels": null\); use --cond=0'):
        ImageFolderDataset(path, use_labels=True)


def test_labels_missing_for_some_images(tmp_path, kind):
    names, _images, files = standard_files(4)
    path = write_dataset(dataset_path(tmp_path, kind), files, labels={names[0]: 1, names[1]: 0, names[3]: 1}, kind=kind)
    with pytest.raises(ValueError, match=f'no label for {names[2]}'):
        ImageFolderDataset(path, use_labels=True)


@pytest.mark.parametrize('text', [b'{not json', b'{"classes": []}', b'{"labels": [["a.png"]]}'])
def test_malformed_dataset_json(tmp_path, text):
    _names, _images, files = standard_files(2)
    files['dataset.json'] = text
    with pytest.raises(ValueError, match='Cannot parse dataset.json'):
        ImageFolderDataset(write_dataset(tmp_path / 'data', files), use_labels=True)


def test_bad_label_values(tmp_path):
    names, _images, files = standard_files(2)
    for labels, message in [([0, -1], 'negative class index'), ([[1.0, 2.0], [1.0]], 'mixes label types'), ([0, 'cat'], 'mixes label types')]:
        path = write_dataset(tmp_path / f'data{len(message)}{labels[1]}', files, labels=dict(zip(names, labels)))
        with pytest.raises(ValueError, match=message):
            ImageFolderDataset(path, use_labels=True)


def test_corrupt_image_is_named(tmp_path, kind):
    _names, _images, files = standard_files(4)
    files['00000/img00000001.png'] = b'this is not an image'
    with pytest.raises(ValueError, match='Cannot read image .*img00000001.png'):
        ImageFolderDataset(write_dataset(dataset_path(tmp_path, kind), files, kind=kind))


def test_truncated_image_is_named_on_read(tmp_path, kind):
    # A valid header passes the construction scan; the damage shows when the pixels are decoded.
    _names, _images, files = standard_files(4)
    files['00000/img00000003.png'] = files['00000/img00000003.png'][:60]
    ds = ImageFolderDataset(write_dataset(dataset_path(tmp_path, kind), files, kind=kind))
    ds[2]
    with pytest.raises(ValueError, match='Cannot read image .*img00000003.png'):
        ds[3]

#----------------------------------------------------------------------------
# InfiniteSampler.

def take(sampler, num):
    return list(itertools.islice(iter(sampler), num))


def test_sampler_epochs_are_seeded_permutations():
    n, seed = 7, 3
    stream = take(InfiniteSampler(n, seed=seed), 5 * n)
    epochs = [stream[e * n:(e + 1) * n] for e in range(5)]
    for e, epoch in enumerate(epochs):
        assert sorted(epoch) == list(range(n))
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, e))).tolist()
        assert epoch == expected
    assert len({tuple(epoch) for epoch in epochs}) > 1
    assert take(InfiniteSampler(n, seed=seed), 5 * n) == stream # same (seed, size): same stream
    assert take(InfiniteSampler(n, seed=seed + 1), 5 * n) != stream
    assert take(InfiniteSampler(n, shuffle=False), 2 * n) == list(range(n)) * 2


@pytest.mark.parametrize('num_replicas', [2, 3, 10])
def test_sampler_replicas_interleave_to_the_single_stream(num_replicas):
    n, per_rank = 7, 25
    single = take(InfiniteSampler(n, seed=5), num_replicas * per_rank)
    ranks = [take(InfiniteSampler(n, rank=r, num_replicas=num_replicas, seed=5), per_rank) for r in range(num_replicas)]
    interleaved = [ranks[r][k] for k in range(per_rank) for r in range(num_replicas)]
    assert interleaved == single


@pytest.mark.parametrize('rank,num_replicas', [(0, 1), (1, 2), (2, 3)])
@pytest.mark.parametrize('start_index', [0, 1, 6, 7, 13, 50])
def test_sampler_start_index_resumes(rank, num_replicas, start_index):
    fresh = take(InfiniteSampler(7, rank=rank, num_replicas=num_replicas, seed=1), start_index + 20)
    resumed = take(InfiniteSampler(7, rank=rank, num_replicas=num_replicas, seed=1, start_index=start_index), 20)
    assert resumed == fresh[start_index:]


def test_sampler_skips_in_constant_time(monkeypatch):
    # Counted, not timed: skipping 4e15 positions may draw the permutations of the epochs it yields
    # from and no others (stepping through the stream would ask for 4e12 of them, and fails at the 11th).
    n, start = 1000, 10 ** 15
    epochs = []
    def counted(self, epoch):
        epochs.append(epoch)
        assert len(epochs) <= 10, 'the sampler steps through epochs instead of jumping'
        return original(self, epoch)
    original = InfiniteSampler.epoch_order
    monkeypatch.setattr(InfiniteSampler, 'epoch_order', counted)
    got = take(InfiniteSampler(n, rank=1, num_replicas=4, seed=2, start_index=start), 3)
    assert epochs == [(1 + 4 * start) // n]  # The three positions lie in one epoch.
    monkeypatch.undo()
    sampler = InfiniteSampler(n, seed=2)
    expected = [int(sampler.epoch_order(pos // n)[pos % n]) for pos in [1 + 4 * (start + k) for k in range(3)]]
    assert got == expected


@pytest.mark.parametrize('kwargs', [dict(dataset_size=0), dict(dataset_size=5, rank=2, num_replicas=2), dict(dataset_size=5, rank=-1),
                                    dict(dataset_size=5, num_replicas=0), dict(dataset_size=5, start_index=-1), dict(dataset_size=2.5)])
def test_sampler_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        InfiniteSampler(**kwargs)

#----------------------------------------------------------------------------
# make_dataloader.

@pytest.fixture
def labelled_zip(tmp_path):
    names, images, files = standard_files(11)
    path = write_dataset(tmp_path / 'data.zip', files, labels={name: idx % 3 for idx, name in enumerate(names)}, kind='zip')
    return ImageFolderDataset(path, use_labels=True), images


def test_dataloader_batches_follow_the_sampler(labelled_zip):
    ds, images = labelled_zip
    loader = make_dataloader(ds, batch_size=4, seed=7)
    order = take(InfiniteSampler(len(ds), seed=7), 12)
    for b in range(3):
        x, c = next(loader)
        assert x.dtype == torch.uint8 and x.shape == (4, 3, 8, 8)
        assert c.dtype == torch.float32 and c.shape == (4, 3)
        idx = order[4 * b:4 * b + 4]
        np.testing.assert_array_equal(x.numpy(), np.stack([chw(images[i]) for i in idx]))
        np.testing.assert_array_equal(c.numpy(), np.eye(3, dtype=np.float32)[[i % 3 for i in idx]])


def test_dataloader_resumes_and_leaves_global_rng_alone(labelled_zip):
    ds, _images = labelled_zip
    state = torch.get_rng_state()
    fresh = make_dataloader(ds, batch_size=3, rank=1, num_replicas=2, seed=4)
    batches = [next(fresh)[0] for _ in range(5)]
    assert torch.equal(torch.get_rng_state(), state)
    resumed = make_dataloader(ds, batch_size=3, rank=1, num_replicas=2, seed=4, start_index=2 * 3)
    for b in range(2, 5):
        assert torch.equal(next(resumed)[0], batches[b])


def test_dataloader_workers_match_in_process(labelled_zip):
    ds, _images = labelled_zip
    ds[0] # the parent holds an open ZIP handle when the workers fork
    in_process = make_dataloader(ds, batch_size=4, seed=1)
    with_workers = make_dataloader(ds, batch_size=4, seed=1, workers=2)
    for _ in range(4):
        (x0, c0), (x1, c1) = next(in_process), next(with_workers)
        assert torch.equal(x0, x1) and torch.equal(c0, c1)
    with_workers._shutdown_workers()


@pytest.mark.cuda
def test_dataloader_pins_memory_for_cuda(labelled_zip):
    # For a CUDA device the training loader hands out page-locked batches, so that the loop's
    # .to(device, non_blocking=True) overlaps the copy; with or without workers they are the CPU
    # loader's batches, and arrive on the GPU unchanged.
    ds, _images = labelled_zip
    assert not next(make_dataloader(ds, batch_size=4, seed=1))[0].is_pinned()
    for workers in (0, 2):
        pinned = make_dataloader(ds, batch_size=4, seed=1, workers=workers, device_type='cuda')
        plain = make_dataloader(ds, batch_size=4, seed=1)
        for _ in range(4):
            (x, c), (x0, c0) = next(pinned), next(plain)
            assert x.is_pinned() and c.is_pinned()
            assert torch.equal(x, x0) and torch.equal(c, c0)
            on_gpu = x.to('cuda', non_blocking=True)
            torch.cuda.synchronize()
            assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), x0)
        if workers:
            pinned._shutdown_workers()


def test_dataloader_bad_arguments(labelled_zip):
    ds, _images = labelled_zip
    with pytest.raises(ValueError, match='batch_size'):
        make_dataloader(ds, batch_size=0)
    with pytest.raises(ValueError, match='workers'):
        make_dataloader(ds, batch_size=2, workers=-1)
