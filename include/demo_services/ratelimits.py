"""Rate limits enforced at the server, per tenant, with several windows, announced in response headers.

``ANY /limits/<style>/<tenant>/<path>`` answers 200 ``{"tenant", "style", "path"}`` while the
tenant has budget in every window of its policy (default: 10 per 1 s and 100 per 60 s; fixed
windows aligned to the epoch, so a window resets at a whole multiple of its length). An
admission is atomic over all windows; a refused request spends nothing. ``style`` picks the
headers, sent on every answer:

- ``github`` (docs.github.com, "Rate limits for the REST API"): ``x-ratelimit-limit``,
  ``-remaining``, ``-used``, ``-reset`` (UTC epoch seconds) and ``-resource`` (``core``), for the
  window with the least budget left. Exhausted: the policy's ``status`` (403 by default, or 429)
  with ``x-ratelimit-remaining: 0`` and no ``retry-after``. The optional **secondary limit**
  (``{"limit", "seconds", "retry_after"}``: more than ``limit`` requests in a sliding ``seconds``)
  answers 403 with ``retry-after`` for ``retry_after`` seconds while the primary budget remains.
- ``ietf`` (draft-ietf-httpapi-ratelimit-headers-08 and later, structured fields):
  ``RateLimit-Policy: "second";q=10;w=1, "minute";q=100;w=60`` and ``RateLimit: "second";r=9;t=1,
  "minute";r=99;t=42``. Exhausted: 429 with ``Retry-After``.
- ``legacy`` (drafts 03-06): ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset``
  (seconds) for the tightest window and ``RateLimit-Policy: 10;w=1, 100;w=60``. Exhausted: 429
  with ``Retry-After``.

``POST /admin/ratelimits {"tenant"?, "windows": [{"name", "limit", "seconds"}], "status"?,
"secondary"?}`` sets a tenant's policy (without ``tenant``: the default for tenants without one)
and restarts its counters; ``seconds`` may be a fraction (short windows for tests). ``GET
/admin/ratelimits`` reports, per tenant, the policy, admitted requests, refusals per window
(``breaches``), the most requests admitted in one window of each (``max_per_window``) and
secondary refusals.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from demo_services.common import GET, POST, ServiceError, json_object
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

STYLES = ("github", "ietf", "legacy")


@dataclass(frozen=True)
class Window:
    name: str
    limit: int
    seconds: float  # whole seconds as real APIs document them; fractions for short tests


@dataclass(frozen=True)
class Secondary:
    limit: int
    seconds: float
    retry_after: int


@dataclass(frozen=True)
class Policy:
    windows: tuple[Window, ...] = (Window("second", 10, 1), Window("minute", 100, 60))
    status: int = 403  # GitHub's exhausted primary limit: 403 (or 429)
    secondary: Secondary | None = None

    def as_dict(self) -> dict[str, Any]:
        secondary = self.secondary
        return {
            "windows": [vars(w) for w in self.windows],
            "status": self.status,
            "secondary": None if secondary is None else vars(secondary),
        }


@dataclass
class _Tenant:
    policy: Policy
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # window -> (index, used)
    recent: deque[float] = field(default_factory=deque)  # admitted, for the secondary limit
    blocked_until: float = 0.0
    admitted: int = 0
    breaches: Counter[str] = field(default_factory=Counter)
    peaks: Counter[str] = field(default_factory=Counter)  # window -> most requests admitted in one window
    secondary_refusals: int = 0


@dataclass(frozen=True)
class WindowState:
    window: Window
    used: int
    index: int  # which window since the epoch
    reset_at: float  # epoch seconds

    @property
    def remaining(self) -> int:
        return max(self.window.limit - self.used, 0)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    windows: tuple[WindowState, ...]
    secondary_retry_after: int | None = None


class Limits:
    """Per-tenant counters behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._default = Policy()
        self._policies: dict[str, Policy] = {}
        self._tenants: dict[str, _Tenant] = {}

    def reset(self) -> None:
        with self._lock:
            self._default = Policy()
            self._policies.clear()
            self._tenants.clear()

    def configure(self, tenant: str | None, policy: Policy) -> None:
        with self._lock:
            if tenant is None:
                self._default = policy
                self._tenants = {t: s for t, s in self._tenants.items() if t in self._policies}
            else:
                self._policies[tenant] = policy
                self._tenants.pop(tenant, None)

    def admit(self, tenant: str, now: float) -> tuple[Decision, Policy]:
        with self._lock:
            state = self._tenants.get(tenant)
            if state is None:
                state = self._tenants[tenant] = _Tenant(self._policies.get(tenant, self._default))
            policy = state.policy
            windows = []
            for window in policy.windows:
                index = int(now // window.seconds)
                seen_index, used = state.counts.get(window.name, (index, 0))
                windows.append(
                    WindowState(
                        window, used if seen_index == index else 0, index, (index + 1) * window.seconds
                    )
                )
            secondary = policy.secondary
            if secondary is not None:
                while state.recent and state.recent[0] <= now - secondary.seconds:
                    state.recent.popleft()
                if state.blocked_until <= now and len(state.recent) >= secondary.limit:
                    state.blocked_until = now + secondary.retry_after
                if state.blocked_until > now:
                    state.secondary_refusals += 1
                    wait = max(1, math.ceil(state.blocked_until - now))
                    return Decision(False, tuple(windows), wait), policy
            exhausted = [w for w in windows if w.remaining <= 0]
            if exhausted:
                state.breaches.update(w.window.name for w in exhausted)
                return Decision(False, tuple(windows)), policy
            windows = [WindowState(w.window, w.used + 1, w.index, w.reset_at) for w in windows]
            for w in windows:
                state.counts[w.window.name] = (w.index, w.used)
                state.peaks[w.window.name] = max(state.peaks[w.window.name], w.used)
            state.admitted += 1
            state.recent.append(now)
            return Decision(True, tuple(windows)), policy

    def report(self) -> dict[str, Any]:
        with self._lock:
            tenants = {
                name: {
                    "policy": state.policy.as_dict(),
                    "admitted": state.admitted,
                    "breaches": dict(state.breaches),
                    "max_per_window": dict(state.peaks),
                    "secondary_refusals": state.secondary_refusals,
                }
                for name, state in sorted(self._tenants.items())
            }
            return {"default_policy": self._default.as_dict(), "tenants": tenants}


def _tightest(windows: tuple[WindowState, ...]) -> WindowState:
    return min(windows, key=lambda w: (w.remaining, -w.reset_at))


def _github_headers(windows: tuple[WindowState, ...]) -> dict[str, str]:
    w = _tightest(windows)
    return {
        "x-ratelimit-limit": str(w.window.limit),
        "x-ratelimit-remaining": str(w.remaining),
        "x-ratelimit-used": str(w.used),
        "x-ratelimit-reset": str(math.ceil(w.reset_at)),
        "x-ratelimit-resource": "core",
    }


def _seconds_until(reset_at: float, now: float) -> int:
    return max(math.ceil(reset_at - now), 0)


def _ietf_headers(windows: tuple[WindowState, ...], now: float) -> dict[str, str]:
    policy = ", ".join(f'"{w.window.name}";q={w.window.limit};w={w.window.seconds:g}' for w in windows)
    current = ", ".join(
        f'"{w.window.name}";r={w.remaining};t={_seconds_until(w.reset_at, now)}' for w in windows
    )
    return {"RateLimit-Policy": policy, "RateLimit": current}


def _legacy_headers(windows: tuple[WindowState, ...], now: float) -> dict[str, str]:
    w = _tightest(windows)
    return {
        "RateLimit-Limit": str(w.window.limit),
        "RateLimit-Remaining": str(w.remaining),
        "RateLimit-Reset": str(_seconds_until(w.reset_at, now)),
        "RateLimit-Policy": ", ".join(f"{x.window.limit};w={x.window.seconds:g}" for x in windows),
    }


def limited(request: Request, state: DemoState) -> Response:
    """``ANY /limits/<style>/<tenant>/<path>``: see the module docstring."""
    style, tenant = request.params["style"], request.params["tenant"]
    if style not in STYLES:
        raise ServiceError(404, "unknown_style", f"no rate-limit style {style!r}", styles=list(STYLES))
    now = time.time()
    decision, policy = state.extension(Limits).admit(tenant, now)
    if style == "github":
        headers = _github_headers(decision.windows)
    elif style == "ietf":
        headers = _ietf_headers(decision.windows, now)
    else:
        headers = _legacy_headers(decision.windows, now)
    if decision.secondary_retry_after is not None:
        detail = f"You have exceeded a secondary rate limit for tenant {tenant!r}; wait before retrying."
        headers["retry-after"] = str(decision.secondary_retry_after)
        return Response(403, {"error": "secondary_rate_limit", "detail": detail}, headers)
    if not decision.admitted:
        exhausted = [w for w in decision.windows if w.remaining <= 0]
        names = ", ".join(w.window.name for w in exhausted)
        detail = f"API rate limit exceeded for tenant {tenant!r} (window {names})"
        if style == "github":
            return Response(policy.status, {"error": "rate_limited", "detail": detail}, headers)
        headers["Retry-After"] = str(max(_seconds_until(w.reset_at, now) for w in exhausted))
        return Response(429, {"error": "rate_limited", "detail": detail}, headers)
    return Response(200, {"tenant": tenant, "style": style, "path": request.params["rest"]}, headers)


def _positive(value: Any, name: str, integer: bool = True) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ServiceError(400, "invalid_field", f"{name!r} must be {kind}", field=name)
    return value


def parse_policy(body: dict[str, Any]) -> Policy:
    """A policy from a ``POST /admin/ratelimits`` body; 400 naming the first bad field."""
    raw_windows = body.get("windows")
    if not isinstance(raw_windows, list) or not raw_windows:
        raise ServiceError(400, "invalid_field", "'windows' must be a non-empty list", field="windows")
    windows = []
    for i, raw in enumerate(raw_windows):
        if not isinstance(raw, dict):
            raise ServiceError(400, "invalid_field", f"windows[{i}] must be an object", field=f"windows[{i}]")
        name = raw.get("name") or f"w{raw.get('seconds')}"
        if not isinstance(name, str) or '"' in name:
            raise ServiceError(
                400, "invalid_field", f"windows[{i}].name must be a string", field=f"windows[{i}].name"
            )
        windows.append(
            Window(
                name,
                _positive(raw.get("limit"), f"windows[{i}].limit"),
                _positive(raw.get("seconds"), f"windows[{i}].seconds", integer=False),
            )
        )
    if len({w.name for w in windows}) != len(windows):
        raise ServiceError(400, "invalid_field", "window names must be unique", field="windows")
    status = body.get("status", 403)
    if status not in (403, 429):
        raise ServiceError(400, "invalid_field", "'status' must be 403 or 429", field="status")
    secondary = None
    raw_secondary = body.get("secondary")
    if raw_secondary is not None:
        if not isinstance(raw_secondary, dict):
            raise ServiceError(400, "invalid_field", "'secondary' must be an object", field="secondary")
        secondary = Secondary(
            _positive(raw_secondary.get("limit"), "secondary.limit"),
            _positive(raw_secondary.get("seconds"), "secondary.seconds", integer=False),
            _positive(raw_secondary.get("retry_after", 60), "secondary.retry_after"),
        )
    return Policy(tuple(windows), status, secondary)


def admin_set_limits(request: Request, state: DemoState) -> Response:
    """``POST /admin/ratelimits``: set a tenant's (or the default) policy."""
    body = json_object(request)
    tenant = body.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant or "/" in tenant):
        raise ServiceError(400, "invalid_field", "'tenant' must be a path segment", field="tenant")
    unknown = set(body) - {"tenant", "windows", "status", "secondary"}
    if unknown:
        name = sorted(unknown)[0]
        raise ServiceError(400, "invalid_field", f"unknown field {name!r}", field=name)
    policy = parse_policy(body)
    state.extension(Limits).configure(tenant, policy)
    return Response(201, {"tenant": tenant, "policy": policy.as_dict()})


def admin_limits(request: Request, state: DemoState) -> Response:
    """``GET /admin/ratelimits``: policies and counters per tenant."""
    return Response(200, state.extension(Limits).report())


ROUTES: tuple[Route, ...] = (Route("/limits/<style>/<tenant>/<rest:path>", limited),)
ADMIN_ROUTES: tuple[Route, ...] = (
    Route("/admin/ratelimits", admin_limits, GET, record=False),
    Route("/admin/ratelimits", admin_set_limits, POST, record=False),
)
