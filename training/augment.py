"""Non-leaking augmentation (Karras et al., 2022, Section 5 and Appendix F.2): EDM's AugmentPipe,
reproduced draw for draw.

Each training image is transformed with some probability, and the network is told which transform
was applied through a vector of augmentation labels; at sampling time the labels are zero, so the
model generates un-augmented images and the augmentations do not leak into the samples. The
transforms are those of StyleGAN2-ADA (Karras et al., 2020), in three stages:

    blits      xflip, yflip, rotate_int, translate_int: exact pixel moves (flips, quarter turns,
               integer shifts with mirrored borders).
    geometric  scale, rotate_frac, aniso, translate_frac: one combined affine transform per sample,
               resampled through a 2x sym6-wavelet upsampling, bilinear sampling and a 2x sym6
               downsampling.
    colour     brightness, contrast, lumaflip, hue, saturation: one 4x4 affine colour matrix per sample.

For an input batch `x` and `g = torch.Generator().manual_seed(s)`, `AugmentPipe(**kwargs)(x, generator=g)`
returns what EDM's `AugmentPipe(**kwargs)(x)` returns after `torch.manual_seed(s)`, images and labels:
the same random numbers are drawn in the same order and with the same tensor sizes (every draw is
made whether or not its transform ends up applied, so the generator always advances by the same
amount), and the same float32 arithmetic follows. tests/fixtures/edm_augment/ holds outputs of EDM's
code; we match them bit for bit on the CPU.

Conventions. Pixel coordinates are centred on the image (x to the right, y down, unit = one pixel).
A transform G maps input positions to output positions; the image is resampled through its inverse
G^-1 (output pixel p takes the input value at G^-1 p). Angles are counterclockwise as seen on screen,
as in EDM, so a rotation by theta has G^-1 = rotate2d(theta) in these y-down coordinates.

With EDM's setting AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
translate_frac=1) the labels are 9-dimensional, in this order:

    xflip bit, yflip bit, scale w, cos(theta) - 1, sin(theta), w_a cos(phi), w_a sin(phi), t_x, t_y.
"""

import math
from typing import Optional, Union

import torch

from torch_utils import rng

__all__ = ['AugmentPipe', 'SYM6', 'translate2d', 'scale2d', 'rotate2d', 'translate3d', 'scale3d', 'rotate3d']

#----------------------------------------------------------------------------
# Low-pass decomposition filter of the sym6 wavelet (Daubechies' least-asymmetric wavelet with 6
# vanishing moments), the anti-aliasing filter that EDM and StyleGAN2-ADA use for the 2x up- and
# downsampling around the geometric transform; the values are those of PyWavelets' sym6 dec_lo, as
# listed in EDM's augment.py. tests/test_augment.py checks orthonormality and the vanishing moments.

SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)

#----------------------------------------------------------------------------
# Homogeneous matrices, float32. Entries are Python numbers or tensors of one common shape S; the
# result is [*S, R, C] ([R, C] when every entry is a number).

Entry = Union[float, torch.Tensor]


def _matrix(*rows: list[Entry], device: Optional[torch.device] = None) -> torch.Tensor:
    """The matrix with the given rows, one matrix per element of the tensor entries."""
    entries = [e for row in rows for e in row]
    tensors = [e for e in entries if isinstance(e, torch.Tensor)]
    if not tensors:
        return torch.tensor(rows, dtype=torch.float32, device=device)
    like = tensors[0]
    entries = [e.to(torch.float32) if isinstance(e, torch.Tensor) else torch.full(like.shape, e, dtype=torch.float32, device=like.device) for e in entries]
    return torch.stack(torch.broadcast_tensors(*entries), dim=-1).reshape(*like.shape, len(rows), len(rows[0]))


def translate2d(tx: Entry, ty: Entry, **kwargs) -> torch.Tensor:
    """(x, y) -> (x + tx, y + ty)."""
    return _matrix([1, 0, tx], [0, 1, ty], [0, 0, 1], **kwargs)


def scale2d(sx: Entry, sy: Entry, **kwargs) -> torch.Tensor:
    """(x, y) -> (sx x, sy y)."""
    return _matrix([sx, 0, 0], [0, sy, 0], [0, 0, 1], **kwargs)


def rotate2d(theta: torch.Tensor, **kwargs) -> torch.Tensor:
    """(x, y) -> (x cos theta - y sin theta, x sin theta + y cos theta).

    In y-down pixel coordinates a positive theta turns the picture clockwise on screen. The entry
    -sin(theta) is computed as sin(-theta), as EDM does, to keep its rounding."""
    return _matrix([theta.cos(), (-theta).sin(), 0], [theta.sin(), theta.cos(), 0], [0, 0, 1], **kwargs)


def translate3d(tx: Entry, ty: Entry, tz: Entry, **kwargs) -> torch.Tensor:
    """(r, g, b) -> (r + tx, g + ty, b + tz), as a 4x4 homogeneous matrix."""
    return _matrix([1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1], **kwargs)


def scale3d(sx: Entry, sy: Entry, sz: Entry, **kwargs) -> torch.Tensor:
    """(r, g, b) -> (sx r, sy g, sz b), as a 4x4 homogeneous matrix."""
    return _matrix([sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1], **kwargs)


def rotate3d(v: torch.Tensor, theta: torch.Tensor, **kwargs) -> torch.Tensor:
    """Rotation by theta about the unit axis v [3+] (Rodrigues' formula), as a 4x4 homogeneous matrix:
    R = cos(theta) I + sin(theta) [v]_x + (1 - cos(theta)) v v^T."""
    vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
    s, c = theta.sin(), theta.cos()
    cc = 1 - c
    return _matrix(
        [vx * vx * cc + c,      vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c,      vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c,      0],
        [0,                     0,                     0,                     1],
        **kwargs)

#----------------------------------------------------------------------------
# The augmentation pipeline.

class AugmentPipe:
    """EDM's augmentation pipeline: blits, then one geometric transform, then one colour transform.

    Each augmentation with strength k > 0 is applied to each sample independently with probability
    min(1, k p); its parameters are drawn for every sample whether or not it is applied, and are 0
    (flip bits, quarter turns, w, theta) where it is not. The draws, in order (U = uniform, N = normal):

        xflip:          bit b ~ U{0, 1}; mirror left-right if b = 1. (xflip=1e8: always applied, so a
                        random half of the samples are flipped whatever p is.)
        yflip:          the same, top-bottom.
        rotate_int:     k ~ U{0, 1, 2, 3}; turn by k quarter turns counterclockwise (torch.rot90 over
                        (H, W)); needs square images.
        translate_int:  (w_x, w_y) ~ U[-1, 1]^2; shift by t_x = round(w_x W translate_int_max) pixels
                        to the right and t_y = round(w_y H translate_int_max) pixels up, mirroring the
                        image about its edge pixels to fill the uncovered border.
        scale:          w ~ N(0, 1); isotropic scale s = 2^(w scale_std) about the centre.
        rotate_frac:    theta ~ U[-pi rotate_frac_max, pi rotate_frac_max]; counterclockwise rotation.
        aniso:          w ~ N(0, 1), phi ~ U[-pi, pi], (the draw that decides whether to apply it),
                        then phi = 0 unless a further U[0, 1] draw is below aniso_rotate_prob; scale
                        by s = 2^(w aniso_std) along the on-screen direction phi and by 1/s across it.
        translate_frac: (w_x, w_y) ~ N(0, I); shift by (w_x W, w_y H) translate_frac_std pixels (right, down).
        brightness:     w ~ N(0, 1); add w brightness_std to every channel.
        contrast:       w ~ N(0, 1); multiply by 2^(w contrast_std).
        lumaflip:       bit b ~ U{0, 1}; reflect the colour through the plane orthogonal to the luma
                        axis v = (1, 1, 1) / sqrt(3) if b = 1.
        hue:            theta ~ U[-pi hue_max, pi hue_max]; rotate the colour about the luma axis.
        saturation:     w ~ N(0, 1); scale the colour's component orthogonal to the luma axis by
                        2^(w saturation_std).

    Each parameter is drawn first, then the U[0, 1] draw that decides whether it is applied. Once
    any geometric augmentation is enabled, every image of the batch is resampled (even where all
    geometric parameters are 0, e.g. with p=0), which reproduces an image only up to float32
    rounding of the sampling positions (see _resample()). Likewise, once any colour augmentation is
    enabled, every image is multiplied by its colour matrix.

    Labels [N, label_dim] float32, one block per enabled augmentation in the order above (label_names):
    b; b; [k in {1, 2}, k in {2, 3}]; [t_x / (W translate_int_max), t_y / (H translate_int_max)]; w;
    [cos(theta) - 1, sin(theta)]; [w cos(phi), w sin(phi)]; [w_x, w_y]; w; w; b;
    [cos(theta) - 1, sin(theta)]; w. All are zero for a sample that was not augmented, which is what
    the sampler passes.
    """

    def __init__(self,
        p: float = 1,                       # Overall multiplier of every application probability.
        # Blits.
        xflip: float = 0,                   # Strength of left-right flips.
        yflip: float = 0,                   # Strength of top-bottom flips.
        rotate_int: float = 0,              # Strength of rotations by multiples of 90 degrees.
        translate_int: float = 0,           # Strength of integer translations.
        translate_int_max: float = 0.125,   # Largest integer translation, as a fraction of the image size.
        # Geometric transforms.
        scale: float = 0,                   # Strength of isotropic scaling.
        rotate_frac: float = 0,             # Strength of arbitrary rotation.
        aniso: float = 0,                   # Strength of anisotropic scaling.
        translate_frac: float = 0,          # Strength of fractional translation.
        scale_std: float = 0.2,             # log2 standard deviation of isotropic scaling.
        rotate_frac_max: float = 1,         # Largest rotation, as a fraction of a half turn (1: any angle).
        aniso_std: float = 0.2,             # log2 standard deviation of anisotropic scaling.
        aniso_rotate_prob: float = 0.5,     # Probability that the anisotropic scaling is along a random direction rather than the x axis.
        translate_frac_std: float = 0.125,  # Standard deviation of fractional translation, as a fraction of the image size.
        # Colour transforms.
        brightness: float = 0,              # Strength of brightness offsets.
        contrast: float = 0,                # Strength of contrast scaling.
        lumaflip: float = 0,                # Strength of luma flips.
        hue: float = 0,                     # Strength of hue rotation.
        saturation: float = 0,              # Strength of saturation scaling.
        brightness_std: float = 0.2,        # Standard deviation of the brightness offset.
        contrast_std: float = 0.5,          # log2 standard deviation of contrast scaling.
        hue_max: float = 1,                 # Largest hue rotation, as a fraction of a half turn (1: any angle).
        saturation_std: float = 1,          # log2 standard deviation of saturation scaling.
        **unknown,
    ):
        """EDM's options, with EDM's names and defaults; each a finite number >= 0."""
        options = {key: value for key, value in locals().items() if key not in ('self', 'unknown')}
        if unknown:
            raise ValueError(f'AugmentPipe got unknown option(s) {", ".join(sorted(unknown))}; the options are {", ".join(options)}.')
        for key, value in options.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f'AugmentPipe({key}={value!r}): every probability, strength and std must be a finite number >= 0.')
            setattr(self, key, float(value))

    #------------------------------------------------------------------------
    # Which augmentations are enabled, and their labels.

    @property
    def geometric_enabled(self) -> bool:
        return self.scale > 0 or self.rotate_frac > 0 or self.aniso > 0 or self.translate_frac > 0

    @property
    def colour_enabled(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.lumaflip > 0 or self.hue > 0 or self.saturation > 0

    @property
    def label_names(self) -> list[str]:
        """Names of the label components, in order; one entry per column of the labels."""
        blocks = [
            ('xflip', ['xflip']),
            ('yflip', ['yflip']),
            ('rotate_int', ['rotate_int_xflip', 'rotate_int_yflip']),
            ('translate_int', ['translate_int_x', 'translate_int_y']),
            ('scale', ['scale']),
            ('rotate_frac', ['rotate_cos_minus_1', 'rotate_sin']),
            ('aniso', ['aniso_cos', 'aniso_sin']),
            ('translate_frac', ['translate_x', 'translate_y']),
            ('brightness', ['brightness']),
            ('contrast', ['contrast']),
            ('lumaflip', ['lumaflip']),
            ('hue', ['hue_cos_minus_1', 'hue_sin']),
            ('saturation', ['saturation']),
        ]
        return [name for key, names in blocks if getattr(self, key) > 0 for name in names]

    @property
    def label_dim(self) -> int:
        """Number of augmentation label components: the network's augment_dim (9 for EDM's setting)."""
        return len(self.label_names)

    #------------------------------------------------------------------------
    # Random parameters.

    def sample_params(self, batch_size: int, device: torch.device, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Draw every random parameter of a batch, in EDM's order and sizes, all from `generator`.

        Returns tensors on `device`, with keys for the enabled augmentations only, each 0 where its
        augmentation is not applied: 'xflip', 'yflip', 'lumaflip' (bits, int64 [N]), 'rotate_int'
        (quarter turns, int64 [N]), 'translate_int' (w_x, w_y in [-1, 1], [2, N]), 'scale', 'aniso',
        'brightness', 'contrast', 'saturation' (w, [N]), 'rotate_frac', 'hue' (theta, radians, [N]),
        'aniso_phi' (phi, radians, [N]; 0 where the scaling is along the x axis), 'translate_frac'
        (w_x, w_y, [2, N]). Image operations draw nothing, so drawing everything first and then
        applying it uses the generator exactly as EDM's interleaved code does."""
        N = int(batch_size)
        draw = rng.Draws(generator, device)  # On the generator's device, then moved (EDM: the global RNG).
        params = {}

        def applied(strength: float, *shape: int) -> torch.Tensor:
            return draw.rand(*shape) < strength * self.p

        # Blits.
        for key in ['xflip', 'yflip']:
            if getattr(self, key) > 0:
                b = draw.randint(2, N)
                params[key] = torch.where(applied(getattr(self, key), N), b, torch.zeros_like(b))
        if self.rotate_int > 0:
            k = draw.randint(4, N)
            params['rotate_int'] = torch.where(applied(self.rotate_int, N), k, torch.zeros_like(k))
        if self.translate_int > 0:
            w = draw.rand(2, N) * 2 - 1
            params['translate_int'] = torch.where(applied(self.translate_int, 1, N), w, torch.zeros_like(w))

        # Geometric transforms.
        if self.scale > 0:
            w = draw.randn(N)
            params['scale'] = torch.where(applied(self.scale, N), w, torch.zeros_like(w))
        if self.rotate_frac > 0:
            theta = (draw.rand(N) * 2 - 1) * (math.pi * self.rotate_frac_max)
            params['rotate_frac'] = torch.where(applied(self.rotate_frac, N), theta, torch.zeros_like(theta))
        if self.aniso > 0:
            w = draw.randn(N)
            phi = (draw.rand(N) * 2 - 1) * math.pi
            params['aniso'] = torch.where(applied(self.aniso, N), w, torch.zeros_like(w))
            params['aniso_phi'] = torch.where(draw.rand(N) < self.aniso_rotate_prob, phi, torch.zeros_like(phi))
        if self.translate_frac > 0:
            w = draw.randn(2, N)
            params['translate_frac'] = torch.where(applied(self.translate_frac, 1, N), w, torch.zeros_like(w))

        # Colour transforms.
        for key in ['brightness', 'contrast']:
            if getattr(self, key) > 0:
                w = draw.randn(N)
                params[key] = torch.where(applied(getattr(self, key), N), w, torch.zeros_like(w))
        if self.lumaflip > 0:
            b = draw.randint(2, N)
            params['lumaflip'] = torch.where(applied(self.lumaflip, N), b, torch.zeros_like(b))
        if self.hue > 0:
            theta = (draw.rand(N) * 2 - 1) * (math.pi * self.hue_max)
            params['hue'] = torch.where(applied(self.hue, N), theta, torch.zeros_like(theta))
        if self.saturation > 0:
            w = draw.randn(N)
            params['saturation'] = torch.where(applied(self.saturation, N), w, torch.zeros_like(w))
        return params

    def labels(self, params: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
        """Augmentation labels float32 [N, label_dim] of sample_params() output (see the class docstring)."""
        N = next(iter(params.values())).shape[-1] if params else 0
        columns = []
        for key in ['xflip', 'yflip']:
            if key in params:
                columns += [params[key]]
        if 'rotate_int' in params:
            k = params['rotate_int']
            columns += [(k == 1) | (k == 2), (k == 2) | (k == 3)]
        if 'translate_int' in params:
            tx, ty = self._integer_shift(params['translate_int'], height, width)
            columns += [tx.div(width * self.translate_int_max), ty.div(height * self.translate_int_max)]
        if 'scale' in params:
            columns += [params['scale']]
        if 'rotate_frac' in params:
            columns += [params['rotate_frac'].cos() - 1, params['rotate_frac'].sin()]
        if 'aniso' in params:
            w, phi = params['aniso'], params['aniso_phi']
            columns += [w * phi.cos(), w * phi.sin()]
        if 'translate_frac' in params:
            columns += [params['translate_frac'][0], params['translate_frac'][1]]
        for key in ['brightness', 'contrast', 'lumaflip']:
            if key in params:
                columns += [params[key]]
        if 'hue' in params:
            columns += [params['hue'].cos() - 1, params['hue'].sin()]
        if 'saturation' in params:
            columns += [params['saturation']]
        if not columns:
            return torch.zeros([N, 0])
        return torch.stack([column.to(torch.float32) for column in columns], dim=1)

    #------------------------------------------------------------------------
    # Stage 1: blits.

    def _integer_shift(self, w: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """translate_int parameters w [2, N] -> shifts (t_x, t_y) in whole pixels, int64 [N] each."""
        tx = w[0].mul(width * self.translate_int_max).round().to(torch.int64)
        ty = w[1].mul(height * self.translate_int_max).round().to(torch.int64)
        return tx, ty

    def _blit(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flips, quarter turns and integer shifts: exact moves of pixels, no resampling.

        The integer shift takes output pixel (x, y) from input pixel (m_W(x - t_x), m_H(y + t_y)),
        where m_L(i) = L - 1 - |L - 1 - (i mod (2L - 2))| mirrors any integer into [0, L - 1] about
        the edge pixels (..., 2, 1, 0, 1, 2, ..., L - 2, L - 1, L - 2, ...)."""
        N, C, H, W = images.shape
        select = lambda mask: mask.reshape(N, 1, 1, 1)
        if 'xflip' in params:
            images = torch.where(select(params['xflip'] == 1), images.flip(3), images)
        if 'yflip' in params:
            images = torch.where(select(params['yflip'] == 1), images.flip(2), images)
        if 'rotate_int' in params:
            k = params['rotate_int']
            images = torch.where(select((k == 1) | (k == 2)), images.flip(3), images)
            images = torch.where(select((k == 2) | (k == 3)), images.flip(2), images)
            images = torch.where(select((k == 1) | (k == 3)), images.transpose(2, 3), images)
        if 'translate_int' in params:
            tx, ty = self._integer_shift(params['translate_int'], H, W)
            mirror = lambda i, L: L - 1 - (L - 1 - i % (2 * L - 2)).abs()
            x = mirror(torch.arange(W, device=images.device) - tx.reshape(N, 1), W) # [N, W]
            y = mirror(torch.arange(H, device=images.device) + ty.reshape(N, 1), H) # [N, H]
            images = images.gather(3, x.reshape(N, 1, 1, W).expand(N, C, H, W))
            images = images.gather(2, y.reshape(N, 1, H, 1).expand(N, C, H, W))
        return images

    #------------------------------------------------------------------------
    # Stage 2: geometric transforms.

    def _geometric_matrix(self, params: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
        """G^-1 = S^-1 R^-1 A^-1 T^-1 in centred pixel coordinates, float32 [N, 3, 3] (G = T A R S:
        scale first, translation last), multiplied left to right in EDM's order."""
        G_inv = torch.eye(3, device=next(iter(params.values())).device)
        if 'scale' in params:
            s = _exp2(params['scale'].mul(self.scale_std))
            G_inv = G_inv @ scale2d(1 / s, 1 / s)
        if 'rotate_frac' in params:
            # G = rotate2d(-theta) turns counterclockwise on screen, so G^-1 = rotate2d(theta).
            G_inv = G_inv @ rotate2d(params['rotate_frac'])
        if 'aniso' in params:
            # G = R(-phi) diag(s, 1/s) R(phi) stretches along (cos phi, -sin phi), the on-screen angle phi.
            phi = params['aniso_phi']
            s = _exp2(params['aniso'].mul(self.aniso_std))
            # 1 / (1 / s) rather than s: EDM inverts diag(s, 1 / s) entry by entry, and a coordinate
            # rounded differently moves a resampled pixel by up to 1e-5 (of a pixel-to-pixel step of 2).
            G_inv = G_inv @ rotate2d(-phi) @ scale2d(1 / s, 1 / (1 / s)) @ rotate2d(phi)
        if 'translate_frac' in params:
            w = params['translate_frac']
            G_inv = G_inv @ translate2d(-w[0].mul(width * self.translate_frac_std), -w[1].mul(height * self.translate_frac_std))
        return G_inv

    @staticmethod
    def _resample(images: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
        """Output pixel p of each image [N, C, H, W] takes the input value at G_inv [N, 3, 3] p.

        Executed as in EDM/StyleGAN2-ADA, so that the transform neither aliases nor shows a border:
        1. Reflect-pad the batch by the margin that the inverse-mapped output corners reach outside
           the image (the largest over the batch), plus 2 * 3 pixels for the filters below, at most
           L - 1 per side (what reflection allows).
        2. Upsample 2x: insert a zero after every pixel (per axis) and convolve with the sym6 filter
           h (its even and its odd taps each sum to 1/sqrt(2), so a constant image stays constant,
           scaled by 1/2; step 4, with a gain of 2, undoes the scaling).
        3. Bilinear grid_sample of an output of 2 (L + 6) pixels per axis through G^-1, rewritten for
           the upsampled, padded frame (zeros outside it, which the padding keeps out of reach).
        4. Downsample 2x: correlate with h at stride 2 and crop 3 pixels per side back to [H, W].
        Since sum_k h[k] h[k + 2n] = delta[n], steps 2 and 4 around an identity G^-1 give the image
        back up to rounding; the float32 sampling positions of step 3 dominate that rounding (on
        random images in [-1, 1], up to 3e-6 at 16x16 and 1.6e-5 at 64x64; tests/test_augment.py)."""
        N, C, H, W = images.shape
        device = images.device
        taps = torch.tensor(SYM6, dtype=torch.float32)
        pad = len(SYM6) // 4 # 3 pixels per side lost to each filter pass at the original resolution

        # 1. Margin: how far the corners of the output reach in the input, beyond the image edges.
        cx, cy = (W - 1) / 2, (H - 1) / 2
        corners = _matrix([-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1], device=device) # [corner, xyz]
        corners = G_inv @ corners.t() # [N, xyz, corner]
        reach = corners[:, :2, :].permute(1, 0, 2).flatten(1) # [xy, N * corner]
        margin = torch.cat([-reach, reach]).max(dim=1).values # [left, top, right, bottom] extent from the centre
        margin = margin + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, dtype=torch.float32, device=device)
        margin = margin.max(torch.zeros([4], device=device))
        margin = margin.min(torch.tensor([W - 1, H - 1] * 2, dtype=torch.float32, device=device))
        mx0, my0, mx1, my1 = margin.ceil().to(torch.int32).tolist()
        images = torch.nn.functional.pad(images, [mx0, mx1, my0, my1], mode='reflect')
        # Centred coordinates of the padded image: its centre moved by ((mx0 - mx1) / 2, (my0 - my1) / 2).
        G_inv = translate2d(torch.tensor((mx0 - mx1) / 2, device=device), torch.tensor((my0 - my1) / 2, device=device)) @ G_inv

        # 2. Upsample. conv2d correlates, so the flipped taps make it a convolution with h.
        images = _upsample2x(images, taps.flip(0).to(images.dtype))
        # Coordinates of the upsampled image: doubled, about pixel centres that moved by half a pixel.
        G_inv = scale2d(2, 2, device=device) @ G_inv @ scale2d(1 / 2, 1 / 2, device=device)
        G_inv = translate2d(-0.5, -0.5, device=device) @ G_inv @ translate2d(0.5, 0.5, device=device)

        # 3. Bilinear sampling, in affine_grid's coordinates normalised to [-1, 1] across each image
        # (align_corners=False): x_norm = x_pixel * 2 / width.
        shape = [N, C, (H + pad * 2) * 2, (W + pad * 2) * 2]
        G_inv = scale2d(2 / images.shape[3], 2 / images.shape[2], device=device) @ G_inv @ scale2d(1 / (2 / shape[3]), 1 / (2 / shape[2]), device=device)
        grid = _affine_grid(G_inv[:, :2, :], shape[2], shape[3]).to(images.dtype)
        images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

        # 4. Downsample and crop.
        images = _downsample2x(images, taps.to(images.dtype))
        return images[:, :, pad:-pad, pad:-pad]

    #------------------------------------------------------------------------
    # Stage 3: colour transforms.

    def _colour_matrix(self, params: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Colour matrix M, float32 [N, 4, 4] acting on (r, g, b, 1), composed as M = S H L C B
        (brightness first, saturation last). With the luma axis v = (1, 1, 1, 0) / sqrt(3):
        B = translate3d(b, b, b), b = w brightness_std; C = scale3d(c, c, c), c = 2^(w contrast_std);
        L = I - 2 b v v^T (lumaflip bit b); H = rotate3d(v, theta); S = v v^T + (I - v v^T) 2^(w saturation_std)."""
        I_4 = torch.eye(4, device=device)
        M = I_4
        v = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64).div(math.sqrt(3)).to(torch.float32).to(device)
        vvT = v.outer(v)
        if 'brightness' in params:
            b = params['brightness'] * self.brightness_std
            M = translate3d(b, b, b) @ M
        if 'contrast' in params:
            c = _exp2(params['contrast'].mul(self.contrast_std))
            M = scale3d(c, c, c) @ M
        if 'lumaflip' in params:
            M = (I_4 - 2 * vvT * params['lumaflip'].reshape(-1, 1, 1)) @ M
        if 'hue' in params:
            M = rotate3d(v, params['hue']) @ M
        if 'saturation' in params:
            M = (vvT + (I_4 - vvT) * _exp2(params['saturation'].reshape(-1, 1, 1).mul(self.saturation_std))) @ M
        return M

    @staticmethod
    def _apply_colour(images: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """RGB [N, 3, H, W]: rgb -> M[:3, :3] rgb + M[:3, 3]. Greyscale [N, 1, H, W]: the grey value g
        is taken as r = g = b and the output is the mean of the three output channels,
        g -> mean_i(sum_j M[i, j]) g + mean_i(M[i, 3])."""
        N, C, H, W = images.shape
        M = M.to(images.dtype)
        images = images.reshape(N, C, H * W)
        if C == 3:
            # M[:3, :3] rgb evaluated as a BLAS kernel with fused multiply-add does (see _affine_grid).
            rgb = torch.zeros_like(images)
            for j in range(3):
                rgb = M[:, :3, j:j + 1] * images[:, j:j + 1] if j == 0 else _fma(M[:, :3, j:j + 1], images[:, j:j + 1], rgb)
            images = rgb + M[:, :3, 3:]
        else:
            M = M[:, :3, :].mean(dim=1, keepdim=True)
            images = images * M[:, :, :3].sum(dim=2, keepdim=True) + M[:, :, 3:]
        return images.reshape(N, C, H, W)

    #------------------------------------------------------------------------
    # The whole pipeline.

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment `images` [N, C, H, W] with given sample_params() -> (images [N, C, H, W], labels [N, label_dim])."""
        N, C, H, W = images.shape
        images = self._blit(images, params)
        if self.geometric_enabled and N > 0:
            images = self._resample(images, self._geometric_matrix(params, H, W))
        if self.colour_enabled:
            images = self._apply_colour(images, self._colour_matrix(params, images.device))
        labels = self.labels(params, H, W) if params else torch.zeros([N, 0])
        return images, labels.to(images.device)

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented images [N, C, H, W], labels float32 [N, label_dim]) for float images [N, C, H, W] in [-1, 1].

        Every random draw comes from `generator` (torch's global RNG of the images' device when None,
        as in EDM), so the same generator state gives the same augmentations on any device."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f'AugmentPipe expects float images [N, C, H, W], got {shape}; convert uint8 data with images.to(torch.float32) / 127.5 - 1.')
        N, C, H, W = images.shape
        if self.rotate_int > 0 and H != W:
            raise ValueError(f'AugmentPipe(rotate_int) turns images by quarter turns and needs square images, got {H}x{W}.')
        if (self.translate_int > 0 or self.geometric_enabled) and min(H, W) < 2:
            raise ValueError(f'AugmentPipe needs images of at least 2x2 pixels to mirror their borders, got {H}x{W}.')
        if self.colour_enabled and C not in (1, 3):
            raise ValueError(f'AugmentPipe colour augmentations need RGB (3 channels) or greyscale (1 channel) images, got {C} channels.')
        params = self.sample_params(N, images.device, generator)
        return self.apply(images, params)

#----------------------------------------------------------------------------
# Float32 arithmetic that does not depend on the machine. A geometric transform is sensitive to the
# last bit of its coordinates: on an image of independent random pixels, one unit in the last place
# of a sampling position (~4e-6 pixels at 64x64) moves the output by up to ~1e-5. EDM leaves these
# roundings to torch's exp2 and to the matrix product inside affine_grid, which differ between CPU
# kernels (vector width, fused multiply-add or not); we pin them down as follows.

def _exp2(x: torch.Tensor) -> torch.Tensor:
    """2^x, float32, correctly rounded (computed in float64, rounded once)."""
    return x.to(torch.float64).exp2().to(torch.float32)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a b + c for float32 tensors, rounded once, like a fused multiply-add: the float64 product of
    two float32 numbers is exact, and so is, but for rare double rounding, the float64 sum."""
    return (a.to(torch.float64) * b.to(torch.float64) + c.to(torch.float64)).to(torch.float32)


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torch.nn.functional.affine_grid(theta, [N, C, height, width], align_corners=False), evaluated
    the way BLAS kernels with fused multiply-add evaluate its matrix product (x86 AVX2/AVX-512, GPUs):
    for theta [N, 2, 3] and pixel centres (x, y) in normalised coordinates, each output coordinate is
    fma(y, theta[:, r, 1], x theta[:, r, 0]) + theta[:, r, 2]. Returns the grid float32 [N, height, width, 2]."""
    theta = theta.to(torch.float32)
    device = theta.device
    # Pixel centres of an image spanning [-1, 1], computed as affine_grid computes them.
    x = (torch.linspace(-1, 1, width, device=device) * (width - 1) / width).reshape(1, 1, width)
    y = (torch.linspace(-1, 1, height, device=device) * (height - 1) / height).reshape(1, height, 1)
    coords = []
    for r in range(2):
        a, b, c = (theta[:, r, k].reshape(-1, 1, 1) for k in range(3))
        coords += [_fma(y, b, x * a) + c]
    return torch.stack(coords, dim=3)

#----------------------------------------------------------------------------
# Separable 2x resampling with a low-pass filter, per channel.

def _upsample2x(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W]: along each axis, put a zero after every sample (dropping the
    last one) and correlate with `weight` [K], K even, zero-padded by (K + 1) // 2 at both ends."""
    N, C = images.shape[:2]
    K = len(weight)
    row = weight.to(images.device).reshape(1, 1, 1, K).repeat(C, 1, 1, 1)
    images = torch.stack([images, torch.zeros_like(images)], dim=4).reshape(N, C, images.shape[2], -1)[:, :, :, :-1]
    images = torch.nn.functional.conv2d(images, row, groups=C, padding=[0, (K + 1) // 2])
    images = torch.stack([images, torch.zeros_like(images)], dim=3).reshape(N, C, -1, images.shape[3])[:, :, :-1, :]
    images = torch.nn.functional.conv2d(images, row.transpose(2, 3), groups=C, padding=[(K + 1) // 2, 0])
    return images


def _downsample2x(images: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H / 2, W / 2] for even H and W: along each axis, correlate with
    `weight` [K], K even, zero-padded by (K - 1) // 2 at both ends, keeping every second output."""
    C = images.shape[1]
    K = len(weight)
    row = weight.to(images.device).reshape(1, 1, 1, K).repeat(C, 1, 1, 1)
    images = torch.nn.functional.conv2d(images, row, groups=C, stride=[1, 2], padding=[0, (K - 1) // 2])
    images = torch.nn.functional.conv2d(images, row.transpose(2, 3), groups=C, stride=[2, 1], padding=[(K - 1) // 2, 0])
    return images

#----------------------------------------------------------------------------
