import pytest
import torch

from services.aggregator.ledger import Decision, Ledger
from services.aggregator.models import Contribution, JobModel, settings_from_spec
from tessera.common.errors import Conflict, InvalidSpec, NotFound
from tessera.wire.codecs import TensorMeta


def _job(tasks: int = 2, aggregation: str = "mean") -> tuple[JobModel, Ledger]:
    torch.set_num_threads(1)
    ledger = Ledger()
    settings = settings_from_spec("mlp", "digits", [8], "sgd", 0.1, aggregation, tasks, 0)
    return JobModel("j", settings, ledger), ledger


def _ones(job: JobModel, value: float = 1.0) -> dict[str, torch.Tensor]:
    return {n: torch.full(shape, value, dtype=dt) for n, (dt, shape) in job.parameter_metas.items()}


def _c(task: int, round_index: int = 0, samples: int = 1) -> Contribution:
    return Contribution("j", round_index, task, "n", round_index, samples, 0.5)


def test_round_closes_with_the_sample_weighted_mean_and_publishes_the_next_version() -> None:
    # Prepare
    job, _ = _job()
    before = {k: v.clone() for k, v in job.snapshot(0)[1].items()}
    # Execute
    assert job.add(_c(0, samples=1), _ones(job, 1.0)) == (Decision.APPLIED, None)
    assert job.add(_c(1, samples=3), _ones(job, 5.0)) == (Decision.APPLIED, None)
    result = job.close_round(0, 2)
    # Assert: mean gradient 4.0; SGD (lr 0.1, momentum buffer starts at the gradient) moves by 0.4
    version, after = job.snapshot(0)
    assert (version, result.model_version, result.contributions) == (1, 1, 2)
    for name, tensor in after.items():
        assert torch.allclose(before[name] - tensor, torch.full_like(tensor, 0.4))
    assert 0.0 <= result.test_accuracy <= 1.0


def test_duplicates_are_counted_once_and_closing_twice_returns_the_same_result() -> None:
    job, ledger = _job(tasks=1)
    assert job.add(_c(0), _ones(job)) == (Decision.APPLIED, None)
    assert job.add(_c(0), _ones(job)) == (Decision.DUPLICATE, None)
    first = job.close_round(0, 1)
    assert job.close_round(0, 1) == first
    assert [e.decision for e in ledger.entries()] == [Decision.APPLIED, Decision.DUPLICATE]


def test_closing_an_incomplete_or_future_round_is_a_conflict() -> None:
    job, _ = _job(tasks=2)
    job.add(_c(0), _ones(job))
    with pytest.raises(Conflict, match="round 0 has 1 of 2 contributions"):
        job.close_round(0, 2)
    with pytest.raises(Conflict, match="round 3 is not open"):
        job.close_round(3, 2)


def test_non_finite_values_are_rejected_and_not_applied() -> None:
    job, ledger = _job(tasks=1)
    bad = _ones(job)
    next(iter(bad.values()))[0] = float("inf")
    decision, rejection = job.add(_c(0), bad)
    assert decision is Decision.REJECTED and rejection is not None
    assert rejection.kind == "non_finite" and "non-finite" in rejection.reason
    assert ledger.applied_count("j", 0) == 0


def test_header_checks_name_the_problem() -> None:
    job, _ = _job(tasks=2)
    metas = [TensorMeta(n, dt, s, "none", 0) for n, (dt, s) in job.parameter_metas.items()]
    assert job.check_header(_c(0), metas) is None
    assert "task 2 is not in [0, 2)" in str(job.check_header(_c(2), metas))
    assert "open round is 0" in str(job.check_header(_c(0, round_index=1), metas))
    wrong = [TensorMeta(metas[0].name, torch.float16, metas[0].shape, "none", 0), *metas[1:]]
    rejection = job.check_header(_c(0), wrong)
    assert rejection is not None and rejection.kind == "tensors"
    assert "the model needs torch.float32" in rejection.reason


def test_only_the_latest_version_is_served() -> None:
    job, _ = _job()
    with pytest.raises(NotFound, match="version 4 is not available; the latest is 0"):
        job.snapshot(4)


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidSpec, match=r"tasks_per_round \(0\) must be >= 1"):
        settings_from_spec("mlp", "digits", [], "adam", 0.1, "mean", 0, 0)


@pytest.mark.parametrize(
    ("aggregation", "tasks", "options", "fragment"),
    [
        ("krum", 4, None, r"'krum' with f=1 needs tasks_per_round >= 2f \+ 3 = 5, got 4"),
        ("krum", 6, {"f": 2.0}, r"f=2 needs tasks_per_round >= 2f \+ 3 = 7, got 6"),
        ("krum", 7, {"f": 2.0, "m": 6.0}, r"averages m=6 contributions, at most .* = 5"),
        ("krum", 7, {"f": 2.5}, r"krum option f \(2.5\) must be an integer >= 0"),
        ("trimmed_mean", 2, None, r"needs tasks_per_round >= 2f \+ 1 = 3, got 2"),
        ("centered_clip", 3, {"tau": -1.0}, r"option tau \(-1\) must be a finite number > 0"),
        ("median", 3, {"f": 1.0}, r"'median' does not take options"),
        ("mean", 3, {"f": float("nan")}, r"aggregation option f \(nan\) must be finite"),
        ("vote", 3, None, r"unknown aggregation rule 'vote'"),
    ],
)
def test_rules_that_cannot_work_with_the_round_size_are_refused_when_the_job_opens(
    aggregation: str, tasks: int, options: dict[str, float] | None, fragment: str
) -> None:
    with pytest.raises(InvalidSpec, match=fragment):
        settings_from_spec(
            "mlp", "digits", [], "adam", 0.1, aggregation, tasks, 0, aggregation_options=options
        )


def test_valid_rule_options_reach_the_rule() -> None:
    settings = settings_from_spec(
        "mlp", "digits", [8], "sgd", 0.1, "krum", 7, 0, aggregation_options={"m": 3.0, "f": 2.0}
    )
    assert settings.aggregation_options == (("f", 2), ("m", 3))
    job = JobModel("j", settings, Ledger())
    assert (job._rule.f, job._rule.m) == (2, 3)  # type: ignore[attr-defined]  # noqa: SLF001


def test_the_zero_copy_registration_serves_every_method_of_the_service() -> None:
    from services.aggregator.handlers import Aggregator
    from services.aggregator.servicer import SERVICE, AggregatorServicer, aggregator_handlers

    servicer = AggregatorServicer(Aggregator(max_payload_bytes=1))
    assert set(aggregator_handlers(servicer)) == {m.name for m in SERVICE.methods}


@pytest.mark.parametrize("early", [True, False])
def test_an_early_close_keeps_the_round_s_version_until_the_scheduler_closes_it(
    early: bool,
) -> None:
    # Prepare: round 0 closed; both tasks of round 1 (trained on version 1) in.
    job, _ = _job()
    for task in (0, 1):
        job.add(_c(task), _ones(job))
    job.close_round(0, 2)
    version_1 = {k: v.clone() for k, v in job.snapshot(1)[1].items()}
    for task in (0, 1):
        job.add(_c(task, round_index=1), _ones(job))
    # Execute: the aggregator closes round 1 itself (or the scheduler does).
    job.close_round(1, 2, early=early)
    # Assert: after an early close a moved task can still fetch version 1; once the scheduler
    # has closed the round, only the latest version is held.
    if early:
        held, weights = job.snapshot(1)
        assert held == 1
        assert all(torch.equal(weights[k], v) for k, v in version_1.items())
        job.close_round(1, 2)
    with pytest.raises(NotFound, match="model version 1 is not available; the latest is 2"):
        job.snapshot(1)


def test_a_long_job_keeps_only_recent_rounds_in_memory() -> None:
    # Prepare
    job, ledger = _job()
    small = Ledger(max_entries=3)
    for index in range(5):
        small.reject("j", index, 0, "n", "why", "stale")
    # Execute: six rounds of two tasks.
    for round_index in range(6):
        for task in (0, 1):
            job.add(_c(task, round_index), _ones(job))
        job.close_round(round_index, 2)
    # Assert: the last closed round's keys are kept (a moved task may still push into it),
    # older ones are gone; so are old results; the decision log keeps its last entries.
    assert ledger.applied_count("j", 5) == 2
    assert ledger.applied_count("j", 4) == 0
    assert job.is_duplicate(_c(0, 5))
    assert not job.is_duplicate(_c(0, 4))
    assert job.close_round(5, 2).round == 5
    with pytest.raises(Conflict):
        job.close_round(2, 2)
    assert [e.round for e in small.entries()] == [2, 3, 4]


def test_a_push_whose_round_closed_meanwhile_is_a_duplicate_only_if_its_task_counted() -> None:
    # Prepare: round 0 closed with task 0 only (task 1 dropped).
    job, ledger = _job()
    job.add(_c(0), _ones(job))
    job.close_round(0, 1)
    # Execute: both tasks arrive again after the close (as a push still receiving would).
    again = job.add(_c(0), _ones(job))
    late = job.add(_c(1), _ones(job))
    # Assert
    assert again == (Decision.DUPLICATE, None)
    assert late[0] is Decision.REJECTED and late[1] is not None
    assert "round 0 closed while the contribution arrived" in late[1].reason
    assert ledger.rejections("j") == {"stale": 1}
