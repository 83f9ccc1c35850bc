import numpy as np
import pytest
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import load_dataset, shard_indices, stratified_split


def test_digits_is_the_full_uci_set_split_80_20_by_class() -> None:
    data = load_dataset("digits")
    assert data.train_x.shape[1:] == (64,) and data.num_classes == 10
    assert len(data.train_x) + len(data.test_x) == 1797
    assert 355 <= len(data.test_x) <= 365
    assert float(data.train_x.max()) == 1.0 and float(data.train_x.min()) == 0.0
    counts = torch.bincount(data.test_y, minlength=10)
    assert int(counts.min()) >= 35


def test_stratified_split_is_disjoint_complete_and_deterministic() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 30]).astype(np.int64)
    train, test = stratified_split(labels, test_fraction=0.5, seed=1)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(60))
    assert np.bincount(labels[test]).tolist() == [5, 10, 15]
    again = stratified_split(labels, test_fraction=0.5, seed=1)
    assert np.array_equal(again[0], train)


def test_shards_partition_the_items_identically_on_every_call() -> None:
    shards = [shard_indices(10, 3, i, seed=4) for i in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    assert torch.equal(shard_indices(10, 3, 1, seed=4), shards[1])
    with pytest.raises(InvalidSpec, match=r"shard index \(3\) must be in \[0, 3\)"):
        shard_indices(10, 3, 3, seed=4)


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(InvalidSpec, match="unknown dataset 'mnist'; choose one of: digits"):
        load_dataset("mnist")
