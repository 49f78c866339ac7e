"""Checkpoint reading and writing: the one module that knows the file formats (docs/development.md,
"Checkpoint files"). Ours are torch.save() archives of plain data that load with
torch.load(weights_only=True); load_network() also reads the published EDM and PFGM++ pickles, only
with allow_pickle (they execute code). Files are written atomically (temporary file, fsync, rename).
"""

import inspect
import math
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Optional

import torch

import dnnlib
from torch_utils import persistence
from torch_utils.cli import first_line
from training import networks, networks_edm2

__all__ = ['SNAPSHOT_FORMAT', 'STATE_FORMAT', 'CheckpointError', 'network_to_dict', 'network_from_dict',
           'save_atomic', 'load_plain', 'kimg_tag', 'kimg_of', 'snapshot_name', 'state_name', 'kimg_from_name', 'samples_dir_name',
           'save_network_snapshot', 'load_network', 'network_from_legacy', 'SOURCE_KINDS', 'training_state',
           'load_training_state', 'check_same_architecture', 'check_transfer_fits', 'copy_matching_weights',
           'find_checkpoints', 'newest_valid_state', 'PHEMA_FORMAT', 'phema_name', 'save_phema_snapshot',
           'load_phema_snapshot']

SNAPSHOT_FORMAT = 'pfgmpp-network-snapshot'
STATE_FORMAT = 'pfgmpp-training-state'
PHEMA_FORMAT = 'pfgmpp-phema-snapshot'
FORMAT_VERSION = 1
NETWORK_CLASSES = {cls.__name__: cls for cls in (networks.VPPrecond, networks.VEPrecond, networks.iDDPMPrecond, networks.EDMPrecond,
                                                  networks_edm2.EDM2Precond)}
# Legacy class names that are ours under another name: EDM2's preconditioner is `Precond` in its pickles.
LEGACY_CLASS_NAMES = {'Precond': 'EDM2Precond'}
# EDM2's encoders: a snapshot's 'encoder' turns the network's output into pixels. Only the standard RGB one
# (pixel-space models) needs nothing more; a latent model's needs a VAE decoder, which this project lacks.
PIXEL_ENCODERS = ('StandardRGBEncoder',)


class CheckpointError(ValueError):
    """A file is not a checkpoint we can read, or not the kind that was expected."""

#----------------------------------------------------------------------------
# Networks as plain data.

def network_to_dict(net: torch.nn.Module) -> dict:
    """{'class_name', 'init_kwargs', 'state_dict'} for one of training.networks' preconditioners;
    the state dict is copied to the CPU."""
    class_name = type(net).__name__
    if NETWORK_CLASSES.get(class_name) is not type(net) or not hasattr(net, 'init_kwargs'):
        raise CheckpointError(f'Cannot store a {class_name}: only {", ".join(NETWORK_CLASSES)} from training.networks can be saved.')
    state_dict = {k: v.detach().to('cpu', copy=True) for k, v in net.state_dict().items()}
    return dict(class_name=class_name, init_kwargs=dict(net.init_kwargs), state_dict=state_dict)


def network_from_dict(data: dict, device: torch.device | str = 'cpu', **override_kwargs) -> torch.nn.Module:
    """Rebuild a network stored by network_to_dict(): construct the named class with its arguments
    (updated by override_kwargs) and load the state dict strictly. The class name must be one of
    ours; nothing else is ever constructed from a file."""
    if not isinstance(data, dict) or not {'class_name', 'init_kwargs', 'state_dict'} <= set(data):
        raise CheckpointError('The checkpoint holds no network (class_name, init_kwargs, state_dict).')
    cls = NETWORK_CLASSES.get(data['class_name'])
    if cls is None:
        raise CheckpointError(f'Unknown network class {data["class_name"]!r} in the checkpoint; expected one of {", ".join(NETWORK_CLASSES)}.')
    kwargs = dict(data['init_kwargs'], **override_kwargs)
    try:
        with torch.device('meta'):
            net = cls(**kwargs)
        net = net.to_empty(device=device)
        _restore_non_persistent_buffers(net, cls, kwargs)
        net.load_state_dict(data['state_dict'], strict=True)
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f'The checkpoint\'s {data["class_name"]} does not match this code: {err}') from None
    return net.eval().requires_grad_(False)


def _restore_non_persistent_buffers(net: torch.nn.Module, cls: type, kwargs: dict) -> None:
    # to_empty() leaves every tensor uninitialised; buffers outside the state dict (if any) must be
    # recomputed, which only a real construction does. Cheap, because it happens only if needed.
    persistent = set(net.state_dict().keys())
    missing = [name for name, _ in net.named_buffers() if name not in persistent]
    if missing:
        reference = dict(cls(**kwargs).named_buffers())
        for name in missing:
            module_name, _, buffer_name = name.rpartition('.')
            module = net.get_submodule(module_name) if module_name else net
            getattr(module, buffer_name).copy_(reference[name])

#----------------------------------------------------------------------------
# Files.

def save_atomic(obj: Any, path: str) -> None:
    """torch.save(obj) to `path` through a temporary file in the same folder, fsync and an atomic rename."""
    dnnlib.util.write_atomic(path, lambda f: torch.save(obj, f), fsync=True)


def load_plain(path: str, expected_format: Optional[str] = None) -> dict:
    """torch.load(path, weights_only=True) of one of our checkpoints, with clear errors for a missing,
    truncated or foreign file. `expected_format` checks the 'format' field."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path} does not exist or is not a file.')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise CheckpointError(f'{path} is not a readable checkpoint of this project ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}).') from None
    if not isinstance(data, dict) or data.get('format') not in (SNAPSHOT_FORMAT, STATE_FORMAT, PHEMA_FORMAT):
        raise CheckpointError(f'{path} is not a checkpoint of this project (no network-snapshot or training-state format field).')
    if expected_format is not None and data['format'] != expected_format:
        raise CheckpointError(f'{path} is a {data["format"]}, not a {expected_format}.')
    if data.get('version', 0) > FORMAT_VERSION:
        raise CheckpointError(f'{path} was written by a newer version of this code (format version {data["version"]}).')
    return data

#----------------------------------------------------------------------------
# File names: the point in training as kimg, six digits, and the exact image count in thousandths of a
# kimg when it is not a whole kimg (network-snapshot-000002.048.pt at 2,048 images), so that two points
# of a run never share a name, whatever the tick, and names sort in training order.

KIMG_PATTERN = r'(\d+)(?:\.(\d{3}))?'


def kimg_tag(kimg: float) -> str:
    """'000002' for 2 kimg, '000002.048' for 2.048 kimg (2,048 images)."""
    nimg = int(round(float(kimg) * 1000))
    return f'{nimg // 1000:06d}' if nimg % 1000 == 0 else f'{nimg // 1000:06d}.{nimg % 1000:03d}'


def kimg_of(nimg: int) -> float | int:
    """nimg images as kimg: an int for a whole kimg, else the float nimg / 1000 (what names and records hold)."""
    return int(nimg) // 1000 if int(nimg) % 1000 == 0 else int(nimg) / 1000


def parse_kimg(whole: str, thousandths: Optional[str]) -> float | int:
    """The kimg of a name's KIMG_PATTERN groups: an int for a whole kimg, else the float nimg / 1000."""
    return int(whole) if thousandths is None else (int(whole) * 1000 + int(thousandths)) / 1000


def snapshot_name(kimg: float) -> str:
    return f'network-snapshot-{kimg_tag(kimg)}.pt'


def state_name(kimg: float) -> str:
    return f'training-state-{kimg_tag(kimg)}.pt'


def phema_name(kimg: float) -> str:
    return f'phema-snapshot-{kimg_tag(kimg)}.pt'


def kimg_from_name(name: str) -> Optional[float | int]:
    """The <kimg> of network-snapshot-<kimg>.* or training-state-<kimg>.*, else None."""
    match = re.fullmatch(rf'(?:network-snapshot|training-state)-{KIMG_PATTERN}\.(?:pt|pkl)', os.path.basename(name))
    return parse_kimg(*match.groups()) if match else None

#----------------------------------------------------------------------------
# Network snapshots, and loading a network from any checkpoint we know.

SOURCE_KINDS = ('snapshot', 'training-state', 'edm-pickle', 'edm2-pickle', 'pfgmpp-training-state')


def save_network_snapshot(path: str, net: torch.nn.Module, kimg: Optional[int] = None, **extra: Any) -> None:
    """Write network-snapshot-<kimg>.pt: the network as plain data plus what samplers need without
    building it (D, img_resolution, img_channels, label_dim, kimg in thousands of images); `extra`
    adds further plain-data fields (e.g. the training options)."""
    data = dict(format=SNAPSHOT_FORMAT, version=FORMAT_VERSION, network=network_to_dict(net), D=net.D,
                img_resolution=int(net.img_resolution), img_channels=int(net.img_channels),
                label_dim=int(net.label_dim), kimg=None if kimg is None else kimg_of(round(float(kimg) * 1000)))
    data.update(extra)
    save_atomic(data, path)


RECORDED = 'recorded'  # load_network(D=RECORDED): the D the file records (diffusion for a file that records none).


def load_network(path_or_url: str, allow_pickle: bool = False, device: torch.device | str = 'cpu',
                 D: Optional[float] | str = RECORDED) -> tuple[torch.nn.Module, dict]:
    """Load the network to sample from, in eval mode without gradients, on `device`, built for its one D.

    Reads our network-snapshot-*.pt ('network') and training-state-*.pt (its 'ema'), and, only with
    allow_pickle, EDM's and EDM2's network-snapshot-*.pkl ('ema'; EDM2's only for pixel-space models)
    and PFGM++'s training-state-*.pt ('ema' or 'net'). D: RECORDED, or the D asked for (None: diffusion), which must agree with a D the file
    records and is the network's D where the file records none (legacy EDM files). Returns (net, info)
    with info = {'D': net.D, 'D_recorded': whether the file says which D the network was trained for,
    'kimg': int or None, 'source': one of SOURCE_KINDS, 'path': the local file, 'training_options': the
    training options our checkpoints record (training_options.json's dict), None where unknown}. Raises
    CheckpointError for unreadable or foreign files and a D that contradicts the file's,
    persistence.UntrustedPickleError for a legacy file without allow_pickle, FileNotFoundError and
    dnnlib.DownloadError for files that cannot be had.
    """
    net, info = _load_network(path_or_url, allow_pickle, device, D)
    if D != RECORDED and info['D_recorded'] and net.D != D:
        raise CheckpointError(f'{path_or_url} was trained for {describe_D(net.D)}, but --D={describe_D(D, short=True)} was asked for; '
                              f'drop --D (and --pfgmpp/--aug_dim) to use the checkpoint\'s D.')
    return net, info


def describe_D(D: Optional[float], short: bool = False) -> str:
    """'D=2048' or 'diffusion (D -> infinity)'; short: '2048' or 'inf', as --D takes it."""
    if short:
        return 'inf' if D is None else f'{D:g}'
    return 'diffusion (D -> infinity)' if D is None else f'D={D:g}'


def _load_network(path_or_url: str, allow_pickle: bool, device: torch.device | str, D: Optional[float] | str) -> tuple[torch.nn.Module, dict]:
    path = dnnlib.open_url(path_or_url, return_filename=True, verbose=False)
    name = str(path_or_url)
    kimg = kimg_from_name(path_or_url.split('?')[0]) if isinstance(path_or_url, str) else None
    with open(path, 'rb') as f:
        head = f.read(2)

    if zipfile.is_zipfile(path):
        try:
            data = torch.load(path, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError:  # Holds pickled classes: a PFGM++ training state.
            data = None
        except Exception as err:
            raise CheckpointError(f'{name} is not a readable checkpoint ({first_line(err)}); is the file complete?') from None
        if data is not None:
            return _network_from_ours(data, name, path, kimg, device)
        if not allow_pickle:
            raise persistence.UntrustedPickleError(
                f'{name} is a legacy PFGM++ checkpoint that stores pickled classes, and loading it executes '
                f'code from the file; pass --allow-pickle if you trust its source.')
        try:
            data = torch.load(path, map_location='cpu', weights_only=False)
        except Exception as err:
            raise CheckpointError(f'{name} could not be loaded as a PFGM++ training state ({first_line(err)}).') from err
        source = 'pfgmpp-training-state'
    elif head[:1] == b'\x80':  # A pickle (protocol >= 2): EDM's network snapshots.
        data = persistence.load_pickle(path, allow_pickle=allow_pickle, name=name)
        if isinstance(data, int) and not isinstance(data, bool):  # torch.save()'s old non-zip format starts with a magic number.
            data = torch.load(path, map_location='cpu', weights_only=False)
            source = 'pfgmpp-training-state'
        else:
            source = 'edm-pickle'
            check_pixel_space(data, name)
    elif head == b'PK':  # A zip archive (torch.save) whose end, the central directory, is missing.
        raise CheckpointError(f'{name} is an incomplete or damaged checkpoint (a truncated zip archive); copy or download it again, '
                              f'or pass an earlier checkpoint.')
    else:
        raise CheckpointError(f'{name} is neither one of our .pt checkpoints nor an EDM/PFGM++ pickle; pass a network-snapshot-*.pt/.pkl or training-state-*.pt.')

    if isinstance(data, torch.nn.Module):
        legacy = data
    elif isinstance(data, dict) and isinstance(data.get('ema'), torch.nn.Module):
        legacy = data['ema']
    elif isinstance(data, dict) and isinstance(data.get('net'), torch.nn.Module):
        legacy = data['net']
    else:
        keys = ', '.join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f'{name} holds no network (found {keys}); expected EDM\'s dict with \'ema\' or PFGM++\'s with \'net\'.')
    net, D_recorded = network_from_legacy(legacy, name=name, device=device, D_unrecorded=None if D == RECORDED else D)
    if source == 'edm-pickle' and isinstance(net, networks_edm2.EDM2Precond):
        source = 'edm2-pickle'
    return net, dict(D=net.D, D_recorded=D_recorded, kimg=kimg, source=source, path=path, training_options=None)


def check_pixel_space(data: Any, name: str) -> None:
    """CheckpointError unless an EDM2 snapshot's 'encoder' (when it has one) is a pixel-space one: a
    latent model (edm2-img512-*, a StabilityVAEEncoder) makes latents that only the VAE decoder turns
    into images."""
    encoder = data.get('encoder') if isinstance(data, dict) else None
    if encoder is not None and type(encoder).__name__ not in PIXEL_ENCODERS:
        raise CheckpointError(f'{name} is a latent-space EDM2 model (encoder {type(encoder).__name__}): its latents need the VAE decoder to '
                              f'become images, which this project does not have yet; use a pixel-space model such as edm2-img64-*.')


def _network_from_ours(data: Any, name: str, path: str, kimg: Optional[int], device) -> tuple[torch.nn.Module, dict]:
    if not isinstance(data, dict) or data.get('format') not in (SNAPSHOT_FORMAT, STATE_FORMAT):
        raise CheckpointError(f'{name} is not a checkpoint of this project (no network-snapshot or training-state format field).')
    if data.get('version', 0) > FORMAT_VERSION:
        raise CheckpointError(f'{name} was written by a newer version of this code (format version {data["version"]}); update the code.')
    is_snapshot = data['format'] == SNAPSHOT_FORMAT
    net = network_from_dict(data.get('network' if is_snapshot else 'ema'), device=device)
    if 'D' in data and data['D'] != net.D:  # The network's constructor has validated its D.
        raise CheckpointError(f'{name} records D={data["D"]} but its network was built for D={net.D}; the file is inconsistent.')
    if data.get('kimg') is not None:
        kimg = data['kimg']
    options = data.get('training_options')
    return net, dict(D=net.D, D_recorded=True, kimg=kimg, source='snapshot' if is_snapshot else 'training-state', path=path,
                     training_options=options if isinstance(options, dict) else None)

#----------------------------------------------------------------------------
# Legacy networks (EDM, PFGM++) into our classes.

def network_from_legacy(legacy: torch.nn.Module, name: str = 'the file', device: torch.device | str = 'cpu',
                        D_unrecorded: Optional[float] = None) -> tuple[torch.nn.Module, bool]:
    """Rebuild a network unpickled from EDM or PFGM++ as our class of the same name: the persistent
    object's recorded constructor arguments (init_args, init_kwargs) with PFGM++'s pfgmpp/D/aug_dim
    turned into our D (D_unrecorded where it records none: EDM's files), then its state dict loaded
    strictly. EDM2's `Precond` becomes our EDM2Precond, its float16 weights float32 (with fp16_gains
    when its gains are float16, so that it computes as EDM2 runs its snapshots). Returns (net, D_recorded)."""
    class_name = LEGACY_CLASS_NAMES.get(type(legacy).__name__, type(legacy).__name__)
    cls = NETWORK_CLASSES.get(class_name)
    if cls is None or not isinstance(legacy, torch.nn.Module):
        raise CheckpointError(f'{name} holds a {class_name}, not one of {", ".join(NETWORK_CLASSES)}; it cannot be converted.')
    init_args = tuple(getattr(legacy, 'init_args', ()) or ())
    init_kwargs = dict(getattr(legacy, 'init_kwargs', {}) or {})
    if not init_args and not init_kwargs:
        raise CheckpointError(f'{name} does not record how its {class_name} was constructed (no init_kwargs); it cannot be converted.')
    if init_args:  # Positional arguments, in the order of EDM's (and our) signature.
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != 'self' and p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
        if len(init_args) > len(params):
            raise CheckpointError(f'{name}: {class_name} was constructed with {len(init_args)} positional arguments; ours takes at most {len(params)}.')
        init_kwargs = {**{p.name: value for p, value in zip(params, init_args)}, **init_kwargs}

    # PFGM++ records its augmentation as pfgmpp (on/off) and D or aug_dim; our networks take D (None = diffusion).
    pfgmpp = init_kwargs.pop('pfgmpp', None)
    D_values = [init_kwargs.pop(key) for key in ('D', 'aug_dim') if key in init_kwargs]
    D_values = [v for v in D_values if v is not None]
    if pfgmpp is not None and not pfgmpp:
        D, D_recorded = None, True
    elif D_values:
        if any(not math.isclose(float(v), float(D_values[0])) for v in D_values):
            raise CheckpointError(f'{name} records contradicting augmentation dimensions {D_values}.')
        D, D_recorded = float(D_values[0]), True  # Validated by the network's constructor.
    else:
        D, D_recorded = D_unrecorded, False  # EDM (or PFGM++ without a recorded D): the caller's.

    state_dict = {k: v.detach().to('cpu') for k, v in legacy.state_dict().items()}
    if cls is networks_edm2.EDM2Precond and state_dict.get('unet.out_gain', torch.zeros([])).dtype == torch.float16:
        init_kwargs['fp16_gains'] = True
    net = network_from_dict(dict(class_name=class_name, init_kwargs=dict(init_kwargs, D=D), state_dict=state_dict), device=device)
    return net, D_recorded

#----------------------------------------------------------------------------
# Post-hoc EMA snapshots (--phema): every tracked profile at one time.

def save_phema_snapshot(path: str, profiles: list[tuple[float, torch.nn.Module]], nimg: int, **extra: Any) -> None:
    """Write phema-snapshot-<kimg>.pt: each power-function EMA [(std, network)] as plain data, at
    nimg images seen (the time reconstruct_phema.py needs), with what samplers need (D, shapes)."""
    net = profiles[0][1]
    data = dict(format=PHEMA_FORMAT, version=FORMAT_VERSION, nimg=int(nimg), kimg=kimg_of(nimg), D=net.D,
                img_resolution=int(net.img_resolution), img_channels=int(net.img_channels), label_dim=int(net.label_dim),
                profiles=[dict(std=float(std), network=network_to_dict(ema)) for std, ema in profiles])
    data.update(extra)
    save_atomic(data, path)


def load_phema_snapshot(path: str) -> dict:
    """Read a phema-snapshot-*.pt (CheckpointError for anything else)."""
    data = load_plain(path, expected_format=PHEMA_FORMAT)
    if not isinstance(data.get('profiles'), list) or not isinstance(data.get('nimg'), int):
        raise CheckpointError(f'{path} holds no power-function EMA profiles.')
    return data

#----------------------------------------------------------------------------
# Training states: everything the training loop needs to continue bit for bit.

def training_state(net: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer, cur_nimg: int,
                   cur_tick: int, tick_start_nimg: int, options: dict, grad_scaler: Optional[torch.amp.GradScaler] = None,
                   **extra: Any) -> dict:
    """A training state as plain data (torch.load(weights_only=True)): the network, its EMA, the
    optimizer, the image count (cur_nimg, in images), the tick counters, the options, and with fp16 the
    loss scaler's state (current scale and growth count). `extra` adds further plain-data fields."""
    state = dict(
        format=STATE_FORMAT, version=FORMAT_VERSION,
        net=network_to_dict(net), ema=network_to_dict(ema),
        optimizer=optimizer.state_dict(), grad_scaler=(grad_scaler.state_dict() if grad_scaler is not None else None),
        cur_nimg=int(cur_nimg), cur_tick=int(cur_tick),
        tick_start_nimg=int(tick_start_nimg), kimg=kimg_of(cur_nimg), D=ema.D,
        img_resolution=ema.img_resolution, img_channels=ema.img_channels, label_dim=ema.label_dim,
        training_options=options,
    )
    state.update(extra)
    return state


def check_same_architecture(state: dict, net: torch.nn.Module, path: str) -> None:
    """A training state must hold the architecture (class and constructor arguments, D included) of the
    run that continues it; CheckpointError naming the arguments that differ otherwise."""
    ours = dict(class_name=type(net).__name__, init_kwargs=net.init_kwargs)
    theirs = state['net']
    if theirs['class_name'] != ours['class_name'] or theirs['init_kwargs'] != ours['init_kwargs']:
        diff = sorted(k for k in set(ours['init_kwargs']) | set(theirs['init_kwargs'])
                      if ours['init_kwargs'].get(k) != theirs['init_kwargs'].get(k))
        detail = f'{theirs["class_name"]} vs {ours["class_name"]}' if theirs['class_name'] != ours['class_name'] else 'differing ' + ', '.join(diff)
        raise CheckpointError(f'{path} belongs to another architecture ({detail}); resume with the options it was trained with.')


def load_training_state(path: str, net: Optional[torch.nn.Module] = None) -> dict:
    """Read a training-state-*.pt of ours; with `net`, also check that it holds net's architecture."""
    state = load_plain(path, expected_format=STATE_FORMAT)
    if net is not None:
        check_same_architecture(state, net, path)
    return state

#----------------------------------------------------------------------------
# --transfer: a new run that starts from another checkpoint's weights.

def check_transfer_fits(source: torch.nn.Module, target: torch.nn.Module, name: str = 'the checkpoint') -> list[str]:
    """The state-dict names that `source` and `target` share, which must have equal shapes (as EDM's
    --transfer copies them); CheckpointError if any shape differs or no name is shared. `target` may
    live on the meta device (shapes only)."""
    source_dict, target_dict = source.state_dict(), target.state_dict()
    shared = [k for k in source_dict if k in target_dict]
    mismatched = [k for k in shared if target_dict[k].shape != source_dict[k].shape]
    if mismatched or not shared:
        raise CheckpointError(f'{name} does not fit this network ({len(mismatched)} tensors differ in shape, '
                              f'e.g. {mismatched[0] if mismatched else "no names in common"}); check --arch, --cbase, --cres and the resolution.')
    return shared


@torch.no_grad()
def copy_matching_weights(source: torch.nn.Module, target: torch.nn.Module, name: str = 'the checkpoint') -> int:
    """Copy every tensor of `source` into the tensor of `target` with the same name (tensors only
    `target` has keep their initialisation), after check_transfer_fits(); returns the number copied."""
    shared = check_transfer_fits(source, target, name)
    source_dict, target_dict = source.state_dict(), target.state_dict()
    for k in shared:
        target_dict[k].copy_(source_dict[k])
    return len(shared)

#----------------------------------------------------------------------------
# Run directories.

# Which file to sample for a kimg, best first: our snapshot, EDM's, our or PFGM++'s training state, and the
# training-state-*.pkl name of the published PFGM++ checkpoints.
_NETWORK_PREFERENCE = (('network-snapshot-', '.pt'), ('network-snapshot-', '.pkl'), ('training-state-', '.pt'),
                       ('training-state-', '.pkl'))
CHECKPOINT_KINDS = ('network', 'state', 'samples', 'phema')


def samples_dir_name(kimg: float) -> str:
    """ckpt_<kimg>: the folder of a run where generate.py's run-directory mode writes a checkpoint's images."""
    return f'ckpt_{kimg_tag(kimg)}'


def find_checkpoints(run_dir: str, kind: str = 'network', min_kimg: Optional[float] = None,
                     max_kimg: Optional[float] = None) -> list[tuple[float | int, str]]:
    """[(kimg, path)] in run_dir sorted by kimg, limited to [min_kimg, max_kimg]:

    kind='network': one file per kimg to sample from, by _NETWORK_PREFERENCE (generate.py, the quick start);
    kind='state':   our training-state-<kimg>.pt files, to resume from (train.py);
    kind='samples': the ckpt_<kimg>/ image folders generate.py wrote (fid.py sweep);
    kind='phema':   the phema-snapshot-<kimg>.pt files of --phema (reconstruct_phema.py).
    A missing run_dir holds nothing."""
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f'Unknown checkpoint kind {kind!r}; expected one of {", ".join(CHECKPOINT_KINDS)}.')
    if not os.path.isdir(run_dir):
        return []
    preference = {'network': _NETWORK_PREFERENCE, 'state': _NETWORK_PREFERENCE[2:3]}.get(kind)
    best = {}
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if kind in ('samples', 'phema'):
            pattern = rf'ckpt_{KIMG_PATTERN}' if kind == 'samples' else rf'phema-snapshot-{KIMG_PATTERN}\.pt'
            match = re.fullmatch(pattern, name)
            found = match and (os.path.isdir(path) if kind == 'samples' else os.path.isfile(path))
            kimg, rank = (parse_kimg(*match.groups()), 0) if found else (None, None)
        else:
            kimg = kimg_from_name(name)
            rank = next((i for i, (prefix, ext) in enumerate(preference) if name.startswith(prefix) and name.endswith(ext)), None)
        if kimg is None or rank is None or (min_kimg is not None and kimg < min_kimg) or (max_kimg is not None and kimg > max_kimg):
            continue
        if kimg not in best or rank < best[kimg][0]:
            best[kimg] = (rank, path)
    return [(kimg, best[kimg][1]) for kimg in sorted(best)]


def newest_valid_state(run_dir: str, log: Callable[[str], None] = print) -> Optional[str]:
    """The training state with the largest kimg in run_dir that loads; unreadable ones are reported
    through `log` and skipped (a run killed while writing leaves at most a temporary file, but a
    damaged disk can leave worse)."""
    for _kimg, path in reversed(find_checkpoints(run_dir, 'state')):
        try:
            load_plain(path, expected_format=STATE_FORMAT)
            return path
        except CheckpointError as err:
            log(f'Skipping {path}: {err}')
    return None

#----------------------------------------------------------------------------
