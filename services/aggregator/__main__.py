"""``tessera-aggregator`` / ``python -m services.aggregator``."""

from __future__ import annotations

from services.aggregator.config import parse_args
from services.aggregator.server import serve


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
