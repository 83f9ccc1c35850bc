"""``tessera-scheduler`` / ``python -m services.scheduler``."""

from __future__ import annotations

from services.scheduler.config import parse_args
from services.scheduler.server import serve


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
