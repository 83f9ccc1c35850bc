import json
from pathlib import Path

import pytest
import torch

from services.aggregator.checkpoint import CheckpointDir, load_checkpoint
from services.aggregator.config import parse_args
from services.aggregator.handlers import Aggregator
from services.aggregator.ledger import Ledger
from services.aggregator.models import Contribution, JobModel, settings_from_spec
from tessera.common.errors import StoreCorrupt
from tessera.ml.checkpoint import load_model, save_model
from tessera.v1 import common_pb2

_SPEC = common_pb2.JobSpec(
    model="mlp",
    dataset="digits",
    hidden_sizes=[8],
    optimizer="adam",
    learning_rate=0.01,
    aggregation="mean",
    tasks_per_round=1,
    rounds=2,
)


def _job(directory: Path | None, *, sync: bool = True) -> JobModel:
    torch.set_num_threads(1)
    settings = settings_from_spec("mlp", "digits", [8], "adam", 0.01, "mean", 1, 0)
    checkpoints = CheckpointDir(directory, sync=sync) if directory else None
    return JobModel("j", settings, Ledger(), checkpoints=checkpoints, spec={"model": "mlp"})


def _run_rounds(job: JobModel, rounds: range) -> None:
    for round_index in rounds:
        grads = {n: torch.full(s, 0.5) for n, (_, s) in job.parameter_metas.items()}
        job.add(Contribution("j", round_index, 0, "n", round_index, 4, 1.0), grads)
        job.close_round(round_index, 1)


@pytest.mark.parametrize("sync", [True, False])
def test_a_restored_job_continues_exactly_where_the_checkpoint_left_it(
    tmp_path: Path, sync: bool
) -> None:
    # Prepare: two rounds, checkpointed as they close (synced to disk or not).
    job = _job(tmp_path, sync=sync)
    _run_rounds(job, range(2))
    # Execute: a fresh process would build the job again and restore it.
    checkpoint = load_checkpoint(tmp_path, "j")
    assert checkpoint is not None
    fresh = _job(None)
    fresh.restore(checkpoint)
    # Assert
    assert fresh.version == 2 and checkpoint.spec == {"model": "mlp"}
    for name, tensor in job.snapshot(0)[1].items():
        assert torch.equal(fresh.snapshot(0)[1][name], tensor)
    assert fresh._optimizer.state_dict()["state"][0]["step"] == 2  # noqa: SLF001
    assert fresh.close_round(1, 1).model_version == 2  # closing again returns the stored result
    assert [p.name for p in (tmp_path / "j").iterdir()] == ["checkpoint.safetensors"]


def test_checkpoints_do_not_grow_with_the_number_of_rounds(tmp_path: Path) -> None:
    # Prepare
    job = _job(tmp_path)
    path = tmp_path / "j" / "checkpoint.safetensors"
    sizes = []
    # Execute
    for rounds in (range(0, 2), range(2, 30)):
        _run_rounds(job, rounds)
        sizes.append(path.stat().st_size)
    # Assert: one result each, and the same size after 2 rounds and after 30.
    meta = json.loads(load_model(path)[1]["tessera.checkpoint"])
    assert [r["round"] for r in meta["results"]] == [29]
    assert abs(sizes[1] - sizes[0]) < 64, sizes


def test_no_checkpoint_means_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path, "missing") is None


def test_a_checkpoint_without_its_metadata_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    save_model(tmp_path / "j" / "checkpoint.safetensors", {"model.w": torch.zeros(2)})
    with pytest.raises(StoreCorrupt, match="job 'j'"):
        load_checkpoint(tmp_path, "j")


def test_a_closed_job_is_let_go_and_comes_back_from_its_checkpoint(tmp_path: Path) -> None:
    # Prepare: a finished job of two rounds on an aggregator with checkpoints.
    aggregator = Aggregator(max_payload_bytes=1 << 30, checkpoints=CheckpointDir(tmp_path))
    spec = _SPEC
    aggregator.open_job("j", spec)
    job = aggregator.job("j")
    _run_rounds(job, range(2))
    weights = {k: v.clone() for k, v in job.snapshot(0)[1].items()}
    # Execute
    aggregator.close_job("j")
    back = aggregator.job("j")
    # Assert: a new object, rebuilt from disk, at the final version with the final weights.
    assert back is not job
    assert back.snapshot(0)[0] == 2
    assert all(torch.equal(back.snapshot(0)[1][k], v) for k, v in weights.items())
    aggregator.close()


def test_without_checkpoints_a_closed_job_stays_held(tmp_path: Path) -> None:
    aggregator = Aggregator(max_payload_bytes=1 << 30)
    aggregator.open_job("j", _SPEC)
    job = aggregator.job("j")
    aggregator.close_job("j")
    assert aggregator.job("j") is job
    aggregator.close()


def test_the_aggregator_syncs_checkpoints_unless_told_not_to() -> None:
    assert parse_args(["--checkpoint-dir", "c"]).checkpoint_sync
    assert not parse_args(["--checkpoint-dir", "c", "--no-checkpoint-sync"]).checkpoint_sync
