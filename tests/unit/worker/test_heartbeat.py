import threading

from services.worker.heartbeat import HeartbeatSender
from tessera.common.errors import NotFound, Unavailable


def test_beats_until_stopped_and_survives_transient_failures() -> None:
    beats: list[int] = []
    enough = threading.Event()

    def beat() -> None:
        beats.append(1)
        if len(beats) == 2:
            raise Unavailable("registry restarting")
        if len(beats) >= 5:
            enough.set()

    sender = HeartbeatSender(beat, interval=0.01, on_lost=lambda: None)
    sender.start()
    assert enough.wait(5)
    sender.stop()
    count = len(beats)
    assert count >= 5
    sender.stop()
    assert len(beats) == count


def test_lost_lease_calls_on_lost_once_and_ends_the_loop() -> None:
    lost = threading.Event()
    calls: list[int] = []

    def beat() -> None:
        calls.append(1)
        raise NotFound("node expired")

    sender = HeartbeatSender(beat, interval=0.01, on_lost=lost.set)
    sender.start()
    assert lost.wait(5)
    sender.stop()
    assert calls == [1]


def test_starting_twice_is_an_error() -> None:
    sender = HeartbeatSender(lambda: None, interval=1.0, on_lost=lambda: None)
    sender.start()
    try:
        try:
            sender.start()
        except RuntimeError as exc:
            assert "already started" in str(exc)
        else:
            raise AssertionError("second start did not raise")
    finally:
        sender.stop()
