"""The detector that FID, IS and KID are computed with: the Inception-v3 pickle that EDM and PFGM++
report their numbers with (DETECTOR_URL), or any pickle or TorchScript network with its call signature."""

import dataclasses
import inspect
import os
from typing import Any, Callable, Optional

import torch

import dnnlib
from torch_utils import cli
from torch_utils import distributed as dist
from torch_utils import persistence

DETECTOR_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
TRUSTED_DETECTOR_URLS = (DETECTOR_URL,)  # Pickles from anywhere else need --allow-pickle.

#----------------------------------------------------------------------------
# The detector: the Inception-v3 pickle, or any pickle or TorchScript file with its call signature.

def _accepts_keyword(net: Callable, name: str) -> bool:
    forward = getattr(net, 'forward', net)
    schema = getattr(forward, 'schema', None)  # TorchScript methods.
    if schema is not None:
        return any(arg.name == name for arg in schema.arguments)
    try:
        return name in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def detector_error(err: BaseException) -> str:
    """The line of a detector's error that says what went wrong. A TorchScript error's message is the
    interpreter's traceback, headed by 'The following operation failed in the TorchScript
    interpreter.' and ending with the original exception: the last line, then."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and 'TorchScript' in lines[0]:
        return lines[-1].removeprefix('builtins.')
    return cli.first_line(err)


@dataclasses.dataclass
class Detector:
    """A network called as net(images, return_features=True) -> [N, D] features and
    net(images, **prob_kwargs) -> [N, C] class probabilities, for uint8 images [N, 3, H, W]."""
    net: Callable
    source: str
    device: torch.device
    prob_kwargs: dict
    sha256: Optional[str] = None  # Of the file the detector was loaded from.

    def _call(self, images: torch.Tensor, what: str, **kwargs: Any) -> torch.Tensor:
        # torch.jit.Error, which a TorchScript `raise` becomes, is no RuntimeError: catch it by name.
        try:
            out = self.net(images.to(self.device), **kwargs)
        except torch.cuda.OutOfMemoryError as err:
            raise ValueError(f'The detector {self.source} ran out of memory on uint8 images of shape '
                             f'{list(images.shape)}; lower --batch.') from err
        except (RuntimeError, torch.jit.Error, TypeError) as err:
            call = ', '.join(['images'] + [f'{k}={v}' for k, v in kwargs.items()])
            height, width = images.shape[-2:]
            raise ValueError(f'The detector {self.source} failed on uint8 images of shape {list(images.shape)} '
                             f'({detector_error(err)}); use a detector that takes {height}x{width} images and is '
                             f'callable as detector({call}) (Inception-v3 takes any size).') from err
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f'The detector {self.source} returned {shape} as {what} for {images.shape[0]} '
                             f'images; it must return a tensor [N, D].')
        return out.to(torch.float64)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features [N, D] (D = 2048 for Inception-v3), float64."""
        return self._call(images, 'features', return_features=True)

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, C], float64; the official detector leaves out the output bias here,
        as the original TensorFlow Inception Score does."""
        return self._call(images, 'class probabilities', **self.prob_kwargs)


def load_detector(url_or_path: Optional[str] = None, allow_pickle: bool = False,
                  device: torch.device = torch.device('cpu')) -> Detector:
    """Load the detector (the Inception-v3 of EDM and PFGM++ when url_or_path is None) through the
    download cache. Rank 0 loads first, so that under torchrun only one process downloads."""
    url = url_or_path or DETECTOR_URL
    if dist.get_rank() != 0:
        dist.barrier()
    try:
        path = dnnlib.open_url(url, return_filename=True, verbose=(dist.get_rank() == 0))
    except dnnlib.DownloadError as err:
        # A copy in the cache is still the official (trusted) pickle; the same file as --detector=PATH is not.
        raise dnnlib.DownloadError(
            f'Cannot download the detector {url} and no copy is cached in {os.path.dirname(dnnlib.util.url_cache_path(url))}; '
            f'download it where the network is reachable and copy it to {dnnlib.util.url_cache_path(url)}, or pass '
            f'--detector=PATH (with --allow-pickle for a pickle).') from err
    except FileNotFoundError as err:
        raise FileNotFoundError(f'--detector {url} does not exist; pass a pickle or TorchScript file.') from err

    with open(path, 'rb') as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b'PK'):  # torch.jit.save writes a zip archive.
            try:
                net = torch.jit.load(f, map_location=device)
            except RuntimeError as err:
                raise ValueError(f'{url} is a zip archive but not a TorchScript file (torch.jit.save); pass the '
                                 f'Inception-v3 pickle or a TorchScript detector.') from err
        elif head[:1] == b'\x80':  # Pickle protocol 2 or later.
            net = persistence.load_pickle(f, allow_pickle=allow_pickle, trusted=(url in TRUSTED_DETECTOR_URLS), name=url)
        else:
            raise ValueError(f'{url} is neither a TorchScript file (torch.jit.save) nor a pickle; pass the '
                             f'Inception-v3 pickle or a TorchScript detector.')
    if not callable(net):
        raise ValueError(f'{url} holds a {type(net).__name__}, not a network; pass a detector network.')
    if isinstance(net, torch.nn.Module):
        net = net.eval().to(device)  # Run under torch.no_grad(); ScriptModules refuse requires_grad_().
    prob_kwargs = dict(no_output_bias=True) if _accepts_keyword(net, 'no_output_bias') else {}

    if dist.get_rank() == 0:
        dist.barrier()
    return Detector(net=net, source=url, device=device, prob_kwargs=prob_kwargs, sha256=dnnlib.util.file_sha256(path))

#----------------------------------------------------------------------------
