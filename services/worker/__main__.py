"""``tessera-worker`` / ``python -m services.worker``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from services.worker.agent import WorkerAgent
from services.worker.config import parse_args
from tessera.common.service import setup_logging, start_metrics


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the agent until SIGTERM/SIGINT, then deregister."""
    config = parse_args(argv)
    setup_logging(config.common.log_level)
    metrics_port = start_metrics(config.common.metrics_port)
    agent = WorkerAgent(config)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    if config.common.ready_file is not None:
        config.common.ready_file.write_text(
            json.dumps({"service": "worker", "metrics_port": metrics_port}) + "\n"
        )
    failures: list[BaseException] = []

    def run() -> None:
        try:
            agent.run()
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            failures.append(exc)

    thread = threading.Thread(target=run, name="agent")
    thread.start()
    # Join in slices so the main thread keeps handling signals.
    while thread.is_alive():
        thread.join(0.5)
    if failures:
        logging.getLogger("tessera.worker").error("worker stopped: %s", failures[0])
        sys.exit(1)


if __name__ == "__main__":
    main()
