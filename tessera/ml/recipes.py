"""What a job trains, as data: the model, its sizes, its data and how tasks split the data.

Workers and the aggregator both build a job's model and objective from a ``Recipe``, so they
agree on every shape without any code travelling. ``Recipe.from_spec`` reads a ``JobSpec``.

Data splits:
    iid: task ``t`` of ``n`` trains on IID shard ``t`` of the data set (or byte range ``t`` of a
        corpus); the scheduler hands the shards out by handing out the tasks.
    dirichlet: shards are a ``dirichlet_split`` of the labels (classification only), for
        experiments with label skew.
    local: every worker trains on its own ``<dataset>.npz`` (``load_local_dataset``), which
        never leaves it; the named data set supplies the shapes and the held-out set the
        aggregator evaluates on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import Dataset, DataSource, load_data, task_batch_indices
from tessera.ml.federated import dirichlet_task_indices, load_local_dataset
from tessera.ml.objectives import Objective, objective_for
from tessera.ml.zoo import ModelSpec, build_model, check_fits, spec_for_data
from tessera.v1 import common_pb2

__all__ = ["DATA_SPLITS", "Recipe", "TaskData"]

DATA_SPLITS = ("iid", "dirichlet", "local")


@dataclass(frozen=True)
class Recipe:
    """A job's model and data, validated by ``check``.

    Language-model sizes of 0 mean the ``ModelSpec`` defaults.
    """

    model: str = "mlp"
    dataset: str = "digits"
    hidden_sizes: tuple[int, ...] = ()
    seed: int = 0
    context: int = 0
    n_layer: int = 0
    n_head: int = 0
    d_model: int = 0
    data_split: str = "iid"
    dirichlet_alpha: float = 0.5

    @classmethod
    def from_spec(cls, spec: common_pb2.JobSpec) -> Recipe:
        """The recipe of a job spec; empty fields take the defaults."""
        return cls(
            model=spec.model or "mlp",
            dataset=spec.dataset or "digits",
            hidden_sizes=tuple(spec.hidden_sizes),
            seed=spec.seed,
            context=spec.context,
            n_layer=spec.n_layer,
            n_head=spec.n_head,
            d_model=spec.d_model,
            data_split=spec.data_split or "iid",
            dirichlet_alpha=spec.dirichlet_alpha or 0.5,
        )

    def data(self) -> DataSource:
        """The named data set or corpus (cached per process).

        Raises:
            InvalidSpec: unknown name.
        """
        return load_data(self.dataset)

    def model_spec(self, data: DataSource) -> ModelSpec:
        """The model's sizes, its input and output fitted to ``data``."""
        defaults = ModelSpec(in_features=1, num_classes=1)
        return spec_for_data(
            data,
            hidden_sizes=self.hidden_sizes,
            seed=self.seed,
            n_layer=self.n_layer or defaults.n_layer,
            n_head=self.n_head or defaults.n_head,
            d_model=self.d_model or defaults.d_model,
            context=self.context or defaults.context,
        )

    def check(self) -> None:
        """Check that the model, data and split go together, without building the model.

        Raises:
            InvalidSpec: naming what does not fit, e.g. a Dirichlet split of a text corpus.
        """
        if self.data_split not in DATA_SPLITS:
            raise InvalidSpec(
                f"unknown data_split {self.data_split!r}; choose one of: {', '.join(DATA_SPLITS)}"
            )
        data = self.data()
        check_fits(self.model, data)
        if self.data_split != "iid" and not isinstance(data, Dataset):
            raise InvalidSpec(
                f"data_split {self.data_split!r} needs a classification data set; "
                f"{self.dataset!r} is a text corpus (use data_split 'iid')"
            )

    def build(self) -> tuple[nn.Module, Objective]:
        """The model at its initial weights and the objective it is evaluated with.

        Raises:
            InvalidSpec: the model, sizes or data do not fit.
        """
        self.check()
        data = self.data()
        spec = self.model_spec(data)
        return build_model(self.model, spec), objective_for(data, spec)


class TaskData:
    """Where one worker's tasks of a job take their batches from.

    Args:
        recipe: the job's recipe.
        local_dir: the worker's folder of local data sets (``--local-data``); needed only for
            the "local" split.

    Raises:
        InvalidSpec: the "local" split without a local file of the job's data set, or a file
            whose shapes do not match it.
    """

    def __init__(self, recipe: Recipe, local_dir: Path | None = None) -> None:
        self._recipe = recipe
        data = recipe.data()
        spec = recipe.model_spec(data)
        if recipe.data_split == "local":
            data = self._local(recipe, data, local_dir)
        self.objective = objective_for(data, spec)
        self._labels = data.train_y if isinstance(data, Dataset) else None
        self._size = len(data.train_x) if isinstance(data, Dataset) else 0

    @staticmethod
    def _local(recipe: Recipe, public: DataSource, local_dir: Path | None) -> Dataset:
        if not isinstance(public, Dataset):
            raise InvalidSpec("data_split 'local' needs a classification data set")
        if local_dir is None:
            raise InvalidSpec(
                f"this worker has no local data (--local-data); job needs {recipe.dataset!r}"
            )
        local = load_local_dataset(
            local_dir / f"{recipe.dataset}.npz", num_classes=public.num_classes
        )
        if local.num_features != public.num_features:
            raise InvalidSpec(
                f"local data set {recipe.dataset!r} has {local.num_features} features per "
                f"sample; the job's model takes {public.num_features}"
            )
        return local

    def indices(
        self, num_tasks: int, task_index: int, *, batch_size: int, round_index: int
    ) -> torch.Tensor:
        """The batch of task ``task_index`` at step ``round_index`` (deterministic).

        Raises:
            InvalidSpec: the task index is out of range or its shard is empty.
        """
        seed = self._recipe.seed
        split = self._recipe.data_split
        if split == "dirichlet" and self._labels is not None:
            return dirichlet_task_indices(
                self._labels,
                num_tasks,
                task_index,
                alpha=self._recipe.dirichlet_alpha,
                batch_size=batch_size,
                seed=seed,
                round_index=round_index,
            )
        if split == "local":
            # The whole file is this worker's shard; the task index only varies the draw.
            return task_batch_indices(
                self._size,
                1,
                0,
                batch_size=batch_size,
                seed=seed + task_index,
                round_index=round_index,
            )
        return self.objective.task_indices(
            num_tasks, task_index, batch_size=batch_size, seed=seed, round_index=round_index
        )
