"""Generate the committed gRPC/protobuf modules and their type stubs.

Usage: ``python scripts/gen_protos.py`` rewrites ``tessera/v1``; ``--check`` regenerates into a
temporary directory and fails when the committed files differ (run by ``.ci/run``).
Settings come from ``[tool.tessera.protos]`` in pyproject.toml.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
import tomllib
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _settings() -> tuple[Path, Path, list[Path]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["tessera"]["protos"]
    source = ROOT / config["source"]
    files = sorted(p for pattern in config["files"] for p in source.glob(pattern))
    return source, ROOT / config["output"], files


def generate(source: Path, output: Path, files: list[Path]) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{source}",
        f"-I{include}",
        f"--python_out={output}",
        f"--grpc_python_out={output}",
        f"--mypy_out={output}",
        f"--mypy_grpc_out={output}",
        *(str(f.relative_to(source)) for f in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _generated(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    source, output, files = _settings()
    package_dirs = sorted({f.parent.relative_to(source) for f in files})
    if not args.check:
        generate(source, output, files)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(source, Path(tmp), files)
        stale = []
        for package in package_dirs:
            fresh, committed = Path(tmp) / package, output / package
            names = set(_generated(fresh)) | set(_generated(committed))
            for name in sorted(names):
                a, b = fresh / name, committed / name
                if not (a.exists() and b.exists() and filecmp.cmp(a, b, shallow=False)):
                    stale.append(str(package / name))
        if stale:
            print("generated code is stale; run python scripts/gen_protos.py:", *stale, sep="\n  ")
            return 1
    print(f"generated code is up to date ({len(files)} proto files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
