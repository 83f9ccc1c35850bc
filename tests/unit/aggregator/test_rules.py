from __future__ import annotations

import pytest
import torch

from services.aggregator.rules import (
    RULES,
    CenteredClip,
    Krum,
    Mean,
    Median,
    TrimmedMean,
    Update,
    get_rule,
    register_rule,
)
from tessera.common.errors import InvalidSpec


def _updates(*rows: list[float], weights: list[float] | None = None) -> list[Update]:
    """One update per row; the row is split into tensors "a" (first entry) and "b" (the rest)."""
    weights = weights or [1.0] * len(rows)
    return [
        Update({"a": torch.tensor(row[0]), "b": torch.tensor(row[1:])}, weight)
        for row, weight in zip(rows, weights, strict=True)
    ]


def _joined(result: dict[str, torch.Tensor]) -> list[float]:
    return [result["a"].item(), *result["b"].tolist()]


def test_registry_names_match_rules_and_only_the_mean_streams() -> None:
    assert sorted(RULES) == ["centered_clip", "krum", "mean", "median", "trimmed_mean"]
    for name, factory in RULES.items():
        rule = factory()
        assert rule.name == name
        assert rule.streaming == (name == "mean")


def test_get_rule_builds_with_options_and_rejects_unknown_names_and_options() -> None:
    krum = get_rule("krum", f=2, m=3)
    assert isinstance(krum, Krum) and (krum.f, krum.m) == (2, 3)
    with pytest.raises(InvalidSpec, match="unknown aggregation rule 'avg'; valid rules: centered"):
        get_rule("avg")
    with pytest.raises(InvalidSpec, match="aggregation rule 'mean' does not take options"):
        get_rule("mean", f=1)


def test_duplicate_registration_raises() -> None:
    class Again(Mean):
        pass

    with pytest.raises(ValueError, match="'mean' is already registered"):
        register_rule(Again)
    assert RULES["mean"] is Mean


def test_mean_is_weighted_by_sample_count() -> None:
    updates = _updates([1.0, 2.0], [4.0, 8.0], weights=[1.0, 3.0])
    assert _joined(Mean().aggregate(updates)) == [3.25, 6.5]


def test_median_odd_and_even() -> None:
    odd = _updates([1.0, 9.0], [5.0, -1.0], [3.0, 4.0])
    assert _joined(Median().aggregate(odd)) == [3.0, 4.0]
    even = _updates([1.0, 0.0], [2.0, 0.0], [10.0, 1.0], [4.0, 1.0])
    assert _joined(Median().aggregate(even)) == [3.0, 0.5]


def test_trimmed_mean_drops_f_from_each_side() -> None:
    updates = _updates([1.0, 7.0], [2.0, -3.0], [3.0, 0.0], [100.0, 1.0], [-50.0, 2.0])
    assert _joined(TrimmedMean(f=1).aggregate(updates)) == [2.0, 1.0]
    assert _joined(TrimmedMean(f=2).aggregate(updates)) == [2.0, 1.0]
    assert _joined(TrimmedMean(f=0).aggregate(updates)) == pytest.approx([11.2, 1.4])


KRUM_POINTS = ([0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [10.0, 10.0])


@pytest.mark.parametrize(
    ("m", "selected", "expected"),
    [(1, [0], [0.0, 0.0]), (2, [0, 1], [0.5, 0.0]), (3, [0, 1, 2], [1 / 3, 2 / 3])],
)
def test_krum_known_answer(m: int, selected: list[int], expected: list[float]) -> None:
    # Scores with f=1 (sum of the 2 smallest squared distances): 5, 6, 9, 23, 262.
    updates = _updates(*map(list, KRUM_POINTS))
    rule = Krum(f=1, m=m)
    assert rule.select(updates) == selected
    assert _joined(rule.aggregate(updates)) == pytest.approx(expected)


def test_krum_ignores_order() -> None:
    updates = _updates(*map(list, reversed(KRUM_POINTS)))
    assert Krum(f=1, m=2).select(updates) == [4, 3]


def test_centered_clip_known_answer_and_momentum() -> None:
    # Prepare
    rule = CenteredClip(tau=1.0, iterations=1)
    # Execute: [3, 4] has norm 5 and is clipped to [0.6, 0.8]; [0.3, 0.4] is kept.
    first = rule.aggregate(_updates([3.0, 4.0], [0.3, 0.4]))
    # From the kept centre [0.45, 0.6], [10, 0.6] differs by [9.55, 0], clipped to [1, 0].
    second = rule.aggregate(_updates([10.0, 0.6]))
    fresh = CenteredClip(tau=1.0, iterations=1).aggregate(_updates([10.0, 0.6]))
    # Assert
    assert _joined(first) == pytest.approx([0.45, 0.6])
    assert _joined(second) == pytest.approx([1.45, 0.6])
    assert _joined(fresh) == pytest.approx([10.0 / 10.017984, 0.6 / 10.017984])


def test_centered_clip_iterations_converge_to_the_mean_of_close_updates() -> None:
    updates = _updates([1.0, 2.0], [3.0, 2.0])
    result = CenteredClip(tau=100.0, iterations=3).aggregate(updates)
    assert _joined(result) == pytest.approx([2.0, 2.0])


def test_centered_clip_reset_and_layout_change() -> None:
    rule = CenteredClip(tau=1.0)
    rule.aggregate(_updates([0.5, 0.5]))
    with pytest.raises(InvalidSpec, match=r"whose tensors a\(\):float32, b\(1,\):float32 differ"):
        rule.aggregate([Update({"a": torch.zeros(2)}, 1.0)])
    rule.reset()
    assert rule.aggregate([Update({"a": torch.full((2,), 0.5)}, 1.0)])["a"].tolist() == [0.5, 0.5]


ROBUST = [
    ("median", {}, 0.05),
    ("trimmed_mean", {"f": 1}, 0.05),
    ("krum", {"f": 1}, 0.05),
    ("krum", {"f": 1, "m": 4}, 0.05),
    ("centered_clip", {"tau": 0.1, "iterations": 10}, 0.2),
]


@pytest.mark.parametrize(("name", "options", "tolerance"), ROBUST)
def test_robust_rules_ignore_a_byzantine_outlier(
    name: str, options: dict[str, float], tolerance: float
) -> None:
    # Prepare: six honest updates near 0.2 and one huge one claiming a huge weight.
    generator = torch.Generator().manual_seed(0)
    honest = [0.2 + 0.01 * torch.randn(4, generator=generator) for _ in range(6)]
    updates = [Update({"a": h[:1], "b": h[1:]}, 10.0) for h in honest]
    updates.insert(3, Update({"a": torch.full((1,), 1e6), "b": torch.full((3,), -1e6)}, 1e9))
    target = torch.stack(honest).mean(dim=0)
    # Execute
    result = get_rule(name, **options).aggregate(updates)
    mean = Mean().aggregate(updates)
    # Assert
    assert (torch.cat([result["a"], result["b"]]) - target).norm() < tolerance
    assert (torch.cat([mean["a"], mean["b"]]) - target).norm() > 1e5


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_results_keep_names_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    updates = [
        Update(
            {
                "scalar": torch.randn((), generator=generator).to(dtype),
                "empty": torch.zeros((0, 3), dtype=dtype),
                "matrix": torch.randn((2, 3), generator=generator).to(dtype),
            },
            1.0 + i,
        )
        for i in range(5)
    ]
    result = get_rule(name).aggregate(updates)
    assert set(result) == {"scalar", "empty", "matrix"}
    for key, tensor in result.items():
        assert tensor.shape == updates[0].tensors[key].shape
        assert tensor.dtype == dtype
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize(
    ("name", "options", "count", "message"),
    [
        ("krum", {"f": 2}, 5, r"krum needs n >= 2f \+ 3 contributions \(f=2 needs 7\), got 5"),
        ("krum", {"m": 5}, 5, "multi-krum averages at most n - f contributions; m=5 with n=5"),
        ("trimmed_mean", {"f": 2}, 4, r"needs n > 2f contributions \(f=2 needs 5\), got 4"),
        ("median", {}, 0, "median needs at least 1 contribution, got 0"),
        ("mean", {}, 0, "mean needs at least 1 contribution, got 0"),
        ("centered_clip", {}, 0, "centered_clip needs at least 1 contribution, got 0"),
    ],
)
def test_too_few_contributions(
    name: str, options: dict[str, int], count: int, message: str
) -> None:
    updates = [Update({"w": torch.ones(2)}, 1.0) for _ in range(count)]
    with pytest.raises(InvalidSpec, match=message):
        get_rule(name, **options).aggregate(updates)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("krum", {"f": -1}, r"krum option f \(-1\) must be an integer >= 0"),
        ("krum", {"m": 0}, r"krum option m \(0\) must be an integer >= 1"),
        ("krum", {"f": 1.5}, r"krum option f \(1.5\) must be an integer >= 0"),
        ("trimmed_mean", {"f": True}, r"trimmed_mean option f \(True\) must be an integer"),
        ("centered_clip", {"tau": 0}, r"centered_clip option tau \(0\) must be a finite number"),
        ("centered_clip", {"tau": float("inf")}, "tau \\(inf\\) must be a finite number > 0"),
        ("centered_clip", {"iterations": 0}, r"option iterations \(0\) must be an integer >= 1"),
    ],
)
def test_invalid_options(name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        get_rule(name, **options)


@pytest.mark.parametrize("name", sorted(RULES))
def test_mismatched_contributions_are_invalid(name: str) -> None:
    rule = get_rule(name)
    base = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    cases = [
        ({"w": torch.ones(2, 2)}, r"contribution 1 has tensors \['w'\], contribution 0 has"),
        ({"w": torch.ones(4), "b": torch.ones(2)}, r"'w' of contribution 1 has shape \(4,\)"),
        ({"w": torch.ones(2, 2), "b": torch.ones(2).double()}, "'b' of contribution 1 is torch"),
    ]
    for other, message in cases:
        updates = [Update(base, 1.0), Update(other, 1.0), *[Update(base, 1.0)] * 3]
        with pytest.raises(InvalidSpec, match=message):
            rule.aggregate(updates)
    with pytest.raises(InvalidSpec, match=f"{name} combines floating tensors; 'n' is torch.int64"):
        rule.aggregate([Update({"n": torch.ones(2, dtype=torch.int64)}, 1.0)] * 5)


def test_mean_rejects_zero_total_weight() -> None:
    with pytest.raises(InvalidSpec, match="mean needs a positive total weight, got 0 for 'a'"):
        Mean().aggregate(_updates([1.0, 2.0], [3.0, 4.0], weights=[0.0, 0.0]))


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_update_rejects_bad_weights(weight: float) -> None:
    with pytest.raises(InvalidSpec, match=f"weight \\({weight}\\) must be finite and >= 0"):
        Update({"w": torch.ones(1)}, weight)
