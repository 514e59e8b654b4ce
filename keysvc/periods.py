"""Durations as operators write them: ``90``, ``45s``, ``15m``, ``12h``, ``30d``."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PERIOD = re.compile(r"(\d{1,10})([smhdw]?)")

# A hundred years: beyond this a period is a typo, and it would overflow timestamps.
MAX_PERIOD_SECONDS = 100 * 365 * 86400


def parse_period(value: object) -> int:
    """Return a duration in whole seconds, or raise ``ValueError``.

    Integers (and floats without a fraction) are seconds; strings are digits
    with an optional unit suffix.
    """
    if isinstance(value, bool):
        raise ValueError("a period is a number of seconds or a string like '30d'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float) and value.is_integer():
        # JSON has one number type: 90.0 is the integer 90 to a JSON Schema.
        seconds = int(value)
    elif isinstance(value, str):
        match = _PERIOD.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"{value!r} is not a period like 90, '15m', '12h' or '30d'"
            )
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError("a period is a number of seconds or a string like '30d'")

    if not 0 <= seconds <= MAX_PERIOD_SECONDS:
        raise ValueError(
            f"a period must lie between 0 and {MAX_PERIOD_SECONDS} seconds"
        )

    return seconds


def format_period(seconds: int) -> str:
    """Render seconds in the largest unit that divides them exactly."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"

    return f"{seconds}s"
