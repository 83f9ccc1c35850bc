"""Flower's half of the digits benchmark: FedAvg on loopback, one process per party.

Runs inside a venv of its own with flwr 1.41 (see ``bench/flower_env.py``) and imports only the
standard library, numpy, torch and flwr. The script itself is a small orchestrator for one of two
Flower runtimes (``--runtime``), all on 127.0.0.1, and kills every process it started (with their
children) on the way out:

``legacy`` (default): a Flower server process (``flwr.server.start_server``, the deprecated gRPC
bidi transport, no Ray, no app bundle) and ``--clients`` client processes
(``flwr.client.start_client`` with a ``NumPyClient``).

``deployment``: Flower 1.41's Deployment Runtime with the Message API. A ``flower-superlink``,
``--clients`` ``flower-supernode`` processes (``--node-config "partition-id=<i>"``), both in
insecure mode and with ``subprocess`` isolation, and ``flwr run`` submitting a Flower App built
at run time in a temporary directory (its ``pyproject.toml`` plus a copy of this script, whose
``server_app`` and ``client_app`` are the app's components). The SuperLink's SuperExec starts the
ServerApp (``flwr-serverapp``); each SuperNode's SuperExec starts one ``flwr-clientapp`` process
per message. Runtime dependency installation is off and so are telemetry and update checks.
Every round thus starts a fresh ClientApp process per client, which imports flwr, torch and this
script and pays torch's lazy set-up before its first step, and it waits on Flower's polling: the
ServerApp's grid pulls replies every 3 s, an idle SuperNode pulls messages every 3 s and its
ClientApp's reply every 0.5 s (all fixed in flwr's source), and a SuperExec asks for work every
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` seconds (1 by default, 0.5 here unless set).

The job: the MLP ``Flatten -> Linear(64, h1) -> ReLU -> ... -> Linear(h_last, 10)`` starting
from ``init.npz``, FedAvg over all clients every round. Each client runs ``--local-steps`` AdamW
steps per round (a fresh optimizer every round) on batches of ``--batch-size`` drawn from its own
shard; the server evaluates the global model on ``test.npz`` after every round (the strategy's
``evaluate_fn``), which is also where the round times are taken: round ``r`` lasts from the
evaluation after round ``r - 1`` (round 0 being the initial parameters) to the one after round
``r``. The clock starts once all clients have connected (in the deployment runtime: every
SuperNode has registered and its SuperExec has started), so process start-up is reported apart
(``startup_seconds``) and not in round 1.

``--data DIR`` holds ``init.npz`` (one float32 array per ``state_dict`` key), ``client_<i>.npz``
for each client and ``test.npz`` (``x`` float32 ``(samples, 64)``, ``y`` int64).

Usage: ``python bench/flower_digits.py --data DIR [--runtime legacy|deployment] [--clients 4]
[--rounds 10] [--local-steps 20] [--batch-size 32] [--lr 0.003] [--seed 0] [--hidden 128]
[--threads 1] [--timeout 600] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast

import flwr  # type: ignore[import-not-found, unused-ignore]
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from flwr.app import (  # type: ignore[import-not-found, unused-ignore]
    ArrayRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.client import NumPyClient, start_client  # type: ignore[import-not-found, unused-ignore]
from flwr.clientapp import ClientApp  # type: ignore[import-not-found, unused-ignore]
from flwr.common import (  # type: ignore[import-not-found, unused-ignore]
    ndarrays_to_parameters,
)
from flwr.server import (  # type: ignore[import-not-found, unused-ignore]
    ServerConfig,
    SimpleClientManager,
    start_server,
)
from flwr.server.strategy import FedAvg  # type: ignore[import-not-found, unused-ignore]
from flwr.serverapp import Grid, ServerApp  # type: ignore[import-not-found, unused-ignore]
from flwr.serverapp.strategy import (  # type: ignore[import-not-found, unused-ignore]
    FedAvg as MessageFedAvg,
)
from torch import nn

_HOST = "127.0.0.1"
_MIN_CLASSES = 10
_KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a child that outlives the run
_CLIENT_EXIT_GRACE = 5.0  # seconds the clients get to exit once the server has exited
_TAIL = 4000  # characters of a child's log quoted in an error
_POLL = 0.02  # seconds between the orchestrator's checks on its children
_RUNTIMES = ("legacy", "deployment")
# The SuperExecs' pause between two polls for tasks (FLWR_SUPEREXEC_TASK_POLL_INTERVAL, Flower's
# only tunable poll; default 1 s). Shorter pauses cut the wait for a task but cost CPU, which the
# ClientApps' start-up needs: 0.5 s was as fast as 1 s on 2 cores, 0.25 s and below slower.
_SUPEREXEC_POLL_SECONDS = "0.5"
_SUPEREXEC_STARTED = "Starting Flower SuperExec"  # logged by a SuperNode's SuperExec
_CONNECTION = "flower-digits"  # the SuperLink connection's name in the CLI's config.toml
_APP_MODULE = "flower_digits"  # the module name of this script inside the Flower App

Arrays = list[npt.NDArray[Any]]


# ---------------------------------------------------------------------------------------------
# Model and data, shared by the server and the clients


def build_model(features: int, hidden: Sequence[int], classes: int) -> nn.Sequential:
    """The benchmark MLP; its ``state_dict`` keys (``1.weight``, ...) match the other side's."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def load_pair(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (float32, flattened per sample) and ``y`` (int64) of one ``.npz`` file."""
    with np.load(path, allow_pickle=False) as archive:
        x = np.ascontiguousarray(archive["x"], dtype=np.float32)
        y = np.ascontiguousarray(archive["y"], dtype=np.int64)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{path}: x has {len(x)} samples and y {len(y)}; need equal and > 0")
    return torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(y)


def initial_arrays(model: nn.Module, path: Path) -> Arrays:
    """The arrays of ``init.npz`` in the model's ``state_dict`` order, checked against it."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with np.load(path, allow_pickle=False) as archive:
        found = {name: archive[name] for name in archive.files}
    if set(found) != set(expected):
        raise ValueError(f"{path} holds {sorted(found)}; the model has {sorted(expected)}")
    for name, shape in expected.items():
        if found[name].shape != shape:
            raise ValueError(f"{path}: {name} has shape {found[name].shape}; expected {shape}")
    return [np.ascontiguousarray(found[name], dtype=np.float32) for name in expected]


def get_arrays(model: nn.Module) -> Arrays:
    # Copies: the model keeps training after the arrays are handed to Flower.
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_arrays(model: nn.Module, arrays: Sequence[npt.NDArray[Any]]) -> None:
    names = list(model.state_dict())
    state = {name: torch.tensor(a) for name, a in zip(names, arrays, strict=True)}
    model.load_state_dict(state, strict=True)


def batch_seed(seed: int, round_index: int, client: int, step: int) -> int:
    """The seed of the batch of one local step of one client in one round (1-based rounds)."""
    return ((seed * 1_000_003 + round_index * 7919 + client) * 104_729 + step) % (2**63)


def train_locally(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, round_index: int
) -> float:
    """One client's local training of one round, in place; returns the last batch's loss."""
    # A fresh optimizer each round: no moment estimates survive between rounds.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model.train()
    samples = len(x)
    whole = not args.batch_size or args.batch_size >= samples
    loss = torch.zeros(())
    for step in range(args.local_steps):
        if whole:
            xb, yb = x, y
        else:
            generator = torch.Generator().manual_seed(
                batch_seed(args.seed, round_index, args.cid, step)
            )
            index = torch.randperm(samples, generator=generator)[: args.batch_size]
            xb, yb = x[index], y[index]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return float(loss.detach())


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy of the model on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(dim=1) == y).float().mean())
    return loss, acc


# ---------------------------------------------------------------------------------------------
# Client process


class DigitsClient(NumPyClient):  # type: ignore[misc, unused-ignore]
    """Local AdamW training on one shard; FedAvg weights the result by the shard's size."""

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
    ) -> None:
        self.model = model
        self.x, self.y = x, y
        self.args = args

    def get_parameters(self, config: dict[str, Any]) -> Arrays:
        return get_arrays(self.model)

    def fit(self, parameters: Arrays, config: dict[str, Any]) -> tuple[Arrays, int, dict[str, Any]]:
        set_arrays(self.model, parameters)
        loss = train_locally(self.model, self.x, self.y, self.args, int(config["server_round"]))
        return get_arrays(self.model), len(self.x), {"loss": loss}


def run_client(args: argparse.Namespace) -> None:
    x, y = load_pair(args.data / f"client_{args.cid}.npz")
    model = build_model(x.shape[1], args.hidden, args.classes)
    client = DigitsClient(model, x, y, args)
    warm_up(model, x, y)
    # The legacy transport does not retry a refused connection, so wait for the listener; the
    # imports and data loading above overlap with the server's own start-up.
    wait_for_port(args.port, args.deadline)
    start_client(server_address=f"{_HOST}:{args.port}", client=client.to_client(), insecure=True)


def warm_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One throwaway training step on a copy of the model.

    torch's first backward pass and optimizer step initialise lazily and take seconds; done
    here they count as start-up instead of inflating round 1. The model itself is untouched.
    """
    scratch = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(scratch.parameters(), lr=1e-3, weight_decay=0.01)
    F.cross_entropy(scratch(x[:2]), y[:2]).backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def wait_for_port(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((_HOST, port), timeout=0.5):
                return
        except OSError:
            if time.time() > deadline:
                raise TimeoutError(f"nothing listens on {_HOST}:{port}") from None
            time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Server process


class AllClientsFedAvg(FedAvg):  # type: ignore[misc, unused-ignore]
    """FedAvg that fails the run instead of averaging over fewer clients than asked for."""

    def __init__(self, clients: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clients = clients

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        if failures or len(results) != self.clients:
            detail = repr(failures[0]) if failures else "missing results"
            raise RuntimeError(
                f"round {server_round}: {len(results)} of {self.clients} clients answered, "
                f"{len(failures)} failed ({detail})"
            )
        return super().aggregate_fit(server_round, results, failures)


def run_server(args: argparse.Namespace) -> None:
    test_x, test_y = load_pair(args.data / "test.npz")
    model = build_model(test_x.shape[1], args.hidden, args.classes)
    init = initial_arrays(model, args.data / "init.npz")
    manager = SimpleClientManager()
    marks: list[float] = []
    accuracy: list[float] = []
    losses: list[float] = []
    startup: list[float] = []

    def evaluate(
        server_round: int, parameters: Arrays, config: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        if server_round == 0:
            # Round 0 runs before any client has connected; waiting here keeps process
            # start-up out of round 1's time.
            remaining = max(1, int(args.deadline - time.time()))
            if not manager.wait_for(args.clients, timeout=remaining):
                raise TimeoutError(f"{manager.num_available()} of {args.clients} clients joined")
            startup.append(time.time() - args.started)
        marks.append(time.perf_counter())
        set_arrays(model, parameters)
        loss, acc = evaluate_model(model, test_x, test_y)
        losses.append(loss)
        accuracy.append(acc)
        return loss, {"accuracy": acc}

    strategy = AllClientsFedAvg(
        args.clients,
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.clients,
        min_evaluate_clients=0,
        min_available_clients=args.clients,
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
        initial_parameters=ndarrays_to_parameters(init),
    )
    start_server(
        server_address=f"{_HOST}:{args.port}",
        config=ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
        client_manager=manager,
    )
    if len(marks) != args.rounds + 1:
        raise RuntimeError(f"{len(marks) - 1} of {args.rounds} rounds were evaluated")
    result = {
        "flwr_version": flwr.__version__,
        "round_seconds": [b - a for a, b in zip(marks, marks[1:], strict=False)],
        "accuracy": accuracy[1:],
        "final_loss": losses[-1],
        "startup_seconds": startup[0],
    }
    write_result(args.result, result)


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write the server's result so that the orchestrator never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.replace(path)


# ---------------------------------------------------------------------------------------------
# Deployment runtime: the ServerApp and ClientApp of the Flower App that ``flwr run`` submits.
# Both rebuild this script's arguments from the run config (``argv``, written by the
# orchestrator into the app's ``pyproject.toml``); each SuperNode adds its ``partition-id``.


def app_args(context: Context) -> argparse.Namespace:
    args = parse_args(json.loads(str(context.run_config["argv"])))
    if "partition-id" in context.node_config:
        args.cid = int(context.node_config["partition-id"])
    return args


class AllNodesFedAvg(MessageFedAvg):  # type: ignore[misc, unused-ignore]
    """Message-API FedAvg that fails the run instead of averaging over fewer nodes."""

    def __init__(self, nodes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nodes = nodes

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        errors = [msg.error.reason for msg in replies if msg.has_error()]
        if errors or len(replies) != self.nodes:
            detail = errors[0] if errors else "missing replies"
            raise RuntimeError(
                f"round {server_round}: {len(replies) - len(errors)} of {self.nodes} nodes "
                f"answered, {len(errors)} failed ({detail})"
            )
        arrays, metrics = super().aggregate_train(server_round, replies)
        return arrays, metrics


def wait_for_nodes(grid: Grid, nodes: int, deadline: float) -> None:
    while len(list(grid.get_node_ids())) < nodes:
        if time.time() > deadline:
            raise TimeoutError(f"{len(list(grid.get_node_ids()))} of {nodes} nodes joined")
        time.sleep(0.05)


def run_deployment_server(grid: Grid, args: argparse.Namespace) -> dict[str, Any]:
    test_x, test_y = load_pair(args.data / "test.npz")
    model = build_model(test_x.shape[1], args.hidden, args.classes)
    init = initial_arrays(model, args.data / "init.npz")
    marks: list[float] = []
    accuracy: list[float] = []
    losses: list[float] = []
    startup: list[float] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == 0:
            # Round 0 runs before the first training message goes out; waiting here for every
            # SuperNode keeps process start-up out of round 1's time.
            wait_for_nodes(grid, args.clients, args.deadline)
            startup.append(time.time() - args.started)
        marks.append(time.perf_counter())
        set_arrays(model, arrays.to_numpy_ndarrays())
        loss, acc = evaluate_model(model, test_x, test_y)
        losses.append(loss)
        accuracy.append(acc)
        return MetricRecord({"loss": loss, "accuracy": acc})

    strategy = AllNodesFedAvg(
        args.clients,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=args.clients,
        min_evaluate_nodes=0,
        min_available_nodes=args.clients,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord.from_numpy_ndarrays(init),
        num_rounds=args.rounds,
        timeout=max(1.0, args.deadline - time.time()),
        evaluate_fn=evaluate,
    )
    if len(marks) != args.rounds + 1:
        raise RuntimeError(f"{len(marks) - 1} of {args.rounds} rounds were evaluated")
    return {
        "flwr_version": flwr.__version__,
        "round_seconds": [b - a for a, b in zip(marks, marks[1:], strict=False)],
        "accuracy": accuracy[1:],
        "final_loss": losses[-1],
        "startup_seconds": startup[0],
    }


server_app = ServerApp()
client_app = ClientApp()


@server_app.main()  # type: ignore[untyped-decorator, unused-ignore]
def deployment_server(grid: Grid, context: Context) -> None:
    args = app_args(context)
    torch.set_num_threads(args.threads)
    try:
        result = run_deployment_server(grid, args)
    except BaseException:
        write_result(args.result, {"error": traceback.format_exc()})
        raise
    write_result(args.result, result)


@client_app.train()  # type: ignore[untyped-decorator, unused-ignore]
def deployment_train(msg: Message, context: Context) -> Message:
    args = app_args(context)
    torch.set_num_threads(args.threads)
    x, y = load_pair(args.data / f"client_{args.cid}.npz")
    model = build_model(x.shape[1], args.hidden, args.classes)
    set_arrays(model, msg.content.array_records["arrays"].to_numpy_ndarrays())
    round_index = cast(int, msg.content.config_records["config"]["server-round"])
    loss = train_locally(model, x, y, args, round_index)
    reply = RecordDict(
        {
            "arrays": ArrayRecord.from_numpy_ndarrays(get_arrays(model)),
            "metrics": MetricRecord({"loss": loss, "num-examples": len(x)}),
        }
    )
    return Message(reply, reply_to=msg)


# ---------------------------------------------------------------------------------------------
# Orchestrator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def count_classes(data: Path, clients: int) -> int:
    """10, or more if a label says so; computed once so that every process agrees."""
    largest = 0
    for name in ["test.npz", *(f"client_{i}.npz" for i in range(clients))]:
        path = data / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        with np.load(path, allow_pickle=False) as archive:
            largest = max(largest, int(archive["y"].max()))
    if not (data / "init.npz").is_file():
        raise FileNotFoundError(f"{data / 'init.npz'} is missing")
    return max(_MIN_CLASSES, largest + 1)


def tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-_TAIL:]


def logged(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each of ``procs``, then SIGKILL whatever outlives the grace."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    end = time.monotonic() + _KILL_GRACE
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    if args.runtime == "deployment":
        return orchestrate_deployment(args)
    return orchestrate_legacy(args)


def summarize(args: argparse.Namespace, result: dict[str, Any], wall: float) -> dict[str, Any]:
    rounds: list[float] = result["round_seconds"]
    return {
        "framework": "flower",
        "runtime": args.runtime,
        "flwr_version": result["flwr_version"],
        "clients": args.clients,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "round_seconds": rounds,
        "median_round_seconds": statistics.median(rounds),
        "accuracy": result["accuracy"],
        "final_accuracy": result["accuracy"][-1],
        "final_loss": result["final_loss"],
        "wall_seconds": wall,
        "startup_seconds": result["startup_seconds"],
    }


def check_deadline(
    deadline: float,
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
    *,
    shown: Path,
) -> None:
    """Raise once ``deadline`` (Unix time) has passed, naming what still runs and ``shown``'s tail.

    Raises:
        TimeoutError: the run is out of time.
    """
    if time.time() <= deadline:
        return
    running = [log.stem for proc, log in zip(procs, logs, strict=True) if proc.poll() is None]
    raise TimeoutError(
        f"no result within {timeout} s (still running: {', '.join(running)}); "
        f"{shown.stem} log:\n{tail(shown)}"
    )


def job_argv(args: argparse.Namespace, classes: int, deadline: float) -> list[str]:
    """The job's settings as command-line arguments, the same for every process and runtime."""
    return [
        "--clients", str(args.clients),
        "--rounds", str(args.rounds),
        "--local-steps", str(args.local_steps),
        "--batch-size", str(args.batch_size),
        "--lr", repr(args.lr),
        "--seed", str(args.seed),
        "--hidden", ",".join(map(str, args.hidden)),
        "--threads", str(args.threads),
        "--classes", str(classes),
        "--deadline", repr(deadline),
    ]  # fmt: skip


def orchestrate_legacy(args: argparse.Namespace) -> dict[str, Any]:
    classes = count_classes(args.data, args.clients)
    port = free_port()
    deadline = time.time() + args.timeout
    env = dict(os.environ)
    # A loopback benchmark has no business posting usage events to Flower's telemetry service.
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    common = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--data", str(args.data),
        *job_argv(args, classes, deadline),
        "--port", str(port),
        "--parent", str(os.getpid()),
    ]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="flower-digits-") as tmp:
        result_path = Path(tmp) / "result.json"

        def spawn(name: str, extra: list[str]) -> subprocess.Popen[bytes]:
            log = Path(tmp) / f"{name}.log"
            logs.append(log)
            with log.open("wb") as handle:
                proc = subprocess.Popen(
                    [*common, *extra],
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            procs.append(proc)
            return proc

        try:
            start = time.perf_counter()
            started = time.time()
            server = spawn(
                "server",
                ["--role", "server", "--result", str(result_path), "--started", repr(started)],
            )
            for cid in range(args.clients):
                spawn(f"client_{cid}", ["--role", "client", "--cid", str(cid)])
            # Done when every process has exited; the first failure or the deadline ends it.
            server_done: float | None = None
            while any(proc.poll() is None for proc in procs):
                for proc, log in zip(procs, logs, strict=True):
                    if proc.returncode:
                        raise RuntimeError(
                            f"{log.stem} exited with {proc.returncode}:\n{tail(log)}"
                        )
                if server.returncode == 0:
                    # Clients leave on the server's disconnect; one that lingers is killed.
                    server_done = server_done or time.monotonic()
                    if time.monotonic() - server_done > _CLIENT_EXIT_GRACE:
                        break
                check_deadline(deadline, args.timeout, procs, logs, shown=logs[0])
                time.sleep(_POLL)
            wall = time.perf_counter() - start
            for proc, log in zip(procs, logs, strict=True):
                if proc.returncode:
                    raise RuntimeError(f"{log.stem} exited with {proc.returncode}:\n{tail(log)}")
            if not result_path.is_file():
                raise RuntimeError(f"the server wrote no result:\n{tail(logs[0])}")
            result: dict[str, Any] = json.loads(result_path.read_text())
        finally:
            stop_all(procs)
    return summarize(args, result, wall)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((_HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def descendants(roots: Iterable[int]) -> list[int]:
    """Every live process below ``roots``, from ``/proc`` (empty where there is none)."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop ``procs`` and everything they started.

    The SuperLink starts its SuperExec in a session of its own and the SuperExecs start the
    ServerApp and ClientApp processes, so a process group does not reach them all; they are
    found through their parents instead. SIGTERM first, SIGKILL for whatever outlives the grace.
    """
    below = descendants(proc.pid for proc in procs)
    signal_all(below, signal.SIGTERM)
    stop_all(procs)
    # Children of the children are not ours to wait for; whatever is left of them goes now,
    # together with anything they started since the first look.
    signal_all([*below, *descendants(below)], signal.SIGKILL)


def app_pyproject(argv: Sequence[str]) -> str:
    """The Flower App's ``pyproject.toml``; the run config carries this run's arguments."""
    # A JSON string literal is also a valid TOML basic string.
    argv_literal = json.dumps(json.dumps(list(argv)))
    return f"""\
[project]
name = "flowerdigits"
version = "1.0.0"
description = "Tessera's digits benchmark: FedAvg of a small MLP"
license = "Apache-2.0"
dependencies = ["flwr>={flwr.__version__}", "torch", "numpy"]

[tool.flwr.app]
publisher = "tessera"

[tool.flwr.app.components]
serverapp = "{_APP_MODULE}:server_app"
clientapp = "{_APP_MODULE}:client_app"

[tool.flwr.app.config]
argv = {argv_literal}
"""


def cli_config(port: int) -> str:
    """The ``flwr`` CLI's ``config.toml``: one insecure SuperLink connection, the default."""
    return f"""\
[superlink]
default = "{_CONNECTION}"

[superlink.{_CONNECTION}]
address = "{_HOST}:{port}"
insecure = true
"""


def orchestrate_deployment(args: argparse.Namespace) -> dict[str, Any]:
    classes = count_classes(args.data, args.clients)
    deadline = time.time() + args.timeout
    bin_dir = Path(sys.executable).parent
    link_port, *node_ports = free_ports(args.clients + 1)
    env = dict(os.environ)
    # No telemetry, no update check against PyPI, no `uv sync` of the app's dependencies: the
    # run stays on loopback. Flower's SuperExecs find `flwr-clientapp` and friends on PATH;
    # unbuffered output keeps the logs quoted in errors complete.
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", _SUPEREXEC_POLL_SECONDS)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    parent = os.getpid()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="flower-digits-") as tmp:
        root = Path(tmp)
        result_path = root / "result.json"

        def spawn(name: str, command: list[str]) -> subprocess.Popen[bytes]:
            # Each process gets a Flower home of its own: the SuperNodes' ClientApps install
            # the app bundle there, and concurrent installs into one directory would race.
            home = root / "home" / name
            home.mkdir(parents=True, exist_ok=True)
            if name == "flwr_run":
                (home / "config.toml").write_text(cli_config(link_port))
            log = root / f"{name}.log"
            logs.append(log)
            with log.open("wb") as handle:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**env, "FLWR_HOME": str(home)},
                    cwd=home,
                    preexec_fn=lambda: die_with_parent(parent),
                )
            procs.append(proc)
            return proc

        try:
            start = time.perf_counter()
            started = time.time()
            app_dir = root / "app"
            app_dir.mkdir()
            (app_dir / f"{_APP_MODULE}.py").write_bytes(Path(__file__).read_bytes())
            argv = [
                "--runtime", "deployment",
                "--data", str(args.data.resolve()),
                *job_argv(args, classes, deadline),
                "--started", repr(started),
                "--result", str(result_path),
            ]  # fmt: skip
            (app_dir / "pyproject.toml").write_text(app_pyproject(argv))
            spawn(
                "superlink",
                [
                    str(bin_dir / "flower-superlink"),
                    "--insecure",
                    "--isolation", "subprocess",
                    "--host", _HOST,
                    "--port", str(link_port),
                    "--disable-runtime-dependency-installation",
                ],
            )  # fmt: skip
            node_logs: list[Path] = []
            waiting: set[Path] = set()  # SuperNodes whose SuperExec has not started yet
            submitted: subprocess.Popen[bytes] | None = None
            # Done when the ServerApp has written its result; the first failure or the deadline
            # ends it. The SuperNodes start once the SuperLink listens and `flwr run` once every
            # SuperNode's SuperExec has started: a SuperNode registers with the SuperLink while
            # its SuperExec, which launches the ClientApps, is still importing, and round 1
            # would otherwise include that wait. `flwr run --stream` relays the ServerApp's log
            # (the SuperExec discards its output) and returns once the run is over, which is
            # after the result has been written.
            while not result_path.is_file():
                for proc, log in zip(procs, logs, strict=True):
                    code = proc.poll()
                    if code is not None and not (proc is submitted and code == 0):
                        raise RuntimeError(f"{log.stem} exited with {code}:\n{tail(log)}")
                if submitted is not None and submitted.poll() == 0:
                    if result_path.is_file():
                        break
                    raise RuntimeError(f"the run ended without a result:\n{tail(logs[-1])}")
                if not node_logs and port_open(link_port):
                    for cid, node_port in enumerate(node_ports):
                        spawn(
                            f"supernode_{cid}",
                            [
                                str(bin_dir / "flower-supernode"),
                                "--insecure",
                                "--isolation", "subprocess",
                                "--superlink", f"{_HOST}:{link_port}",
                                "--host", _HOST,
                                "--port", str(node_port),
                                "--node-config",
                                f"partition-id={cid} num-partitions={args.clients}",
                            ],
                        )  # fmt: skip
                        node_logs.append(logs[-1])
                    waiting = set(node_logs)
                waiting = {log for log in waiting if not logged(log, _SUPEREXEC_STARTED)}
                if node_logs and not waiting and submitted is None:
                    submitted = spawn(
                        "flwr_run",
                        [str(bin_dir / "flwr"), "run", str(app_dir), _CONNECTION, "--stream"],
                    )
                check_deadline(deadline, args.timeout, procs, logs, shown=logs[-1])
                time.sleep(_POLL)
            wall = time.perf_counter() - start
            result: dict[str, Any] = json.loads(result_path.read_text())
            if "error" in result:
                raise RuntimeError(f"the ServerApp failed:\n{result['error'][-_TAIL:]}")
        finally:
            stop_tree(procs)
    return summarize(args, result, wall)


# ---------------------------------------------------------------------------------------------
# Entry point


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the orchestrator dies, even by SIGKILL.

    Set once the imports are done, so a child orphaned while still importing exits here.
    """
    if sys.platform.startswith("linux"):
        try:
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def hidden_sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive integers: {text!r}")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, required=True, help="directory of the .npz files")
    parser.add_argument(
        "--runtime",
        choices=_RUNTIMES,
        default="legacy",
        help="legacy: start_server/start_client over gRPC bidi; deployment: SuperLink, "
        "SuperNodes and `flwr run`",
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="0: the whole shard")
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=hidden_sizes, default=(128,), help="e.g. 128 or 256,128")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for the run once the server starts"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    # Internal: how the orchestrator starts the server and client processes.
    hidden = argparse.SUPPRESS
    parser.add_argument("--role", choices=["run", "server", "client"], default="run", help=hidden)
    parser.add_argument("--cid", type=int, default=0, help=hidden)
    parser.add_argument("--classes", type=int, default=_MIN_CLASSES, help=hidden)
    parser.add_argument("--port", type=int, default=0, help=hidden)
    parser.add_argument("--deadline", type=float, default=0.0, help=hidden)
    parser.add_argument("--started", type=float, default=0.0, help=hidden)
    parser.add_argument("--parent", type=int, default=0, help=hidden)
    parser.add_argument("--result", type=Path, default=None, help=hidden)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.local_steps < 1:
        parser.error("--clients, --rounds and --local-steps must be >= 1")
    if args.batch_size < 0 or args.threads < 1 or args.timeout <= 0:
        parser.error("--batch-size must be >= 0, --threads >= 1 and --timeout > 0")
    return args


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role != "run":
        die_with_parent(args.parent)
        torch.set_num_threads(args.threads)
        code = 0
        try:
            if args.role == "server":
                run_server(args)
            else:
                run_client(args)
        except BaseException:
            traceback.print_exc()
            code = 1
        # Skip interpreter shutdown: it joins gRPC's worker threads, which an aborted run can
        # leave blocked for good.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        summary = orchestrate(args)
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as exc:
        print(f"flower_digits: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"flwr {summary['flwr_version']} ({args.runtime}): {args.clients} clients, "
            f"{args.rounds} rounds of {args.local_steps} steps; "
            f"median round {summary['median_round_seconds']:.3f} s, "
            f"final accuracy {summary['final_accuracy']:.4f}, loss {summary['final_loss']:.4f}, "
            f"wall {summary['wall_seconds']:.2f} s (start-up {summary['startup_seconds']:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
