from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tessera.common.errors import InvalidSpec, NotFound, StoreCorrupt
from tessera.ml.checkpoint import load_model, save_model
from tessera.ml.datasets import load_data
from tessera.ml.objectives import objective_for
from tessera.ml.training import apply_gradient, compute_objective_gradient, make_optimizer
from tessera.ml.zoo import ByteGPT, build_model, spec_for_data


@pytest.mark.parametrize(("model_name", "dataset"), [("cnn", "digits"), ("gpt", "stdlib")])
def test_a_trained_model_round_trips_into_a_fresh_instance(
    tmp_path: Path, model_name: str, dataset: str
) -> None:
    # Prepare: train a few steps so the weights differ from any seed's initial ones.
    data = load_data(dataset)
    spec = spec_for_data(data, seed=4)
    model = build_model(model_name, spec)
    objective = objective_for(data, spec)
    optimizer = make_optimizer("adam", model, 0.01)
    for step in range(3):
        batch = objective.batch(
            objective.task_indices(1, 0, batch_size=8, seed=0, round_index=step)
        )
        apply_gradient(model, optimizer, compute_objective_gradient(model, objective, *batch)[0])
    inputs = objective.batch(objective.task_indices(1, 0, batch_size=4, seed=1, round_index=0))[0]
    path = tmp_path / "model.safetensors"
    # Execute
    save_model(path, model.state_dict(), {"model": model_name, "round": "3"})
    state, metadata = load_model(path)
    fresh = build_model(model_name, spec_for_data(data, seed=5))
    fresh.load_state_dict(state)
    # Assert
    assert metadata == {"model": model_name, "round": "3"}
    assert state.keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(inputs), model.eval()(inputs))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_tied_weights_stay_tied_after_loading(tmp_path: Path) -> None:
    data = load_data("stdlib")
    model = build_model("gpt", spec_for_data(data, seed=1))
    save_model(tmp_path / "gpt.safetensors", model.state_dict())
    fresh = build_model("gpt", spec_for_data(data, seed=2))
    fresh.load_state_dict(load_model(tmp_path / "gpt.safetensors")[0])
    assert isinstance(model, ByteGPT) and isinstance(fresh, ByteGPT)
    assert fresh.head.weight is fresh.token.weight
    assert torch.equal(fresh.token.weight, model.token.weight)


def test_metadata_must_be_strings_and_values_tensors(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="metadata must map strings to strings; got 'round': 3"):
        save_model(tmp_path / "m", {"w": torch.zeros(1)}, {"round": 3})  # type: ignore[dict-item]
    with pytest.raises(InvalidSpec, match="entry 'w' is a list, not a tensor"):
        save_model(tmp_path / "m", {"w": [1.0]})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_missing_and_corrupt_checkpoints_raise_domain_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(StoreCorrupt, match="is not a valid safetensors file"):
        load_model(tmp_path / "bad.safetensors")


def test_saving_replaces_an_existing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, {"w": torch.zeros(2)}, {"v": "1"})
    save_model(path, {"w": torch.ones(3)}, {"v": "2"})
    state, metadata = load_model(path)
    assert torch.equal(state["w"], torch.ones(3)) and metadata == {"v": "2"}
