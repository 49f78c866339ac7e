"""Plain helpers: attribute dicts, construction of classes by dotted name, and URL opening with an
on-disk cache. Nothing here imports torch."""

import hashlib
import importlib
import io
import os
import re
import tempfile
import urllib.parse
from typing import Any, BinaryIO, Callable, Optional

#----------------------------------------------------------------------------
# Attribute-style dictionary, used for configurations passed to constructors.

class EasyDict(dict):
    """dict whose items are also attributes: cfg.lr is cfg['lr']."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]

#----------------------------------------------------------------------------
# Construction of objects from configuration dicts.

def get_obj_by_name(name: str) -> Any:
    """Return the object a dotted name such as 'training.networks.EDMPrecond' refers to."""
    if not isinstance(name, str) or '.' not in name:
        raise ValueError(f'Expected a dotted name such as "package.module.Object", got {name!r}.')
    # Find the longest importable module prefix, then walk the remaining attributes.
    parts = name.split('.')
    for split in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and not module_name.startswith(err.name):
                raise  # A genuine missing dependency inside the module.
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(f'{name!r} does not exist: module {module_name!r} has no attribute path {".".join(parts[split:])!r}.') from None
        return obj
    raise ValueError(f'Cannot import any module for {name!r}.')


def construct_class_by_name(*args, class_name: str, **kwargs) -> Any:
    """Instantiate the class that `class_name` names with the given arguments."""
    cls = get_obj_by_name(class_name)
    if not callable(cls):
        raise ValueError(f'{class_name!r} is not a class or function.')
    return cls(*args, **kwargs)

#----------------------------------------------------------------------------
# Files that are either the old version or the complete new one.

def write_atomic(path: str, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Call write(f) on a temporary file in the folder of `path`, then rename it to `path`, so that
    a crash or an error never leaves a truncated file; the temporary file is removed on failure.
    fsync=True also flushes the data to disk before the rename (for checkpoints)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    except OSError as err:
        raise OSError(f'Cannot write {path} ({err.strerror}); choose a path in a folder you can write to.') from err
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes files only the owner can read.
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def check_writable(path: str, option: str) -> None:
    """Fail before a long computation, not after it, when the file `path` (given as `option`, e.g.
    '--grid') cannot be written: its folder is created if missing, then a temporary file is made and
    removed there (which, unlike permission bits, also holds for root and read-only file systems);
    OSError with one sentence."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OSError(f'{option} {path} is a folder; give a file name.')
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OSError(f'Cannot create the folder of {option} {path} ({err.strerror}); choose another path.') from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OSError(f'Cannot write {option} {path} ({err.strerror}); choose a path in a folder you can write to.') from None


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes as 64 hex digits, read in chunks so that large checkpoints are not
    held in memory."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b''):
            digest.update(chunk)
    return digest.hexdigest()

#----------------------------------------------------------------------------
# Cache directory and URL opening.

class DownloadError(IOError):
    """A URL could not be fetched and no cached copy exists."""


def make_cache_dir_path(*paths: str) -> str:
    """Cache folder: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib (or a temp folder without a home)."""
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    home = os.environ.get('HOME') or os.environ.get('USERPROFILE')
    if home:
        return os.path.join(home, '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)


def is_url(obj: Any) -> bool:
    """True for http(s) and file URLs, False for local paths."""
    if not isinstance(obj, str):
        return False
    return re.match(r'^(https?|file)://', obj) is not None


def url_cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    """Where open_url keeps its copy of `url`: <cache>/downloads/<md5 of url>_<file name>."""
    cache_dir = cache_dir or make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    name = os.path.basename(urllib.parse.urlparse(url).path) or 'download'
    name = re.sub(r'[^0-9a-zA-Z._-]+', '_', name)
    return os.path.join(cache_dir, f'{url_md5}_{name}')


def open_url(url: str, cache_dir: Optional[str] = None, num_attempts: int = 3, verbose: bool = True,
             return_filename: bool = False, cache: bool = True, timeout: float = 30) -> Any:
    """Open a local path, a file:// URL or an http(s) URL as a binary file object.

    Downloads are cached on disk (see make_cache_dir_path) and written atomically, so a later call
    works offline. With return_filename=True the local file name is returned instead.
    Raises FileNotFoundError for a missing local file and DownloadError when a download fails
    and no cached copy exists; both messages name the URL and say how to pass a local file instead.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f'Expected a path or URL, got {url!r}.')

    # Local files.
    if not is_url(url) or url.startswith('file://'):
        path = urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith('file://') else url
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{url} does not exist or is not a file.')
        return path if return_filename else open(path, 'rb')

    # Cached copy.
    cache_path = url_cache_path(url, cache_dir)
    if cache and os.path.isfile(cache_path):
        return cache_path if return_filename else open(cache_path, 'rb')

    # Download.
    import requests  # Imported here so that local use never needs it.
    data, last_error = None, None
    for attempt in range(max(num_attempts, 1)):
        try:
            if verbose:
                print(f'Downloading {url} ...', flush=True)
            with requests.get(url, timeout=timeout, stream=True) as res:
                res.raise_for_status()
                data = res.content
            break
        except requests.RequestException as err:
            last_error = err
    if data is None:
        raise DownloadError(
            f'Could not download {url} ({type(last_error).__name__}: {last_error}) and no cached copy '
            f'exists at {cache_path}. Download the file on a machine with network access and pass its '
            f'local path instead, or copy it to that cache path.')

    if cache or return_filename:
        write_atomic(cache_path, lambda f: f.write(data))
        if return_filename:
            return cache_path
    return io.BytesIO(data)
