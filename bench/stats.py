"""Figures over several runs, their ratios to ceilings, and the one table.

Every figure is the median of its runs with their spread (min-max and IQR);
every ratio divides two medians taken in the same bench run. A target is
checked and printed as PASS or SHORT, never asserted.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = "n/a (feature missing)"


@dataclass(frozen=True, slots=True)
class Figure:
    """The runs of one measure, in one unit."""

    runs: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("a figure needs at least one run")

    @classmethod
    def of(cls, runs: Sequence[float]) -> Figure:
        return cls(tuple(float(r) for r in runs))

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def low(self) -> float:
        return min(self.runs)

    @property
    def high(self) -> float:
        return max(self.runs)

    @property
    def iqr(self) -> float:
        """Interquartile range; zero for fewer than two runs."""
        if len(self.runs) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.runs, n=4, method="inclusive")

        return q3 - q1


@dataclass(frozen=True, slots=True)
class Target:
    """``ratio`` must be at least (or, with ``at_most``, at most) ``bound``."""

    bound: float
    at_most: bool = False
    p99_ms_below: float | None = None

    def describe(self) -> str:
        text = f"{'<=' if self.at_most else '>='} {self.bound:g}x"
        if self.p99_ms_below is not None:
            text += f", p99 < {self.p99_ms_below:g} ms"

        return text


def ratio(value: Figure | None, ceiling: Figure | None) -> float | None:
    """Median over median; None when either side is missing or zero."""
    if value is None or ceiling is None or ceiling.median == 0:
        return None

    return value.median / ceiling.median


@dataclass(slots=True)
class Row:
    """One line of the table: a measure, and the ceiling it is held against."""

    measure: str
    unit: str
    value: Figure | None = None
    p99_ms: Figure | None = None
    ceiling_name: str | None = None
    ceiling: Figure | None = None
    target: Target | None = None
    note: str = ""
    invalid: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.ceiling)

    @property
    def verdict(self) -> str:
        """PASS, SHORT, INVALID (the answers were wrong), or empty."""
        if self.invalid:
            return "INVALID"
        r = self.ratio
        if self.target is None or r is None:
            return ""
        ok = r <= self.target.bound if self.target.at_most else r >= self.target.bound
        limit = self.target.p99_ms_below
        if limit is not None and self.p99_ms is not None:
            ok = ok and self.p99_ms.median < limit

        return "PASS" if ok else "SHORT"

    def as_json(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "unit": self.unit,
            "value": _figure_json(self.value),
            "p99_ms": _figure_json(self.p99_ms),
            "ceiling_name": self.ceiling_name,
            "ceiling": _figure_json(self.ceiling),
            "ratio": self.ratio,
            "target": None if self.target is None else self.target.describe(),
            "verdict": self.verdict or None,
            "note": self.note or None,
            **({"extra": self.extra} if self.extra else {}),
        }


def missing(measure: str, unit: str, ceiling_name: str | None = None) -> Row:
    """A row for a measure whose feature the live service does not have."""
    return Row(measure, unit, ceiling_name=ceiling_name, note=MISSING)


def _figure_json(figure: Figure | None) -> dict[str, Any] | None:
    if figure is None:
        return None

    return {
        "median": figure.median,
        "min": figure.low,
        "max": figure.high,
        "iqr": figure.iqr,
        "runs": list(figure.runs),
    }


def number(value: float) -> str:
    """Three significant figures at most, thousands grouped."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"

    return f"{value:.3g}"


_HEADER = (
    "measure",
    "unit",
    "median",
    "spread (min-max)",
    "p99 ms",
    "ceiling",
    "ceiling median",
    "ratio",
    "target",
    "verdict",
    "note",
)


def cells(row: Row) -> tuple[str, ...]:
    def spread(figure: Figure | None) -> str:
        if figure is None:
            return ""
        return f"{number(figure.low)}-{number(figure.high)}"

    value = number(row.value.median) if row.value else row.note
    r = row.ratio
    return (
        row.measure,
        row.unit,
        value,
        spread(row.value),
        number(row.p99_ms.median) if row.p99_ms else "",
        row.ceiling_name or "",
        number(row.ceiling.median) if row.ceiling else "",
        "" if r is None else f"{r:.2f}x",
        row.target.describe() if row.target else "",
        row.verdict,
        row.note if row.value else "",
    )


def markdown_table(rows: Sequence[Row]) -> str:
    """The table as GitHub Markdown, the form pasted into the README."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells(row)) + " |")

    return "\n".join(lines) + "\n"


def write_json(path: Path, rows: Sequence[Row], context: dict[str, Any]) -> None:
    """Write the table and what it was measured on; the folder is made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"context": context, "rows": [row.as_json() for row in rows]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
