"""Training statistics: values reported during a tick, reduced across ranks at its end.

report(name, values) accumulates count, sum and sum of squares on the values' device (no host sync
per step); Collector.collect() sums those moments over all processes once per tick and returns
{name: {'num', 'mean', 'std'}} for stats.jsonl.
"""

from typing import Optional

import torch

from torch_utils import distributed

#----------------------------------------------------------------------------

class Collector:
    """Accumulates named statistics between collect() calls."""

    def __init__(self) -> None:
        self._moments: dict[str, torch.Tensor] = {}

    def report(self, name: str, values: torch.Tensor | float) -> None:
        """Add every element of `values` to statistic `name`."""
        values = torch.as_tensor(values).detach().flatten().to(torch.float64)
        if values.numel() == 0:
            return
        finite = values[torch.isfinite(values)] if values.is_floating_point() else values
        moments = torch.stack([torch.tensor(finite.numel(), dtype=torch.float64, device=values.device),
                               finite.sum(), finite.square().sum()])
        if name in self._moments:
            self._moments[name] = self._moments[name] + moments.to(self._moments[name].device)
        else:
            self._moments[name] = moments

    def collect(self, names: Optional[list[str]] = None) -> dict[str, dict[str, float]]:
        """Reduce over ranks (every rank must call this with the same names) and reset.
        The standard deviation is the population one, sqrt(E[x^2] - E[x]^2)."""
        names = sorted(self._moments) if names is None else names
        if not names:
            return {}
        device = next(iter(self._moments.values())).device if self._moments else torch.device('cpu')
        stacked = torch.stack([self._moments.get(n, torch.zeros(3, dtype=torch.float64, device=device)).to(device) for n in names])
        stacked = distributed.all_reduce_sum(stacked).cpu()
        self._moments = {}
        result = {}
        for name, (num, total, total_sq) in zip(names, stacked.tolist()):
            mean = total / num if num > 0 else float('nan')
            var = max(total_sq / num - mean ** 2, 0.0) if num > 0 else float('nan')
            result[name] = dict(num=num, mean=mean, std=var ** 0.5)
        return result
