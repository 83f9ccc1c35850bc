"""Job specs as plain dataclasses that serialise to the proto and to JSON (for grpcurl)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from tessera.v1 import common_pb2

__all__ = ["DATA_SPLITS", "MODES", "JobConfig"]

# The values the scheduler accepts for ``JobConfig.mode`` and ``JobConfig.data_split``.
MODES = ("sync", "diloco", "async")
DATA_SPLITS = ("iid", "dirichlet", "local")


@dataclass(frozen=True)
class JobConfig:
    """A training job (``tessera.v1.JobSpec``) as a frozen dataclass.

    Zero values (0, 0.0, "", empty) mean "the server's default"; docs/api.md lists the defaults
    and rules, and the scheduler names the field of any value it refuses.

    Attributes:
        model: model of the zoo, e.g. "mlp" or "gpt" (a byte-level language model).
        dataset: data set every worker knows, e.g. "digits" or the text corpus "stdlib". With
            ``data_split="local"`` it names the held-out set, and each worker trains on its own
            file of that name.
        rounds: upper bound on the number of rounds (0 = 100).
        target_accuracy: stop once held-out accuracy reaches this (0 = run all rounds).
        min_nodes: rounds start once this many nodes are live.
        tasks_per_round: data shards, hence tasks, per round (0 = ``min_nodes``).
        batch_size: samples per task per round (0 = the whole shard).
        learning_rate: the aggregator's step (0 = the mode's default: 0.01 in "sync", 0.7 in
            "diloco", 0.5 in "async").
        optimizer: the aggregator's optimizer, the outer one in "diloco" and "async": "adam",
            "adamw", "sgd", "nesterov" or "plain_sgd" ("" = "adam" in "sync", "nesterov" in
            "diloco", "plain_sgd" in "async").
        policy: scheduling policy, e.g. "min_min", "genetic", "round_robin".
        aggregation: aggregation rule, e.g. "mean", "krum".
        codec: codec of the gradient streams, e.g. "none", "fp16".
        seed: seed of the model initialisation and the data shards.
        hidden_sizes: widths of the hidden layers (empty = the model's default).
        task_timeout_seconds: an assigned task not reported by then moves to another node
            (0 = 60).
        name: free-form label shown in listings.
        aggregation_options: options of the aggregation rule, e.g. ``{"f": 1.0}`` for krum.
        min_memory_bytes: memory every task needs from a node (0 = nothing).
        min_gpus: GPUs every task needs from a node (0 = none).
        min_gpu_memory_bytes: GPU memory every task needs from a node (0 = nothing).
        round_deadline_seconds: a round this old closes once a quorum reported (0 = none).
        quorum: fraction of a round's tasks that makes a quorum (0 = 1.0, every task).
        straggler_policy: "reassign" or "drop" the tasks of lost or overdue nodes
            ("" = "reassign").
        mode: "sync" (a task is one gradient; the round's mean is one step), "diloco" (a task
            is ``inner_steps`` local steps; the round's mean pseudo-gradient goes to the outer
            optimizer) or "async" (like "diloco", but each contribution is applied as it
            arrives, weighted down by its staleness) ("" = "sync").
        inner_steps: local steps per task in "diloco" and "async" (0 = 50).
        inner_optimizer: the workers' optimizer for local steps ("" = "adamw").
        inner_learning_rate: learning rate of the local steps (0 = 0.001).
        max_staleness: "async": contributions more than this many model versions behind the
            latest are rejected (0 = ``tasks_per_round``).
        data_split: the tasks' training data: "iid" (IID shards), "dirichlet" (label-skewed
            shards, Dirichlet(``dirichlet_alpha``)) or "local" (each worker's own file)
            ("" = "iid").
        dirichlet_alpha: concentration of the "dirichlet" split; smaller is more skewed
            (0 = 0.5).
        context: language models: window length in bytes (0 = 64).
        n_layer: language models: transformer blocks (0 = 2).
        n_head: language models: attention heads (0 = 4).
        d_model: language models: embedding width (0 = 64).
        target_loss: stop once the held-out loss is at most this (0 = no loss target).
    """

    model: str = "mlp"
    dataset: str = "digits"
    rounds: int = 0
    target_accuracy: float = 0.0
    min_nodes: int = 1
    tasks_per_round: int = 0
    batch_size: int = 0
    learning_rate: float = 0.0
    optimizer: str = ""
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
    mode: str = ""
    inner_steps: int = 0
    inner_optimizer: str = ""
    inner_learning_rate: float = 0.0
    max_staleness: int = 0
    data_split: str = ""
    dirichlet_alpha: float = 0.0
    context: int = 0
    n_layer: int = 0
    n_head: int = 0
    d_model: int = 0
    target_loss: float = 0.0

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
