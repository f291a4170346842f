"""Reference data with HTTP caching headers (RFC 9111, RFC 9110 §8.8.3 and §13.1.2).

``GET /reference/<name>``, each dataset with its own caching policy:

| name | headers |
|---|---|
| ``countries`` | ``Cache-Control: max-age=N`` (``?max_age=N``, default 60) and ``ETag`` |
| ``currencies`` | ``Cache-Control: no-cache`` (store, but revalidate every time) and ``ETag`` |
| ``rates`` | ``Cache-Control: no-store`` (never store; the values change on every call), no validator |
| ``holidays`` | ``Expires`` (an HTTP date, ``?max_age=N`` from now, default 60) and ``ETag``, no ``Cache-Control`` |

A request whose ``If-None-Match`` lists the current entity tag (weak comparison, ``*`` matches)
answers **304 Not Modified** without a body, with the same ``ETag`` and caching headers. The
calls, 304s included, are counted per path at ``/admin/calls``. ``POST /admin/reference/<name>``
changes a dataset (a new version, so a new ``ETag``); ``/admin/reset`` restores them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from email.utils import formatdate
from typing import Any

from demo_services.common import POST, ServiceError, query_int
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

GET_ONLY = frozenset({"GET"})
_BASE: dict[str, list[dict[str, Any]]] = {
    "countries": [
        {"code": "DE", "name": "Germany"},
        {"code": "FR", "name": "France"},
        {"code": "JP", "name": "Japan"},
    ],
    "currencies": [{"code": "EUR", "digits": 2}, {"code": "JPY", "digits": 0}, {"code": "USD", "digits": 2}],
    "holidays": [
        {"date": "2026-01-01", "name": "New Year's Day"},
        {"date": "2026-12-25", "name": "Christmas Day"},
    ],
}


class Datasets:
    """Dataset versions (bumped by the admin endpoint) and the rates counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = dict.fromkeys(_BASE, 1)
        self._rates_served = 0

    def reset(self) -> None:
        with self._lock:
            self._versions = dict.fromkeys(_BASE, 1)
            self._rates_served = 0

    def bump(self, name: str) -> int:
        with self._lock:
            self._versions[name] += 1
            return self._versions[name]

    def current(self, name: str) -> tuple[dict[str, Any], str | None]:
        """The dataset's body and strong entity tag (None for ``rates``, which changes every call)."""
        with self._lock:
            if name == "rates":
                self._rates_served += 1
                served = self._rates_served
                return {
                    "name": "rates",
                    "version": served,
                    "items": {"EURUSD": round(1.08 + served / 10_000, 4)},
                }, None
            version = self._versions[name]
        body = {"name": name, "version": version, "items": _BASE[name]}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return body, f'"{name}-v{version}-{digest}"'


def matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2: does ``If-None-Match`` list ``etag`` (weak comparison) or ``*``?"""
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def reference(request: Request, state: DemoState) -> Response:
    """``GET /reference/<name>``: see the module docstring."""
    name = request.params["name"]
    if name not in (*_BASE, "rates"):
        raise ServiceError(
            404, "unknown_dataset", f"no reference dataset {name!r}", datasets=[*_BASE, "rates"]
        )
    body, etag = state.extension(Datasets).current(name)
    headers: dict[str, str] = {}
    if name == "countries":
        headers["Cache-Control"] = f"max-age={query_int(request, 'max_age', 60, 0, 86400)}"
    elif name == "currencies":
        headers["Cache-Control"] = "no-cache"
    elif name == "rates":
        headers["Cache-Control"] = "no-store"
    else:
        max_age = query_int(request, "max_age", 60, 0, 86400)
        headers["Expires"] = formatdate(time.time() + max_age, usegmt=True)
    if etag is not None:
        headers["ETag"] = etag
        if matches(request.headers.get("if-none-match", ""), etag):
            return Response(304, None, headers)
    return Response(200, body, headers)


def admin_change(request: Request, state: DemoState) -> Response:
    """``POST /admin/reference/<name>``: a new version of the dataset (a new ``ETag``)."""
    name = request.params["name"]
    if name not in _BASE:
        raise ServiceError(404, "unknown_dataset", f"no versioned dataset {name!r}", datasets=list(_BASE))
    return Response(200, {"name": name, "version": state.extension(Datasets).bump(name)})


ROUTES: tuple[Route, ...] = (Route("/reference/<name>", reference, GET_ONLY),)
ADMIN_ROUTES: tuple[Route, ...] = (Route("/admin/reference/<name>", admin_change, POST, record=False),)
