import dataclasses

from tessera.client import JobConfig
from tessera.v1 import common_pb2


def test_job_config_covers_every_job_spec_field() -> None:
    spec_fields = {f.name for f in common_pb2.JobSpec.DESCRIPTOR.fields}
    assert {f.name for f in dataclasses.fields(JobConfig)} == spec_fields


def test_job_config_round_trips_through_proto_and_json() -> None:
    config = JobConfig(
        name="x",
        rounds=7,
        hidden_sizes=(3, 4),
        aggregation="krum",
        aggregation_options={"f": 1.0},
        quorum=0.5,
        straggler_policy="drop",
    )
    assert JobConfig.from_proto(config.to_proto()) == config
    assert JobConfig.from_json(config.to_json()) == config
    assert '"hiddenSizes": [3, 4]' in config.to_json()


NEW_FIELDS = {
    "mode": "diloco",
    "inner_steps": 25,
    "inner_optimizer": "sgd",
    "inner_learning_rate": 0.003,
    "max_staleness": 4,
    "data_split": "dirichlet",
    "dirichlet_alpha": 0.1,
    "context": 128,
    "n_layer": 3,
    "n_head": 8,
    "d_model": 96,
    "target_loss": 1.25,
}


def test_the_training_mode_data_split_and_language_model_fields_round_trip() -> None:
    config = JobConfig(model="gpt", dataset="stdlib", **NEW_FIELDS)  # type: ignore[arg-type]
    proto = config.to_proto()
    assert {name: getattr(proto, name) for name in NEW_FIELDS} == NEW_FIELDS
    assert JobConfig.from_proto(proto) == config
    assert JobConfig.from_json(config.to_json()) == config
    assert '"innerLearningRate": 0.003' in config.to_json()
    parsed = JobConfig.from_json('{"mode": "async", "maxStaleness": 2, "data_split": "local"}')
    assert (parsed.mode, parsed.max_staleness, parsed.data_split) == ("async", 2, "local")


def test_new_fields_default_to_the_protos_zero_so_the_server_chooses() -> None:
    default = JobConfig()
    assert {name: getattr(default, name) for name in NEW_FIELDS} == {
        name: getattr(common_pb2.JobSpec(), name) for name in NEW_FIELDS
    }
    # The outer optimizer depends on the mode, so it is left to the server too.
    assert default.to_proto().optimizer == ""


def test_every_job_config_field_is_documented() -> None:
    doc = JobConfig.__doc__ or ""
    for f in dataclasses.fields(JobConfig):
        assert f"        {f.name}: " in doc, f.name
