"""Core endpoints: echo, a bearer-protected echo, status, delay, flaky, rate-limited, health and the admin call log.

``ROUTES`` is the core route table; ``default_router()`` adds the business participant services
(:mod:`demo_services.participants`) after it.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import time
from http import HTTPStatus

from demo_services import participants
from demo_services.routing import ApiError, Request, Response, Route, Router
from demo_services.state import DemoState

MAX_DELAY = 30.0
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_PHRASES = frozenset(s.value for s in HTTPStatus)
_TRUE = frozenset({"1", "true", "yes", "on"})
# the bearer token ``/secure/...`` accepts (a demo value, not a secret of any real system)
DEMO_TOKEN = "demo-secret-token"
GET = frozenset({"GET"})
POST = frozenset({"POST"})


def echo(request: Request, state: DemoState) -> Response:
    """Reflect the request: method, path, query, headers, JSON or raw body, idempotency key."""
    parsed, text = None, None
    if request.body:
        text = request.body.decode("utf-8", errors="replace")
        with contextlib.suppress(ValueError):
            parsed, text = json.loads(text), None
    return Response(
        200,
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "json": parsed,
            "body": text,
            "idempotency_key": request.idempotency_key,
        },
    )


def secure(request: Request, state: DemoState) -> Response:
    """``/echo`` behind a bearer token (RFC 6750): 401 with ``WWW-Authenticate`` without
    ``Authorization: Bearer DEMO_TOKEN``, ``error="invalid_token"`` when the token is wrong."""
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not token:
        challenge = 'Bearer realm="demo"'
        return Response(401, {"error": "unauthorized", "detail": "send Authorization: Bearer <token>"},
                        {"WWW-Authenticate": challenge})  # fmt: skip
    if not hmac.compare_digest(token.strip().encode(), DEMO_TOKEN.encode()):
        challenge = 'Bearer realm="demo", error="invalid_token"'
        return Response(401, {"error": "invalid_token", "detail": "the bearer token is not valid"},
                        {"WWW-Authenticate": challenge})  # fmt: skip
    return echo(request, state)


def status(request: Request, state: DemoState) -> Response:
    """Answer the status code from the path; 429/503 carry ``?retry_after`` verbatim.

    Error statuses answer ``{"status", "error", "detail"}``; ``?detail_bytes=N`` makes ``detail`` N
    characters long (for clients that truncate error bodies).
    """
    code = _status_code(request.params["code"], "status code")
    body: dict[str, object] = {"status": code}
    if code >= 400:
        body["error"] = HTTPStatus(code).phrase if code in _PHRASES else "error"
        body["detail"] = f"the demo API answered {code} because /status/{code} was requested"
    detail_bytes = request.int_query("detail_bytes", 0, minimum=0)
    if detail_bytes and code >= 400:
        body["detail"] = ("the server explains the error at length. " * (detail_bytes // 41 + 1))[
            :detail_bytes
        ]
    return Response(code, body, _retry_after(code, request.query.get("retry_after")))


def delay(request: Request, state: DemoState) -> Response:
    """Sleep the given seconds (clamped to 0..30), then answer 200."""
    seconds = parse_delay(request.params["seconds"])
    time.sleep(seconds)
    return Response(200, {"delayed": seconds})


def flaky(request: Request, state: DemoState) -> Response:
    """First ``fail`` calls per key answer ``status`` (0: drop the connection), then 200."""
    key = request.params["key"]
    fail = request.int_query("fail", 1, minimum=0)
    code = request.query.get("status") or "503"
    failure = 0 if code == "0" else _status_code(code, "query parameter 'status'")
    call = state.next_count("flaky", key)
    if call > fail:
        return Response(200, {"key": key, "call": call})
    if failure == 0:
        return Response(drop=True)
    body = {"error": "flaky failure", "key": key, "call": call}
    return Response(failure, body, _retry_after(failure, request.query.get("retry_after")))


def ratelimited(request: Request, state: DemoState) -> Response:
    """First ``times`` calls per key answer 429 with ``Retry-After: retry_after``, then 200."""
    key = request.params["key"]
    times = request.int_query("times", 1, minimum=0)
    retry_after = request.query.get("retry_after") or "1"
    call = state.next_count("ratelimited", key)
    if call > times:
        return Response(200, {"key": key, "call": call})
    body = {"error": "rate limited", "key": key, "call": call, "retry_after": retry_after}
    return Response(429, body, {"Retry-After": retry_after})


def health(request: Request, state: DemoState) -> Response:
    return Response(200, {"status": "ok"})


def admin_calls(request: Request, state: DemoState) -> Response:
    """The call log; ``?path=`` restricts it to one path, ``?arrivals=1`` adds arrival times."""
    arrivals = request.query.get("arrivals", "").lower() in _TRUE
    return Response(200, state.snapshot(request.query.get("path") or None, arrivals))


def admin_reset(request: Request, state: DemoState) -> Response:
    state.reset()
    return Response(200, {"reset": True})


def parse_delay(raw: str) -> float:
    """Seconds from the path, clamped to ``0..MAX_DELAY``; 400 if not a finite number."""
    try:
        seconds = float(raw)
    except ValueError:
        raise ApiError(400, "delay must be a number of seconds") from None
    if not math.isfinite(seconds):
        raise ApiError(400, "delay must be a number of seconds")
    return min(max(seconds, 0.0), MAX_DELAY)


def _status_code(raw: str, what: str) -> int:
    try:
        code = int(raw)
    except ValueError:
        raise ApiError(400, f"{what} must be an integer") from None
    if not 200 <= code <= 599:
        raise ApiError(400, f"{what} must be between 200 and 599")
    return code


def _retry_after(code: int, value: str | None) -> dict[str, str]:
    return {"Retry-After": value} if value and code in _RETRY_AFTER_STATUSES else {}


ROUTES: tuple[Route, ...] = (
    Route("/health", health, GET, record=False),
    Route("/admin/calls", admin_calls, GET, record=False),
    Route("/admin/reset", admin_reset, POST, record=False),
    Route("/echo/<rest:path>", echo),
    Route("/secure/<rest:path>", secure),
    Route("/status/<code>", status),
    Route("/delay/<seconds>", delay),
    Route("/flaky/<key>", flaky),
    Route("/ratelimited/<key>", ratelimited),
)


def default_router() -> Router:
    """A router serving the core ``ROUTES`` and the business participant services."""
    return Router((*ROUTES, *participants.ROUTES))
