"""ETC matrix tools: the Braun file format, the Ali generator, makespan and the LP bound."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from services.scheduler.etc import (
    generate_etc,
    lp_lower_bound,
    machine_loads,
    makespan,
    parse_etc_text,
    read_etc,
    write_etc,
)
from tessera.common.errors import InvalidSpec

BRAUN_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "braun"
needs_braun = pytest.mark.skipif(
    not (BRAUN_DIR / "README.md").is_file(),
    reason=f"Braun et al. instances not found in {BRAUN_DIR} (shared/ beside the repository)",
)


def test_parse_is_task_major_and_accepts_crlf() -> None:
    # Prepare
    text = "1\r\n2\r\n3\r\n4.5\r\n5\r\n6e1\r\n"

    # Execute
    etc = parse_etc_text(text, tasks=3, machines=2)

    # Assert
    np.testing.assert_array_equal(etc, [[1, 2], [3, 4.5], [5, 60]])
    assert etc.dtype == np.float64


def test_parse_skips_blank_lines_and_spaces() -> None:
    etc = parse_etc_text(" 1 \n\n2\n3\n4\n\n", tasks=2, machines=2)
    np.testing.assert_array_equal(etc, [[1, 2], [3, 4]])


def test_bad_number_names_file_and_line(tmp_path: Path) -> None:
    # Prepare
    lines = ["1.5"] * 20
    lines[16] = "abc"
    path = tmp_path / "u_c_hihi.0"
    path.write_text("\r\n".join(lines) + "\r\n")

    # Execute / Assert
    with pytest.raises(InvalidSpec, match=r"^u_c_hihi\.0 line 17: 'abc' is not a number$"):
        read_etc(path, 5, 4)


def test_wrong_count_says_what_was_expected() -> None:
    text = "1\n" * 8190
    with pytest.raises(InvalidSpec) as caught:
        parse_etc_text(text, 512, 16, source="u_c_hihi.0")
    assert str(caught.value) == (
        "u_c_hihi.0: expected 8192 values (512 tasks x 16 machines), found 8190"
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [("-3", "is negative"), ("nan", "is not a finite number"), ("inf", "is not a finite number")],
)
def test_negative_and_non_finite_values_are_rejected(value: str, words: str) -> None:
    with pytest.raises(InvalidSpec, match=f"m.txt line 3: '{value}' {words}"):
        parse_etc_text(f"1\n2\n{value}\n4\n", 2, 2, source="m.txt")


def test_negative_dimensions_are_rejected() -> None:
    with pytest.raises(InvalidSpec, match="machines"):
        parse_etc_text("", 0, 0)


def test_write_then_read_restores_values_exactly(tmp_path: Path) -> None:
    etc = generate_etc(
        7,
        3,
        consistency="inconsistent",
        task_heterogeneity="high",
        machine_heterogeneity="high",
        seed=3,
    )
    path = tmp_path / "m.etc"
    write_etc(path, etc)
    np.testing.assert_array_equal(read_etc(path, 7, 3), etc)


@pytest.mark.parametrize(
    ("task_het", "machine_het", "upper"),
    [("high", "high", 3000 * 1000), ("high", "low", 3000 * 10), ("low", "low", 100 * 10)],
)
def test_generator_ranges(task_het: str, machine_het: str, upper: float) -> None:
    etc = generate_etc(
        300,
        8,
        consistency="inconsistent",
        task_heterogeneity=task_het,  # type: ignore[arg-type]
        machine_heterogeneity=machine_het,  # type: ignore[arg-type]
        seed=0,
    )
    assert etc.shape == (300, 8)
    assert etc.min() >= 1.0
    assert etc.max() < upper
    # The top of the range is actually reached within a factor of a few.
    assert etc.max() > upper / 4


def test_consistent_rows_are_sorted() -> None:
    etc = generate_etc(
        50,
        9,
        consistency="consistent",
        task_heterogeneity="low",
        machine_heterogeneity="high",
        seed=1,
    )
    assert (np.diff(etc, axis=1) >= 0).all()


def test_semi_consistent_sorts_even_columns_only() -> None:
    etc = generate_etc(
        200,
        8,
        consistency="semi-consistent",
        task_heterogeneity="high",
        machine_heterogeneity="high",
        seed=2,
    )
    assert (np.diff(etc[:, 0::2], axis=1) >= 0).all()
    assert not (np.diff(etc[:, 1::2], axis=1) >= 0).all()
    assert not (np.diff(etc, axis=1) >= 0).all()


def test_inconsistent_rows_are_not_sorted() -> None:
    etc = generate_etc(
        100,
        8,
        consistency="inconsistent",
        task_heterogeneity="high",
        machine_heterogeneity="high",
        seed=2,
    )
    assert not (np.diff(etc, axis=1) >= 0).all(axis=1).any()


def test_generator_is_deterministic_per_seed() -> None:
    def make(seed: int) -> np.ndarray:
        return generate_etc(
            20,
            4,
            consistency="inconsistent",
            task_heterogeneity="low",
            machine_heterogeneity="low",
            seed=seed,
        )

    np.testing.assert_array_equal(make(5), make(5))
    assert not np.array_equal(make(5), make(6))


def test_generator_rejects_unknown_options() -> None:
    with pytest.raises(InvalidSpec, match="consistency 'sorted'"):
        generate_etc(
            2,
            2,
            consistency="sorted",  # type: ignore[arg-type]
            task_heterogeneity="high",
            machine_heterogeneity="high",
            seed=0,
        )


def test_loads_and_makespan_known_answer() -> None:
    etc = np.array([[1.0, 4.0], [2.0, 1.0], [3.0, 6.0]])
    np.testing.assert_array_equal(machine_loads(etc, [0, 1, 0]), [4.0, 1.0])
    assert makespan(etc, [0, 1, 0]) == 4.0
    assert makespan(etc, [1, 1, 1]) == 11.0
    # An unassigned task counts nowhere.
    np.testing.assert_array_equal(machine_loads(etc, [-1, 0, 0]), [5.0, 0.0])


@pytest.mark.parametrize("assignment", [[0, 2, 0], [0, 1], [0, -2, 1]])
def test_makespan_rejects_bad_assignments(assignment: list[int]) -> None:
    with pytest.raises(InvalidSpec):
        makespan(np.ones((3, 2)), assignment)


def test_lp_bound_known_answers() -> None:
    # Three unit tasks on two identical machines: the LP splits them evenly.
    assert math.isclose(lp_lower_bound(np.full((3, 2), 2.0)), 3.0)
    # One task: the LP would halve it, but no schedule can beat the task itself.
    assert math.isclose(lp_lower_bound(np.array([[10.0, 10.0]])), 10.0)
    # The mask forces both tasks onto machine 0.
    mask = np.array([[True, False], [True, False]])
    assert math.isclose(lp_lower_bound(np.full((2, 2), 1.0), mask), 2.0)


def test_lp_bound_never_exceeds_a_schedule() -> None:
    etc = generate_etc(
        60,
        5,
        consistency="inconsistent",
        task_heterogeneity="high",
        machine_heterogeneity="low",
        seed=4,
    )
    assert lp_lower_bound(etc) <= makespan(etc, etc.argmin(axis=1))


@needs_braun
def test_lp_bound_matches_the_braun_readme() -> None:
    etc = read_etc(BRAUN_DIR / "u_i_hilo.0", 512, 16)
    assert math.isclose(lp_lower_bound(etc), 73057.943, rel_tol=1e-7)
