"""Receiving and folding contributions: exact, all-or-nothing, and without copies."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch

from services.aggregator.ingest import BufferPool, Intake, RoundMean, RoundSum
from services.aggregator.ledger import Decision, Ledger
from services.aggregator.models import Contribution, JobModel, settings_from_spec
from tessera.common.errors import InvalidSpec, QuotaExceeded
from tessera.wire.frames import NonFinite, encode_tensors, iter_chunks

LIMIT = 1 << 24


def _contributions(count: int, seed: int = 0) -> list[tuple[dict[str, torch.Tensor], float]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            {
                "w": torch.randn(37, 5, generator=generator),
                "b": torch.randn(5, generator=generator),
            },
            float(torch.randint(1, 64, (), generator=generator)),
        )
        for _ in range(count)
    ]


def _reference(
    contributions: list[tuple[dict[str, torch.Tensor], float]],
) -> dict[str, torch.Tensor]:
    total = sum(weight for _, weight in contributions)
    return {
        name: sum(t[name].double() * w for t, w in contributions) / total  # type: ignore[misc]
        for name in contributions[0][0]
    }


def _assert_close(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == torch.float32
        assert torch.allclose(got[name].double(), want[name], atol=1e-6), name


def _receive(mean: RoundMean, tensors: dict[str, torch.Tensor], weight: float) -> Intake:
    """Open an intake and write every chunk (63-byte chunks split values across chunks)."""
    encoded = encode_tensors(tensors)
    intake = mean.intake(encoded.metas, weight, max_bytes=LIMIT)
    for chunk in iter_chunks(encoded.payloads, 63):
        intake.write(chunk)
    return intake


def _commit(mean: RoundMean, intake: Intake, weight: float) -> None:
    mean.commit(intake, intake.tensors(), weight)
    mean.finish(intake)


# -- RoundMean: the fold lane, deferral, buffers ----------------------------------------------


def test_the_first_contribution_becomes_the_sum_without_a_copy() -> None:
    # Prepare
    pool = BufferPool()
    mean = RoundMean(pool)
    (tensors, weight), *_ = _contributions(1)
    # Execute
    intake = _receive(mean, tensors, weight)
    received = intake.tensors()
    _commit(mean, intake, weight)
    result = mean.result()
    # Assert: the result lives in the receive buffer, and equals the contribution.
    assert result["w"].data_ptr() == received["w"].data_ptr()
    assert pool.idle_bytes == 0
    _assert_close(result, _reference([(tensors, weight)]))


def test_a_later_contribution_folds_as_it_arrives_and_its_buffer_becomes_the_sum() -> None:
    # Prepare
    pool = BufferPool(capacity=2)
    mean = RoundMean(pool)
    contributions = _contributions(2)
    first = _receive(mean, *contributions[0])
    first_ptr = first.tensors()["w"].data_ptr()
    _commit(mean, first, contributions[0][1])
    before = {k: v.clone() for k, v in first.tensors().items()}
    # Execute: the second stream lands already folded into its own buffer.
    second = _receive(mean, *contributions[1])
    landed = second.tensors()
    # Assert: the sum did not move while the stream arrived ...
    assert all(torch.equal(first.tensors()[k], before[k]) for k in before)
    scale, weight = contributions[0][1], contributions[1][1]
    expected = before["w"] + (weight / scale) * contributions[1][0]["w"]
    assert torch.allclose(landed["w"], expected)
    # ... and committing swaps buffers: no pass over the data, the old buffer is recycled.
    _commit(mean, second, weight)
    result = mean.result()
    assert result["w"].data_ptr() == landed["w"].data_ptr()
    assert pool.take(1).data_ptr() == first_ptr
    _assert_close(result, _reference(contributions))


@pytest.mark.parametrize(
    "schedule",
    [
        # (event, contribution): "open" starts a stream and receives it, "commit" accepts it.
        [("open", 0), ("commit", 0), ("open", 1), ("commit", 1), ("open", 2), ("commit", 2)],
        # 1 holds the lane; 2 arrives meanwhile and is deferred, then folded when 1 commits.
        [("open", 0), ("commit", 0), ("open", 1), ("open", 2), ("commit", 2), ("commit", 1)],
        [("open", 0), ("commit", 0), ("open", 1), ("open", 2), ("commit", 1), ("commit", 2)],
        # Both first streams start before any sum exists: the second is folded, not adopted.
        [("open", 0), ("open", 1), ("commit", 1), ("commit", 0), ("open", 2), ("commit", 2)],
        # The lane's stream is refused (never committed): deferred 2 still counts.
        [("open", 0), ("commit", 0), ("open", 1), ("open", 2), ("commit", 2), ("drop", 1)],
        [("open", 0), ("commit", 0), ("open", 1), ("drop", 1), ("open", 2), ("commit", 2)],
    ],
)
def test_the_mean_counts_exactly_the_committed_contributions_in_any_order(
    schedule: list[tuple[str, int]],
) -> None:
    # Prepare
    pool = BufferPool(capacity=2)
    mean = RoundMean(pool)
    contributions = _contributions(3, seed=4)
    intakes: dict[int, Intake] = {}
    committed: list[int] = []
    # Execute
    for event, index in schedule:
        if event == "open":
            intakes[index] = _receive(mean, *contributions[index])
        elif event == "commit":
            _commit(mean, intakes[index], contributions[index][1])
            committed.append(index)
        else:
            mean.finish(intakes[index])
    # Assert
    assert mean.count == len(committed)
    _assert_close(mean.result(), _reference([contributions[i] for i in committed]))


def test_a_stream_that_fails_midway_leaves_the_sum_untouched() -> None:
    # Prepare
    mean = RoundMean(BufferPool())
    contributions = _contributions(2)
    first = _receive(mean, *contributions[0])
    _commit(mean, first, contributions[0][1])
    sum_before = {k: v.clone() for k, v in first.tensors().items()}
    bad = {k: v.clone() for k, v in contributions[1][0].items()}
    bad["b"][-1] = float("nan")  # in the very last chunk
    # Execute
    with pytest.raises(NonFinite):
        _receive(mean, bad, contributions[1][1])
    # Assert: the folded-ahead part lived only in the failed stream's own buffer.
    assert all(torch.equal(first.tensors()[k], sum_before[k]) for k in sum_before)
    _assert_close(mean.result(), _reference(contributions[:1]))


def test_ending_the_round_cuts_a_stream_holding_the_lane_loose() -> None:
    pool = BufferPool(capacity=2)
    mean = RoundMean(pool)
    contributions = _contributions(3)
    first = _receive(mean, *contributions[0])
    _commit(mean, first, contributions[0][1])
    lane = _receive(mean, *contributions[1])
    deferred = _receive(mean, *contributions[2])
    _commit(mean, deferred, contributions[2][1])
    result = mean.result()
    _assert_close(result, _reference([contributions[0], contributions[2]]))
    mean.finish(lane)  # its handler finishes later; its buffer goes back to the pool
    assert pool.idle_bytes > 0


def test_contributions_the_caller_keeps_are_never_modified() -> None:
    mean = RoundMean(BufferPool())
    contributions = _contributions(3)
    copies = [{k: v.clone() for k, v in t.items()} for t, _ in contributions]
    for tensors, weight in contributions:
        mean.add(tensors, weight)
    result = mean.result()
    for (tensors, _), copy in zip(contributions, copies, strict=True):
        assert all(torch.equal(tensors[k], copy[k]) for k in copy)
    _assert_close(result, _reference(contributions))


def test_buffers_return_to_the_pool_once_the_round_is_over() -> None:
    pool = BufferPool(capacity=2)
    mean = RoundMean(pool)
    (tensors, weight), *_ = _contributions(1)
    intake = _receive(mean, tensors, weight)
    pointer = intake.tensors()["w"].data_ptr()
    _commit(mean, intake, weight)
    mean.result()
    assert pool.idle_bytes == 0
    mean.recycle()
    again = _receive(RoundMean(pool), tensors, weight)
    assert again.tensors()["w"].data_ptr() == pointer


def test_an_oversized_table_is_refused_before_taking_a_buffer() -> None:
    pool = BufferPool()
    pool.give(torch.empty(4096, dtype=torch.uint8))
    encoded = encode_tensors({"w": torch.ones(1000)})
    with pytest.raises(QuotaExceeded, match="4000 bytes exceeds the limit of 100 bytes"):
        RoundMean(pool).intake(encoded.metas, 1.0, max_bytes=100)
    assert pool.idle_bytes == 4096


# -- RoundSum and BufferPool -------------------------------------------------------------------


def test_round_sum_accumulates_half_precision_in_float32() -> None:
    round_sum = RoundSum()
    values = torch.full((1000,), 1.0001, dtype=torch.float16)
    for _ in range(10):
        round_sum.add({"h": values}, 1.0, owned=True)
    result = round_sum.result()["h"]
    assert result.dtype == torch.float16
    assert torch.equal(result, values)


def test_round_sum_rejects_mismatches_bad_weights_and_reuse() -> None:
    round_sum = RoundSum()
    round_sum.add({"w": torch.ones(3)}, 2.0, owned=False)
    with pytest.raises(InvalidSpec, match="contribution has tensors"):
        round_sum.add({"v": torch.ones(3)}, 1.0, owned=False)
    with pytest.raises(InvalidSpec, match="shape"):
        round_sum.add({"w": torch.ones(4)}, 1.0, owned=False)
    for weight in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidSpec, match="weight"):
            round_sum.add({"w": torch.ones(3)}, weight, owned=False)
    with pytest.raises(InvalidSpec, match="floating"):
        RoundSum().add({"i": torch.ones(3, dtype=torch.int64)}, 1.0, owned=False)
    assert torch.equal(round_sum.result()["w"], torch.ones(3))
    with pytest.raises(InvalidSpec, match="already"):
        round_sum.result()
    with pytest.raises(InvalidSpec, match="at least 1 contribution"):
        RoundSum().result()


def test_folding_ahead_needs_a_sum_and_raw_tensors_of_its_dtype() -> None:
    round_sum = RoundSum()
    raw = encode_tensors({"w": torch.ones(3)}).metas
    assert round_sum.ahead(raw, 1.0) is None
    round_sum.add({"w": torch.ones(3)}, 1.0, owned=False)
    assert round_sum.ahead(raw, 1.0) is not None
    assert round_sum.ahead(encode_tensors({"w": torch.ones(3)}, "fp16").metas, 1.0) is None
    assert round_sum.ahead(encode_tensors({"w": torch.ones(3).double()}).metas, 1.0) is None


def test_the_pool_keeps_the_largest_buffers_and_hands_out_the_smallest_fitting() -> None:
    pool = BufferPool(capacity=2)
    for size in (10, 30, 20):
        pool.give(torch.empty(size, dtype=torch.uint8))
    assert pool.idle_bytes == 50
    assert pool.take(15).numel() == 20
    assert pool.take(40).numel() == 40  # nothing fits: a new one
    pool.clear()
    assert pool.idle_bytes == 0


# -- JobModel: the receive path ----------------------------------------------------------------


def _job(tasks: int = 3, aggregation: str = "mean") -> tuple[JobModel, Ledger]:
    ledger = Ledger()
    settings = settings_from_spec("mlp", "digits", [8], "sgd", 0.1, aggregation, tasks, 0)
    return JobModel("j", settings, ledger), ledger


def _gradient(job: JobModel, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=generator, dtype=dtype)
        for name, (dtype, shape) in job.parameter_metas.items()
    }


def _c(task: int, samples: int = 4, round_index: int = 0) -> Contribution:
    return Contribution("j", round_index, task, "n", round_index, samples, 0.5)


def _push(
    job: JobModel,
    c: Contribution,
    tensors: dict[str, torch.Tensor],
    chunks: Iterator[bytes] | None = None,
) -> tuple[Decision, str]:
    encoded = encode_tensors(tensors)
    intake = job.intake(c, encoded.metas, max_bytes=LIMIT)
    try:
        decision, rejection = job.receive(
            c, intake, chunks if chunks is not None else iter_chunks(encoded.payloads, 256)
        )
    finally:
        job.finish(intake)
    return decision, rejection.kind if rejection is not None else ""


def _gradient_after(job: JobModel, num_tasks: int) -> dict[str, torch.Tensor]:
    """The gradient the round applied, read back from SGD's momentum buffers."""
    job.close_round(job.version, num_tasks)
    model = job._model  # noqa: SLF001 - the test inspects what the step was given
    state = job._optimizer.state  # noqa: SLF001
    return {name: state[p]["momentum_buffer"] for name, p in model.named_parameters()}


def test_a_rejected_contribution_never_counts_and_the_round_is_exact() -> None:
    # Prepare
    job, ledger = _job(tasks=3)
    gradients = [_gradient(job, seed) for seed in range(3)]
    bad = {k: v.clone() for k, v in gradients[1].items()}
    bad[list(bad)[-1]].view(-1)[-1] = float("inf")
    # Execute
    outcomes = [
        _push(job, _c(0, samples=2), gradients[0]),
        _push(job, _c(1, samples=4), bad),
        _push(job, _c(1, samples=4), gradients[1]),
        _push(job, _c(2, samples=8), gradients[2]),
    ]
    applied = _gradient_after(job, 3)
    # Assert
    assert outcomes == [
        (Decision.APPLIED, ""),
        (Decision.REJECTED, "non_finite"),
        (Decision.APPLIED, ""),
        (Decision.APPLIED, ""),
    ]
    assert ledger.rejections("j") == {"non_finite": 1}
    want = _reference(list(zip(gradients, [2.0, 4.0, 8.0], strict=True)))
    for name in want:
        assert torch.allclose(applied[name].double(), want[name], atol=1e-6)


def test_a_stream_stops_being_read_once_its_round_closes() -> None:
    # Prepare
    job, ledger = _job(tasks=2)
    assert _push(job, _c(0), _gradient(job, 0)) == (Decision.APPLIED, "")
    encoded = encode_tensors(_gradient(job, 1))
    read = []

    def chunks() -> Iterator[bytes]:
        for index, chunk in enumerate(iter_chunks(encoded.payloads, 256)):
            read.append(index)
            if index == 2:
                job.close_round(0, 1)  # the scheduler gives up on task 1
            yield chunk

    # Execute
    intake = job.intake(_c(1), encoded.metas, max_bytes=LIMIT)
    try:
        outcome = job.receive(_c(1), intake, chunks())
    finally:
        job.finish(intake)
    # Assert
    assert outcome[0] is Decision.REJECTED and outcome[1] is not None
    assert outcome[1].kind == "stale"
    assert read == [0, 1, 2]
    assert ledger.applied_count("j", 0) == 1


def test_two_streams_for_one_task_count_once() -> None:
    job, ledger = _job(tasks=2)
    gradient = _gradient(job, 0)
    encoded = encode_tensors(gradient)
    intakes = [job.intake(_c(0), encoded.metas, max_bytes=LIMIT) for _ in range(2)]
    decisions = []
    for intake in intakes:
        try:
            decisions.append(job.receive(_c(0), intake, iter_chunks(encoded.payloads))[0])
        finally:
            job.finish(intake)
    assert decisions == [Decision.APPLIED, Decision.DUPLICATE]
    assert ledger.applied_count("j", 0) == 1


def test_robust_rules_keep_each_received_contribution_until_the_round_closes() -> None:
    job, _ = _job(tasks=3, aggregation="median")
    gradients = [_gradient(job, seed) for seed in range(3)]
    for task, gradient in enumerate(gradients):
        assert _push(job, _c(task, samples=task + 1), gradient) == (Decision.APPLIED, "")
    applied = _gradient_after(job, 3)
    for name in applied:
        median = torch.stack([g[name] for g in gradients]).median(dim=0).values
        assert torch.allclose(applied[name], median)


def test_steady_state_rounds_receive_into_recycled_buffers() -> None:
    job, _ = _job(tasks=2)
    for round_index in range(3):
        for task in range(2):
            c = _c(task, round_index=round_index)
            assert _push(job, c, _gradient(job, task))[0] is Decision.APPLIED
        job.close_round(round_index, 2)
        assert job.pool.idle_bytes > 0
    encoded = encode_tensors(_gradient(job, 0))
    idle = job.pool.idle_bytes
    intake = job.intake(_c(0, round_index=3), encoded.metas, max_bytes=LIMIT)
    assert job.pool.idle_bytes < idle  # taken from the pool, not allocated
    job.finish(intake)
    assert job.pool.idle_bytes == idle
