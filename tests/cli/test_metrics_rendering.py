"""How ``tessera watch``, ``status`` and ``nodes`` show round metrics and nodes (no server)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tessera.cli import app as cli
from tessera.client import EventKind, Job, JobConfig, JobEvent, JobState, Node, RoundMetrics

CLASSIFIER = RoundMetrics(
    round=2,
    model_version=3,
    train_loss=0.31,
    test_loss=0.25,
    test_accuracy=0.9375,
    contributions=3,
    seconds=0.05,
    test_macro_f1=0.91234,
    payload_bytes=3 * 1024 * 1024,
)
LANGUAGE_MODEL = RoundMetrics(
    round=0,
    model_version=1,
    train_loss=1.9,
    test_loss=1.5,
    test_accuracy=0.55,
    contributions=2,
    seconds=0.5,
    test_perplexity=4.48169,
    payload_bytes=512,
)


def _job(metrics: RoundMetrics | None, state: JobState = JobState.SUCCEEDED) -> Job:
    rounds = metrics.round + 1 if metrics else 0
    return Job("job-1", JobConfig(rounds=3), state, rounds, rounds, metrics, "", 1.0, 2.0)


def test_classifiers_show_accuracy_and_macro_f1_language_models_perplexity() -> None:
    assert cli.quality(CLASSIFIER) == {
        "test_accuracy": 0.9375,
        "test_macro_f1": 0.9123,
        "test_perplexity": None,
    }
    assert cli.quality(LANGUAGE_MODEL) == {
        "test_accuracy": None,
        "test_macro_f1": None,
        "test_perplexity": 4.4817,
    }
    assert cli.quality_text(CLASSIFIER) == "accuracy 0.9375  macro-F1 0.9123"
    assert cli.quality_text(LANGUAGE_MODEL) == "perplexity 4.482"


def test_job_summaries_have_the_same_keys_for_every_kind_of_job() -> None:
    summaries = [cli.job_summary(_job(m)) for m in (CLASSIFIER, LANGUAGE_MODEL, None)]
    assert len({tuple(s) for s in summaries}) == 1
    classifier, language_model, fresh = summaries
    assert classifier["test_macro_f1"] == 0.9123 and classifier["payload_bytes"] == 3145728
    assert language_model["test_perplexity"] == 4.4817 and language_model["test_accuracy"] is None
    assert language_model["payload_bytes"] == 512
    assert fresh["test_perplexity"] is None and fresh["payload_bytes"] is None


def test_byte_counts_are_shown_in_binary_units() -> None:
    assert [cli.format_bytes(n) for n in (0, 1023, 1536, 3 * 1024**2, 5 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "3.0 MiB",
        "5.0 TiB",
    ]


class FakeClient:
    """Serves one job's events and record."""

    metrics: RoundMetrics = CLASSIFIER
    nodes: list[Node] = []

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

    def watch(self, job_id: str) -> Iterator[JobEvent]:
        job = _job(self.metrics, JobState.RUNNING)
        yield JobEvent(EventKind.SNAPSHOT, job, 0, None, "", 3, 1.0)
        yield JobEvent(EventKind.ROUND_COMPLETED, job, self.metrics.round, self.metrics, "", 3, 2.0)

    def get_job(self, job_id: str) -> Job:
        return _job(self.metrics)

    def list_nodes(self) -> list[Node]:
        return self.nodes


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr(cli, "Client", FakeClient)
    return FakeClient


def _follow(metrics: RoundMetrics) -> str:
    FakeClient.metrics = metrics
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    cli.follow_job(FakeClient(), "job-1", console)  # type: ignore[arg-type]
    return out.getvalue()


def test_watch_lines_show_the_quality_that_fits_the_model_and_the_payload() -> None:
    classifier = _follow(CLASSIFIER)
    language_model = _follow(LANGUAGE_MODEL)
    assert "accuracy 0.9375  macro-F1 0.9123" in classifier
    assert "payload 3.0 MiB" in classifier and "perplexity" not in classifier
    assert "perplexity 4.482" in language_model and "payload 512 B" in language_model
    assert "accuracy" not in language_model and "macro-F1" not in language_model


def test_status_prints_the_summary_as_json(fake: type[FakeClient]) -> None:
    fake.metrics = LANGUAGE_MODEL
    result = CliRunner().invoke(cli.app, ["status", "job-1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["test_perplexity"] == 4.4817 and summary["payload_bytes"] == 512


def _node(node_id: str, datasets: tuple[str, ...] = ()) -> Node:
    return Node(node_id, "host", 4, 1 << 30, 0, 1000.0, 0, 7, datasets)


def test_nodes_show_local_datasets_only_when_a_node_has_some(fake: type[FakeClient]) -> None:
    # Prepare
    fake.nodes = [_node("a", ("clinic-a", "clinic-b")), _node("b")]
    # Execute
    with_datasets = CliRunner().invoke(cli.app, ["nodes", "--json"])
    fake.nodes = [_node("c")]
    without = CliRunner().invoke(cli.app, ["nodes", "--json"])
    table = cli.node_rows([_node("a", ("clinic-a",))])
    # Assert
    assert with_datasets.exit_code == 0 and without.exit_code == 0
    rows = [json.loads(line) for line in with_datasets.stdout.splitlines()]
    assert [r["datasets"] for r in rows] == [["clinic-a", "clinic-b"], []]
    assert "datasets" not in json.loads(without.stdout)
    assert table[0]["datasets"] == ["clinic-a"]
    assert cli._cell(["clinic-a", "clinic-b"]) == "clinic-a, clinic-b"  # noqa: SLF001
