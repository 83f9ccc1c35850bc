"""Round time of this checkout against an earlier commit, alternating on one machine.

Each trial starts a local cluster (4 workers) with one side's code, runs a 3-round warm-up and
then the FedAvg job of ``bench/training.py`` (MLP 128, 4 tasks) for ``--rounds`` rounds at each
``--local-steps`` value, and records the median seconds per round. The sides alternate
(base, this, base, this, ...), so that the machine's drift falls on both; reported per step
count: each side's median over its trials and the ratio this / base.

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


def trial(local_steps: list[int], rounds: int) -> dict[int, float]:
    """One cluster with the code on the path: median seconds per round by local steps."""
    from training import FEDAVG_JOB, WORKERS, run_job

    from tessera.cli.cluster import LocalCluster
    from tessera.client import Client

    medians: dict[int, float] = {}
    with LocalCluster(workers=WORKERS, log_level="WARNING") as cluster:
        with Client(
            cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
        ) as client:
            run_job(client, FEDAVG_JOB.with_(rounds=3))
            for steps in local_steps:
                run = run_job(client, FEDAVG_JOB.with_(inner_steps=steps, rounds=rounds))
                medians[steps] = statistics.median(run.round_seconds())
    return medians


def run_side(code: Path, local_steps: list[int], rounds: int) -> dict[int, float]:
    """A trial in a fresh interpreter whose imports resolve to ``code`` first."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), str(ROOT / "bench")]))
    command = [sys.executable, str(Path(__file__).resolve()), "--trial", "--rounds", str(rounds)]
    command += ["--local-steps", *map(str, local_steps)]
    done = subprocess.run(command, cwd=code, env=env, check=True, capture_output=True, text=True)
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


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
    samples: dict[str, list[dict[int, float]]] = {"base": [], "this": []}
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
        base_median = statistics.median(s[steps] for s in samples["base"])
        this_median = statistics.median(s[steps] for s in samples["this"])
        summary[f"local_steps_{steps}"] = {
            "base_ms": round(base_median * 1000, 1),
            "this_ms": round(this_median * 1000, 1),
            "ratio_this_over_base": round(this_median / base_median, 3),
        }
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
