from __future__ import annotations

import pytest
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import load_data, load_dataset
from tessera.ml.objectives import objective_for
from tessera.ml.training import (
    OPTIMIZERS,
    apply_gradient,
    compute_gradient,
    compute_objective_gradient,
    evaluate_dataset,
    make_optimizer,
)
from tessera.ml.zoo import ModelSpec, build_model, spec_for_data


@pytest.mark.parametrize(
    ("model_name", "dataset", "optimizer", "learning_rate", "steps", "target"),
    [
        ("mlp", "digits", "adam", 0.01, 30, 1.0),
        ("cnn", "digits", "adam", 0.01, 30, 1.2),
        # Uniform guessing over 256 bytes costs ln 256 = 5.5 nats.
        ("gpt", "stdlib", "adamw", 0.003, 40, 4.0),
    ],
)
def test_a_few_steps_of_training_reduce_the_held_out_loss(
    model_name: str, dataset: str, optimizer: str, learning_rate: float, steps: int, target: float
) -> None:
    # Prepare
    data = load_data(dataset)
    spec = spec_for_data(data, seed=1)
    model = build_model(model_name, spec)
    objective = objective_for(data, spec)
    step = make_optimizer(optimizer, model, learning_rate)
    before = objective.evaluate(model).loss
    # Execute: tasks take turns, as three workers of a job would.
    for round_index in range(steps):
        indices = objective.task_indices(
            3, round_index % 3, batch_size=32, seed=0, round_index=round_index
        )
        gradient, _ = compute_objective_gradient(model, objective, *objective.batch(indices))
        apply_gradient(model, step, gradient)
    after = objective.evaluate(model).loss
    # Assert
    assert after < target < before


def test_objective_gradient_equals_the_classification_gradient() -> None:
    data = load_dataset("digits")
    model = build_model("mlp", spec_for_data(data))
    objective = objective_for(data)
    x, y = objective.batch(torch.arange(50))
    legacy, legacy_loss = compute_gradient(model, x, y)
    general, loss = compute_objective_gradient(model, objective, x, y)
    assert loss == legacy_loss and legacy.keys() == general.keys()
    assert all(torch.equal(legacy[k], general[k]) for k in legacy)


def test_gradients_are_deterministic_and_keyed_like_named_parameters() -> None:
    text = load_data("stdlib")
    spec = spec_for_data(text, seed=2)
    objective = objective_for(text, spec)
    batch = objective.batch(objective.task_indices(2, 1, batch_size=4, seed=9, round_index=3))
    first, _ = compute_objective_gradient(build_model("gpt", spec), objective, *batch)
    second, _ = compute_objective_gradient(build_model("gpt", spec), objective, *batch)
    assert list(first) == [n for n, _ in build_model("gpt", spec).named_parameters()]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_optimizers_by_name() -> None:
    model = build_model("mlp", ModelSpec(4, 2))
    assert sorted(OPTIMIZERS) == ["adam", "adamw", "nesterov", "plain_sgd", "sgd"]
    adamw = make_optimizer("adamw", model, 0.1)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["weight_decay"] == 0.01
    nesterov = make_optimizer("nesterov", model, 0.1)
    assert isinstance(nesterov, torch.optim.SGD)
    assert nesterov.param_groups[0]["nesterov"] and nesterov.param_groups[0]["momentum"] == 0.9
    assert not make_optimizer("sgd", model, 0.1).param_groups[0]["nesterov"]
    choices = "adam, adamw, nesterov, plain_sgd, sgd"
    with pytest.raises(InvalidSpec, match=f"unknown optimizer 'lamb'; choose one of: {choices}"):
        make_optimizer("lamb", model, 0.1)


def test_nesterov_takes_the_look_ahead_step() -> None:
    # With momentum m, gradient g and buffer b = m b + g, Nesterov steps by g + m b; on the
    # first step b = g, so the step is (1 + m) g.
    model = build_model("mlp", ModelSpec(1, 1, hidden_sizes=(1,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient = {k: torch.ones_like(v) for k, v in model.named_parameters()}
    apply_gradient(model, make_optimizer("nesterov", model, 0.1), gradient)
    for name, value in model.state_dict().items():
        assert torch.allclose(before[name] - value, torch.full_like(value, 0.19))


def test_evaluate_dataset_reports_the_metrics_of_the_kind() -> None:
    digits, text = load_dataset("digits"), load_data("stdlib")
    classification = evaluate_dataset(build_model("cnn", spec_for_data(digits)), digits)
    language = evaluate_dataset(build_model("gpt", spec_for_data(text)), text)
    assert set(classification.as_dict()) == {"loss", "accuracy", "macro_f1"}
    assert set(language.as_dict()) == {"loss", "accuracy", "perplexity"}
