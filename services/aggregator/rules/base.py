"""The aggregation-rule interface and the validation and tensor plumbing the rules share.

A rule combines the contributions of one round (gradients or pseudo-gradients, one ``Update``
each) into a single update. The weighted mean trusts every contribution and its weight; the
robust rules bound what a minority of faulty or Byzantine contributions can do, and treat all
contributions alike: a weight is a claim made by the contributor, so honouring it would let one
Byzantine node outvote the rest by claiming a large sample count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from tessera.common.errors import InvalidSpec

__all__ = [
    "AggregationRule",
    "Layout",
    "Update",
    "check_updates",
    "check_weight",
    "flatten",
    "require_int",
    "require_positive",
    "stack",
    "trimmed_mean",
    "unflatten",
]


def check_weight(weight: float) -> float:
    """Return ``weight`` as a float if it is finite and non-negative.

    Raises:
        InvalidSpec: otherwise.
    """
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidSpec(f"weight ({weight!r}) must be a number")
    if not math.isfinite(weight) or weight < 0:
        raise InvalidSpec(f"weight ({weight}) must be finite and >= 0")
    return float(weight)


@dataclass(frozen=True)
class Update:
    """One contribution to a round.

    Attributes:
        tensors: the contribution, by parameter name; floating tensors.
        weight: how much it counts in a weighted mean, usually its sample count.

    Raises:
        InvalidSpec: if the weight is negative or not finite.
    """

    tensors: Mapping[str, torch.Tensor]
    weight: float

    def __post_init__(self) -> None:
        check_weight(self.weight)


class AggregationRule(Protocol):
    """Combines the contributions of one round into one update.

    ``streaming`` rules (the mean) can also be folded one contribution at a time with
    ``RunningMean``; the others need all contributions at once. A rule instance may keep state
    between rounds (centred clipping does), so use one instance per job.
    """

    name: ClassVar[str]
    streaming: ClassVar[bool]

    def aggregate(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """Return the combined update, with the names, shapes and dtypes of the contributions.

        Raises:
            InvalidSpec: if there are too few contributions for the rule's settings, the
                contributions disagree on tensor names, shapes or dtypes, a tensor is not
                floating, or (for the mean) the total weight is zero.
        """
        ...


def require_int(rule: str, option: str, value: object, minimum: int) -> int:
    """Return an integer option of a rule if it is at least ``minimum``.

    Raises:
        InvalidSpec: if the value is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSpec(f"{rule} option {option} ({value!r}) must be an integer >= {minimum}")
    return value


def require_positive(rule: str, option: str, value: object) -> float:
    """Return a real option of a rule if it is finite and positive.

    Raises:
        InvalidSpec: otherwise.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidSpec(f"{rule} option {option} ({value!r}) must be a finite number > 0")
    return float(value)


@dataclass(frozen=True)
class Layout:
    """Names (sorted), shapes and dtypes of the tensors every contribution of a round carries."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype rules compute in: float32, or float64 if any tensor is float64."""
        dtype = torch.float32
        for each in self.dtypes:
            dtype = torch.promote_types(dtype, each)
        return dtype


def _layout_of(update: Update) -> Layout:
    names = tuple(sorted(update.tensors))
    return Layout(
        names,
        tuple(update.tensors[name].shape for name in names),
        tuple(update.tensors[name].dtype for name in names),
    )


def check_updates(rule: str, updates: Sequence[Update], needed: int, why: str) -> Layout:
    """Validate a round's contributions and return their common layout.

    Args:
        rule: the rule's name, for messages.
        updates: the contributions.
        needed: the least number of contributions the rule accepts.
        why: that requirement in words, e.g. ``"n >= 2f + 3 contributions (f=2 needs 7)"``.

    Raises:
        InvalidSpec: if there are fewer than ``needed`` contributions, a tensor is not floating,
            or a contribution's names, shapes or dtypes differ from the first one's.
    """
    if len(updates) < max(needed, 1):
        raise InvalidSpec(f"{rule} needs {why}, got {len(updates)}")
    layout = _layout_of(updates[0])
    for name, dtype in zip(layout.names, layout.dtypes, strict=True):
        if not dtype.is_floating_point:
            raise InvalidSpec(f"{rule} combines floating tensors; {name!r} is {dtype}")
    for index, update in enumerate(updates[1:], start=1):
        other = _layout_of(update)
        if other.names != layout.names:
            raise InvalidSpec(
                f"contribution {index} has tensors {list(other.names)}, "
                f"contribution 0 has {list(layout.names)}"
            )
        for name, want, got in zip(layout.names, layout.shapes, other.shapes, strict=True):
            if want != got:
                raise InvalidSpec(
                    f"tensor {name!r} of contribution {index} has shape {tuple(got)}, "
                    f"contribution 0 has {tuple(want)}"
                )
        for name, want_dtype, got_dtype in zip(
            layout.names, layout.dtypes, other.dtypes, strict=True
        ):
            if want_dtype != got_dtype:
                raise InvalidSpec(
                    f"tensor {name!r} of contribution {index} is {got_dtype}, "
                    f"contribution 0 has {want_dtype}"
                )
    return layout


def stack(updates: Sequence[Update], name: str, dtype: torch.dtype) -> torch.Tensor:
    """Return one tensor's values from every contribution, stacked along a new first dimension."""
    return torch.stack([update.tensors[name].detach().to(dtype) for update in updates])


def flatten(updates: Sequence[Update], layout: Layout) -> torch.Tensor:
    """Return an ``(n, d)`` matrix: each contribution's tensors concatenated in layout order."""
    sizes = [shape.numel() for shape in layout.shapes]
    rows = torch.empty((len(updates), sum(sizes)), dtype=layout.compute_dtype)
    for row, update in zip(rows, updates, strict=True):
        for part, name in zip(torch.split(row, sizes), layout.names, strict=True):
            part.copy_(update.tensors[name].detach().reshape(-1))
    return rows


def unflatten(vector: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    """Split a flat vector back into named tensors of the layout's shapes and dtypes."""
    sizes = [shape.numel() for shape in layout.shapes]
    parts = torch.split(vector, sizes)
    return {
        name: part.reshape(shape).to(dtype)
        for name, part, shape, dtype in zip(
            layout.names, parts, layout.shapes, layout.dtypes, strict=True
        )
    }


def trimmed_mean(stacked: torch.Tensor, trim: int) -> torch.Tensor:
    """Return the mean along dimension 0 after dropping the ``trim`` lowest and highest values.

    With ``trim = (n - 1) // 2`` this is the coordinate-wise median (the mean of the two middle
    values when ``n`` is even).
    """
    n = stacked.shape[0]
    if trim == 0:
        return stacked.mean(dim=0)
    return stacked.sort(dim=0).values[trim : n - trim].mean(dim=0)
