"""Coercion of bundle/CLI values. MONAI's bundle CLI passes ``--resume false`` as the *string*
``"false"``, which Python treats as true; every boolean a config feeds into medunet goes through
:func:`as_bool`, so ``false``, ``False``, ``0`` and ``no`` all mean False and a typo is an error."""

from __future__ import annotations

from medunet.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "none", ""}


def as_bool(value: object, name: str) -> bool:
    """``value`` as a bool: bools and ints as usual, strings by their word; anything else is an error."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(None, f"{name} must be true or false, got {value!r}")
