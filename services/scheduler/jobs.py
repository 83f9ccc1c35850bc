"""Pure rules for job specs: defaults and validation with messages that name the field."""

from __future__ import annotations

import math

from tessera.common.errors import InvalidSpec
from tessera.v1 import common_pb2

__all__ = [
    "MAX_ROUNDS",
    "MAX_TASKS_PER_ROUND",
    "STRAGGLER_POLICIES",
    "normalize_spec",
    "quorum_count",
]

MAX_ROUNDS = 1_000_000
MAX_TASKS_PER_ROUND = 100_000
# The zoo's own bound (tessera.ml.zoo.MAX_HIDDEN_LAYERS), checked here without importing torch.
MAX_HIDDEN_LAYERS = 64
# A week: longer waits are mistakes, and unbounded ones overflow the clock's range.
MAX_WAIT = 7 * 86400.0
_CODECS = ("none", "fp16", "bf16", "int8", "topk")
STRAGGLER_POLICIES = ("reassign", "drop")
# Training modes and their aggregator-side defaults: (optimizer, learning rate). DiLoCo's outer
# step is Nesterov SGD at 0.7 (Douillard et al. 2023); async applies each contribution with
# plain SGD at 0.5, a FedAsync-style mixing weight (Xie et al. 2019).
MODE_DEFAULTS = {"sync": ("adam", 0.01), "diloco": ("nesterov", 0.7), "async": ("plain_sgd", 0.5)}
DATA_SPLITS = ("iid", "dirichlet", "local")
DEFAULT_INNER_STEPS = 50
MAX_INNER_STEPS = 100_000


def normalize_spec(spec: common_pb2.JobSpec, known_policies: frozenset[str]) -> common_pb2.JobSpec:
    """Return a copy with defaults filled in, or raise naming the first bad field.

    The aggregator validates what it owns (model, dataset, optimizer, aggregation rule) when
    the job is opened there; this checks everything the scheduler decides on.

    Raises:
        InvalidSpec: e.g. "min_nodes (0) must be >= 1".
    """
    out = common_pb2.JobSpec()
    out.CopyFrom(spec)
    out.model = out.model or "mlp"
    out.dataset = out.dataset or "digits"
    out.mode = out.mode or "sync"
    if out.mode not in MODE_DEFAULTS:
        raise InvalidSpec(f"unknown mode {out.mode!r}; choose one of: {', '.join(MODE_DEFAULTS)}")
    default_optimizer, default_learning_rate = MODE_DEFAULTS[out.mode]
    out.optimizer = out.optimizer or default_optimizer
    out.policy = (out.policy or "min_min").replace("-", "_")
    out.aggregation = out.aggregation or "mean"
    out.codec = out.codec or "none"
    if out.rounds == 0:
        out.rounds = 100
    if out.min_nodes == 0:
        out.min_nodes = 1
    if out.tasks_per_round == 0:
        out.tasks_per_round = out.min_nodes
    if out.learning_rate == 0:
        out.learning_rate = default_learning_rate
    _fill_local_training(out)
    _fill_data(out)
    if out.task_timeout_seconds == 0:
        out.task_timeout_seconds = 60.0
    if out.quorum == 0:
        out.quorum = 1.0
    out.straggler_policy = out.straggler_policy or "reassign"

    if out.rounds > MAX_ROUNDS:
        raise InvalidSpec(f"rounds ({out.rounds}) must be <= {MAX_ROUNDS}")
    if out.tasks_per_round > MAX_TASKS_PER_ROUND:
        raise InvalidSpec(
            f"tasks_per_round ({out.tasks_per_round}) must be <= {MAX_TASKS_PER_ROUND}"
        )
    if not (math.isfinite(out.learning_rate) and out.learning_rate > 0):
        raise InvalidSpec(f"learning_rate ({out.learning_rate}) must be > 0")
    if not (math.isfinite(out.target_accuracy) and 0 <= out.target_accuracy <= 1):
        raise InvalidSpec(f"target_accuracy ({out.target_accuracy}) must be in [0, 1]")
    if not (math.isfinite(out.task_timeout_seconds) and 0 < out.task_timeout_seconds <= MAX_WAIT):
        raise InvalidSpec(
            f"task_timeout_seconds ({out.task_timeout_seconds}) must be in (0, {MAX_WAIT:g}]"
        )
    if not (
        math.isfinite(out.round_deadline_seconds) and 0 <= out.round_deadline_seconds <= MAX_WAIT
    ):
        raise InvalidSpec(
            f"round_deadline_seconds ({out.round_deadline_seconds}) must be in [0, {MAX_WAIT:g}]"
        )
    if not (math.isfinite(out.quorum) and 0 < out.quorum <= 1):
        raise InvalidSpec(f"quorum ({out.quorum}) must be in (0, 1]")
    if out.straggler_policy not in STRAGGLER_POLICIES:
        raise InvalidSpec(
            f"unknown straggler_policy {out.straggler_policy!r}; choose one of: "
            f"{', '.join(STRAGGLER_POLICIES)}"
        )
    if out.policy not in known_policies:
        raise InvalidSpec(
            f"unknown scheduling policy {out.policy!r}; choose one of: "
            f"{', '.join(sorted(known_policies))}"
        )
    if out.codec not in _CODECS:
        raise InvalidSpec(f"unknown codec {out.codec!r}; choose one of: {', '.join(_CODECS)}")
    if len(out.hidden_sizes) > MAX_HIDDEN_LAYERS:
        raise InvalidSpec(
            f"hidden_sizes has {len(out.hidden_sizes)} layers; at most {MAX_HIDDEN_LAYERS}"
        )
    if len(out.name) > 200:
        raise InvalidSpec(f"name is {len(out.name)} characters; at most 200")
    if not (math.isfinite(out.target_loss) and out.target_loss >= 0):
        raise InvalidSpec(f"target_loss ({out.target_loss}) must be >= 0")
    return out


def _fill_local_training(out: common_pb2.JobSpec) -> None:
    """Defaults and bounds of the local-steps fields (used by "diloco" and "async")."""
    local = out.mode != "sync"
    if local and out.inner_steps == 0:
        out.inner_steps = DEFAULT_INNER_STEPS
    if out.inner_steps > MAX_INNER_STEPS:
        raise InvalidSpec(f"inner_steps ({out.inner_steps}) must be <= {MAX_INNER_STEPS}")
    if local:
        out.inner_optimizer = out.inner_optimizer or "adamw"
        if out.inner_learning_rate == 0:
            out.inner_learning_rate = 0.001
    if not (math.isfinite(out.inner_learning_rate) and out.inner_learning_rate >= 0):
        raise InvalidSpec(f"inner_learning_rate ({out.inner_learning_rate}) must be > 0")
    if out.mode == "async" and out.max_staleness == 0:
        out.max_staleness = out.tasks_per_round


def _fill_data(out: common_pb2.JobSpec) -> None:
    """Defaults and bounds of the data-split fields."""
    out.data_split = out.data_split or "iid"
    if out.data_split not in DATA_SPLITS:
        raise InvalidSpec(
            f"unknown data_split {out.data_split!r}; choose one of: {', '.join(DATA_SPLITS)}"
        )
    if out.data_split == "dirichlet" and out.dirichlet_alpha == 0:
        out.dirichlet_alpha = 0.5
    if not (math.isfinite(out.dirichlet_alpha) and out.dirichlet_alpha >= 0):
        raise InvalidSpec(f"dirichlet_alpha ({out.dirichlet_alpha}) must be > 0")


def quorum_count(spec: common_pb2.JobSpec) -> int:
    """Tasks that must report before a round may close at its deadline (at least one)."""
    return max(1, math.ceil(spec.quorum * spec.tasks_per_round - 1e-9))
