"""Federated data: non-IID partitions and data sets that never leave the worker that holds them.

``dirichlet_split`` simulates clients whose label mixes differ, after Hsu, Qi & Brown 2019
("Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification"): for every class, the shares of its samples that go to each client are drawn
from a symmetric Dirichlet distribution with concentration ``alpha``. A large ``alpha`` gives
every client nearly the global label mix; as ``alpha`` shrinks, each class concentrates on
fewer clients, and some clients may get no samples at all.

A job whose dataset is ``"local"`` (``LOCAL_DATASET``) trains each worker on a file of its own,
read by ``load_local_dataset``: a ``.npz`` archive of plain arrays, read without pickle.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import LOCAL_DATASET, Dataset, task_seed

__all__ = [
    "LOCAL_DATASET",
    "MAX_LOCAL_BYTES",
    "dirichlet_split",
    "dirichlet_task_indices",
    "load_local_dataset",
]

MAX_LOCAL_BYTES = 4 * 1024**3
_ARRAYS = {"x": np.dtype(np.float32), "y": np.dtype(np.int64)}
_OPTIONAL = {"x_test": np.dtype(np.float32), "y_test": np.dtype(np.int64)}


def dirichlet_split(
    labels: torch.Tensor | npt.NDArray[np.integer[Any]],
    num_clients: int,
    alpha: float,
    seed: int,
) -> list[torch.Tensor]:
    """Partition sample indices among ``num_clients`` with Dirichlet(``alpha``) label skew.

    Every index lands in exactly one client's part; each part is sorted (int64). The split
    depends only on the labels and the arguments.

    Raises:
        InvalidSpec: ``num_clients`` < 1, ``alpha`` not finite and > 0, or labels not a 1-D
            array of non-negative integers.
    """
    if num_clients < 1:
        raise InvalidSpec(f"num_clients ({num_clients}) must be >= 1")
    if not (math.isfinite(alpha) and alpha > 0):
        raise InvalidSpec(f"alpha ({alpha}) must be finite and > 0")
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise InvalidSpec(
            f"labels must be a 1-D array of non-negative integers; got {y.dtype} {y.shape}"
        )
    rng = np.random.default_rng(seed)
    parts: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(num_clients)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].append(chunk)
    return [
        torch.from_numpy(np.sort(np.concatenate(p)).astype(np.int64))
        if p
        else torch.empty(0, dtype=torch.int64)
        for p in parts
    ]


def dirichlet_task_indices(
    labels: torch.Tensor,
    num_tasks: int,
    task_index: int,
    *,
    alpha: float,
    batch_size: int,
    seed: int,
    round_index: int,
) -> torch.Tensor:
    """Like ``task_batch_indices``, but shards are a ``dirichlet_split`` of the labels.

    Raises:
        InvalidSpec: the task index is out of range, or the task's shard is empty (a small
            ``alpha`` with many tasks can leave a task without samples).
    """
    if not 0 <= task_index < num_tasks:
        raise InvalidSpec(f"shard index ({task_index}) must be in [0, {num_tasks})")
    shard = dirichlet_split(labels, num_tasks, alpha, seed)[task_index]
    if len(shard) == 0:
        raise InvalidSpec(
            f"task {task_index} of {num_tasks} gets no samples from a Dirichlet split with "
            f"alpha {alpha}; raise alpha or use fewer tasks"
        )
    if not batch_size or batch_size >= len(shard):
        return shard
    generator = torch.Generator().manual_seed(task_seed(seed, round_index, task_index))
    return shard[torch.randperm(len(shard), generator=generator)[:batch_size]]


def load_local_dataset(
    path: str | Path, *, num_classes: int | None = None, max_bytes: int = MAX_LOCAL_BYTES
) -> Dataset:
    """Read a worker's own classification data from a ``.npz`` archive, never with pickle.

    The archive holds ``x`` (float32, ``(samples, *input_shape)``) and ``y`` (int64 labels,
    ``(samples,)``), and optionally a held-out pair ``x_test``/``y_test`` of the same kinds;
    without it the held-out part is empty. Inputs are stored flat, with ``input_shape`` kept.
    ``num_classes`` defaults to the largest label plus one.

    Raises:
        InvalidSpec: the file is missing or not an ``.npz`` archive, an array is missing,
            unexpected, an object array, of the wrong dtype or shape, larger than
            ``max_bytes`` in total, or holds non-finite features or out-of-range labels.
    """
    where = f"local dataset {str(path)!r}"
    if num_classes is not None and num_classes < 1:
        raise InvalidSpec(f"num_classes ({num_classes}) must be >= 1")
    if not Path(path).is_file():
        raise InvalidSpec(f"{where} does not exist or is not a file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidSpec(f"{where} is not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidSpec(
            f"{where} holds a single array; save x and y with numpy.savez(path, x=..., y=...)"
        )
    with archive:
        arrays = _read_arrays(archive, where, max_bytes)
    x, y = arrays["x"], arrays["y"]
    x_test = arrays.get("x_test", np.empty((0, *x.shape[1:]), dtype=np.float32))
    y_test = arrays.get("y_test", np.empty(0, dtype=np.int64))
    _check_pair(where, "x", "y", x, y)
    _check_pair(where, "x_test", "y_test", x_test, y_test)
    if x_test.shape[1:] != x.shape[1:]:
        raise InvalidSpec(
            f"{where}: x_test samples have shape {x_test.shape[1:]}; x samples have {x.shape[1:]}"
        )
    for name, features in (("x", x), ("x_test", x_test)):
        if not np.isfinite(features).all():
            raise InvalidSpec(f"{where}: array {name!r} has non-finite values")
    largest = int(max(y.max(), y_test.max(initial=0)))
    classes = largest + 1 if num_classes is None else num_classes
    for name, labels in (("y", y), ("y_test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise InvalidSpec(
                f"{where}: labels in {name!r} must be in [0, {classes}); found "
                f"{int(labels.min())}..{int(labels.max())}"
            )
    width = math.prod(x.shape[1:])
    return Dataset(
        name=LOCAL_DATASET,
        train_x=torch.from_numpy(np.ascontiguousarray(x.reshape(len(x), width))),
        train_y=torch.from_numpy(np.ascontiguousarray(y)),
        test_x=torch.from_numpy(np.ascontiguousarray(x_test.reshape(len(x_test), width))),
        test_y=torch.from_numpy(np.ascontiguousarray(y_test)),
        num_classes=classes,
        input_shape=tuple(int(d) for d in x.shape[1:]),
    )


def _read_arrays(
    archive: np.lib.npyio.NpzFile, where: str, max_bytes: int
) -> dict[str, npt.NDArray[Any]]:
    names = set(archive.files)
    missing = sorted(_ARRAYS.keys() - names)
    if missing:
        raise InvalidSpec(
            f"{where} has no array {missing[0]!r}; it needs 'x' (float32 features) and "
            "'y' (int64 labels)"
        )
    allowed = _ARRAYS | _OPTIONAL
    unexpected = sorted(names - allowed.keys())
    if unexpected:
        raise InvalidSpec(
            f"{where} has unexpected arrays {unexpected}; allowed: {', '.join(allowed)}"
        )
    if ("x_test" in names) != ("y_test" in names):
        raise InvalidSpec(f"{where} must hold both 'x_test' and 'y_test' or neither")
    # Headers first: the dtype and size are checked before any data is read.
    total = 0
    for name in sorted(names):
        dtype, shape = _header(archive, name, where)
        if dtype != allowed[name]:
            kind = "Python objects, which are never unpickled" if dtype.hasobject else dtype
            raise InvalidSpec(
                f"{where}: array {name!r} holds {kind}; it must be {allowed[name]} "
                f"(convert with .astype(numpy.{allowed[name]}))"
            )
        total += math.prod(shape) * dtype.itemsize
    if total > max_bytes:
        raise InvalidSpec(f"{where} holds {total:,} bytes of arrays; at most {max_bytes:,}")
    try:
        return {name: archive[name] for name in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidSpec(f"{where} is corrupt ({exc})") from exc


def _header(
    archive: np.lib.npyio.NpzFile, name: str, where: str
) -> tuple[np.dtype[Any], tuple[int, ...]]:
    if archive.zip is None:
        raise InvalidSpec(f"{where} was closed while it was being read")
    try:
        with archive.zip.open(f"{name}.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise InvalidSpec(f"{where}: array {name!r} uses .npy format {version}")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise InvalidSpec(f"{where}: array {name!r} has an unreadable header ({exc})") from exc
    return dtype, tuple(shape)


def _check_pair(
    where: str, x_name: str, y_name: str, x: npt.NDArray[Any], y: npt.NDArray[Any]
) -> None:
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise InvalidSpec(
            f"{where}: array {x_name!r} has shape {x.shape}; it must be (samples, features...) "
            "with at least one feature"
        )
    if y.ndim != 1:
        raise InvalidSpec(f"{where}: array {y_name!r} has shape {y.shape}; it must be (samples,)")
    if len(x) != len(y):
        raise InvalidSpec(
            f"{where}: {x_name!r} has {len(x)} samples but {y_name!r} has {len(y)} labels"
        )
    if x_name == "x" and len(x) == 0:
        raise InvalidSpec(f"{where} has no training samples")
