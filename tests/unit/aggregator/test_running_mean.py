from __future__ import annotations

import pytest
import torch

from services.aggregator.rules import Mean, RunningMean, Update
from tessera.common.errors import InvalidSpec


def _contributions(count: int) -> list[Update]:
    generator = torch.Generator().manual_seed(5)
    return [
        Update(
            {"w": torch.randn(3, 4, generator=generator), "b": torch.randn(4, generator=generator)},
            float(torch.randint(1, 100, (), generator=generator)),
        )
        for _ in range(count)
    ]


def test_equals_the_weighted_mean_of_the_stack() -> None:
    # Prepare
    updates = _contributions(7)
    weights = torch.tensor([u.weight for u in updates])
    running = RunningMean()
    # Execute: fold tensor by tensor, in an order that interleaves contributions.
    for name in ("b", "w"):
        for update in updates:
            running.add_tensor(name, update.tensors[name], update.weight)
    result = running.result()
    # Assert
    for name in ("w", "b"):
        stacked = torch.stack([u.tensors[name] for u in updates])
        shaped = weights.reshape(-1, *[1] * (stacked.dim() - 1))
        expected = (stacked * shaped).sum(dim=0) / weights.sum()
        assert torch.allclose(result[name], expected, atol=1e-6)
    assert running.weights == {"w": float(weights.sum()), "b": float(weights.sum())}
    assert Mean().aggregate(updates).keys() == result.keys()


def test_equal_weights_give_the_plain_mean() -> None:
    updates = [Update(u.tensors, 2.0) for u in _contributions(4)]
    running = RunningMean()
    for update in updates:
        running.add(update)
    expected = torch.stack([u.tensors["w"] for u in updates]).mean(dim=0)
    assert torch.allclose(running.result()["w"], expected, atol=1e-6)


def test_sums_in_place_and_keeps_folding_after_a_result() -> None:
    running = RunningMean()
    running.add_tensor("w", torch.tensor([1.0, 2.0]), 1.0)
    first = running.result()["w"]
    running.add_tensor("w", torch.tensor([4.0, 8.0]), 3.0)
    assert first.tolist() == [1.0, 2.0]
    assert running.result()["w"].tolist() == [3.25, 6.5]


def test_does_not_modify_its_inputs() -> None:
    tensor = torch.tensor([1.0, 2.0])
    running = RunningMean()
    running.add_tensor("w", tensor, 5.0)
    running.add_tensor("w", tensor, 5.0)
    assert tensor.tolist() == [1.0, 2.0]


def test_half_precision_accumulates_in_float32() -> None:
    running = RunningMean()
    small = torch.tensor([1e-4], dtype=torch.float16)
    running.add_tensor("h", torch.tensor([2048.0], dtype=torch.float16), 1.0)
    for _ in range(999):
        running.add_tensor("h", small, 1.0)
    result = running.result()["h"]
    assert result.dtype == torch.float16
    assert result.item() == pytest.approx((2048 + 999e-4) / 1000, rel=1e-3)


def test_each_name_is_averaged_over_the_contributions_that_supplied_it() -> None:
    running = RunningMean()
    running.add_tensor("w", torch.tensor([2.0]), 1.0)
    running.add_tensor("w", torch.tensor([4.0]), 1.0)
    running.add_tensor("b", torch.tensor([6.0]), 2.0)
    assert running.result() == {"w": torch.tensor([3.0]), "b": torch.tensor([6.0])}


def test_rejects_bad_input() -> None:
    running = RunningMean()
    with pytest.raises(InvalidSpec, match="mean needs at least 1 contribution, got 0"):
        running.result()
    with pytest.raises(InvalidSpec, match="mean combines floating tensors; 'n' is torch.int64"):
        running.add_tensor("n", torch.tensor([1]), 1.0)
    with pytest.raises(InvalidSpec, match=r"weight \(-2.0\) must be finite and >= 0"):
        running.add_tensor("w", torch.ones(2), -2.0)
    running.add_tensor("w", torch.ones(2), 0.0)
    with pytest.raises(InvalidSpec, match=r"'w' has shape \(3,\) and dtype torch.float32, earlier"):
        running.add_tensor("w", torch.ones(3), 1.0)
    with pytest.raises(InvalidSpec, match="and dtype torch.float64, earlier contributions have"):
        running.add_tensor("w", torch.ones(2, dtype=torch.float64), 1.0)
    with pytest.raises(InvalidSpec, match="mean needs a positive total weight, got 0 for 'w'"):
        running.result()
