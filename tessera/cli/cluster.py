"""``LocalCluster``: etcd, the four services and N workers as processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tessera.common.auth import ClusterKey, Role
from tessera.common.errors import Unavailable
from tessera.common.etcd.server import EtcdProcess

__all__ = ["ClusterPorts", "LocalCluster"]


@dataclass(frozen=True)
class ClusterPorts:
    """Service ports; 0 lets each service pick a free one.

    ``metrics`` is the Prometheus port of the registry; the scheduler, aggregator and workers
    take the following ports in that order (0: every process picks a free port; -1: off).
    """

    registry: int = 0
    scheduler: int = 0
    aggregator: int = 0
    metrics: int = 0

    def metrics_port(self, offset: int) -> int:
        """The metrics port of the process ``offset`` places after the registry."""
        return self.metrics + offset if self.metrics > 0 else self.metrics


@dataclass
class _Proc:
    name: str
    process: subprocess.Popen[bytes]
    command: list[str]
    env: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if the launcher dies, so no process outlives `tessera up`.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalCluster:
    """Start with ``start()`` (or ``with``), stop with ``stop()``; logs go to ``log_dir``."""

    def __init__(
        self,
        *,
        workers: int = 3,
        ports: ClusterPorts = ClusterPorts(),  # noqa: B008 - frozen dataclass, safe default
        heartbeat_interval: float = 1.0,
        patience: int = 3,
        worker_slowdowns: list[float] | None = None,
        log_dir: Path | None = None,
        log_level: str = "INFO",
        schedulers: int = 1,
        host: str = "127.0.0.1",
        auth: bool = True,
    ) -> None:
        self.workers_wanted = workers
        self.ports = ports
        self.heartbeat_interval = heartbeat_interval
        self.patience = patience
        self.worker_slowdowns = worker_slowdowns or []
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tessera-logs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.schedulers = schedulers
        # The services' bind address; tests that put workers in network namespaces use the
        # address of a veth they created.
        self.host = host
        # A fresh cluster key per cluster: services authenticate every call, workers join with
        # a join token, and ``token`` is the submitter token for this cluster's users.
        self.cluster_key = ClusterKey.generate() if auth else None
        self.token = (
            self.cluster_key.mint(Role.SUBMITTER, "local") if self.cluster_key is not None else None
        )
        self.etcd = EtcdProcess()
        self.services: dict[str, _Proc] = {}
        self.workers: list[_Proc] = []
        self._worker_ready: dict[str, Path] = {}
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")

    @property
    def registry_address(self) -> str:
        """``127.0.0.1:<port>`` of the registry."""
        return f"{self.host}:{self.services['registry'].info['port']}"

    @property
    def scheduler_address(self) -> str:
        """``127.0.0.1:<port>`` of the scheduler (comma-separated for several replicas)."""
        return ",".join(f"{self.host}:{p.info['port']}" for p in self.scheduler_replicas)

    @property
    def scheduler_replicas(self) -> list[_Proc]:
        """The scheduler processes, first one first."""
        return [p for name, p in self.services.items() if name.startswith("scheduler")]

    @property
    def aggregator_address(self) -> str:
        """``127.0.0.1:<port>`` of the aggregator."""
        return f"{self.host}:{self.services['aggregator'].info['port']}"

    def _spawn(
        self,
        name: str,
        module: str,
        args: list[str],
        metrics_offset: int,
        prefix: tuple[str, ...] = (),
    ) -> tuple[_Proc, Path]:
        ready = self.log_dir / f"{name}.ready"
        if not module.endswith("worker"):
            args = ["--host", self.host, *args]
        command = [
            *prefix,
            sys.executable,
            "-m",
            module,
            "--ready-file",
            str(ready),
            "--log-level",
            self.log_level,
            "--metrics-port",
            str(self.ports.metrics_port(metrics_offset) if metrics_offset >= 0 else 0),
            *args,
        ]
        env = self._environment(worker=module.endswith("worker"))
        return _Proc(name, self._popen(name, command, ready, env), command, env), ready

    def _environment(self, *, worker: bool) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TESSERA_CLUSTER_KEY", None)
        env.pop("TESSERA_JOIN_TOKEN", None)
        if self.cluster_key is not None:
            if worker:
                env["TESSERA_JOIN_TOKEN"] = self.cluster_key.mint(Role.JOIN, "local")
            else:
                env["TESSERA_CLUSTER_KEY"] = self.cluster_key.to_hex()
        return env

    def _popen(
        self, name: str, command: list[str], ready: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        ready.unlink(missing_ok=True)

        def spawn() -> subprocess.Popen[bytes]:
            with (self.log_dir / f"{name}.log").open("ab") as log:
                return subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - only sets PDEATHSIG
                )

        # PDEATHSIG fires when the *thread* that forked the child ends, so every child is
        # forked by one thread that lives exactly as long as the cluster.
        return self._spawner.submit(spawn).result()

    def _await_ready(self, proc: _Proc, ready: Path, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.process.poll() is not None:
                tail = (self.log_dir / f"{proc.name}.log").read_text(errors="replace")[-3000:]
                raise Unavailable(f"{proc.name} exited with {proc.process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{proc.name} not ready after {timeout}s")
            time.sleep(0.02)
        proc.info = json.loads(ready.read_text())

    def start(self) -> LocalCluster:
        """Start everything and wait until each service serves.

        Raises:
            Unavailable: a process failed to start (its log tail is in the message).
        """
        try:
            self.etcd.start()
            etcd = ["--etcd", self.etcd.endpoint]
            registry, registry_ready = self._spawn(
                "registry",
                "services.registry",
                [
                    "--port",
                    str(self.ports.registry),
                    *etcd,
                    "--heartbeat-interval",
                    str(self.heartbeat_interval),
                    "--patience",
                    str(self.patience),
                ],
                metrics_offset=0,
            )
            aggregator, aggregator_ready = self._spawn(
                "aggregator",
                "services.aggregator",
                [
                    "--port",
                    str(self.ports.aggregator),
                    "--checkpoint-dir",
                    str(self.log_dir / "checkpoints"),
                    # Throw-away, like the etcd: survives the aggregator's restart, not the
                    # machine's.
                    "--no-checkpoint-sync",
                ],
                metrics_offset=2,
            )
            self.services.update(registry=registry, aggregator=aggregator)
            self._await_ready(aggregator, aggregator_ready)
            scheduler, scheduler_ready = self._spawn(
                "scheduler",
                "services.scheduler",
                [
                    "--port",
                    str(self.ports.scheduler),
                    *etcd,
                    "--aggregator",
                    self.aggregator_address,
                ],
                metrics_offset=1,
            )
            self.services["scheduler"] = scheduler
            standbys = []
            for replica in range(2, self.schedulers + 1):
                proc, ready = self._spawn(
                    f"scheduler-{replica}",
                    "services.scheduler",
                    ["--port", "0", *etcd, "--aggregator", self.aggregator_address],
                    metrics_offset=-1,
                )
                self.services[proc.name] = proc
                standbys.append((proc, ready))
            self._await_ready(registry, registry_ready)
            self._await_ready(scheduler, scheduler_ready)
            for proc, ready in standbys:
                self._await_ready(proc, ready)
            for _ in range(self.workers_wanted):
                self.add_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(
        self,
        slowdown: float | None = None,
        netns: str | None = None,
        local_data: Path | None = None,
    ) -> _Proc:
        """Start one more worker (not waiting for it to register), optionally in a netns.

        ``local_data`` is the worker's folder of its own data sets (``--local-data``).
        """
        index = len(self.workers)
        if slowdown is None:
            slowdown = self.worker_slowdowns[index] if index < len(self.worker_slowdowns) else 1.0
        extra = ["--local-data", str(local_data)] if local_data is not None else []
        proc, ready = self._spawn(
            f"worker-{index}",
            "services.worker",
            [
                "--registry",
                self.registry_address,
                "--scheduler",
                self.scheduler_address,
                "--slowdown",
                str(slowdown),
                "--name",
                f"worker-{index}",
                *extra,
            ],
            metrics_offset=3 + index,
            prefix=("ip", "netns", "exec", netns) if netns else (),
        )
        self.workers.append(proc)
        self._worker_ready[proc.name] = ready
        return proc

    def metrics_ports(self) -> dict[str, int]:
        """Prometheus port of every process (waits for workers to report theirs)."""
        for proc in self.workers:
            if not proc.info and proc.process.poll() is None:
                self._await_ready(proc, self._worker_ready[proc.name])
        procs = [*self.services.values(), *self.workers]
        return {p.name: int(p.info["metrics_port"]) for p in procs if p.info.get("metrics_port")}

    def kill_service(self, name: str) -> None:
        """SIGKILL a service (``registry``, ``scheduler`` or ``aggregator``): no clean shutdown."""
        process = self.services[name].process
        process.kill()
        process.wait()

    def restart_service(self, name: str) -> None:
        """Start a killed service again on the same ports and wait until it serves."""
        proc = self.services[name]
        command = list(proc.command)
        for flag, key in (("--port", "port"), ("--metrics-port", "metrics_port")):
            if proc.info.get(key):
                command[command.index(flag) + 1] = str(proc.info[key])
        ready = self.log_dir / f"{name}.ready"
        proc.process = self._popen(name, command, ready, proc.env)
        self._await_ready(proc, ready)

    def kill_worker(self, index: int) -> None:
        """SIGKILL a worker: no deregistration, its lease must expire."""
        process = self.workers[index].process
        process.kill()
        process.wait()

    def stop(self) -> None:
        """Stop workers first (they deregister), then the services, then etcd."""
        groups = [self.workers, self.scheduler_replicas]
        groups.append([self.services[n] for n in ("aggregator", "registry") if n in self.services])
        for group in groups:
            for proc in group:
                if proc.process.poll() is None:
                    proc.process.terminate()
            for proc in group:
                try:
                    proc.process.wait(10)
                except subprocess.TimeoutExpired:
                    proc.process.kill()
                    proc.process.wait()
        self.etcd.stop()
        self._spawner.shutdown(wait=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
