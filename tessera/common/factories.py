"""Checking keyword options against a registered factory (codec, rule, policy) before use."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any


@functools.cache
def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    # inspect.signature parses text signatures each time: cached, since the registries'
    # factories are built once per task or round on the hot path.
    return inspect.signature(factory)


def check_options(factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Check that ``factory`` takes ``options`` as keyword arguments.

    Raises:
        TypeError: an option it does not take, or a required one missing.
    """
    _signature(factory).bind(**options)
