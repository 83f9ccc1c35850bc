from __future__ import annotations

import pytest
import torch

from tessera.common.errors import InvalidSpec
from tessera.wire.codecs import Codec, ErrorFeedback, get_codec


def _send(
    codec: Codec, feedback: ErrorFeedback | None, steps: int, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the sum of the inputs and the sum of what the receiver decoded."""
    generator = torch.Generator().manual_seed(3)
    sent = torch.zeros(shape, dtype=torch.float64)
    received = torch.zeros(shape, dtype=torch.float64)
    for _ in range(steps):
        update = torch.randn(shape, generator=generator) + 0.5
        if feedback is None:
            payload = codec.encode(update)
        else:
            payload = feedback.compress("w", update, codec)
        received += codec.decode(payload, update.dtype, shape).double()
        sent += update.double()
    return sent, received


@pytest.mark.parametrize(("name", "options"), [("topk", {"ratio": 0.05}), ("int8", {})])
def test_feedback_makes_the_sum_of_decoded_updates_track_the_inputs(
    name: str, options: dict[str, float]
) -> None:
    # Prepare
    codec = get_codec(name, **options)
    feedback = ErrorFeedback()
    # Execute
    sent, received = _send(codec, feedback, 400, (10, 20))
    plain_sent, plain_received = _send(codec, None, 400, (10, 20))
    # Assert: the gap is exactly what is still held back, and stays small as sums grow.
    residual = feedback.residual("w")
    assert residual is not None
    assert torch.allclose(sent - received, residual.double(), atol=1e-3)
    relative = (sent - received).norm() / sent.norm()
    assert relative < 0.05
    assert relative < (plain_sent - plain_received).norm() / plain_sent.norm() / 4


def test_feedback_accumulates_what_topk_drops() -> None:
    codec = get_codec("topk", ratio=0.5)
    feedback = ErrorFeedback()
    first = codec.decode(
        feedback.compress("w", torch.tensor([4.0, 1.0]), codec), torch.float32, (2,)
    )
    second = codec.decode(
        feedback.compress("w", torch.tensor([0.0, 2.0]), codec), torch.float32, (2,)
    )
    assert first.tolist() == [4.0, 0.0]
    assert second.tolist() == [0.0, 3.0]
    residual = feedback.residual("w")
    assert residual is not None and residual.tolist() == [0.0, 0.0]


def test_half_precision_tensors_keep_a_float32_residual() -> None:
    codec = get_codec("int8")
    feedback = ErrorFeedback()
    tensor = torch.linspace(-1, 1, 50, dtype=torch.float16)
    payload = feedback.compress("h", tensor, codec)
    residual = feedback.residual("h")
    assert residual is not None and residual.dtype == torch.float32
    decoded = codec.decode(payload, torch.float16, (50,))
    assert torch.allclose(decoded.float() + residual, tensor.float(), atol=1e-6)


def test_residuals_are_per_name_and_resettable() -> None:
    codec = get_codec("topk", ratio=0.5)
    feedback = ErrorFeedback()
    feedback.compress("a", torch.tensor([1.0, 2.0]), codec)
    feedback.compress("b", torch.tensor([3.0, 5.0, 4.0]), codec)
    with pytest.raises(InvalidSpec, match=r"'a' has shape \(3,\).*call reset\('a'\)"):
        feedback.compress("a", torch.ones(3), codec)
    feedback.reset("a")
    assert feedback.residual("a") is None
    residual_b = feedback.residual("b")
    assert residual_b is not None and residual_b.tolist() == [3.0, 0.0, 0.0]
    feedback.compress("a", torch.ones(3), codec)
    feedback.reset()
    assert feedback.residual("a") is None and feedback.residual("b") is None


def test_lossless_codec_leaves_no_residual_and_an_intact_payload() -> None:
    codec = get_codec("none")
    feedback = ErrorFeedback()
    tensor = torch.arange(5, dtype=torch.float32)
    payload = feedback.compress("w", tensor, codec)
    assert torch.equal(codec.decode(payload, torch.float32, (5,)), tensor)
    residual = feedback.residual("w")
    assert residual is not None and not residual.any()


def test_feedback_rejects_non_floating_tensors() -> None:
    with pytest.raises(InvalidSpec, match="error feedback applies to floating tensors"):
        ErrorFeedback().compress("steps", torch.tensor([1, 2]), get_codec("int8"))
