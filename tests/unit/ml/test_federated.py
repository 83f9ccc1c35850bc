from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.federated import dirichlet_split, dirichlet_task_indices, load_local_dataset

LABELS = torch.arange(10).repeat_interleave(100)  # 10 classes, 100 samples each


def _skew(parts: list[torch.Tensor]) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    distances = []
    for part in parts:
        if len(part):
            mix = torch.bincount(LABELS[part], minlength=10).double() / len(part)
            distances.append(float((mix - 0.1).abs().sum() / 2))
    return sum(distances) / len(distances)


def test_dirichlet_split_partitions_every_index_exactly_once() -> None:
    parts = dirichlet_split(LABELS, 7, 0.5, seed=3)
    assert len(parts) == 7 and all(p.dtype == torch.int64 for p in parts)
    assert sorted(torch.cat(parts).tolist()) == list(range(1000))
    assert all(
        torch.equal(a, b)
        for a, b in zip(parts, dirichlet_split(LABELS, 7, 0.5, seed=3), strict=True)
    )
    assert not all(
        torch.equal(a, b)
        for a, b in zip(parts, dirichlet_split(LABELS, 7, 0.5, seed=4), strict=True)
    )


def test_dirichlet_split_gets_more_skewed_as_alpha_shrinks() -> None:
    skews = [_skew(dirichlet_split(LABELS, 10, alpha, seed=0)) for alpha in (1000, 1.0, 0.1, 0.01)]
    assert skews == sorted(skews) and skews[0] < 0.1 and skews[-1] > 0.7


def test_dirichlet_split_accepts_numpy_labels_and_rejects_bad_arguments() -> None:
    from_numpy = dirichlet_split(LABELS.numpy(), 4, 1.0, seed=1)
    assert all(
        torch.equal(a, b)
        for a, b in zip(from_numpy, dirichlet_split(LABELS, 4, 1.0, seed=1), strict=True)
    )
    with pytest.raises(InvalidSpec, match=r"alpha \(0.0\) must be finite and > 0"):
        dirichlet_split(LABELS, 4, 0.0, seed=0)
    with pytest.raises(InvalidSpec, match=r"num_clients \(0\) must be >= 1"):
        dirichlet_split(LABELS, 0, 1.0, seed=0)
    with pytest.raises(InvalidSpec, match="labels must be a 1-D array of non-negative integers"):
        dirichlet_split(torch.rand(10), 2, 1.0, seed=0)


def test_dirichlet_task_indices_batch_within_the_task_part() -> None:
    part = dirichlet_split(LABELS, 4, 1.0, seed=5)[2]
    batch = dirichlet_task_indices(LABELS, 4, 2, alpha=1.0, batch_size=8, seed=5, round_index=1)
    assert len(batch) == 8 and set(batch.tolist()) <= set(part.tolist())
    again = dirichlet_task_indices(LABELS, 4, 2, alpha=1.0, batch_size=8, seed=5, round_index=1)
    assert torch.equal(batch, again)
    with pytest.raises(InvalidSpec, match="gets no samples from a Dirichlet split"):
        for task in range(50):
            dirichlet_task_indices(
                LABELS[:20], 50, task, alpha=0.01, batch_size=1, seed=0, round_index=0
            )


def _save(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _good() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.random((12, 2, 3, 3), dtype=np.float32),
        "y": rng.integers(0, 4, 12).astype(np.int64),
    }


def test_local_dataset_reads_plain_arrays(tmp_path: Path) -> None:
    arrays = _good()
    data = load_local_dataset(_save(tmp_path / "mine.npz", **arrays))
    assert data.name == "local" and data.input_shape == (2, 3, 3)
    assert data.train_x.shape == (12, 18) and data.train_x.dtype == torch.float32
    assert torch.equal(data.train_x, torch.from_numpy(arrays["x"].reshape(12, 18)))
    assert data.num_classes == int(arrays["y"].max()) + 1 and len(data.test_x) == 0
    with_test = load_local_dataset(
        _save(tmp_path / "split.npz", **arrays, x_test=arrays["x"][:3], y_test=arrays["y"][:3]),
        num_classes=10,
    )
    assert with_test.num_classes == 10 and with_test.test_x.shape == (3, 18)


def test_local_dataset_reads_compressed_archives(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "small.npz", **_good())
    assert len(load_local_dataset(tmp_path / "small.npz").train_y) == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": np.array([object()] * 12, dtype=object)}, r"array 'x' holds Python objects"),
        ({"x": np.zeros((12, 3))}, r"array 'x' holds float64; it must be float32"),
        ({"y": np.zeros(12, dtype=np.int32)}, r"array 'y' holds int32; it must be int64"),
        ({"y": np.zeros(11, dtype=np.int64)}, r"'x' has 12 samples but 'y' has 11 labels"),
        ({"y": np.zeros((12, 1), dtype=np.int64)}, r"array 'y' has shape \(12, 1\); it must be"),
        ({"x": np.zeros(12, dtype=np.float32)}, r"array 'x' has shape \(12,\); it must be"),
        ({"x": np.full((12, 2), np.nan, dtype=np.float32)}, r"array 'x' has non-finite values"),
        (
            {"y": np.full(12, -1, dtype=np.int64)},
            r"labels in 'y' must be in \[0, 1\); found -1..-1",
        ),
        ({"extra": np.zeros(1)}, r"has unexpected arrays \['extra'\]; allowed: x, y, x_test"),
        ({"x_test": np.zeros((1, 2), dtype=np.float32)}, "both 'x_test' and 'y_test' or neither"),
    ],
)
def test_local_dataset_rejects_bad_arrays_naming_the_problem(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    arrays = {"x": np.zeros((12, 2), dtype=np.float32), "y": np.zeros(12, dtype=np.int64)}
    with pytest.raises(InvalidSpec, match=message):
        load_local_dataset(_save(tmp_path / "bad.npz", **{**arrays, **change}))


def test_local_dataset_rejects_files_that_are_not_plain_archives(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="does not exist"):
        load_local_dataset(tmp_path / "missing.npz")
    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"x": [1.0], "y": [0]}))
    with pytest.raises(InvalidSpec, match=r"pickled.npz' is not a readable .npz archive"):
        load_local_dataset(tmp_path / "pickled.npz")
    np.save(tmp_path / "single.npy", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(InvalidSpec, match="holds a single array"):
        load_local_dataset(tmp_path / "single.npy")
    np.savez(tmp_path / "no_y.npz", x=np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(InvalidSpec, match="has no array 'y'; it needs 'x' .* and 'y'"):
        load_local_dataset(tmp_path / "no_y.npz")


def test_local_dataset_checks_labels_and_size_before_use(tmp_path: Path) -> None:
    path = _save(tmp_path / "mine.npz", **_good())
    with pytest.raises(InvalidSpec, match=r"labels in 'y' must be in \[0, 2\)"):
        load_local_dataset(path, num_classes=2)
    with pytest.raises(InvalidSpec, match="holds 960 bytes of arrays; at most 959"):
        load_local_dataset(path, max_bytes=959)
