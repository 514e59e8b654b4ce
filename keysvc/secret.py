"""A string that keeps out of logs, reprs and error messages."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit, urlunsplit


class Secret:
    """Wraps a sensitive string; ``str()`` and ``repr()`` never show it.

    Read the value with :meth:`reveal`, at the one place that needs it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the value into places we do not control.
        raise TypeError("a Secret cannot be pickled")


def mask_dsn(dsn: str) -> str:
    """Return a PostgreSQL DSN with its password replaced, for logs."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"

    if parts.password is None:
        return dsn

    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""

    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
