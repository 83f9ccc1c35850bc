from __future__ import annotations

import pytest
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import (
    CORPORA,
    DATASETS,
    DEFAULT_TEXT_BATCH,
    Dataset,
    eval_window_starts,
    load_data,
    load_dataset,
    task_batch_indices,
    task_window_starts,
)
from tessera.ml.text import TextCorpus


def test_digits_are_8x8_images_and_other_sets_default_to_flat() -> None:
    digits = load_dataset("digits")
    assert digits.input_shape == (1, 8, 8) and digits.kind == "classification"
    flat = Dataset("toy", torch.zeros(4, 6), torch.zeros(4), torch.zeros(1, 6), torch.zeros(1), 2)
    assert flat.input_shape == (6,)
    with pytest.raises(
        InvalidSpec, match=r"input_shape \(2, 2\) holds 4 values; the inputs have 6"
    ):
        Dataset(
            "toy", torch.zeros(4, 6), torch.zeros(4), torch.zeros(1, 6), torch.zeros(1), 2, (2, 2)
        )


def test_load_data_finds_both_kinds_and_names_every_choice() -> None:
    assert not DATASETS.keys() & CORPORA.keys()
    assert load_data("digits") is load_dataset("digits")
    assert isinstance(load_data("stdlib"), TextCorpus)
    with pytest.raises(InvalidSpec, match="unknown dataset 'mnist'; choose one of: digits, stdlib"):
        load_data("mnist")
    with pytest.raises(InvalidSpec, match="'local' is each worker's own file"):
        load_data("local")
    with pytest.raises(InvalidSpec, match="'stdlib' is a text corpus .*data sets are: digits"):
        load_dataset("stdlib")


def test_task_windows_are_deterministic_and_stay_inside_their_shard() -> None:
    # Prepare
    args = {"batch_size": 50, "seed": 3, "round_index": 2}
    # Execute
    shards = [task_window_starts(1000, 10, 4, t, **args) for t in range(4)]
    again = task_window_starts(1000, 10, 4, 1, **args)
    next_round = task_window_starts(1000, 10, 4, 1, batch_size=50, seed=3, round_index=3)
    # Assert: shard t holds bytes [250 t, 250 (t + 1)); an 11-byte window starting at s ends
    # at s + 10, so s <= 250 (t + 1) - 11.
    for t, starts in enumerate(shards):
        assert len(starts) == 50
        assert 250 * t <= int(starts.min()) and int(starts.max()) <= 250 * (t + 1) - 11
    assert torch.equal(again, shards[1]) and not torch.equal(next_round, shards[1])
    assert len(task_window_starts(1000, 10, 4, 0, batch_size=0, seed=3, round_index=0)) == (
        DEFAULT_TEXT_BATCH
    )


def test_task_windows_reject_bad_indices_and_shards_shorter_than_a_window() -> None:
    with pytest.raises(InvalidSpec, match=r"shard index \(4\) must be in \[0, 4\)"):
        task_window_starts(1000, 10, 4, 4, batch_size=1, seed=0, round_index=0)
    with pytest.raises(InvalidSpec, match="leaves 10 bytes per shard; a window needs 11"):
        task_window_starts(100, 10, 10, 0, batch_size=1, seed=0, round_index=0)


def test_eval_windows_are_evenly_spaced_distinct_and_bounded() -> None:
    assert eval_window_starts(111, 10, 5).tolist() == [0, 25, 50, 75, 100]
    assert eval_window_starts(14, 10, 64).tolist() == [0, 1, 2, 3]
    with pytest.raises(InvalidSpec, match="shorter than one window"):
        eval_window_starts(10, 10, 1)


def test_classification_batches_are_unchanged() -> None:
    # The digits demo's batches are part of its reproducibility.
    batch = task_batch_indices(100, 3, 1, batch_size=4, seed=7, round_index=5)
    assert (
        batch.tolist()
        == task_batch_indices(100, 3, 1, batch_size=4, seed=7, round_index=5).tolist()
    )
    generator = torch.Generator().manual_seed((7 * 1_000_003 + 5 * 7919 + 1) % (2**63))
    shard = torch.randperm(100, generator=torch.Generator().manual_seed(7))[1::3]
    assert torch.equal(batch, shard[torch.randperm(len(shard), generator=generator)[:4]])
