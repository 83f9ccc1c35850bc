"""Benchmark the scheduling policies on the Braun et al. (2001) instances and generated ones.

Prints Markdown tables (makespan / best known and seconds per instance and policy, generated
instances against their LP lower bound, the genetic policy's latency on small batches, every
greedy policy's time on 10,000 x 1,000 against one numpy argmin over the same matrix) and, with
--json, one summary line at the end.

    python bench/scheduling.py                 # full run, 10 s per GA instance (about 8 min)
    python bench/scheduling.py --quick --json  # a few instances, short budgets (about 1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.scheduler.etc import Consistency, generate_etc, lp_lower_bound, read_etc
from services.scheduler.policies import get_policy
from services.scheduler.policies.base import Budget

DEFAULT_BRAUN_DIR = Path(__file__).resolve().parents[2] / "shared" / "braun"
GREEDY = ("min_min", "max_min", "sufferage", "lpt", "round_robin")
QUICK_INSTANCES = ("u_c_hihi.0", "u_i_hilo.0", "u_s_lohi.0")


def read_reference(braun_dir: Path) -> dict[str, dict[str, float]]:
    """Parse the README table: instance -> {"min_min", "best", "lp"}."""
    table: dict[str, dict[str, float]] = {}
    for line in (braun_dir / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("u_"):
            table[cells[0]] = {
                "min_min": float(cells[1]),
                "best": float(cells[2]),
                "lp": float(cells[3]),
            }
    return table


def timed(policy: str, etc: npt.NDArray[np.float64], budget: Budget) -> tuple[float, float]:
    started = time.perf_counter()
    result = get_policy(policy).assign(etc, budget=budget)
    return result.makespan, time.perf_counter() - started


def braun(braun_dir: Path, names: Sequence[str], time_limit: float) -> dict[str, Any]:
    reference = read_reference(braun_dir)
    policies = (*GREEDY, "genetic")
    print("## Braun et al. instances (512 tasks x 16 machines): makespan / best known\n")
    print("| instance | " + " | ".join(policies) + " | genetic seconds |")
    print("|---|" + "---:|" * (len(policies) + 1))
    ratios: dict[str, list[float]] = {policy: [] for policy in policies}
    min_min_errors: list[float] = []
    for name in names:
        etc = read_etc(braun_dir / name, 512, 16)
        cells = []
        seconds = 0.0
        for policy in policies:
            budget = Budget(time_limit=time_limit) if policy == "genetic" else Budget()
            makespan, seconds = timed(policy, etc, budget)
            ratio = makespan / reference[name]["best"]
            ratios[policy].append(ratio)
            cells.append(f"{ratio:.4f}")
            if policy == "min_min":
                expected = reference[name]["min_min"]
                min_min_errors.append(abs(makespan - expected) / expected)
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.1f} |", flush=True)
    print(
        f"\nMin-min largest relative error against the README column: {max(min_min_errors):.2e}\n"
    )
    return {
        "genetic_max_ratio_best_known": max(ratios["genetic"]),
        "genetic_mean_ratio_best_known": float(np.mean(ratios["genetic"])),
        "min_min_max_error": max(min_min_errors),
        "min_min_max_ratio_best_known": max(ratios["min_min"]),
    }


def generated(shapes: Sequence[tuple[int, int, Consistency]], time_limit: float) -> dict[str, Any]:
    print("## Generated instances (Ali et al. range-based, high/high, seed 1): makespan / LP\n")
    print(
        "| tasks x machines | consistency | LP bound | LP seconds | min_min | genetic | seconds |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    ratios = []
    for tasks, machines, consistency in shapes:
        etc = generate_etc(
            tasks,
            machines,
            consistency=consistency,
            task_heterogeneity="high",
            machine_heterogeneity="high",
            seed=1,
        )
        started = time.perf_counter()
        bound = lp_lower_bound(etc)
        lp_seconds = time.perf_counter() - started
        min_min, _ = timed("min_min", etc, Budget())
        genetic, seconds = timed("genetic", etc, Budget(time_limit=time_limit))
        ratios.append(genetic / bound)
        print(
            f"| {tasks} x {machines} | {consistency} | {bound:.6g} | {lp_seconds:.2f} | "
            f"{min_min / bound:.4f} | {genetic / bound:.4f} | {seconds:.1f} |",
            flush=True,
        )
    print()
    return {"generated_max_ratio_lp": max(ratios)}


def genetic_latency(runs: int = 20) -> dict[str, Any]:
    print("## Genetic policy on small batches (8 tasks x 4 machines, inconsistent high/high)\n")
    print(f"Milliseconds per call over seeds 0-{runs - 1}, as a live re-plan pays them.\n")
    print("| budget | median ms | max ms |")
    print("|---|---:|---:|")
    summary: dict[str, Any] = {}
    budgets = {"generations=10": Budget(generations=10), "time_limit=0.05": Budget(time_limit=0.05)}
    for label, budget in budgets.items():
        times = []
        for seed in range(runs):
            etc = generate_etc(
                8,
                4,
                consistency="inconsistent",
                task_heterogeneity="high",
                machine_heterogeneity="high",
                seed=seed,
            )
            times.append(timed("genetic", etc, budget)[1] * 1000)
        print(f"| {label} | {np.median(times):.1f} | {max(times):.1f} |", flush=True)
        key = label.replace("=", "_").replace(".", "")
        summary[f"genetic_8x4_{key}_median_ms"] = round(float(np.median(times)), 2)
        summary[f"genetic_8x4_{key}_max_ms"] = round(max(times), 2)
    print()
    return summary


def greedy_speed(policies: Sequence[str]) -> dict[str, Any]:
    print("## Greedy time on 10,000 tasks x 1,000 machines (high/high, seed 0)\n")
    print("Baseline: one `etc.argmin(axis=1)` over the same matrix, measured in this run.\n")
    print("| consistency | policy | seconds | / baseline |")
    print("|---|---|---:|---:|")
    summary: dict[str, Any] = {}
    consistencies: tuple[Consistency, ...] = ("inconsistent", "consistent")
    for consistency in consistencies:
        etc = generate_etc(
            10_000,
            1_000,
            consistency=consistency,
            task_heterogeneity="high",
            machine_heterogeneity="high",
            seed=0,
        )
        # The fastest of a few runs: one argmin takes milliseconds, so a single run is noisy.
        baseline = np.inf
        for _ in range(5):
            started = time.perf_counter()
            etc.argmin(axis=1)
            baseline = min(baseline, time.perf_counter() - started)
        for policy in policies:
            _, seconds = timed(policy, etc, Budget())
            print(
                f"| {consistency} | {policy} | {seconds:.2f} | {seconds / baseline:.0f}x |",
                flush=True,
            )
            summary[f"{policy}_10k_{consistency}_seconds"] = round(seconds, 3)
        summary[f"argmin_10k_{consistency}_seconds"] = round(baseline, 4)
    print()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--braun-dir", type=Path, default=DEFAULT_BRAUN_DIR)
    parser.add_argument(
        "--time-limit", type=float, default=None, help="GA seconds per Braun instance (10)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer instances, short budgets")
    parser.add_argument("--json", action="store_true", help="print a JSON summary line last")
    args = parser.parse_args(argv)
    time_limit = args.time_limit if args.time_limit is not None else (2.0 if args.quick else 10.0)
    if not (args.braun_dir / "README.md").is_file():
        print(f"no Braun instances in {args.braun_dir}; pass --braun-dir", file=sys.stderr)
        return 2
    names = QUICK_INSTANCES if args.quick else tuple(sorted(read_reference(args.braun_dir)))
    summary: dict[str, Any] = {"time_limit": time_limit}
    summary |= braun(args.braun_dir, names, time_limit)
    shapes: list[tuple[int, int, Consistency]] = [
        (1024, 32, "consistent"),
        (1024, 32, "inconsistent"),
    ]
    if not args.quick:
        shapes += [(2048, 64, "consistent"), (2048, 64, "inconsistent")]
    summary |= generated(shapes, 3 * time_limit)
    summary |= genetic_latency()
    summary |= greedy_speed(GREEDY)
    if args.json:
        print(json.dumps({key: _rounded(value) for key, value in summary.items()}))
    return 0


def _rounded(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


if __name__ == "__main__":
    sys.exit(main())
