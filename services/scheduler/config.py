"""Scheduler settings."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from tessera.common.service import CommonConfig, add_common_args, add_etcd_args

__all__ = ["DEFAULT_PORT", "SchedulerConfig", "parse_args"]

DEFAULT_PORT = 50052


@dataclass(frozen=True)
class SchedulerConfig:
    """How the scheduler runs.

    Attributes:
        aggregator: the aggregator's ``host:port``, handed to workers with each task.
        max_workers: RPC threads; every open task stream and job watch holds one.
        advertise: the address other replicas and operators see for this one (default
            ``host:port``).
        leader_ttl: seconds after which a silent leader loses its lease to a standby.
    """

    common: CommonConfig
    etcd: str
    etcd_prefix: str
    aggregator: str
    max_workers: int = 256
    advertise: str = ""
    leader_ttl: int = 5


def parse_args(argv: list[str] | None = None) -> SchedulerConfig:
    """Build the configuration from the command line."""
    parser = argparse.ArgumentParser(prog="tessera-scheduler", description=__doc__)
    add_common_args(parser, default_port=DEFAULT_PORT)
    add_etcd_args(parser)
    parser.add_argument(
        "--aggregator", default=os.environ.get("TESSERA_AGGREGATOR", "127.0.0.1:50053")
    )
    parser.add_argument("--max-workers", type=int, default=256)
    parser.add_argument("--advertise", default=os.environ.get("TESSERA_ADVERTISE", ""))
    parser.add_argument("--leader-ttl", type=int, default=5)
    args = parser.parse_args(argv)
    return SchedulerConfig(
        common=CommonConfig.from_args(args),
        etcd=args.etcd,
        etcd_prefix=args.etcd_prefix,
        aggregator=args.aggregator,
        max_workers=args.max_workers,
        advertise=args.advertise,
        leader_ttl=args.leader_ttl,
    )
