"""Objectives: what a batch, the loss and the metrics are for each kind of data.

An ``Objective`` is bound to its data when built (``objective_for``), so workers and the
aggregator ask it the same questions whatever the job trains:

    classification: a batch is samples of a ``Dataset``; the loss is the mean cross-entropy on
        the labels; the metrics are accuracy and macro-F1 (the unweighted mean of per-class F1,
        over the classes that occur in the targets or the predictions).
    language_modelling: a batch is ``context + 1``-byte windows of a ``TextCorpus``; the loss
        is the mean next-byte cross-entropy; the metrics are perplexity (``exp(loss)``) and
        next-byte accuracy on a fixed, evenly spaced sample of held-out windows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import (
    Dataset,
    DataSource,
    eval_window_starts,
    task_batch_indices,
    task_window_starts,
)
from tessera.ml.text import TextCorpus
from tessera.ml.zoo import ModelSpec

__all__ = [
    "DEFAULT_EVAL_WINDOWS",
    "Classification",
    "LanguageModelling",
    "Metrics",
    "Objective",
    "macro_f1",
    "objective_for",
]

DEFAULT_EVAL_WINDOWS = 64
# Bounds the memory of one forward pass when evaluating a large held-out set.
_EVAL_CHUNK = 4096


@dataclass(frozen=True)
class Metrics:
    """Held-out metrics; a metric that does not apply to the objective is None."""

    loss: float
    accuracy: float | None = None
    macro_f1: float | None = None
    perplexity: float | None = None

    def as_dict(self) -> dict[str, float]:
        """The metrics that apply, by name."""
        return {k: v for k, v in asdict(self).items() if v is not None}


class Objective(Protocol):
    """A kind of training bound to its data: batches, loss and evaluation."""

    kind: ClassVar[str]

    def task_indices(
        self, num_tasks: int, task_index: int, *, batch_size: int, seed: int, round_index: int
    ) -> torch.Tensor:
        """What task ``task_index`` of round ``round_index`` trains on (for ``batch``).

        Depends only on its arguments, so a reassigned task trains on the same batch anywhere.

        Raises:
            InvalidSpec: the task index is out of range or a shard is too small.
        """
        ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, targets) of the training data ``indices`` select."""
        ...

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of ``model`` on a batch, a scalar that can be back-propagated."""
        ...

    def evaluate(self, model: nn.Module) -> Metrics:
        """Metrics of ``model`` on the held-out data, in eval mode without gradients."""
        ...


class Classification:
    """Cross-entropy on labels; accuracy and macro-F1."""

    kind: ClassVar[str] = "classification"

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def task_indices(
        self, num_tasks: int, task_index: int, *, batch_size: int, seed: int, round_index: int
    ) -> torch.Tensor:
        """Sample indices from the task's IID shard (``task_batch_indices``)."""
        return task_batch_indices(
            len(self.data.train_x),
            num_tasks,
            task_index,
            batch_size=batch_size,
            seed=seed,
            round_index=round_index,
        )

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training samples and their labels."""
        return self.data.train_x[indices], self.data.train_y[indices]

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy."""
        return nn.functional.cross_entropy(model(inputs), targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Metrics:
        """Loss, accuracy and macro-F1 on the held-out samples.

        Raises:
            InvalidSpec: the held-out part is empty.
        """
        x, y = self.data.test_x, self.data.test_y
        if len(x) == 0:
            raise InvalidSpec(f"dataset {self.data.name!r} has no held-out samples to evaluate")
        model.eval()
        total = 0.0
        predictions = []
        for start in range(0, len(x), _EVAL_CHUNK):
            logits = model(x[start : start + _EVAL_CHUNK])
            target = y[start : start + _EVAL_CHUNK]
            total += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            predictions.append(logits.argmax(dim=1))
        predicted = torch.cat(predictions)
        return Metrics(
            loss=total / len(x),
            accuracy=float((predicted == y).float().mean()),
            macro_f1=macro_f1(predicted, y),
        )


class LanguageModelling:
    """Next-byte cross-entropy on windows of a corpus; perplexity and next-byte accuracy."""

    kind: ClassVar[str] = "language_modelling"

    def __init__(
        self, corpus: TextCorpus, context: int, eval_windows: int = DEFAULT_EVAL_WINDOWS
    ) -> None:
        self.corpus = corpus
        self.context = context
        self._offsets = torch.arange(context + 1)
        starts = eval_window_starts(len(corpus.test), context, eval_windows)
        self._held_out = self._windows(corpus.test, starts)

    def _windows(
        self, text: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        windows = text[starts[:, None] + self._offsets].long()
        return windows[:, :-1], windows[:, 1:]

    def task_indices(
        self, num_tasks: int, task_index: int, *, batch_size: int, seed: int, round_index: int
    ) -> torch.Tensor:
        """Window starts in the task's contiguous shard (``task_window_starts``)."""
        return task_window_starts(
            len(self.corpus.train),
            self.context,
            num_tasks,
            task_index,
            batch_size=batch_size,
            seed=seed,
            round_index=round_index,
        )

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows starting at ``indices``, as ``(len(indices), context)`` int64 tensors.

        Inputs are bytes ``[s, s + context)``; targets are the next bytes ``[s + 1, s + context]``.
        """
        return self._windows(self.corpus.train, indices)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per predicted byte."""
        logits = model(inputs)
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> Metrics:
        """Loss, perplexity and next-byte accuracy on the fixed held-out windows."""
        model.eval()
        inputs, targets = self._held_out
        logits = model(inputs)
        loss = float(nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()))
        return Metrics(
            loss=loss,
            accuracy=float((logits.argmax(dim=2) == targets).float().mean()),
            perplexity=math.exp(loss) if loss < 700 else math.inf,
        )


def objective_for(
    data: DataSource, spec: ModelSpec | None = None, *, eval_windows: int = DEFAULT_EVAL_WINDOWS
) -> Objective:
    """The objective for ``data``'s kind; language modelling reads ``spec.context``.

    Raises:
        InvalidSpec: the corpus is too short for the context or ``eval_windows`` < 1.
    """
    if isinstance(data, Dataset):
        return Classification(data)
    context = (spec or ModelSpec(in_features=1, num_classes=data.vocab_size)).context
    if len(data.train) < context + 1:
        raise InvalidSpec(
            f"corpus {data.name!r} has {len(data.train)} training bytes; a window of context "
            f"{context} needs {context + 1}"
        )
    return LanguageModelling(data, context, eval_windows)


def macro_f1(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Unweighted mean F1 over the classes that occur in ``targets`` or ``predictions``.

    Per class, F1 = 2 TP / (2 TP + FP + FN), and 2 TP + FP + FN is the number of times the
    class is predicted plus the number of times it is the target.

    Raises:
        InvalidSpec: the inputs are empty or differ in length.
    """
    if len(predictions) != len(targets) or len(targets) == 0:
        raise InvalidSpec(
            f"macro-F1 needs equally many predictions and targets, at least one "
            f"(got {len(predictions)} and {len(targets)})"
        )
    size = int(max(predictions.max(), targets.max())) + 1
    hits = torch.bincount(targets[predictions == targets], minlength=size)
    occurrences = torch.bincount(predictions, minlength=size) + torch.bincount(
        targets, minlength=size
    )
    present = occurrences > 0
    return float((2 * hits[present] / occurrences[present]).mean())
