"""Rows for the status page and API, computed from a backend's raw :meth:`StateBackend.snapshot`.

Times are ISO 8601 UTC strings plus, where useful, seconds from the store's ``now`` (the store's
clock decides; the api-server's clock does not matter).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from api_orchestration.resilience import limiter as rl
from api_orchestration.state.base import StateBackend

_LIMITER_FIELDS = [f.name for f in fields(rl.LimiterRecord)]


def iso(ts: float | None) -> str | None:
    """Unix seconds as ``2026-11-22T08:15:02.123Z`` (None for None or 0)."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(value: float) -> float:
    return round(max(value, 0.0), 3)


def breaker_view(key: str, raw: dict[str, Any], now: float) -> dict[str, Any]:
    """One breaker: state, failure rate over its window, next half-open time, trials, calls in flight.

    The window restarts empty when the breaker opens or closes, so an open breaker shows no calls;
    ``since`` is when it entered its state. An open breaker past ``next_half_open_at`` half-opens
    on its next call (``half_open_due``)."""
    outcomes: str = raw.get("outcomes") or ""
    calls, failures = len(outcomes), outcomes.count("1")
    state = raw.get("state") or "closed"
    opened_until = float(raw.get("opened_until") or 0.0)
    is_open = state == "open"
    return {
        "key": key,
        "state": state,
        "failure_rate": round(failures / calls, 4) if calls else None,
        "calls_in_window": calls,
        "failures_in_window": failures,
        "next_half_open_at": iso(opened_until) if is_open else None,
        "next_half_open_in_seconds": _seconds(opened_until - now) if is_open else None,
        "half_open_due": is_open and now >= opened_until,
        "trials": (
            {
                "issued": int(raw.get("trials_issued") or 0),
                "succeeded": int(raw.get("trial_successes") or 0),
                "failed": int(raw.get("trial_failures") or 0),
            }
            if state == "half_open"
            else None
        ),
        "in_flight": int(raw.get("in_flight") or 0),
        "since": iso(raw.get("changed_at")),
        "generation": int(raw.get("gen") or 0),
    }


@dataclass(frozen=True)
class _Limit:
    """The parts of a :class:`RateLimit` that ``ratelimit.next_slot`` reads, as stored."""

    permits: int
    window: float
    burst: int

    @property
    def interval(self) -> float:
        return self.window / self.permits


def limiter_view(key: str, raw: dict[str, Any], now: float) -> dict[str, Any]:
    """One limiter: its policy (as last used), permits used in the current period, the next free
    permit, and the last ``Retry-After`` pause.

    Periods are the enforced window (``per_seconds`` plus the margin) aligned to the epoch; a
    permit counts in the period its slot falls in. When callers are already queued into a later
    period the current one is full: ``permits_used`` is then ``permits``."""
    rec = rl.LimiterRecord(**{name: raw.get(name) or 0 for name in _LIMITER_FIELDS})
    limit = _Limit(rec.limit_permits, rec.limit_window, rec.limit_burst) if rec.limit_permits else None
    next_free = rl.next_slot(rec, limit, now, raw.get("nth_latest"))  # type: ignore[arg-type]
    used = None
    if limit is not None:
        start = rec.period_start
        if start <= now < start + limit.window:
            used = rec.period_count
        elif start > now:
            used = limit.permits
        else:
            used = 0
    paused = rec.paused_until > now
    return {
        "key": key,
        "permits": limit.permits if limit else None,
        "window_seconds": round(limit.window, 6) if limit else None,
        "burst": limit.burst if limit else None,
        "permits_used": used,
        "next_free_at": iso(max(next_free, now)),
        "next_free_in_seconds": _seconds(next_free - now),
        "paused": paused,  # by a 429's Retry-After, for every caller of the key
        "last_retry_after_seconds": rec.last_retry_after or None,
        "pause_until": iso(rec.paused_until),  # the end of the last pause (past once it is over)
        "granted_total": rec.granted,
    }


def redact_state_url(url: str) -> str:
    """The state URL without a password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    netloc = f"{parts.username or ''}:***@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def collect_status(backend: StateBackend, sagas: int = 20) -> dict[str, Any]:
    """Everything the page shows, from one snapshot of ``backend`` and its recent saga outcomes."""
    snap = backend.snapshot()
    now = snap["now"]
    return {
        "now": iso(now),
        "state_url": redact_state_url(backend.url),
        "breakers": [breaker_view(k, raw, now) for k, raw in sorted(snap["breakers"].items())],
        "limiters": [limiter_view(k, raw, now) for k, raw in sorted(snap["limiters"].items())],
        "sagas": [{**s, "at": iso(s.get("at"))} for s in backend.saga_recent(sagas)] if sagas > 0 else [],
    }
