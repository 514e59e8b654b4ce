"""KEYSVC_* variables parse into Settings; a bad one names itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from keysvc.errors import ConfigError
from keysvc.periods import format_period, parse_period
from keysvc.sealing import format_kek, new_kek
from keysvc.settings import Settings

TOKEN = "ksad_" + "x" * 40


def test_defaults_are_the_designs():
    settings = Settings.from_env({})

    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.embedded
    assert settings.data_dir == Path(".keysvc")
    assert settings.scheduler_interval_seconds == 30
    assert settings.remote_allow == ()
    assert settings.remote_allow_http is False


def test_values_are_parsed_into_types():
    kek = new_kek("k1")
    settings = Settings.from_env(
        {
            "KEYSVC_PORT": "9000",
            "KEYSVC_DATABASE_URL": "postgresql://u:pw@db/keysvc",
            "KEYSVC_ADMIN_TOKEN": TOKEN,
            "KEYSVC_KEKS": format_kek(kek),
            "KEYSVC_SCHEDULER": "0",
            "KEYSVC_SCHEDULER_INTERVAL": "2.5",
            "KEYSVC_REMOTE_ALLOW": "127.0.0.2/32, keys.example",
            "KEYSVC_REMOTE_ALLOW_HTTP": "1",
            "KEYSVC_ROTATION_PERIOD": "12h",
        }
    )

    assert settings.port == 9000
    assert settings.keks == (kek,)
    assert settings.scheduler is False
    assert settings.scheduler_interval_seconds == 2.5
    assert settings.remote_allow == ("127.0.0.2/32", "keys.example")
    assert settings.remote_allow_http is True
    assert settings.default_rotation_period_seconds == 43200


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KEYSVC_PORT", "http"),
        ("KEYSVC_PORT", "70000"),
        ("KEYSVC_SCHEDULER_INTERVAL", "-1"),
        ("KEYSVC_SCHEDULER", "maybe"),
        ("KEYSVC_KEKS", "nocolon"),
        ("KEYSVC_KEKS", "k1:c2hvcnQ"),
        ("KEYSVC_ADMIN_TOKEN", "short"),
        ("KEYSVC_REMOTE_ALLOW", "10.0.0.0/33"),
        ("KEYSVC_ROTATION_PERIOD", "soon"),
        ("KEYSVC_LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_stops_the_start_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})

    assert caught.value.detail.startswith(name)


def test_kek_errors_never_quote_the_key():
    secret = "A" * 40
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"KEYSVC_KEKS": f"k1:{secret}"})

    assert secret not in caught.value.detail


@pytest.mark.parametrize(
    "missing",
    [("KEYSVC_ADMIN_TOKEN",), ("KEYSVC_KEKS",), ("KEYSVC_ADMIN_TOKEN", "KEYSVC_KEKS")],
)
def test_production_refuses_to_start_on_generated_secrets(missing):
    env = {
        "KEYSVC_DATABASE_URL": "postgresql://db/keysvc",
        "KEYSVC_ADMIN_TOKEN": TOKEN,
        "KEYSVC_KEKS": format_kek(new_kek("k1")),
    }
    for name in missing:
        del env[name]

    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    for name in missing:
        assert name in caught.value.detail


def test_repr_shows_no_secret():
    kek = new_kek("k1")
    settings = Settings.from_env(
        {
            "KEYSVC_DATABASE_URL": "postgresql://u:hunter2hunter2@db/keysvc",
            "KEYSVC_ADMIN_TOKEN": TOKEN,
            "KEYSVC_KEKS": format_kek(kek),
        }
    )

    text = repr(settings)

    assert "hunter2" not in text
    assert TOKEN not in text
    assert format_kek(kek).split(":")[1] not in text


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(90, 90), ("90", 90), ("45s", 45), ("15m", 900), ("12h", 43200), ("30d", 2592000),
     ("2w", 1209600), (" 1d ", 86400)],
)  # fmt: skip
def test_periods_accept_seconds_and_units(given, seconds):
    assert parse_period(given) == seconds


def test_a_whole_float_period_is_its_integer():
    # JSON Schema holds 90.0 an integer, so the API's schemas let it through.
    assert parse_period(90.0) == 90


@pytest.mark.parametrize("given", ["", "1y", "-5", "1.5h", True, None, 3.5, "9" * 20])
def test_bad_periods_are_refused(given):
    with pytest.raises(ValueError):
        parse_period(given)


def test_format_period_uses_the_largest_exact_unit():
    assert [format_period(s) for s in (86400, 5400, 61, 0)] == [
        "1d",
        "90m",
        "61s",
        "0s",
    ]
