"""Prometheus metrics of the aggregator.

Byte counters count payload bytes as they travel, encoded: a stream cut short counts what
arrived, and each tensor's bytes count under the codec that encoded it (integer tensors travel
with ``none`` whatever the job's codec).

Per-job series carry a ``job`` label with the Tessera job id; ``record_round`` sets them all
from a round's ``RoundMetrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tessera.v1 import common_pb2

__all__ = [
    "BYTES_RECEIVED",
    "CONTRIBUTIONS",
    "JOB_ACCURACY",
    "JOB_LOSS",
    "JOB_MACRO_F1",
    "JOB_PAYLOAD_BYTES",
    "JOB_PERPLEXITY",
    "MODEL_BYTES_SENT",
    "MODEL_VERSION",
    "ROUND_SECONDS",
    "record_round",
]

BYTES_RECEIVED = Counter(
    "tessera_bytes_received_total",
    "Contribution payload bytes received, as encoded on the wire, by codec",
    ["codec"],
)
MODEL_BYTES_SENT = Counter(
    "tessera_model_bytes_sent_total", "Model payload bytes streamed to workers", ["codec"]
)
CONTRIBUTIONS = Counter(
    "tessera_contributions_total",
    "Contributions by decision; rejections by kind (stale, task, samples, tensors, "
    "non_finite, too_large, malformed)",
    ["decision", "reason"],
)
MODEL_VERSION = Gauge("tessera_model_version", "Latest published model version", ["job"])
JOB_LOSS = Gauge("tessera_job_loss", "Held-out loss after the latest round", ["job"])
JOB_ACCURACY = Gauge("tessera_job_accuracy", "Held-out accuracy after the latest round", ["job"])
JOB_MACRO_F1 = Gauge(
    "tessera_job_macro_f1", "Classifiers: held-out macro-F1 after the latest round", ["job"]
)
JOB_PERPLEXITY = Gauge(
    "tessera_job_perplexity", "Language models: held-out perplexity after the latest round", ["job"]
)
JOB_PAYLOAD_BYTES = Counter(
    "tessera_job_payload_bytes_total",
    "Encoded contribution payload bytes of the applied updates, per job",
    ["job"],
)
ROUND_SECONDS = Histogram(
    "tessera_round_seconds",
    "Time from a round's opening to its close",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def record_round(job_id: str, metrics: common_pb2.RoundMetrics) -> None:
    """Set the job's series from a closed round's metrics.

    Language models (``test_perplexity > 0``) set the perplexity gauge, classifiers the macro-F1
    gauge; the other one is left alone, so a job never shows a meaningless zero. The payload
    counter grows by the round's ``payload_bytes``.
    """
    MODEL_VERSION.labels(job_id).set(metrics.model_version)
    JOB_LOSS.labels(job_id).set(metrics.test_loss)
    JOB_ACCURACY.labels(job_id).set(metrics.test_accuracy)
    if metrics.test_perplexity > 0:
        JOB_PERPLEXITY.labels(job_id).set(metrics.test_perplexity)
    else:
        JOB_MACRO_F1.labels(job_id).set(metrics.test_macro_f1)
    JOB_PAYLOAD_BYTES.labels(job_id).inc(metrics.payload_bytes)
