"""Schedule an ETC matrix file offline, for the ``tessera schedule`` command and benchmarks."""

from __future__ import annotations

import os
import time
from typing import Any

from services.scheduler.etc import read_etc
from services.scheduler.policies import get_policy, normalize_policy_name
from services.scheduler.policies.base import Budget

__all__ = ["schedule_file"]


def schedule_file(
    etc_file: str | os.PathLike[str],
    tasks: int,
    machines: int,
    algorithm: str,
    time_limit: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Read an ETC matrix in the Braun et al. (2001) format and schedule it.

    Args:
        etc_file: The matrix file, one number per line, task-major.
        tasks: Number of tasks in the file.
        machines: Number of machines in the file.
        algorithm: A registered policy name, e.g. ``min_min`` or ``genetic`` (``min-min`` too).
        time_limit: Seconds the policy may search (anytime policies only).
        seed: Seed for randomised policies.

    Returns:
        ``{"algorithm": name, "makespan": float, "seconds": float, "assignment": [machine per
        task]}``; ``seconds`` is the policy's wall-clock time, without reading the file.

    Raises:
        InvalidSpec: The file is malformed, the algorithm is unknown or a limit is invalid.
        OSError: The file cannot be read.
    """
    etc = read_etc(etc_file, tasks, machines)
    policy = get_policy(algorithm)
    budget = Budget(time_limit=time_limit, seed=seed)
    started = time.perf_counter()
    result = policy.assign(etc, budget=budget)
    seconds = time.perf_counter() - started
    return {
        "algorithm": normalize_policy_name(algorithm),
        "makespan": result.makespan,
        "seconds": seconds,
        "assignment": result.machine_of_task.tolist(),
    }
