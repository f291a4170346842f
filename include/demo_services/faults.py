"""Fault injection by path prefix, set over ``/admin/faults``; the server consults it per request.

A rule applies to every non-admin request whose path starts with its ``path`` (the longest
matching prefix wins). ``down`` answers 503 to everything; otherwise ``error_rate`` of requests
(drawn from ``random.Random(seed)``, one draw per request) answer ``status``, both *before* the
handler runs, so no effect happens. ``latency_ms`` sleeps *after* the handler ran, so a client
that times out leaves the effect unknown. ``Retry-After`` is sent on 429/503 when ``retry_after``
is set.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from demo_services.common import ServiceError, json_object
from demo_services.routing import Request, Response
from demo_services.state import DemoState

MAX_LATENCY_MS = 60_000
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_FIELDS = frozenset({"path", "error_rate", "status", "latency_ms", "retry_after", "down", "seed"})


def is_admin(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


@dataclass
class FaultRule:
    """One prefix rule and how often it matched and injected a failure."""

    path: str
    error_rate: float = 0.0
    status: int = 503
    latency_ms: float = 0.0
    retry_after: str | None = None
    down: bool = False
    seed: int | None = None
    matched: int = 0
    injected: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def as_dict(self) -> dict[str, Any]:
        keys = ("path", "error_rate", "status", "latency_ms", "retry_after", "down", "seed")
        return {key: getattr(self, key) for key in (*keys, "matched", "injected")}

    def failure(self, status: int, error: str, detail: str) -> Response:
        retry_after = self.retry_after if status in _RETRY_AFTER_STATUSES else None
        headers = {"Retry-After": retry_after} if retry_after else {}
        return Response(status, {"error": error, "detail": detail, "rule": self.path}, headers)


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one request: answer ``response`` instead of running it, or sleep afterwards."""

    response: Response | None = None
    latency: float = 0.0


class Faults:
    """The rules of one server, behind one lock (draws are serialised, so seeded counts repeat)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[str, FaultRule] = {}

    def reset(self) -> None:
        self.clear()

    def set(self, rule: FaultRule) -> None:
        """Add ``rule``, replacing any rule for the same prefix (and restarting its draws)."""
        with self._lock:
            self._rules[rule.path] = rule

    def clear(self, path: str | None = None) -> int:
        """Remove one rule (by prefix) or all of them; returns how many were removed."""
        with self._lock:
            if path is None:
                count = len(self._rules)
                self._rules.clear()
                return count
            return 1 if self._rules.pop(path, None) is not None else 0

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._rules[path].as_dict() for path in sorted(self._rules)]

    def check(self, path: str) -> FaultDecision | None:
        """The decision for a request to ``path``, or None when no rule applies."""
        if not self._rules or is_admin(path):
            return None
        with self._lock:
            matching = [prefix for prefix in self._rules if path.startswith(prefix)]
            if not matching:
                return None
            rule = self._rules[max(matching, key=len)]
            rule.matched += 1
            if rule.down:
                rule.injected += 1
                return FaultDecision(rule.failure(503, "service_down", f"{rule.path} is down"))
            if rule.error_rate > 0 and rule.rng.random() < rule.error_rate:
                rule.injected += 1
                detail = f"injected {rule.status} (error_rate {rule.error_rate})"
                return FaultDecision(rule.failure(rule.status, "fault_injected", detail))
            return FaultDecision(latency=rule.latency_ms / 1000) if rule.latency_ms else None


def parse_rule(body: dict[str, Any]) -> FaultRule:
    """A rule from a ``POST /admin/faults`` body; 400 naming the first bad field."""
    for name in body:
        if name not in _FIELDS:
            raise ServiceError(400, "invalid_field", f"unknown field {name!r}", field=name)
    path = body.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        detail = "'path' must be a path prefix starting with '/'"
        raise ServiceError(400, "invalid_field", detail, field="path")
    seed = body.get("seed")
    return FaultRule(
        path=path,
        error_rate=float(_number(body, "error_rate", 0.0, 0.0, 1.0)),
        status=int(_number(body, "status", 503, 400, 599, integer=True)),
        latency_ms=float(_number(body, "latency_ms", 0.0, 0.0, MAX_LATENCY_MS)),
        retry_after=_retry_after(body.get("retry_after")),
        down=_flag(body, "down"),
        seed=None if seed is None else int(_number(body, "seed", 0, -(2**63), 2**63, integer=True)),
    )


def _number(
    body: dict[str, Any], name: str, default: float, low: float, high: float, integer: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ServiceError(400, "invalid_field", f"{name!r} must be {kind} in {low}..{high}", field=name)
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ServiceError(400, "invalid_field", f"{name!r} must be true or false", field=name)
    return value


def _retry_after(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
        detail = "'retry_after' must be seconds or an HTTP date"
        raise ServiceError(400, "invalid_field", detail, field="retry_after")
    if isinstance(value, int | float) and value < 0:
        raise ServiceError(400, "invalid_field", "'retry_after' must be >= 0", field="retry_after")
    return str(value)


def faults_of(state: DemoState) -> Faults:
    return state.extension(Faults)


def admin_set_fault(request: Request, state: DemoState) -> Response:
    """``POST /admin/faults``: add or replace the rule for a prefix."""
    rule = parse_rule(json_object(request))
    faults_of(state).set(rule)
    return Response(201, {"rule": rule.as_dict()})


def admin_list_faults(request: Request, state: DemoState) -> Response:
    """``GET /admin/faults``: the rules, with their match and injection counts."""
    return Response(200, {"rules": faults_of(state).rules()})


def admin_clear_faults(request: Request, state: DemoState) -> Response:
    """``DELETE /admin/faults[?path=/prefix]``: remove one rule or all of them."""
    return Response(200, {"cleared": faults_of(state).clear(request.query.get("path") or None)})
