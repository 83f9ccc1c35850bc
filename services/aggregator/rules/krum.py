"""Krum and Multi-Krum.

Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017. Each contribution, seen as one vector over all its tensors, is
scored by the sum of squared distances to its ``n - f - 2`` nearest neighbours; Krum returns the
contribution with the lowest score and Multi-Krum the mean of the ``m`` lowest. Tolerates ``f``
Byzantine contributions when ``n >= 2f + 3``. Contributions count equally, whatever their weights.
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
    unflatten,
)
from tessera.common.errors import InvalidSpec

__all__ = ["Krum"]


class Krum:
    """The mean of the ``m`` contributions closest to their neighbours (``m = 1``: Krum).

    Args:
        f: the number of Byzantine contributions to tolerate.
        m: how many of the best-scored contributions to average, at most ``n - f``.

    Raises:
        InvalidSpec: if ``f`` is not an integer >= 0 or ``m`` not an integer >= 1.
    """

    name: ClassVar[str] = "krum"
    streaming: ClassVar[bool] = False

    def __init__(self, f: int = 1, m: int = 1) -> None:
        self.f = require_int(self.name, "f", f, 0)
        self.m = require_int(self.name, "m", m, 1)

    def select(self, updates: Sequence[Update]) -> list[int]:
        """Return the indices of the ``m`` contributions Krum keeps, best first.

        Ties go to the earlier contribution.

        Raises:
            InvalidSpec: if there are fewer than ``2f + 3`` contributions, ``m > n - f``, or the
                contributions disagree on tensor names, shapes or dtypes.
        """
        return self._select(updates)[0]

    def aggregate(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """Return the mean of the selected contributions.

        Raises:
            InvalidSpec: as ``select``.
        """
        chosen, vectors, layout = self._select(updates)
        return unflatten(vectors[chosen].mean(dim=0), layout)

    def _select(self, updates: Sequence[Update]) -> tuple[list[int], torch.Tensor, Layout]:
        n, f = len(updates), self.f
        needed = 2 * f + 3
        layout = check_updates(
            self.name, updates, needed, f"n >= 2f + 3 contributions (f={f} needs {needed})"
        )
        if self.m > n - f:
            raise InvalidSpec(
                f"multi-krum averages at most n - f contributions; m={self.m} with n={n}, f={f}"
            )
        vectors = flatten(updates, layout)
        # The direct difference formula; the matrix-product shortcut cancels badly for
        # contributions that are close to each other, which are the ones Krum must rank.
        distances = torch.cdist(vectors, vectors, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = distances.square().sort(dim=1).values
        # Column 0 holds each contribution's zero distance to itself.
        scores = nearest[:, 1 : n - f - 1].sum(dim=1)
        chosen = torch.argsort(scores, stable=True)[: self.m]
        return chosen.tolist(), vectors, layout
