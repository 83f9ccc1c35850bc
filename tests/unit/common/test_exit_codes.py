from pathlib import Path

from tessera.cli.exit_codes import ExitCode

DOC = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def test_every_exit_code_is_documented() -> None:
    text = DOC.read_text()
    for code in ExitCode:
        assert f"| {code.value} | `{code.name}` |" in text, code
