"""Submit a job, follow it, download the model: the SDK in one page.

Start a cluster first (``tessera up --serve --no-demo``), then run
``python examples/sdk_quickstart.py [SCHEDULER] [REGISTRY]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tessera import Client, EventKind, InvalidSpec, JobConfig


def main(scheduler: str = "127.0.0.1:50052", registry: str = "127.0.0.1:50051") -> None:
    with Client(scheduler, registry=registry) as client:
        print(f"{len(client.list_nodes())} live nodes")
        try:
            client.submit(JobConfig(learning_rate=-1.0))
        except InvalidSpec as exc:
            print(f"rejected as expected: {exc}")
        spec = JobConfig(
            name="quickstart",
            rounds=30,
            target_accuracy=0.9,
            batch_size=64,
            learning_rate=0.02,
            min_nodes=1,
            tasks_per_round=3,
        )
        job = client.submit(spec)
        for event in job.watch():
            metrics = event.metrics
            if event.kind is EventKind.ROUND_COMPLETED and metrics is not None:
                print(f"round {metrics.round + 1}: accuracy {metrics.test_accuracy:.3f}")
        final = job.get()
        print(f"{final.job_id} {final.state.value} after {final.rounds_completed} rounds")
        path = Path(tempfile.mkdtemp()) / "model.safetensors"
        saved = job.download_model(path)
        print(f"model version {saved.version} saved to {saved.path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
