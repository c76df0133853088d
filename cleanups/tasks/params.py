"""Parameter validation helpers, for the built-in tasks and for yours."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

Params = dict[str, Any]


def reject_unknown(params: Params, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValidationError(
            "Unknown parameter(s): %(unknown)s. Allowed: %(allowed)s.",
            params={"unknown": ", ".join(unknown), "allowed": ", ".join(sorted(allowed)) or "none"},
        )


def number_param(
    params: Params, key: str, default: float | None, minimum: float, maximum: float
) -> float | None:
    """A number within [minimum, maximum]; ``default`` (which may be None) when absent."""
    if key not in params or params[key] is None:
        return default
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("%(key)s must be a number.", params={"key": key})
    if not minimum <= value <= maximum:
        raise ValidationError(
            "%(key)s must be between %(min)s and %(max)s.",
            params={"key": key, "min": minimum, "max": maximum},
        )
    return value


def positive_days(params: Params, key: str, default: float | None) -> float | None:
    value = number_param(params, key, default, float("-inf"), 36_500)
    if value is not None and value <= 0:
        raise ValidationError("%(key)s must be more than 0.", params={"key": key})
    return value


def int_param(params: Params, key: str, default: int, minimum: int, maximum: int) -> int:
    value = number_param(params, key, default, minimum, maximum)
    assert value is not None
    if value != int(value):
        raise ValidationError("%(key)s must be a whole number.", params={"key": key})
    return int(value)


def bool_param(params: Params, key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError("%(key)s must be true or false.", params={"key": key})
    return value
