from tessera.client import RetryPolicy
from tessera.client.client import WatchResume
from tessera.v1 import common_pb2, scheduler_pb2

ROUND = scheduler_pb2.JOB_EVENT_KIND_ROUND_COMPLETED


def _round(index: int) -> scheduler_pb2.JobEvent:
    return scheduler_pb2.JobEvent(kind=ROUND, metrics=common_pb2.RoundMetrics(round=index))


def test_rounds_delivered_before_a_reconnection_are_not_delivered_again() -> None:
    resume = WatchResume(RetryPolicy())
    first = [resume.fresh(_round(i)) for i in range(3)]
    snapshot = resume.fresh(scheduler_pb2.JobEvent(kind=scheduler_pb2.JOB_EVENT_KIND_SNAPSHOT))
    again = [resume.fresh(_round(i)) for i in range(1, 5)]
    assert all(e is not None for e in first) and snapshot is not None
    assert [e.metrics.round if e and e.metrics else None for e in again] == [None, None, 3, 4]


def test_retries_stop_after_the_attempts_and_progress_resets_them() -> None:
    resume = WatchResume(RetryPolicy(attempts=3, patience=60.0))
    assert not resume.give_up() and not resume.give_up()
    resume.fresh(_round(0))
    assert [resume.give_up() for _ in range(3)] == [False, False, True]
