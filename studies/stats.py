"""The statistics the D study reports: means with their standard errors, paired differences, and the
Frechet distance of a set of features, shared by its trained arm (studies/d_study.py) and its oracle
arm (studies/oracle.py)."""

import math
from typing import Optional, Sequence

import numpy as np

from metrics import evaluation


def mean_and_se(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """(mean, standard error of the mean) of independent values: sample std (n - 1) / sqrt(n);
    the standard error is None for fewer than 2 values, both are None for none."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None, None
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    return mean, float(x.std(ddof=1) / math.sqrt(x.size))


def beyond_2se(mean: Optional[float], se: Optional[float]) -> bool:
    """Whether a mean lies farther than 2 standard errors from zero (False without a positive SE)."""
    return bool(mean is not None and se is not None and se > 0 and abs(mean) > 2 * se)


def paired(values: dict) -> dict:
    """Mean ± SE over the keys (training seeds) of {seed: paired difference} (None values dropped),
    with the per-seed values, and whether the mean lies beyond 2 SE of zero."""
    seeds = sorted(s for s, v in values.items() if v is not None)
    mean, se = mean_and_se([values[s] for s in seeds])
    return dict(mean=mean, se=se, n=len(seeds), seeds=seeds, per_seed=[values[s] for s in seeds], beyond_2se=beyond_2se(mean, se))


def paired_samples(differences: np.ndarray) -> dict:
    """Mean ± SE of per-sample paired differences (e.g. recognised(setting) - recognised(base) for the
    same sampling seed), and whether the mean lies beyond 2 SE of zero."""
    mean, se = mean_and_se(np.asarray(differences, dtype=np.float64).tolist())
    return dict(mean=mean, se=se, n=int(len(differences)), beyond_2se=beyond_2se(mean, se))


def paired_bootstrap(value: float, resampled: np.ndarray) -> dict:
    """A difference of statistics computed on the same samples (value) with its standard error, the
    standard deviation of the same difference over common resamples (resampled [rounds])."""
    se = float(np.std(resampled, ddof=1)) if len(resampled) > 1 else None
    return dict(mean=float(value), se=se, rounds=int(len(resampled)), beyond_2se=beyond_2se(float(value), se))


def frechet_distance(features: np.ndarray, ref: dict) -> float:
    """fid.py's Frechet distance of features [N, F] (mean, unbiased covariance) to reference statistics."""
    f = features.astype(np.float64)
    return evaluation.calculate_fid_from_inception_stats(f.mean(axis=0), np.cov(f, rowvar=False, ddof=1), ref['mu'], ref['sigma'])
