from tessera.client import Node, RoundMetrics
from tessera.v1 import common_pb2


def test_round_metrics_carry_macro_f1_perplexity_and_payload_bytes() -> None:
    proto = common_pb2.RoundMetrics(
        round=4,
        model_version=5,
        test_loss=1.5,
        test_accuracy=0.4,
        test_macro_f1=0.375,
        test_perplexity=4.4817,
        payload_bytes=123_456,
    )
    metrics = RoundMetrics.from_proto(proto)
    assert (metrics.round, metrics.model_version) == (4, 5)
    assert metrics.test_macro_f1 == 0.375
    assert metrics.test_perplexity == 4.4817
    assert metrics.payload_bytes == 123_456
    assert metrics.is_language_model
    assert not RoundMetrics.from_proto(common_pb2.RoundMetrics(test_accuracy=0.9)).is_language_model


def test_nodes_carry_their_local_datasets() -> None:
    node = common_pb2.Node(
        node_id="n1",
        profile=common_pb2.NodeProfile(hostname="h", local_datasets=["clinic-a", "clinic-b"]),
    )
    assert Node.from_proto(node).local_datasets == ("clinic-a", "clinic-b")
    assert Node.from_proto(common_pb2.Node(node_id="n2")).local_datasets == ()
