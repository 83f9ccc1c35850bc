"""The weighted mean, the aggregation of federated averaging.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017 (FedAvg): contributions are averaged with weights proportional to their sample
counts. It is optimal when every contribution is honest and breaks under a single Byzantine one
(Blanchard et al. 2017), which is what the robust rules are for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from services.aggregator.rules.base import Update, check_updates, check_weight
from tessera.common.errors import InvalidSpec

__all__ = ["Mean", "RunningMean"]


class RunningMean:
    """A weighted mean folded in one tensor at a time, as contributions stream in.

    Each name gets one sum buffer, allocated when the name is first seen (in float32, or float64
    for float64 tensors) and updated in place; nothing else is kept. Each name also has its own
    total weight, so the mean of a tensor covers exactly the contributions that supplied it:
    fold a contribution only once it has been validated, since folding cannot be undone.
    Not thread-safe.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._weights: dict[str, float] = {}

    def add_tensor(self, name: str, tensor: torch.Tensor, weight: float) -> None:
        """Fold ``weight * tensor`` into the sum kept for ``name``.

        Raises:
            InvalidSpec: if the weight is negative or not finite, the tensor is not floating, or
                its shape or dtype differs from the first tensor folded under ``name``.
        """
        weight = check_weight(weight)
        total = self._sums.get(name)
        if total is None:
            if not tensor.dtype.is_floating_point:
                raise InvalidSpec(f"mean combines floating tensors; {name!r} is {tensor.dtype}")
            accumulate = torch.promote_types(tensor.dtype, torch.float32)
            self._sums[name] = tensor.detach().to(accumulate, copy=True).mul_(weight)
            self._dtypes[name] = tensor.dtype
            self._weights[name] = weight
            return
        if tensor.shape != total.shape or tensor.dtype != self._dtypes[name]:
            raise InvalidSpec(
                f"tensor {name!r} has shape {tuple(tensor.shape)} and dtype {tensor.dtype}, "
                f"earlier contributions have {tuple(total.shape)} and {self._dtypes[name]}"
            )
        total.add_(tensor.detach(), alpha=weight)
        self._weights[name] += weight

    def add(self, update: Update) -> None:
        """Fold every tensor of a contribution, with the contribution's weight.

        Raises:
            InvalidSpec: as ``add_tensor``.
        """
        for name, tensor in update.tensors.items():
            self.add_tensor(name, tensor, update.weight)

    @property
    def weights(self) -> Mapping[str, float]:
        """The total weight folded under each name so far."""
        return dict(self._weights)

    def result(self) -> dict[str, torch.Tensor]:
        """Return the weighted mean of each name, in the dtype its tensors arrived in.

        The sums are left as they are, so folding may continue afterwards.

        Raises:
            InvalidSpec: if nothing has been folded or a name's total weight is zero.
        """
        if not self._sums:
            raise InvalidSpec("mean needs at least 1 contribution, got 0")
        means = {}
        for name, total in self._sums.items():
            weight = self._weights[name]
            if weight == 0:
                raise InvalidSpec(f"mean needs a positive total weight, got 0 for {name!r}")
            means[name] = total.div(weight).to(self._dtypes[name])
        return means


class Mean:
    """The weighted mean of all contributions."""

    name: ClassVar[str] = "mean"
    streaming: ClassVar[bool] = True

    def aggregate(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """Return ``sum(w_i * x_i) / sum(w_i)`` for every tensor.

        Raises:
            InvalidSpec: if there are no contributions, they disagree on tensor names, shapes or
                dtypes, or their total weight is zero.
        """
        check_updates(self.name, updates, 1, "at least 1 contribution")
        running = RunningMean()
        for update in updates:
            running.add(update)
        return running.result()
