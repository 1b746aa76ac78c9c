"""The console's pure pieces: charts, filters, ages, where a login may send you, sessions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api_shim.console.auth import ConsoleAuth, parse_operators
from api_shim.console.charts import HEIGHT, bar_chart
from api_shim.console.filters import BadFilter, age, read_query
from api_shim.console.routes import _safe_next
from writejobs.settings import Settings

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_a_chart_scales_bars_to_the_peak_and_leaves_unknown_minutes_empty() -> None:
    chart = bar_chart("Writes", "writes", [None, 0, 5, 10], counter=True)
    assert [b.height for b in chart.bars] == [1.0, (HEIGHT - 2) / 2, HEIGHT - 2]
    assert chart.total == 15 and chart.peak == 10 and chart.latest == 10
    assert chart.bars[-1].label == "this minute: 10 writes"
    assert chart.known_minutes == 3


def test_a_chart_with_no_figures_draws_nothing() -> None:
    chart = bar_chart("Queue", "tasks", [None] * 60, counter=False)
    assert chart.bars == [] and chart.latest is None and chart.total is None


@pytest.mark.parametrize(
    ("then", "said"),
    [
        (NOW - timedelta(seconds=42), "42 s"),
        (NOW - timedelta(minutes=3, seconds=59), "3 min"),
        (NOW - timedelta(hours=5), "5 h"),
        (NOW - timedelta(days=2, hours=23), "2 d"),
        (NOW + timedelta(seconds=3), "0 s"),
    ],
)
def test_ages_are_told_in_their_largest_whole_unit(then: datetime, said: str) -> None:
    assert age(then, NOW) == said


def test_a_public_status_filters_on_its_states_and_a_window_sets_since() -> None:
    query = read_query("failure", " contacts ", "", "", "1h", None)
    flt = query.store_filter(NOW)
    assert flt.states == ("failed", "expired", "cancelled")
    assert flt.object_name == "contacts"
    assert flt.since == NOW - timedelta(hours=1)
    assert query.params() == {"status": "failure", "object": "contacts", "window": "1h"}


def test_a_time_without_a_zone_is_utc_and_since_must_come_before_until() -> None:
    flt = read_query("", "", "2026-11-24T09:30", "2026-11-24T10:30:00+01:00", "", None)
    with pytest.raises(BadFilter, match="since must be before until"):
        flt.store_filter(NOW)
    later = read_query("", "", "2026-11-24T09:30", "2026-11-24T11:30:00+01:00", "", None)
    window = later.store_filter(NOW)
    assert window.since == datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    assert window.until == datetime(2026, 11, 24, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/console/installations/abc?status=failure", "/console/installations/abc?status=failure"),
        ("https://evil.example/console", "/console"),
        ("//evil.example", "/console"),
        ("/console\\@evil.example", "/console"),
        ("/docs", "/console"),
        ("", "/console"),
    ],
)
def test_a_login_only_ever_sends_you_to_a_console_page(target: str, safe: str) -> None:
    assert _safe_next(target) == safe


def test_operators_are_user_password_pairs() -> None:
    assert parse_operators("a:b, c:d:e,bad,:x,y:") == {"a": "b", "c": "d:e"}
    assert parse_operators(None) == {}


def test_an_operator_session_ends_when_the_password_changes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, console_operators="ops:one", console_secret="s" * 32)
    token = ConsoleAuth(settings).operator_session("ops")
    assert ConsoleAuth(settings).read(token) is not None
    changed = settings.model_copy(update={"console_operators": "ops:two"})
    assert ConsoleAuth(changed).read(token) is None
    removed = settings.model_copy(update={"console_operators": None})
    assert ConsoleAuth(removed).read(token) is None


def test_a_session_signed_with_another_secret_or_expired_is_no_session(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, console_secret="a" * 32)
    token = ConsoleAuth(settings).key_session("key-id")
    assert ConsoleAuth(settings).read(token) == {"k": "key-id"}
    other = settings.model_copy(update={"console_secret": "b" * 32})
    assert ConsoleAuth(other).read(token) is None
    expired = settings.model_copy(update={"console_session_ttl_s": 0.001})
    time.sleep(1.1)
    assert ConsoleAuth(expired).read(token) is None


def test_the_signing_key_is_derived_from_the_credentials_key_when_unset(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    token = ConsoleAuth(settings).key_session("key-id")
    # another process of the same deployment (same data dir) reads it
    assert ConsoleAuth(Settings(data_dir=tmp_path)).read(token) == {"k": "key-id"}
    assert (tmp_path / "secret.key").exists()
    assert ConsoleAuth(Settings(data_dir=tmp_path / "elsewhere")).read(token) is None


def test_an_operator_login_needs_the_right_password() -> None:
    auth = ConsoleAuth(Settings(console_operators="ops:one,ann:two", console_secret="x" * 32))
    assert auth.operator_login("ops", "one") and auth.operator_login("ann", "two")
    assert not auth.operator_login("ops", "two")
    assert not auth.operator_login("nobody", "one")
    assert not auth.operator_login("ops", "")
