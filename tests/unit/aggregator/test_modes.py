"""The aggregator side of the training modes: diloco's outer step and async staleness."""

import math

import pytest
import torch

from services.aggregator.ledger import Decision, Ledger
from services.aggregator.models import (
    Contribution,
    JobModel,
    settings_from_spec,
    staleness_weight,
)
from services.worker.trainer import Trainer
from tessera.common.errors import InvalidSpec
from tessera.ml.recipes import Recipe
from tessera.v1 import common_pb2
from tessera.wire.codecs import ErrorFeedback
from tessera.wire.frames import encode_tensors
from tessera.wire.stream import assemble


def _job(
    mode: str,
    *,
    optimizer: str = "plain_sgd",
    lr: float = 1.0,
    tasks: int = 2,
    max_staleness: int = 0,
    aggregation: str = "mean",
    recipe: Recipe | None = None,
) -> tuple[JobModel, Ledger]:
    ledger = Ledger()
    settings = settings_from_spec(
        "mlp",
        "digits",
        [8],
        optimizer,
        lr,
        aggregation,
        tasks,
        0,
        mode=mode,
        max_staleness=max_staleness,
        recipe=recipe,
    )
    return JobModel("j", settings, ledger), ledger


def _filled(job: JobModel, value: float) -> dict[str, torch.Tensor]:
    return {n: torch.full(shape, value, dtype=dt) for n, (dt, shape) in job.parameter_metas.items()}


def _weights(job: JobModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in job.snapshot(0)[1].items()}


def test_diloco_with_plain_sgd_at_lr_1_is_federated_averaging() -> None:
    # Prepare: two pseudo-gradients (start minus end weights) of 1.0 and 3.0, equal samples
    job, _ = _job("diloco")
    start = _weights(job)
    # Execute
    job.add(Contribution("j", 0, 0, "a", 0, 10, 0.5), _filled(job, 1.0))
    job.add(Contribution("j", 0, 1, "b", 0, 10, 0.7), _filled(job, 3.0))
    result = job.close_round(0, 2)
    # Assert: the new weights are the mean of the workers' end weights, start - 2.0
    after = _weights(job)
    assert result.model_version == 1
    assert result.train_loss == pytest.approx(0.6)
    for name in start:
        if name in job.parameter_metas:
            assert torch.allclose(after[name], start[name] - 2.0)


def test_diloco_outer_nesterov_matches_torch_sgd_over_two_rounds() -> None:
    # Prepare
    job, _ = _job("diloco", optimizer="nesterov", lr=0.7, tasks=1)
    reference = {k: v.clone().requires_grad_(True) for k, v in _weights(job).items()}
    outer = torch.optim.SGD(list(reference.values()), lr=0.7, momentum=0.9, nesterov=True)
    # Execute
    for round_index, value in enumerate((1.0, 0.5)):
        job.add(Contribution("j", round_index, 0, "a", round_index, 1, 0.1), _filled(job, value))
        job.close_round(round_index, 1)
        for p in reference.values():
            p.grad = torch.full_like(p, value)
        outer.step()
    # Assert
    after = _weights(job)
    for name, p in reference.items():
        assert torch.allclose(after[name], p.detach(), atol=1e-6)


def test_async_applies_each_contribution_on_arrival_weighted_by_staleness() -> None:
    # Prepare
    job, _ = _job("async", tasks=3, max_staleness=3)
    start = _weights(job)
    # Execute: the first is fresh; the second started from version 0 while version 1 is out
    first = job.add(Contribution("j", 0, 0, "a", 0, 1, 0.1), _filled(job, 1.0))
    version_after_first = job.version
    second = job.add(Contribution("j", 0, 1, "b", 0, 1, 0.1), _filled(job, 1.0))
    # Assert
    assert first == second == (Decision.APPLIED, None)
    assert (version_after_first, job.version) == (1, 2)
    moved = 1.0 + staleness_weight(1)
    for name in job.parameter_metas:
        assert torch.allclose(_weights(job)[name], start[name] - moved)


def test_async_rejects_contributions_older_than_max_staleness_with_the_reason() -> None:
    # Prepare: three fresh contributions publish versions 1..3
    job, ledger = _job("async", tasks=4, max_staleness=2)
    for task in range(3):
        job.add(Contribution("j", 0, task, "a", job.version, 1, 0.1), _filled(job, 0.1))
    # Execute: a straggler that started from version 0 is 3 versions behind
    late = Contribution("j", 0, 3, "slow", 0, 1, 0.1)
    rejection = job.check_header(late, [])
    # Assert
    assert rejection is not None and rejection.kind == "stale"
    assert "3 versions behind the latest (3)" in rejection.reason
    assert "at most 2 (max_staleness)" in rejection.reason
    decision, via_add = job.add(late, _filled(job, 0.1))
    assert decision is Decision.REJECTED and via_add is not None
    assert job.version == 3
    assert ledger.applied_count("j", 0) == 3


def test_async_rounds_close_without_stepping_and_late_work_still_counts() -> None:
    # Prepare
    job, _ = _job("async", tasks=2, max_staleness=4)
    job.add(Contribution("j", 0, 0, "a", 0, 1, 0.1), _filled(job, 0.1))
    # Execute: the round closes with one of its two tasks (a quorum), then the straggler lands
    result = job.close_round(0, 1)
    before_late = _weights(job)
    late = job.add(Contribution("j", 0, 1, "slow", 0, 1, 0.1), _filled(job, 0.1))
    # Assert
    assert (result.round, result.model_version, job.round) == (0, 1, 1)
    assert late == (Decision.APPLIED, None)
    assert job.version == 2
    name = next(iter(job.parameter_metas))
    assert not torch.equal(_weights(job)[name], before_late[name])


def test_async_refuses_rules_that_compare_a_whole_round() -> None:
    with pytest.raises(InvalidSpec, match="mode 'async' applies each one alone"):
        _job("async", tasks=5, aggregation="krum")


def test_unknown_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidSpec, match="unknown mode 'local_sgd'; choose one of: sync"):
        _job("local_sgd")


def test_staleness_weight_decays_polynomially() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == pytest.approx(0.5)
    assert staleness_weight(8) == pytest.approx(1 / 3)


def test_classifier_rounds_report_macro_f1_and_payload_bytes() -> None:
    # Prepare
    job, _ = _job("sync", optimizer="sgd", lr=0.1, tasks=1)
    gradient = _filled(job, 0.01)
    # Execute
    job.add(Contribution("j", 0, 0, "a", 0, 1, 0.1), gradient)
    result = job.close_round(0, 1)
    # Assert
    assert 0.0 < result.test_macro_f1 <= 1.0
    assert result.test_perplexity == 0.0
    assert result.payload_bytes == sum(t.numel() * 4 for t in gradient.values())


def test_language_model_rounds_report_perplexity() -> None:
    # Prepare
    recipe = Recipe(model="gpt", dataset="stdlib", n_layer=1, n_head=2, d_model=16, context=16)
    job, _ = _job("sync", optimizer="adam", lr=0.01, tasks=1, recipe=recipe)
    # Execute
    job.add(Contribution("j", 0, 0, "a", 0, 1, 5.5), _filled(job, 0.0))
    result = job.close_round(0, 1)
    # Assert: an untrained byte model is close to uniform over 256 bytes
    assert result.test_perplexity == pytest.approx(math.exp(result.test_loss))
    assert 100 < result.test_perplexity < 600
    assert result.test_macro_f1 == 0.0


@pytest.mark.parametrize(("codec", "aggregation"), [("int8", "trimmed_mean"), ("topk", "mean")])
def test_diloco_pseudo_gradients_travel_through_codecs_and_robust_rules(
    codec: str, aggregation: str
) -> None:
    # Prepare: three workers' pseudo-gradients after 5 local steps, encoded for the wire
    spec = common_pb2.JobSpec(
        model="mlp",
        dataset="digits",
        hidden_sizes=[8],
        batch_size=32,
        mode="diloco",
        inner_steps=5,
        inner_learning_rate=0.01,
        tasks_per_round=3,
    )
    job, _ = _job("diloco", tasks=3, aggregation=aggregation, optimizer="plain_sgd", lr=1.0)
    start = _weights(job)
    trainer = Trainer()
    received = []
    for task in range(3):
        pseudo = trainer.compute("j", spec, start, 0, task, 3).gradient
        encoded = encode_tensors(pseudo, codec, feedback=ErrorFeedback())
        decoded = assemble(encoded.metas, encoded.payloads, max_bytes=1 << 24).tensors()
        received.append(decoded)
        # Execute
        job.add(Contribution("j", 0, task, f"n{task}", 0, 160, 1.0), decoded)
    job.close_round(0, 3)
    # Assert: the outer step moved the weights by the rule's combination of what arrived
    expected = {
        name: start[name]
        - (
            torch.stack([r[name] for r in received]).median(dim=0).values
            if aggregation == "trimmed_mean"
            else torch.stack([r[name] for r in received]).mean(dim=0)
        )
        for name in job.parameter_metas
    }
    after = _weights(job)
    for name, tensor in expected.items():
        assert torch.allclose(after[name], tensor, atol=1e-5)
    assert any(not torch.equal(after[n], start[n]) for n in job.parameter_metas)


@pytest.mark.parametrize("mode", ["sync", "diloco", "async"])
def test_a_round_is_complete_once_every_task_is_in_except_in_async_mode(mode: str) -> None:
    # Prepare
    job, _ = _job(mode, tasks=2, max_staleness=2)
    # Execute
    job.add(Contribution("j", 0, 0, "a", 0, 1, 1.0), _filled(job, 1.0))
    after_one = job.complete(0)
    job.add(Contribution("j", 0, 1, "b", 0, 1, 1.0), _filled(job, 1.0))
    after_two = job.complete(0)
    job.close_round(0, 2)
    # Assert: async rounds close only when the scheduler says so; a closed round is not
    # complete any more (nothing left to close).
    assert not after_one
    assert after_two is (mode != "async")
    assert not job.complete(0)
