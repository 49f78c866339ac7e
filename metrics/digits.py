"""A detector for fid.py made for the 16x16 digits of the quick start: a small convolutional classifier
trained on the real digits in seconds on a CPU, saved as a TorchScript file that `fid.py
--detector=PATH` accepts. The D study (studies/d_study.py) scores its samples with it:

    FD-digits          the Frechet distance that fid.py computes from the detector's features
                       (fid.py's own code, as FID is computed from Inception-v3's), and
    recognised share   the fraction of samples whose most likely class has probability >= 0.8 and
                       is the class the sample was generated for.

    python -m metrics.digits --data=datasets/digits-16x16.zip --dest=digits-detector.pt

Inception-v3 sees 16x16 digits at 299x299 as blurry blobs of an ImageNet class; a detector trained
on the data itself measures what matters at this scale. The detector is called as fid.py calls
Inception-v3: net(uint8 images [N, 3, H, W], return_features=True) -> features [N, FEATURES], and
net(images) -> class probabilities [N, 10]; fid.py repeats grayscale images to three channels, and
the detector takes their mean.

A classifier alone is confident about anything, noise included, so it is trained with outlier
exposure (Hendrycks et al. 2019): beside the real digits (cross-entropy to their class), images of
pure noise and real digits drowned in noise are trained towards the uniform distribution over the
ten classes, so that a noisy or broken sample is not counted as recognised. The held-out quarter of
the real digits (stratified by class) measures the detector: its accuracy, the share of held-out
digits that the rule above recognises (what a perfect generator would score), and the share of
fresh noise images it recognises (what it should not).
"""

if __name__ == '__main__':
    from torch_utils.threads import use_passive_threads
    use_passive_threads()  # Before anything imports torch (torch_utils/threads.py).


import json
import os
import time
from typing import Optional

import click
import numpy as np
import torch

import dnnlib
from torch_utils import cli, rng
from training.dataset import ImageFolderDataset

VERSION = 1                 # Of the recipe below; a detector file of another version is trained again.
RESOLUTION = 16
NUM_CLASSES = 10
FEATURES = 32               # Feature dimension: small, so that 100-200 samples estimate the covariance.
THRESHOLD = 0.8             # Top-class probability of a recognised sample.
HELDOUT_FRACTION = 0.25
EPOCHS = 20
BATCH = 64
LR = 2e-3
OUTLIER_WEIGHT = 0.5        # Weight of the outlier-exposure term against the cross-entropy of the digits.

#----------------------------------------------------------------------------
# The network.

class DigitsNet(torch.nn.Module):
    """A 3x3 convolution (16 channels) and 2x2 average pooling to 8x8, two 3x3 convolutions (32
    channels) and pooling to 4x4, a linear layer to FEATURES features and a linear classifier on
    those; SiLU after every layer but the last (31k parameters).
    forward(x uint8 [N, C, 16, 16], return_features) -> features [N, FEATURES] or softmax
    probabilities [N, 10]; pixel values are mapped to [-1, 1] and the channels averaged."""

    def __init__(self):
        super().__init__()
        self.conv0 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * (RESOLUTION // 4) ** 2, FEATURES)
        self.out = torch.nn.Linear(FEATURES, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float images in [-1, 1] [N, 1, 16, 16] -> features [N, FEATURES]."""
        act = torch.nn.functional.silu
        x = torch.nn.functional.avg_pool2d(act(self.conv0(x)), 2)
        x = torch.nn.functional.avg_pool2d(act(self.conv2(act(self.conv1(x)))), 2)
        return act(self.fc(x.flatten(1)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dim() != 4 or x.shape[2] != 16 or x.shape[3] != 16:  # TorchScript: RESOLUTION as a literal.
            raise ValueError('the digits detector takes 16x16 images [N, C, 16, 16]')
        x = x.to(torch.float32).mean(dim=1, keepdim=True) / 127.5 - 1
        if return_features:
            return self.features(x)
        return torch.softmax(self.logits(x), dim=1)

#----------------------------------------------------------------------------
# Data.

def load_digits_dataset(data: str) -> tuple[np.ndarray, np.ndarray]:
    """The images of a labelled dataset of 16x16 digits (dataset_tool.py's layout, e.g. the quick
    start's datasets/digits-16x16.zip) as uint8 [N, 16, 16] (channels averaged) and labels int64 [N]."""
    dataset = ImageFolderDataset(data, use_labels=True)
    if dataset.resolution != RESOLUTION or dataset.label_dim != NUM_CLASSES or not dataset.has_onehot_labels:
        raise ValueError(f'{data} holds {dataset.resolution}x{dataset.resolution} images with {dataset.label_dim or "no"} class labels; '
                         f'the digits detector needs {RESOLUTION}x{RESOLUTION} images of {NUM_CLASSES} classes (the quick start\'s digits).')
    images = np.stack([dataset[i][0].mean(axis=0) for i in range(len(dataset))])
    labels = np.array([int(dataset.get_label(i).argmax()) for i in range(len(dataset))], dtype=np.int64)
    return np.rint(images).astype(np.uint8), labels


def split_heldout(labels: np.ndarray, seed: int = 0, fraction: float = HELDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): in each class, round(fraction * count) images chosen at random
    by `seed` are held out."""
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        heldout.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W] in [-1, 1], as DigitsNet.forward maps them."""
    return torch.as_tensor(images).to(torch.float32)[:, None] / 127.5 - 1


def shift_images(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image of x [N, 1, H, W] moved by -1, 0 or +1 pixels in each direction, filled with the
    background (-1): the generated digits need not sit exactly where the real ones do."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1], value=-1.0)
    dy = torch.randint(0, 3, [n], generator=gen)
    dx = torch.randint(0, 3, [n], generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def make_outliers(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """As many non-digits as x [N, 1, H, W] holds: half pure Gaussian noise (random mean and std), half
    the digits of x with Gaussian noise of std 0.5 to 1.5 added; all clipped to [-1, 1]."""
    n = x.shape[0]
    half = n // 2
    mean = torch.rand([half, 1, 1, 1], generator=gen) * 2 - 1
    std = torch.rand([half, 1, 1, 1], generator=gen) * 0.9 + 0.1
    noise = mean + std * torch.randn([half, *x.shape[1:]], generator=gen)
    level = torch.rand([n - half, 1, 1, 1], generator=gen) + 0.5
    noisy = x[half:] + level * torch.randn([n - half, *x.shape[1:]], generator=gen)
    return torch.cat([noise, noisy]).clamp(-1, 1)

#----------------------------------------------------------------------------
# Training and measuring.

def train_detector(images: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = EPOCHS) -> DigitsNet:
    """DigitsNet trained on uint8 images [N, 16, 16] with labels [N]: Adam (lr 2e-3, batch 64) for
    `epochs` passes, each batch the shifted digits (cross-entropy to their class) and as many outliers
    (make_outliers; cross-entropy to the uniform distribution, weight OUTLIER_WEIGHT). Deterministic:
    the initialisation, the order and every random draw come from `seed`."""
    gen = rng.make_generator(seed)
    with rng.seeded_global_rng(seed):  # The layers initialise from torch's global generator.
        net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x_all, y_all = to_input(images), torch.as_tensor(labels)
    net.train()
    for _epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            x = shift_images(x_all[idx], gen)
            outliers = make_outliers(x, gen)
            loss = torch.nn.functional.cross_entropy(net.logits(x), y_all[idx])
            log_p = torch.log_softmax(net.logits(outliers), dim=1)
            loss = loss + OUTLIER_WEIGHT * (-log_p.mean(dim=1)).mean()  # Cross-entropy to the uniform distribution.
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def recognised(probs: np.ndarray, labels: Optional[np.ndarray] = None, threshold: float = THRESHOLD) -> np.ndarray:
    """bool [N]: the top class of probs [N, C] has probability >= threshold and, when labels [N] (the
    class each image was generated for) are given, is that class."""
    ok = probs.max(axis=1) >= threshold
    if labels is not None:
        ok &= probs.argmax(axis=1) == labels
    return ok


@torch.no_grad()
def evaluate(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """The detector on held-out uint8 digits [N, 16, 16]: accuracy, recognised share (recognised() with
    the labels), and the recognised share of as many outliers (make_outliers with `seed`: noise and
    noisy digits) without labels, which should be near 0."""
    x = torch.as_tensor(images)[:, None].expand(-1, 3, -1, -1)
    probs = net(x).numpy()
    outliers = make_outliers(to_input(images), rng.make_generator(seed + 1))
    outlier_probs = net(torch.round((outliers + 1) * 127.5).to(torch.uint8).expand(-1, 3, -1, -1)).numpy()
    return dict(heldout_accuracy=float((probs.argmax(axis=1) == labels).mean()),
                heldout_recognised=float(recognised(probs, labels).mean()),
                outliers_recognised=float(recognised(outlier_probs).mean()))

#----------------------------------------------------------------------------

def info_path(dest: str) -> str:
    """The JSON beside a detector file: digits-detector.pt -> digits-detector.json."""
    return os.path.splitext(dest)[0] + '.json'


def build_detector(data: str, dest: str, seed: int = 0, progress: bool = True) -> dict:
    """Train the digits detector on 75% of the labelled digits in `data` and save it with torch.jit
    to `dest`, with a JSON beside it (info_path) holding its held-out scores; both are written
    atomically. A detector that `dest` already holds for the same data (SHA-256), seed and VERSION is
    reused. Returns the info: data_sha256, seed, version, features, threshold, train_images,
    heldout_images, heldout_accuracy, heldout_recognised, outliers_recognised, seconds, sha256."""
    data_sha256 = dnnlib.util.file_sha256(data) if os.path.isfile(data) else None
    key = dict(data_sha256=data_sha256, seed=seed, version=VERSION)
    if os.path.isfile(dest) and os.path.isfile(info_path(dest)):
        with open(info_path(dest), encoding='utf-8') as f:
            info = json.load(f)
        if all(info.get(k) == v for k, v in key.items()) and info.get('sha256') == dnnlib.util.file_sha256(dest):
            return info
    start = time.time()
    images, labels = load_digits_dataset(data)
    train_idx, heldout_idx = split_heldout(labels, seed)
    net = train_detector(images[train_idx], labels[train_idx], seed)
    info = dict(key, features=FEATURES, threshold=THRESHOLD, train_images=int(len(train_idx)), heldout_images=int(len(heldout_idx)),
                **evaluate(net, images[heldout_idx], labels[heldout_idx], seed), seconds=time.time() - start)
    scripted = torch.jit.script(net)
    dnnlib.util.write_atomic(dest, lambda f: torch.jit.save(scripted, f))
    info['sha256'] = dnnlib.util.file_sha256(dest)
    dnnlib.util.write_atomic(info_path(dest), lambda f: f.write((json.dumps(info, indent=2) + '\n').encode()))
    if progress:
        print(describe(info, dest), flush=True)
    return info


def describe(info: dict, dest: str) -> str:
    return (f'Digits detector {dest}: held-out accuracy {info["heldout_accuracy"]:.1%}, held-out digits recognised '
            f'{info["heldout_recognised"]:.1%}, noise images recognised {info["outliers_recognised"]:.1%} '
            f'({info["train_images"]} training and {info["heldout_images"]} held-out digits, {info["seconds"]:.0f} s)')

#----------------------------------------------------------------------------

@click.command(context_settings=dict(cli.CONTEXT_SETTINGS, show_default=True))
@click.option('--data', help='Labelled 16x16 digits (the quick start\'s dataset)', metavar='ZIP|DIR', type=str, default='datasets/digits-16x16.zip')
@click.option('--dest', help='Where to save the TorchScript detector (and its .json beside it)', metavar='PT', type=str, required=True)
@click.option('--seed', help='Seed of the held-out split and the training', metavar='INT', type=int, default=0)
@cli.debug_option
def cmdline(data: str, dest: str, seed: int, debug: bool):
    """Train the digits detector for fid.py --detector (studies/d_study.py's FD-digits)."""
    with cli.one_line_errors(debug):
        info = build_detector(data, dest, seed, progress=False)
    print(describe(info, dest))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()
