"""What a task computes in each mode, from its spec and weights alone."""

from pathlib import Path

import numpy as np
import pytest
import torch

from services.worker.trainer import Trainer
from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import load_dataset
from tessera.ml.recipes import Recipe, TaskData
from tessera.ml.training import compute_objective_gradient
from tessera.v1 import common_pb2


def _spec(**fields: object) -> common_pb2.JobSpec:
    base: dict[str, object] = {
        "model": "mlp",
        "dataset": "digits",
        "hidden_sizes": [16],
        "batch_size": 32,
        "seed": 3,
        "tasks_per_round": 4,
    }
    base.update(fields)
    return common_pb2.JobSpec(**base)  # type: ignore[arg-type]


def _initial(spec: common_pb2.JobSpec) -> dict[str, torch.Tensor]:
    model, _ = Recipe.from_spec(spec).build()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sync_task_sends_the_gradient_of_its_batch() -> None:
    # Prepare
    spec = _spec()
    weights = _initial(spec)
    model, objective = Recipe.from_spec(spec).build()
    model.load_state_dict(weights)
    batch = TaskData(Recipe.from_spec(spec)).indices(4, 1, batch_size=32, round_index=2)
    expected, _ = compute_objective_gradient(model, objective, *objective.batch(batch))
    # Execute
    contribution = Trainer().compute("j", spec, weights, 2, 1, 4)
    # Assert
    assert contribution.samples == 32
    for name, tensor in expected.items():
        assert torch.allclose(contribution.gradient[name], tensor)


def test_diloco_task_sends_start_minus_end_after_inner_adamw_steps() -> None:
    # Prepare
    spec = _spec(mode="diloco", inner_steps=5, inner_optimizer="adamw", inner_learning_rate=0.01)
    weights = _initial(spec)
    recipe = Recipe.from_spec(spec)
    model, objective = recipe.build()
    model.load_state_dict(weights)
    data = TaskData(recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    for step in range(5):
        inputs, targets = objective.batch(
            data.indices(4, 2, batch_size=32, round_index=7 * 5 + step)
        )
        optimizer.zero_grad()
        objective.loss(model, inputs, targets).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    # Execute
    contribution = Trainer().compute("j", spec, weights, 7, 2, 4)
    # Assert
    assert contribution.samples == 5 * 32
    for name, p in model.named_parameters():
        assert torch.allclose(contribution.gradient[name], weights[name] - p.detach(), atol=1e-6)


def test_a_reassigned_diloco_task_computes_the_same_contribution_elsewhere() -> None:
    spec = _spec(mode="diloco", inner_steps=3, inner_learning_rate=0.01)
    weights = _initial(spec)
    first = Trainer().compute("j", spec, weights, 1, 0, 4)
    again = Trainer().compute("other-job-id", spec, weights, 1, 0, 4)
    for name, tensor in first.gradient.items():
        assert torch.equal(tensor, again.gradient[name])


def test_language_model_task_trains_on_corpus_windows() -> None:
    # Prepare
    spec = _spec(
        model="gpt",
        dataset="stdlib",
        hidden_sizes=[],
        n_layer=1,
        n_head=2,
        d_model=16,
        context=16,
        batch_size=4,
        mode="diloco",
        inner_steps=3,
        inner_learning_rate=0.01,
    )
    # Execute
    contribution = Trainer().compute("lm", spec, _initial(spec), 0, 3, 4)
    # Assert: a byte model starts near uniform (ln 256 = 5.55) and its weights moved
    assert 4.0 < contribution.loss < 6.5
    assert contribution.samples == 3 * 4
    assert any(t.abs().sum() > 0 for t in contribution.gradient.values())


def test_dirichlet_tasks_train_on_disjoint_label_skewed_shards() -> None:
    # Prepare
    recipe = Recipe(hidden_sizes=(16,), seed=1, data_split="dirichlet", dirichlet_alpha=0.1)
    data = TaskData(recipe)
    labels = load_dataset("digits").train_y
    # Execute
    shards = [set(data.indices(3, t, batch_size=0, round_index=0).tolist()) for t in range(3)]
    # Assert: disjoint, complete, and far from the global label mix
    assert sum(len(s) for s in shards) == len(labels) == len(set().union(*shards))
    mixes = [torch.bincount(labels[sorted(s)], minlength=10).float() / len(s) for s in shards]
    assert max(float((m - 0.1).abs().max()) for m in mixes) > 0.2


def test_local_split_trains_on_the_workers_own_file(tmp_path: Path) -> None:
    # Prepare: a local file of 40 samples that all carry label 7
    digits = load_dataset("digits")
    np.savez(tmp_path / "digits.npz", x=digits.train_x[:40].numpy(), y=np.full(40, 7))
    spec = _spec(data_split="local", batch_size=0)
    # Execute
    contribution = Trainer(local_dir=tmp_path).compute("j", spec, _initial(spec), 0, 0, 4)
    # Assert: the whole file is the batch, whatever the task index
    assert contribution.samples == 40


def test_local_split_without_local_data_fails_with_the_reason(tmp_path: Path) -> None:
    spec = _spec(data_split="local")
    with pytest.raises(InvalidSpec, match="no local data"):
        Trainer().compute("j", spec, _initial(spec), 0, 0, 4)
    with pytest.raises(InvalidSpec, match="does not exist"):
        Trainer(local_dir=tmp_path).compute("j", spec, _initial(spec), 0, 0, 4)


def test_local_file_with_other_feature_width_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", x=np.zeros((5, 10), np.float32), y=np.zeros(5, np.int64))
    spec = _spec(data_split="local")
    with pytest.raises(InvalidSpec, match="has 10 features per sample; the job's model takes 64"):
        Trainer(local_dir=tmp_path).compute("j", spec, _initial(spec), 0, 0, 4)


def test_recipe_refuses_combinations_that_cannot_train() -> None:
    with pytest.raises(InvalidSpec, match="needs a classification data set"):
        Recipe(model="gpt", dataset="stdlib", data_split="dirichlet").check()
    with pytest.raises(InvalidSpec, match="model 'gpt' trains on"):
        Recipe(model="gpt", dataset="digits").check()
    with pytest.raises(InvalidSpec, match="unknown data_split 'shuffled'"):
        Recipe(data_split="shuffled").check()


def test_cnn_task_trains_on_digits_as_images() -> None:
    spec = _spec(model="cnn", hidden_sizes=[4, 8], mode="diloco", inner_steps=2)
    contribution = Trainer().compute("cnn", spec, _initial(spec), 0, 0, 4)
    assert contribution.samples == 2 * 32
    assert set(contribution.gradient) == {
        n for n, _ in Recipe.from_spec(spec).build()[0].named_parameters()
    }
