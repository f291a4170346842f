"""``Idempotency-Key`` for the business writes: a repeated key (per path) replays the first answer.

The replay has the first response's status and body, the header ``Idempotent-Replay: true`` and
no second effect. A duplicate arriving while the first is still running waits for it. Answers
that did not execute (400 validation errors) or failed (5xx) are not kept, so a retry with the
same key runs again; injected faults never reach the handler, so they are never kept either.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field

from demo_services.routing import ApiError, Handler, Request, Response
from demo_services.state import DemoState

REPLAY_HEADER = "Idempotent-Replay"


@dataclass
class _Slot:
    """One (path, key): its lock serialises duplicates; ``saved`` is the first kept answer."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    saved: tuple[int, str, dict[str, str]] | None = None


class IdempotencyStore:
    """Kept answers by (path, key); forgotten by ``reset()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str], _Slot] = {}

    def reset(self) -> None:
        with self._lock:
            self._slots.clear()

    def slot(self, path: str, key: str) -> _Slot:
        with self._lock:
            return self._slots.setdefault((path, key), _Slot())


def _kept(response: Response) -> bool:
    return not response.drop and response.status != 400 and response.status < 500


def idempotent(handler: Handler) -> Handler:
    """Wrap a write handler so that requests with an ``Idempotency-Key`` run at most once."""

    @functools.wraps(handler)
    def wrapper(request: Request, state: DemoState) -> Response:
        key = request.idempotency_key
        if not key:
            return handler(request, state)
        slot = state.extension(IdempotencyStore).slot(request.path, key)
        with slot.lock:
            if slot.saved is not None:
                status, body, headers = slot.saved
                return Response(status, json.loads(body), {**headers, REPLAY_HEADER: "true"})
            try:
                response = handler(request, state)
            except ApiError as exc:
                response = exc.response()
            if _kept(response):
                slot.saved = (response.status, json.dumps(response.body), dict(response.headers))
            return response

    return wrapper
