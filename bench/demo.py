"""The demo job end to end (``tessera up --json``) against a single-process torch baseline.

Both train the same MLP on the same data with the same batches and hyperparameters to the same
target accuracy; the baseline is measured in the same run, so the ratio is comparable across
machines. Usage: ``python bench/demo.py [--runs N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from tessera.cli.app import DEMO_JOB
from tessera.ml.datasets import load_dataset, task_batch_indices
from tessera.ml.training import apply_gradient, compute_gradient, evaluate, make_optimizer
from tessera.ml.zoo import ModelSpec, build_model

WORKERS = 3


def single_process(target: float) -> tuple[float, int, float]:
    """Same model, batches and optimizer in one process: (seconds, rounds, accuracy)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = load_dataset(DEMO_JOB.dataset)
    model = build_model(
        DEMO_JOB.model,
        ModelSpec(data.num_features, data.num_classes, DEMO_JOB.hidden_sizes, DEMO_JOB.seed),
    )
    optimizer = make_optimizer(DEMO_JOB.optimizer, model, DEMO_JOB.learning_rate)
    accuracy = 0.0
    for round_index in range(DEMO_JOB.rounds):
        grads = []
        for task in range(WORKERS):
            batch = task_batch_indices(
                len(data.train_x),
                WORKERS,
                task,
                batch_size=DEMO_JOB.batch_size,
                seed=DEMO_JOB.seed,
                round_index=round_index,
            )
            grads.append(compute_gradient(model, data.train_x[batch], data.train_y[batch])[0])
        mean = {k: torch.stack([g[k] for g in grads]).mean(dim=0) for k in grads[0]}
        apply_gradient(model, optimizer, mean)
        accuracy = evaluate(model, data.test_x, data.test_y).accuracy
        if accuracy >= target:
            return time.perf_counter() - started, round_index + 1, accuracy
    return time.perf_counter() - started, DEMO_JOB.rounds, accuracy


def cluster_run() -> dict[str, float]:
    """One ``tessera up --json``; its summary line plus the wall time of the whole command."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "up", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    summary: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON summary line")
    args = parser.parse_args()
    base_seconds, base_rounds, base_accuracy = single_process(DEMO_JOB.target_accuracy)
    runs = [cluster_run() for _ in range(args.runs)]
    wall = [r["wall_seconds"] for r in runs]
    summary = {
        "runs": args.runs,
        "cluster_wall_seconds_median": round(statistics.median(wall), 2),
        "cluster_wall_seconds_max": round(max(wall), 2),
        "cluster_rounds": [int(r["rounds"]) for r in runs],
        "cluster_test_accuracy_min": min(r["test_accuracy"] for r in runs),
        "baseline_seconds": round(base_seconds, 3),
        "baseline_rounds": base_rounds,
        "baseline_test_accuracy": round(base_accuracy, 4),
        "wall_ratio_vs_baseline": round(statistics.median(wall) / base_seconds, 1),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
