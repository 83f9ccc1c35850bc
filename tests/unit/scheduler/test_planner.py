import numpy as np

from services.scheduler.planner import NodeCapacity, build_etc, place


def test_etc_is_compute_plus_transfer_inflated_by_failures() -> None:
    nodes = [
        NodeCapacity("fast", throughput=100.0),
        NodeCapacity("slow", throughput=10.0, bandwidth=1000.0),
        NodeCapacity("flaky", throughput=100.0, failures=2),
    ]
    etc = build_etc([50, 100], transfer_bytes=500, nodes=nodes)
    expected = np.array([[0.5, 5.5, 0.75], [1.0, 10.5, 1.5]])
    assert np.allclose(etc, expected)


def test_place_maps_task_indices_to_node_ids() -> None:
    nodes = [NodeCapacity("a", 1.0), NodeCapacity("b", 1000.0)]
    placement = place("min_min", [4, 7], [10, 10], 0, nodes)
    assert placement.nodes_of_tasks == {4: "b", 7: "b"}
    assert placement.unplaced_reasons == ()


def test_nothing_to_place_or_nowhere_to_place_gives_an_empty_placement() -> None:
    assert place("min_min", [], [], 0, [NodeCapacity("a", 1.0)]).nodes_of_tasks == {}
    assert place("min_min", [0], [1], 0, []).nodes_of_tasks == {}
