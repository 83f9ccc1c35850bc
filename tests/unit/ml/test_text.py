from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.text import (
    DEFAULT_HELD_OUT_BYTES,
    DEFAULT_TRAIN_BYTES,
    corpus_files,
    is_held_out,
    load_stdlib,
    read_corpus,
    stdlib_root,
)


def _tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_stdlib_split_is_deterministic_disjoint_and_about_five_percent() -> None:
    # Prepare
    files = corpus_files(stdlib_root())
    # Execute
    held_out = {f for f in files if is_held_out(f, 0.05)}
    again = {f for f in corpus_files(stdlib_root()) if is_held_out(f, 0.05)}
    # Assert
    assert len(files) > 200 and files == sorted(files)
    assert held_out == again
    assert 0.02 < len(held_out) / len(files) < 0.09
    assert not any(
        part in {"test", "tests", "site-packages"} for f in files for part in f.split("/")
    )
    assert "os.py" in files and "json/decoder.py" in files


def test_held_out_is_a_fixed_function_of_the_path() -> None:
    digest = int.from_bytes(hashlib.sha256(b"json/decoder.py").digest()[:8], "big")
    assert is_held_out("json/decoder.py", 0.05) == (digest < 0.05 * 2**64)
    assert is_held_out("json/decoder.py", 0.999999) and not is_held_out("json/decoder.py", 1e-12)


def test_read_corpus_concatenates_sorted_files_into_their_part_up_to_the_caps(
    tmp_path: Path,
) -> None:
    # Prepare: names chosen so that 2 of the 6 files hash into a 1/3 held-out part.
    names = ["a.py", "b/c.py", "b/d.py", "e.py", "f.py", "g.py"]
    _tree(tmp_path, {n: f"<{n}>" for n in names})
    _tree(tmp_path, {"tests/t.py": "x", "b/site-packages/s.py": "x", "readme.txt": "x"})
    held_out = [n for n in names if is_held_out(n, 1 / 3)]
    train = [n for n in names if n not in held_out]
    assert held_out and train
    # Execute
    whole = read_corpus(tmp_path, name="toy", held_out_fraction=1 / 3)
    capped = read_corpus(
        tmp_path, name="toy", train_bytes=9, held_out_bytes=3, held_out_fraction=1 / 3
    )
    # Assert
    assert corpus_files(tmp_path) == sorted(names)
    assert bytes(whole.train.tolist()) == "".join(f"<{n}>" for n in train).encode()
    assert bytes(whole.test.tolist()) == "".join(f"<{n}>" for n in held_out).encode()
    assert bytes(capped.train.tolist()) == "".join(f"<{n}>" for n in train).encode()[:9]
    assert len(capped.test) == 3 and whole.train.dtype == torch.uint8
    assert capped.fingerprint != whole.fingerprint
    assert (
        read_corpus(tmp_path, name="toy", held_out_fraction=1 / 3).fingerprint == whole.fingerprint
    )


def test_read_corpus_rejects_missing_roots_empty_parts_and_bad_caps(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="is not a directory"):
        read_corpus(tmp_path / "missing", name="toy")
    _tree(tmp_path, {"only.py": "x = 1\n"})
    with pytest.raises(InvalidSpec, match="has 0 train and 6 held-out bytes|has 6 train and 0"):
        read_corpus(tmp_path, name="toy")
    with pytest.raises(InvalidSpec, match=r"corpus caps \(train 0, held-out 1\) must be >= 1"):
        read_corpus(tmp_path, name="toy", train_bytes=0, held_out_bytes=1)
    with pytest.raises(InvalidSpec, match=r"held_out_fraction \(1.0\) must be in \(0, 1\)"):
        read_corpus(tmp_path, name="toy", held_out_fraction=1.0)


def test_stdlib_corpus_is_capped_cached_and_python_source() -> None:
    corpus = load_stdlib()
    assert (len(corpus.train), len(corpus.test)) == (DEFAULT_TRAIN_BYTES, DEFAULT_HELD_OUT_BYTES)
    assert load_stdlib() is corpus
    assert corpus.kind == "language_modelling" and corpus.vocab_size == 256
    first = next(f for f in corpus_files(stdlib_root()) if not is_held_out(f, 0.05))
    source = (stdlib_root() / first).read_bytes()
    assert bytes(corpus.train[: len(source)].tolist()) == source
