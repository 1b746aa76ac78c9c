"""The flow-control values: an installation's rate limit column, read and written."""

from __future__ import annotations

from typing import Any

import pytest

from writejobs.core.flow import RateLimit, RateLimitObservation


def test_a_rate_limit_column_reads_back_as_the_limit_it_was_written_from() -> None:
    limit = RateLimit(190, 10.0)

    assert limit.to_column() == {"max": 190, "interval_ms": 10000}
    assert RateLimit.from_column(limit.to_column()) == limit
    assert RateLimit.from_column(None) is None


@pytest.mark.parametrize(
    "value",
    [{"max": 5}, {"interval_ms": 10}, {"max": 0, "interval_ms": 10}, {"max": 1, "interval_ms": 0}],
)
def test_a_rate_limit_column_that_is_no_limit_is_refused(value: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimit.from_column(value)


def test_only_an_answer_that_names_a_policy_is_a_refusal() -> None:
    assert not RateLimitObservation(max=100, remaining=0, interval_s=10.0).refused
    assert RateLimitObservation(policy="daily").refused
