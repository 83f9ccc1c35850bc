"""The ``tessera`` command.

Modules:
    app: the commands (``up``, ``submit``, ``watch``, ``jobs``, ``nodes``, ``cancel``, ...).
    cluster: ``LocalCluster``, a whole cluster as local processes.
    exit_codes: ``ExitCode``.
"""

from tessera.cli.app import main

__all__ = ["main"]
