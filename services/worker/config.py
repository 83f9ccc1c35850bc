"""Worker settings."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tessera.common.errors import InvalidSpec
from tessera.common.service import CommonConfig, add_common_args

__all__ = ["WorkerConfig", "parse_args"]

# Data set names a node may advertise: the same alphabet as ids, so they are safe in messages.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs.

    Attributes:
        registry: the registry's ``host:port``.
        scheduler: the scheduler's ``host:port``.
        torch_threads: intra-op threads for training (keep small on shared machines).
        slowdown: multiply compute time by this (>= 1) to emulate a slower machine in tests.
        join_token: the operator-issued token that admits this node (``TESSERA_JOIN_TOKEN``
            or ``--join-token-file``; never a plain flag, which would show in process lists).
        local_data: a folder of this node's own data sets, ``<name>.npz`` each, for federated
            jobs (data_split "local"); the files never leave the node.
    """

    common: CommonConfig
    registry: str
    scheduler: str
    torch_threads: int = 1
    slowdown: float = 1.0
    name: str = ""
    join_token: str = ""
    local_data: Path | None = None

    def local_datasets(self) -> list[str]:
        """Names of the local data sets this node offers (the ``.npz`` files' stems)."""
        if self.local_data is None:
            return []
        return sorted(
            p.stem for p in self.local_data.glob("*.npz") if p.is_file() and _NAME.fullmatch(p.stem)
        )

    def __post_init__(self) -> None:
        if self.torch_threads < 1:
            raise InvalidSpec(f"torch threads ({self.torch_threads}) must be >= 1")
        if not self.slowdown >= 1.0:
            raise InvalidSpec(f"slowdown ({self.slowdown}) must be >= 1")
        if self.local_data is not None and not self.local_data.is_dir():
            raise InvalidSpec(f"local data folder {str(self.local_data)!r} is not a directory")


def parse_args(argv: list[str] | None = None) -> WorkerConfig:
    """Build the configuration from the command line."""
    parser = argparse.ArgumentParser(prog="tessera-worker", description=__doc__)
    add_common_args(parser, default_port=0)
    parser.add_argument("--registry", default=os.environ.get("TESSERA_REGISTRY", "127.0.0.1:50051"))
    parser.add_argument(
        "--scheduler", default=os.environ.get("TESSERA_SCHEDULER", "127.0.0.1:50052")
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--slowdown", type=float, default=1.0)
    parser.add_argument("--name", default=os.environ.get("TESSERA_WORKER_NAME", ""))
    parser.add_argument("--join-token-file", default="", help="file holding the join token")
    parser.add_argument(
        "--local-data",
        default=os.environ.get("TESSERA_LOCAL_DATA", ""),
        help="folder of this node's own data sets (<name>.npz) for federated jobs",
    )
    args = parser.parse_args(argv)
    join_token = os.environ.get("TESSERA_JOIN_TOKEN", "")
    if args.join_token_file:
        try:
            join_token = Path(args.join_token_file).read_text().strip()
        except OSError as exc:
            raise InvalidSpec(f"cannot read the join token file: {exc.strerror}") from exc
    return WorkerConfig(
        common=CommonConfig.from_args(args),
        registry=args.registry,
        scheduler=args.scheduler,
        torch_threads=args.torch_threads,
        slowdown=args.slowdown,
        name=args.name,
        join_token=join_token,
        local_data=Path(args.local_data) if args.local_data else None,
    )
