"""Data sets that every node can load without a network, and deterministic shards of them."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from tessera.common.errors import InvalidSpec

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "shard_indices",
    "stratified_split",
    "task_batch_indices",
]


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
    # The UCI 8x8 digits ship inside scikit-learn as a CSV file: real data with no download.
    # Reading the file directly skips importing scikit-learn (1.5 s per process), which matters
    # when a laptop starts a whole cluster at once.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise InvalidSpec("dataset 'digits' needs scikit-learn installed")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = table[:, :-1] / 16.0
    y = table[:, -1].astype(np.int64)
    train, test = stratified_split(y, test_fraction=0.2, seed=0)
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(x[train]),
        train_y=torch.from_numpy(y[train]),
        test_x=torch.from_numpy(x[test]),
        test_y=torch.from_numpy(y[test]),
        num_classes=10,
    )


def stratified_split(
    labels: npt.NDArray[np.int64], *, test_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices of a train/test split that keeps each class's share in both parts."""
    rng = np.random.default_rng(seed)
    train: list[npt.NDArray[np.int64]] = []
    test: list[npt.NDArray[np.int64]] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(len(members) * test_fraction)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


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


def task_batch_indices(
    num_items: int,
    num_tasks: int,
    task_index: int,
    *,
    batch_size: int,
    seed: int,
    round_index: int,
) -> torch.Tensor:
    """The samples task ``task_index`` of round ``round_index`` trains on.

    A batch of ``batch_size`` drawn from the task's shard (the whole shard when ``batch_size``
    is 0 or larger than the shard). It depends only on its arguments, so a reassigned task
    computes the same contribution on any node.
    """
    shard = shard_indices(num_items, num_tasks, task_index, seed=seed)
    if not batch_size or batch_size >= len(shard):
        return shard
    generator = torch.Generator().manual_seed(
        (seed * 1_000_003 + round_index * 7919 + task_index) % (2**63)
    )
    return shard[torch.randperm(len(shard), generator=generator)[:batch_size]]
