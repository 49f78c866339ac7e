"""Reference statistics, Frechet Inception Distance (FID), Inception Score (IS) and Kernel Inception
Distance (KID) of image folders and ZIPs, and fid.py's three commands as functions: ref(), calc()
and sweep() (every checkpoint folder of a run)."""

import datetime
import glob
import json
import os
import zipfile
from typing import Any, Optional, Sequence

import numpy as np
import scipy.linalg
import scipy.special
import torch
import tqdm

import dnnlib
from metrics.detector import DETECTOR_URL, Detector, load_detector
from sampling import provenance as provenance_lib
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import image_io
from training import checkpoint

METRICS = ('fid', 'is', 'kid')

#----------------------------------------------------------------------------
# Reading images: a folder (searched recursively) or a .zip, through torch_utils/image_io.py.

class ImageFiles(torch.utils.data.Dataset):
    """The images under `path` (image_io.ImageSource), in sorted name order. Item i is
    (i, uint8 [3, H, W]), decoded by image_io's rule with grayscale then repeated to the three channels
    the detector takes; an unreadable file gives (i, message), so that the error reaches the main
    process as one line rather than as a worker's traceback."""

    def __init__(self, path: str):
        self._source = image_io.ImageSource(path)
        self.path = path
        self.names = list(self._source.image_names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            image = self._source.read_image(self.names[i], where=f'{self.names[i]} in {self.path}')
        except ValueError as err:
            return i, str(err)
        return i, torch.from_numpy(np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image)

    def resolution(self) -> tuple[int, int]:
        """(H, W) of the first image, from its header (all must share it to be evaluated)."""
        return tuple(self._source.read_shape(self._first())[1:])

    def channels(self) -> int:
        """3 if any image is stored in colour, else 1, from the headers (up to the first colour one)."""
        self._first()
        return 3 if any(self._source.read_shape(name)[0] == 3 for name in self.names) else 1

    def _first(self) -> str:
        if not self.names:
            raise ValueError(f'Found no PNG/JPEG images in {self.path}; pass a folder or .zip of images.')
        return self.names[0]


def select_images(num_available: int, num: Optional[int], seed: int = 0, block: Optional[int] = None,
                  path: str = 'the image folder') -> np.ndarray:
    """Indices (in sorted name order) of the images to evaluate: all of them (num=None); `num` chosen
    at random by `seed` when more exist, as EDM does; or, with `block`=k, images k*num ... (k+1)*num-1,
    which are seeds k*num ... for folders that generate.py wrote."""
    if num is None:
        return np.arange(num_available)
    if block is not None:
        if num_available < (block + 1) * num:
            raise ValueError(f'Found {num_available} images in {path}, but block {block} of {num} needs '
                             f'{(block + 1) * num}; generate more images or lower --num.')
        return np.arange(block * num, (block + 1) * num)
    if num_available < num:
        raise ValueError(f'Found {num_available} images in {path}, but --num={num} needs at least that '
                         f'many; generate more images or lower --num.')
    indices = np.arange(num_available)
    if num_available > num:
        np.random.RandomState(seed % (1 << 31)).shuffle(indices)
        indices = np.sort(indices[:num])
    return indices


def _stack_images(batch: list, path: str, shape: Optional[torch.Size]) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a list of dataset items into indices [B] and uint8 images [B, 3, H, W]."""
    for _i, image in batch:
        if isinstance(image, str):
            raise ValueError(image)
        if shape is not None and image.shape != shape:
            raise ValueError(f'The images in {path} differ in size ({tuple(shape)} and {tuple(image.shape)}); '
                             f'resize them to one resolution.')
        shape = image.shape
    return torch.tensor([i for i, _image in batch]), torch.stack([image for _i, image in batch])


def _as_list(batch: list) -> list:
    return batch

#----------------------------------------------------------------------------
# One pass over the images, shared by all metrics and split over the processes.

@torch.no_grad()
def calculate_inception_stats(image_path: str, detector: Detector, num_expected: Optional[int] = None,
                              seed: int = 0, block: Optional[int] = None, max_batch_size: int = 64,
                              num_workers: int = 3, with_features: bool = False, with_probs: bool = False,
                              progress: bool = True) -> dict:
    """Detector statistics of the images chosen by select_images(), the same on every process:
    num; mu [D] and the unbiased covariance sigma [D, D] = (sum f f^T - num mu mu^T) / (num - 1), both
    float64; with_features: features [num, D] float32; with_probs: probs [num, C] float64; rows of
    the last two in sorted name order, whatever the number of processes."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dataset = ImageFiles(image_path)
    indices = select_images(len(dataset), num_expected, seed=seed, block=block, path=image_path)
    dataset.names = [dataset.names[i] for i in indices]
    num = len(dataset)
    if num < max(2, world_size):
        raise ValueError(f'Found {num} PNG/JPEG images in {image_path}; the statistics need at least '
                         f'{max(2, world_size)} (2, and one per process).')

    # Each process takes every world_size'th image.
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(rank, num, world_size)),
                                         batch_size=max_batch_size, num_workers=num_workers, collate_fn=_as_list)
    feature_sum = feature_gram = shape = None
    order, features, probs = [], [], []
    with tqdm.tqdm(total=num, unit='img', desc=os.path.basename(os.path.normpath(image_path)),
                   disable=(rank != 0 or not progress)) as bar:
        for batch in loader:
            index, images = _stack_images(batch, image_path, shape)
            shape = images.shape[1:]
            f = detector.features(images)
            if feature_sum is None:
                feature_sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
                feature_gram = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
            feature_sum += f.sum(dim=0)
            feature_gram += f.T @ f
            order.append(index)
            if with_features:
                features.append(f.to(torch.float32).cpu())
            if with_probs:
                probs.append(detector.probs(images).cpu())
            bar.update(min(len(batch) * world_size, bar.total - bar.n))

    mu = dist.all_reduce_sum(feature_sum).cpu().numpy() / num
    sigma = (dist.all_reduce_sum(feature_gram).cpu().numpy() - num * np.outer(mu, mu)) / (num - 1)
    stats = dict(num=num, mu=mu, sigma=sigma)
    if with_features or with_probs:
        rows = torch.argsort(dist.all_gather_cat(torch.cat(order)))
        if with_features:
            stats['features'] = dist.all_gather_cat(torch.cat(features))[rows].numpy()
        if with_probs:
            stats['probs'] = dist.all_gather_cat(torch.cat(probs))[rows].numpy()
    return stats

#----------------------------------------------------------------------------
# The metrics.

def calculate_fid_from_inception_stats(mu: np.ndarray, sigma: np.ndarray, mu_ref: np.ndarray,
                                       sigma_ref: np.ndarray) -> float:
    """Frechet distance of two Gaussians (Heusel et al. 2017):
    |mu - mu_ref|^2 + tr(sigma + sigma_ref - 2 (sigma sigma_ref)^(1/2)), with scipy's matrix square
    root; its imaginary round-off is dropped."""
    if mu.shape != mu_ref.shape or sigma.shape != sigma_ref.shape:
        raise ValueError(f'The statistics have {mu.shape[0]} features but the reference has {mu_ref.shape[0]}; '
                         f'compute both with the same detector.')
    m = np.square(mu - mu_ref).sum()
    s = scipy.linalg.sqrtm(np.dot(sigma, sigma_ref))
    return float(np.real(m + np.trace(sigma + sigma_ref - s * 2)))


def calculate_is(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) on each of `splits`
    consecutive parts of probs [N, C]; returns the mean and standard deviation over the parts."""
    n = probs.shape[0]
    if n < splits:
        raise ValueError(f'The Inception Score needs at least {splits} images (one per split), got {n}.')
    scores = []
    for k in range(splits):
        p_yx = probs[k * n // splits:(k + 1) * n // splits]
        p_y = p_yx.mean(axis=0, keepdims=True)
        kl = scipy.special.xlogy(p_yx, p_yx) - scipy.special.xlogy(p_yx, p_y)  # 0 log 0 = 0.
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def calculate_kid(feats: np.ndarray, ref_feats: np.ndarray, num_subsets: int = 100,
                  max_subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the
    kernel k(x, y) = (x.y / D + 1)^3, averaged over `num_subsets` random subsets of
    m = min(N, N_ref, max_subset_size) rows of features [N, D] and ref_feats [N_ref, D]."""
    if feats.shape[1] != ref_feats.shape[1]:
        raise ValueError(f'The features have {feats.shape[1]} dimensions but the reference has '
                         f'{ref_feats.shape[1]}; compute both with the same detector.')
    d = feats.shape[1]
    m = min(len(feats), len(ref_feats), max_subset_size)
    if m < 2:
        raise ValueError('KID needs at least 2 images on each side.')
    rng = np.random.default_rng(seed)
    mmd2 = []
    for _subset in range(num_subsets):
        x = feats[rng.choice(len(feats), m, replace=False)].astype(np.float64)
        y = ref_feats[rng.choice(len(ref_feats), m, replace=False)].astype(np.float64)
        k_xx, k_yy, k_xy = [(a @ b.T / d + 1) ** 3 for a, b in [(x, x), (y, y), (x, y)]]
        mmd2.append((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)) - 2 * k_xy.mean())
    return float(np.mean(mmd2))


def calculate_metrics(image_path: str, ref: dict, detector: Detector, metrics: Sequence[str] = ('fid',),
                      num_expected: Optional[int] = 50000, seed: int = 0, block: Optional[int] = None,
                      max_batch_size: int = 64, num_workers: int = 3, progress: bool = True) -> dict:
    """The requested metrics of the images against reference statistics `ref` (see load_ref_stats),
    from one pass over the images: {'fid'}, {'is', 'is_std'}, {'kid'}. Every process takes part; the
    metrics are computed and returned on rank 0 only (an empty dict elsewhere)."""
    stats = calculate_inception_stats(image_path, detector, num_expected=num_expected, seed=seed, block=block,
                                      max_batch_size=max_batch_size, num_workers=num_workers,
                                      with_features=('kid' in metrics), with_probs=('is' in metrics), progress=progress)
    results = {}
    if dist.get_rank() == 0:
        if 'fid' in metrics:
            results['fid'] = calculate_fid_from_inception_stats(stats['mu'], stats['sigma'], ref['mu'], ref['sigma'])
        if 'is' in metrics:
            results['is'], results['is_std'] = calculate_is(stats['probs'])
        if 'kid' in metrics:
            results['kid'] = calculate_kid(stats['features'], ref['features'], seed=seed)
    return results

#----------------------------------------------------------------------------
# Files: reference statistics and records, written whole or not at all.

def load_ref_stats(path_or_url: str, need_features: bool = False) -> dict:
    """Reference statistics from an .npz (path or URL): mu [D], sigma [D, D] and, when KID is wanted,
    features [N, D]."""
    try:
        f = dnnlib.open_url(path_or_url, verbose=(dist.get_rank() == 0))
    except FileNotFoundError as err:
        raise FileNotFoundError(f'--ref {path_or_url} does not exist; make reference statistics with '
                                f'"python fid.py ref --data=DATASET --dest=FILE.npz".') from err
    with f:
        try:
            stats = dict(np.load(f, allow_pickle=False))
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f'{path_or_url} is not an .npz of reference statistics ({cli.first_line(err)}); make one '
                             f'with "python fid.py ref".') from err
    mu, sigma = stats.get('mu'), stats.get('sigma')
    if mu is None or sigma is None or mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f'{path_or_url} lacks reference statistics "mu" [D] and "sigma" [D, D] (it has '
                         f'{", ".join(sorted(stats)) or "nothing"}); make it with "python fid.py ref".')
    if need_features and 'features' not in stats:
        raise ValueError(f'{path_or_url} has no "features", which KID needs; make it again with '
                         f'"python fid.py ref --features".')
    return stats


REF_METADATA = ('resolution', 'channels', 'num_images', 'detector', 'detector_sha256', 'data', 'data_sha256')


def ref_metadata(data: str, detector: Detector, num_images: int) -> dict:
    """What reference statistics record beside mu and sigma, as extra .npz arrays (so that EDM's .npz
    files, which hold only mu and sigma, load all the same): the images' resolution [H, W] and
    channels (3 if any is in colour, else 1), num_images, the detector's source (URL or absolute path)
    and file SHA-256, the data's absolute path and, for a .zip, its SHA-256 (a folder is not hashed:
    that would read every image a second time)."""
    source = detector.source if dnnlib.util.is_url(detector.source) else os.path.abspath(detector.source)
    images = ImageFiles(data)
    meta = dict(resolution=np.asarray(images.resolution(), dtype=np.int64), channels=np.int64(images.channels()),
                num_images=np.int64(num_images), detector=np.str_(source), data=np.str_(os.path.abspath(data)))
    if detector.sha256 is not None:
        meta['detector_sha256'] = np.str_(detector.sha256)
    if os.path.isfile(data):
        meta['data_sha256'] = np.str_(dnnlib.util.file_sha256(data))
    return meta


def read_ref_metadata(stats: dict, path: str) -> dict:
    """The ref_metadata() that reference statistics hold, as Python values: resolution (H, W),
    channels and num_images int, the rest str; {} for EDM's .npz files."""
    meta = {}
    for key in (k for k in REF_METADATA if k in stats):
        value = np.asarray(stats[key])
        try:
            if key == 'resolution':
                meta[key] = tuple(int(v) for v in value.reshape(2))
            else:
                meta[key] = int(value) if key in ('channels', 'num_images') else str(value.item())
        except (TypeError, ValueError) as err:
            raise ValueError(f'{path} holds "{key}" {value.dtype}{list(value.shape)}, not what "python fid.py ref" '
                             f'writes; make it again with that command.') from err
    return meta


def note_unchecked_ref(path: str, stats: dict) -> None:
    """One line (rank 0) when reference statistics do not record what check_ref_matches() compares."""
    missing = [what for key, what in [('resolution', 'resolution'), ('detector_sha256', 'detector')] if key not in stats]
    if missing:
        dist.print0(f'Note: {path} does not record the {" or the ".join(missing)} it was made with (EDM\'s .npz files '
                    f'do not), so it cannot be checked against these images and this detector.')


def check_ref_matches(path: str, stats: dict, detector: Detector, images: Optional[ImageFiles] = None) -> None:
    """Refuse (ValueError) reference statistics that record another detector (file SHA-256) than
    `detector`, or another resolution than the first image of `images`. What the reference does not
    record goes unchecked (note_unchecked_ref)."""
    meta = read_ref_metadata(stats, path)
    made_with = meta.get('detector_sha256')
    if made_with and detector.sha256 and made_with != detector.sha256:
        source = meta.get('detector', 'another detector')
        use = 'leave out --detector' if source == DETECTOR_URL else f'pass --detector={source}'
        again = '' if detector.source == DETECTOR_URL else f' --detector={detector.source}'
        raise ValueError(f'{path} was made with the detector {source} (SHA-256 {made_with[:12]}), not {detector.source} '
                         f'({detector.sha256[:12]}); {use}, or make the reference again with this one '
                         f'("python fid.py ref --data=DATASET --dest=FILE.npz{again}").')
    if images is None or not len(images) or 'resolution' not in meta:
        return
    (h, w), (h_img, w_img) = meta['resolution'], images.resolution()
    if (h, w) != (h_img, w_img):
        raise ValueError(f'{path} was made from {h}x{w} images, but {images.path} holds {h_img}x{w_img} images; pass '
                         f'reference statistics of the data at {h_img}x{w_img} ("python fid.py ref --data=DATASET --dest=FILE.npz").')


def ref_sha256(ref_path: str) -> str:
    """SHA-256 of the reference statistics file (for a URL, of its cached copy)."""
    return dnnlib.util.file_sha256(dnnlib.open_url(ref_path, return_filename=True, verbose=False))


def provenance(images: str) -> dict:
    """What a record needs to say which images it measured: how many images the folder (or .zip)
    holds and generate.py's manifest of them (None when there is none). Notes on stdout (rank 0)
    when the manifest lists another number of seeds than there are images, and when it says that
    generation was interrupted (its 'complete' is false: 'seeds' lists the images written so far,
    'requested' what was asked for)."""
    num_images = len(ImageFiles(images))  # First: it says clearly what is wrong with a missing or foreign path.
    manifest = provenance_lib.read_manifest(images)
    if manifest is not None and manifest.get('seeds', {}).get('count') != num_images:
        dist.print0(f'Note: {images} holds {num_images} images, but its {provenance_lib.MANIFEST_NAME} lists '
                    f'{manifest.get("seeds", {}).get("count")} seeds.')
    if manifest is not None and not provenance_lib.is_complete(manifest):
        dist.print0(f'Note: {images} is incomplete: its {provenance_lib.MANIFEST_NAME} records '
                    f'{len(provenance_lib.manifest_seeds(manifest))} of {len(provenance_lib.manifest_seeds(manifest, "requested"))} '
                    f'requested images as written; rerun the generate.py command to complete it.')
    return dict(num_images=num_images, manifest=manifest)


def _write_json(path: str, record: dict) -> None:
    dnnlib.util.write_atomic(path, lambda f: f.write((json.dumps(record, indent=2) + '\n').encode('utf-8')))


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def _append_jsonl(path: str, record: dict) -> None:
    old = open(path, 'rb').read() if os.path.isfile(path) else b''
    dnnlib.util.write_atomic(path, lambda f: f.write(old + (json.dumps(record) + '\n').encode('utf-8')))

#----------------------------------------------------------------------------
# The three commands as plain functions, callable from Python.

def ref(data: str, dest: str, features: bool = False, detector: Optional[str] = None, allow_pickle: bool = False,
        batch: int = 64, workers: int = 3, device: str = 'auto') -> dict:
    """Reference statistics of the images in `data` (folder or .zip) into the .npz `dest`: mu, sigma,
    the metadata of ref_metadata() and, with features=True, the features KID needs. Returns the
    statistics (the same on every process)."""
    dev = dist.init(device)
    dnnlib.util.check_writable(dest, '--dest')
    net = load_detector(detector, allow_pickle=allow_pickle, device=dev)
    dist.print0(f'Calculating statistics of {data}...')
    stats = calculate_inception_stats(data, net, max_batch_size=batch, num_workers=workers, with_features=features)
    if dist.get_rank() == 0:
        arrays = dict(mu=stats['mu'], sigma=stats['sigma'], **ref_metadata(data, net, stats['num']))
        if features:
            arrays['features'] = stats['features']
        dnnlib.util.write_atomic(dest, lambda f: np.savez(f, **arrays))
        print(f'Saved statistics of {stats["num"]} images to {dest}')
    dist.barrier()
    return stats


def calc(images: str, ref: str, num: int = 50000, seed: int = 0, metrics: Sequence[str] = ('fid',),
         json_path: Optional[str] = None, detector: Optional[str] = None, allow_pickle: bool = False, batch: int = 64,
         workers: int = 3, device: str = 'auto') -> dict:
    """The metrics of `num` generated images (folder or .zip) against the reference statistics `ref`.
    Returns (on rank 0; {} elsewhere) the record --json writes: images, ref, num, seed, detector,
    metrics {'fid', 'is', 'is_std', 'kid'}, time, and with json_path the provenance (num_images,
    generate.py's manifest, ref_sha256, detector_sha256)."""
    metrics = check_metrics(metrics)
    dev = dist.init(device)
    if json_path is not None:
        dnnlib.util.check_writable(json_path, '--json')
    ref_stats = load_ref_stats(ref, need_features=('kid' in metrics))
    note_unchecked_ref(ref, ref_stats)
    net = load_detector(detector, allow_pickle=allow_pickle, device=dev)
    check_ref_matches(ref, ref_stats, net, ImageFiles(images))
    origin = {}
    if json_path is not None:  # Before the long computation, so that a bad manifest fails early.
        origin = dict(ref_sha256=ref_sha256(ref), detector_sha256=net.sha256, **provenance(images))
    dist.print0(f'Calculating {", ".join(metrics)} of {images}...')
    results = calculate_metrics(images, ref_stats, net, metrics, num_expected=num, seed=seed, max_batch_size=batch, num_workers=workers)
    record = {}
    if dist.get_rank() == 0:
        record = dict(images=images, ref=ref, num=num, seed=seed, detector=net.source, metrics=results,
                      time=datetime.datetime.now().isoformat(timespec='seconds'), **origin)
        if json_path is not None:
            _write_json(json_path, record)
        for line in format_results(results):
            print(line)
    dist.barrier()
    return record


def sweep(run: str, ref: str, num: int = 50000, seed: int = 0, ranges: int = 1, metrics: Sequence[str] = ('fid',),
          json_path: Optional[str] = None, detector: Optional[str] = None, allow_pickle: bool = False, batch: int = 64,
          workers: int = 3, device: str = 'auto') -> dict:
    """Evaluate every ckpt_<kimg>/ image folder of a run (checkpoint.find_checkpoints), or of every run
    a glob pattern matches ('RUN/phema_*': the post-hoc EMA reconstructions); each evaluation is
    appended to that run's metrics.jsonl with its provenance, and folders already recorded there are
    skipped. ranges > 1: the disjoint blocks of `num` images in seed order (EDM's three seed ranges
    with ranges=3 and 150000 images per folder), else `num` images chosen by `seed`.
    Returns (rank 0; {} elsewhere) {'run', 'ref', 'num', 'ranges', 'evaluations': this sweep's
    records, 'table': per folder ('RUN_NAME/ckpt_...' for a pattern) its FID per block and minimum,
    'best': the row of lowest minimum FID among those fully evaluated, or None}, which json_path also
    receives."""
    metrics = check_metrics(metrics)
    if 'fid' not in metrics:
        raise ValueError('sweep ranks checkpoints by FID; include fid in --metrics.')
    dev = dist.init(device)
    runs = sorted(path for path in glob.glob(run) if os.path.isdir(path)) if glob.has_magic(run) else [run]
    if not runs or not os.path.isdir(runs[0]):
        raise FileNotFoundError(f'--run {run} is not a folder (nor a pattern matching folders); pass the folder that holds the ckpt_*/ image folders.')
    folders = {r: [os.path.basename(path) for _kimg, path in checkpoint.find_checkpoints(r, 'samples')] for r in runs}
    if not any(folders.values()):
        raise FileNotFoundError(f'{run} has no ckpt_*/ image folders; write them with generate.py first.')
    if json_path is not None:
        dnnlib.util.check_writable(json_path, '--json')
    ref_stats = load_ref_stats(ref, need_features=('kid' in metrics))
    note_unchecked_ref(ref, ref_stats)
    key = dict(num=num, seed=seed, ref=ref, detector=detector or DETECTOR_URL)
    blocks = [None] if ranges == 1 else list(range(ranges))
    evaluator = _SweepEvaluator(ref_stats, metrics, detector, allow_pickle, dev, batch, workers)
    table, new = [], []
    for r in runs:
        log_path = os.path.join(r, 'metrics.jsonl')
        records = _read_jsonl(log_path)
        dist.barrier()  # Every process has read the log before rank 0 appends to it.
        for name in folders[r]:
            for block in blocks:
                record = evaluator.evaluate(r, name, block, records, **key)
                if record is False:
                    break
                if record is not None and dist.get_rank() == 0:
                    _append_jsonl(log_path, record)
                    records.append(record)
                    new.append(dict(record, run=r))
        rows, _best = sweep_table(records, folders[r], blocks, **key)
        table += [dict(row, ckpt=f'{os.path.basename(os.path.normpath(r))}/{row["ckpt"]}') if len(runs) > 1 else row for row in rows]
    summary = {}
    if dist.get_rank() == 0:
        best = min((row for row in table if None not in row['fid']), key=lambda row: row['min_fid'], default=None)
        summary = dict(run=run, runs=runs, ref=ref, num=num, ranges=ranges, evaluations=new, table=table, best=best)
        for line in format_sweep_table(table, best, blocks):
            print(line)
        if json_path is not None:
            _write_json(json_path, summary)
    dist.barrier()
    return summary


class _SweepEvaluator:
    """One sweep evaluation at a time, loading the detector and hashing the reference only when needed."""

    def __init__(self, ref_stats, metrics, detector, allow_pickle, device, batch, workers):
        self.ref_stats, self.metrics, self.detector, self.allow_pickle = ref_stats, metrics, detector, allow_pickle
        self.device, self.batch, self.workers = device, batch, workers
        self.net = self.ref_hash = None

    def evaluate(self, run: str, name: str, block: Optional[int], records: list[dict], num: int, seed: int,
                 ref: str, detector: str):
        """The record of folder `name`'s block (None: already recorded; False: too few images, so no
        later block either)."""
        key = dict(ckpt=name, block=block, num=num, seed=(seed if block is None else None), ref=ref, detector=detector)
        if any(_same_evaluation(r, **key) and set(self.metrics) <= set(r['metrics']) for r in records):
            return None
        path = os.path.join(run, name)
        needed = num * (1 if block is None else block + 1)
        files = ImageFiles(path)
        if len(files) < needed:
            dist.print0(f'Skipping {name}: {len(files)} images, {needed} needed.')
            return False
        self.net = self.net or load_detector(self.detector, allow_pickle=self.allow_pickle, device=self.device)
        check_ref_matches(ref, self.ref_stats, self.net, files)
        self.ref_hash = self.ref_hash or ref_sha256(ref)
        origin = dict(ref_sha256=self.ref_hash, detector_sha256=self.net.sha256, **provenance(path))
        results = calculate_metrics(path, self.ref_stats, self.net, self.metrics, num_expected=num, seed=seed, block=block,
                                    max_batch_size=self.batch, num_workers=self.workers)
        images = 'random' if block is None else f'{block * num}-{(block + 1) * num - 1}'
        dist.print0(f'{name} images {images}: ' + ', '.join(format_results(results)[:-1] + [f'FID {results.get("fid", float("nan")):g}']))
        return dict(key, images=images, metrics=results, time=datetime.datetime.now().isoformat(timespec='seconds'), **origin)


def _same_evaluation(record: dict, **key: Any) -> bool:
    return all(record.get(k) == v for k, v in key.items())


def sweep_table(records: list[dict], folders: list[str], blocks: list, num: int, seed: int, ref: str,
                detector: str) -> tuple[list[dict], Optional[dict]]:
    """Per folder with any evaluation {'ckpt', 'fid': [FID per block or None], 'min_fid'}, and the best
    folder (lowest min_fid) among those with every block done, or None."""
    table, best = [], None
    for name in folders:
        fids = []
        for block in blocks:
            match = [r for r in records if _same_evaluation(r, ckpt=name, block=block, num=num, ref=ref, detector=detector,
                                                             seed=(seed if block is None else None))]
            fids.append(match[-1]['metrics']['fid'] if match else None)
        done = [fid for fid in fids if fid is not None]
        if done:
            table.append(dict(ckpt=name, fid=fids, min_fid=min(done)))
            if len(done) == len(fids) and (best is None or min(done) < best['min_fid']):
                best = table[-1]
    return table, best


def format_sweep_table(table: list[dict], best: Optional[dict], blocks: list) -> list[str]:
    """Rows 'ckpt  FID per block  minimum', then the best checkpoint."""
    lines = [f'{"checkpoint":<24}{"FID per block":<{12 * len(blocks)}}{"min FID":>10}']
    for row in table:
        cells = ''.join(f'{fid:<12.4f}' if fid is not None else f'{"-":<12}' for fid in row['fid'])
        lines.append(f'{row["ckpt"]:<24}{cells}{row["min_fid"]:>10.4f}')
    lines.append(f'Best: {best["ckpt"]} with FID {best["min_fid"]:g}' if best else 'No checkpoint has been fully evaluated yet.')
    return lines


def format_results(results: dict) -> list[str]:
    """Lines for the terminal, FID last and bare so that scripts can read it as EDM's."""
    lines = []
    if 'is' in results:
        lines.append(f'IS: {results["is"]:g} (std {results["is_std"]:g})')
    if 'kid' in results:
        lines.append(f'KID: {results["kid"]:g}')
    if 'fid' in results:
        lines.append(f'{results["fid"]:g}')
    return lines


def check_metrics(metrics: Sequence[str] | str) -> tuple[str, ...]:
    """The metrics asked for, in METRICS order; ValueError for an unknown one or none."""
    if isinstance(metrics, str):
        metrics = metrics.split(',')
    metrics = tuple(m.strip().lower() for m in metrics if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f'unknown metric {", ".join(unknown) or "(none)"}; choose from {", ".join(METRICS)}.')
    return tuple(m for m in METRICS if m in metrics)

#----------------------------------------------------------------------------
