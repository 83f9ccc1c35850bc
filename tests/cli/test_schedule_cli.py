"""``tessera schedule``: the offline scheduler from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BRAUN = Path(__file__).resolve().parents[3] / "shared" / "braun"


def _schedule(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", "schedule", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not BRAUN.is_dir(), reason="the Braun instances (../shared/braun) are absent")
def test_min_min_on_a_braun_instance_matches_the_published_makespan() -> None:
    result = _schedule(
        "--etc-file", str(BRAUN / "u_c_hihi.0"), "--tasks", "512", "--machines", "16",
        "--algorithm", "min-min", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["algorithm"] in ("min-min", "min_min")
    assert summary["makespan"] == pytest.approx(8460675.003, rel=1e-4)
    assert len(summary["assignment"]) == 512


def test_bad_input_gets_one_line_naming_the_problem(tmp_path: Path) -> None:
    etc = tmp_path / "bad.etc"
    etc.write_text("1.0\n2.0\nabc\n4.0\n")
    malformed = _schedule("--etc-file", str(etc), "--tasks", "2", "--machines", "2")
    etc.write_text("1\n2\n3\n4\n")
    short = _schedule("--etc-file", str(etc), "--tasks", "3", "--machines", "2")
    unknown = _schedule(
        "--etc-file", str(etc), "--tasks", "2", "--machines", "2", "--algorithm", "psychic"
    )
    negative = _schedule(
        "--etc-file", str(etc), "--tasks", "2", "--machines", "2",
        "--algorithm", "genetic", "--time-limit", "-1",
    )  # fmt: skip
    for result in (malformed, short, unknown, negative):
        assert result.returncode == 3, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ")
    assert "line 3" in malformed.stderr and "'abc'" in malformed.stderr
    assert "expected 6 values" in short.stderr and "found 4" in short.stderr
    assert "unknown scheduling policy 'psychic'" in unknown.stderr
    assert "time_limit (-1.0)" in negative.stderr
