"""The model zoo: job specs name a model here; no model code ever travels over the network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tessera.common.errors import InvalidSpec

__all__ = ["MODELS", "ModelSpec", "build_model"]


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder needs to know."""

    in_features: int
    num_classes: int
    hidden_sizes: tuple[int, ...] = ()
    seed: int = 0


def _mlp(spec: ModelSpec) -> nn.Module:
    hidden = spec.hidden_sizes or (128,)
    layers: list[nn.Module] = [nn.Flatten()]
    width = spec.in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, spec.num_classes))
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {"mlp": _mlp}


def build_model(name: str, spec: ModelSpec) -> nn.Module:
    """Build a model with weights drawn from ``spec.seed`` (same seed, same weights).

    Raises:
        InvalidSpec: unknown model name or bad sizes.
    """
    factory = MODELS.get(name)
    if factory is None:
        raise InvalidSpec(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    _check_sizes(spec.hidden_sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return factory(spec)


def _check_sizes(sizes: Sequence[int]) -> None:
    for size in sizes:
        if not 1 <= size <= 65536:
            raise InvalidSpec(f"hidden size ({size}) must be in [1, 65536]")
