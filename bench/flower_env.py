"""Flower's own venv for the side-by-side benchmark, and a runner for its half of it.

Flower lives in a venv of its own because it cannot share Tessera's: flwr 1.41 requires
protobuf < 7 and Tessera's generated code needs protobuf 7. ``bench/flower_digits.py`` runs in
that venv (it imports only the standard library, numpy, torch and flwr); the two sides meet only
through ``.npz`` files going in and one JSON line coming out. This module uses the standard
library only, so it imports from the project venv without pulling anything of Flower's in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FLOWER_SCRIPT",
    "RUNTIMES",
    "TORCH_VERSION",
    "ensure_flower_venv",
    "run_flower",
    "venv_python",
]

FLOWER_SCRIPT = Path(__file__).resolve().with_name("flower_digits.py")
RUNTIMES = ("legacy", "deployment")  # the script's --runtime choices
TORCH_VERSION = "2.13.0"
_TAIL = 4000  # characters of stderr quoted in an error
_EXIT_MARGIN = 60.0  # seconds past --timeout before the script itself is killed (its imports)


def venv_python(path: Path) -> Path:
    """The interpreter of the venv at ``path`` (POSIX layout, like the rest of the benchmark)."""
    return path / "bin" / "python"


def _has_packages(python: Path, flwr_version: str) -> bool:
    # Importing both proves they load, not just that their metadata is on disk.
    probe = "import flwr, torch; print(flwr.__version__); print(torch.__version__.split('+')[0])"
    try:
        done = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.split() == [flwr_version, TORCH_VERSION]


def ensure_flower_venv(path: Path, flwr_version: str = "1.41.0") -> Path:
    """Create (or complete) a venv at ``path`` with torch and flwr; returns its python.

    Nothing is installed when the venv already imports ``flwr==flwr_version`` and
    ``torch==TORCH_VERSION``. torch is installed first, pinned to the build the benchmark
    uses, then flwr.

    Raises:
        RuntimeError: venv creation or an install failed, or the result still lacks a package.
    """
    python = venv_python(path)
    if python.exists() and _has_packages(python, flwr_version):
        return python
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(path)], "creating the venv")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    _run([*pip, f"torch=={TORCH_VERSION}"], f"installing torch=={TORCH_VERSION}")
    _run([*pip, f"flwr=={flwr_version}"], f"installing flwr=={flwr_version}")
    if not _has_packages(python, flwr_version):
        raise RuntimeError(f"{path} still lacks flwr=={flwr_version} or torch=={TORCH_VERSION}")
    return python


def _run(command: Sequence[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-_TAIL:]}")


def run_flower(
    python: Path,
    data_dir: Path,
    *,
    clients: int,
    rounds: int,
    local_steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    hidden: int | Sequence[int],
    timeout: float,
    threads: int = 1,
    runtime: str = "legacy",
) -> dict[str, Any]:
    """Run ``flower_digits.py --json`` with ``python`` and return its summary.

    ``data_dir`` holds ``init.npz``, ``client_<i>.npz`` and ``test.npz`` (see that script).
    ``runtime`` is ``"legacy"`` (``start_server``/``start_client`` over gRPC bidi) or
    ``"deployment"`` (SuperLink, SuperNodes and ``flwr run``). ``timeout`` bounds the federated
    run; the script gets a margin on top for its imports and is killed, with everything it
    started, past that.

    Raises:
        ValueError: ``runtime`` is neither of the two.
        RuntimeError: the script failed, timed out, or printed no JSON summary; the message
            ends with the tail of its stderr.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    sizes = [hidden] if isinstance(hidden, int) else list(hidden)
    command = [
        str(python), str(FLOWER_SCRIPT), "--json",
        "--runtime", runtime,
        "--data", str(data_dir),
        "--clients", str(clients),
        "--rounds", str(rounds),
        "--local-steps", str(local_steps),
        "--batch-size", str(batch_size),
        "--lr", repr(lr),
        "--seed", str(seed),
        "--hidden", ",".join(str(size) for size in sizes),
        "--threads", str(threads),
        "--timeout", repr(timeout),
    ]  # fmt: skip
    # A session of its own: on a timeout the whole group goes, the server and clients with it.
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout + _EXIT_MARGIN)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        _, stderr = proc.communicate()
        raise RuntimeError(
            f"flower_digits.py ran past {timeout + _EXIT_MARGIN:.0f} s:\n{stderr[-_TAIL:]}"
        ) from None
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    if proc.returncode != 0:
        _kill_group(proc.pid)  # anything a crashed script left behind
        raise RuntimeError(f"flower_digits.py exited with {proc.returncode}:\n{stderr[-_TAIL:]}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        summary: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(
            f"flower_digits.py printed no JSON summary ({exc}):\n{stderr[-_TAIL:]}"
        ) from exc
    return summary


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
