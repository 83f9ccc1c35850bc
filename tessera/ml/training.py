"""Training arithmetic shared by workers (gradients) and the aggregator (steps, evaluation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tessera.common.errors import InvalidSpec

__all__ = ["Evaluation", "apply_gradient", "compute_gradient", "evaluate", "make_optimizer"]


def compute_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    """Mean cross-entropy gradient of ``model`` on ``(x, y)``; returns (gradients, loss)."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    grads = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach()
        for name, p in model.named_parameters()
    }
    return grads, float(loss.item())


def make_optimizer(name: str, model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """Build the optimizer a job spec names.

    Raises:
        InvalidSpec: unknown optimizer.
    """
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=learning_rate)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    raise InvalidSpec(f"unknown optimizer {name!r}; choose one of: adam, sgd")


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
