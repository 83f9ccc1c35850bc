"""Exit codes of the ``tessera`` command; docs/operations.md lists them (a test checks)."""

from __future__ import annotations

import enum

__all__ = ["ExitCode"]


class ExitCode(enum.IntEnum):
    """Process exit codes."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    INVALID_INPUT = 3
    NOT_FOUND = 4
    UNAVAILABLE = 5
    TARGET_MISSED = 6
    ERROR = 10
