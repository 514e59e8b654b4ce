"""The bench's own arithmetic: medians, spreads, ratios, verdicts, the JSON file.

No server is started here; ``make bench`` runs the measures themselves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# bench/ sits beside the package at the top of the repository, uninstalled.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import parse_wrk, percentile
from bench.stats import (
    MISSING,
    Figure,
    Row,
    Target,
    markdown_table,
    missing,
    ratio,
    write_json,
)


def test_a_figure_is_the_median_of_its_runs_with_min_max_and_iqr():
    figure = Figure.of([5, 1, 4, 2, 3])

    assert figure.median == 3
    assert (figure.low, figure.high) == (1, 5)
    assert figure.iqr == 2
    assert Figure.of([2, 4]).median == 3


def test_a_figure_without_runs_is_refused():
    with pytest.raises(ValueError):
        Figure.of([])


def test_a_ratio_divides_medians_and_is_none_without_both_sides():
    assert ratio(Figure.of([9, 10, 11]), Figure.of([19, 20, 21])) == 0.5
    assert ratio(None, Figure.of([1.0])) is None
    assert ratio(Figure.of([1.0]), Figure.of([0.0])) is None


def test_a_speed_target_passes_at_its_bound_and_falls_short_below_it():
    ceiling = Figure.of([100, 100, 100])
    goal = Target(0.9)

    assert (
        Row("a", "req/s", Figure.of([90, 90, 90]), ceiling=ceiling, target=goal).verdict
        == "PASS"
    )
    assert (
        Row("b", "req/s", Figure.of([89, 89, 89]), ceiling=ceiling, target=goal).verdict
        == "SHORT"
    )


def test_a_latency_bound_can_make_a_fast_enough_row_short():
    row = Row(
        "jwks",
        "req/s",
        Figure.of([95, 95, 95]),
        p99_ms=Figure.of([12, 12, 12]),
        ceiling=Figure.of([100, 100, 100]),
        target=Target(0.9, p99_ms_below=10),
    )

    assert row.verdict == "SHORT"


def test_an_at_most_target_passes_below_its_bound():
    row = Row(
        "memory", "MiB", Figure.of([25.0]), ceiling=Figure.of([10.0]),
        target=Target(3.0, at_most=True),
    )  # fmt: skip

    assert row.verdict == "PASS"
    row.value = Figure.of([31.0])
    assert row.verdict == "SHORT"


def test_a_missing_feature_prints_as_such_and_has_no_verdict():
    row = missing("POST /verify ES256", "req/s", "raw")
    table = markdown_table([row])

    assert row.verdict == ""
    assert MISSING in table
    assert table.splitlines()[1].count("---") == 11


def test_a_row_whose_answers_were_wrong_is_invalid_whatever_its_ratio():
    row = Row(
        "signing", "req/s", Figure.of([100.0]), ceiling=Figure.of([10.0]),
        target=Target(0.8), note="990 of 1000 answers not as expected", invalid=True,
    )  # fmt: skip

    assert row.verdict == "INVALID"
    assert "990 of 1000" in markdown_table([row])


def test_the_json_file_holds_every_run_the_ratio_and_the_verdict(tmp_path):
    rows = [
        Row("keysvc", "req/s", Figure.of([8, 10, 9]), p99_ms=Figure.of([2.0, 3.0, 2.5]),
            ceiling_name="bare", ceiling=Figure.of([10, 10, 10]), target=Target(0.9)),
        missing("later", "req/s"),
    ]  # fmt: skip
    path = tmp_path / "results" / "latest.json"

    write_json(path, rows, {"machine": {"cores": 2}})

    document = json.loads(path.read_text())
    first, second = document["rows"]
    assert document["context"] == {"machine": {"cores": 2}}
    assert first["value"]["runs"] == [8, 10, 9]
    assert first["value"]["median"] == 9
    assert (first["value"]["min"], first["value"]["max"]) == (8, 10)
    assert first["ratio"] == pytest.approx(0.9)
    assert first["verdict"] == "PASS"
    assert first["p99_ms"]["median"] == 2.5
    assert second["note"] == MISSING and second["value"] is None


def test_wrk_reports_are_read_in_milliseconds_whatever_their_unit():
    report = """Running 3s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Latency Distribution
     50%  820.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.31ms
  24000 requests in 3.00s, 30.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   8000.12
bench-bad 2 of 24000
"""
    result = parse_wrk(report)

    assert result.requests_per_second == 8000.12
    assert result.p50_ms == pytest.approx(0.82)
    assert result.p99_ms == pytest.approx(2.31)
    assert (result.requests, result.errors, result.bad) == (24000, 3, 2)


def test_percentile_takes_the_nearest_rank():
    values = list(range(1, 101))

    assert percentile(values, 99) == 99
    assert percentile(values, 50) == 50
    assert percentile([7.0], 99) == 7.0
