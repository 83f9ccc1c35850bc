from __future__ import annotations

import math

import pytest
import torch

from tessera.common.errors import InvalidSpec
from tessera.ml.datasets import load_data, load_dataset
from tessera.ml.objectives import (
    Classification,
    LanguageModelling,
    Metrics,
    macro_f1,
    objective_for,
)
from tessera.ml.text import TextCorpus
from tessera.ml.training import evaluate
from tessera.ml.zoo import ModelSpec, build_model, spec_for_data


def _corpus(text: bytes, held_out: bytes) -> TextCorpus:
    return TextCorpus(
        name="toy",
        train=torch.tensor(list(text), dtype=torch.uint8),
        test=torch.tensor(list(held_out), dtype=torch.uint8),
        fingerprint="",
    )


def test_macro_f1_known_answer() -> None:
    # Class 0: TP 2, FP 1, FN 0 -> 4/5. Class 1: TP 1, FP 0, FN 1 -> 2/3.
    # Class 2: TP 0, FP 1, FN 1 -> 0. Class 3 never occurs and does not count.
    targets = torch.tensor([0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 2, 0])
    assert macro_f1(predictions, targets) == pytest.approx((4 / 5 + 2 / 3 + 0) / 3)
    assert macro_f1(targets, targets) == 1.0


def test_macro_f1_agrees_with_scikit_learn() -> None:
    from sklearn.metrics import f1_score

    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 7, (500,), generator=generator)
    predictions = torch.where(
        torch.rand(500, generator=generator) < 0.6,
        targets,
        torch.randint(0, 9, (500,), generator=generator),
    )
    expected = f1_score(targets.numpy(), predictions.numpy(), average="macro")
    assert macro_f1(predictions, targets) == pytest.approx(expected, abs=1e-6)


def test_macro_f1_rejects_empty_or_unequal_inputs() -> None:
    with pytest.raises(InvalidSpec, match="got 0 and 0"):
        macro_f1(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    with pytest.raises(InvalidSpec, match="got 2 and 1"):
        macro_f1(torch.tensor([0, 1]), torch.tensor([0]))


def test_metrics_as_dict_keeps_what_applies() -> None:
    assert Metrics(loss=1.0, perplexity=math.e).as_dict() == {"loss": 1.0, "perplexity": math.e}


def test_objective_follows_the_kind_of_data() -> None:
    digits, text = load_dataset("digits"), load_data("stdlib")
    assert isinstance(objective_for(digits), Classification)
    objective = objective_for(text, ModelSpec(8, 256, context=8))
    assert isinstance(objective, LanguageModelling) and objective.context == 8
    with pytest.raises(InvalidSpec, match="has 5 training bytes; a window of context 8 needs 9"):
        objective_for(_corpus(b"hello", b"0123456789"), ModelSpec(8, 256, context=8))


def test_language_modelling_batches_predict_the_next_byte() -> None:
    objective = LanguageModelling(_corpus(b"abcdefghijklmnop", b"0123456789"), context=4)
    inputs, targets = objective.batch(torch.tensor([0, 10]))
    assert inputs.tolist() == [list(b"abcd"), list(b"klmn")]
    assert targets.tolist() == [list(b"bcde"), list(b"lmno")]
    assert inputs.dtype == targets.dtype == torch.int64


def test_language_modelling_evaluates_a_fixed_sample_of_held_out_windows() -> None:
    # Prepare: a model that always predicts byte "1" with certainty.
    class Constant(torch.nn.Module):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            logits = torch.full((*tokens.shape, 256), -1e4)
            logits[..., ord("1")] = 0.0
            return logits

    objective = LanguageModelling(_corpus(b"a" * 20, b"1111101111"), context=4, eval_windows=3)
    # Execute
    metrics = objective.evaluate(Constant())
    # Assert: windows start at 0, 2 and 5; of their 12 targets one, byte 5, is not "1".
    assert metrics.accuracy == pytest.approx(11 / 12)
    assert metrics.loss == pytest.approx(1e4 / 12, rel=1e-3)
    assert metrics.perplexity == math.inf and metrics.macro_f1 is None


def test_classification_metrics_match_the_legacy_evaluate() -> None:
    data = load_dataset("digits")
    model = build_model("cnn", spec_for_data(data))
    metrics = objective_for(data).evaluate(model)
    legacy = evaluate(model, data.test_x, data.test_y)
    assert metrics.loss == pytest.approx(legacy.loss, rel=1e-5)
    assert metrics.accuracy == pytest.approx(legacy.accuracy)
    assert metrics.macro_f1 is not None and 0.0 <= metrics.macro_f1 <= 1.0
    assert metrics.perplexity is None


def test_perplexity_is_exp_loss_and_an_untrained_model_is_near_uniform() -> None:
    text = load_data("stdlib")
    spec = spec_for_data(text)
    metrics = objective_for(text, spec).evaluate(build_model("gpt", spec))
    assert metrics.perplexity == pytest.approx(math.exp(metrics.loss))
    # Small initial weights give nearly uniform predictions over 256 bytes.
    assert abs(metrics.loss - math.log(256)) < 0.2
