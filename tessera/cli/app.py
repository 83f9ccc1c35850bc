"""The ``tessera`` command line (typer + rich). Errors are one line and an exit code."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tessera.cli.exit_codes import ExitCode
from tessera.client import (
    Client,
    EventKind,
    Job,
    JobConfig,
    JobState,
    Node,
    RetryPolicy,
    RoundMetrics,
)
from tessera.client.jobs import DATA_SPLITS, MODES
from tessera.common.errors import InvalidSpec, NotFound, TesseraError, Unavailable

__all__ = [
    "DEMO_JOB",
    "app",
    "format_bytes",
    "job_summary",
    "main",
    "node_rows",
    "quality",
    "quality_text",
]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Tessera: train models on volunteered compute.",
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(no_args_is_help=True, help="Work with trained models.")
app.add_typer(model_app, name="model")

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
# Long enough to ride out a scheduler fail-over, short enough that a typo fails promptly.
CLI_RETRY = RetryPolicy(patience=10.0)
Scheduler = Annotated[str, typer.Option(envvar="TESSERA_SCHEDULER", help="scheduler host:port")]
Registry = Annotated[str, typer.Option(envvar="TESSERA_REGISTRY", help="registry host:port")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body; turn domain errors into one line on stderr and an exit code."""
    err = Console(stderr=True)
    codes: list[tuple[type[TesseraError], ExitCode]] = [
        (InvalidSpec, ExitCode.INVALID_INPUT),
        (NotFound, ExitCode.NOT_FOUND),
        (Unavailable, ExitCode.UNAVAILABLE),
        (TesseraError, ExitCode.ERROR),
    ]
    try:
        return fn()
    except TesseraError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True)
        code = next(c for cls, c in codes if isinstance(exc, cls))
        raise typer.Exit(code) from None


def quality(m: RoundMetrics | None) -> dict[str, float | None]:
    """The held-out quality figures that fit the model; the others are None.

    Language models (``test_perplexity > 0``) show their perplexity, classifiers their accuracy
    and macro-F1. The keys are always the same, so rows of both kinds share a table.
    """
    if m is None:
        return {"test_accuracy": None, "test_macro_f1": None, "test_perplexity": None}
    if m.is_language_model:
        return {
            "test_accuracy": None,
            "test_macro_f1": None,
            "test_perplexity": round(m.test_perplexity, 4),
        }
    return {
        "test_accuracy": round(m.test_accuracy, 4),
        "test_macro_f1": round(m.test_macro_f1, 4),
        "test_perplexity": None,
    }


def quality_text(m: RoundMetrics) -> str:
    """``quality`` as words: "perplexity 3.142" or "accuracy 0.9700  macro-F1 0.9650"."""
    if m.is_language_model:
        return f"perplexity {m.test_perplexity:.3f}"
    return f"accuracy {m.test_accuracy:.4f}  macro-F1 {m.test_macro_f1:.4f}"


def format_bytes(count: int) -> str:
    """A byte count for people: "512 B", "1.5 KiB", "3.0 MiB"."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def job_summary(job: Job) -> dict[str, Any]:
    """The fields a person scans first (metrics of the latest round)."""
    m = job.last_metrics
    return {
        "job_id": job.job_id,
        "name": job.spec.name,
        "state": job.state.value,
        "rounds": job.rounds_completed,
        **quality(m),
        "test_loss": round(m.test_loss, 4) if m else None,
        "payload_bytes": m.payload_bytes if m else None,
        "message": job.message,
    }


def follow_job(client: Client, job_id: str, console: Console, *, live: bool = True) -> Job:
    """Show a job's progress until it ends; return the final record.

    With ``live`` (an interactive terminal) a progress bar shows round, loss, accuracy and
    macro-F1 (perplexity for language models), live nodes and the time remaining; otherwise one
    line per round, which also shows the round's contribution payload.
    """
    live = live and console.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not live,
    )
    with progress:
        bar = progress.add_task("training", total=None, detail="")
        for event in client.watch(job_id):
            spec = event.job.spec
            progress.update(bar, total=spec.rounds or None)
            m = event.metrics
            if event.kind is EventKind.ROUND_COMPLETED and m is not None:
                detail = f"loss {m.train_loss:.4f}  {quality_text(m)}  nodes {event.live_nodes}"
                progress.update(bar, completed=m.round + 1, detail=detail)
                if not live:
                    console.print(
                        f"round {m.round + 1:4d}  loss {m.train_loss:.4f}  "
                        f"test loss {m.test_loss:.4f}  {quality_text(m)}  "
                        f"nodes {event.live_nodes}  {m.seconds * 1e3:.0f} ms  "
                        f"payload {format_bytes(m.payload_bytes)}",
                        highlight=False,
                    )
            elif event.kind is EventKind.SNAPSHOT:
                progress.update(bar, completed=event.job.rounds_completed)
            elif event.message:
                progress.console.print(f"[yellow]{event.message}[/yellow]", highlight=False)
    return client.get_job(job_id)


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


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
        int, typer.Option(help="Prometheus port of the registry; the others follow (--serve)")
    ] = 9101,
    token_file: Annotated[
        Path | None, typer.Option(help="write the cluster's submitter token to this file")
    ] = None,
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

    def body() -> Job | None:
        job = None
        with cluster:
            console.print(
                f"cluster up: etcd {cluster.etcd.endpoint}, registry {cluster.registry_address}, "
                f"scheduler {cluster.scheduler_address}, aggregator {cluster.aggregator_address}, "
                f"{workers} workers (logs in {cluster.log_dir})",
                highlight=False,
            )
            if token_file is not None and cluster.token:
                token_file.write_text(cluster.token + "\n")
                token_file.chmod(0o600)
            with Client(
                cluster.scheduler_address,
                registry=cluster.registry_address,
                retry=CLI_RETRY,
                token=cluster.token,
            ) as client:
                if demo:
                    spec = DEMO_JOB.with_(min_nodes=workers, tasks_per_round=workers)
                    handle = client.submit(spec)
                    console.print(f"submitted demo job {handle.job_id}", highlight=False)
                    job = follow_job(client, handle.job_id, console, live=not json_output)
                if serve:
                    console.print(
                        "serving; press Ctrl-C to stop. Calls need the submitter token: "
                        + (f"see {token_file}" if token_file else "use --token-file to save it")
                        + ' (export TESSERA_TOKEN; grpcurl -H "authorization: Bearer $TOKEN")',
                        highlight=False,
                    )
                    _wait_for_interrupt()
        return job

    job = _guard(body)
    if job is None:
        return
    accuracy = job.last_metrics.test_accuracy if job.last_metrics else 0.0
    summary = {
        "job_id": job.job_id,
        "test_accuracy": round(accuracy, 4),
        "rounds": job.rounds_completed,
        "seconds": round(time.monotonic() - started, 2),
    }
    console.print(
        f"job {job.job_id} {job.state.value}: accuracy {summary['test_accuracy']} after "
        f"{summary['rounds']} rounds in {summary['seconds']} s",
        highlight=False,
    )
    if json_output:
        print(json.dumps(summary), flush=True)
    if job.state is not JobState.SUCCEEDED:
        raise typer.Exit(ExitCode.JOB_FAILED)
    if accuracy < DEMO_JOB.target_accuracy:
        raise typer.Exit(ExitCode.TARGET_MISSED)


@app.command()
def submit(
    spec_file: Annotated[
        Path | None, typer.Argument(help="JSON job spec (proto JSON); flags override it")
    ] = None,
    model: Annotated[str | None, typer.Option(help="model of the zoo")] = None,
    dataset: Annotated[str | None, typer.Option()] = None,
    rounds: Annotated[int | None, typer.Option(min=1)] = None,
    target_accuracy: Annotated[float | None, typer.Option(min=0.0, max=1.0)] = None,
    min_nodes: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=0)] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    policy: Annotated[str | None, typer.Option(help="scheduling policy")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    mode: Annotated[str | None, typer.Option(help="training mode: " + ", ".join(MODES))] = None,
    inner_steps: Annotated[
        int | None, typer.Option(min=1, help="local steps per task (diloco, async)")
    ] = None,
    inner_optimizer: Annotated[
        str | None, typer.Option(help="the workers' optimizer for local steps")
    ] = None,
    inner_learning_rate: Annotated[
        float | None, typer.Option("--inner-lr", help="learning rate of the local steps")
    ] = None,
    max_staleness: Annotated[
        int | None, typer.Option(min=1, help="async: versions a contribution may lag")
    ] = None,
    data_split: Annotated[
        str | None, typer.Option(help="training data of the tasks: " + ", ".join(DATA_SPLITS))
    ] = None,
    dirichlet_alpha: Annotated[
        float | None, typer.Option(min=0.0, help="concentration of the dirichlet split")
    ] = None,
    context: Annotated[
        int | None, typer.Option(min=1, help="language models: window length in bytes")
    ] = None,
    n_layer: Annotated[
        int | None, typer.Option(min=1, help="language models: transformer blocks")
    ] = None,
    n_head: Annotated[
        int | None, typer.Option(min=1, help="language models: attention heads")
    ] = None,
    d_model: Annotated[
        int | None, typer.Option(min=1, help="language models: embedding width")
    ] = None,
    target_loss: Annotated[
        float | None, typer.Option(min=0.0, help="stop once the held-out loss is at most this")
    ] = None,
    watch: Annotated[bool, typer.Option(help="follow progress until the job ends")] = False,
    scheduler: Scheduler = "127.0.0.1:50052",
) -> None:
    """Submit a job from a JSON spec file and/or flags; print its id."""

    def body() -> None:
        spec = JobConfig()
        if spec_file is not None:
            try:
                spec = JobConfig.from_json(spec_file.read_text())
            except (OSError, json_format.ParseError) as exc:
                raise InvalidSpec(f"cannot read job spec {spec_file}: {exc}") from exc
        flags = {
            "model": model,
            "dataset": dataset,
            "rounds": rounds,
            "target_accuracy": target_accuracy,
            "min_nodes": min_nodes,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "policy": policy,
            "name": name,
            "mode": mode,
            "inner_steps": inner_steps,
            "inner_optimizer": inner_optimizer,
            "inner_learning_rate": inner_learning_rate,
            "max_staleness": max_staleness,
            "data_split": data_split,
            "dirichlet_alpha": dirichlet_alpha,
            "context": context,
            "n_layer": n_layer,
            "n_head": n_head,
            "d_model": d_model,
            "target_loss": target_loss,
        }
        spec = spec.with_(**{k: v for k, v in flags.items() if v is not None})
        with Client(scheduler, retry=CLI_RETRY) as client:
            handle = client.submit(spec)
            print(handle.job_id, flush=True)
            if watch:
                follow_job(client, handle.job_id, Console(stderr=True))

    _guard(body)


@app.command()
def status(job_id: str, scheduler: Scheduler = "127.0.0.1:50052") -> None:
    """Print a job's summary as JSON."""

    def body() -> None:
        with Client(scheduler, retry=CLI_RETRY) as client:
            print(json.dumps(job_summary(client.get_job(job_id))))

    _guard(body)


@app.command("watch")
def watch_cmd(job_id: str, scheduler: Scheduler = "127.0.0.1:50052") -> None:
    """Follow a job with a live progress bar until it ends."""

    def body() -> None:
        with Client(scheduler, retry=CLI_RETRY) as client:
            job = follow_job(client, job_id, Console(stderr=True))
            print(json.dumps(job_summary(job)))
            if job.state is not JobState.SUCCEEDED:
                raise typer.Exit(ExitCode.JOB_FAILED)

    _guard(body)


@app.command()
def jobs(scheduler: Scheduler = "127.0.0.1:50052", as_json: AsJson = False) -> None:
    """List jobs."""

    def body() -> None:
        with Client(scheduler, retry=CLI_RETRY) as client:
            rows = [job_summary(j) for j in client.list_jobs()]
        _print_rows(rows, as_json, "jobs")

    _guard(body)


@app.command()
def nodes(registry: Registry = "127.0.0.1:50051", as_json: AsJson = False) -> None:
    """List live volunteer nodes."""

    def body() -> None:
        with Client(registry=registry, retry=CLI_RETRY) as client:
            rows = node_rows(client.list_nodes())
        _print_rows(rows, as_json, "nodes")

    _guard(body)


def node_rows(listed: list[Node]) -> list[dict[str, Any]]:
    """One row per node; a ``datasets`` column when any node holds local data sets."""
    with_datasets = any(n.local_datasets for n in listed)
    rows: list[dict[str, Any]] = []
    for n in listed:
        row: dict[str, Any] = {
            "node_id": n.node_id,
            "hostname": n.hostname,
            "cores": n.cpu_cores,
            "gpus": n.gpu_count,
            "samples_per_s": round(n.throughput),
            "running": n.running_tasks,
            "completed": n.completed_tasks,
        }
        if with_datasets:
            row["datasets"] = list(n.local_datasets)
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(title=title)
    for column in rows[0] if rows else ["(none)"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    Console().print(table)


@app.command()
def cancel(job_id: str, scheduler: Scheduler = "127.0.0.1:50052") -> None:
    """Cancel a job."""

    def body() -> None:
        with Client(scheduler, retry=CLI_RETRY) as client:
            print(json.dumps(job_summary(client.cancel(job_id))))

    _guard(body)


@model_app.command("download")
def model_download(
    job_id: str,
    path: Path,
    scheduler: Scheduler = "127.0.0.1:50052",
    aggregator: Annotated[
        str | None, typer.Option(help="aggregator host:port, if not reachable as reported")
    ] = None,
) -> None:
    """Save a job's latest model as a safetensors file."""

    def body() -> None:
        with Client(scheduler, aggregator=aggregator, retry=CLI_RETRY) as client:
            saved = client.download_model(job_id, path)
        print(
            json.dumps(
                {
                    "path": str(saved.path),
                    "job_id": saved.job_id,
                    "model_version": saved.version,
                    "tensors": saved.tensors,
                    "bytes": saved.bytes,
                }
            )
        )

    _guard(body)


@app.command()
def plot(job_id: str, path: Path, scheduler: Scheduler = "127.0.0.1:50052") -> None:
    """Draw a job's loss and accuracy curves to a PNG."""

    def body() -> None:
        with Client(scheduler, retry=CLI_RETRY) as client:
            rounds = client.metrics(job_id)
        if not rounds:
            raise NotFound(f"job {job_id!r} has no completed rounds yet")
        from tessera.cli.plot import plot_rounds

        plot_rounds(rounds, path, title=f"job {job_id}")
        print(str(path))

    _guard(body)


@app.command()
def worker(
    registry: Registry = "127.0.0.1:50051",
    scheduler: Scheduler = "127.0.0.1:50052",
    name: Annotated[str, typer.Option(help="name shown to operators")] = "",
    threads: Annotated[int, typer.Option(min=1, help="torch threads for training")] = 1,
) -> None:
    """Join a cluster as a volunteer worker until Ctrl-C."""
    from services.worker.__main__ import main as worker_main

    args = ["--registry", registry, "--scheduler", scheduler, "--torch-threads", str(threads)]
    if name:
        args += ["--name", name]
    worker_main(args)


@app.command()
def key() -> None:
    """Print a new random cluster key (hex) for TESSERA_CLUSTER_KEY."""
    from tessera.common.auth import ClusterKey

    print(ClusterKey.generate().to_hex())


@app.command()
def token(
    role: Annotated[str, typer.Argument(help="join, submitter or service")],
    subject: Annotated[str, typer.Option(help="who the token is for")] = "operator",
    ttl_days: Annotated[float, typer.Option(min=0.0, help="validity in days")] = 30.0,
) -> None:
    """Mint a token with the cluster key in TESSERA_CLUSTER_KEY."""
    from tessera.common.auth import ClusterKey, Role

    def body() -> None:
        cluster_key = ClusterKey.from_env()
        if cluster_key is None:
            raise InvalidSpec("set TESSERA_CLUSTER_KEY to the cluster key (tessera key makes one)")
        try:
            chosen = Role(role)
        except ValueError:
            raise InvalidSpec(
                f"unknown role {role!r}; choose one of: join, submitter, service"
            ) from None
        print(cluster_key.mint(chosen, subject, ttl=ttl_days * 86400))

    _guard(body)


@app.command()
def schedule(
    etc_file: Annotated[Path, typer.Option(help="ETC matrix, Braun et al. format")],
    tasks: Annotated[int, typer.Option(min=1)],
    machines: Annotated[int, typer.Option(min=1)],
    algorithm: Annotated[
        str, typer.Option(help="min-min, max-min, sufferage, lpt, round-robin or genetic")
    ] = "min-min",
    time_limit: Annotated[float | None, typer.Option(help="seconds, for genetic")] = None,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON line")] = False,
) -> None:
    """Solve an ETC scheduling instance offline and print the makespan."""
    from services.scheduler.offline import schedule_file

    def body() -> None:
        result = schedule_file(etc_file, tasks, machines, algorithm, time_limit, seed)
        if as_json:
            print(json.dumps(result))
        else:
            print(
                f"{result['algorithm']}: makespan {result['makespan']:.3f} "
                f"in {result['seconds']:.3f} s"
            )

    _guard(body)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="tessera")
