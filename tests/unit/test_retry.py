"""The next-attempt function, by tables: growth, jitter bounds, Retry-After, cap, deadline."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from writejobs.core.retry import next_attempt_at
from writejobs.providers.http_common import parse_retry_after

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FAR = NOW + timedelta(hours=48)


class Fixed(random.Random):
    """An rng whose uniform(a, b) returns the given fraction of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


@pytest.mark.parametrize(
    ("failures", "expected_ceiling_s"),
    [(1, 1), (2, 2), (3, 4), (4, 8), (6, 32), (9, 256), (10, 300), (50, 300)],
)
def test_backoff_ceiling_doubles_per_failure_up_to_the_cap(
    failures: int, expected_ceiling_s: float
) -> None:
    at = next_attempt_at(failures, NOW, FAR, None, Fixed(1.0))
    assert at == NOW + timedelta(seconds=expected_ceiling_s)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("failures", [1, 3, 8])
def test_full_jitter_stays_within_zero_and_the_ceiling(seed: int, failures: int) -> None:
    at = next_attempt_at(failures, NOW, FAR, None, random.Random(seed))
    assert at is not None
    assert NOW <= at <= NOW + timedelta(seconds=min(300, 2 ** (failures - 1)))


@pytest.mark.parametrize(
    ("header", "expected_s"),
    [
        ("2", 2.0),
        ("120", 120.0),
        ("Sun, 22 Nov 2026 12:00:30 GMT", 30.0),
        ("Sun, 22 Nov 2026 11:59:00 GMT", 0.0),  # a date in the past: no extra wait
    ],
)
def test_retry_after_in_either_form_is_never_undercut(header: str, expected_s: float) -> None:
    retry_after_s = parse_retry_after(header, now=NOW)
    assert retry_after_s == expected_s
    at = next_attempt_at(1, NOW, FAR, retry_after_s, Fixed(0.0))
    assert at == NOW + timedelta(seconds=expected_s)


def test_backoff_longer_than_retry_after_wins() -> None:
    at = next_attempt_at(9, NOW, FAR, 2.0, Fixed(1.0))
    assert at == NOW + timedelta(seconds=256)


@pytest.mark.parametrize(
    ("now", "retry_after_s", "expected"),
    [
        (FAR, None, None),  # at the deadline: no more attempts
        (FAR + timedelta(seconds=1), None, None),  # past it
        (FAR - timedelta(seconds=10), None, FAR),  # backoff would overshoot: last try at it
        (FAR - timedelta(seconds=10), 60.0, None),  # the provider asks to wait past it
        (FAR - timedelta(seconds=10), 5.0, FAR),  # a short Retry-After still allows it
    ],
)
def test_no_attempt_is_scheduled_past_the_deadline(
    now: datetime, retry_after_s: float | None, expected: datetime | None
) -> None:
    assert next_attempt_at(12, now, FAR, retry_after_s, Fixed(1.0)) == expected
