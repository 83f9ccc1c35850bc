from __future__ import annotations

import pytest
import torch
from torch import nn

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import load_data, load_dataset
from tessera.ml.zoo import (
    MODELS,
    ByteGPT,
    ModelSpec,
    ZooEntry,
    build_model,
    check_fits,
    register_model,
    spec_for_data,
)

DIGITS = ModelSpec(in_features=64, num_classes=10, input_shape=(1, 8, 8))
TEXT = ModelSpec(in_features=16, num_classes=256, context=16, d_model=32, n_head=4)


def test_registry_holds_the_three_models_with_their_data_kinds() -> None:
    assert {name: entry.kind for name, entry in MODELS.items()} == {
        "mlp": "classification",
        "cnn": "classification",
        "gpt": "language_modelling",
    }


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("mlp", DIGITS),
        ("mlp", ModelSpec(10, 3, hidden_sizes=(7, 5))),
        ("cnn", DIGITS),
        ("cnn", ModelSpec(3 * 20 * 12, 4, hidden_sizes=(5, 6, 2), input_shape=(3, 20, 12))),
        ("gpt", TEXT),
        ("gpt", ModelSpec(16, 100, n_layer=3, d_model=24, n_head=3, tie_weights=False)),
    ],
)
def test_parameter_counts_are_known_before_building(name: str, spec: ModelSpec) -> None:
    model = build_model(name, spec)
    assert MODELS[name].parameters(spec) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "spec", "inputs", "shape"),
    [
        ("mlp", DIGITS, torch.rand(5, 64), (5, 10)),
        ("cnn", DIGITS, torch.rand(5, 64), (5, 10)),
        ("cnn", DIGITS, torch.rand(5, 1, 8, 8), (5, 10)),
        ("gpt", TEXT, torch.randint(0, 256, (3, 16)), (3, 16, 256)),
        ("gpt", TEXT, torch.randint(0, 256, (3, 5)), (3, 5, 256)),
    ],
)
def test_output_shapes(
    name: str, spec: ModelSpec, inputs: torch.Tensor, shape: tuple[int, ...]
) -> None:
    assert build_model(name, spec)(inputs).shape == shape


@pytest.mark.parametrize(("name", "spec"), [("mlp", DIGITS), ("cnn", DIGITS), ("gpt", TEXT)])
def test_same_seed_same_weights_other_seed_other_weights(name: str, spec: ModelSpec) -> None:
    first = build_model(name, spec).state_dict()
    again = build_model(name, spec).state_dict()
    other = build_model(name, ModelSpec(**{**spec.__dict__, "seed": 1})).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(
        torch.equal(first[k], other[k]) for k in first if first[k].dtype.is_floating_point
    )


def test_building_leaves_the_global_random_state_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_model("gpt", TEXT)
    assert torch.equal(torch.rand(3), expected)


def test_transformer_is_causal() -> None:
    # Prepare
    model = build_model("gpt", TEXT).eval()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 256
    # Execute
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    # Assert: positions before the change see nothing of it; the changed position does.
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 9:], after[:, 9:], atol=1e-3)


def test_transformer_ties_the_head_to_the_embedding_by_default() -> None:
    tied = build_model("gpt", TEXT)
    untied = build_model("gpt", ModelSpec(**{**TEXT.__dict__, "tie_weights": False}))
    assert isinstance(tied, ByteGPT) and isinstance(untied, ByteGPT)
    assert tied.head.weight is tied.token.weight
    assert "head.weight" not in dict(tied.named_parameters())
    assert "head.weight" in dict(untied.named_parameters())
    # GPT-2-style blocks have 12 d^2 + 13 d weights each; add embeddings and the final norm.
    d, blocks = TEXT.d_model, TEXT.n_layer
    expected = 256 * d + TEXT.context * d + blocks * (12 * d * d + 13 * d) + 2 * d
    assert sum(p.numel() for p in tied.parameters()) == expected


def test_transformer_refuses_inputs_longer_than_its_context() -> None:
    with pytest.raises(ValueError, match=r"17 tokens exceed the context \(16\)"):
        build_model("gpt", TEXT)(torch.zeros(1, 17, dtype=torch.long))


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(InvalidSpec, match="unknown model 'resnet'; choose one of: cnn, gpt, mlp"):
        build_model("resnet", DIGITS)
    with pytest.raises(InvalidSpec, match="unknown model 'resnet'; choose one of: cnn, gpt, mlp"):
        check_fits("resnet", load_dataset("digits"))


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("mlp", ModelSpec(64, 10, hidden_sizes=(0,)), r"hidden size \(0\) must be in \[1, 65536\]"),
        ("gpt", ModelSpec(16, 256, d_model=30, n_head=4), r"d_model \(30\) must be a multiple"),
        ("gpt", ModelSpec(16, 256, context=0), r"context \(0\) must be in \[1, 8192\]"),
        ("gpt", ModelSpec(16, 256, hidden_sizes=(8,)), "model 'gpt' takes no hidden_sizes"),
        ("cnn", ModelSpec(64, 10), r"model 'cnn' needs input_shape .*; got \(\)"),
        ("cnn", ModelSpec(64, 10, input_shape=(2, 8, 8)), r"input_shape \(2, 8, 8\) holds 128"),
        (
            "cnn",
            ModelSpec(64, 10, hidden_sizes=(4, 4, 4, 4), input_shape=(8, 8)),
            "needs images of at least 16x16; got 8x8",
        ),
        (
            "gpt",
            ModelSpec(16, 256, n_layer=64, d_model=1024, n_head=8),
            r"model 'gpt' with these sizes has [\d,]+ parameters; at most 50,000,000",
        ),
    ],
)
def test_bad_sizes_are_rejected_with_the_rule(name: str, spec: ModelSpec, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        build_model(name, spec)


def test_cnn_accepts_a_height_width_shape() -> None:
    model = build_model("cnn", ModelSpec(64, 10, input_shape=(8, 8)))
    assert model(torch.rand(2, 64)).shape == (2, 10)


def test_spec_for_data_matches_the_data_and_check_fits_pairs_kinds() -> None:
    digits, text = load_dataset("digits"), load_data("stdlib")
    assert spec_for_data(digits, seed=3) == ModelSpec(64, 10, seed=3, input_shape=(1, 8, 8))
    text_spec = spec_for_data(text, context=32)
    assert (text_spec.num_classes, text_spec.context, text_spec.in_features) == (256, 32, 32)
    check_fits("cnn", digits)
    check_fits("gpt", text)
    with pytest.raises(InvalidSpec, match="dataset 'digits' is classification; models for it: cnn"):
        check_fits("gpt", digits)
    with pytest.raises(InvalidSpec, match="'stdlib' is language_modelling; models for it: gpt"):
        check_fits("mlp", text)


def test_duplicate_registration_raises() -> None:
    def other(spec: ModelSpec) -> nn.Module:
        return nn.Linear(spec.in_features, spec.num_classes)

    with pytest.raises(ValueError, match="a model named 'mlp' is already registered"):
        register_model("mlp", ZooEntry(other, "classification", lambda spec: 0))
    assert MODELS["mlp"].build is not other
