"""Loss and accuracy curves of a job, drawn with matplotlib (headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tessera.client.types import RoundMetrics

__all__ = ["plot_rounds"]


def plot_rounds(rounds: Sequence[RoundMetrics], path: Path, *, title: str = "") -> None:
    """Write a PNG with train/test loss (left) and test accuracy (right) per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [m.round + 1 for m in rounds]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(x, [m.train_loss for m in rounds], label="train loss")
    loss_axis.plot(x, [m.test_loss for m in rounds], label="held-out loss")
    loss_axis.set_xlabel("round")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    accuracy_axis.plot(x, [m.test_accuracy for m in rounds], color="tab:green")
    accuracy_axis.set_xlabel("round")
    accuracy_axis.set_ylabel("held-out accuracy")
    accuracy_axis.set_ylim(0, 1)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
