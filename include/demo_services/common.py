"""Shared helpers of the business services: JSON errors, body and field validation, paging, health.

Service errors answer ``{"error": code, "detail": ...}`` (plus any extra fields, e.g. ``field``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from demo_services.routing import ApiError, Request, Response, Route
from demo_services.state import DemoState

GET = frozenset({"GET"})
POST = frozenset({"POST"})
DELETE = frozenset({"DELETE"})
MAX_PER_PAGE = 100


class ServiceError(ApiError):
    """An ``ApiError`` answering ``{"error": code, "detail": detail, **extra}``."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(status, code)
        self.detail = detail
        self.extra = extra

    def response(self) -> Response:
        return Response(self.status, {"error": self.message, "detail": self.detail, **self.extra})


def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 ``invalid_json`` otherwise (an empty body is ``{}``)."""
    if not request.body.strip():
        return {}
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        raise ServiceError(400, "invalid_json", f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ServiceError(400, "invalid_json", "request body must be a JSON object")
    return body


def required_str(body: dict[str, Any], name: str) -> str:
    """Non-empty string field ``name``; 400 naming the field if missing or invalid."""
    if name not in body or body[name] is None:
        raise ServiceError(400, "missing_field", f"{name!r} is required", field=name)
    value = body[name]
    if not isinstance(value, str) or not value.strip():
        raise ServiceError(400, "invalid_field", f"{name!r} must be a non-empty string", field=name)
    return value


def positive_int(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    """Positive integer field ``name`` (None if optional and absent); 400 naming the field otherwise."""
    value = body.get(name)
    if value is None:
        if required:
            raise ServiceError(400, "missing_field", f"{name!r} is required", field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ServiceError(400, "invalid_field", f"{name!r} must be a positive integer", field=name)
    return value


def iso(moment: datetime) -> str:
    """Fixed-width ISO-8601 in UTC, ``2026-01-01T00:00:00.000000Z``: sorts correctly as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return iso(datetime.now(UTC))


def query_int(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    """Integer query parameter ``name`` within ``minimum..maximum``; 400 naming it otherwise."""
    raw = request.query.get(name) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        detail = f"query parameter {name!r} must be an integer in {minimum}..{maximum}"
        raise ServiceError(400, "invalid_query", detail, field=name)
    return value


def page(request: Request, items: list[Any], default_per_page: int = 50) -> dict[str, Any]:
    """``items`` paged by ``?page=`` (1-based) and ``?per_page=`` (1..100) in the list envelope."""
    number = query_int(request, "page", 1, 1, 1_000_000)
    per_page = query_int(request, "per_page", default_per_page, 1, MAX_PER_PAGE)
    start = (number - 1) * per_page
    return {
        "items": items[start : start + per_page],
        "page": number,
        "per_page": per_page,
        "total": len(items),
        "next_page": number + 1 if start + per_page < len(items) else None,
    }


def health_route(service: str) -> Route:
    """``GET /<service>/health`` answering ``{"service": service, "status": "ok"}``."""

    def health(request: Request, state: DemoState) -> Response:
        return Response(200, {"service": service, "status": "ok"})

    return Route(f"/{service}/health", health, GET)
