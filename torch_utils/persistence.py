"""Pickles that carry the source code of their classes, in the format of EDM's network snapshots and of
the StyleGAN3 Inception detector.

A class decorated with @persistent_class pickles as a call _reconstruct_persistent_obj(meta), where
meta = dict(type='class', version=6, module_src=<full source of the defining module>,
class_name=<name>, state=<the object's state>). Loading such a pickle executes module_src, so it runs
code from the file: load_pickle() refuses unless the caller says the file is trusted or the user
passed --allow-pickle.
"""

import copy
import hashlib
import inspect
import io
import linecache
import os
import pickle
import sys
import types
from typing import Any, BinaryIO, Optional, Union

import torch

#----------------------------------------------------------------------------

FORMAT_VERSION = 6  # The version EDM writes and reads; older versions never reached users.

_src_to_module: dict[str, types.ModuleType] = {}  # Module source -> module, for both directions below.
_module_to_src: dict[types.ModuleType, str] = {}


class UntrustedPickleError(ValueError):
    """A pickle was about to be loaded without the user's consent to run the code it carries."""


class PickleFormatError(ValueError):
    """A file given as a pickle could not be unpickled."""

#----------------------------------------------------------------------------
# Writing: the decorator.

def persistent_class(orig_class: type) -> type:
    """Class decorator: instances pickle together with the source of the module that defines the class,
    so they load where that module is missing or has changed. The constructor's arguments are kept as
    `init_args` and `init_kwargs`, as EDM does, so a loaded network can be built again."""
    if not isinstance(orig_class, type):
        raise TypeError(f'@persistent_class decorates classes, not {type(orig_class).__name__}.')
    if is_persistent(orig_class):
        return orig_class
    try:
        module_src = _source_of_module(sys.modules[orig_class.__module__])
    except (OSError, TypeError):
        module_src = None  # Defined where no source exists (an interactive session): usable, not picklable.

    class Decorator(orig_class):
        _orig_module_src = module_src
        _orig_class_name = orig_class.__name__
        __jit_unused_properties__ = [*getattr(orig_class, '__jit_unused_properties__', []), 'init_args', 'init_kwargs']  # Keeps it scriptable.

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        @property
        def init_args(self) -> tuple:
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self) -> dict:
            return copy.deepcopy(self._init_kwargs)

        def __reduce__(self):
            if type(self).__dict__.get('_orig_class_name') is None or self._orig_module_src is None:
                raise pickle.PicklingError(
                    f'Cannot pickle {type(self).__qualname__}: decorate it with @persistent_class in a '
                    f'module that has a source file.')
            getstate = getattr(self, '__getstate__', None)
            state = getstate() if callable(getstate) else self.__dict__
            meta = dict(type='class', version=FORMAT_VERSION, module_src=self._orig_module_src,
                        class_name=self._orig_class_name, state=state)
            return _reconstruct_persistent_obj, (meta,)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    Decorator.__doc__ = orig_class.__doc__
    return Decorator


def is_persistent(obj: Any) -> bool:
    """True for classes made by @persistent_class and for their instances."""
    cls = obj if isinstance(obj, type) else type(obj)
    return '_orig_module_src' in cls.__dict__ and '_orig_class_name' in cls.__dict__


def _source_of_module(module: types.ModuleType) -> str:
    """The source text that reconstructs `module`; registers the pair so that loading a pickle in the
    process that wrote it gives back the very same classes."""
    if module in _module_to_src:
        return _module_to_src[module]
    src = inspect.getsource(module)
    _module_to_src[module] = src
    _src_to_module.setdefault(src, module)
    return src

#----------------------------------------------------------------------------
# Reading: called by pickle for every persistent object in the file.

def _reconstruct_persistent_obj(meta: dict) -> Any:
    """Build the object that `meta` describes: run its module source (once per distinct source), then
    make the instance without calling __init__ and restore its state."""
    if not isinstance(meta, dict) or meta.get('type') != 'class':
        raise ValueError(f'Unsupported persistent object: expected type "class", got {meta.get("type") if isinstance(meta, dict) else meta!r}.')
    module = _module_from_source(meta['module_src'])
    if meta['class_name'] not in module.__dict__:
        raise ValueError(f'The embedded source defines no class {meta["class_name"]!r}.')
    cls = persistent_class(module.__dict__[meta['class_name']])
    obj = cls.__new__(cls)
    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta['state'])  # torch.nn.Module fills in attributes that newer PyTorch versions added.
    else:
        obj.__dict__.update(meta['state'])
    return obj


def _module_from_source(src: str) -> types.ModuleType:
    """Execute `src` as a new module named after its hash, or return the module already made from it."""
    if src in _src_to_module:
        return _src_to_module[src]
    name = '_persistent_module_' + hashlib.sha1(src.encode('utf-8')).hexdigest()
    filename = f'<persistent source {name}>'
    linecache.cache[filename] = (len(src), None, src.splitlines(keepends=True), filename)  # Readable tracebacks.
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    _module_to_src[module] = src
    _src_to_module[src] = module
    try:
        exec(compile(src, filename, 'exec'), module.__dict__)
    except BaseException:
        del sys.modules[name], _module_to_src[module], _src_to_module[src]
        raise
    return module

#----------------------------------------------------------------------------
# The safe entry point.

class _Unpickler(pickle.Unpickler):
    """Tensors come back on the CPU even when the file was written from a GPU."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ('torch.storage', '_load_from_bytes'):
            return lambda b: torch.load(io.BytesIO(b), map_location='cpu', weights_only=False)
        return super().find_class(module, name)


def load_pickle(f: Union[str, os.PathLike, BinaryIO], allow_pickle: bool, trusted: bool = False,
                name: Optional[str] = None) -> Any:
    """Unpickle a file object or path, e.g. an EDM network-snapshot-*.pkl (a dict with 'ema', ...) or
    the Inception detector. Pickles execute code when loaded, so this refuses with UntrustedPickleError
    unless the user allowed it (allow_pickle, i.e. --allow-pickle) or the caller knows the source
    (trusted). A file that is not a pickle raises PickleFormatError. `name` (e.g. the URL) is what
    messages call the file."""
    if name is None:
        name = os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, 'name', 'the file'))
    if not (allow_pickle or trusted):
        raise UntrustedPickleError(
            f'{name} is a pickle, and loading a pickle executes code from it; pass --allow-pickle if '
            f'you trust its source.')
    if isinstance(f, (str, os.PathLike)):
        with open(f, 'rb') as file:
            return load_pickle(file, allow_pickle=allow_pickle, trusted=trusted, name=name)
    try:
        return _Unpickler(f).load()
    except (UntrustedPickleError, PickleFormatError):
        raise
    except Exception as err:  # Garbage makes pickle raise almost anything; the cause stays chained.
        cause = (str(err).strip().splitlines() or [''])[0]
        raise PickleFormatError(f'{name} could not be unpickled ({type(err).__name__}: {cause}); is it a '
                                f'complete pickle written by this code base, EDM or PFGM++?') from err

#----------------------------------------------------------------------------
