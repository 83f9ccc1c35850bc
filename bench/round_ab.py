"""Round time of this checkout against an earlier commit, alternating on one machine.

Each trial starts a local cluster (4 workers) with one side's code, runs a 3-round warm-up and
then the FedAvg job of ``bench/training.py`` (MLP 128, 4 tasks) for ``--rounds`` rounds at each
``--local-steps`` value, and records the median seconds per round and the CPU time per round of
the whole cluster (every process of the trial: etcd, the services, the workers and the client,
read from ``/proc``, so Linux only). The sides alternate (base, this, base, this, ...), so that
the machine's drift falls on both; reported per step count: each side's median over its trials
and the ratio this / base, of the wall time and of the CPU time.

The base commit is checked out with ``git worktree`` into a temporary folder; its trials run
this script with the base's packages first on the path.

Usage: ``python bench/round_ab.py --base COMMIT [--trials 3] [--local-steps 1 20]
[--rounds 30] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and all its descendants."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process has exited meanwhile
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime, stime
    tree = {os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(children)
        tree |= children
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def trial(local_steps: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    """One cluster with the code on the path, by local steps: the median seconds per round
    and the cluster's CPU seconds per round."""
    from training import FEDAVG_JOB, WORKERS, run_job

    from tessera.cli.cluster import LocalCluster
    from tessera.client import Client

    results: dict[int, tuple[float, float]] = {}
    with LocalCluster(workers=WORKERS, log_level="WARNING") as cluster:
        with Client(
            cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
        ) as client:
            run_job(client, FEDAVG_JOB.with_(rounds=3))
            for steps in local_steps:
                cpu_before = _tree_cpu_seconds()
                run = run_job(client, FEDAVG_JOB.with_(inner_steps=steps, rounds=rounds))
                cpu = (_tree_cpu_seconds() - cpu_before) / rounds
                results[steps] = (statistics.median(run.round_seconds()), cpu)
    return results


def run_side(code: Path, local_steps: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    """A trial in a fresh interpreter whose imports resolve to ``code`` first."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), str(ROOT / "bench")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--trial", "--rounds", str(rounds)]
    command += ["--local-steps", *map(str, local_steps)]
    done = subprocess.run(command, cwd=code, env=env, check=True, capture_output=True, text=True)
    line = done.stdout.strip().splitlines()[-1]
    return {int(k): (v[0], v[1]) for k, v in json.loads(line).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", help="the commit to compare with (required unless --trial)")
    parser.add_argument("--trials", type=int, default=3, help="trials per side")
    parser.add_argument("--local-steps", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print one JSON summary line")
    parser.add_argument("--trial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        print(json.dumps(trial(args.local_steps, args.rounds)))
        return
    if not args.base:
        parser.error("--base is required")
    samples: dict[str, list[dict[int, tuple[float, float]]]] = {"base": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="tessera-base-") as folder:
        base = Path(folder) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            for _ in range(args.trials):
                samples["base"].append(run_side(base, args.local_steps, args.rounds))
                samples["this"].append(run_side(ROOT, args.local_steps, args.rounds))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=True
            )
    summary: dict[str, Any] = {"base": args.base, "trials": args.trials, "rounds": args.rounds}
    for steps in args.local_steps:
        base_wall, this_wall, base_cpu, this_cpu = (
            statistics.median(s[steps][i] for s in samples[side])
            for i, side in ((0, "base"), (0, "this"), (1, "base"), (1, "this"))
        )
        summary[f"local_steps_{steps}"] = {
            "base_ms": round(base_wall * 1000, 1),
            "this_ms": round(this_wall * 1000, 1),
            "ratio_this_over_base": round(this_wall / base_wall, 3),
            "base_cpu_ms": round(base_cpu * 1000, 1),
            "this_cpu_ms": round(this_cpu * 1000, 1),
            "cpu_ratio_this_over_base": round(this_cpu / base_cpu, 3),
        }
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
