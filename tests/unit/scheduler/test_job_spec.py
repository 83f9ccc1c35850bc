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
    ],
)
def test_bad_fields_are_named(spec: common_pb2.JobSpec, fragment: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(fragment)):
        jobs.normalize_spec(spec, POLICIES)


def test_codec_names_agree_with_the_codec_registry() -> None:
    from tessera.wire.codecs import CODECS

    assert set(jobs._CODECS) == set(CODECS)


def test_the_layer_bound_matches_the_zoo() -> None:
    from tessera.ml.zoo import MAX_HIDDEN_LAYERS

    assert jobs.MAX_HIDDEN_LAYERS == MAX_HIDDEN_LAYERS
    with pytest.raises(InvalidSpec, match="hidden_sizes has 65 layers; at most 64"):
        jobs.normalize_spec(common_pb2.JobSpec(hidden_sizes=[1] * 65), POLICIES)
