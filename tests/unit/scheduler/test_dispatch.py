import threading

from services.scheduler.dispatch import Dispatcher, task_key
from tessera.v1 import scheduler_pb2


def _task(index: int) -> scheduler_pb2.Task:
    return scheduler_pb2.Task(job_id="j", round=0, task_index=index)


def test_tasks_queued_before_the_stream_opens_are_delivered_in_order() -> None:
    dispatcher = Dispatcher()
    dispatcher.send("n", _task(0))
    dispatcher.send("n", _task(1))
    stream = dispatcher.stream("n", threading.Event())
    assert [next(stream).task_index, next(stream).task_index] == [0, 1]


def test_unacknowledged_tasks_are_redelivered_on_reconnect() -> None:
    dispatcher = Dispatcher()
    dispatcher.send("n", _task(0))
    dispatcher.send("n", _task(1))
    first = dispatcher.stream("n", threading.Event())
    assert next(first).task_index == 0
    assert next(first).task_index == 1
    dispatcher.acknowledge("n", task_key(_task(0)))
    second = dispatcher.stream("n", threading.Event())
    assert next(second).task_index == 1


def test_retracted_task_is_not_delivered() -> None:
    dispatcher = Dispatcher()
    dispatcher.send("n", _task(0))
    dispatcher.send("n", _task(1))
    dispatcher.retract("n", task_key(_task(0)))
    assert next(dispatcher.stream("n", threading.Event())).task_index == 1


def test_stop_ends_a_blocked_stream() -> None:
    dispatcher = Dispatcher()
    stop = threading.Event()
    received: list[int] = []
    ended = threading.Event()

    def consume() -> None:
        for task in dispatcher.stream("n", stop):
            received.append(task.task_index)
        ended.set()

    thread = threading.Thread(target=consume)
    thread.start()
    stop.set()
    dispatcher.wake()
    assert ended.wait(5)
    thread.join(5)
    assert received == []


def test_forget_ends_the_stream_and_drops_queued_tasks() -> None:
    dispatcher = Dispatcher()
    stream = dispatcher.stream("n", threading.Event())
    dispatcher.send("n", _task(0))
    assert next(stream).task_index == 0
    dispatcher.send("n", _task(1))
    dispatcher.forget("n")
    assert list(stream) == []
    fresh = dispatcher.stream("n", threading.Event())
    dispatcher.send("n", _task(2))
    assert next(fresh).task_index == 2
