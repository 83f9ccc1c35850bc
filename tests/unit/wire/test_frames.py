import pytest
import torch

from tessera.common.errors import InvalidSpec, QuotaExceeded
from tessera.wire.frames import Assembler, encode_tensors, iter_chunks
from tessera.wire.stream import metas_from_specs, specs_from_metas


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(300, 7, generator=generator),
        "empty": torch.zeros(0),
        "b": torch.randn(5, dtype=torch.float64, generator=generator),
        "steps": torch.arange(3),
        "half": torch.randn(11, generator=generator).to(torch.bfloat16),
    }


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1000, 1 << 20])
def test_any_chunking_reassembles_exactly(chunk_bytes: int) -> None:
    # Prepare
    tensors = _tensors()
    encoded = encode_tensors(tensors)
    # Execute
    assembler = Assembler(encoded.metas, max_bytes=1 << 30)
    for chunk in iter_chunks(encoded.payloads, chunk_bytes):
        assert len(chunk) <= chunk_bytes
        assembler.write(chunk)
    out = assembler.tensors()
    # Assert
    assert list(out) == list(tensors)
    for name, tensor in tensors.items():
        assert out[name].dtype == tensor.dtype
        assert torch.equal(out[name], tensor)


def test_chunks_are_full_size_except_the_last() -> None:
    encoded = encode_tensors({"a": torch.zeros(1000), "b": torch.zeros(10)})
    sizes = [len(c) for c in iter_chunks(encoded.payloads, 1024)]
    assert sizes == [1024, 1024, 1024, 1000 * 4 + 40 - 3 * 1024]


def test_received_tensors_are_views_of_one_buffer() -> None:
    encoded = encode_tensors({"a": torch.ones(4), "b": torch.ones(4)})
    assembler = Assembler(encoded.metas, max_bytes=1 << 20)
    for chunk in iter_chunks(encoded.payloads):
        assembler.write(chunk)
    out = assembler.tensors()
    # Both live in the preallocated buffer, each at a 64-byte aligned offset: no copies.
    assert out["b"].data_ptr() - out["a"].data_ptr() == 64
    assert out["a"].data_ptr() % 64 == 0


def test_overflow_and_truncation_are_rejected() -> None:
    encoded = encode_tensors({"a": torch.ones(4)})
    assembler = Assembler(encoded.metas, max_bytes=1 << 20)
    with pytest.raises(InvalidSpec, match="more than the 16 payload bytes"):
        assembler.write(b"x" * 17)
    assembler.write(b"x" * 8)
    with pytest.raises(InvalidSpec, match="after 8 of 16 payload bytes"):
        assembler.tensors()


def test_declared_size_over_limit_is_refused_before_allocating() -> None:
    encoded = encode_tensors({"a": torch.ones(1000)})
    with pytest.raises(QuotaExceeded, match="4000 bytes exceeds the limit of 100 bytes"):
        Assembler(encoded.metas, max_bytes=100)


def test_tensor_table_round_trips_through_protobuf() -> None:
    encoded = encode_tensors(_tensors(), "fp16")
    metas = metas_from_specs(specs_from_metas(encoded.metas))
    assert tuple(metas) == encoded.metas
    assert metas[3].codec == "none"  # integer tensors travel raw


def test_table_with_wrong_length_for_fixed_size_codec_is_rejected() -> None:
    specs = specs_from_metas(encode_tensors({"a": torch.ones(4)}).metas)
    specs[0].byte_length = 15
    with pytest.raises(InvalidSpec, match="must be 16 bytes, header says 15"):
        metas_from_specs(specs)


def test_repeated_names_are_rejected() -> None:
    specs = specs_from_metas(encode_tensors({"a": torch.ones(4)}).metas)
    with pytest.raises(InvalidSpec, match="empty or repeated"):
        metas_from_specs([specs[0], specs[0]])
