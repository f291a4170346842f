"""What to do with an attempt's outcome: ``Retry-After`` parsing and the retry/breaker classification."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from api_orchestration.policy import RetryPolicy

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
BREAKER_FAILURE_STATUSES = frozenset({408, 429})


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
    """POST and PATCH are retried only when the server can de-duplicate them by key."""
    return method.upper() in SAFE_METHODS or bool(idempotency_key)


@dataclass(frozen=True)
class Outcome:
    """The classification of one attempt."""

    ok: bool  # a 2xx/3xx response
    breaker_failure: bool  # counts against the circuit breaker
    retryable: bool  # the retry policy allows another attempt (method safety checked separately)
    kind: str  # 'ok', 'status', 'timeout', 'transport'


def classify_status(status: int, policy: RetryPolicy) -> Outcome:
    if status < 400:
        return Outcome(True, False, False, "ok")
    failure = status >= 500 or status in BREAKER_FAILURE_STATUSES
    return Outcome(False, failure, status in policy.retry_statuses, "status")


def classify_exception(timeout: bool, policy: RetryPolicy) -> Outcome:
    if timeout:
        return Outcome(False, True, policy.retry_timeouts, "timeout")
    return Outcome(False, True, policy.retry_transport_errors, "transport")
