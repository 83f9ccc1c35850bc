"""Training arithmetic shared by workers (gradients) and the aggregator (steps, evaluation).

``compute_gradient`` and ``evaluate`` are the classification-only forms; the general forms
take an ``Objective`` (``compute_objective_gradient``) or any data set (``evaluate_dataset``).
Optimizers: Adam (Kingma & Ba 2015), AdamW with decoupled weight decay (Loshchilov & Hutter
2019), plain SGD, SGD with momentum, and SGD with Nesterov momentum (Sutskever et al. 2013),
a common outer optimizer for local-SGD training (DiLoCo, Douillard et al. 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import DataSource
from tessera.ml.objectives import Metrics, Objective, objective_for
from tessera.ml.zoo import ModelSpec

__all__ = [
    "OPTIMIZERS",
    "Evaluation",
    "apply_gradient",
    "compute_gradient",
    "compute_objective_gradient",
    "evaluate",
    "evaluate_dataset",
    "make_optimizer",
]


def compute_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    """Mean cross-entropy gradient of ``model`` on ``(x, y)``; returns (gradients, loss)."""
    return _gradient(model, lambda: nn.functional.cross_entropy(model(x), y))


def compute_objective_gradient(
    model: nn.Module, objective: Objective, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of ``objective.loss`` on one batch; returns (gradients by parameter, loss).

    Gradients are keyed like ``model.named_parameters()`` (a tied weight appears once).
    """
    return _gradient(model, lambda: objective.loss(model, inputs, targets))


def _gradient(
    model: nn.Module, loss_of: Callable[[], torch.Tensor]
) -> tuple[dict[str, torch.Tensor], float]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = loss_of()
    loss.backward()  # type: ignore[no-untyped-call]
    grads = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach()
        for name, p in model.named_parameters()
    }
    return grads, float(loss.item())


OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "nesterov": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True),
    # No momentum: as an outer optimizer at lr 1.0 it is federated averaging (McMahan 2017).
    "plain_sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
}


def make_optimizer(name: str, model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """Build the optimizer a job spec names (one of ``OPTIMIZERS``).

    Raises:
        InvalidSpec: unknown optimizer.
    """
    factory = OPTIMIZERS.get(name)
    if factory is None:
        raise InvalidSpec(
            f"unknown optimizer {name!r}; choose one of: {', '.join(sorted(OPTIMIZERS))}"
        )
    return factory(model.parameters(), learning_rate)


def apply_gradient(
    model: nn.Module, optimizer: torch.optim.Optimizer, gradient: Mapping[str, torch.Tensor]
) -> None:
    """Install ``gradient`` as the parameters' ``.grad`` and take one optimizer step."""
    for name, p in model.named_parameters():
        p.grad = gradient[name].to(p.dtype).reshape(p.shape)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class Evaluation:
    """Held-out loss and accuracy."""

    loss: float
    accuracy: float


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Evaluation:
    """Evaluate on held-out data."""
    if len(x) == 0:
        raise InvalidSpec("cannot evaluate on an empty held-out set")
    model.eval()
    logits = model(x)
    loss = float(nn.functional.cross_entropy(logits, y).item())
    accuracy = float((logits.argmax(dim=1) == y).float().mean().item())
    return Evaluation(loss=loss, accuracy=accuracy)


def evaluate_dataset(model: nn.Module, data: DataSource, spec: ModelSpec | None = None) -> Metrics:
    """Held-out metrics of ``model`` on ``data`` with the objective of its kind.

    For a corpus, windows are ``spec.context`` bytes long (the ``ModelSpec`` default when
    ``spec`` is None). Building the objective once with ``objective_for`` and calling its
    ``evaluate`` avoids re-slicing the held-out windows on every call.

    Raises:
        InvalidSpec: the held-out part is empty or shorter than one window.
    """
    return objective_for(data, spec).evaluate(model)
