"""Measure a node's training throughput on the reference model, so the scheduler can plan."""

from __future__ import annotations

import time

import torch

from tessera.ml.training import compute_gradient
from tessera.ml.zoo import ModelSpec, build_model

__all__ = ["measure_throughput"]


def measure_throughput(steps: int = 20, batch: int = 64, slowdown: float = 1.0) -> float:
    """Training samples per second of the reference MLP (8x8 digits sized), after warm-up."""
    model = build_model("mlp", ModelSpec(in_features=64, num_classes=10))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 64, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    compute_gradient(model, x, y)
    started = time.perf_counter()
    for _ in range(steps):
        compute_gradient(model, x, y)
    elapsed = (time.perf_counter() - started) * slowdown
    return steps * batch / max(elapsed, 1e-9)
