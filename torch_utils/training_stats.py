"""Training statistics: values reported during a tick, reduced across ranks at its end.

report(name, values) accumulates count, sum, sum of squares and the count of non-finite values on
the values' device (no host sync per step); Collector.collect() sums those moments over all
processes once per tick and returns {name: {'num', 'mean', 'std', 'nonfinite'}} for stats.jsonl.

Non-finite values are kept, as in EDM: one NaN or inf makes the tick's mean NaN or inf, so a
divergence shows in the loss column of log.txt. stats.jsonl must stay strict JSON, which has no NaN
or Infinity, so json_safe() writes those means as null; 'nonfinite' counts the NaN/inf values.
"""

import math
from typing import Any, Optional

import torch

from torch_utils import distributed

_NUM_MOMENTS = 4  # [count, sum, sum of squares, count of NaN/inf]

#----------------------------------------------------------------------------

class Collector:
    """Accumulates named statistics between collect() calls."""

    def __init__(self) -> None:
        self._moments: dict[str, torch.Tensor] = {}

    def report(self, name: str, values: torch.Tensor | float) -> None:
        """Add every element of `values` (NaN and inf included) to statistic `name`."""
        values = torch.as_tensor(values).detach().flatten().to(torch.float64)
        if values.numel() == 0:
            return
        moments = torch.stack([torch.tensor(values.numel(), dtype=torch.float64, device=values.device),
                               values.sum(), values.square().sum(), (~torch.isfinite(values)).sum().to(torch.float64)])
        if name in self._moments:
            self._moments[name] = self._moments[name] + moments.to(self._moments[name].device)
        else:
            self._moments[name] = moments

    def collect(self, names: Optional[list[str]] = None) -> dict[str, dict[str, float]]:
        """Reduce over ranks (every rank must call this with the same names) and reset.
        num counts every value; mean is NaN or inf if a value was; std is the population one,
        sqrt(E[x^2] - E[x]^2), NaN when the mean is not finite; nonfinite counts the NaN/inf values."""
        names = sorted(self._moments) if names is None else names
        if not names:
            return {}
        device = next(iter(self._moments.values())).device if self._moments else torch.device('cpu')
        stacked = torch.stack([self._moments.get(n, torch.zeros(_NUM_MOMENTS, dtype=torch.float64, device=device)).to(device)
                               for n in names])
        stacked = distributed.all_reduce_sum(stacked).cpu()
        self._moments = {}
        result = {}
        for name, (num, total, total_sq, nonfinite) in zip(names, stacked.tolist()):
            mean = total / num if num > 0 else float('nan')
            std = math.sqrt(max(total_sq / num - mean ** 2, 0.0)) if num > 0 and math.isfinite(mean) else float('nan')
            result[name] = dict(num=num, mean=mean, std=std, nonfinite=int(nonfinite))
        return result

#----------------------------------------------------------------------------

def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float, in nested dicts and lists, replaced by None, so that
    json.dumps(..., allow_nan=False) writes strict JSON (null) that every reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
