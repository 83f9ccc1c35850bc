import uuid

from prometheus_client import REGISTRY

from services.aggregator.metrics import record_round
from tessera.v1 import common_pb2


def _sample(name: str, job: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"job": job})


def test_a_classifier_round_sets_macro_f1_and_counts_payload_bytes() -> None:
    # Prepare: a job id of the test's own, since the registry is process-wide.
    job = f"clf-{uuid.uuid4().hex[:8]}"
    first = common_pb2.RoundMetrics(
        model_version=1, test_loss=0.8, test_accuracy=0.7, test_macro_f1=0.65, payload_bytes=1000
    )
    second = common_pb2.RoundMetrics(
        model_version=2, test_loss=0.5, test_accuracy=0.9, test_macro_f1=0.875, payload_bytes=2500
    )
    # Execute
    record_round(job, first)
    record_round(job, second)
    # Assert
    assert _sample("tessera_job_macro_f1", job) == 0.875
    assert _sample("tessera_job_payload_bytes_total", job) == 3500
    assert _sample("tessera_job_accuracy", job) == 0.9
    assert _sample("tessera_job_loss", job) == 0.5
    assert _sample("tessera_model_version", job) == 2
    assert _sample("tessera_job_perplexity", job) is None


def test_a_language_model_round_sets_perplexity_and_not_macro_f1() -> None:
    job = f"lm-{uuid.uuid4().hex[:8]}"
    record_round(
        job,
        common_pb2.RoundMetrics(
            model_version=3, test_loss=1.5, test_perplexity=4.4817, payload_bytes=640
        ),
    )
    assert _sample("tessera_job_perplexity", job) == 4.4817
    assert _sample("tessera_job_macro_f1", job) is None
    assert _sample("tessera_job_payload_bytes_total", job) == 640
