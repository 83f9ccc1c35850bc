"""Registry settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tessera.common.errors import InvalidSpec
from tessera.common.service import CommonConfig, add_common_args, add_etcd_args

__all__ = ["DEFAULT_PORT", "RegistryConfig", "parse_args"]

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class RegistryConfig:
    """How the registry runs.

    Attributes:
        heartbeat_interval: seconds between a node's heartbeats.
        patience: missed heartbeats tolerated; the etcd lease TTL is patience x interval.
    """

    common: CommonConfig
    etcd: str
    etcd_prefix: str
    heartbeat_interval: float = 2.0
    patience: int = 5

    def __post_init__(self) -> None:
        if not self.heartbeat_interval > 0:
            raise InvalidSpec(f"heartbeat interval ({self.heartbeat_interval}) must be > 0")
        if self.patience < 2:
            raise InvalidSpec(f"patience ({self.patience}) must be >= 2")

    @property
    def lease_ttl(self) -> int:
        """Etcd lease TTL in whole seconds (etcd's unit), at least 2."""
        return max(2, round(self.heartbeat_interval * self.patience))


def parse_args(argv: list[str] | None = None) -> RegistryConfig:
    """Build the configuration from the command line."""
    parser = argparse.ArgumentParser(prog="tessera-registry", description=__doc__)
    add_common_args(parser, default_port=DEFAULT_PORT)
    add_etcd_args(parser)
    parser.add_argument("--heartbeat-interval", type=float, default=2.0)
    parser.add_argument("--patience", type=int, default=5)
    args = parser.parse_args(argv)
    return RegistryConfig(
        common=CommonConfig.from_args(args),
        etcd=args.etcd,
        etcd_prefix=args.etcd_prefix,
        heartbeat_interval=args.heartbeat_interval,
        patience=args.patience,
    )
