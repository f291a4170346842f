"""The resilient call path against the real demo API on loopback."""

from __future__ import annotations

import logging
import re
import time
from email.utils import formatdate

import pytest
import requests

from api_orchestration import (
    BreakerPolicy,
    CallTimeoutError,
    CircuitOpenError,
    DeferralNeeded,
    Guard,
    HttpStatusError,
    PermanentHttpStatusError,
    RateLimit,
    ResilientCaller,
    RetryPolicy,
    TransportError,
)
from api_orchestration.errors import ApiOrchestrationError
from api_orchestration.redaction import redact_url
from api_orchestration.resilience.outcome import parse_retry_after

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def caller(backend, **guard) -> ResilientCaller:
    guard.setdefault("limit_key", "demo")
    guard.setdefault("retry", FAST)
    return ResilientCaller(requests.Session(), Guard(backend=backend, **guard), timeout=5)


def test_success_returns_the_response(backend, demo):
    response = caller(backend).call("GET", f"{demo.url}/echo/hello", params={"q": "1"})
    assert response.status_code == 200 and response.json()["query"] == {"q": "1"}


def test_transient_5xx_is_retried_until_success(backend, demo):
    response = caller(backend).call("GET", f"{demo.url}/flaky/a?fail=2")
    assert response.json()["call"] == 3
    assert demo.calls()["paths"]["/flaky/a"] == 3


def test_retries_exhausted_raise_status_error_with_data(backend, demo):
    with pytest.raises(HttpStatusError) as info:
        caller(backend).call("GET", f"{demo.url}/status/503")
    err = info.value
    assert (err.status, err.attempts, err.response.status_code) == (503, 3, 503)
    assert not isinstance(err, PermanentHttpStatusError)


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_client_errors_are_never_retried(backend, demo, status):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(PermanentHttpStatusError) as info:
        caller(backend).call("GET", f"{demo.url}/status/{status}")
    assert info.value.status == status and isinstance(info.value, AirflowFailException)
    assert demo.calls()["paths"][f"/status/{status}"] == 1


def test_post_without_idempotency_key_is_not_retried(backend, demo):
    with pytest.raises(HttpStatusError):
        caller(backend).call("POST", f"{demo.url}/flaky/p?fail=1", json={"a": 1})
    assert demo.calls()["paths"]["/flaky/p"] == 1


def test_post_with_key_is_retried_with_the_same_key(backend, demo):
    response = caller(backend).call(
        "POST", f"{demo.url}/flaky/k?fail=2", json={"a": 1}, idempotency_key="order-7"
    )
    assert response.status_code == 200
    assert demo.calls()["by_path_and_key"]["/flaky/k"] == {"order-7": 3}


def test_retry_after_seconds_overrides_backoff_and_pauses_the_key(backend, demo):
    first = caller(backend, retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0))
    started = time.monotonic()
    first.call("GET", f"{demo.url}/ratelimited/r?times=1&retry_after=1")
    assert time.monotonic() - started >= 0.95
    paused = backend.limiter_status("demo")
    assert paused.last_retry_after == pytest.approx(1.0)


def test_retry_after_pause_holds_other_callers_of_the_key(backend, demo):
    backend.limiter_pause("demo", 0.6)  # as a 429 seen by another worker would
    started = time.monotonic()
    caller(backend).call("GET", f"{demo.url}/echo/after-pause")
    assert time.monotonic() - started >= 0.55


def test_retry_after_http_date():
    later = formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(later) <= 30
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_long_waits_ask_for_deferral(backend, demo):
    c = caller(backend, retry=RetryPolicy(max_attempts=2), max_sleep=0.5)
    with pytest.raises(DeferralNeeded) as info:
        c.call("GET", f"{demo.url}/ratelimited/long?times=1&retry_after=30")
    assert info.value.attempt == 2 and 29 <= info.value.seconds <= 30 and info.value.reason == "Retry-After"
    limited = caller(backend, rate_limit=RateLimit(1, per_seconds=60), max_sleep=0.5, limit_key="slow")
    limited.call("GET", f"{demo.url}/echo/1")
    with pytest.raises(DeferralNeeded, match="rate limit"):
        limited.call("GET", f"{demo.url}/echo/2")


def test_timeout_is_a_typed_retryable_error(backend, demo):
    c = ResilientCaller(requests.Session(), Guard(backend=backend, limit_key="demo", retry=FAST), timeout=0.2)
    with pytest.raises(CallTimeoutError) as info:
        c.call("GET", f"{demo.url}/delay/1")
    assert info.value.attempts == 3


def test_connection_refused_is_a_transport_error(backend):
    with pytest.raises(TransportError) as info:
        caller(backend).call("GET", "http://127.0.0.1:9/nothing-listens")
    assert not isinstance(info.value, CallTimeoutError) and info.value.attempts == 3


def test_open_breaker_fails_fast_without_calling(backend, demo):
    policy = BreakerPolicy(window_size=2, min_calls=2, open_seconds=30)
    c = caller(backend, breaker=policy, breaker_key="down", retry=RetryPolicy(max_attempts=1))
    for _ in range(2):
        with pytest.raises(HttpStatusError):
            c.call("GET", f"{demo.url}/status/500")
    with pytest.raises(CircuitOpenError) as info:
        c.call("GET", f"{demo.url}/status/500")
    assert info.value.key == "down" and info.value.reopen_at > time.time() + 25
    assert demo.calls()["paths"]["/status/500"] == 2
    with pytest.raises(DeferralNeeded, match="circuit 'down' open"):
        caller(backend, breaker=policy, breaker_key="down", on_circuit_open="defer").call(
            "GET", f"{demo.url}/x"
        )


def test_client_errors_do_not_trip_the_breaker(backend, demo):
    policy = BreakerPolicy(window_size=2, min_calls=2, open_seconds=30)
    c = caller(backend, breaker=policy, breaker_key="fine")
    for _ in range(4):
        with pytest.raises(PermanentHttpStatusError):
            c.call("GET", f"{demo.url}/status/404")
    c.flush()
    assert backend.breaker_status("fine").state == "closed"
    assert backend.breaker_status("fine").outcomes == "00"


def test_slow_calls_count_as_failures(backend, demo):
    policy = BreakerPolicy(window_size=2, min_calls=2, open_seconds=30, slow_call_seconds=0.05)
    c = caller(backend, breaker=policy, breaker_key="slow")
    for _ in range(2):
        c.call("GET", f"{demo.url}/delay/0.08")
    c.flush()
    assert backend.breaker_status("slow").state == "open"


def test_one_log_line_per_attempt_without_secrets(backend, demo, caplog):
    log = logging.getLogger("test.call")
    session = requests.Session()
    session.auth = ("alice", "s3cret-pw")
    session.headers["Authorization"] = "Bearer tok-123"
    c = ResilientCaller(session, Guard(backend=backend, limit_key="demo", retry=FAST), timeout=5, log=log)
    with caplog.at_level(logging.INFO, logger="test.call"):
        c.call("GET", f"http://bob:pw2@127.0.0.1:{demo.port}/flaky/log?fail=1&api_key=k-999")
    lines = [r.getMessage() for r in caplog.records if r.name == "test.call"]
    assert len(lines) == 2, lines
    assert "attempt 1/3 -> 503" in lines[0] and "retrying in" in lines[0] and "(backoff)" in lines[0]
    delay = float(re.search(r"retrying in ([0-9.]+) s", lines[0]).group(1))  # full jitter: may round to 0
    assert "attempt 2/3 -> 200" in lines[1] and ("waited" in lines[1]) == (delay > 0.0005)
    text = "\n".join(lines)
    for secret in ("s3cret-pw", "tok-123", "pw2", "k-999", "bob"):
        assert secret not in text


def test_a_call_verdict_travels_with_the_next_admission(backend, demo):
    policy = BreakerPolicy(window_size=2, min_calls=2, open_seconds=30)
    c = caller(backend, breaker=policy, breaker_key="pending")
    c.call("GET", f"{demo.url}/echo/1")
    assert backend.breaker_status("pending").in_flight == 1  # verdict not sent yet: lease held
    c.call("GET", f"{demo.url}/echo/2")  # its admission recorded the first verdict
    assert backend.breaker_status("pending").outcomes == "0"
    c.flush()
    assert backend.breaker_status("pending").outcomes == "00"
    assert backend.breaker_status("pending").in_flight == 0
    c.flush()  # nothing pending: a no-op
    assert backend.breaker_status("pending").outcomes == "00"


def test_retry_after_is_finite_and_its_pause_is_capped(backend, demo):
    assert parse_retry_after("inf") is None and parse_retry_after("1e400") is None
    c = caller(backend, retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0, max_retry_after=0.2))
    started = time.monotonic()
    c.call("GET", f"{demo.url}/ratelimited/huge?times=1&retry_after=31536000")
    assert time.monotonic() - started < 2
    status = backend.limiter_status("demo")
    assert status.last_retry_after == pytest.approx(0.2)
    assert status.paused_until - status.now < 0.2


def test_ignored_retry_after_pauses_nobody(backend, demo):
    c = caller(
        backend, retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0, respect_retry_after=False)
    )
    c.call("GET", f"{demo.url}/ratelimited/ignored?times=1&retry_after=30")
    assert backend.limiter_status("demo") is None


def test_transport_errors_do_not_carry_secret_query_values(backend):
    with pytest.raises(TransportError) as info:
        caller(backend).call("GET", "http://127.0.0.1:9/x?api_key=SECRET123&page=2")
    text = str(info.value)
    assert "SECRET123" not in text and "api_key=***" in text and "page=2" in text
    assert info.value.__cause__ is None


def test_a_long_hold_defers_instead_of_failing(backend, demo):
    policy = BreakerPolicy(window_size=2, min_calls=2, open_seconds=30)
    failed = backend.breaker_acquire("held", policy, lease_seconds=30)
    backend.breaker_record("held", policy, failed, True)  # failing: the hold rule applies
    assert backend.breaker_acquire("held", policy, lease_seconds=30).allowed  # in flight elsewhere
    c = caller(backend, breaker=policy, breaker_key="held", max_sleep=0.1)
    with pytest.raises(DeferralNeeded, match="calls in flight on circuit 'held'"):
        c.call("GET", f"{demo.url}/echo/held")
    assert "/echo/held" not in demo.calls()["paths"]


def test_busy_half_open_defers_when_configured(backend, demo):
    policy = BreakerPolicy(window_size=1, min_calls=1, open_seconds=0.1, half_open_calls=1)
    trip = backend.breaker_acquire("busy", policy, 30)
    backend.breaker_record("busy", policy, trip, True)
    time.sleep(0.12)
    assert backend.breaker_acquire("busy", policy, 30).kind == "trial"  # taken by another worker
    with pytest.raises(DeferralNeeded, match="circuit 'busy' busy"):
        caller(backend, breaker=policy, breaker_key="busy", on_circuit_open="defer").call(
            "GET", f"{demo.url}/x"
        )
    with pytest.raises(CircuitOpenError) as info:
        caller(backend, breaker=policy, breaker_key="busy").call("GET", f"{demo.url}/x")
    assert info.value.reason == "busy" and "trial calls are taken" in str(info.value)


def test_an_interrupted_call_is_recorded_as_a_failure(backend, demo):
    policy = BreakerPolicy(window_size=5, min_calls=5, open_seconds=30)
    c = caller(backend, breaker=policy, breaker_key="killed")

    def interrupt(response, *args, **kwargs):
        raise KeyboardInterrupt  # as a task kill or execution_timeout would, mid-call

    c.session.hooks["response"].append(interrupt)
    with pytest.raises(KeyboardInterrupt):
        c.call("GET", f"{demo.url}/echo/killed")
    status = backend.breaker_status("killed")
    assert status.outcomes == "1" and status.in_flight == 0


def test_redact_url():
    assert redact_url("https://u:p@h:1/x?token=abc&q=2") == "https://h:1/x?token=***&q=2"


def test_every_error_is_an_api_orchestration_error():
    assert issubclass(CircuitOpenError, ApiOrchestrationError)
    assert issubclass(PermanentHttpStatusError, HttpStatusError)


def test_request_settings_are_cached_per_host_not_per_url(backend, demo):
    c = caller(backend)
    for i in range(20):  # bulk mode calls a different URL each time
        c.call("GET", f"{demo.url}/echo/user/{i}")
    assert list(c._settings) == [f"http://127.0.0.1:{demo.port}"]
