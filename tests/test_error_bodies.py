"""Error bodies and request ids in attempt log lines and HttpStatusError (both drivers), log_response,
and the redaction that keeps echoed credentials out of both."""

from __future__ import annotations

import logging

import pytest
import requests

from api_orchestration import Guard, HttpStatusError, PermanentHttpStatusError, ResilientCaller, RetryPolicy
from api_orchestration.calls.diagnostics import SNIPPET_BYTES
from api_orchestration.calls.engines import call_concurrently_async
from api_orchestration.calls.events import AttemptFinished, RecordingListener
from api_orchestration.redaction import redact_text

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
LOG = logging.getLogger("test_error_bodies")


def caller(backend, **kw) -> tuple[ResilientCaller, RecordingListener]:
    seen = RecordingListener()
    g = Guard(backend=backend, limit_key="bodies", retry=FAST, listeners=[seen], **kw)
    return ResilientCaller(requests.Session(), g, timeout=5, log=LOG), seen


def test_a_long_error_body_is_truncated_in_the_error_and_every_attempt_line(backend, demo, caplog):
    c, seen = caller(backend)
    with caplog.at_level(logging.INFO, logger="test_error_bodies"), pytest.raises(HttpStatusError) as info:
        c.call("GET", f"{demo.url}/status/500?detail_bytes=10000")
    err = info.value
    assert err.request_id and err.request_id == err.response.headers["X-Request-Id"]
    assert (
        err.body.startswith('{"status": 500, "error": "Internal Server Error"') or '"status":500' in err.body
    )
    assert "the server explains the error at length" in err.body
    assert len(err.body) <= SNIPPET_BYTES + 20 and err.body.endswith(
        f"... ({len(err.response.content)} bytes)"
    )
    assert f"(request id {err.request_id}): " in str(err)
    attempts = seen.of(AttemptFinished)
    assert [a.request_id is not None and a.body is not None for a in attempts] == [True, True]
    assert attempts[0].request_id != attempts[1].request_id  # one id per request, as the server sent them
    lines = [r.getMessage() for r in caplog.records]
    assert any("retrying" in line and f"request id {attempts[0].request_id}" in line and "; body: {" in line
               for line in lines)  # fmt: skip
    assert any("giving up" in line and f"request id {err.request_id}" in line for line in lines)


def test_a_short_client_error_carries_its_whole_body(backend, demo):
    c, _ = caller(backend)
    with pytest.raises(PermanentHttpStatusError) as info:
        c.call("GET", f"{demo.url}/status/404")
    assert "the demo API answered 404 because /status/404 was requested" in info.value.body
    assert not info.value.body.endswith("bytes)")


def test_successful_bodies_are_logged_only_with_log_response(backend, demo, caplog):
    quiet, seen_quiet = caller(backend)
    quiet.call("GET", f"{demo.url}/echo/quiet")
    assert seen_quiet.of(AttemptFinished)[0].body is None
    loud, seen = caller(backend, log_response=True)
    with caplog.at_level(logging.INFO, logger="test_error_bodies"):
        loud.call("GET", f"{demo.url}/echo/loud")
    [attempt] = seen.of(AttemptFinished)
    assert '"path": "/echo/loud"' in attempt.body and attempt.request_id
    assert any("; body: {" in r.getMessage() and "/echo/loud" in r.getMessage() for r in caplog.records)


def test_an_echoed_credential_never_reaches_the_log(backend, demo, caplog):
    token = "sk_live_abcdef0123456789"
    c, seen = caller(backend, log_response=True)
    with caplog.at_level(logging.INFO, logger="test_error_bodies"):
        c.call("GET", f"{demo.url}/echo/who", headers={"Authorization": f"Bearer {token}", "X-Api-Key": token},
               params={"api_key": token})  # fmt: skip
    [attempt] = seen.of(AttemptFinished)
    assert token not in attempt.body and '"authorization": "***"' in attempt.body.lower()
    assert all(token not in r.getMessage() for r in caplog.records)


def test_redact_text_masks_credentials_in_bodies():
    body = (
        '{"error": "invalid_client", "client_secret": "s3cr3t-value", "access_token": "tok.en.value", '
        '"detail": "Authorization: Bearer abcdefghijkl rejected", "next": "/x?api_key=k123456&page=2"}'
    )
    text = redact_text(body)
    for secret in ("s3cr3t-value", "tok.en.value", "abcdefghijkl", "k123456"):
        assert secret not in text
    assert '"error": "invalid_client"' in text and "page=2" in text


def test_bulk_rows_carry_the_request_id_and_body(backend, demo):
    g = Guard(backend=backend, limit_key="bodies", retry=RetryPolicy(max_attempts=1))

    def request(i: int) -> dict:
        return {"method": "GET", "url": f"{demo.url}/status/422?detail_bytes=100", "json": None,
                "params": None, "headers": None, "idempotency_key": None}  # fmt: skip

    [row] = list(call_concurrently_async(1, request, guard=g, concurrency=1, timeout=5))
    assert not row["ok"] and "(request id req_" in row["error"] and "the server explains" in row["error"]
