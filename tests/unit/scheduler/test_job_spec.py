import re

import pytest

from services.scheduler import jobs
from tessera.common.errors import InvalidSpec
from tessera.v1 import common_pb2

POLICIES = frozenset({"min_min", "genetic", "round_robin"})


def test_defaults_fill_zero_fields() -> None:
    spec = jobs.normalize_spec(common_pb2.JobSpec(min_nodes=3), POLICIES)
    assert (spec.model, spec.dataset, spec.policy, spec.codec) == (
        "mlp",
        "digits",
        "min_min",
        "none",
    )
    assert spec.tasks_per_round == 3
    assert spec.rounds == 100


@pytest.mark.parametrize(
    ("mode", "optimizer", "learning_rate", "inner_steps", "inner_optimizer"),
    [
        ("sync", "adam", 0.01, 0, ""),
        ("diloco", "nesterov", 0.7, 50, "adamw"),
        ("async", "plain_sgd", 0.5, 50, "adamw"),
    ],
)
def test_each_mode_has_its_own_defaults(
    mode: str, optimizer: str, learning_rate: float, inner_steps: int, inner_optimizer: str
) -> None:
    spec = jobs.normalize_spec(common_pb2.JobSpec(mode=mode, tasks_per_round=4), POLICIES)
    assert (spec.optimizer, spec.learning_rate) == (optimizer, learning_rate)
    assert (spec.inner_steps, spec.inner_optimizer) == (inner_steps, inner_optimizer)
    assert spec.data_split == "iid"
    assert spec.max_staleness == (4 if mode == "async" else 0)


def test_explicit_local_training_settings_are_kept() -> None:
    spec = common_pb2.JobSpec(
        mode="diloco", inner_steps=100, learning_rate=0.3, data_split="dirichlet"
    )
    spec = jobs.normalize_spec(spec, POLICIES)
    assert (spec.inner_steps, spec.learning_rate, spec.dirichlet_alpha) == (100, 0.3, 0.5)


def test_hyphenated_policy_names_are_accepted() -> None:
    spec = jobs.normalize_spec(common_pb2.JobSpec(policy="min-min"), POLICIES)
    assert spec.policy == "min_min"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (common_pb2.JobSpec(learning_rate=-1), "learning_rate (-1.0) must be > 0"),
        (common_pb2.JobSpec(target_accuracy=1.5), "target_accuracy (1.5) must be in [0, 1]"),
        (common_pb2.JobSpec(policy="fastest"), "unknown scheduling policy 'fastest'"),
        (common_pb2.JobSpec(codec="zip"), "unknown codec 'zip'"),
        (common_pb2.JobSpec(rounds=10**7), "rounds (10000000) must be <= 1000000"),
        (common_pb2.JobSpec(tasks_per_round=10**6), "tasks_per_round (1000000)"),
        (common_pb2.JobSpec(task_timeout_seconds=float("nan")), "task_timeout_seconds"),
        (common_pb2.JobSpec(round_deadline_seconds=1e300), "round_deadline_seconds (1e+300)"),
        (common_pb2.JobSpec(mode="gossip"), "unknown mode 'gossip'; choose one of: sync, diloco"),
        (common_pb2.JobSpec(data_split="random"), "unknown data_split 'random'"),
        (common_pb2.JobSpec(inner_steps=10**6), "inner_steps (1000000) must be <= 100000"),
        (
            common_pb2.JobSpec(mode="diloco", inner_learning_rate=float("nan")),
            "inner_learning_rate (nan)",
        ),
        (common_pb2.JobSpec(dirichlet_alpha=-1), "dirichlet_alpha (-1.0) must be > 0"),
        (common_pb2.JobSpec(target_loss=-0.5), "target_loss (-0.5) must be >= 0"),
    ],
)
def test_bad_fields_are_named(spec: common_pb2.JobSpec, fragment: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(fragment)):
        jobs.normalize_spec(spec, POLICIES)


def test_codec_names_agree_with_the_codec_registry() -> None:
    from tessera.wire.codecs import CODECS

    assert set(jobs._CODECS) == set(CODECS)


def test_modes_and_data_splits_agree_with_the_aggregator_and_the_zoo() -> None:
    from services.aggregator.models import MODES
    from tessera.ml.recipes import DATA_SPLITS

    assert tuple(jobs.MODE_DEFAULTS) == MODES
    assert jobs.DATA_SPLITS == DATA_SPLITS


def test_the_layer_bound_matches_the_zoo() -> None:
    from tessera.ml.zoo import MAX_HIDDEN_LAYERS

    assert jobs.MAX_HIDDEN_LAYERS == MAX_HIDDEN_LAYERS
    with pytest.raises(InvalidSpec, match="hidden_sizes has 65 layers; at most 64"):
        jobs.normalize_spec(common_pb2.JobSpec(hidden_sizes=[1] * 65), POLICIES)
