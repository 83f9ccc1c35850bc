from pathlib import Path

import torch

from services.aggregator.checkpoint import load_checkpoint
from services.aggregator.ledger import Decision, Ledger
from services.aggregator.models import Contribution, JobModel, settings_from_spec


def _job(ledger: Ledger, directory: Path) -> JobModel:
    torch.set_num_threads(1)
    settings = settings_from_spec("mlp", "digits", [8], "adam", 0.01, "mean", 1, 0)
    return JobModel("j", settings, ledger, checkpoints=directory, spec={"model": "mlp"})


def test_a_restored_job_continues_exactly_where_the_checkpoint_left_it(tmp_path: Path) -> None:
    # Prepare: two rounds, checkpointed as they close.
    ledger = Ledger()
    job = _job(ledger, tmp_path)
    for round_index in range(2):
        grads = {n: torch.full(s, 0.5) for n, (_, s) in job.parameter_metas.items()}
        job.add(Contribution("j", round_index, 0, "n", round_index, 4, 1.0), grads)
        job.close_round(round_index, 1)
    # Execute: a fresh process would build the job again and restore it.
    checkpoint = load_checkpoint(tmp_path, "j")
    assert checkpoint is not None
    fresh_ledger = Ledger()
    fresh = _job(fresh_ledger, tmp_path / "other")
    fresh.restore(checkpoint)
    # Assert
    assert fresh.version == 2 and checkpoint.spec == {"model": "mlp"}
    for name, tensor in job.snapshot(0)[1].items():
        assert torch.equal(fresh.snapshot(0)[1][name], tensor)
    assert fresh._optimizer.state_dict()["state"][0]["step"] == 2  # noqa: SLF001
    assert fresh.close_round(1, 1).model_version == 2  # closing again returns the stored result
    applied = [(e.round, e.task) for e in fresh_ledger.entries() if e.decision is Decision.APPLIED]
    assert applied == [(0, 0), (1, 0)]
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == [
        "LATEST",
        "v2.json",
        "v2.safetensors",
    ]


def test_no_checkpoint_means_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path, "missing") is None
