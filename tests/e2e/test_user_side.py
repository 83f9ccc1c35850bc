"""What users touch: grpcurl against `tessera up --serve`, Prometheus metrics, a real Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.common.etcd.server import free_port
from tessera.v1 import registry_pb2, registry_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOKEN_FILE = Path(tempfile.mkdtemp(prefix="tessera-test-")) / "token"


@dataclass
class Served:
    registry: int
    scheduler: int
    aggregator: int
    metrics: int
    process: subprocess.Popen[str]


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except (grpc.RpcError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    ports = [free_port() for _ in range(3)]
    metrics = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tessera.cli",
            "up",
            "--serve",
            "--no-demo",
            "--registry-port",
            str(ports[0]),
            "--scheduler-port",
            str(ports[1]),
            "--aggregator-port",
            str(ports[2]),
            "--metrics-port",
            str(metrics),
            "--token-file",
            str(TOKEN_FILE),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cluster = Served(ports[0], ports[1], ports[2], metrics, process)
    registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(f"127.0.0.1:{ports[0]}"))
    _wait(TOKEN_FILE.exists, 120, "the token file")
    metadata = (("authorization", f"Bearer {_token()}"),)
    _wait(
        lambda: (
            len(
                registry.ListNodes(
                    registry_pb2.ListNodesRequest(), timeout=2, metadata=metadata
                ).nodes
            )
            == 3
        ),
        120,
        "three workers",
    )
    yield cluster
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out[-2000:]


def _grpcurl(
    *args: str, check: bool = True, token: bool = True
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("grpcurl") or str(Path(sysconfig.get_path("scripts")) / "grpcurl")
    header = ["-H", f"authorization: Bearer {_token()}"] if token else []
    return subprocess.run(
        [binary, "-plaintext", *header, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def _token() -> str:
    return TOKEN_FILE.read_text().strip()


def test_grpcurl_lists_and_describes_every_service(served: Served) -> None:
    for port, service in (
        (served.registry, "tessera.v1.Registry"),
        (served.scheduler, "tessera.v1.Scheduler"),
        (served.aggregator, "tessera.v1.Aggregator"),
    ):
        listed = _grpcurl(f"127.0.0.1:{port}", "list").stdout.split()
        assert service in listed and "grpc.health.v1.Health" in listed
        health = grpc.insecure_channel(f"127.0.0.1:{port}")
        status = health_pb2_grpc.HealthStub(health).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    described = _grpcurl(f"127.0.0.1:{served.scheduler}", "describe", "tessera.v1.Scheduler")
    assert "rpc SubmitJob ( .tessera.v1.SubmitJobRequest )" in described.stdout
    message = _grpcurl(f"127.0.0.1:{served.scheduler}", "describe", "tessera.v1.JobSpec")
    assert "target_accuracy" in message.stdout


def test_grpcurl_submits_gets_and_watches_a_job(served: Served) -> None:
    address = f"127.0.0.1:{served.scheduler}"
    spec = {"spec": {"rounds": 20, "minNodes": 3, "batchSize": 32, "learningRate": 0.02}}
    submitted = json.loads(
        _grpcurl("-d", json.dumps(spec), address, "tessera.v1.Scheduler/SubmitJob").stdout
    )
    job_id = submitted["job_id"]  # grpcurl prints proto field names
    watched = _grpcurl(
        "-d", json.dumps({"jobId": job_id}), address, "tessera.v1.Scheduler/WatchJob"
    )
    events = [json.loads(chunk) for chunk in _split_json_stream(watched.stdout)]
    # The snapshot says how far the job got; every later round is streamed, none is missed.
    snapshot = events[0]
    assert snapshot["kind"] == "JOB_EVENT_KIND_SNAPSHOT"
    done = snapshot["job"].get("rounds_completed", 0)
    rounds = [
        e["metrics"].get("round", 0)
        for e in events
        if e["kind"] == "JOB_EVENT_KIND_ROUND_COMPLETED"
    ]
    assert rounds == list(range(done, 20))
    if done < 20:
        assert events[-1]["kind"] == "JOB_EVENT_KIND_FINISHED"
    job = json.loads(
        _grpcurl("-d", json.dumps({"jobId": job_id}), address, "tessera.v1.Scheduler/GetJob").stdout
    )
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["rounds_completed"] == 20


def test_grpcurl_bad_input_gets_a_named_error(served: Served) -> None:
    address = f"127.0.0.1:{served.scheduler}"
    bad = _grpcurl(
        "-d",
        json.dumps({"spec": {"learningRate": -1}}),
        address,
        "tessera.v1.Scheduler/SubmitJob",
        check=False,
    )
    assert bad.returncode != 0
    assert "InvalidArgument" in bad.stderr
    assert "learning_rate (-1.0) must be > 0" in bad.stderr
    missing = _grpcurl(
        "-d", json.dumps({"jobId": "nope"}), address, "tessera.v1.Scheduler/GetJob", check=False
    )
    assert "NotFound" in missing.stderr and "job 'nope' not found" in missing.stderr
    anonymous = _grpcurl(
        "-d", "{}", address, "tessera.v1.Scheduler/ListJobs", check=False, token=False
    )
    assert "Unauthenticated" in anonymous.stderr
    assert "needs credentials (authorization: Bearer <token>)" in anonymous.stderr


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_every_process_exports_prometheus_metrics(served: Served) -> None:
    registry, scheduler, aggregator = (_scrape(served.metrics + i) for i in range(3))
    workers = [_scrape(served.metrics + 3 + i) for i in range(3)]
    assert 'tessera_rpcs_total{code="OK",method="/tessera.v1.Registry/Heartbeat"}' in registry
    assert "tessera_live_nodes 3.0" in scheduler
    assert "tessera_rpc_seconds_bucket" in scheduler
    assert "tessera_contributions_total" in aggregator
    assert all("tessera_worker_tasks_total" in w for w in workers)


def test_a_real_prometheus_scrapes_the_cluster(served: Served, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus server is not installed (Debian package 'prometheus')")
    port = free_port()
    targets = [f"127.0.0.1:{served.metrics + i}" for i in range(6)]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tessera\n"
        f"    static_configs:\n      - targets: {json.dumps(targets)}\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query?query=tessera_live_nodes"

        def live_nodes_seen() -> bool:
            with urllib.request.urlopen(query, timeout=5) as response:
                result = json.loads(response.read())["data"]["result"]
            return bool(result) and result[0]["value"][1] == "3"

        _wait(live_nodes_seen, 60, "Prometheus to report tessera_live_nodes = 3")
    finally:
        process.terminate()
        process.wait(10)


def _split_json_stream(text: str) -> list[str]:
    """grpcurl prints one pretty JSON object per streamed message."""
    decoder = json.JSONDecoder()
    chunks, index = [], 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        obj, end = decoder.raw_decode(text, index)
        chunks.append(json.dumps(obj))
        index = end
    return chunks


def _tessera(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "TESSERA_TOKEN": _token()},
    )


def test_cli_submits_follows_plots_and_downloads_a_model(served: Served, tmp_path: Path) -> None:
    # Prepare
    scheduler = f"127.0.0.1:{served.scheduler}"
    # Execute
    submitted = _tessera(
        "submit", "--rounds", "4", "--min-nodes", "3", "--batch-size", "64",
        "--learning-rate", "0.02", "--name", "cli", "--watch", "--scheduler", scheduler,
    )  # fmt: skip
    job_id = submitted.stdout.strip().splitlines()[0]
    status = json.loads(_tessera("status", job_id, "--scheduler", scheduler).stdout)
    listed = _tessera("jobs", "--json", "--scheduler", scheduler).stdout.splitlines()
    nodes = _tessera("nodes", "--json", "--registry", f"127.0.0.1:{served.registry}").stdout
    png = tmp_path / "curves.png"
    plotted = _tessera("plot", job_id, str(png), "--scheduler", scheduler)
    model = tmp_path / "model.safetensors"
    downloaded = _tessera("model", "download", job_id, str(model), "--scheduler", scheduler)
    # Assert
    assert submitted.returncode == 0, submitted.stderr
    assert status["state"] == "succeeded" and status["rounds"] == 4
    assert job_id in {json.loads(line)["job_id"] for line in listed}
    assert len(nodes.splitlines()) == 3
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(downloaded.stdout)["model_version"] == 4
    _assert_model_loads_and_scores(model, status["test_accuracy"])


def _assert_model_loads_and_scores(path: Path, reported_accuracy: float) -> None:
    """The file loads into a fresh zoo model with plain torch and scores what was reported."""
    from safetensors.torch import load_file

    from tessera.ml.datasets import load_dataset
    from tessera.ml.training import evaluate
    from tessera.ml.zoo import ModelSpec, build_model

    model = build_model("mlp", ModelSpec(in_features=64, num_classes=10))
    model.load_state_dict(load_file(str(path)))
    data = load_dataset("digits")
    accuracy = evaluate(model, data.test_x, data.test_y).accuracy
    assert round(accuracy, 4) == reported_accuracy


def test_cli_errors_are_one_line_with_an_exit_code(served: Served) -> None:
    scheduler = f"127.0.0.1:{served.scheduler}"
    missing = _tessera("status", "nope", "--scheduler", scheduler)
    bad = _tessera("submit", "--learning-rate", "-1", "--scheduler", scheduler)
    down = _tessera("jobs", "--scheduler", "127.0.0.1:1")
    assert (missing.returncode, bad.returncode, down.returncode) == (4, 3, 5)
    assert missing.stderr.strip() == "error: job 'nope' not found"
    assert "learning_rate (-1.0) must be > 0" in bad.stderr
    assert "Traceback" not in missing.stderr + bad.stderr + down.stderr


@pytest.mark.parametrize("example", ["sdk_quickstart.py", "async_watch.py"])
def test_documented_examples_run(served: Served, example: str) -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / example
    addresses = [f"127.0.0.1:{served.scheduler}", f"127.0.0.1:{served.registry}"]
    result = subprocess.run(
        [sys.executable, str(path), *addresses],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "TESSERA_TOKEN": _token()},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    if example == "sdk_quickstart.py":
        assert "rejected as expected: learning_rate (-1.0) must be > 0" in result.stdout
        assert "succeeded" in result.stdout and "saved to" in result.stdout
    else:
        assert result.stdout.count("succeeded, 5 rounds watched") == 2
