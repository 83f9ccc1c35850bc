"""``tessera submit``: flags and spec files become the submitted ``JobConfig`` (no server)."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from typer.testing import CliRunner

from tessera.cli import app as cli
from tessera.client import JobConfig


class FakeClient:
    """Records what ``submit`` sends instead of calling a scheduler."""

    submitted: list[JobConfig] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def submit(self, spec: JobConfig) -> Any:
        FakeClient.submitted.append(spec)

        class Handle:
            job_id = "job-1"

        return Handle()


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[JobConfig]:
    FakeClient.submitted = []
    monkeypatch.setattr(cli, "Client", FakeClient)
    return FakeClient.submitted


def _submit(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["submit", *args])


def test_the_new_options_map_to_the_spec_fields(submitted: list[JobConfig]) -> None:
    # Execute
    result = _submit(
        "--model", "gpt", "--dataset", "stdlib", "--mode", "async", "--inner-steps", "20",
        "--inner-optimizer", "sgd", "--inner-lr", "0.002", "--max-staleness", "3",
        "--data-split", "dirichlet", "--dirichlet-alpha", "0.3", "--context", "32",
        "--n-layer", "3", "--n-head", "2", "--d-model", "48", "--target-loss", "1.7",
    )  # fmt: skip
    # Assert
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "job-1"
    (spec,) = submitted
    assert (spec.model, spec.dataset, spec.mode) == ("gpt", "stdlib", "async")
    assert (spec.inner_steps, spec.inner_optimizer, spec.inner_learning_rate) == (20, "sgd", 0.002)
    assert spec.max_staleness == 3
    assert (spec.data_split, spec.dirichlet_alpha) == ("dirichlet", 0.3)
    assert (spec.context, spec.n_layer, spec.n_head, spec.d_model) == (32, 3, 2, 48)
    assert spec.target_loss == 1.7


def test_unset_options_leave_the_spec_file_alone(
    submitted: list[JobConfig], tmp_path: Path
) -> None:
    # Prepare
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"mode": "diloco", "innerSteps": 100, "dataSplit": "local"}))
    # Execute
    result = _submit(str(path), "--inner-steps", "10")
    # Assert
    assert result.exit_code == 0, result.output
    (spec,) = submitted
    assert (spec.mode, spec.inner_steps, spec.data_split) == ("diloco", 10, "local")
    assert (spec.n_layer, spec.target_loss, spec.inner_learning_rate) == (0, 0.0, 0.0)


def test_without_the_new_options_every_new_field_stays_at_its_default(
    submitted: list[JobConfig],
) -> None:
    result = _submit("--rounds", "5")
    assert result.exit_code == 0, result.output
    assert submitted == [JobConfig(rounds=5)]


def test_out_of_range_values_are_usage_errors(submitted: list[JobConfig]) -> None:
    for args in (("--inner-steps", "0"), ("--target-loss", "-1"), ("--n-head", "0")):
        result = _submit(*args)
        assert result.exit_code == 2, args
    assert submitted == []
