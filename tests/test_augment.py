"""training/augment.py: EDM's non-leaking geometric augmentations, checked against exact pixel
operations (flip, roll, rot90) and against blob positions predicted independently from the labels."""

import math

import numpy as np
import pytest
import torch

from training.augment import AugmentPipe

EDM_SETTING = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
EDM_LABELS = ['xflip', 'yflip', 'scale', 'rotate_cos_minus_1', 'rotate_sin', 'aniso_cos', 'aniso_sin', 'translate_x', 'translate_y']


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_images(n, c=3, h=16, w=16, seed=0):
    return torch.rand([n, c, h, w], generator=gen(seed)) * 2 - 1


def binomial_ok(count, n, prob, z=4.5):
    return abs(count - n * prob) <= z * math.sqrt(n * prob * (1 - prob))

#----------------------------------------------------------------------------
# Labels and probabilities.

def test_edm_setting_has_nine_labels():
    pipe = AugmentPipe(p=0.12, **EDM_SETTING)
    assert pipe.label_dim == 9 and pipe.label_names == EDM_LABELS
    images, labels = pipe(random_images(5), generator=gen())
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (5, 9) and labels.dtype == torch.float32


@pytest.mark.parametrize('enabled,dim', [({}, 0), (dict(xflip=1), 1), (dict(rotate_frac=1), 2), (dict(scale=1, aniso=1), 3), (dict(yflip=1, translate_frac=1), 3)])
def test_labels_only_for_enabled_augmentations(enabled, dim):
    pipe = AugmentPipe(p=1, **enabled)
    images, labels = pipe(random_images(4), generator=gen())
    assert pipe.label_dim == dim and labels.shape == (4, dim)


def test_p0_is_identity_with_zero_labels():
    x = random_images(64)
    images, labels = AugmentPipe(p=0, **EDM_SETTING)(x, generator=gen())
    assert torch.equal(images, x)
    assert torch.equal(labels, torch.zeros([64, 9]))


def test_application_probabilities():
    # Each augmentation applies with probability min(1, strength * p); the flip bits are fair coins.
    n, p = 4000, 0.12
    _images, labels = AugmentPipe(p=p, **EDM_SETTING)(torch.zeros([n, 1, 2, 2]), generator=gen(1))
    applied = (labels != 0).sum(0).tolist()
    assert binomial_ok(applied[0], n, 0.5)              # xflip=1e8: always applied, bit ~ U{0, 1}
    assert binomial_ok(applied[1], n, 0.5 * p)          # yflip: applied with p, then a fair bit
    for column in [2, 4, 6, 7]:                         # scale, rotation sin, aniso, translation
        assert binomial_ok(applied[column], n, p)


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


def test_unaugmented_samples_are_bit_identical():
    x = random_images(200, h=9, w=9)
    images, labels = AugmentPipe(p=0.3, scale=1, rotate_frac=1, aniso=1, translate_frac=1)(x, generator=gen(3))
    untouched = (labels == 0).all(dim=1)
    assert 0 < int(untouched.sum()) < 200
    assert torch.equal(images[untouched], x[untouched])
    assert ((images - x).flatten(1).abs().amax(1)[~untouched] > 0).all()

#----------------------------------------------------------------------------
# Exact geometric cases.

@pytest.mark.parametrize('tx,ty', [(3, 0), (-2, 5), (4, -4)])
def test_integer_translation_matches_roll(tx, ty):
    x = random_images(2, h=16, w=12)
    pipe = AugmentPipe(p=1, translate_frac=1)
    params = pipe.sample_params(2, 'cpu', gen())
    params['translate_x'][:] = tx / (12 * pipe.translate_frac_std)
    params['translate_y'][:] = ty / (16 * pipe.translate_frac_std)
    images, labels = pipe.apply(x, params)
    rolled = torch.roll(x, shifts=(ty, tx), dims=(2, 3))
    rows = slice(max(ty, 0), 16 + min(ty, 0))
    cols = slice(max(tx, 0), 12 + min(tx, 0))
    torch.testing.assert_close(images[:, :, rows, cols], rolled[:, :, rows, cols], atol=1e-5, rtol=0)
    torch.testing.assert_close(labels, torch.tensor([[tx / 1.5, ty / 2.0]] * 2))
    # Uncovered pixels come from the mirrored image (reflection about the edge), never a constant.
    if tx > 0:
        # Output column j < tx samples input column j - tx < 0, reflected about the edge to tx - 1 - j.
        source = x[:, :, rows.start - ty:rows.stop - ty, :tx].flip(3)
        torch.testing.assert_close(images[:, :, rows, :tx], source, atol=1e-5, rtol=0)


@pytest.mark.parametrize('theta,k', [(math.pi / 2, 1), (-math.pi / 2, -1), (math.pi, 2)])
def test_quarter_rotations_match_rot90(theta, k):
    # A deliberately asymmetric pattern, so that the direction of rotation is pinned down:
    # positive theta is counterclockwise on screen, i.e. torch.rot90 with k > 0 over (H, W).
    x = random_images(3, h=10, w=10)
    pipe = AugmentPipe(p=1, rotate_frac=1)
    params = pipe.sample_params(3, 'cpu', gen())
    params['rotate'][:] = theta
    images, labels = pipe.apply(x, params)
    torch.testing.assert_close(images, torch.rot90(x, k, dims=(2, 3)), atol=1e-4, rtol=0)
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
        p = rotation_ccw(float(params['rotate'][i])) @ (s * BLOB)
        p = a * (p @ u) * u + (p @ v) / a * v
        p = p + np.array([float(params['translate_x'][i]), float(params['translate_y'][i])]) * SIZE * pipe.translate_frac_std
        predicted.append(p)
    check_blobs(images, predicted)
    assert labels.shape == (n, 9)


def test_flips_then_geometry():
    # The flip is applied first: an x-flipped blob then rotated by 90 degrees.
    pipe = AugmentPipe(p=1, xflip=1, rotate_frac=1)
    params = pipe.sample_params(1, 'cpu', gen())
    params['xflip'][:] = 1
    params['rotate'][:] = math.pi / 2
    images, labels = pipe.apply(blob_images(1), params)
    flipped = np.array([-BLOB[0], BLOB[1]]) # offsets are from the centre (SIZE - 1) / 2, the mirror axis
    expected = rotation_ccw(math.pi / 2) @ flipped
    assert np.linalg.norm(centroid_near(images[0], expected) - expected) < 0.3
    torch.testing.assert_close(labels, torch.tensor([[1.0, -1.0, 1.0]]), atol=1e-6, rtol=0)

#----------------------------------------------------------------------------
# Randomness: every draw from the generator.

def test_same_generator_seed_same_output():
    x = random_images(16)
    pipe = AugmentPipe(p=0.5, **EDM_SETTING)
    a = pipe(x, generator=gen(7))
    b = pipe(x, generator=gen(7))
    c = pipe(x, generator=gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_generator_none_uses_the_global_rng():
    x = random_images(16)
    pipe = AugmentPipe(p=0.5, **EDM_SETTING)
    torch.manual_seed(9)
    a = pipe(x)
    b = pipe(x, generator=gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_generator_state_advances_by_a_fixed_amount():
    # The number of draws depends only on the batch size and the enabled augmentations, not on
    # what was applied, so the stream after the pipe is the same whatever p is.
    after = []
    for p in [0, 0.5, 1]:
        g = gen(10)
        AugmentPipe(p=p, **EDM_SETTING)(random_images(8), generator=g)
        after.append(torch.rand([4], generator=g))
    assert torch.equal(after[0], after[1]) and torch.equal(after[1], after[2])


#----------------------------------------------------------------------------
# Bad input.

@pytest.mark.parametrize('kwargs', [dict(p=-0.1), dict(xflip=-1), dict(scale_std=float('nan')), dict(aniso=float('inf')), dict(rotate_frac='1')])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError, match='AugmentPipe'):
        AugmentPipe(**kwargs)


@pytest.mark.parametrize('images', [torch.zeros([2, 3, 8, 8], dtype=torch.uint8), torch.zeros([3, 8, 8]), np.zeros([2, 3, 8, 8], dtype=np.float32)])
def test_bad_images(images):
    with pytest.raises(ValueError, match=r'float images \[N, C, H, W\]'):
        AugmentPipe(p=1, xflip=1)(images)
