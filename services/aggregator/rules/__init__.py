"""Aggregation rules: how the aggregator combines one round's contributions (pure, no gRPC).

Modules:
    base: the ``AggregationRule`` protocol, ``Update``, and the validation and tensor plumbing
        the rules share.
    mean: the weighted mean (FedAvg) and ``RunningMean``, which folds contributions as they
        stream in.
    median: the coordinate-wise median (Yin et al. 2018).
    trimmed_mean: the coordinate-wise trimmed mean (Yin et al. 2018).
    krum: Krum and Multi-Krum (Blanchard et al. 2017).
    centered_clip: centred clipping with momentum (Karimireddy, He & Jaggi 2021).

A job spec names its rule and options as data; ``get_rule("krum", f=2, m=3)`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.aggregator.rules.base import AggregationRule, Update
from services.aggregator.rules.centered_clip import CenteredClip
from services.aggregator.rules.krum import Krum
from services.aggregator.rules.mean import Mean, RunningMean
from services.aggregator.rules.median import Median
from services.aggregator.rules.trimmed_mean import TrimmedMean
from tessera.common.errors import InvalidSpec
from tessera.common.factories import check_options

__all__ = [
    "RULES",
    "AggregationRule",
    "CenteredClip",
    "Krum",
    "Mean",
    "Median",
    "RunningMean",
    "TrimmedMean",
    "Update",
    "get_rule",
    "register_rule",
]

RULES: dict[str, Callable[..., AggregationRule]] = {}


def register_rule(rule: type[AggregationRule]) -> type[AggregationRule]:
    """Add a rule class to ``RULES`` under its ``name``.

    Raises:
        ValueError: if the name is already taken.
    """
    if rule.name in RULES:
        raise ValueError(f"an aggregation rule named {rule.name!r} is already registered")
    RULES[rule.name] = rule
    return rule


for _rule in (Mean, Median, TrimmedMean, Krum, CenteredClip):
    register_rule(_rule)


def get_rule(name: str, **options: Any) -> AggregationRule:
    """Return a new rule of the given name, built with the given options.

    Raises:
        InvalidSpec: if no rule has this name, it does not take these options, or an option's
            value breaks the rule's constraints.
    """
    try:
        factory = RULES[name]
    except KeyError:
        raise InvalidSpec(
            f"unknown aggregation rule {name!r}; valid rules: {', '.join(sorted(RULES))}"
        ) from None
    try:
        check_options(factory, options)
    except TypeError as exc:
        raise InvalidSpec(
            f"aggregation rule {name!r} does not take options {options}: {exc}"
        ) from None
    return factory(**options)
