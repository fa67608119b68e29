"""RetryPolicy: budgets per cause, Retry-After, jitter, the short mode, give-up reasons."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from bff.connectors.retry import Cause, RetryPolicy, parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW_TS = NOW.timestamp()


def run_until_give_up(policy: RetryPolicy, cause: Cause, retry_after: str | None = None):
    """Drive decide() like the engine does; return (delays, final decision)."""
    delays: list[float] = []
    waited = 0.0
    attempt = 0
    while True:
        d = policy.decide(cause, attempt, waited, retry_after, now=NOW_TS)
        if not d.retry:
            return delays, d
        assert d.delay >= 0
        delays.append(d.delay)
        waited += d.delay
        attempt += 1
        assert attempt < 100, "policy never gives up"


# ----------------------------------------------------------------- Retry-After parsing


def test_retry_after_delta_seconds():
    assert parse_retry_after("120", NOW_TS) == 120.0
    assert parse_retry_after(" 0 ", NOW_TS) == 0.0
    assert parse_retry_after("1.5", NOW_TS) == 1.5


def test_retry_after_http_date_uses_the_given_now():
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert header.endswith("GMT")
    assert parse_retry_after(header, NOW_TS) == pytest.approx(90.0)
    assert parse_retry_after(header, NOW) == pytest.approx(90.0)  # datetime form of now
    # the RFC 9110 example format
    assert parse_retry_after("Sun, 01 Mar 2026 12:05:00 GMT", NOW_TS) == pytest.approx(300.0)


def test_retry_after_in_the_past_is_zero_and_garbage_is_none():
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", NOW_TS) == 0.0
    assert parse_retry_after("-5", NOW_TS) == 0.0
    assert parse_retry_after("soon", NOW_TS) is None
    assert parse_retry_after("", NOW_TS) is None
    assert parse_retry_after(None, NOW_TS) is None
    assert parse_retry_after("nan", NOW_TS) is None


def test_decide_honours_retry_after_seconds_and_date():
    policy = RetryPolicy.default(rng=random.Random(1))
    d = policy.decide(Cause.RATE_LIMITED, 0, 0.0, "7", now=NOW_TS)
    assert d.retry and d.delay == 7.0
    assert "asked to wait 7 s" in d.reason
    date = format_datetime(NOW + timedelta(seconds=42), usegmt=True)
    d = policy.decide(Cause.RATE_LIMITED, 3, 100.0, date, now=NOW_TS)
    assert d.retry and d.delay == pytest.approx(42.0)
    assert d.reason.startswith("HTTP 429 (rate limited): retry 4 of 8")


def test_retry_after_is_honoured_exactly_or_not_at_all():
    policy = RetryPolicy.default()
    # Asking again sooner than the provider said is certain to be refused: wait exactly what it asked.
    d = policy.decide(Cause.RATE_LIMITED, 0, 0.0, "1200", now=NOW_TS)
    assert d.retry and d.delay == 1200.0
    # 30 min budget, 1,790 s already waited, asked for an hour: give up at once, and say why.
    d = policy.decide(Cause.RATE_LIMITED, 2, 1790.0, "3600", now=NOW_TS)
    assert not d.retry and d.delay == 0.0
    assert d.reason == (
        "gave up after 2 retries on HTTP 429 (rate limited): the provider asked to wait 60 min, "
        "more than the 10 s left of the 30 min retry budget"
    )
    delays, final = run_until_give_up(policy, Cause.RATE_LIMITED, retry_after="3600")
    assert delays == []
    assert "asked to wait 60 min" in final.reason


# ----------------------------------------------------------------- budgets


@pytest.mark.parametrize(
    ("cause", "count", "total"),
    [
        (Cause.RATE_LIMITED, 8, 1800.0),
        (Cause.TIMEOUT, 5, 50.0),
        (Cause.CONNECTION, 2, 60.0),
        (Cause.SERVER_ERROR, 2, 30.0),
    ],
)
def test_default_budgets_count_and_total_wait(cause, count, total):
    for seed in range(25):
        policy = RetryPolicy.default(rng=random.Random(seed))
        delays, final = run_until_give_up(policy, cause)
        assert len(delays) <= count
        assert sum(delays) <= total + 1e-9
        assert not final.retry and final.delay == 0.0


def test_give_up_reason_for_rate_limits_is_a_sentence():
    policy = RetryPolicy.default(rng=random.Random(3))
    d = policy.decide(Cause.RATE_LIMITED, 8, 100.0, None, now=NOW_TS)
    assert not d.retry
    assert d.reason == "gave up after 8 retries on HTTP 429 (rate limited) within 30 min"


def test_give_up_reasons_for_other_causes():
    policy = RetryPolicy.default()
    assert policy.decide(Cause.TIMEOUT, 5, 10.0).reason == (
        "gave up after 5 retries on timeouts (no answer within 120 s) within 50 s"
    )
    assert policy.decide(Cause.CONNECTION, 2, 1.0).reason == "gave up after 2 retries on connection errors within 60 s"
    assert (
        policy.decide("server_error", 2, 1.0).reason
        == "gave up after 2 retries on server errors (HTTP 5xx) within 30 s"
    )


def test_total_wait_budget_stops_before_the_count():
    policy = RetryPolicy.default()
    d = policy.decide(Cause.TIMEOUT, 3, 50.0)
    assert not d.retry
    assert d.reason == "gave up after 3 retries on timeouts (no answer within 120 s): the 50 s retry budget is used up"


# ----------------------------------------------------------------- jitter


def test_full_jitter_is_bounded_by_the_exponential_ceiling():
    policy = RetryPolicy.default(rng=random.Random(42))
    budget = policy.budget(Cause.RATE_LIMITED)
    for attempt in range(8):
        ceiling = min(budget.max_delay, budget.base_delay * 2**attempt)
        samples = [policy.decide(Cause.RATE_LIMITED, attempt, 0.0).delay for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # actually spread over the range
        assert min(samples) < ceiling * 0.2


def test_jitter_is_deterministic_with_an_injected_rng():
    a = [RetryPolicy.default(rng=random.Random(7)).decide(Cause.TIMEOUT, 2, 0.0).delay for _ in range(3)]
    b = [RetryPolicy.default(rng=random.Random(7)).decide(Cause.TIMEOUT, 2, 0.0).delay for _ in range(3)]
    assert a == b


def test_policy_is_immutable():
    policy = RetryPolicy.default()
    with pytest.raises(AttributeError):
        policy.request_timeout = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(policy.rate_limited, policy.timeout, policy.connection, policy.server_error)  # type: ignore[misc]


# ----------------------------------------------------------------- short mode


def test_short_policy():
    policy = RetryPolicy.short(rng=random.Random(5))
    delays, final = run_until_give_up(policy, Cause.RATE_LIMITED)
    assert len(delays) == 2 and sum(delays) <= 30.0
    assert final.reason == "gave up after 2 retries on HTTP 429 (rate limited) within 30 s"
    # Retry-After beyond the 30 s budget: no retry (it would be refused again)
    d = policy.decide(Cause.RATE_LIMITED, 0, 0.0, "45", now=NOW_TS)
    assert not d.retry and "asked to wait 45 s" in d.reason
    d = policy.decide(Cause.RATE_LIMITED, 0, 0.0, "20", now=NOW_TS)
    assert d.retry and d.delay == 20.0
    for cause in (Cause.TIMEOUT, Cause.CONNECTION):
        d = policy.decide(cause, 0, 0.0)
        assert not d.retry
        assert "does not retry" in d.reason
    assert policy.decide(Cause.TIMEOUT, 0, 0.0).reason == (
        "gave up on timeouts (no answer within 120 s): this mode does not retry them"
    )
