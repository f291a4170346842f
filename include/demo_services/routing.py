"""A tiny table-driven router: request/response values, routes and their lookup.

A route pattern is a path with ``<name>`` placeholders (one path segment) or ``<name:path>``
(the rest of the path, slashes included). Matched values are percent-decoded into
``Request.params``. A handler is ``handler(request, state) -> Response``; raising
:class:`ApiError` turns into a JSON error response.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from demo_services.state import DemoState

_PLACEHOLDER = re.compile(r"<(\w+)(?::(str|path))?>")
_CONVERTERS = {"str": "[^/]+", "path": ".*"}


@dataclass
class Request:
    """One parsed HTTP request; ``headers`` keys are lower-case, ``query`` keeps the last value."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    request_id: str = ""  # the server's id for this request, sent back as ``X-Request-Id``

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    def int_query(self, name: str, default: int, minimum: int | None = None) -> int:
        """Integer query parameter ``name``; 400 if it is not an integer or below ``minimum``."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {name!r} must be an integer") from None
        if minimum is not None and value < minimum:
            raise ApiError(400, f"query parameter {name!r} must be >= {minimum}")
        return value


@dataclass
class Response:
    """Status, JSON-serialisable body and extra headers; ``drop`` closes the connection unanswered."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class ApiError(Exception):
    """Raised by a handler to answer ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        return Response(self.status, {"error": self.message})


Handler = Callable[[Request, DemoState], Response]


@dataclass
class Route:
    """``pattern`` served by ``handler`` for ``methods`` (None: any method; GET implies HEAD).

    ``record=False`` keeps the route's calls out of the call log (health and admin endpoints).
    """

    pattern: str
    handler: Handler
    methods: frozenset[str] | None = None
    record: bool = True
    regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.methods is not None:
            methods = {m.upper() for m in self.methods}
            if "GET" in methods:
                methods.add("HEAD")
            self.methods = frozenset(methods)
        self.regex = re.compile(_compile(self.pattern))

    def allows(self, method: str) -> bool:
        return self.methods is None or method in self.methods


def _compile(pattern: str) -> str:
    parts, pos = [], 0
    for match in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[pos : match.start()]))
        parts.append(f"(?P<{match[1]}>{_CONVERTERS[match[2] or 'str']})")
        pos = match.end()
    parts.append(re.escape(pattern[pos:]))
    return "".join(parts)


def _not_found(request: Request, state: DemoState) -> Response:
    return Response(404, {"error": "no route", "path": request.path})


_NOT_FOUND = Route("/<path:path>", _not_found)


class Router:
    """Ordered route table; the first route whose pattern matches the whole path wins."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: list[Route] = list(routes)

    def add(self, route: Route) -> Route:
        self.routes.append(route)
        return route

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method path`` and its decoded params.

        No matching path gives a recorded 404 route; a path matched only for other methods
        gives a 405 route (with ``Allow``) that records like the route it matched.
        """
        allowed: set[str] = set()
        matched: Route | None = None
        for route in self.routes:
            match = route.regex.fullmatch(path)
            if match is None:
                continue
            if route.allows(method):
                return route, {k: unquote(v) for k, v in match.groupdict().items()}
            matched = matched or route
            allowed |= route.methods or set()
        if matched is None:
            return _NOT_FOUND, {}
        return _method_not_allowed(sorted(allowed), matched.record), {}


def _method_not_allowed(allowed: list[str], record: bool) -> Route:
    def handler(request: Request, state: DemoState) -> Response:
        body = {"error": "method not allowed", "path": request.path, "allowed": allowed}
        return Response(405, body, {"Allow": ", ".join(allowed)})

    return Route("/<path:path>", handler, record=record)
