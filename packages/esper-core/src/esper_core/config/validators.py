"""Validators for the numeric keys of configuration sections: one implementation, messages that name the key.

Use them as attrs validators in a section class (core's and every plugin's)::

    @section("acme")
    @attrs.frozen
    class AcmeOptions:
        window: int = attrs.field(default=3, validator=at_least(1))
        rate: float = attrs.field(default=0.1, validator=positive)
        timeout_s: float | None = attrs.field(default=None, validator=attrs.validators.optional(positive))

The loader turns the ``ValueError`` into a :class:`~esper_core.errors.ConfigError` that names the key, the value
and where it came from (file, environment or ``--set``). NaN is refused by every check: each is written so that a
comparison with NaN, which is always false, fails it.

A check that compares two keys belongs in ``__attrs_post_init__``; write each key by its field name in the message
(``f"high ({self.high}) must be at least low ({self.low})"``) and the loader adds where each named key came from,
so the user sees which of the two they set and which is a default.
"""

from __future__ import annotations

from typing import Any

import attrs

Validator = Any  # attrs' validator type is private; these are plain callables (instance, attribute, value)


def positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """More than zero."""
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def not_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Zero or more."""
    if not value >= 0:
        raise ValueError(f"{attribute.name} cannot be negative, got {value}")


def fraction(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Between 0 and 1, both included."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value}")


def open_fraction(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """Strictly between 0 and 1 (a share of something that must leave some of it on each side)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{attribute.name} must lie strictly between 0 and 1, got {value}")


def at_least(minimum: float) -> Validator:
    """``minimum`` or more (counts: ``at_least(1)``)."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if not value >= minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value}")

    return check


def at_most(maximum: float) -> Validator:
    """``maximum`` or less (a bound set by a wire format, for example: ``at_most(2**32 - 1)`` for a uint32)."""

    def check(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
        if not value <= maximum:
            raise ValueError(f"{attribute.name} must be at most {maximum}, got {value}")

    return check
