"""Retry policy for provider API calls.

One immutable object decides, for each failed attempt, whether to retry and how
long to wait. It never sleeps itself, so it is testable with a fake clock: the
engine calls :meth:`RetryPolicy.decide` and does the sleeping.

Budgets are per cause and per API call (a call that first hits a 429 and then a
timeout spends from two separate budgets), as the product documentation states
them:

=====================  ===========================  ================================
cause                  ``RetryPolicy.default()``    ``RetryPolicy.short()`` (timeout=True)
=====================  ===========================  ================================
HTTP 429               8 retries within 30 min      2 retries within 30 s
timeout (120 s/call)   5 retries within 50 s        no retry
connection error       2 retries within 60 s        no retry
HTTP 5xx               2 retries within 30 s        1 retry within 5 s
=====================  ===========================  ================================

The documentation is silent on 5xx answers; we retry them twice with back-off
(once in the short mode) because a single 502/503 from a load balancer is common
and usually transient, while more retries would only hide a real outage.

"Within N" bounds the *sum of the waits* between attempts, not the time spent in
the attempts themselves (a timed-out attempt already took up to 120 s).

Waiting: on a ``Retry-After`` header (delta-seconds or HTTP-date) we wait exactly
what the provider asked (asking again sooner is certain to be refused again); when
that is more than the budget has left, we give up at once and say so. Otherwise
exponential back-off with full jitter: a uniform random delay in
``[0, min(max_delay, base_delay * 2**retry_index)]``, also capped by the budget.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "Budget",
    "Cause",
    "Decision",
    "LongWait",
    "RetryPolicy",
    "parse_retry_after",
]


class Cause(str, enum.Enum):
    """Why an attempt failed (the key of the per-cause budgets)."""

    RATE_LIMITED = "rate_limited"  # HTTP 429
    TIMEOUT = "timeout"  # no complete answer within the per-call timeout
    CONNECTION = "connection"  # connect/reset/protocol (incl. chunked-encoding) errors
    SERVER_ERROR = "server_error"  # HTTP 5xx


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How often and how long one cause may be retried within one API call."""

    max_retries: int
    max_total_wait: float  # seconds, sum of all waits for this cause
    base_delay: float = 1.0  # first back-off ceiling, doubled per retry
    max_delay: float = 60.0  # ceiling of a single back-off delay

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.max_total_wait < 0:
            raise ValueError("retry budgets cannot be negative")


class LongWait(Exception):
    """The provider asked to wait longer than the caller is willing to hold on (``RetryPolicy.long_wait``).

    Raised instead of sleeping, so a sync run can save its place and free its worker;
    ``delay`` is how long the provider asked for, ``reason`` the policy's sentence.
    """

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


@dataclass(frozen=True)
class Decision:
    """The answer of :meth:`RetryPolicy.decide`.

    ``delay`` is in seconds (0 when ``retry`` is false); ``reason`` is a
    sentence fit for a user or a log line (no URLs, no secrets).
    """

    retry: bool
    delay: float
    reason: str


def _fmt_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 600 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    if seconds == int(seconds):
        return f"{int(seconds)} s"
    return f"{seconds:.1f} s"


def _retries(n: int) -> str:
    return "1 retry" if n == 1 else f"{n} retries"


def parse_retry_after(value: str | None, now: float | datetime | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value.

    Accepts delta-seconds (``"120"``) and HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), the two forms of RFC 9110 §10.2.3.
    ``now`` (epoch seconds or an aware datetime) is the reference for the date
    form; it defaults to the current time. A date in the past gives ``0.0``.
    Returns ``None`` when the value is absent or unparsable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 9110 dates are always GMT
        when = when.replace(tzinfo=UTC)
    if now is None:
        ref = datetime.now(UTC)
    elif isinstance(now, datetime):
        ref = now if now.tzinfo else now.replace(tzinfo=UTC)
    else:
        ref = datetime.fromtimestamp(float(now), UTC)
    return max(0.0, (when - ref).total_seconds())


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Per-cause retry budgets plus the back-off rule.

    Use :meth:`default` for syncs and :meth:`short` (the ``timeout=True``
    mode) for interactive calls such as testing credentials. The ``rng`` is
    injectable so tests get deterministic jitter.
    """

    rate_limited: Budget
    timeout: Budget
    connection: Budget
    server_error: Budget
    request_timeout: float = 120.0  # per-call timeout, seconds (shown in reasons)
    # Waits longer than this raise LongWait instead of sleeping (None: always sleep).
    long_wait: float | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def default(cls, *, rng: random.Random | None = None) -> RetryPolicy:
        """The normal mode: 429 ×8 in 30 min, timeout ×5 in 50 s, connection ×2 in 60 s, 5xx ×2."""
        return cls(
            rate_limited=Budget(max_retries=8, max_total_wait=30 * 60, base_delay=2.0, max_delay=300.0),
            timeout=Budget(max_retries=5, max_total_wait=50.0, base_delay=1.0, max_delay=20.0),
            connection=Budget(max_retries=2, max_total_wait=60.0, base_delay=2.0, max_delay=30.0),
            server_error=Budget(max_retries=2, max_total_wait=30.0, base_delay=1.0, max_delay=15.0),
            rng=rng or random.Random(),
        )

    @classmethod
    def short(cls, *, rng: random.Random | None = None) -> RetryPolicy:
        """The ``timeout=True`` mode: 429 ×2 in 30 s, no retry on timeouts or connection errors."""
        return cls(
            rate_limited=Budget(max_retries=2, max_total_wait=30.0, base_delay=1.0, max_delay=15.0),
            timeout=Budget(max_retries=0, max_total_wait=0.0),
            connection=Budget(max_retries=0, max_total_wait=0.0),
            server_error=Budget(max_retries=1, max_total_wait=5.0, base_delay=1.0, max_delay=5.0),
            rng=rng or random.Random(),
        )

    def budget(self, cause: Cause | str) -> Budget:
        budget: Budget = getattr(self, Cause(cause).value)
        return budget

    def describe(self, cause: Cause | str) -> str:
        """Human name of a cause, e.g. ``"HTTP 429 (rate limited)"``."""
        cause = Cause(cause)
        if cause is Cause.RATE_LIMITED:
            return "HTTP 429 (rate limited)"
        if cause is Cause.TIMEOUT:
            return f"timeouts (no answer within {_fmt_duration(self.request_timeout)})"
        if cause is Cause.CONNECTION:
            return "connection errors"
        return "server errors (HTTP 5xx)"

    def decide(
        self,
        cause: Cause | str,
        attempt: int,
        waited_so_far: float = 0.0,
        retry_after_header: str | None = None,
        now: float | datetime | None = None,
    ) -> Decision:
        """Decide about the next retry.

        ``attempt`` is how many retries were already made for this cause in
        this call (0 after the first failure); ``waited_so_far`` is the sum of
        the delays already waited for this cause. ``retry_after_header`` is the
        raw header value if the answer carried one; ``now`` is the reference
        time for its HTTP-date form.
        """
        cause = Cause(cause)
        budget = self.budget(cause)
        what = self.describe(cause)
        within = _fmt_duration(budget.max_total_wait)
        if budget.max_retries == 0:
            return Decision(False, 0.0, f"gave up on {what}: this mode does not retry them")
        if attempt >= budget.max_retries:
            return Decision(
                False,
                0.0,
                f"gave up after {_retries(attempt)} on {what} within {within}",
            )
        remaining = budget.max_total_wait - waited_so_far
        if remaining <= 0:
            return Decision(
                False,
                0.0,
                f"gave up after {_retries(attempt)} on {what}: the {within} retry budget is used up",
            )
        asked = parse_retry_after(retry_after_header, now)
        if asked is not None:
            if asked > remaining:
                return Decision(
                    False,
                    0.0,
                    f"gave up after {_retries(attempt)} on {what}: the provider asked to wait "
                    f"{_fmt_duration(round(asked, 1))}, more than the {_fmt_duration(round(remaining, 1))} "
                    f"left of the {within} retry budget",
                )
            delay = asked
            how = f"the provider asked to wait {_fmt_duration(round(asked, 1))}"
        else:
            ceiling = min(budget.max_delay, budget.base_delay * (2**attempt))
            delay = min(self.rng.uniform(0.0, ceiling), remaining)
            how = "back-off with jitter"
        return Decision(
            True,
            delay,
            f"{what}: retry {attempt + 1} of {budget.max_retries} in {delay:.1f} s ({how})",
        )
