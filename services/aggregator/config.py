"""Aggregator settings."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from tessera.common.errors import InvalidSpec
from tessera.common.service import CommonConfig, add_common_args

__all__ = ["DEFAULT_PORT", "AggregatorConfig", "parse_args"]

DEFAULT_PORT = 50053


@dataclass(frozen=True)
class AggregatorConfig:
    """How the aggregator runs.

    Attributes:
        max_payload_bytes: largest contribution accepted (RESOURCE_EXHAUSTED beyond).
        torch_threads: intra-op threads for aggregation and evaluation.
        checkpoint_dir: where each round's checkpoint goes (None = no checkpoints); a restarted
            aggregator carries its jobs on from here.
        checkpoint_sync: wait for each checkpoint to reach the disk (off: a machine crash
            may lose the last ones; a local cluster's throw-away etcd does not sync either).
    """

    common: CommonConfig
    max_payload_bytes: int = 2 * 1024**3
    torch_threads: int = 1
    checkpoint_dir: Path | None = None
    checkpoint_sync: bool = True

    def __post_init__(self) -> None:
        if self.max_payload_bytes < 1:
            raise InvalidSpec(f"max payload bytes ({self.max_payload_bytes}) must be >= 1")
        if self.torch_threads < 1:
            raise InvalidSpec(f"torch threads ({self.torch_threads}) must be >= 1")


def parse_args(argv: list[str] | None = None) -> AggregatorConfig:
    """Build the configuration from the command line."""
    parser = argparse.ArgumentParser(prog="tessera-aggregator", description=__doc__)
    add_common_args(parser, default_port=DEFAULT_PORT)
    parser.add_argument("--max-payload-bytes", type=int, default=2 * 1024**3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--checkpoint-dir", default=os.environ.get("TESSERA_CHECKPOINT_DIR", ""))
    parser.add_argument(
        "--checkpoint-sync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for each checkpoint to reach the disk (default: on)",
    )
    args = parser.parse_args(argv)
    return AggregatorConfig(
        common=CommonConfig.from_args(args),
        max_payload_bytes=args.max_payload_bytes,
        torch_threads=args.torch_threads,
        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        checkpoint_sync=args.checkpoint_sync,
    )
