"""Pure admission rules for node profiles."""

from __future__ import annotations

import math

from tessera.common.errors import InvalidSpec
from tessera.common.ids import check_id
from tessera.v1 import common_pb2

__all__ = ["MAX_LOCAL_DATASETS", "validate_profile"]

MAX_LOCAL_DATASETS = 256


def validate_profile(profile: common_pb2.NodeProfile) -> None:
    """Check a node's self-reported profile.

    Raises:
        InvalidSpec: naming the field and the rule it breaks.
    """
    if profile.cpu_cores < 1:
        raise InvalidSpec(f"profile.cpu_cores ({profile.cpu_cores}) must be >= 1")
    if not (math.isfinite(profile.throughput) and profile.throughput > 0):
        raise InvalidSpec(
            f"profile.throughput ({profile.throughput}) must be a positive number of samples/s"
        )
    if not (math.isfinite(profile.bandwidth) and profile.bandwidth >= 0):
        raise InvalidSpec(f"profile.bandwidth ({profile.bandwidth}) must be >= 0")
    if profile.gpu_memory_bytes and not profile.gpu_count:
        raise InvalidSpec("profile.gpu_memory_bytes is set but profile.gpu_count is 0")
    if len(profile.hostname) > 253:
        raise InvalidSpec(f"profile.hostname is {len(profile.hostname)} characters; at most 253")
    if len(profile.local_datasets) > MAX_LOCAL_DATASETS:
        raise InvalidSpec(
            f"profile.local_datasets has {len(profile.local_datasets)} names; at most "
            f"{MAX_LOCAL_DATASETS}"
        )
    for name in profile.local_datasets:
        check_id(name, "profile.local_datasets entry")
