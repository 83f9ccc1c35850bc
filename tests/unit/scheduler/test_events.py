import threading

from services.scheduler.events import EventLog
from tessera.v1 import scheduler_pb2


def _event(round_index: int) -> scheduler_pb2.JobEvent:
    return scheduler_pb2.JobEvent(round=round_index)


def test_followers_get_every_event_from_where_they_start_until_the_log_closes() -> None:
    log = EventLog()
    log.publish(_event(0))
    follower = log.follow(threading.Event(), start=0)
    late = log.follow(threading.Event())
    log.publish(_event(1))
    log.publish(_event(2), final=True)
    assert [e.round for e in follower] == [0, 1, 2]
    assert [e.round for e in late] == [1, 2]
    assert log.closed


def test_stop_ends_a_waiting_follower() -> None:
    log = EventLog()
    stop = threading.Event()
    done = threading.Event()

    def follow() -> None:
        list(log.follow(stop))
        done.set()

    thread = threading.Thread(target=follow)
    thread.start()
    stop.set()
    log.wake()
    assert done.wait(5)
    thread.join(5)
