"""Follow several jobs at once with ``AsyncClient``.

Start a cluster first (``tessera up --serve --no-demo``), then run
``python examples/async_watch.py [SCHEDULER] [REGISTRY]``.
"""

from __future__ import annotations

import asyncio
import sys

from tessera import AsyncClient, EventKind, JobConfig


async def follow(client: AsyncClient, job_id: str) -> int:
    rounds = 0
    async for event in client.watch(job_id):
        if event.kind is EventKind.ROUND_COMPLETED:
            rounds += 1
    return rounds


async def main(scheduler: str = "127.0.0.1:50052", registry: str = "127.0.0.1:50051") -> None:
    async with AsyncClient(scheduler, registry=registry) as client:
        spec = JobConfig(rounds=5, batch_size=32, learning_rate=0.02, tasks_per_round=2)
        job_ids = [await client.submit(spec.with_(seed=seed)) for seed in range(2)]
        rounds = await asyncio.gather(*(follow(client, j) for j in job_ids))
        for job_id, count in zip(job_ids, rounds, strict=True):
            job = await client.get_job(job_id)
            print(f"{job_id}: {job.state.value}, {count} rounds watched")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
