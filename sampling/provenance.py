"""Provenance of generated images: every folder generate.py writes holds generate.json, which says
what its images were made with (the network file and its SHA-256, D, every sampler setting, the
seeds, the precision, the study setting, the code's version) and how far generation got: the seeds
requested, those whose images are written, and whether that is all of them. fid.py reads only
PNG/JPEG files, so the manifest is never counted as a sample, and it copies the manifest into its
records: a reported FID then says what it was computed from.
"""

import datetime
import functools
import hashlib
import json
import math
import os
import subprocess
import zipfile
from typing import Any, Callable, Optional, Sequence

import torch

import dnnlib
from torch_utils import cli
from torch_utils import distributed as dist
from sampling import samplers as sampling

#----------------------------------------------------------------------------

MANIFEST_NAME = 'generate.json'
MANIFEST_FORMAT = 'pfgmpp-generate-manifest'
MANIFEST_VERSION = 1

# What decides the images of a seed. A folder holds images of one configuration only, since an FID
# of a mixture measures neither; the memory layout, torch.compile and the batch size change only the
# rounding of the same computation, so they are recorded per run but may differ between runs.
CONFIG_KEYS = ('network_sha256', 'D', 'sampler', 'class_idx', 'subdirs', 'precision', 'study', 'guidance')
@functools.lru_cache(maxsize=None)
def code_version() -> dict:
    """The version of this code: {'git_commit', 'git_dirty'} from git when the code sits in a git
    checkout (both None otherwise, or without git; tracked files only count towards dirty), and
    'source_sha256', a SHA-256 over the names and bytes of the .py files of the scripts and packages,
    which identifies the code also in a copy without .git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    info = dict(git_commit=None, git_dirty=None)
    try:
        git = lambda *args: subprocess.run(['git', '-C', root, *args], capture_output=True, text=True, timeout=30)
        head = git('rev-parse', 'HEAD')
        if head.returncode == 0:
            info['git_commit'] = head.stdout.strip()
            status = git('status', '--porcelain', '--untracked-files=no')
            info['git_dirty'] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):  # No git, or it hangs: the source hash still says which code ran.
        pass
    digest = hashlib.sha256()
    files = [name for name in os.listdir(root) if name.endswith('.py')]
    for package in ('dnnlib', 'torch_utils', 'training'):
        for folder, _dirs, names in os.walk(os.path.join(root, package)):
            files += [os.path.relpath(os.path.join(folder, name), root) for name in names if name.endswith('.py')]
    for name in sorted(f.replace(os.sep, '/') for f in files):
        digest.update(name.encode() + b'\0' + dnnlib.util.file_sha256(os.path.join(root, name)).encode() + b'\n')
    info['source_sha256'] = digest.hexdigest()
    return info


def _plain(value: Any) -> Any:
    """value as JSON holds it: tuples become lists, non-finite floats the strings 'inf', '-inf', 'nan'
    (which strict JSON readers accept), numbers and strings stay."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def make_manifest(net, seeds: Sequence[int], sampler_kwargs: Optional[dict] = None, class_idx: Optional[int] = None,
                  subdirs: bool = False, precision: str = 'fp32', channels_last: bool = False, compile: bool = False,
                  batch_size: Optional[int] = None, network: Optional[str] = None, network_sha256: Optional[str] = None,
                  study: Optional[dict] = None, guidance: Optional[dict] = None) -> dict:
    """The manifest of one generate_images() call for `net` (its D is the prior's) once it is done: the
    configuration (CONFIG_KEYS: the sampler's every setting, sampling.sampler_settings, which also
    refuses bad ones; guidance: weight, interval or steps, guide network and its SHA-256, or None);
    'seeds', the seeds whose images the folder holds, as {'ranges': '0-49999', 'count': 50000};
    'requested', the seeds asked for, in the same form; 'complete', whether every requested seed's
    image is there (here: seeds = requested, complete); and 'runs', a list with this run's network as
    given, seeds, memory layout, compile flag, batch size, process count, code version, PyTorch
    version and time. claim_folder() and record_written() keep seeds, requested and complete true
    while a folder fills."""
    run = dict(network=network, seeds=seeds_entry(seeds), channels_last=bool(channels_last), compile=bool(compile),
               batch_size=batch_size, processes=dist.get_world_size(), code=code_version(), torch=torch.__version__,
               time=datetime.datetime.now().isoformat(timespec='seconds'))
    manifest = dict(format=MANIFEST_FORMAT, version=MANIFEST_VERSION, network=network, network_sha256=network_sha256,
                    D=net.D, sampler=sampling.sampler_settings(net, sampler_kwargs), class_idx=class_idx, subdirs=bool(subdirs),
                    precision=precision, study=study, guidance=guidance, seeds=seeds_entry(seeds), requested=seeds_entry(seeds),
                    complete=True, runs=[run])
    return _plain(manifest)


def seeds_entry(seeds: Sequence[int]) -> dict:
    """Seeds as a manifest lists them: {'ranges': '0-2,5', 'count': 4}."""
    return dict(ranges=cli.format_int_list(seeds), count=len(set(seeds)))


def read_manifest(path: str) -> Optional[dict]:
    """The manifest of an image folder, or at the root of a .zip of images; None when there is none (or
    no such folder yet), ValueError when the file is not one."""
    if not os.path.exists(path):
        return None
    where = os.path.join(path, MANIFEST_NAME) if os.path.isdir(path) else f'{MANIFEST_NAME} in {path}'
    try:
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
                return None
            with open(os.path.join(path, MANIFEST_NAME), encoding='utf-8') as f:
                manifest = json.load(f)
        else:
            with zipfile.ZipFile(path) as z:
                if MANIFEST_NAME not in z.namelist():
                    return None
                manifest = json.loads(z.read(MANIFEST_NAME))
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f'{where} is not a readable generate.py manifest ({cli.first_line(err)}); move it away or use another folder.') from None
    if not isinstance(manifest, dict) or manifest.get('format') != MANIFEST_FORMAT:
        raise ValueError(f'{where} is not a generate.py manifest (no format "{MANIFEST_FORMAT}"); move it away or use another folder.')
    return manifest


def config_differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every configuration value (CONFIG_KEYS, sampler settings one by one)
    that differs between two manifests."""
    diffs = []
    for key in CONFIG_KEYS:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f'{key}.{k}: {a.get(k)} -> {b.get(k)}' for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f'{key}: {a} -> {b}')
    return diffs


def manifest_seeds(manifest: Optional[dict], key: str = 'seeds') -> list[int]:
    """The seeds a manifest lists under key ('seeds': those whose images are written; 'requested': those
    asked for, which a manifest of an earlier version records as 'seeds'), ascending; [] for None."""
    if manifest is None:
        return []
    entry = manifest.get(key) if key in manifest else manifest.get('seeds')
    ranges = (entry or {}).get('ranges') or ''
    return cli.parse_int_list(ranges) if ranges else []


def is_complete(manifest: dict) -> bool:
    """Whether a manifest says that every requested seed's image is written (manifests of an earlier
    version, which do not say, count as complete)."""
    return manifest.get('complete', True) is not False


def write_manifest(folder: str, manifest: dict) -> None:
    """Write folder/generate.json atomically (a crash leaves the old one or the new one)."""
    data = (json.dumps(manifest, indent=2) + '\n').encode('utf-8')
    dnnlib.util.write_atomic(os.path.join(folder, MANIFEST_NAME), lambda f: f.write(data))


def _progress(manifest: dict) -> tuple:
    return manifest_seeds(manifest), manifest_seeds(manifest, 'requested'), is_complete(manifest)


def claim_folder(outdir: str, manifest: dict, seeds: Sequence[int], subdirs: bool, skip_existing: bool,
                 missing_seeds: Callable[[str, Sequence[int], bool], list[int]]) -> tuple[list[int], dict]:
    """Before images of `manifest`'s configuration go into outdir: refuse (ValueError) a file, and a
    folder whose manifest records another configuration; look up which requested seeds (these and
    those of earlier runs) already have their image (missing_seeds(); images are written atomically,
    so one that exists is complete). Rank 0 then writes the merged manifest: 'requested' every seed
    asked for, 'seeds' those whose image is there, 'complete' whether that is all of them, and this
    run (its 'seeds': those it samples) after the earlier ones; it writes nothing when there is
    nothing to sample and the manifest already says so. Returns (the seeds to sample: with
    skip_existing the missing ones, else all; the manifest as written); every process returns
    together."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ValueError(f'{outdir} is a file, not a folder; write the images to a new folder or to one generate.py wrote.')
    old = read_manifest(outdir)
    differences = [] if old is None else config_differences(old, manifest)
    if differences:
        raise ValueError(f'{os.path.join(outdir, MANIFEST_NAME)} records images of another configuration '
                         f'({"; ".join(differences[:3])}{"; ..." if len(differences) > 3 else ""}); an FID of mixed images '
                         f'is wrong, so write to another --outdir or delete that folder.')
    requested = sorted(set(seeds) | set(manifest_seeds(old, 'requested')))
    missing = set(missing_seeds(outdir, requested, subdirs))
    todo = [seed for seed in seeds if seed in missing] if skip_existing else list(seeds)
    done = [seed for seed in requested if seed not in missing]
    run = dict(manifest['runs'][-1], seeds=seeds_entry(todo))
    merged = dict(manifest, seeds=seeds_entry(done), requested=seeds_entry(requested), complete=not missing,
                  runs=(old or {}).get('runs', []) + [run])
    dist.barrier()  # Every process has read the folder before rank 0 changes it.
    if dist.get_rank() == 0 and (todo or (old is not None and _progress(old) != _progress(merged))):
        write_manifest(outdir, merged)
    return todo, merged


def record_written(outdir: str, manifest: dict, seeds: Sequence[int]) -> dict:
    """`manifest` (as claim_folder() wrote it) with `seeds` added to its 'seeds' (call it once their
    images are written) and 'complete' updated; rank 0 writes it to outdir atomically. Returns it."""
    done = manifest_seeds(manifest) + [int(seed) for seed in seeds]
    updated = dict(manifest, seeds=seeds_entry(done), complete=set(done) >= set(manifest_seeds(manifest, 'requested')))
    if dist.get_rank() == 0:
        write_manifest(outdir, updated)
    return updated

#----------------------------------------------------------------------------
