"""State for the status tests: an open breaker, a closed one, a saturated limiter, a Retry-After pause,
made by real calls through ``ResilientCaller`` to the demo API."""

from __future__ import annotations

import pytest
import requests

from api_orchestration import (
    BreakerPolicy,
    CircuitOpenError,
    DeferralNeeded,
    Guard,
    HttpStatusError,
    RateLimit,
    ResilientCaller,
    RetryPolicy,
)

ONCE = RetryPolicy(max_attempts=1)
PAYMENTS_BREAKER = BreakerPolicy(failure_rate=0.5, window_size=10, min_calls=4, open_seconds=300)
PAYMENTS_LIMIT = RateLimit(permits=100, per_seconds=3600, burst=100)  # back to back, one long period


def call(backend, key: str, url: str, *, limit=None, breaker=None, retry=ONCE) -> requests.Response:
    guard = Guard(
        backend=backend, limit_key=key, rate_limit=limit, breaker_key=key, breaker=breaker, retry=retry
    )
    c = ResilientCaller(requests.Session(), guard, timeout=5)
    try:
        return c.call("GET", url)
    finally:
        c.flush()


def open_payments_breaker(backend, demo) -> int:
    """Take the payments service down and call it until the breaker refuses; returns calls made."""
    requests.post(
        f"{demo.url}/admin/faults", json={"path": "/payments", "down": True}, timeout=5
    ).raise_for_status()
    for made in range(1, 20):
        try:
            call(
                backend,
                "payments",
                f"{demo.url}/payments/health",
                limit=PAYMENTS_LIMIT,
                breaker=PAYMENTS_BREAKER,
            )
        except HttpStatusError:
            continue
        except CircuitOpenError:
            return made - 1
    raise AssertionError("the payments breaker never opened")


def make_state(backend, demo) -> None:
    """An open breaker (payments), a closed one with calls (users), a saturated limiter (slow), a
    Retry-After pause (partner)."""
    assert open_payments_breaker(backend, demo) == PAYMENTS_BREAKER.min_calls
    call(backend, "users", f"{demo.url}/users/1", breaker=PAYMENTS_BREAKER)
    call(backend, "slow", f"{demo.url}/echo/slow", limit=RateLimit(1, per_seconds=60))
    with pytest.raises(DeferralNeeded):  # Retry-After 30 s > max_sleep: the operator would defer
        call(
            backend,
            "partner",
            f"{demo.url}/ratelimited/p?times=1&retry_after=30",
            retry=RetryPolicy(max_attempts=2),
        )
