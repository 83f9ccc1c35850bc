import numpy as np

from services.scheduler.planner import (
    NodeCapacity,
    PlacementCache,
    ResourceNeeds,
    ThroughputTracker,
    build_etc,
    feasibility,
    place,
)


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
    assert place("min_min", [0], [1], 0, []).unplaced_reasons == ("no live node",)


def test_feasibility_filters_nodes_and_says_which_need_nobody_meets() -> None:
    nodes = [
        NodeCapacity("small", 1.0, memory_bytes=2 * 2**30),
        NodeCapacity("big", 1.0, memory_bytes=16 * 2**30, gpu_count=1, gpu_memory_bytes=2**30),
    ]
    mask, reasons = feasibility(2, ResourceNeeds(memory_bytes=8 * 2**30), nodes)
    assert mask.tolist() == [[False, True], [False, True]]
    assert reasons == ()
    _, reasons = feasibility(1, ResourceNeeds(gpu_memory_bytes=8 * 2**30), nodes)
    assert reasons == ("no node with >= 8.0 GiB GPU memory",)


def test_federated_tasks_go_only_to_nodes_that_hold_the_data_set() -> None:
    nodes = [
        NodeCapacity("fast", 9.0),
        NodeCapacity("holder", 1.0, local_datasets=frozenset({"clinic"})),
    ]
    placement = place(
        "min_min", [0, 1], [1, 1], 0, nodes, needs=ResourceNeeds(local_dataset="clinic")
    )
    assert placement.nodes_of_tasks == {0: "holder", 1: "holder"}
    _, reasons = feasibility(1, ResourceNeeds(local_dataset="ward"), nodes)
    assert reasons == ("no node holds local data set 'ward'",)


def test_unplaceable_tasks_come_back_with_the_reason() -> None:
    placement = place(
        "min_min", [0, 1], [1, 1], 0, [NodeCapacity("cpu", 1.0)], needs=ResourceNeeds(gpus=2)
    )
    assert placement.nodes_of_tasks == {}
    assert placement.unplaced_reasons == ("no node with >= 2 GPUs",)


def test_observed_throughput_replaces_the_profile_and_is_smoothed() -> None:
    tracker = ThroughputTracker(smoothing=0.5)
    assert tracker.estimate("n", 100.0) == 100.0
    tracker.observe("n", samples=10, seconds=1.0)
    assert tracker.estimate("n", 100.0) == 10.0
    tracker.observe("n", samples=30, seconds=1.0)
    assert tracker.estimate("n", 100.0) == 20.0
    tracker.observe("n", samples=0, seconds=1.0)
    assert tracker.estimate("n", 100.0) == 20.0


def test_placement_cache_reuses_plans_until_a_node_changes_materially() -> None:
    cache = PlacementCache(tolerance=0.15)
    nodes = [NodeCapacity("a", 100.0), NodeCapacity("b", 10.0)]
    first = cache.place("min_min", [0, 1], [1, 1], 0, nodes)
    noisy = [NodeCapacity("a", 103.0), NodeCapacity("b", 10.2)]
    assert cache.place("min_min", [0, 1], [1, 1], 0, noisy) is first
    slower = [NodeCapacity("a", 1.0), NodeCapacity("b", 10.0)]
    replanned = cache.place("min_min", [0, 1], [1, 1], 0, slower)
    assert replanned.nodes_of_tasks == {0: "b", 1: "b"}
    assert (cache.hits, cache.misses) == (1, 2)
