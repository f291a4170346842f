"""``Idempotency-Key`` for the business writes, as Stripe documents it (docs.stripe.com/api/idempotent_requests).

- The status and body of the first request with a key are **saved once the endpoint began
  executing**, whatever they are (a 201, a 409 refusal, a 500 included), and **replayed** for
  every later request with that key, with ``Idempotent-Replayed: true`` and ``Original-Request:
  <its request id>``; the endpoint does not run again.
- Failures **in front of** the endpoint are not saved, so a retry with the key runs: injected
  faults (they answer before any handler runs), 429s, and validation errors (a 400 raised by the
  handler before it does anything).
- Keys are **account-wide**: one key space per service (the first path segment: ``payments``,
  ``inventory``, ``shipping``, ``notifications``, ``exports``), shared by all its endpoints. A key
  reused with **other parameters** (another path, method, query or body) answers **400**
  ``idempotency_error`` (Stripe's choice; the IETF draft says 422) and is not saved.
- A request arriving while the first with its key is still **in flight** answers **409**
  ``idempotency_key_in_use``, not saved: retry it later.
- ``GET /admin/idempotency`` lists the live keys. Saved keys are pruned after ``KEY_TTL_SECONDS`` (24 h). Only POST honours keys: the wrapper is
  used on POST routes, and a key sent on GET or DELETE elsewhere has no effect.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from demo_services.routing import ApiError, Handler, Request, Response, Route
from demo_services.state import DemoState

REPLAY_HEADER = "Idempotent-Replayed"
ORIGINAL_REQUEST_HEADER = "Original-Request"
KEY_TTL_SECONDS = 24 * 3600
MISMATCH_STATUS = 400  # Stripe; draft-ietf-httpapi-idempotency-key-header says 422
_NOT_SAVED = frozenset({400, 429})  # validation errors and throttling happen before any effect


@dataclass
class _Entry:
    """One (account, key): the first request's fingerprint, and its saved answer once it finished."""

    fingerprint: str
    request_summary: str
    created: float
    request_id: str
    saved: tuple[int, str, dict[str, str]] | None = None  # None while in flight


class IdempotencyStore:
    """Keys by (account, key) behind one lock; forgotten by ``reset()`` or after ``ttl`` seconds."""

    def __init__(self, ttl: float = KEY_TTL_SECONDS) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self.ttl = ttl

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()

    def begin(self, account: str, key: str, entry: _Entry) -> _Entry | None:
        """Claim ``key`` for ``entry``; returns the existing live entry instead when there is one."""
        with self._lock:
            found = self._entries.get((account, key))
            if found is not None and entry.created - found.created < self.ttl:
                return found
            self._entries[account, key] = entry
            return None

    def finish(self, account: str, key: str, entry: _Entry, response: Response) -> None:
        """Save ``response`` for the key, or release the key when the answer is not saved."""
        with self._lock:
            if self._entries.get((account, key)) is not entry:
                return
            if _saved(response):
                entry.saved = (response.status, json.dumps(response.body), dict(response.headers))
            else:
                del self._entries[account, key]

    def listing(self) -> list[dict[str, Any]]:
        """Every live key: account, key, request, and the saved status (None while in flight)."""
        with self._lock:
            items = sorted(self._entries.items())
        return [
            {
                "account": account,
                "key": key,
                "request": entry.request_summary,
                "status": entry.saved[0] if entry.saved else None,
                "in_flight": entry.saved is None,
            }
            for (account, key), entry in items
        ]


def _saved(response: Response) -> bool:
    return not response.drop and response.status not in _NOT_SAVED


def account_of(request: Request) -> str:
    """The key space of a request: its service, the first path segment."""
    return request.path.lstrip("/").split("/", 1)[0]


def fingerprint(request: Request) -> str:
    """What must match for a key's reuse: method, path, query and the body (JSON compared by value)."""
    try:
        body: Any = json.loads(request.body) if request.body.strip() else None
        body_text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except ValueError:
        body_text = request.body.decode("utf-8", errors="replace")
    query = json.dumps(sorted(request.query.items()))
    return hashlib.sha256("\n".join((request.method, request.path, query, body_text)).encode()).hexdigest()


def _error(status: int, code: str, detail: str, key: str) -> Response:
    return Response(status, {"error": code, "detail": detail, "idempotency_key": key})


def idempotent(handler: Handler) -> Handler:
    """Wrap a POST handler with the Stripe semantics above (requests without a key just run)."""

    @functools.wraps(handler)
    def wrapper(request: Request, state: DemoState) -> Response:
        key = request.idempotency_key
        if not key:
            return handler(request, state)
        account = account_of(request)
        store = state.extension(IdempotencyStore)
        summary = f"{request.method} {request.path}"
        entry = _Entry(fingerprint(request), summary, time.time(), request.request_id)
        found = store.begin(account, key, entry)
        if found is not None:
            if found.fingerprint != entry.fingerprint:
                detail = (
                    f"Keys for idempotent requests can only be used with the same parameters they were "
                    f"first used with: key {key!r} was first used for {found.request_summary} with other "
                    f"parameters. Use a new key for a different request."
                )
                return _error(MISMATCH_STATUS, "idempotency_error", detail, key)
            if found.saved is None:
                detail = (
                    f"There is currently another in-progress request using the idempotency key {key!r}; "
                    f"retry this request later."
                )
                return _error(409, "idempotency_key_in_use", detail, key)
            status, body, headers = found.saved
            replay_headers = {**headers, REPLAY_HEADER: "true", ORIGINAL_REQUEST_HEADER: found.request_id}
            return Response(status, json.loads(body), replay_headers)
        try:
            response = handler(request, state)
        except ApiError as exc:
            response = exc.response()
        except Exception as exc:  # the endpoint began executing: its 500 is saved like any answer
            traceback.print_exc()
            response = Response(500, {"error": "api_error", "detail": f"internal error: {exc!r}"})
        store.finish(account, key, entry, response)
        return response

    return wrapper


def admin_idempotency(request: Request, state: DemoState) -> Response:
    """``GET /admin/idempotency``: every live key with its account, first request and saved status."""
    return Response(200, {"keys": state.extension(IdempotencyStore).listing()})


ADMIN_ROUTES: tuple[Route, ...] = (
    Route("/admin/idempotency", admin_idempotency, frozenset({"GET"}), record=False),
)
