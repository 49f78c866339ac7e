"""Image saving: the one place that turns tensors into files (PNG images, image grids, GIF trajectories).

Float images are in [-1, 1] and become uint8 as EDM's generate.py does, (x * 127.5 + 128) clipped to
[0, 255] and truncated, so our PNGs equal EDM's for equal samples. Every file is written to a hidden
temporary name in the target folder and renamed into place, so a file that exists is complete and
a folder of PNGs never holds a half-written image (readers look at *.png only).
"""

import math
from typing import Optional, Sequence

import numpy as np
import PIL.Image
import torch

import dnnlib

__all__ = ['to_uint8', 'save_image', 'load_image', 'make_grid', 'save_grid', 'save_trajectory_gif']

#----------------------------------------------------------------------------

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] (or [C, H, W]) on the CPU: uint8 input unchanged, float input mapped from
    [-1, 1] by (x * 127.5 + 128).clip(0, 255), truncated (EDM's conversion)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f'Expected a tensor of images, got {type(images).__name__}.')
    if images.dtype == torch.uint8:
        return images.cpu()
    if not images.is_floating_point():
        raise ValueError(f'Images must be uint8 or floating point in [-1, 1], got {images.dtype}.')
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).cpu()


def _to_pil(image: torch.Tensor) -> PIL.Image.Image:
    """A [C, H, W] image with C = 1 (grey) or 3 (RGB) as a PIL image."""
    image = to_uint8(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f'An image must be [C, H, W] with 1 or 3 channels, got shape {list(image.shape)}.')
    array = image.permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(array[:, :, 0], 'L') if array.shape[2] == 1 else PIL.Image.fromarray(array, 'RGB')


def _save_atomic(pil_images: Sequence[PIL.Image.Image], path: str, **save_kwargs) -> None:
    def write(f):
        if len(pil_images) == 1:
            pil_images[0].save(f, **save_kwargs)
        else:
            pil_images[0].save(f, save_all=True, append_images=list(pil_images[1:]), **save_kwargs)
    dnnlib.util.write_atomic(path, write)

#----------------------------------------------------------------------------

def save_image(image: torch.Tensor, path: str) -> None:
    """Write one image [C, H, W] (float in [-1, 1] or uint8; C = 1 or 3) as a PNG, atomically."""
    _save_atomic([_to_pil(image)], path, format='PNG')


def load_image(path: str) -> torch.Tensor:
    """Read a PNG/JPEG as uint8 [C, H, W] with C = 1 (grey) or 3 (RGB)."""
    with PIL.Image.open(path) as pil:
        array = np.asarray(pil.convert('L' if pil.mode in ('L', 'I', 'I;16', '1') else 'RGB'))
    return torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1).contiguous()


def make_grid(images: torch.Tensor, cols: Optional[int] = None) -> torch.Tensor:
    """Tile images [B, C, H, W] row by row into one uint8 image [C, rows * H, cols * W]; `cols`
    defaults to ceil(sqrt(B)) and empty cells are black."""
    images = to_uint8(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f'make_grid needs images [B, C, H, W] with B >= 1, got shape {list(images.shape)}.')
    B, C, H, W = images.shape
    cols = max(1, min(int(cols or math.ceil(math.sqrt(B))), B))
    rows = math.ceil(B / cols)
    grid = torch.zeros([rows * cols, C, H, W], dtype=torch.uint8)
    grid[:B] = images
    return grid.reshape(rows, cols, C, H, W).permute(2, 0, 3, 1, 4).reshape(C, rows * H, cols * W)


def save_grid(images: torch.Tensor, path: str, cols: Optional[int] = None) -> None:
    """make_grid() written as one PNG, atomically."""
    save_image(make_grid(images, cols), path)


def save_trajectory_gif(frames: Sequence[torch.Tensor], path: str, duration_ms: int = 150,
                        final_hold: int = 5) -> None:
    """An animated GIF of a denoising trajectory: frame i shows the states x_i [B, C, H, W] of the
    B samples side by side as one strip (values clipped to [-1, 1]); the last frame is held
    `final_hold` times longer. Written atomically."""
    if len(frames) == 0:
        raise ValueError('A trajectory needs at least one frame.')
    strips = [_to_pil(make_grid(frame.clamp(-1, 1) if frame.is_floating_point() else frame, cols=frame.shape[0]))
              for frame in frames]
    durations = [duration_ms] * (len(strips) - 1) + [duration_ms * max(1, final_hold)]
    # GIF is a palette format; an adaptive palette per frame keeps colours close.
    strips = [s.convert('P', palette=PIL.Image.Palette.ADAPTIVE) if s.mode == 'RGB' else s for s in strips]
    _save_atomic(strips, path, format='GIF', duration=durations, loop=0)

#----------------------------------------------------------------------------
