"""A byte-level text corpus every node has without a network: the Python standard library.

Language models here read bytes (vocabulary 256), as GPT-2 does underneath its byte-pair
encoding (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"). The
corpus is the ``*.py`` sources of the running interpreter's standard library, minus its test
suites and any installed packages, split into train and held-out parts by file: a file belongs
to the held-out part when a hash of its relative path says so, so the split never depends on
which other files exist. Files are read in sorted order until each part reaches its cap, which
bounds both the time to load and the memory held.

Different Python releases ship different sources, so nodes may hold different corpora;
``TextCorpus.fingerprint`` lets a job check that every node reads the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar

import torch

from tessera.common.errors import InvalidSpec

__all__ = [
    "DEFAULT_HELD_OUT_BYTES",
    "DEFAULT_HELD_OUT_FRACTION",
    "DEFAULT_TRAIN_BYTES",
    "EXCLUDED_DIRECTORIES",
    "VOCAB_SIZE",
    "TextCorpus",
    "corpus_files",
    "is_held_out",
    "load_stdlib",
    "read_corpus",
    "stdlib_root",
]

VOCAB_SIZE = 256
DEFAULT_TRAIN_BYTES = 4 * 1024 * 1024
DEFAULT_HELD_OUT_BYTES = 256 * 1024
DEFAULT_HELD_OUT_FRACTION = 0.05
# Test suites are left out because some distributions do not install them, and installed
# packages because they differ from machine to machine.
EXCLUDED_DIRECTORIES = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)


@dataclass(frozen=True)
class TextCorpus:
    """A byte stream split into train and held-out parts.

    Attributes:
        name: the name job specs use.
        train: the training bytes, a 1-D ``torch.uint8`` tensor.
        test: the held-out bytes, a 1-D ``torch.uint8`` tensor.
        fingerprint: SHA-256 of both parts; equal fingerprints mean equal corpora.
    """

    kind: ClassVar[str] = "language_modelling"
    vocab_size: ClassVar[int] = VOCAB_SIZE

    name: str
    train: torch.Tensor
    test: torch.Tensor
    fingerprint: str


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relative_path: str, fraction: float) -> bool:
    """Whether a file (by its ``/``-separated path under the corpus root) is held out.

    Uses SHA-256 of the path rather than ``hash()``, which is salted per process.
    """
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def corpus_files(root: Path) -> list[str]:
    """Sorted ``/``-separated relative paths of the ``*.py`` files under ``root``.

    Directories named in ``EXCLUDED_DIRECTORIES`` are skipped; symbolic links to directories
    are not followed.

    Raises:
        InvalidSpec: ``root`` is not a directory.
    """
    if not root.is_dir():
        raise InvalidSpec(f"text corpus root {str(root)!r} is not a directory")
    found: list[str] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in EXCLUDED_DIRECTORIES]
        relative = Path(directory).relative_to(root)
        found.extend((relative / f).as_posix() for f in files if f.endswith(".py"))
    return sorted(found)


def read_corpus(
    root: Path,
    *,
    name: str,
    train_bytes: int = DEFAULT_TRAIN_BYTES,
    held_out_bytes: int = DEFAULT_HELD_OUT_BYTES,
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
) -> TextCorpus:
    """Read the ``*.py`` files under ``root`` into a corpus split by file.

    Files are concatenated in sorted path order, each into the part its path hashes to, and
    each part is cut at its cap; files of a part that is already full are not read.

    Raises:
        InvalidSpec: a cap or the fraction is out of range, the root is missing or a file
            cannot be read.
    """
    if train_bytes < 1 or held_out_bytes < 1:
        raise InvalidSpec(
            f"corpus caps (train {train_bytes}, held-out {held_out_bytes}) must be >= 1 byte"
        )
    if not 0.0 < held_out_fraction < 1.0:
        raise InvalidSpec(f"held_out_fraction ({held_out_fraction}) must be in (0, 1)")
    caps = {False: train_bytes, True: held_out_bytes}
    parts: dict[bool, bytearray] = {False: bytearray(), True: bytearray()}
    for relative in corpus_files(root):
        held_out = is_held_out(relative, held_out_fraction)
        part = parts[held_out]
        if len(part) >= caps[held_out]:
            if all(len(parts[k]) >= caps[k] for k in parts):
                break
            continue
        try:
            part += (root / relative).read_bytes()
        except OSError as exc:
            raise InvalidSpec(f"cannot read corpus file {str(root / relative)!r}: {exc}") from exc
    train = parts[False][:train_bytes]
    test = parts[True][:held_out_bytes]
    if not train or not test:
        raise InvalidSpec(
            f"text corpus {name!r} under {str(root)!r} has {len(train)} train and {len(test)} "
            "held-out bytes; both parts need some"
        )
    digest = hashlib.sha256()
    for part in (train, test):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return TextCorpus(
        name=name,
        train=torch.frombuffer(train, dtype=torch.uint8),
        test=torch.frombuffer(test, dtype=torch.uint8),
        fingerprint=digest.hexdigest(),
    )


@cache
def load_stdlib(
    train_bytes: int = DEFAULT_TRAIN_BYTES, held_out_bytes: int = DEFAULT_HELD_OUT_BYTES
) -> TextCorpus:
    """The ``"stdlib"`` corpus: this interpreter's standard library sources (cached per process).

    Raises:
        InvalidSpec: the standard library sources are not installed, or a cap is out of range.
    """
    return read_corpus(
        stdlib_root(), name="stdlib", train_bytes=train_bytes, held_out_bytes=held_out_bytes
    )
