"""How ``tessera watch``, ``status`` and ``nodes`` show round metrics and nodes.

The rendering helpers are pure and tested on values; the commands run as a user runs them,
against a real local cluster (``cli_cluster``), and are checked against what the SDK reads.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass

import pytest

from tessera.cli import app as cli
from tessera.client import Job, JobConfig, JobState, Node, RoundMetrics
from tests.cli.conftest import LOCAL_DATASET, CliCluster

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


def _node(node_id: str, datasets: tuple[str, ...] = ()) -> Node:
    return Node(node_id, "host", 4, 1 << 30, 0, 1000.0, 0, 7, datasets)


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


def test_node_rows_have_a_datasets_column_only_when_a_node_has_some() -> None:
    with_datasets = cli.node_rows([_node("a", ("clinic-a", "clinic-b")), _node("b")])
    without = cli.node_rows([_node("c")])
    assert [r["datasets"] for r in with_datasets] == [["clinic-a", "clinic-b"], []]
    assert "datasets" not in without[0]
    assert cli._cell(["clinic-a", "clinic-b"]) == "clinic-a, clinic-b"  # noqa: SLF001


# --- against a real cluster -------------------------------------------------------------------

# An MLP of one hidden layer of 16 on the 8x8 digits: (64*16 + 16) + (16*10 + 10) parameters,
# so one fp32 gradient, the payload of a one-task sync round, is 4840 bytes.
CLASSIFIER_PAYLOAD = 4 * ((64 * 16 + 16) + (16 * 10 + 10))


@dataclass(frozen=True)
class Followed:
    """A job submitted with ``--watch``: the command's result and the job's rounds (SDK)."""

    job_id: str
    result: subprocess.CompletedProcess[str]
    rounds: list[RoundMetrics]

    @property
    def lines(self) -> list[str]:
        """The per-round lines ``--watch`` printed (stderr is not a terminal: no bar)."""
        return [line for line in self.result.stderr.splitlines() if line.startswith("round")]


def _submit_and_follow(cli_cluster: CliCluster, *args: str) -> Followed:
    # The command starts watching right after the submission returns, long before a worker
    # can have trained, reported and had the first round evaluated: every round is streamed.
    # It returns when the job has ended.
    result = cli_cluster.tessera("submit", *args, "--watch")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    with cli_cluster.client() as client:
        return Followed(job_id, result, client.metrics(job_id))


@pytest.fixture(scope="module")
def classifier_job(cli_cluster: CliCluster, tmp_path_factory: pytest.TempPathFactory) -> Followed:
    spec = tmp_path_factory.mktemp("classifier") / "spec.json"
    spec.write_text(json.dumps({"hiddenSizes": [16]}))
    return _submit_and_follow(cli_cluster, str(spec), "--rounds", "3", "--batch-size", "32")


@pytest.fixture(scope="module")
def language_model_job(cli_cluster: CliCluster) -> Followed:
    return _submit_and_follow(
        cli_cluster, "--model", "gpt", "--dataset", "stdlib", "--n-layer", "1", "--n-head", "2",
        "--d-model", "16", "--context", "16", "--batch-size", "4", "--rounds", "1",
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_watch_lines_show_the_quality_that_fits_the_model_and_the_payload(
    classifier_job: Followed, language_model_job: Followed
) -> None:
    # Assert: one line per round, each with that round's figures as the SDK reads them
    assert len(classifier_job.rounds) == 3
    assert len(classifier_job.lines) == 3, classifier_job.result.stderr
    for m, line in zip(classifier_job.rounds, classifier_job.lines, strict=True):
        assert line.startswith(f"round {m.round + 1:4d}  loss {m.train_loss:.4f}")
        assert f"accuracy {m.test_accuracy:.4f}  macro-F1 {m.test_macro_f1:.4f}" in line
        assert m.payload_bytes == CLASSIFIER_PAYLOAD and "payload 4.7 KiB" in line
        assert "perplexity" not in line
    (m,) = language_model_job.rounds
    (line,) = language_model_job.lines
    assert m.test_perplexity > 1 and m.payload_bytes > 0
    assert f"perplexity {m.test_perplexity:.3f}" in line
    assert f"payload {cli.format_bytes(m.payload_bytes)}" in line
    assert "accuracy" not in line and "macro-F1" not in line


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_status_prints_the_summary_as_json(
    cli_cluster: CliCluster, language_model_job: Followed
) -> None:
    # Execute: the job ended when ``submit --watch`` returned
    result = cli_cluster.tessera("status", language_model_job.job_id)
    # Assert
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    (m,) = language_model_job.rounds
    assert (summary["job_id"], summary["state"]) == (language_model_job.job_id, "succeeded")
    assert summary["rounds"] == 1
    assert summary["test_perplexity"] == round(m.test_perplexity, 4)
    assert summary["test_perplexity"] == pytest.approx(math.exp(summary["test_loss"]), rel=1e-3)
    assert m.test_perplexity == pytest.approx(math.exp(m.test_loss), rel=1e-6)
    assert summary["test_accuracy"] is None and summary["test_macro_f1"] is None
    assert summary["payload_bytes"] == m.payload_bytes > 0


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_nodes_show_the_local_datasets_of_the_nodes_that_hold_some(
    cli_cluster: CliCluster,
) -> None:
    # Execute
    result = cli_cluster.tessera("nodes", "--json")
    # Assert: worker-1 was started with a folder holding digits.npz, worker-0 with none
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["hostname"]: r["datasets"] for r in rows} == {
        "worker-0": [],
        "worker-1": [LOCAL_DATASET],
    }
    with cli_cluster.client() as client:
        assert sorted(r["node_id"] for r in rows) == sorted(n.node_id for n in client.list_nodes())
