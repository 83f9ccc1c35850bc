"""Validation of the ids that callers send (job ids, node ids).

Ids become etcd keys and checkpoint paths, so they are bounded and restricted to a safe
alphabet before anything uses them; error messages quote at most a prefix of a bad id.
"""

from __future__ import annotations

import re

from tessera.common.errors import InvalidSpec

__all__ = ["MAX_ID_LENGTH", "check_id"]

MAX_ID_LENGTH = 64
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid id.

    Raises:
        InvalidSpec: empty, longer than 64 characters, or not letters, digits, '-' and '_'.
    """
    if not value:
        raise InvalidSpec(f"{what} is required")
    if _ID.fullmatch(value) is None:
        shown = value[:32] + ("..." if len(value) > 32 else "")
        raise InvalidSpec(
            f"{what} {shown!r} ({len(value)} characters) must be 1-{MAX_ID_LENGTH} letters, "
            "digits, '-' or '_'"
        )
    return value
