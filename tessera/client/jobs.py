"""Job specs as plain dataclasses that serialise to the proto and to JSON (for grpcurl)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from tessera.v1 import common_pb2

__all__ = ["JobConfig"]


@dataclass(frozen=True)
class JobConfig:
    """A training job. Zero values mean "the server's default" (see docs/api.md)."""

    model: str = "mlp"
    dataset: str = "digits"
    rounds: int = 0
    target_accuracy: float = 0.0
    min_nodes: int = 1
    tasks_per_round: int = 0
    batch_size: int = 0
    learning_rate: float = 0.0
    optimizer: str = "adam"
    policy: str = "min_min"
    aggregation: str = "mean"
    codec: str = "none"
    seed: int = 0
    hidden_sizes: tuple[int, ...] = field(default_factory=tuple)
    task_timeout_seconds: float = 0.0
    name: str = ""
    aggregation_options: dict[str, float] = field(default_factory=dict)
    min_memory_bytes: int = 0
    min_gpus: int = 0
    min_gpu_memory_bytes: int = 0
    round_deadline_seconds: float = 0.0
    quorum: float = 0.0
    straggler_policy: str = ""

    def to_proto(self) -> common_pb2.JobSpec:
        """The ``tessera.v1.JobSpec`` message."""
        values = dataclasses.asdict(self)
        values["hidden_sizes"] = list(self.hidden_sizes)
        return common_pb2.JobSpec(**values)

    def to_json(self) -> str:
        """The spec as grpcurl's ``-d`` JSON expects it (inside ``{"spec": ...}``)."""
        return json_format.MessageToJson(self.to_proto(), indent=None)

    @classmethod
    def from_json(cls, text: str) -> JobConfig:
        """Parse a JSON spec (proto JSON names, camelCase or snake_case)."""
        spec = json_format.Parse(text, common_pb2.JobSpec())
        return cls.from_proto(spec)

    @classmethod
    def from_proto(cls, spec: common_pb2.JobSpec) -> JobConfig:
        """Inverse of ``to_proto``."""
        values: dict[str, Any] = {f.name: getattr(spec, f.name) for f in dataclasses.fields(cls)}
        values["hidden_sizes"] = tuple(spec.hidden_sizes)
        values["aggregation_options"] = dict(spec.aggregation_options)
        return cls(**values)

    def with_(self, **changes: Any) -> JobConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One-line JSON for logs."""
        return json.dumps(dataclasses.asdict(self))
