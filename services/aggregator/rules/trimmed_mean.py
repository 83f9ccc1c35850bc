"""The coordinate-wise trimmed mean.

Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018: for each coordinate, drop the ``f`` largest and ``f`` smallest
values and average the rest, which tolerates up to ``f`` Byzantine contributions. Needs
``n > 2f``. Contributions count equally, whatever their weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from services.aggregator.rules.base import (
    Update,
    check_updates,
    require_int,
    stack,
    trimmed_mean,
)

__all__ = ["TrimmedMean"]


class TrimmedMean:
    """The mean of each coordinate after trimming ``f`` values from each side.

    Args:
        f: how many values to drop at each end, the number of Byzantine contributions tolerated.

    Raises:
        InvalidSpec: if ``f`` is not an integer >= 0.
    """

    name: ClassVar[str] = "trimmed_mean"
    streaming: ClassVar[bool] = False

    def __init__(self, f: int = 1) -> None:
        self.f = require_int(self.name, "f", f, 0)

    def aggregate(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """Return the trimmed mean of every coordinate of every tensor.

        Raises:
            InvalidSpec: if there are not more than ``2f`` contributions or they disagree on
                tensor names, shapes or dtypes.
        """
        needed = 2 * self.f + 1
        layout = check_updates(
            self.name, updates, needed, f"n > 2f contributions (f={self.f} needs {needed})"
        )
        return {
            name: trimmed_mean(stack(updates, name, layout.compute_dtype), self.f).to(dtype)
            for name, dtype in zip(layout.names, layout.dtypes, strict=True)
        }
