"""Notifications: ``POST /notifications/<channel>`` with any JSON body -> 202 (accepted).

Channels are email, sms, push, slack and webhook (others: 404 ``unknown_channel``). Accepted
notifications are listed by ``GET /admin/notifications[?channel=X]`` until reset.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from demo_services.common import GET, POST, ServiceError, health_route, now_iso
from demo_services.idempotency import idempotent
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

CHANNELS = ("email", "sms", "push", "slack", "webhook")


class Outbox:
    """Accepted notifications, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self._lock:
            self._sent.clear()

    def add(self, channel: str, payload: Any, key: str | None) -> str:
        with self._lock:
            notification_id = f"ntf_{len(self._sent) + 1:06d}"
            entry = {"id": notification_id, "channel": channel, "payload": payload, "idempotency_key": key}
            self._sent.append({**entry, "at": now_iso()})
            return notification_id

    def sent(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(n) for n in self._sent if channel is None or n["channel"] == channel]


def notify(request: Request, state: DemoState) -> Response:
    channel = request.params["channel"]
    if channel not in CHANNELS:
        raise ServiceError(404, "unknown_channel", f"no channel {channel!r}", channels=list(CHANNELS))
    try:
        payload = json.loads(request.body) if request.body.strip() else None
    except ValueError as exc:
        raise ServiceError(400, "invalid_json", f"request body is not JSON: {exc}") from None
    notification_id = state.extension(Outbox).add(channel, payload, request.idempotency_key)
    return Response(202, {"notification_id": notification_id, "channel": channel})


def admin_notifications(request: Request, state: DemoState) -> Response:
    """``GET /admin/notifications[?channel=X]``: the accepted notifications."""
    sent = state.extension(Outbox).sent(request.query.get("channel") or None)
    return Response(200, {"notifications": sent})


ROUTES: tuple[Route, ...] = (
    health_route("notifications"),
    Route("/notifications/<channel>", idempotent(notify), POST),
)
ADMIN_ROUTES: tuple[Route, ...] = (Route("/admin/notifications", admin_notifications, GET, record=False),)
