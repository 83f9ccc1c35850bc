"""Fuzz every RPC of the registry, scheduler and aggregator: statuses, crashes and memory.

The services run as processes (``LocalCluster`` without workers: etcd, registry, scheduler and
aggregator on 127.0.0.1, heartbeat interval 1 s, patience 5), with authentication on as
deployed (``--no-auth``: off). The fuzzer holds the cluster key: most cases carry the right
credentials for their RPC (a submitter or service token, a node's proof, a task ticket) so that
they reach the service behind the authentication check; the others carry none, garbage,
forged, expired, replayed or misdirected ones. The cases are the hypothesis
strategies of ``tests/fuzz/strategies.py``, derived from the proto descriptors, run target by
target in several passes (so that each RPC meets the state the others left behind). A case
fails when its answer is not one of the expected statuses; hypothesis then shrinks it, the
minimal example is recorded, and the run goes on ignoring that (RPC, status) pair.

Measured: cases run, the status histogram per RPC (and PushGradient receipts), the servers' RSS
before (after start-up and a warm-up) and after, and their peak (VmHWM); the servers' own count
of INTERNAL/UNKNOWN answers (Prometheus); ERROR lines in their logs; whether every process is
alive and passes its health check at the end. Exit status 1 if anything failed.

Usage: ``python bench/fuzz.py [--cases 10000] [--seed 1] [--passes 4] [--no-auth] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from _support import add_repo_to_path, proc_status_bytes, rpc_codes
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed

add_repo_to_path()

from tessera.cli.cluster import ClusterPorts, LocalCluster  # noqa: E402
from tests.fuzz import strategies  # noqa: E402
from tests.fuzz.strategies import (  # noqa: E402
    ALLOWED_CODES,
    CLIENT_OPTIONS,
    FuzzContext,
    Limits,
    Outcome,
    Target,
    describe,
    health_status,
    targets,
)

SERVICES = ("registry", "scheduler", "aggregator")
# Relative share of the budget: the data plane gets the most, raw bytes the least.
WEIGHTS = {"Aggregator/PushGradient": 4.0}
UNDECODABLE_WEIGHT = 0.3


class CaseFailed(Exception):
    """A case got a status outside ``ALLOWED_CODES``."""

    def __init__(self, signature: tuple[str, str], case: Any, outcome: Outcome) -> None:
        super().__init__(f"{signature[0]} answered {signature[1]}")
        self.signature = signature
        self.case = case
        self.outcome = outcome


class Abort(BaseException):
    """Stop fuzzing: a server died or outgrew the memory limit (not a case to shrink)."""


@dataclass
class Finding:
    """The minimal example of one (RPC, status) failure."""

    target: str
    code: str
    details: str
    example: str


@dataclass
class Run:
    """Everything the run measured."""

    cluster: LocalCluster
    rss_limit: int
    histogram: dict[str, Counter[str]] = field(default_factory=dict)
    receipts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    details: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    cases: int = 0
    shrink_cases: int = 0
    shrink_histogram: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    rss_trace: list[dict[str, float]] = field(default_factory=list)
    aborted: str = ""

    def record(self, name: str, outcome: Outcome, shrinking: bool) -> None:
        self.cases += 1
        if self.cases % 50 == 0:
            self.watch()
        if shrinking:
            self.shrink_cases += 1
            self.shrink_histogram[outcome.code] += 1
            return
        self.histogram.setdefault(name, Counter())[outcome.code] += 1
        self.details[name, outcome.code, re.sub(r"\d+", "N", outcome.details)[:70]] += 1
        if name == "Aggregator/PushGradient" and outcome.code == "OK":
            self.receipts[outcome.details.split(":")[0]] += 1
            if ":" in outcome.details:
                self.reasons[outcome.details.split(":", 1)[1].strip()[:60]] += 1

    def watch(self) -> None:
        for name in SERVICES:
            process = self.cluster.services[name].process
            if process.poll() is not None:
                raise Abort(f"{name} exited with {process.returncode}")
            rss = proc_status_bytes(process.pid)
            if rss > self.rss_limit:
                raise Abort(
                    f"{name} RSS {rss >> 20} MiB exceeds the limit of {self.rss_limit >> 20}"
                )


def fuzz_target(
    target: Target, context: FuzzContext, budget: int, seed: int, run: Run, shrink: bool = True
) -> None:
    """Run ``budget`` cases of one target, shrinking each new failure to a minimal example."""
    done = 0
    ignored = {(f.target, f.code) for f in run.findings}
    attempt = 0
    while done < budget:
        attempt += 1
        # Once a case fails, hypothesis replays simpler ones to shrink it: those are counted
        # apart from the generated cases.
        shrinking = False

        def check(case: Any) -> None:
            nonlocal done, shrinking
            outcome = target.run(context, case)
            # The budget counts generated cases; replays while shrinking come on top.
            done += 0 if shrinking else 1
            run.record(target.name, outcome, shrinking)
            signature = (target.name, outcome.code)
            if outcome.code not in ALLOWED_CODES and signature not in ignored:
                shrinking = True
                raise CaseFailed(signature, case, outcome)

        test = settings(
            max_examples=budget - done,
            database=None,
            deadline=None,
            derandomize=False,
            phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
            print_blob=False,
        )(given(target.cases)(check))
        try:
            mixed = seed * 7919 + zlib.crc32(target.name.encode()) + attempt
            hypothesis_seed(mixed)(test)()
        except CaseFailed as first:
            _found(run, first)
            ignored.add(first.signature)
            continue
        except BaseExceptionGroup as group:  # hypothesis' FlakyFailure: did not replay
            matched, rest = group.split(CaseFailed)
            if matched is None:
                raise
            for failure in _leaves(matched):
                _found(run, failure)
                ignored.add(failure.signature)
            if rest is not None:
                raise rest from None
            continue
        break  # the budget ran out (or hypothesis ran out of distinct cases)


def _leaves(group: BaseExceptionGroup[CaseFailed]) -> list[CaseFailed]:
    out: list[CaseFailed] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _found(run: Run, failure: CaseFailed) -> None:
    if any((f.target, f.code) == failure.signature for f in run.findings):
        return
    run.findings.append(
        Finding(
            failure.signature[0],
            failure.signature[1],
            failure.outcome.details[:300],
            describe(failure.case),
        )
    )


def budgets(names: list[str], total: int) -> dict[str, int]:
    """Split ``total`` cases over the targets by weight (at least one each)."""
    weights = {
        n: UNDECODABLE_WEIGHT if n.endswith("/undecodable") else WEIGHTS.get(n, 1.0) for n in names
    }
    scale = total / sum(weights.values())
    out = {n: max(1, round(w * scale)) for n, w in weights.items()}
    out[max(out, key=lambda n: out[n])] += total - sum(out.values())
    return out


def log_errors(cluster: LocalCluster) -> dict[str, Counter[str]]:
    """Each service's ERROR records, by message and the exception that ended its traceback."""
    out: dict[str, Counter[str]] = {}
    for name in SERVICES:
        path = cluster.log_dir / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        found: Counter[str] = Counter()
        message = ""
        for line in lines:
            if " ERROR " in line:
                if message:
                    found[message] += 1
                message = line.split(" ERROR ", 1)[1]
            elif (
                message and line[:1].isalpha() and ":" in line and not line.startswith("Traceback")
            ):
                # The exception line that ends the record's traceback.
                found[f"{message} <- {line}"] += 1
                message = ""
        if message:
            found[message] += 1
        out[name] = Counter()
        for text, count in found.items():
            out[name][_shorten(text)] += count
    return out


def _shorten(text: str) -> str:
    # Generated ids and message types make the same error look different.
    text = re.sub(r"with type '[\w.]+'", "with type '...'", text)
    return re.sub(r"(.)\1{15,}", lambda m: f"{m.group(1)}*{len(m.group(0))}", text)[:240]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000, help="total cases (all RPCs)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--passes", type=int, default=4, help="rounds over all targets")
    parser.add_argument("--rss-limit-mb", type=int, default=4096, help="abort beyond this")
    parser.add_argument("--only", nargs="*", default=None, help="target names to run")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="services without a cluster key: any caller may claim any node id",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary line")
    parser.add_argument("--verbose", action="store_true", help="print the commonest details")
    args = parser.parse_args()

    all_targets = targets(Limits())
    names = sorted(n for n in all_targets if args.only is None or n in args.only)
    cluster = LocalCluster(
        workers=0,
        heartbeat_interval=1.0,
        patience=5,
        log_level="WARNING",
        ports=ClusterPorts(metrics=0),
        auth=not args.no_auth,
    )
    started = time.monotonic()
    cluster.start()
    channels: dict[str, grpc.Channel] = {}
    context: FuzzContext | None = None
    try:
        addresses = {
            "registry": cluster.registry_address,
            "scheduler": cluster.scheduler_address,
            "aggregator": cluster.aggregator_address,
        }
        channels = {
            n: grpc.insecure_channel(a, options=CLIENT_OPTIONS) for n, a in addresses.items()
        }
        context = FuzzContext(channels, heartbeat_interval=1.0, key=cluster.cluster_key).start()
        run = Run(cluster, args.rss_limit_mb << 20)
        pids = {n: cluster.services[n].process.pid for n in SERVICES}
        metrics = {n: int(cluster.services[n].info["metrics_port"]) for n in SERVICES}
        # Warm-up: a few cases per target, so that lazy imports, thread pools and caches are
        # in place before the "before" memory figure.
        warmup = Run(cluster, args.rss_limit_mb << 20)
        for name in names:
            fuzz_target(all_targets[name], context, 3, args.seed + 10_000, warmup, shrink=False)
        rss_before = {n: proc_status_bytes(p) for n, p in pids.items()}
        codes_before = {n: rpc_codes(metrics[n]) for n in SERVICES}
        plan = budgets(names, args.cases)
        try:
            for index in range(args.passes):
                for name in names:
                    share = plan[name] // args.passes + (
                        1 if index < plan[name] % args.passes else 0
                    )
                    if share == 0:
                        continue
                    context.refresh()
                    tick = time.monotonic()
                    fuzz_target(all_targets[name], context, share, args.seed * 100 + index, run)
                    run.seconds[name] = run.seconds.get(name, 0.0) + time.monotonic() - tick
                    run.watch()
                run.rss_trace.append(
                    {n: round(proc_status_bytes(p) / 2**20, 1) for n, p in pids.items()}
                )
        except Abort as abort:
            run.aborted = str(abort)
        context.close()
        context = None
        alive = {n: cluster.services[n].process.poll() is None for n in SERVICES}
        health = {n: health_status(channels[n]) if alive[n] else "DEAD" for n in SERVICES}
        rss_after = {n: proc_status_bytes(p) if alive[n] else 0 for n, p in pids.items()}
        peak = {n: proc_status_bytes(p, "VmHWM") if alive[n] else 0 for n, p in pids.items()}
        codes_after = {n: rpc_codes(metrics[n]) if alive[n] else {} for n in SERVICES}
        errors = log_errors(cluster)
    finally:
        if context is not None:
            context.close()
        for channel in channels.values():
            channel.close()
        cluster.stop()

    server_codes = {
        n: {
            code: int(codes_after[n].get(code, 0) - codes_before[n].get(code, 0))
            for code in set(codes_after[n]) | set(codes_before[n])
        }
        for n in SERVICES
    }
    totals: Counter[str] = Counter()
    for counter in run.histogram.values():
        totals.update(counter)
    bad = {code: count for code, count in totals.items() if code not in ALLOWED_CODES}
    server_bad = sum(c.get("INTERNAL", 0) + c.get("UNKNOWN", 0) for c in server_codes.values())
    summary = {
        "authentication": not args.no_auth,
        "cases": run.cases - run.shrink_cases,
        "warmup_cases": warmup.cases,
        "shrink_cases": run.shrink_cases,
        "shrink_statuses": dict(run.shrink_histogram.most_common()),
        "seconds": round(time.monotonic() - started, 1),
        "statuses": dict(totals.most_common()),
        "failing_statuses": bad,
        "push_receipts": dict(run.receipts.most_common()),
        "server_counted": server_codes,
        "raw_bytes_parsed": dict(strategies.DECODE_STATS),
        "rss_mib_before": {n: round(v / 2**20, 1) for n, v in rss_before.items()},
        "rss_mib_after": {n: round(v / 2**20, 1) for n, v in rss_after.items()},
        "rss_mib_peak": {n: round(v / 2**20, 1) for n, v in peak.items()},
        "rss_mib_after_each_pass": run.rss_trace,
        "alive": alive,
        "health": health,
        "log_errors": {n: dict(v.most_common(6)) for n, v in errors.items()},
        "findings": [f.__dict__ for f in run.findings],
        "aborted": run.aborted,
    }
    ok = (
        not bad
        and not server_bad
        and all(alive.values())
        and set(health.values()) == {"SERVING"}
        and not run.aborted
    )
    summary["ok"] = ok
    # The logs (and checkpoints) of a failed run stay for inspection.
    summary["logs"] = str(cluster.log_dir) if not ok else ""
    if ok:
        shutil.rmtree(cluster.log_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_report(summary, run, errors)
        if args.verbose:
            for (name, code, details), count in sorted(run.details.items()):
                print(f"  {count:5}  {name} {code} {details}")
    sys.exit(0 if ok else 1)


def _print_report(summary: dict[str, Any], run: Run, errors: dict[str, Counter[str]]) -> None:
    print(
        f"cases: {summary['cases']} generated + {summary['shrink_cases']} replayed while "
        f"shrinking (+{summary['warmup_cases']} warm-up) in {summary['seconds']} s"
    )
    print(f"statuses while shrinking: {summary['shrink_statuses']}")
    print("statuses of the generated cases, per RPC:")
    for name in sorted(run.histogram):
        counts = ", ".join(f"{c} {n}" for c, n in run.histogram[name].most_common())
        print(f"  {name:28} {counts}  ({run.seconds.get(name, 0.0):.1f} s)")
    print(f"total: {summary['statuses']}")
    print(f"authentication: {'on' if summary['authentication'] else 'off'}")
    print(f"PushGradient receipts: {summary['push_receipts']}")
    for reason, count in run.reasons.most_common(8):
        print(f"    {count:5}  {reason}")
    print(f"server-side counts: {summary['server_counted']}")
    print(f"raw bytes tried as messages: {summary['raw_bytes_parsed']}")
    for label in ("before", "after", "peak"):
        print(f"RSS MiB {label:6}: {summary[f'rss_mib_{label}']}")
    for index, sample in enumerate(run.rss_trace, 1):
        print(f"RSS MiB after pass {index}: {sample}")
    print(f"alive: {summary['alive']}  health: {summary['health']}")
    for name, found in errors.items():
        print(f"{name} log: {sum(found.values())} ERROR records")
        for text, count in found.most_common(6):
            print(f"    {count:5}  {text}")
    if summary["logs"]:
        print(f"service logs: {summary['logs']}")
    if summary["aborted"]:
        print(f"ABORTED: {summary['aborted']}")
    for finding in run.findings:
        print(f"FAILURE {finding.target} -> {finding.code}: {finding.details}")
        print(f"  minimal example: {finding.example}")
    print("OK" if summary["ok"] else "FAILED")


if __name__ == "__main__":
    main()
