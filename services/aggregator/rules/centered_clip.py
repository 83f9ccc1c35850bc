"""Centred clipping with momentum.

Karimireddy, He & Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021.
Starting from the previous round's aggregate ``v``, each of ``iterations`` steps moves ``v`` by
the mean of the contributions' differences from it, each clipped to norm ``tau``:

    v <- v + (1/n) * sum_i (x_i - v) * min(1, tau / ||x_i - v||)

so no contribution can move the result by more than ``tau / n`` per step. Contributions are
vectors over all their tensors. The previous aggregate is the rule's state, which is what lets
workers' momentum (the paper's setting) wash out Byzantine noise across rounds; the first round
starts from zero. ``tau`` is in the units of the update norms, so tune it to them (the paper
uses one iteration). Contributions count equally, whatever their weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from services.aggregator.rules.base import (
    Layout,
    Update,
    check_updates,
    flatten,
    require_int,
    require_positive,
    unflatten,
)
from tessera.common.errors import InvalidSpec

__all__ = ["CenteredClip"]


def _describe(layout: Layout) -> str:
    return ", ".join(
        f"{name}{tuple(shape)}:{str(dtype).removeprefix('torch.')}"
        for name, shape, dtype in zip(layout.names, layout.shapes, layout.dtypes, strict=True)
    )


class CenteredClip:
    """Clipped steps from the previous aggregate towards the contributions.

    Keeps the previous aggregate between rounds: use one instance per job.

    Args:
        tau: the clipping radius.
        iterations: the number of clipping steps per round.

    Raises:
        InvalidSpec: if ``tau`` is not a finite number > 0 or ``iterations`` not an integer >= 1.
    """

    name: ClassVar[str] = "centered_clip"
    streaming: ClassVar[bool] = False

    def __init__(self, tau: float = 10.0, iterations: int = 1) -> None:
        self.tau = require_positive(self.name, "tau", tau)
        self.iterations = require_int(self.name, "iterations", iterations, 1)
        self._center: torch.Tensor | None = None
        self._layout: Layout | None = None

    def aggregate(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """Return the clipped aggregate and keep it as the next round's centre.

        Raises:
            InvalidSpec: if there are no contributions, they disagree on tensor names, shapes or
                dtypes, or their layout differs from the previous round's (call ``reset``).
        """
        layout = check_updates(self.name, updates, 1, "at least 1 contribution")
        vectors = flatten(updates, layout)
        if self._center is None or self._layout is None:
            center = vectors.new_zeros(vectors.shape[1])
        elif layout != self._layout:
            raise InvalidSpec(
                "centered_clip is centred on the previous round's aggregate, whose tensors "
                f"{_describe(self._layout)} differ from this round's {_describe(layout)}; "
                "reset the rule when the model changes"
            )
        else:
            center = self._center
        for _ in range(self.iterations):
            differences = vectors - center
            norms = torch.linalg.vector_norm(differences, dim=1)
            # A zero norm gives an infinite ratio, clamped to 1: the difference is kept as is.
            factors = (self.tau / norms).clamp(max=1.0)
            center = center + (differences * factors.unsqueeze(1)).mean(dim=0)
        self._center, self._layout = center, layout
        return unflatten(center, layout)

    def reset(self) -> None:
        """Forget the previous aggregate: the next round starts from zero."""
        self._center = None
        self._layout = None
