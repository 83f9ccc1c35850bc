"""Prometheus metrics of the aggregator.

Byte counters count payload bytes as they travel, encoded: a stream cut short counts what
arrived, and each tensor's bytes count under the codec that encoded it (integer tensors travel
with ``none`` whatever the job's codec).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BYTES_RECEIVED",
    "CONTRIBUTIONS",
    "JOB_ACCURACY",
    "JOB_LOSS",
    "MODEL_BYTES_SENT",
    "MODEL_VERSION",
    "ROUND_SECONDS",
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
ROUND_SECONDS = Histogram(
    "tessera_round_seconds",
    "Time from a round's opening to its close",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
