"""``tessera-registry`` / ``python -m services.registry``."""

from __future__ import annotations

from services.registry.config import parse_args
from services.registry.server import serve


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
