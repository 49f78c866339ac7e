"""training/augment.py: EDM's AugmentPipe, checked against outputs of EDM's own code (fixtures), exact
pixel operations (flip, rot90, mirrored shifts), independent colour formulas, and blob positions
predicted independently from the labels."""

import json
import math
import os

import numpy as np
import pytest
import torch

from training.augment import SYM6, AugmentPipe

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'edm_augment')
with open(os.path.join(FIXTURE_DIR, 'manifest.json')) as _f:
    MANIFEST = json.load(_f)

EDM_SETTING = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
EDM_LABELS = ['xflip', 'yflip', 'scale', 'rotate_cos_minus_1', 'rotate_sin', 'aniso_cos', 'aniso_sin', 'translate_x', 'translate_y']
EVERY = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1,
             brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
COLOUR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

# Measured on uniform random images in [-1, 1] (see test_identity_transform_is_nearly_exact): the
# sym6 up/down pair is exact up to rounding, but the float32 sampling positions of a W-pixel image
# are only good to ~W * 1e-7 pixels, which moves random pixels by up to 3.3e-6 (16x16), 4.5e-6
# (32x32) and 1.6e-5 (64x64) under the identity transform.
IDENTITY_ATOL_16 = 1e-5


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_images(n, c=3, h=16, w=16, seed=0):
    return torch.rand([n, c, h, w], generator=gen(seed)) * 2 - 1


def binomial_ok(count, n, prob, z=4.5):
    return abs(count - n * prob) <= z * math.sqrt(n * prob * (1 - prob))

#----------------------------------------------------------------------------
# EDM's outputs, draw for draw.

@pytest.mark.parametrize('name', sorted(MANIFEST))
def test_matches_edm_fixture(name):
    case = MANIFEST[name]
    data = np.load(os.path.join(FIXTURE_DIR, f'{name}.npz'))
    images = torch.from_numpy(data['images'])
    assert list(images.shape) == case['shape']
    pipe = AugmentPipe(**case['kwargs'])
    assert pipe.label_dim == case['label_dim']
    augmented, labels = pipe(images, generator=gen(case['seed']))
    expected_images, expected_labels = torch.from_numpy(data['augmented']), torch.from_numpy(data['labels'])
    assert augmented.shape == expected_images.shape and labels.shape == expected_labels.shape
    assert (augmented - expected_images).abs().max() <= 1e-5
    assert (labels - expected_labels).abs().max() <= 1e-5


def test_fixtures_cover_every_option():
    used = set().union(*(case['kwargs'] for case in MANIFEST.values()))
    assert set(EVERY) <= used

#----------------------------------------------------------------------------
# The sym6 filter.

def test_sym6_taps_are_an_orthonormal_wavelet_filter_with_six_vanishing_moments():
    h = np.array(SYM6, dtype=np.float64)
    k = np.arange(len(h))
    assert len(h) == 12 and abs(h.sum() - math.sqrt(2)) < 1e-12
    for n in range(6):      # sum_k h[k] h[k + 2n] = delta[n]
        assert abs(np.dot(h[:len(h) - 2 * n], h[2 * n:]) - (n == 0)) < 1e-11
    for m in range(6):      # the high-pass filter (-1)^k h[k] annihilates polynomials of degree < 6
        assert abs(((-1.0) ** k * k ** m * h).sum()) < 1e-9
    assert abs(((-1.0) ** k * k ** 6 * h).sum()) > 1    # and no more: 6 vanishing moments exactly

#----------------------------------------------------------------------------
# Labels and probabilities.

def test_edm_setting_has_nine_labels():
    pipe = AugmentPipe(p=0.12, **EDM_SETTING)
    assert pipe.label_dim == 9 and pipe.label_names == EDM_LABELS
    images, labels = pipe(random_images(5), generator=gen())
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (5, 9) and labels.dtype == torch.float32


@pytest.mark.parametrize('enabled,dim', [({}, 0), (dict(xflip=1), 1), (dict(rotate_frac=1), 2), (dict(scale=1, aniso=1), 3),
                                         (dict(yflip=1, translate_frac=1), 3), (dict(rotate_int=1, translate_int=1), 4),
                                         (COLOUR, 6), (EVERY, 19)])
def test_labels_only_for_enabled_augmentations(enabled, dim):
    pipe = AugmentPipe(p=1, **enabled)
    images, labels = pipe(random_images(4), generator=gen())
    assert pipe.label_dim == dim and len(pipe.label_names) == dim and labels.shape == (4, dim)


def test_p0_leaves_images_and_zero_labels():
    # Blits and colour are exact at p=0; once a geometric augmentation is enabled, EDM resamples
    # every image, which reproduces it only to float32 rounding of the sampling positions.
    x = random_images(64)
    images, labels = AugmentPipe(p=0, xflip=1, yflip=1, rotate_int=1, translate_int=1, **COLOUR)(x, generator=gen())
    assert torch.equal(images, x) and torch.equal(labels, torch.zeros([64, 12]))
    images, labels = AugmentPipe(p=0, **EDM_SETTING)(x, generator=gen())
    assert (images - x).abs().max() <= IDENTITY_ATOL_16
    assert torch.equal(labels, torch.zeros([64, 9]))


def test_application_probabilities():
    # Each augmentation applies with probability min(1, strength * p); bits are fair coins, and
    # the anisotropic scaling is along a random direction with probability aniso_rotate_prob.
    n, p = 4000, 0.12
    _images, labels = AugmentPipe(p=p, **EDM_SETTING, **COLOUR)(torch.zeros([n, 1, 2, 2]), generator=gen(1))
    applied = (labels != 0).sum(0).tolist()
    assert binomial_ok(applied[0], n, 0.5)              # xflip=1e8: always applied, bit ~ U{0, 1}
    assert binomial_ok(applied[1], n, 0.5 * p)          # yflip: applied with p, then a fair bit
    for column in [2, 4, 5, 7, 9, 10, 13, 14]:          # scale, rotation sin, aniso, translation, brightness, contrast, hue sin, saturation
        assert binomial_ok(applied[column], n, p)
    assert binomial_ok(applied[6], n, 0.5 * p)          # aniso sin: applied and along a random direction
    assert binomial_ok(applied[11], n, 0.5 * p)         # lumaflip: applied, then a fair bit


@pytest.mark.parametrize('rotate_prob', [0, 1])
def test_aniso_rotate_prob(rotate_prob):
    params = AugmentPipe(p=1, aniso=1, aniso_rotate_prob=rotate_prob).sample_params(200, 'cpu', gen(12))
    assert bool((params['aniso_phi'] != 0).all()) == (rotate_prob == 1)
    assert bool((params['aniso_phi'] == 0).all()) == (rotate_prob == 0)


@pytest.mark.parametrize('axis', ['xflip', 'yflip'])
def test_flips_are_exact_and_follow_the_label(axis):
    x = random_images(400, c=2, h=5, w=7)
    images, labels = AugmentPipe(p=1, **{axis: 1})(x, generator=gen(2))
    flipped = x.flip(3 if axis == 'xflip' else 2)
    bit = labels[:, 0]
    assert set(bit.tolist()) <= {0.0, 1.0}
    assert torch.equal(images[bit == 1], flipped[bit == 1])
    assert torch.equal(images[bit == 0], x[bit == 0])
    assert binomial_ok(int(bit.sum()), 400, 0.5)


def test_unaugmented_samples_are_only_resampled():
    x = random_images(200)
    images, labels = AugmentPipe(p=0.3, scale=1, rotate_frac=1, aniso=1, translate_frac=1)(x, generator=gen(3))
    untouched = (labels == 0).all(dim=1)
    assert 0 < int(untouched.sum()) < 200
    assert (images[untouched] - x[untouched]).abs().max() <= IDENTITY_ATOL_16
    assert ((images - x).flatten(1).abs().amax(1)[~untouched] > 1e-2).all()

#----------------------------------------------------------------------------
# Blits: exact pixel moves.

def test_rotate_int_matches_rot90():
    # Labels (k in {1, 2}, k in {2, 3}) say how many counterclockwise quarter turns k were made.
    x = random_images(64, h=6, w=6)
    images, labels = AugmentPipe(p=1, rotate_int=1)(x, generator=gen(4))
    turns = {(0.0, 0.0): 0, (1.0, 0.0): 1, (1.0, 1.0): 2, (0.0, 1.0): 3}
    counts = [0] * 4
    for i in range(64):
        k = turns[tuple(labels[i].tolist())]
        counts[k] += 1
        assert torch.equal(images[i], torch.rot90(x[i], k, dims=(1, 2)))
    assert min(counts) > 0


def mirrored_shift(x, tx, ty):
    """Independent reference: content moved tx pixels right and ty pixels up, the uncovered border
    filled with the image mirrored about its edge pixels (reflect padding), [C, H, W]."""
    H, W = x.shape[1:]
    P = max(abs(tx), abs(ty), 1)
    padded = torch.nn.functional.pad(x[None], [P, P, P, P], mode='reflect')[0]
    return padded[:, P + ty:P + ty + H, P - tx:P - tx + W]


@pytest.mark.parametrize('tx,ty', [(3, 0), (0, 2), (-2, 5), (4, -4)])
def test_integer_translation_is_a_mirrored_roll(tx, ty):
    x = random_images(2, h=16, w=12)
    pipe = AugmentPipe(p=1, translate_int=1, translate_int_max=0.5)
    params = pipe.sample_params(2, 'cpu', gen())
    params['translate_int'][0] = tx / (12 * 0.5)
    params['translate_int'][1] = ty / (16 * 0.5)
    images, labels = pipe.apply(x, params)
    torch.testing.assert_close(labels, torch.tensor([[tx / 6, ty / 8]] * 2), atol=1e-7, rtol=0)
    # Inside, a plain roll: right by tx, up by ty (EDM's sign convention for y).
    rolled = torch.roll(x, shifts=(-ty, tx), dims=(2, 3))
    rows = slice(max(-ty, 0), 16 + min(-ty, 0))
    cols = slice(max(tx, 0), 12 + min(tx, 0))
    assert torch.equal(images[:, :, rows, cols], rolled[:, :, rows, cols])
    # Everywhere, including the border: the mirrored shift.
    for i in range(2):
        assert torch.equal(images[i], mirrored_shift(x[i], tx, ty))


def test_random_integer_translations_follow_the_labels():
    x = random_images(64, h=12, w=12)
    pipe = AugmentPipe(p=1, translate_int=1, translate_int_max=0.25)
    images, labels = pipe(x, generator=gen(5))
    shifts = torch.round(labels * 12 * 0.25).to(torch.int64)
    torch.testing.assert_close(shifts.to(torch.float32), labels * 3, atol=1e-5, rtol=0)
    assert shifts.abs().max() == 3 and len(set(map(tuple, shifts.tolist()))) > 20
    for i in range(64):
        assert torch.equal(images[i], mirrored_shift(x[i], *shifts[i].tolist()))

#----------------------------------------------------------------------------
# Geometric transforms.

@pytest.mark.parametrize('size', [16, 32])
def test_identity_transform_is_nearly_exact(size):
    # scale_std=0 makes every G^-1 the exact identity, so only the resampling path acts; the sym6
    # pair is exact up to rounding (sum_k h[k] h[k + 2n] = delta[n]), and bilinear sampling at the
    # upsampled pixel centres is exact but for float32 rounding of the positions. Measured max
    # |error|: 3.3e-6 (16x16) and 4.5e-6 (32x32) on 64 random images.
    x = random_images(64, h=size, w=size, seed=size)
    images, labels = AugmentPipe(p=1, scale=1, scale_std=0)(x, generator=gen(6))
    assert (labels != 0).all()
    error = (images - x).abs().max()
    assert 0 < error <= IDENTITY_ATOL_16


def smooth_images(n, size):
    """Sums of broad Gaussians, asymmetric, [n, 2, size, size]: the sym6 path is accurate on
    smooth content, so exact geometric laws hold to a small tolerance."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing='ij')
    c = (size - 1) / 2
    bump = lambda dx, dy, width: torch.exp(-((x - c - dx) ** 2 + (y - c - dy) ** 2) / (2 * width ** 2))
    return torch.stack([torch.stack([bump(3 + i, 1 - 2 * i, size / 6) - 0.5 * bump(-4, 3 - i - ch, size / 8) for ch in range(2)])
                        for i in range(n)])


@pytest.mark.parametrize('theta,k', [(math.pi / 2, 1), (-math.pi / 2, -1), (math.pi, 2)])
def test_quarter_rotations_match_rot90(theta, k):
    # Positive theta is counterclockwise on screen, i.e. torch.rot90 with k > 0 over (H, W). The
    # sym6 filter is not symmetric, so a quarter turn between the up- and downsampling leaves a
    # slight blur: measured max |error| 0.026 (k = +-1) and 0.032 (k = 2) on these 16x16 images,
    # whose values span ~1.5; the wrong direction is off by ~1.
    x = smooth_images(3, 16)
    pipe = AugmentPipe(p=1, rotate_frac=1)
    params = pipe.sample_params(3, 'cpu', gen())
    params['rotate_frac'][:] = theta
    images, labels = pipe.apply(x, params)
    assert (images - torch.rot90(x, k, dims=(2, 3))).abs().max() < 0.05
    assert (images - torch.rot90(x, -k, dims=(2, 3))).abs().max() > 0.5 or k == 2
    torch.testing.assert_close(labels, torch.tensor([[math.cos(theta) - 1, math.sin(theta)]] * 3), atol=1e-6, rtol=0)

#----------------------------------------------------------------------------
# Labels against the transform actually applied: a blob's centroid lands where the labels say.

SIZE = 64
BLOB = np.array([10.0, -6.0]) # offset from the centre in pixels, (x right, y down)


def blob_images(n, blob=BLOB, width=1.5):
    c = (SIZE - 1) / 2
    y, x = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing='ij')
    r2 = (x - c - blob[0]) ** 2 + (y - c - blob[1]) ** 2
    return (2 * torch.exp(-r2 / (2 * width ** 2)) - 1).expand(n, 1, SIZE, SIZE).contiguous()


def centroid_near(image, guess, radius=9.0):
    """Intensity centroid (offset from the centre) of [1, H, W] image within `radius` of `guess`."""
    c = (SIZE - 1) / 2
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float64) - c
    weight = (image[0].double().numpy() + 1) * ((x - guess[0]) ** 2 + (y - guess[1]) ** 2 <= radius ** 2)
    return np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()


def rotation_ccw(theta):
    # Counterclockwise on screen in y-down coordinates.
    return np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])


def check_blobs(images, predicted, tolerance=0.35, max_offset=22):
    """Compare centroids with predictions for blobs that stay well inside the frame."""
    checked = 0
    for image, where in zip(images, predicted):
        if np.abs(where).max() > max_offset:
            continue
        got = centroid_near(image, where)
        assert np.linalg.norm(got - where) < tolerance, f'blob at {got}, labels say {where}'
        checked += 1
    assert checked >= 10


def test_labels_describe_scale_rotation_translation():
    # Prediction from the labels alone, as the network sees them: s = 2^(w std), theta from
    # (cos - 1, sin), shift = (t_x W, t_y H) std; G = T R S.
    n = 48
    pipe = AugmentPipe(p=1, scale=1, rotate_frac=1, translate_frac=1)
    images, labels = pipe(blob_images(n), generator=gen(4))
    predicted = []
    for w, cos_m1, sin, t_x, t_y in labels.double().numpy():
        assert abs((cos_m1 + 1) ** 2 + sin ** 2 - 1) < 1e-5
        theta = math.atan2(sin, cos_m1 + 1)
        s = 2 ** (w * pipe.scale_std)
        shift = np.array([t_x * SIZE, t_y * SIZE]) * pipe.translate_frac_std
        predicted.append(rotation_ccw(theta) @ (s * BLOB) + shift)
    check_blobs(images, predicted)


def test_aniso_stretches_along_phi():
    # Blobs on the axis phi and across it: s = 2 along phi, 1/2 across.
    pipe = AugmentPipe(p=1, aniso=1)
    phi = math.radians(30)
    along = 8 * np.array([math.cos(phi), -math.sin(phi)]) # on-screen angle phi in y-down coordinates
    across = 12 * np.array([math.sin(phi), math.cos(phi)])
    x = torch.cat([blob_images(1, along), blob_images(1, across)])
    params = pipe.sample_params(2, 'cpu', gen())
    params['aniso'][:] = 1 / pipe.aniso_std
    params['aniso_phi'][:] = phi
    images, labels = pipe.apply(x, params)
    for image, expected in zip(images, [2 * along, across / 2]):
        assert np.linalg.norm(centroid_near(image, expected) - expected) < 0.3
    torch.testing.assert_close(labels, torch.tensor([[5 * math.cos(phi), 5 * math.sin(phi)]] * 2))


def test_full_pipe_composes_scale_rotate_aniso_translate():
    # G = T A R S, computed independently from the drawn parameters.
    n = 48
    pipe = AugmentPipe(p=1, **EDM_SETTING)
    params = pipe.sample_params(n, 'cpu', gen(5))
    params['xflip'][:] = 0
    params['yflip'][:] = 0
    images, labels = pipe.apply(blob_images(n), params)
    predicted = []
    for i in range(n):
        s = 2 ** (float(params['scale'][i]) * pipe.scale_std)
        a = 2 ** (float(params['aniso'][i]) * pipe.aniso_std)
        phi = float(params['aniso_phi'][i])
        u, v = np.array([math.cos(phi), -math.sin(phi)]), np.array([math.sin(phi), math.cos(phi)])
        p = rotation_ccw(float(params['rotate_frac'][i])) @ (s * BLOB)
        p = a * (p @ u) * u + (p @ v) / a * v
        p = p + params['translate_frac'][:, i].double().numpy() * SIZE * pipe.translate_frac_std
        predicted.append(p)
    check_blobs(images, predicted)
    assert labels.shape == (n, 9)


def test_flips_then_geometry():
    # The flip is applied first: an x-flipped blob then rotated by 90 degrees.
    pipe = AugmentPipe(p=1, xflip=1, rotate_frac=1)
    params = pipe.sample_params(1, 'cpu', gen())
    params['xflip'][:] = 1
    params['rotate_frac'][:] = math.pi / 2
    images, labels = pipe.apply(blob_images(1), params)
    flipped = np.array([-BLOB[0], BLOB[1]]) # offsets are from the centre (SIZE - 1) / 2, the mirror axis
    expected = rotation_ccw(math.pi / 2) @ flipped
    assert np.linalg.norm(centroid_near(images[0], expected) - expected) < 0.3
    torch.testing.assert_close(labels, torch.tensor([[1.0, -1.0, 1.0]]), atol=1e-6, rtol=0)

#----------------------------------------------------------------------------
# Colour transforms, against formulas written out per pixel (v = (1, 1, 1) / sqrt(3), the luma axis).

def colour_case(option, value, channels=3):
    x = random_images(4, c=channels, h=5, w=6, seed=7)
    pipe = AugmentPipe(p=1, **{option: 1})
    params = pipe.sample_params(4, 'cpu', gen())
    params[option][:] = value
    images, labels = pipe.apply(x, params)
    return pipe, x, images, labels


def test_brightness_contrast():
    pipe, x, images, labels = colour_case('brightness', 1.5)
    torch.testing.assert_close(images, x + 1.5 * pipe.brightness_std, atol=1e-6, rtol=0)
    pipe, x, images, labels = colour_case('contrast', -1.0)
    torch.testing.assert_close(images, x * 2 ** (-pipe.contrast_std), atol=1e-6, rtol=0)
    assert torch.equal(labels, torch.full([4, 1], -1.0))


def test_lumaflip_reflects_through_the_grey_plane():
    # x - 2 (x . v) v = x - 2 mean_c(x): the grey level flips sign, the chroma stays.
    _pipe, x, images, labels = colour_case('lumaflip', 1)
    torch.testing.assert_close(images, x - 2 * x.mean(dim=1, keepdim=True), atol=1e-6, rtol=0)
    assert torch.equal(labels, torch.ones([4, 1]))


@pytest.mark.parametrize('theta,shift', [(2 * math.pi / 3, 1), (-2 * math.pi / 3, -1)])
def test_hue_third_turn_cycles_the_channels(theta, shift):
    # A third of a turn about the grey axis maps red to green to blue.
    _pipe, x, images, labels = colour_case('hue', theta)
    torch.testing.assert_close(images, x.roll(shift, dims=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(labels, torch.tensor([[math.cos(theta) - 1, math.sin(theta)]] * 4), atol=1e-6, rtol=0)


def test_saturation_scales_the_chroma():
    pipe, x, images, _labels = colour_case('saturation', 0.5)
    grey = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(images, grey + (x - grey) * 2 ** (0.5 * pipe.saturation_std), atol=1e-6, rtol=0)


@pytest.mark.parametrize('option,value,expected', [('brightness', 1.0, lambda x: x + 0.2), ('contrast', 2.0, lambda x: x * 2.0),
                                                   ('lumaflip', 1, lambda x: -x), ('hue', 1.0, lambda x: x), ('saturation', 1.0, lambda x: x)])
def test_greyscale_colour(option, value, expected):
    # A grey value is r = g = b; the output is the mean of the three output channels.
    _pipe, x, images, _labels = colour_case(option, value, channels=1)
    torch.testing.assert_close(images, expected(x), atol=1e-6, rtol=0)


def test_colour_order_brightness_before_contrast():
    # M = S H L C B: contrast scales the brightness offset too.
    x = random_images(2, h=4, w=4)
    pipe = AugmentPipe(p=1, brightness=1, contrast=1)
    params = pipe.sample_params(2, 'cpu', gen())
    params['brightness'][:] = 1.0
    params['contrast'][:] = 2.0
    images, _labels = pipe.apply(x, params)
    torch.testing.assert_close(images, (x + 0.2) * 2.0, atol=1e-6, rtol=0)

#----------------------------------------------------------------------------
# Randomness: every draw from the generator.

def test_same_generator_seed_same_output():
    x = random_images(16)
    pipe = AugmentPipe(p=0.5, **EVERY)
    a = pipe(x, generator=gen(7))
    b = pipe(x, generator=gen(7))
    c = pipe(x, generator=gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_generator_none_uses_the_global_rng():
    x = random_images(16)
    pipe = AugmentPipe(p=0.5, **EVERY)
    torch.manual_seed(9)
    a = pipe(x)
    b = pipe(x, generator=gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_generator_state_advances_by_a_fixed_amount():
    # Every parameter is drawn whether or not it is used, so the stream after the pipe is the
    # same whatever p is.
    after = []
    for p in [0, 0.5, 1]:
        g = gen(10)
        AugmentPipe(p=p, **EVERY)(random_images(8), generator=g)
        after.append(torch.rand([4], generator=g))
    assert torch.equal(after[0], after[1]) and torch.equal(after[1], after[2])


def test_draws_are_made_on_the_generator_device():
    # Parameters for images on another device are drawn with the CPU generator, then moved: 'meta'
    # tensors hold no values, so the draws must have happened on the CPU, advancing the generator
    # exactly as for CPU images, and a CPU generator cannot draw on 'meta' directly.
    pipe = AugmentPipe(p=0.5, **EVERY)
    g_cpu, g_meta = gen(11), gen(11)
    on_cpu = pipe.sample_params(8, 'cpu', g_cpu)
    on_meta = pipe.sample_params(8, 'meta', g_meta)
    assert all(v.device.type == 'cpu' for v in on_cpu.values())
    assert all(v.device.type == 'meta' for v in on_meta.values()) and on_meta.keys() == on_cpu.keys()
    assert all(v.shape == on_cpu[k].shape and v.dtype == on_cpu[k].dtype for k, v in on_meta.items())
    assert torch.equal(g_cpu.get_state(), g_meta.get_state())
    # The parameters that the pipe draws for CPU images are those of sample_params with this generator.
    images, labels = pipe(random_images(8), generator=gen(11))
    torch.testing.assert_close(labels, pipe.labels(on_cpu, 16, 16), atol=0, rtol=0)

#----------------------------------------------------------------------------
# Bad input.

@pytest.mark.parametrize('kwargs', [dict(p=-0.1), dict(xflip=-1), dict(scale_std=float('nan')), dict(aniso=float('inf')),
                                    dict(rotate_frac='1'), dict(hue=True), dict(translate_int_max=-0.1), dict(aniso_rotate_prob=float('nan'))])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match=r'AugmentPipe\(.*finite number >= 0'):
        AugmentPipe(**kwargs)


def test_unknown_option():
    with pytest.raises(ValueError, match='unknown option.*rotate'):
        AugmentPipe(p=1, rotate=1)


@pytest.mark.parametrize('images', [torch.zeros([2, 3, 8, 8], dtype=torch.uint8), torch.zeros([3, 8, 8]), np.zeros([2, 3, 8, 8], dtype=np.float32)])
def test_bad_images(images):
    with pytest.raises(ValueError, match=r'float images \[N, C, H, W\]'):
        AugmentPipe(p=1, xflip=1)(images)


@pytest.mark.parametrize('kwargs,shape,message', [(dict(rotate_int=1), [2, 3, 8, 6], 'square'), (dict(hue=1), [2, 2, 8, 8], 'channels'),
                                                  (dict(scale=1), [2, 3, 1, 8], '2x2'), (dict(translate_int=1), [2, 3, 8, 1], '2x2')])
def test_images_the_pipe_cannot_handle(kwargs, shape, message):
    # Refused before any draw, so the generator is left as it was.
    g = gen(13)
    with pytest.raises(ValueError, match=message):
        AugmentPipe(p=1, **kwargs)(torch.zeros(shape), generator=g)
    assert torch.equal(g.get_state(), gen(13).get_state())
