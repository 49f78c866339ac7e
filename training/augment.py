"""Non-leaking geometric augmentation (Karras et al., 2022, Section 5; EDM's AugmentPipe).

Each training image is transformed with some probability, and the network is told which transform
was applied through a vector of augmentation labels; at sampling time the labels are zero, so the
model generates un-augmented images and the augmentations do not leak into the samples.

Conventions. Pixel coordinates are centred on the image (x to the right, y down, unit = one pixel).
A transform G maps input positions to output positions; the image is resampled through its inverse
G^-1 (output pixel p takes the input value at G^-1 p). Angles are counterclockwise as seen on screen,
as in EDM, so a rotation by theta has G = rotate2d(-theta) in these y-down coordinates.

With EDM's setting AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
translate_frac=1) the labels are 9-dimensional, in this order:

    xflip bit, yflip bit, scale w, cos(theta) - 1, sin(theta), w_a cos(phi), w_a sin(phi), t_x, t_y.
"""

import math
from typing import Optional

import torch

__all__ = ['AugmentPipe', 'translate2d', 'scale2d', 'rotate2d']

#----------------------------------------------------------------------------
# Batched 3x3 homogeneous matrices, [N, 3, 3], from per-sample parameters [N].

def _matrix(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[[a, b, c], [d, e, f], [0, 0, 1]] per sample."""
    zero = torch.zeros_like(a)
    one = torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], dim=-1).reshape(-1, 3, 3)


def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """(x, y) -> (x + tx, y + ty); [N] -> [N, 3, 3]."""
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _matrix(one, zero, tx, zero, one, ty)


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """(x, y) -> (sx x, sy y); [N] -> [N, 3, 3]."""
    zero = torch.zeros_like(sx)
    return _matrix(sx, zero, zero, zero, sy, zero)


def rotate2d(angle: torch.Tensor) -> torch.Tensor:
    """(x, y) -> (x cos a - y sin a, x sin a + y cos a); [N] -> [N, 3, 3].

    In y-down pixel coordinates a positive angle turns the picture clockwise on screen."""
    zero = torch.zeros_like(angle)
    cos, sin = angle.cos(), angle.sin()
    return _matrix(cos, -sin, zero, sin, cos, zero)

#----------------------------------------------------------------------------
# Random draws from an explicit generator, made on the generator's device and then moved, so that a
# CPU generator gives the same augmentations whatever device the images are on.

def _rand(shape: list[int], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def _randn(shape: list[int], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device).to(device)


def _randint(high: int, shape: list[int], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randint(high, shape, generator=generator, device=draw_device).to(device)

#----------------------------------------------------------------------------
# The augmentation pipeline.

class AugmentPipe:
    """EDM's non-leaking geometric augmentations: flips, then one combined affine transform.

    Each augmentation with strength k > 0 is applied to each sample independently with probability
    min(1, k p). Its parameters, in the order they are drawn from the generator:

        xflip:          bit b ~ U{0, 1}; mirror left-right if b = 1. (xflip=1e8: always drawn, so a
                        random half of the samples are flipped whatever p is.)
        yflip:          the same, top-bottom.
        scale:          w ~ N(0, 1); isotropic scale s = 2^(w scale_std) about the centre.
        rotate_frac:    theta ~ U[-pi rotate_frac_max, pi rotate_frac_max]; counterclockwise rotation.
        aniso:          w ~ N(0, 1), phi ~ U[-pi, pi]; scale by s = 2^(w aniso_std) along the direction
                        at angle phi and by 1/s across it.
        translate_frac: (w_x, w_y) ~ N(0, I); shift by (w_x W translate_frac_std, w_y H translate_frac_std)
                        pixels (right, down).

    Parameters of augmentations that were not applied are 0. The geometric transform is
    G = T A R S (scale first, translation last), executed through G^-1 with bilinear grid_sample and
    reflection padding, so no black borders appear for the network to detect. Samples whose G^-1 is
    exactly the identity are returned bit-identical, and a batch with none is not resampled at all.

    Labels [N, label_dim] float32, one block per enabled augmentation in the order above:
    b (xflip), b (yflip), w (scale), [cos(theta) - 1, sin(theta)], [w cos(phi), w sin(phi)], [w_x, w_y].
    All are zero for a sample that was not augmented, which is what the sampler passes.
    """

    def __init__(self,
        p: float = 1,                   # Overall probability multiplier.
        xflip: float = 0,               # Strength of left-right flips.
        yflip: float = 0,               # Strength of top-bottom flips.
        scale: float = 0,               # Strength of isotropic scaling.
        rotate_frac: float = 0,         # Strength of arbitrary rotation.
        aniso: float = 0,               # Strength of anisotropic scaling.
        translate_frac: float = 0,      # Strength of fractional translation.
        scale_std: float = 0.2,         # log2 standard deviation of isotropic scaling.
        rotate_frac_max: float = 1,     # Largest rotation, as a fraction of a half turn (pi).
        aniso_std: float = 0.2,         # log2 standard deviation of anisotropic scaling.
        translate_frac_std: float = 0.125, # Standard deviation of translation, as a fraction of the image size.
    ):
        args = dict(p=p, xflip=xflip, yflip=yflip, scale=scale, rotate_frac=rotate_frac, aniso=aniso,
                    translate_frac=translate_frac, scale_std=scale_std, rotate_frac_max=rotate_frac_max,
                    aniso_std=aniso_std, translate_frac_std=translate_frac_std)
        for key, value in args.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f'AugmentPipe({key}={value!r}): every probability, strength and std must be a finite number >= 0.')
        self.p = float(p)
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)
        self.rotate_frac_max = float(rotate_frac_max)
        self.aniso_std = float(aniso_std)
        self.translate_frac_std = float(translate_frac_std)

    @property
    def label_names(self) -> list[str]:
        """Names of the label components, in order; one entry per column of the labels."""
        names = []
        names += ['xflip'] if self.xflip > 0 else []
        names += ['yflip'] if self.yflip > 0 else []
        names += ['scale'] if self.scale > 0 else []
        names += ['rotate_cos_minus_1', 'rotate_sin'] if self.rotate_frac > 0 else []
        names += ['aniso_cos', 'aniso_sin'] if self.aniso > 0 else []
        names += ['translate_x', 'translate_y'] if self.translate_frac > 0 else []
        return names

    @property
    def label_dim(self) -> int:
        """Number of augmentation label components: the network's augment_dim (9 for EDM's setting)."""
        return len(self.label_names)

    def sample_params(self, batch_size: int, device: torch.device, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Draw every random parameter for a batch, in a fixed order, all from `generator`.

        Returns a dict of float32 tensors [batch_size] on `device` (0 = not applied), with keys for
        the enabled augmentations only: 'xflip', 'yflip' (bits), 'scale' (w), 'rotate' (theta, radians),
        'aniso' (w), 'aniso_phi' (radians), 'translate_x', 'translate_y' (w_x, w_y)."""
        N = int(batch_size)
        device = torch.device(device)
        rand = lambda *shape: _rand(list(shape), generator, device)
        randn = lambda *shape: _randn(list(shape), generator, device)
        zero = torch.zeros([N], device=device)
        params = {}

        if self.xflip > 0:
            w = _randint(2, [N], generator, device).to(torch.float32)
            params['xflip'] = torch.where(rand(N) < self.xflip * self.p, w, zero)
        if self.yflip > 0:
            w = _randint(2, [N], generator, device).to(torch.float32)
            params['yflip'] = torch.where(rand(N) < self.yflip * self.p, w, zero)
        if self.scale > 0:
            w = randn(N)
            params['scale'] = torch.where(rand(N) < self.scale * self.p, w, zero)
        if self.rotate_frac > 0:
            theta = (rand(N) * 2 - 1) * (math.pi * self.rotate_frac_max)
            params['rotate'] = torch.where(rand(N) < self.rotate_frac * self.p, theta, zero)
        if self.aniso > 0:
            w = randn(N)
            phi = (rand(N) * 2 - 1) * math.pi
            params['aniso'] = torch.where(rand(N) < self.aniso * self.p, w, zero)
            params['aniso_phi'] = phi
        if self.translate_frac > 0:
            w = randn(2, N)
            applied = rand(N) < self.translate_frac * self.p
            params['translate_x'] = torch.where(applied, w[0], zero)
            params['translate_y'] = torch.where(applied, w[1], zero)
        return params

    def matrix_inv(self, params: dict[str, torch.Tensor], height: int, width: int) -> Optional[torch.Tensor]:
        """G^-1 = S^-1 R^-1 A^-1 T^-1 in centred pixel coordinates, float32 [N, 3, 3], or None when no
        geometric augmentation is enabled. A factor whose parameter is 0 is exactly the identity."""
        G_inv = None

        def then(M_inv):
            nonlocal G_inv
            G_inv = M_inv if G_inv is None else G_inv @ M_inv

        if 'scale' in params:
            s = (params['scale'] * self.scale_std).exp2()
            then(scale2d(1 / s, 1 / s))
        if 'rotate' in params:
            # G = rotate2d(-theta) (counterclockwise on screen), so G^-1 = rotate2d(theta).
            then(rotate2d(params['rotate']))
        if 'aniso' in params:
            w, phi = params['aniso'], params['aniso_phi']
            s = (w * self.aniso_std).exp2()
            # G = R(-phi) diag(s, 1/s) R(phi) stretches along (cos phi, -sin phi), the on-screen angle phi.
            A_inv = rotate2d(-phi) @ scale2d(1 / s, s) @ rotate2d(phi)
            # R(-phi) R(phi) is the identity only up to rounding; keep it exact when not applied.
            eye = torch.eye(3, device=w.device, dtype=A_inv.dtype).expand_as(A_inv)
            then(torch.where((w != 0).reshape(-1, 1, 1), A_inv, eye))
        if 'translate_x' in params:
            tx = params['translate_x'] * (width * self.translate_frac_std)
            ty = params['translate_y'] * (height * self.translate_frac_std)
            then(translate2d(-tx, -ty))
        return G_inv

    def labels(self, params: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """Augmentation labels float32 [N, label_dim] from sample_params() output (see class docstring)."""
        columns = []
        for key in ['xflip', 'yflip', 'scale']:
            if key in params:
                columns += [params[key]]
        if 'rotate' in params:
            columns += [params['rotate'].cos() - 1, params['rotate'].sin()]
        if 'aniso' in params:
            columns += [params['aniso'] * params['aniso_phi'].cos(), params['aniso'] * params['aniso_phi'].sin()]
        if 'translate_x' in params:
            columns += [params['translate_x'], params['translate_y']]
        if not columns:
            return torch.zeros([batch_size, 0])
        return torch.stack(columns, dim=1).to(torch.float32)

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment `images` [N, C, H, W] with given parameters -> (images [N, C, H, W], labels [N, label_dim])."""
        N, C, H, W = images.shape
        if 'xflip' in params:
            images = torch.where(params['xflip'].reshape(N, 1, 1, 1) == 1, images.flip(3), images)
        if 'yflip' in params:
            images = torch.where(params['yflip'].reshape(N, 1, 1, 1) == 1, images.flip(2), images)

        G_inv = self.matrix_inv(params, H, W)
        if G_inv is not None:
            eye = torch.eye(3, device=G_inv.device, dtype=G_inv.dtype)
            moved = (G_inv != eye).flatten(1).any(dim=1) # [N]
            if bool(moved.any()):
                # affine_grid works in coordinates normalised to [-1, 1] across the image (align_corners
                # = False: -1 and 1 are the outer pixel edges), i.e. x_norm = x_pixel * 2 / W.
                to_norm = torch.diag(torch.tensor([2 / W, 2 / H, 1], device=G_inv.device, dtype=G_inv.dtype))
                from_norm = torch.diag(torch.tensor([W / 2, H / 2, 1], device=G_inv.device, dtype=G_inv.dtype))
                theta = (to_norm @ G_inv @ from_norm)[:, :2, :]
                grid = torch.nn.functional.affine_grid(theta.to(images.dtype), [N, C, H, W], align_corners=False)
                warped = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='reflection', align_corners=False)
                images = torch.where(moved.reshape(N, 1, 1, 1), warped, images)

        return images, self.labels(params, N).to(images.device)

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented images [N, C, H, W], labels float32 [N, label_dim]) for float images [N, C, H, W] in [-1, 1].

        Every random draw comes from `generator` (torch's global RNG when None), so the same generator
        state gives the same augmentations on any device."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f'AugmentPipe expects float images [N, C, H, W], got {shape}; convert uint8 data with images.to(torch.float32) / 127.5 - 1.')
        params = self.sample_params(images.shape[0], images.device, generator)
        return self.apply(images, params)

#----------------------------------------------------------------------------
