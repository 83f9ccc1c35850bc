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
