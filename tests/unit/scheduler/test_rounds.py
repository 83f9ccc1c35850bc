from services.scheduler.rounds import RoundState, TaskState


def test_round_completes_only_when_every_task_reported_by_its_holder() -> None:
    # Prepare
    state = RoundState(round_index=0, num_tasks=3)
    state.assign({0: "a", 1: "b", 2: "a"})
    # Execute
    stale = state.complete(1, "a")
    ok = [state.complete(0, "a"), state.complete(1, "b")]
    # Assert
    assert not stale
    assert ok == [True, True]
    assert not state.done
    assert state.complete(2, "a")
    assert state.done


def test_lost_node_releases_only_its_unfinished_tasks() -> None:
    state = RoundState(0, 4)
    state.assign({0: "a", 1: "b", 2: "a", 3: "b"})
    state.complete(0, "a")
    released = state.release_nodes({"a"})
    assert released == [2]
    assert state.pending() == [2]
    assert state.tasks[0].state is TaskState.DONE
    state.assign({2: "b"})
    assert state.tasks[2].attempts == 2
    assert state.tasks[2].history == ["a", "b"]


def test_report_from_previous_holder_after_reassignment_is_stale() -> None:
    state = RoundState(0, 1)
    state.assign({0: "a"})
    state.release_nodes({"a"})
    state.assign({0: "b"})
    assert not state.complete(0, "a")
    assert state.complete(0, "b")


def test_out_of_range_report_is_ignored() -> None:
    state = RoundState(0, 2)
    assert not state.complete(5, "a")
    assert not state.complete(-1, "a")


def test_done_tasks_are_never_moved() -> None:
    state = RoundState(0, 1)
    state.assign({0: "a"})
    state.complete(0, "a")
    state.assign({0: "b"})
    assert state.tasks[0].node_id == "a"
    assert state.tasks[0].state is TaskState.DONE


def test_records_say_how_each_task_ended_and_where_it_ran() -> None:
    # Prepare: task 0 moves from a lost node to b and reports; task 1 is dropped.
    state = RoundState(3, 2)
    state.assign({0: "a", 1: "a"})
    state.release_nodes({"a"})
    state.assign({0: "b"})
    state.complete(0, "b")
    # Execute
    state.drop_unfinished()
    # Assert
    assert state.records() == [
        (0, {"state": "done", "node": "b", "placed_on": ["a", "b"]}),
        (1, {"state": "dropped", "node": "", "placed_on": ["a"]}),
    ]
