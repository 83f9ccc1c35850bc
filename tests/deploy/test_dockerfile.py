"""Static checks of deploy/docker/Dockerfile and the build context it sees (.dockerignore)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from tests.deploy.support import DOCKERFILE, REPO, console_scripts


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True)
class Stage:
    image: str
    name: str
    instructions: list[Instruction]

    def find(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions before the first FROM, and the stages (continuations joined, comments cut)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    _preamble, parsed = parse_dockerfile(DOCKERFILE.read_text())
    return parsed


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    try:
        value = json.loads(instruction.args)
    except json.JSONDecodeError:
        pytest.fail(f"{instruction.keyword} {instruction.args} is in shell form; use a JSON array")
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    return value


def test_is_multi_stage_with_a_builder_that_builds_only_the_wheel(stages: list[Stage]) -> None:
    # Assert
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    builder = stages[0]
    assert builder.name == "builder"
    runs = " ".join(i.args for i in builder.find("RUN"))
    assert re.search(r"\bpip wheel\b", runs) and "--no-deps" in runs, runs


def test_runtime_is_python_311_slim_with_cpu_torch_then_the_built_wheel(
    stages: list[Stage],
) -> None:
    # Prepare
    runtime = stages[-1]
    args = {
        i.args.split("=", 1)[0]: i.args.split("=", 1)[1]
        for i in runtime.find("ARG")
        if "=" in i.args
    }
    # Assert
    assert runtime.image == "python:3.11-slim"
    assert any(i.args.startswith("--from=builder ") for i in runtime.find("COPY"))
    torch_index = args.get("TORCH_INDEX_URL", "")
    assert torch_index.startswith("https://download.pytorch.org/whl/cpu"), args
    runs = [i.args for i in runtime.find("RUN")]
    torch_step = next(n for n, r in enumerate(runs) if "TORCH_INDEX_URL" in r)
    wheel_step = next(n for n, r in enumerate(runs) if re.search(r"pip install \S*\.whl", r))
    assert "--index-url" in runs[torch_step]
    # The CPU build must already satisfy `torch` when the wheel's requirements are resolved.
    assert torch_step < wheel_step


def test_runs_as_the_non_root_uid_10001(stages: list[Stage]) -> None:
    # Prepare
    runtime = stages[-1]
    users = runtime.find("USER")
    # Assert
    assert users, "the runtime stage never switches away from root"
    uid = users[-1].args.split(":", 1)[0]
    assert uid == "10001", "use the numeric uid so Kubernetes can verify runAsNonRoot"
    runs = " ".join(i.args for i in runtime.find("RUN"))
    assert re.search(r"useradd\b.*--uid 10001\b", runs), runs
    last_user_index = runtime.instructions.index(users[-1])
    later = runtime.instructions[last_user_index + 1 :]
    assert not [i for i in later if i.keyword == "RUN"], "RUN after USER would run as 10001"


def test_entrypoint_is_the_worker_console_script_in_exec_form(stages: list[Stage]) -> None:
    # Prepare
    runtime = stages[-1]
    entrypoints = runtime.find("ENTRYPOINT")
    # Assert
    assert len(entrypoints) == 1
    argv = exec_form(entrypoints[0])
    assert argv[0] in console_scripts(), f"{argv[0]} is not in [project.scripts]"
    assert argv == ["tessera-worker"]
    for cmd in runtime.find("CMD"):
        exec_form(cmd)


def test_image_binds_every_interface(stages: list[Stage]) -> None:
    # Prepare
    env: dict[str, str] = {}
    for instruction in stages[-1].find("ENV"):
        for word in shlex.split(instruction.args):
            key, _, value = word.partition("=")
            env[key] = value
    # Assert
    assert env.get("TESSERA_HOST") == "0.0.0.0"
    assert env.get("TESSERA_METRICS_HOST") == "0.0.0.0"


def test_builder_copies_only_what_exists(stages: list[Stage]) -> None:
    # Assert
    for instruction in stages[0].find("COPY"):
        *sources, _dest = instruction.args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"


# --- the build context: what .dockerignore lets through ---------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignore_rules(path: Path) -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, excludes) pairs in file order, as Docker reads a .dockerignore."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = os.path.normpath(line.lstrip("!").strip().strip("/"))
        rules.append((_pattern_regex(cleaned), not negated))
    return rules


def is_excluded(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for regex, excludes in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = excludes
    return excluded


@pytest.fixture(scope="module")
def rules() -> list[tuple[re.Pattern[str], bool]]:
    return dockerignore_rules(REPO / ".dockerignore")


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("tessera/__init__.py", False),
        ("tessera/v1/registry_pb2.pyi", False),
        ("services/worker/__main__.py", False),
        ("tessera/__pycache__/client.cpython-311.pyc", True),
        (".git/HEAD", True),
        ("tests/conftest.py", True),
        ("tessera.egg-info/PKG-INFO", True),
        (".venv/bin/python", True),
        ("deploy/compose.yaml", True),
    ],
)
def test_build_context_holds_the_sources_and_nothing_else(
    rules: list[tuple[re.Pattern[str], bool]], path: str, excluded: bool
) -> None:
    assert is_excluded(path, rules) is excluded


def _build_requirements_met() -> str | None:
    """None if the installed setuptools satisfies [build-system].requires, else the reason."""
    from packaging.requirements import Requirement

    with (REPO / "pyproject.toml").open("rb") as handle:
        requires = tomllib.load(handle)["build-system"]["requires"]
    for text in requires:
        requirement = Requirement(text)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            return f"{requirement.name} is not installed"
        if not requirement.specifier.contains(installed, prereleases=True):
            return f"{requirement.name} {installed} does not satisfy {text}"
    return None


@pytest.mark.slow
def test_the_build_context_builds_a_wheel_with_every_console_script(
    rules: list[tuple[re.Pattern[str], bool]], tmp_path: Path
) -> None:
    # Prepare: copy exactly what Docker would send, then build as the builder stage does.
    unmet = _build_requirements_met()
    if unmet is not None:
        pytest.skip(f"an offline wheel build needs the build backend installed: {unmet}")
    context = tmp_path / "context"
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO).as_posix()
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", "venv", "node_modules"}]
        for name in files:
            relative = name if rel_root == "." else f"{rel_root}/{name}"
            if not is_excluded(relative, rules):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / relative, context / relative)
    wheels = tmp_path / "wheels"
    # Execute
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # Assert
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = wheels.glob("tessera-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = archive.read(entry_points).decode()
    for script, target in console_scripts().items():
        assert re.search(rf"^{re.escape(script)} = {re.escape(target)}$", text, re.M), text
    for required in (
        "tessera/py.typed",
        "tessera/v1/registry_pb2.py",
        "tessera/v1/registry_pb2.pyi",
        "services/worker/__main__.py",
    ):
        assert required in names
    assert not [n for n in names if n.startswith("tests/")]
