"""``tessera submit``: flags and spec files become the spec the scheduler stores.

The CLI runs as a user runs it, against a real local cluster (``cli_cluster``); what it sent is
read back from the scheduler with the SDK. Out-of-range values never reach a server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli import app as cli
from tessera.client import JobConfig
from tests.cli.conftest import CliCluster

# Fields the training modes, data splits and language models added, and the values the
# scheduler stores when a sync job leaves them unset.
NEW_FIELDS = (
    "mode",
    "inner_steps",
    "inner_optimizer",
    "inner_learning_rate",
    "max_staleness",
    "data_split",
    "dirichlet_alpha",
    "context",
    "n_layer",
    "n_head",
    "d_model",
    "target_loss",
)
SYNC_DEFAULTS = ("sync", 0, "", 0.0, 0, "iid", 0.0, 0, 0, 0, 0, 0.0)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_new_options_map_to_the_spec_fields(cli_cluster: CliCluster) -> None:
    # Execute: tiny jobs, so a task that starts before the cancel is cheap. A Dirichlet split
    # needs labels, so it goes with a classifier, the rest with a language model.
    language_model = cli_cluster.submit(
        "--model", "gpt", "--dataset", "stdlib", "--mode", "async", "--inner-steps", "3",
        "--inner-optimizer", "sgd", "--inner-lr", "0.002", "--max-staleness", "3",
        "--context", "24", "--n-layer", "1", "--n-head", "2", "--d-model", "12",
        "--target-loss", "1.7", "--rounds", "1", "--batch-size", "4",
    ).spec  # fmt: skip
    classifier = cli_cluster.submit(
        "--mode", "diloco", "--data-split", "dirichlet", "--dirichlet-alpha", "0.3",
        "--min-nodes", "2", "--rounds", "1", "--batch-size", "8", "--inner-steps", "2",
    ).spec  # fmt: skip
    # Assert
    spec = language_model
    assert (spec.model, spec.dataset, spec.mode) == ("gpt", "stdlib", "async")
    assert (spec.inner_steps, spec.inner_optimizer, spec.inner_learning_rate) == (3, "sgd", 0.002)
    assert spec.max_staleness == 3
    assert (spec.context, spec.n_layer, spec.n_head, spec.d_model) == (24, 1, 2, 12)
    assert spec.target_loss == 1.7
    assert (spec.rounds, spec.batch_size, spec.data_split) == (1, 4, "iid")
    spec = classifier
    assert (spec.model, spec.mode, spec.inner_steps) == ("mlp", "diloco", 2)
    assert (spec.data_split, spec.dirichlet_alpha) == ("dirichlet", 0.3)
    assert (spec.min_nodes, spec.rounds, spec.batch_size) == (2, 1, 8)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_unset_options_leave_the_spec_file_alone(cli_cluster: CliCluster, tmp_path: Path) -> None:
    # Prepare: "local" trains on the digits.npz of the cluster's data-holding worker
    path = tmp_path / "spec.json"
    path.write_text(
        json.dumps(
            {
                "mode": "diloco",
                "innerSteps": 100,
                "innerLearningRate": 0.004,
                "dataSplit": "local",
                "rounds": 1,
                "batchSize": 8,
            }
        )
    )
    # Execute
    spec = cli_cluster.submit(str(path), "--inner-steps", "2").spec
    # Assert: the flag wins, the file's other values stay, fields set by neither stay unset
    assert (spec.mode, spec.inner_steps, spec.data_split) == ("diloco", 2, "local")
    assert (spec.inner_learning_rate, spec.rounds, spec.batch_size) == (0.004, 1, 8)
    assert (spec.n_layer, spec.target_loss, spec.dirichlet_alpha) == (0, 0.0, 0.0)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_without_the_new_options_every_new_field_stays_at_its_default(
    cli_cluster: CliCluster,
) -> None:
    # Prepare: the same spec submitted through the SDK, as the scheduler stores it
    with cli_cluster.client() as client:
        handle = client.submit(JobConfig(rounds=1))
        from_sdk = handle.get().spec
        handle.cancel()
    # Execute
    spec = cli_cluster.submit("--rounds", "1").spec
    # Assert: the CLI sent JobConfig(rounds=1) and nothing else
    assert spec == from_sdk
    assert (spec.model, spec.dataset, spec.rounds) == ("mlp", "digits", 1)
    assert tuple(getattr(spec, f) for f in NEW_FIELDS) == SYNC_DEFAULTS


def test_out_of_range_values_are_usage_errors() -> None:
    # Nothing listens on port 1: had the CLI tried to submit, it would fail as unavailable (5).
    env = {"TESSERA_SCHEDULER": "127.0.0.1:1"}
    for option, value in (("--inner-steps", "0"), ("--target-loss", "-1"), ("--n-head", "0")):
        result = CliRunner().invoke(cli.app, ["submit", option, value], env=env)
        assert result.exit_code == 2, (option, result.output)
        assert f"Invalid value for '{option}'" in result.output
