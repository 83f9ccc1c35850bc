"""Training modes on a real local cluster, each against a baseline measured in the same run.

Sections (``--only`` picks some; all by default):

    lm: bytes sent to reach a held-out loss with the byte-level GPT on the standard library's
        sources, 4 workers: sync (one gradient per task per step) against diloco with H local
        steps, H in {10, 50, 100}, in fp32 and with the int8 codec. Bytes are the encoded
        contribution payloads the aggregator received (``RoundMetrics.payload_bytes``) up to
        and including the first round at or below the target.
    digits: wall time to 97% held-out accuracy on digits, submit to finish, against a
        single-process torch loop on the same batches (``bench/demo.py``'s baseline).
    flower: Tessera and Flower 1.41 side by side: the same MLP, initial weights, IID shards,
        number of clients, local steps (AdamW), rounds and federated averaging (Tessera's
        diloco with plain SGD at lr 1.0 as the outer step is FedAvg), both on loopback. Flower
        runs in its own virtual environment (it needs protobuf < 7). Reported: the median
        per-round wall time of each (rounds after the first, between consecutive round
        completions on the server side), the median over ``--repeats`` back-to-back pairs of
        their ratio, and the final accuracy of each, against both of Flower's runtimes: the
        deprecated ``start_server``/``start_client`` (the fastest) and the recommended
        deployment runtime (SuperLink, SuperNodes, ``flwr run``). ``--local-steps`` with
        several values shows where coordination stops mattering next to local compute.

Usage: ``python bench/training.py [--only lm,digits,flower] [--hidden 128 1024x1024]
[--local-steps 20] [--repeats 3] [--flower-runtimes legacy deployment] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from demo import single_process
from flower_env import ensure_flower_venv, run_flower

from tessera.cli.app import DEMO_JOB
from tessera.cli.cluster import LocalCluster
from tessera.client import Client, EventKind, JobConfig, JobState, RoundMetrics
from tessera.ml.datasets import load_dataset, shard_indices
from tessera.ml.recipes import Recipe

WORKERS = 4
LM_TARGET_LOSS = 2.8
LM_JOB = JobConfig(
    model="gpt",
    dataset="stdlib",
    n_layer=2,
    n_head=4,
    d_model=64,
    context=64,
    batch_size=16,
    min_nodes=WORKERS,
    tasks_per_round=WORKERS,
    target_loss=LM_TARGET_LOSS,
    seed=0,
)
LM_SYNC = LM_JOB.with_(mode="sync", optimizer="adam", learning_rate=0.003, rounds=600)
LM_INNER_LR = 0.003
FEDAVG_JOB = JobConfig(
    model="mlp",
    dataset="digits",
    hidden_sizes=(128,),
    mode="diloco",
    optimizer="plain_sgd",
    learning_rate=1.0,
    inner_optimizer="adamw",
    inner_learning_rate=0.003,
    inner_steps=20,
    batch_size=32,
    min_nodes=WORKERS,
    tasks_per_round=WORKERS,
    rounds=20,
    seed=0,
    # One task per client, as Flower's FedAvg samples every client once per round.
    policy="round_robin",
)


@dataclass(frozen=True)
class Run:
    """One job on the cluster: its per-round metrics and wall time from submit to finish."""

    job: JobConfig
    rounds: list[RoundMetrics]
    wall_seconds: float
    state: JobState
    message: str

    def bytes_to_target(self, loss: float) -> int | None:
        """Payload bytes up to the first round at or below ``loss`` (None: never reached)."""
        total = 0
        for metrics in self.rounds:
            total += metrics.payload_bytes
            if metrics.test_loss <= loss:
                return total
        return None

    def round_seconds(self) -> list[float]:
        """Seconds between consecutive round completions, after the first round."""
        return [m.seconds for m in self.rounds[1:]]


def run_job(client: Client, job: JobConfig) -> Run:
    """Submit ``job``, follow it to the end."""
    started = time.perf_counter()
    handle = client.submit(job)
    rounds = [
        event.metrics
        for event in client.watch(handle.job_id)
        if event.kind is EventKind.ROUND_COMPLETED and event.metrics is not None
    ]
    wall = time.perf_counter() - started
    final = handle.get()
    return Run(job, rounds, wall, final.state, final.message)


def lm_section(client: Client) -> dict[str, Any]:
    """Bytes to the target loss: sync against diloco for each H, fp32 and int8."""
    sync = run_job(client, LM_SYNC)
    sync_bytes = sync.bytes_to_target(LM_TARGET_LOSS)
    out: dict[str, Any] = {
        "target_loss": LM_TARGET_LOSS,
        "workers": WORKERS,
        "sync": {
            "rounds": len(sync.rounds),
            "bytes": sync_bytes,
            "wall_seconds": round(sync.wall_seconds, 1),
        },
    }
    for codec in ("none", "int8"):
        for steps in (10, 50, 100):
            job = LM_JOB.with_(
                mode="diloco",
                inner_steps=steps,
                inner_learning_rate=LM_INNER_LR,
                codec=codec,
                rounds=max(4, 6000 // steps),
            )
            run = run_job(client, job)
            reached = run.bytes_to_target(LM_TARGET_LOSS)
            out[f"diloco_h{steps}_{codec}"] = {
                "rounds": len(run.rounds),
                "bytes": reached,
                "wall_seconds": round(run.wall_seconds, 1),
                "final_loss": round(run.rounds[-1].test_loss, 4) if run.rounds else None,
                "bytes_ratio_vs_sync": (
                    round(sync_bytes / reached, 1) if sync_bytes and reached else None
                ),
            }
    return out


def digits_section(client: Client) -> dict[str, Any]:
    """Time to 97% on digits: the demo job on the cluster against one process."""
    base_seconds, base_rounds, _ = single_process(DEMO_JOB.target_accuracy)
    run = run_job(client, DEMO_JOB.with_(min_nodes=3, tasks_per_round=3))
    return {
        "target_accuracy": DEMO_JOB.target_accuracy,
        "baseline_seconds": round(base_seconds, 2),
        "baseline_rounds": base_rounds,
        "tessera_seconds": round(run.wall_seconds, 2),
        "tessera_rounds": len(run.rounds),
        "tessera_accuracy": round(run.rounds[-1].test_accuracy, 4) if run.rounds else None,
        "tessera_state": run.state.name,
        "wall_ratio_vs_baseline": round(run.wall_seconds / base_seconds, 1),
    }


def write_flower_data(folder: Path, job: JobConfig) -> None:
    """The job's initial weights, each task's IID shard and the held-out set, as .npz."""
    model, _ = Recipe(
        model=job.model, dataset=job.dataset, hidden_sizes=job.hidden_sizes, seed=job.seed
    ).build()
    np.savez(folder / "init.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    data = load_dataset(job.dataset)
    for task in range(job.tasks_per_round):
        shard = shard_indices(len(data.train_x), job.tasks_per_round, task, seed=job.seed)
        np.savez(
            folder / f"client_{task}.npz",
            x=data.train_x[shard].numpy(),
            y=data.train_y[shard].numpy(),
        )
    np.savez(folder / "test.npz", x=data.test_x.numpy(), y=data.test_y.numpy())


def flower_section(
    client: Client,
    venv: Path,
    hidden: tuple[int, ...],
    runtimes: list[str],
    local_steps: int,
    repeats: int,
) -> dict[str, Any]:
    """Tessera FedAvg (diloco, plain SGD at lr 1) against Flower FedAvg, same everything.

    Each runtime is compared ``repeats`` times, a Tessera job right before each Flower run, and
    the ratio reported is the median of those pairs' ratios: on a shared machine the load
    drifts over minutes, less so between two runs in a row.
    """
    job = FEDAVG_JOB.with_(hidden_sizes=hidden, inner_steps=local_steps)
    # A few rounds first, so that no worker meets the model for the first time in a measured
    # job (Flower's clock starts once its clients have connected, and its first round is not
    # counted either).
    run_job(client, job.with_(rounds=3))
    out: dict[str, Any] = {
        "hidden_sizes": list(hidden),
        "clients": job.tasks_per_round,
        "rounds": job.rounds,
        "local_steps": job.inner_steps,
        "repeats": repeats,
    }
    python = ensure_flower_venv(venv)
    with tempfile.TemporaryDirectory(prefix="tessera-flower-") as folder:
        write_flower_data(Path(folder), job)
        for runtime in runtimes:
            pairs: list[tuple[Run, float, float]] = []
            for _ in range(repeats):
                tessera = run_job(client, job)
                flower = run_flower(
                    python,
                    Path(folder),
                    clients=job.tasks_per_round,
                    rounds=job.rounds,
                    local_steps=job.inner_steps,
                    batch_size=job.batch_size,
                    lr=job.inner_learning_rate,
                    seed=job.seed,
                    hidden=job.hidden_sizes,
                    timeout=900,
                    runtime=runtime,
                )
                flower_round = statistics.median(flower["round_seconds"][1:])
                pairs.append((tessera, flower_round, flower["final_accuracy"]))
            tessera_rounds = [statistics.median(t.round_seconds()) for t, _, _ in pairs]
            flower_rounds = [f for _, f, _ in pairs]
            ratios = [t / f for t, f in zip(tessera_rounds, flower_rounds, strict=True)]
            out[f"vs_flower_{runtime}"] = {
                "version": flower.get("flwr_version"),
                "tessera_median_round_seconds": round(statistics.median(tessera_rounds), 4),
                "flower_median_round_seconds": round(statistics.median(flower_rounds), 4),
                "round_time_ratio_tessera_over_flower": round(statistics.median(ratios), 3),
                "ratios": [round(r, 3) for r in ratios],
                "tessera_final_accuracy": round(pairs[-1][0].rounds[-1].test_accuracy, 4),
                "flower_final_accuracy": round(pairs[-1][2], 4),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="lm,digits,flower", help="comma-separated sections")
    parser.add_argument(
        "--flower-venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tessera-flower-venv",
        help="where Flower's own virtual environment lives (created when missing)",
    )
    parser.add_argument(
        "--hidden",
        type=lambda text: tuple(int(w) for w in text.split("x")),
        nargs="+",
        default=[(128,), (1024, 1024)],
        help="MLP hidden sizes for the Flower comparison, e.g. 128 1024x1024",
    )
    parser.add_argument(
        "--local-steps",
        type=int,
        nargs="+",
        default=[FEDAVG_JOB.inner_steps],
        help="local steps per round in the Flower comparison (each value is one comparison)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Tessera/Flower pairs per comparison; the median ratio is reported",
    )
    parser.add_argument(
        "--flower-runtimes",
        nargs="+",
        default=["legacy", "deployment"],
        help="Flower runtimes to compare with (legacy: start_server/start_client; deployment: "
        "SuperLink, SuperNodes and flwr run)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary line")
    args = parser.parse_args()
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    torch.set_num_threads(1)
    summary: dict[str, Any] = {}
    with LocalCluster(workers=WORKERS, log_level="WARNING") as cluster:
        with Client(
            cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
        ) as client:
            if "digits" in sections:
                summary["digits"] = digits_section(client)
            if "flower" in sections:
                summary["flower"] = [
                    flower_section(
                        client, args.flower_venv, hidden, args.flower_runtimes, steps, args.repeats
                    )
                    for hidden in args.hidden
                    for steps in args.local_steps
                ]
            if "lm" in sections:
                summary["lm"] = lm_section(client)
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
