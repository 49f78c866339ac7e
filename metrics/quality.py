"""Are the quick-start samples real digits? A classifier trained on scikit-learn's real 8x8 handwritten
digits classifies generated 16x16 PNGs; a sample counts as recognised when the classifier gives its
most likely class a probability of at least --threshold (0.8 by default) and the sample lies no
farther from the real digits than held-out real digits do (a classifier alone is confident about
noise too; see fit_classifier).

    python -m metrics.quality training-runs/quickstart/samples --json=quality.json

Images are read at any depth (quickstart.py samples digit c into SAMPLES/c/, which also tells the
scorer which digit each sample was generated for).

Exits with status 1 when fewer than --min-score of the samples are recognised, or when some digit
is never recognised. The classifier's own accuracy on held-out real digits is printed beside the
score, both on the original 8x8 images and after the 8x8 -> 16x16 -> 8x8 round trip that the
training images and the samples go through, so that the check itself is shown to be meaningful.

This is a benchmark, not a timed test: it needs scikit-learn (requirements-demo.txt) and a trained
model's samples. quickstart.py calls score_samples() at its end.
"""

if __name__ == '__main__':
    from torch_utils.threads import use_passive_threads
    use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).


import json
import os
from typing import Optional

import click
import numpy as np
import PIL.Image

import dnnlib
from dataprep import conversion
from torch_utils import cli, image_io

NUM_CLASSES = 10
DIGITS_MAX = 16         # scikit-learn's digits are integers 0..16 (counts of set pixels in 4x4 blocks).
DIGITS_RESOLUTION = 8
DEMO_RESOLUTION = 16    # quickstart.py converts the digits to 16x16 with dataset_tool.py.
HELDOUT_FRACTION = 0.25
DIGIT_FOLDERS = frozenset(str(c) for c in range(NUM_CLASSES))

#----------------------------------------------------------------------------
# The real digits and the one feature map used for real and generated images alike.

def load_real_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 bundled digits as uint8 images [N, 8, 8] (v * 255 / 16, rounded) and
    their labels int64 [N] in 0..9. quickstart.py exports exactly these images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('scikit-learn is missing; install the demo requirements: pip install -r requirements-demo.txt') from None
    digits = load_digits()
    images = np.rint(digits.images * (255 / DIGITS_MAX)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def features(images: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W] with H = W a multiple of 8 -> float features [N, 64] on scikit-learn's
    0..16 scale: average over (H/8) x (W/8) blocks (2x2 for 16x16), then v * 16 / 255."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] % DIGITS_RESOLUTION != 0:
        raise ValueError(f'Expected square grayscale images [N, H, W] with a side that is a multiple of 8, got shape {list(images.shape)}.')
    n, side = images.shape[0], images.shape[1]
    f = side // DIGITS_RESOLUTION
    pooled = images.astype(np.float64).reshape(n, DIGITS_RESOLUTION, f, DIGITS_RESOLUTION, f).mean(axis=(2, 4))
    return pooled.reshape(n, -1) * (DIGITS_MAX / 255)


def round_trip(images: np.ndarray, resolution: int = DEMO_RESOLUTION) -> np.ndarray:
    """uint8 [N, 8, 8] -> uint8 [N, R, R] with dataset_tool.py's resize (Lanczos), as the training data is made."""
    return np.stack([conversion.resize_image(img[:, :, None], resolution, resolution)[:, :, 0] for img in images])


def load_samples(folder: str) -> tuple[list[str], np.ndarray]:
    """The images of a folder (or ZIP) at any depth, sorted by relative path (image_io.ImageSource),
    as uint8 grayscale [N, H, W]; RGB images become gray by PIL's luma rule."""
    source = image_io.ImageSource(folder, hint='pass the folder of generated PNGs (generate.py --outdir)')
    if not source.image_names:
        raise ValueError(f'{folder} holds no images; generate samples into it first.')
    images = []
    for name in source.image_names:
        image = source.read_image(name)
        images.append(image[0] if image.shape[0] == 1 else np.asarray(PIL.Image.fromarray(image.transpose(1, 2, 0)).convert('L')))
    if len({x.shape for x in images}) != 1:
        raise ValueError(f'The images in {folder} differ in size; expected one resolution.')
    return source.image_names, np.stack(images)


def load_class_labels(folder: str, names: list[str]) -> Optional[np.ndarray]:
    """The digit each image was generated for, int64 [N], or None when unknown: from a dataset.json in
    dataset_tool.py's format ({"labels": [[relpath, class], ...]}) when the folder has one, else
    from the top-level folders 0..9 that quickstart.py samples each digit into."""
    source = image_io.ImageSource(folder)
    if 'dataset.json' in source.names:
        values = source.read_labels(names)
        labels = None if values is None else image_io.labels_array(values, folder)
        if labels is not None and labels.dtype != np.int64:
            raise ValueError(f'dataset.json in {folder} holds label vectors; expected one class index per image.')
        return labels
    folders = [name.split('/')[0] if '/' in name else None for name in names]
    if all(f in DIGIT_FOLDERS for f in folders):
        return np.asarray([int(f) for f in folders], dtype=np.int64)
    return None

#----------------------------------------------------------------------------
# The classifier.

def fit_classifier(seed: int = 0, threshold: float = 0.8) -> tuple[object, object, dict]:
    """A digit classifier and a digit detector, both fitted on 75% of the real digits, and their
    scores on the other 25%.

    Classifier: an RBF support-vector machine (sklearn SVC, gamma=0.001, C=10 on 0..16 features) with
    Platt-scaled probabilities (5-fold cross-validation). Like any discriminative model it is
    confident far from its data too (it calls most uniform-noise images a digit with probability >=
    0.8), hence the detector: the distance from an image to its nearest real training digit, which
    must be at most distance_limit, the largest such distance among the held-out real digits.

    Returns (classifier, nearest-neighbour index, info) where info holds the held-out accuracy on the
    8x8 originals, the accuracy after the 16x16 round trip, the fraction of round-tripped held-out
    digits recognised by the rule of score_samples (what a perfect generator would score) and
    distance_limit."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import NearestNeighbors
    from sklearn.svm import SVC

    images, labels = load_real_digits()
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=HELDOUT_FRACTION, stratify=labels, random_state=seed)
    train_features = features(images[train_idx])
    clf = CalibratedClassifierCV(SVC(gamma=0.001, C=10), method='sigmoid', ensemble=False)
    clf.fit(train_features, labels[train_idx])
    nn = NearestNeighbors(n_neighbors=1).fit(train_features)

    test_labels = labels[test_idx]
    proba_8 = clf.predict_proba(features(images[test_idx]))
    test_16 = features(round_trip(images[test_idx]))
    proba_16 = clf.predict_proba(test_16)
    distance_limit = float(max(nn.kneighbors(features(images[test_idx]))[0].max(), nn.kneighbors(test_16)[0].max()))
    info = dict(
        name='SVC(rbf, gamma=0.001, C=10) + sigmoid calibration; nearest-neighbour distance gate',
        train_images=int(len(train_idx)), heldout_images=int(len(test_idx)), distance_limit=distance_limit,
        heldout_accuracy=float((clf.classes_[proba_8.argmax(1)] == test_labels).mean()),
        heldout_roundtrip_accuracy=float((clf.classes_[proba_16.argmax(1)] == test_labels).mean()),
        heldout_roundtrip_recognised=float((proba_16.max(1) >= threshold).mean()),  # All pass the distance gate.
    )
    return clf, nn, info


def score_samples(folder: str, threshold: float = 0.8, seed: int = 0) -> dict:
    """Classify every image in `folder` at any depth (load_samples; square, side a multiple of 8:
    16x16 for the quick start). A sample is recognised when it is digit-like (nearest real training digit at most
    distance_limit away, see fit_classifier) and its top class has probability >= threshold.

    Returns a JSON-ready dict: score = the fraction recognised; per_class = how many were recognised
    as each digit '0'..'9'; classes_present = the digits recognised at least once; num_confident and
    num_digit_like, the two conditions apart; mean_confidence; and the classifier's held-out scores.
    When the classes the samples were generated for are known (load_class_labels), also
    label_agreement (the classifier's top class is that class) and recognised_as_labelled (both)."""
    if not 0 < threshold <= 1:
        raise ValueError(f'The confidence threshold must be in (0, 1], got {threshold}.')
    names, images = load_samples(folder)
    clf, nn, info = fit_classifier(seed, threshold)
    x = features(images)
    proba = clf.predict_proba(x)
    predicted = clf.classes_[proba.argmax(1)]
    confidence = proba.max(1)
    confident = confidence >= threshold
    digit_like = nn.kneighbors(x)[0][:, 0] <= info['distance_limit']
    recognised = confident & digit_like
    per_class = {str(c): int(((predicted == c) & recognised).sum()) for c in range(NUM_CLASSES)}
    extra = {}
    labels = load_class_labels(folder, names)
    if labels is not None:  # Does the conditioning work, too?
        extra = dict(label_agreement=float((predicted == labels).mean()), recognised_as_labelled=float((recognised & (predicted == labels)).mean()))
    return dict(
        folder=os.path.abspath(folder), num_images=len(names), threshold=threshold,
        score=float(recognised.mean()), num_recognised=int(recognised.sum()),
        per_class=per_class, classes_present=sum(v > 0 for v in per_class.values()),
        num_confident=int(confident.sum()), num_digit_like=int(digit_like.sum()),
        mean_confidence=float(confidence.mean()),
        classifier=info, **extra,
    )


def failures(result: dict, min_score: float = 0.8) -> list[str]:
    """Why `result` (score_samples) fails the quick-start bar; empty when it passes."""
    problems = []
    if result['score'] < min_score:
        problems.append(f'only {result["score"]:.1%} of the samples are recognised (need {min_score:.0%})')
    missing = [c for c, n in result['per_class'].items() if n == 0]
    if missing:
        problems.append(f'digit{"s" if len(missing) > 1 else ""} {", ".join(missing)} never recognised')
    return problems


def summary_line(result: dict) -> str:
    """One line: the score, the classes, and the classifier's own held-out scores on real digits."""
    counts = ' '.join(f'{c}:{n}' for c, n in result['per_class'].items())
    c = result['classifier']
    return (f'Quality: {result["num_recognised"]}/{result["num_images"]} = {result["score"]:.1%} of the samples recognised as digits '
            f'(top-class probability >= {result["threshold"]:g}, digit-like), {result["classes_present"]}/10 classes ({counts}); '
            f'the classifier on held-out real digits: accuracy {c["heldout_accuracy"]:.1%} (8x8), {c["heldout_roundtrip_accuracy"]:.1%} '
            f'(via 16x16), recognised {c["heldout_roundtrip_recognised"]:.1%}'
            + (f'; the top class is the generated class for {result["label_agreement"]:.1%}' if 'label_agreement' in result else ''))

#----------------------------------------------------------------------------

def check_samples(folder: str, threshold: float = 0.8, min_score: float = 0.8, seed: int = 0,
                  json_path: Optional[str] = None) -> dict:
    """score_samples() with the verdict: adds min_score, passed and problems (failures()), prints the
    summary line, and writes the result as JSON to json_path (atomically) when given."""
    result = score_samples(folder, threshold=threshold, seed=seed)
    problems = failures(result, min_score)
    result.update(min_score=min_score, passed=not problems, problems=problems)
    print(summary_line(result))
    if json_path:
        text = json.dumps(result, indent=2).encode()
        dnnlib.util.write_atomic(json_path, lambda f: f.write(text))
        print(f'Wrote {json_path}')
    return result

#----------------------------------------------------------------------------

@click.command(context_settings=dict(cli.CONTEXT_SETTINGS, show_default=True))
@click.argument('folder', metavar='DIR', type=str)
@click.option('--threshold', help='Confidence a sample needs to count as recognised', metavar='FLOAT', type=click.FloatRange(min=0, max=1, min_open=True), default=0.8)
@click.option('--min-score', 'min_score', help='Fraction of samples that must be recognised', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.8)
@click.option('--json', 'json_path', help='Write the result as JSON to this file', metavar='FILE', type=str)
@click.option('--seed', help='Seed of the classifier\'s train/held-out split', metavar='INT', type=int, default=0)
@cli.debug_option
def cmdline(folder: str, threshold: float, min_score: float, json_path: Optional[str], seed: int, debug: bool):
    """Score generated 16x16 digit images in DIR with a classifier trained on scikit-learn's real digits."""
    with cli.one_line_errors(debug):
        try:
            result = check_samples(folder, threshold=threshold, min_score=min_score, seed=seed, json_path=json_path)
        except ImportError as err:  # scikit-learn is missing: the message says how to install it.
            raise click.ClickException(str(err)) from None
    if not result['passed']:
        raise click.ClickException('The samples fail the quality bar: ' + '; '.join(result['problems']) + '.')
    print('Passed.')

main = cmdline

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()
