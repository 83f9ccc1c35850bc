"""The ``tessera`` command line (typer + rich). Errors are one line and an exit code."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf import json_format
from rich.console import Console

from tessera.cli.exit_codes import ExitCode
from tessera.client import Client, JobConfig
from tessera.common.errors import InvalidSpec, NotFound, TesseraError, Unavailable
from tessera.v1 import common_pb2, scheduler_pb2

__all__ = ["DEMO_JOB", "app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# The demo: an MLP on the 8x8 digits that scikit-learn ships, data-parallel over the workers.
DEMO_JOB = JobConfig(
    name="digits-demo",
    model="mlp",
    dataset="digits",
    rounds=300,
    target_accuracy=0.97,
    batch_size=64,
    learning_rate=0.02,
    optimizer="adam",
    policy="min_min",
    hidden_sizes=(128,),
)

T = TypeVar("T")
SCHEDULER = Annotated[str, typer.Option(help="scheduler host:port")]
REGISTRY = Annotated[str, typer.Option(help="registry host:port")]


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body; turn domain errors into one line on stderr and an exit code."""
    err = Console(stderr=True)
    try:
        return fn()
    except InvalidSpec as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.INVALID_INPUT) from None
    except NotFound as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.NOT_FOUND) from None
    except Unavailable as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.UNAVAILABLE) from None
    except TesseraError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(ExitCode.ERROR) from None


def _job_summary(job: common_pb2.Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower(),
        "rounds": job.rounds_completed,
        "test_accuracy": round(job.last_metrics.test_accuracy, 4),
        "test_loss": round(job.last_metrics.test_loss, 4),
        "message": job.message,
    }


def follow_job(client: Client, job_id: str, console: Console) -> common_pb2.Job:
    """Print progress lines for a job until it ends; return the final record."""
    for event in client.watch(job_id):
        kind = event.kind
        m = event.metrics
        if kind == scheduler_pb2.JOB_EVENT_KIND_ROUND_COMPLETED:
            console.print(
                f"round {m.round + 1:4d}  loss {m.train_loss:.4f}  "
                f"test loss {m.test_loss:.4f}  accuracy {m.test_accuracy:.4f}  "
                f"nodes {event.live_nodes}  {m.seconds * 1e3:.0f} ms",
                highlight=False,
            )
        elif kind in (
            scheduler_pb2.JOB_EVENT_KIND_WAITING,
            scheduler_pb2.JOB_EVENT_KIND_TASK_REASSIGNED,
            scheduler_pb2.JOB_EVENT_KIND_FINISHED,
        ):
            console.print(f"[yellow]{event.message}[/yellow]", highlight=False)
    return client.get_job(job_id)


@app.command()
def up(
    workers: Annotated[int, typer.Option(min=1, max=64, help="number of worker processes")] = 3,
    json_output: Annotated[
        bool, typer.Option("--json", help="last line is a JSON summary")
    ] = False,
    serve: Annotated[bool, typer.Option(help="keep the cluster running until Ctrl-C")] = False,
    demo: Annotated[bool, typer.Option(help="run the demo job")] = True,
    registry_port: int = 50051,
    scheduler_port: int = 50052,
    aggregator_port: int = 50053,
    metrics_port: Annotated[
        int, typer.Option(help="Prometheus port of the registry; the others follow (with --serve)")
    ] = 9101,
) -> None:
    """Start etcd, the four services and N workers locally; run the demo job; shut down."""
    from tessera.cli.cluster import ClusterPorts, LocalCluster

    console = Console(stderr=json_output)
    started = time.monotonic()
    ports = (
        ClusterPorts(registry_port, scheduler_port, aggregator_port, metrics_port)
        if serve
        else ClusterPorts()
    )
    cluster = LocalCluster(workers=workers, ports=ports)

    def body() -> None:
        with cluster:
            console.print(
                f"cluster up: etcd {cluster.etcd.endpoint}, registry {cluster.registry_address}, "
                f"scheduler {cluster.scheduler_address}, aggregator {cluster.aggregator_address}, "
                f"{workers} workers (logs in {cluster.log_dir})",
                highlight=False,
            )
            with Client(cluster.scheduler_address, registry=cluster.registry_address) as client:
                job = None
                if demo:
                    spec = DEMO_JOB.with_(min_nodes=workers, tasks_per_round=workers)
                    handle = client.submit(spec)
                    console.print(f"submitted demo job {handle.job_id}", highlight=False)
                    job = follow_job(client, handle.job_id, console)
                if serve:
                    console.print("serving; press Ctrl-C to stop")
                    _wait_for_interrupt()
        if job is None:
            return
        summary = {
            "job_id": job.job_id,
            "test_accuracy": round(job.last_metrics.test_accuracy, 4),
            "rounds": job.rounds_completed,
            "seconds": round(time.monotonic() - started, 2),
        }
        console.print(
            f"job {job.job_id} {common_pb2.JobState.Name(job.state)}: accuracy "
            f"{summary['test_accuracy']} after {summary['rounds']} rounds "
            f"in {summary['seconds']} s",
            highlight=False,
        )
        if json_output:
            print(json.dumps(summary), flush=True)
        if job.state != common_pb2.JOB_STATE_SUCCEEDED:
            raise typer.Exit(ExitCode.JOB_FAILED)
        if job.last_metrics.test_accuracy < DEMO_JOB.target_accuracy:
            raise typer.Exit(ExitCode.TARGET_MISSED)

    _guard(body)


def _wait_for_interrupt() -> None:
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass


@app.command()
def submit(
    spec_file: Annotated[Path | None, typer.Argument(help="JSON job spec (proto JSON)")] = None,
    scheduler: SCHEDULER = "127.0.0.1:50052",
    watch: Annotated[bool, typer.Option(help="follow progress until the job ends")] = False,
) -> None:
    """Submit a job from a JSON spec file (or the demo spec without one); print its id."""

    def body() -> None:
        if spec_file is None:
            spec = DEMO_JOB
        else:
            try:
                spec = JobConfig.from_json(spec_file.read_text())
            except (OSError, json_format.ParseError) as exc:
                raise InvalidSpec(f"cannot read job spec {spec_file}: {exc}") from exc
        with Client(scheduler) as client:
            handle = client.submit(spec)
            print(handle.job_id)
            if watch:
                follow_job(client, handle.job_id, Console())

    _guard(body)


@app.command()
def status(job_id: str, scheduler: SCHEDULER = "127.0.0.1:50052") -> None:
    """Print a job's record as JSON."""

    def body() -> None:
        with Client(scheduler) as client:
            print(json_format.MessageToJson(client.get_job(job_id)))

    _guard(body)


@app.command("watch")
def watch_cmd(job_id: str, scheduler: SCHEDULER = "127.0.0.1:50052") -> None:
    """Follow a job's progress until it ends."""

    def body() -> None:
        with Client(scheduler) as client:
            job = follow_job(client, job_id, Console())
            print(json.dumps(_job_summary(job)))

    _guard(body)


@app.command()
def jobs(scheduler: SCHEDULER = "127.0.0.1:50052") -> None:
    """List jobs, one JSON line each."""

    def body() -> None:
        with Client(scheduler) as client:
            for job in client.list_jobs():
                print(json.dumps(_job_summary(job)))

    _guard(body)


@app.command()
def nodes(registry: REGISTRY = "127.0.0.1:50051") -> None:
    """List live nodes, one JSON line each."""

    def body() -> None:
        with Client(registry=registry) as client:
            for node in client.list_nodes():
                print(json.dumps(json_format.MessageToDict(node)))

    _guard(body)


@app.command()
def cancel(job_id: str, scheduler: SCHEDULER = "127.0.0.1:50052") -> None:
    """Cancel a job."""

    def body() -> None:
        with Client(scheduler) as client:
            print(json.dumps(_job_summary(client.cancel(job_id))))

    _guard(body)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="tessera")


if __name__ == "__main__":
    main()
