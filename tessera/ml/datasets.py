"""Data sets that every node can load without a network, and deterministic shards of them.

Two kinds of data: classification ``Dataset``s (``DATASETS``, e.g. the 8x8 digits) and text
corpora for language modelling (``CORPORA``, e.g. ``"stdlib"``, see ``tessera.ml.text``).
``load_data`` loads either by name. A task's batch depends only on (seed, round, task), so a
reassigned task computes the same contribution on any node: ``task_batch_indices`` picks
samples from an IID shard, ``task_window_starts`` picks windows from a contiguous shard of a
corpus.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import ClassVar, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.text import TextCorpus, load_stdlib

__all__ = [
    "CORPORA",
    "DATASETS",
    "DEFAULT_TEXT_BATCH",
    "LOCAL_DATASET",
    "DataSource",
    "Dataset",
    "eval_window_starts",
    "load_data",
    "load_dataset",
    "shard_indices",
    "stratified_split",
    "task_batch_indices",
    "task_seed",
    "task_window_starts",
]

# Windows per task when a job asks for "the whole shard" of a corpus, which is no batch size.
DEFAULT_TEXT_BATCH = 16
# Not a registered data set: a job naming it trains each worker on its own file
# (``tessera.ml.federated.load_local_dataset``), which never leaves the worker.
LOCAL_DATASET = "local"


@dataclass(frozen=True)
class Dataset:
    """A classification data set split into train and held-out parts.

    Inputs are stored flat, ``(samples, num_features)``; ``input_shape`` says how to view one
    (``(1, 8, 8)`` for the digits) and defaults to ``(num_features,)``.

    Raises:
        InvalidSpec: ``input_shape`` does not hold ``num_features`` values.
    """

    kind: ClassVar[str] = "classification"

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.input_shape:
            object.__setattr__(self, "input_shape", (self.num_features,))
        elif math.prod(self.input_shape) != self.num_features:
            raise InvalidSpec(
                f"input_shape {self.input_shape} holds {math.prod(self.input_shape)} values; "
                f"the inputs have {self.num_features}"
            )

    @property
    def num_features(self) -> int:
        """Width of one flattened input."""
        return int(self.train_x[0].numel()) if len(self.train_x) else int(self.train_x.shape[-1])


DataSource: TypeAlias = Dataset | TextCorpus


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
        input_shape=(1, 8, 8),
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
CORPORA: dict[str, Callable[[], TextCorpus]] = {"stdlib": load_stdlib}


@cache
def load_dataset(name: str) -> Dataset:
    """Load a classification data set by name (cached per process).

    Raises:
        InvalidSpec: the name is not in ``DATASETS`` (the message says when it names a text
            corpus, which ``load_data`` loads).
    """
    try:
        factory = DATASETS[name]
    except KeyError:
        if name in CORPORA:
            raise InvalidSpec(
                f"dataset {name!r} is a text corpus for language modelling; classification "
                f"data sets are: {', '.join(sorted(DATASETS))}"
            ) from None
        raise InvalidSpec(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        ) from None
    return factory()


def load_data(name: str) -> DataSource:
    """Load a classification data set or a text corpus by name (cached per process).

    Raises:
        InvalidSpec: the name is in neither ``DATASETS`` nor ``CORPORA``.
    """
    if name in DATASETS:
        return load_dataset(name)
    factory = CORPORA.get(name)
    if factory is not None:
        return factory()
    if name == LOCAL_DATASET:
        raise InvalidSpec(
            f"dataset {name!r} is each worker's own file; a worker loads it with "
            "load_local_dataset(path)"
        )
    raise InvalidSpec(
        f"unknown dataset {name!r}; choose one of: {', '.join(sorted([*DATASETS, *CORPORA]))}"
    )


def shard_indices(num_items: int, num_shards: int, index: int, *, seed: int) -> torch.Tensor:
    """Indices of shard ``index`` of ``num_shards`` IID shards of ``num_items`` items.

    The permutation depends only on ``seed``, so every node computes the same shards.

    Raises:
        InvalidSpec: ``index`` is not in ``[0, num_shards)``.
    """
    if not 0 <= index < num_shards:
        raise InvalidSpec(f"shard index ({index}) must be in [0, {num_shards})")
    return _shard(num_items, num_shards, index, seed)


@lru_cache(maxsize=64)
def _shard(num_items: int, num_shards: int, index: int, seed: int) -> torch.Tensor:
    # Cached: every local step of a task draws its batch from the same shard. Callers only
    # index the tensor, never change it.
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
    generator = torch.Generator().manual_seed(task_seed(seed, round_index, task_index))
    return shard[torch.randperm(len(shard), generator=generator)[:batch_size]]


def task_seed(seed: int, round_index: int, task_index: int) -> int:
    """The random seed of one task of one round of a job."""
    return (seed * 1_000_003 + round_index * 7919 + task_index) % (2**63)


def task_window_starts(
    num_bytes: int,
    context: int,
    num_tasks: int,
    task_index: int,
    *,
    batch_size: int,
    seed: int,
    round_index: int,
) -> torch.Tensor:
    """Start offsets of the ``context + 1``-byte windows task ``task_index`` trains on.

    Shards are contiguous byte ranges, one per task, and a window never crosses its shard's
    end. ``batch_size`` windows (``DEFAULT_TEXT_BATCH`` when 0) are drawn with replacement from
    a generator seeded by (seed, round, task), as in ``task_batch_indices``.

    Raises:
        InvalidSpec: the index is out of range or a shard is shorter than one window.
    """
    if not 0 <= task_index < num_tasks:
        raise InvalidSpec(f"shard index ({task_index}) must be in [0, {num_tasks})")
    if context < 1:
        raise InvalidSpec(f"context ({context}) must be >= 1")
    low = num_bytes * task_index // num_tasks
    high = num_bytes * (task_index + 1) // num_tasks - context  # exclusive bound on starts
    if high <= low:
        raise InvalidSpec(
            f"a corpus of {num_bytes} bytes split into {num_tasks} shards leaves "
            f"{num_bytes // num_tasks} bytes per shard; a window needs {context + 1}"
        )
    generator = torch.Generator().manual_seed(task_seed(seed, round_index, task_index))
    count = batch_size or DEFAULT_TEXT_BATCH
    return torch.randint(low, high, (count,), generator=generator)


def eval_window_starts(num_bytes: int, context: int, count: int) -> torch.Tensor:
    """Start offsets of ``count`` evenly spaced ``context + 1``-byte windows (fewer if short).

    Raises:
        InvalidSpec: the text is shorter than one window or ``count`` < 1.
    """
    if count < 1:
        raise InvalidSpec(f"evaluation window count ({count}) must be >= 1")
    last = num_bytes - context - 1
    if last < 0:
        raise InvalidSpec(f"held-out text of {num_bytes} bytes is shorter than one window")
    count = min(count, last + 1)
    return torch.arange(count) * last // max(count - 1, 1)
