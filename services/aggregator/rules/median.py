"""The coordinate-wise median.

Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018: each coordinate of the result is the median of that coordinate
over all contributions, so fewer than half of them cannot move it outside the range of the
honest values. With an even number of contributions the two middle values are averaged.
Contributions count equally, whatever their weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from services.aggregator.rules.base import Update, check_updates, stack, trimmed_mean

__all__ = ["Median"]


class Median:
    """The coordinate-wise median of all contributions."""

    name: ClassVar[str] = "median"
    streaming: ClassVar[bool] = False

    def aggregate(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """Return the median of every coordinate of every tensor.

        Raises:
            InvalidSpec: if there are no contributions or they disagree on tensor names, shapes
                or dtypes.
        """
        layout = check_updates(self.name, updates, 1, "at least 1 contribution")
        trim = (len(updates) - 1) // 2
        return {
            name: trimmed_mean(stack(updates, name, layout.compute_dtype), trim).to(dtype)
            for name, dtype in zip(layout.names, layout.dtypes, strict=True)
        }
