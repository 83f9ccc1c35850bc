"""Data sets that every node can load without a network, and deterministic shards of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from tessera.common.errors import InvalidSpec

__all__ = ["DATASETS", "Dataset", "load_dataset", "shard_indices"]


@dataclass(frozen=True)
class Dataset:
    """A classification data set split into train and held-out parts."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        """Width of one flattened input."""
        return int(self.train_x[0].numel())


def _digits() -> Dataset:
    # The 8x8 digits (UCI) ship inside scikit-learn: real data with no download.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(x_train),
        train_y=torch.from_numpy(y_train.astype(np.int64)),
        test_x=torch.from_numpy(x_test),
        test_y=torch.from_numpy(y_test.astype(np.int64)),
        num_classes=10,
    )


DATASETS: dict[str, Callable[[], Dataset]] = {"digits": _digits}


@cache
def load_dataset(name: str) -> Dataset:
    """Load a data set by name (cached per process).

    Raises:
        InvalidSpec: the name is not in ``DATASETS``.
    """
    try:
        factory = DATASETS[name]
    except KeyError:
        raise InvalidSpec(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        ) from None
    return factory()


def shard_indices(num_items: int, num_shards: int, index: int, *, seed: int) -> torch.Tensor:
    """Indices of shard ``index`` of ``num_shards`` IID shards of ``num_items`` items.

    The permutation depends only on ``seed``, so every node computes the same shards.

    Raises:
        InvalidSpec: ``index`` is not in ``[0, num_shards)``.
    """
    if not 0 <= index < num_shards:
        raise InvalidSpec(f"shard index ({index}) must be in [0, {num_shards})")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_items, generator=generator)
    return permutation[index::num_shards]
