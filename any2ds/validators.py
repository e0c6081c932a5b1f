"""Validators for option fields: ``option(256, "...", at_least(1))``.

A failing value raises ValueError naming the option as users spell it (its flat
flag name where it has one); the run turns it into a one-line ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

Validator = Callable[[Any, attrs.Attribute, Any], None]


def option_name(attribute: attrs.Attribute) -> str:
    """How users spell an option: its flat flag name, or its field name."""
    return attribute.metadata.get("flat") or attribute.name


def at_least(minimum: float) -> Validator:
    """The value must be ``minimum`` or more."""
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not value >= minimum:
            bound = "0 or more" if minimum == 0 else f"at least {minimum}"
            raise ValueError(f"{option_name(attribute)} must be {bound}, got {value!r}")

    return check


def greater_than(minimum: float) -> Validator:
    """The value must be more than ``minimum``."""
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not value > minimum:
            raise ValueError(f"{option_name(attribute)} must be greater than {minimum}, got {value!r}")

    return check


def between(lowest: float, highest: float) -> Validator:
    """The value must be from ``lowest`` to ``highest``, both included."""
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not lowest <= value <= highest:
            raise ValueError(f"{option_name(attribute)} must be between {lowest} and {highest}, got {value!r}")

    return check


def one_of(choices: Sequence[Any]) -> Validator:
    """The value must be one of ``choices``."""
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{option_name(attribute)} must be one of {', '.join(map(str, choices))}; "
                             f"got {value!r}")

    return check
