"""What an attempt's outcome means: classification for the breaker and the retry policy, which
methods may be retried, and ``Retry-After``."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from api_orchestration.policy import RetryPolicy
from api_orchestration.resilience.kinds import OutcomeKind

# RFC 9110 §9.2.2: PUT and DELETE are idempotent even though they are not safe (§9.2.1).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
BREAKER_FAILURE_STATUSES = frozenset({408, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date. None if absent or
    unparsable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def may_retry_method(method: str, idempotency_key: str | None) -> bool:
    """Idempotent methods may be retried; POST and PATCH only when the server can de-duplicate them by key."""
    return method.upper() in IDEMPOTENT_METHODS or bool(idempotency_key)


@dataclass(frozen=True)
class Outcome:
    """The classification of one attempt."""

    ok: bool  # a 2xx/3xx response
    breaker_failure: bool  # counts against the circuit breaker
    retryable: bool  # the retry policy allows another attempt (method checked separately)
    kind: OutcomeKind


def classify_status(status: int, policy: RetryPolicy) -> Outcome:
    if status < 400:
        return Outcome(True, False, False, OutcomeKind.OK)
    failure = status >= 500 or status in BREAKER_FAILURE_STATUSES
    return Outcome(False, failure, status in policy.retry_statuses, OutcomeKind.STATUS)


def classify_exception(timeout: bool, policy: RetryPolicy) -> Outcome:
    if timeout:
        return Outcome(False, True, policy.retry_timeouts, OutcomeKind.TIMEOUT)
    return Outcome(False, True, policy.retry_transport_errors, OutcomeKind.TRANSPORT)


@dataclass(frozen=True)
class RetryAfter:
    """A 429/503's ``Retry-After``: ``seconds`` (capped when honoured), and whether to pause the
    limiter key for every caller (an honoured 429)."""

    seconds: float
    pause_key: bool


def retry_after_of(status: int, headers: Mapping[str, str], policy: RetryPolicy) -> RetryAfter | None:
    if status not in RETRY_AFTER_STATUSES:
        return None
    seconds = parse_retry_after(headers.get("Retry-After"))
    if seconds is None:
        return None
    if not policy.respect_retry_after:
        return RetryAfter(seconds, False)
    return RetryAfter(min(seconds, policy.max_retry_after), status == 429)
