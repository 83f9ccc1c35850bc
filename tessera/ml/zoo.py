"""The model zoo: job specs name a model here; no model code ever travels over the network.

Models:
    mlp: a multilayer perceptron on flat inputs.
    cnn: a small convolutional network (3x3 convolutions, ReLU, 2x2 max pooling, one linear
        classifier) on image-shaped inputs such as the 8x8 digits viewed as 1x8x8.
    gpt: a byte-level GPT-style language model: the Transformer decoder (Vaswani et al. 2017,
        "Attention Is All You Need") with causal self-attention, pre-LayerNorm blocks, learned
        positional embeddings and an output head tied to the token embedding, as in GPT-2
        (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners").

Every model is built from a ``ModelSpec`` with weights drawn from ``spec.seed``. None uses
dropout or any other randomness in its forward pass, so a task's gradient depends only on the
weights and the batch, whichever node computes it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import Dataset, DataSource

# Deeper stacks than this are not what the zoo is for, and each layer costs time to build.
MAX_HIDDEN_LAYERS = 64

__all__ = [
    "MAX_PARAMETERS",
    "MODELS",
    "ByteGPT",
    "ImageCNN",
    "ModelSpec",
    "ZooEntry",
    "build_model",
    "check_fits",
    "register_model",
    "spec_for_data",
]

MAX_PARAMETERS = 50_000_000


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder needs to know; each model reads the fields that size it.

    Attributes:
        in_features: width of one flat input (``gpt`` ignores it; ``spec_for_data`` sets it
            to the context).
        num_classes: outputs per input: classes, or the vocabulary size of a language model.
        hidden_sizes: ``mlp``: hidden layer widths (default (128,)); ``cnn``: output channels
            of its convolution layers, each followed by 2x2 pooling (default (16, 32)).
        seed: the weights are drawn from this seed.
        input_shape: how one flat input is laid out; ``cnn`` needs (channels, height, width)
            or (height, width). Empty means flat.
        n_layer: ``gpt`` transformer blocks.
        n_head: ``gpt`` attention heads; must divide ``d_model``.
        d_model: ``gpt`` embedding width.
        context: ``gpt`` longest input, in bytes (the positional embedding's length).
        tie_weights: whether the ``gpt`` output head shares the token embedding matrix.
    """

    in_features: int
    num_classes: int
    hidden_sizes: tuple[int, ...] = ()
    seed: int = 0
    input_shape: tuple[int, ...] = ()
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    context: int = 64
    tie_weights: bool = True


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Attributes:
        build: builds the model from a checked spec; ``build_model`` seeds it.
        kind: the kind of data it trains on (``Dataset.kind`` or ``TextCorpus.kind``).
        parameters: how many parameters ``build`` would create, computed without building
            anything, so that an oversized spec fails before it allocates.
    """

    build: Callable[[ModelSpec], nn.Module]
    kind: str
    parameters: Callable[[ModelSpec], int]


MODELS: dict[str, ZooEntry] = {}


def register_model(name: str, entry: ZooEntry) -> None:
    """Add a model to ``MODELS``.

    Raises:
        ValueError: the name is already taken.
    """
    if name in MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    MODELS[name] = entry


def build_model(name: str, spec: ModelSpec) -> nn.Module:
    """Build a model with weights drawn from ``spec.seed`` (same seed, same weights).

    Raises:
        InvalidSpec: unknown model name, bad sizes, or more than ``MAX_PARAMETERS`` parameters.
    """
    entry = _entry(name)
    _check_spec(spec)
    count = entry.parameters(spec)
    if count > MAX_PARAMETERS:
        raise InvalidSpec(
            f"model {name!r} with these sizes has {count:,} parameters; at most "
            f"{MAX_PARAMETERS:,} are allowed"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return entry.build(spec)


def _entry(name: str) -> ZooEntry:
    entry = MODELS.get(name)
    if entry is None:
        raise InvalidSpec(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return entry


def check_fits(name: str, data: DataSource) -> None:
    """Check that model ``name`` trains on data of ``data``'s kind.

    Raises:
        InvalidSpec: unknown model, or the model is for another kind of data.
    """
    kind = _entry(name).kind
    if kind != data.kind:
        fitting = sorted(n for n, e in MODELS.items() if e.kind == data.kind)
        raise InvalidSpec(
            f"model {name!r} trains on {kind} data but dataset {data.name!r} is {data.kind}; "
            f"models for it: {', '.join(fitting) or 'none'}"
        )


def spec_for_data(
    data: DataSource,
    *,
    hidden_sizes: Sequence[int] = (),
    seed: int = 0,
    n_layer: int = ModelSpec.n_layer,
    n_head: int = ModelSpec.n_head,
    d_model: int = ModelSpec.d_model,
    context: int = ModelSpec.context,
) -> ModelSpec:
    """The ``ModelSpec`` whose input and output sizes match ``data``."""
    if isinstance(data, Dataset):
        in_features, num_classes, shape = data.num_features, data.num_classes, data.input_shape
    else:
        in_features, num_classes, shape = context, data.vocab_size, ()
    return ModelSpec(
        in_features=in_features,
        num_classes=num_classes,
        hidden_sizes=tuple(hidden_sizes),
        seed=seed,
        input_shape=shape,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        context=context,
    )


def _check_spec(spec: ModelSpec) -> None:
    _check_range("in_features", spec.in_features, 1, 1 << 24)
    _check_range("num_classes", spec.num_classes, 1, 1 << 20)
    if len(spec.hidden_sizes) > MAX_HIDDEN_LAYERS:
        raise InvalidSpec(
            f"hidden_sizes has {len(spec.hidden_sizes)} layers; at most {MAX_HIDDEN_LAYERS}"
        )
    for size in spec.hidden_sizes:
        if not 1 <= size <= 65536:
            raise InvalidSpec(f"hidden size ({size}) must be in [1, 65536]")
    if spec.input_shape:
        if any(d < 1 for d in spec.input_shape):
            raise InvalidSpec(f"input_shape {spec.input_shape} must have sizes >= 1")
        if math.prod(spec.input_shape) != spec.in_features:
            raise InvalidSpec(
                f"input_shape {spec.input_shape} holds {math.prod(spec.input_shape)} values; "
                f"in_features is {spec.in_features}"
            )
    _check_range("n_layer", spec.n_layer, 1, 64)
    _check_range("n_head", spec.n_head, 1, 64)
    _check_range("d_model", spec.d_model, 1, 8192)
    _check_range("context", spec.context, 1, 8192)
    if spec.d_model % spec.n_head:
        raise InvalidSpec(f"d_model ({spec.d_model}) must be a multiple of n_head ({spec.n_head})")


def _check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidSpec(f"{field} ({value}) must be in [{low}, {high}]")


def _mlp_widths(spec: ModelSpec) -> list[int]:
    return [spec.in_features, *(spec.hidden_sizes or (128,)), spec.num_classes]


def _mlp(spec: ModelSpec) -> nn.Module:
    widths = _mlp_widths(spec)
    layers: list[nn.Module] = [nn.Flatten()]
    for width, size in zip(widths[:-2], widths[1:-1], strict=True):
        layers += [nn.Linear(width, size), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def _mlp_parameters(spec: ModelSpec) -> int:
    widths = _mlp_widths(spec)
    return sum(a * b + b for a, b in itertools.pairwise(widths))


class ImageCNN(nn.Module):
    """Convolution blocks (3x3 conv, ReLU, 2x2 max pool), then one linear classifier.

    Takes flat inputs ``(batch, C*H*W)`` or shaped ``(batch, C, H, W)``; returns logits.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], channels: Sequence[int], num_classes: int
    ) -> None:
        super().__init__()
        self.input_shape = input_shape
        width, height, breadth = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width, height, breadth = out, height // 2, breadth // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * height * breadth, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)``."""
        features: torch.Tensor = self.features(x.reshape(len(x), *self.input_shape))
        logits: torch.Tensor = self.classifier(features.flatten(1))
        return logits


def _cnn_layout(spec: ModelSpec) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    channels = spec.hidden_sizes or (16, 32)
    if len(spec.input_shape) == 2:
        shape = (1, spec.input_shape[0], spec.input_shape[1])
    elif len(spec.input_shape) == 3:
        shape = (spec.input_shape[0], spec.input_shape[1], spec.input_shape[2])
    else:
        raise InvalidSpec(
            f"model 'cnn' needs input_shape (channels, height, width) or (height, width), "
            f"e.g. (1, 8, 8) for digits; got {spec.input_shape}"
        )
    smallest = 2 ** len(channels)
    if min(shape[1:]) < smallest:
        raise InvalidSpec(
            f"model 'cnn' halves height and width {len(channels)} times, so it needs images "
            f"of at least {smallest}x{smallest}; got {shape[1]}x{shape[2]}"
        )
    return shape, channels


def _cnn(spec: ModelSpec) -> nn.Module:
    shape, channels = _cnn_layout(spec)
    return ImageCNN(shape, channels, spec.num_classes)


def _cnn_parameters(spec: ModelSpec) -> int:
    (depth, height, width), channels = _cnn_layout(spec)
    convolutions = sum(9 * a * b + b for a, b in itertools.pairwise((depth, *channels)))
    pooled = channels[-1] * (height >> len(channels)) * (width >> len(channels))
    return convolutions + pooled * spec.num_classes + spec.num_classes


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (
            t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2)
            for t in self.qkv(x).split(width, dim=2)
        )
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return out


class _Block(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = _CausalSelfAttention(d_model, n_head)
        self.norm2 = nn.LayerNorm(d_model)
        self.expand = nn.Linear(d_model, 4 * d_model)
        self.contract = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        hidden = nn.functional.gelu(self.expand(self.norm2(x)))
        out: torch.Tensor = x + self.contract(hidden)
        return out


class ByteGPT(nn.Module):
    """A GPT-2-style decoder over bytes.

    Takes token ids ``(batch, length)`` with ``length <= context``; returns next-token logits
    ``(batch, length, vocab_size)``, where position ``i`` sees only positions ``<= i``.
    """

    def __init__(
        self, vocab_size: int, context: int, n_layer: int, n_head: int, d_model: int, tie: bool
    ) -> None:
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        blocks = [_Block(d_model, n_head) for _ in range(n_layer)]
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie:
            self.head.weight = self.token.weight
        self.apply(_gpt2_init)
        # GPT-2 scales the projections that write into the residual stream by depth, so the
        # stream's variance does not grow with the number of blocks.
        for block in blocks:
            for projection in (block.attention.proj, block.contract):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, length, vocab_size)``.

        Raises:
            ValueError: the input is longer than the context.
        """
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"{length} tokens exceed the context ({self.context})")
        positions = torch.arange(length, device=tokens.device)
        x = self.blocks(self.token(tokens) + self.position(positions))
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


def _gpt2_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _gpt(spec: ModelSpec) -> nn.Module:
    if spec.hidden_sizes:
        raise InvalidSpec(
            f"model 'gpt' takes no hidden_sizes (got {list(spec.hidden_sizes)}); size it with "
            "n_layer, n_head, d_model and context"
        )
    return ByteGPT(
        vocab_size=spec.num_classes,
        context=spec.context,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        d_model=spec.d_model,
        tie=spec.tie_weights,
    )


def _gpt_parameters(spec: ModelSpec) -> int:
    d, vocab = spec.d_model, spec.num_classes
    # Per block: two LayerNorms (4d), qkv (3d^2 + 3d), projection (d^2 + d), MLP (8d^2 + 5d).
    blocks = spec.n_layer * (12 * d * d + 13 * d)
    head = 0 if spec.tie_weights else vocab * d
    return vocab * d + spec.context * d + blocks + 2 * d + head


register_model("mlp", ZooEntry(_mlp, "classification", _mlp_parameters))
register_model("cnn", ZooEntry(_cnn, "classification", _cnn_parameters))
register_model("gpt", ZooEntry(_gpt, "language_modelling", _gpt_parameters))
