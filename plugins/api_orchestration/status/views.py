"""Rows for the status page and API, computed from a backend's typed :meth:`StateBackend.snapshot`.

Times are ISO 8601 UTC strings plus, where useful, seconds from the store's ``now`` (the store's
clock decides; the api-server's clock does not matter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from api_orchestration.resilience import limiter as rl
from api_orchestration.resilience.kinds import BreakerState
from api_orchestration.state.base import BreakerStatus, LimiterStatus, StateBackend

_LIMITER_FIELDS = [f.name for f in fields(rl.LimiterRecord)]


def iso(ts: float | None) -> str | None:
    """Unix seconds as ``2026-11-22T08:15:02.123Z`` (None for None or 0)."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(value: float) -> float:
    return round(max(value, 0.0), 3)


def breaker_view(b: BreakerStatus) -> dict[str, Any]:
    """One breaker: state, failure rate over its window, next half-open time, trials, calls in flight.

    The window restarts empty when the breaker opens or closes, so an open breaker shows no calls;
    ``since`` is when it entered its state. An open breaker past ``next_half_open_at`` half-opens
    on its next call (``half_open_due``)."""
    calls, failures = len(b.outcomes), b.outcomes.count("1")
    is_open = b.state == BreakerState.OPEN
    return {
        "key": b.key,
        "state": str(b.state),
        "failure_rate": round(failures / calls, 4) if calls else None,
        "calls_in_window": calls,
        "failures_in_window": failures,
        "next_half_open_at": iso(b.opened_until) if is_open else None,
        "next_half_open_in_seconds": _seconds(b.opened_until - b.now) if is_open else None,
        "half_open_due": is_open and b.now >= b.opened_until,
        "trials": (
            {"issued": b.trials_issued, "succeeded": b.trial_successes, "failed": b.trial_failures}
            if b.state == BreakerState.HALF_OPEN
            else None
        ),
        "in_flight": b.in_flight,
        "since": iso(b.changed_at),
        "generation": b.gen,
    }


@dataclass(frozen=True)
class _Limit:
    """The parts of a :class:`RateLimit` that ``resilience.limiter.next_slot`` reads, as stored."""

    permits: int
    window: float
    burst: int

    @property
    def interval(self) -> float:
        return self.window / self.permits


def limiter_view(status: LimiterStatus) -> dict[str, Any]:
    """One limiter: its policy (as last used), permits used in the current period, the next free
    permit, the last ``Retry-After`` pause, and the bulkhead's calls in flight.

    Periods are the enforced window (``per_seconds`` plus the margin) aligned to the epoch; a
    permit counts in the period its slot falls in. When callers are already queued into a later
    period the current one is full: ``permits_used`` is then ``permits``."""
    key, now = status.key, status.now
    rec = rl.LimiterRecord(**{name: getattr(status, name) for name in _LIMITER_FIELDS})
    limit = _Limit(rec.limit_permits, rec.limit_window, rec.limit_burst) if rec.limit_permits else None
    next_free = rl.next_slot(rec, limit, now, status.nth_latest)  # type: ignore[arg-type]
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
    window = {
        "permits": limit.permits if limit else None,
        "window_seconds": round(limit.window, 6) if limit else None,
        "burst": limit.burst if limit else None,
        "permits_used": used,
        "next_free_at": iso(max(next_free, now)),
        "next_free_in_seconds": _seconds(next_free - now),
    }
    return {
        "key": key,
        **window,  # the key's own (shortest) window, as before keys had several
        "paused": paused,  # by a 429's Retry-After, for every caller of the key
        "last_retry_after_seconds": rec.last_retry_after or None,
        "pause_until": iso(rec.paused_until),  # the end of the last pause (past once it is over)
        "granted_total": rec.granted,
        "in_flight": status.in_flight,
        "windows": [window] if limit else [],  # a multi-window key: each window (see limiter_views)
    }


_WINDOW_SUFFIX = re.compile(r"#[0-9.e+-]+s")  # resilience.admission.window_key


def limiter_views(limiters: dict[str, LimiterStatus]) -> list[dict[str, Any]]:
    """One row per limiter key, ordered by key; a key's longer windows (kept under ``key#<period>s``)
    are listed in its ``windows``, and its next free permit is the latest of its windows'."""
    rows = {key: limiter_view(status) for key, status in sorted(limiters.items())}
    out = []
    for key, row in rows.items():
        parent, sep, _ = key.rpartition("#")
        if sep and parent in rows and _WINDOW_SUFFIX.fullmatch(key[len(parent) :]):
            main, (window,) = rows[parent], row["windows"] or [None]
            if window is not None:
                main["windows"].append(window)
                if window["next_free_in_seconds"] > main["next_free_in_seconds"]:
                    main["next_free_at"] = window["next_free_at"]
                    main["next_free_in_seconds"] = window["next_free_in_seconds"]
            continue
        out.append(row)
    return out


def collect_status(backend: StateBackend, sagas: int = 20) -> dict[str, Any]:
    """Everything the page shows, from one snapshot of ``backend``, its recent saga outcomes and the
    last run of each sync stream."""
    snap = backend.snapshot()
    return {
        "now": iso(snap.now),
        "state_url": backend.safe_url,
        "breakers": [breaker_view(b) for _, b in sorted(snap.breakers.items())],
        "limiters": limiter_views(snap.limiters),
        "sagas": [{**s, "at": iso(s.get("at"))} for s in backend.saga_recent(sagas)] if sagas > 0 else [],
        "streams": [{**s, "at": iso(s.get("at"))} for s in backend.stream_latest()],
        "caches": cache_views(backend),
    }


def cache_views(backend: StateBackend) -> list[dict[str, Any]]:
    """The shared response cache: live entries and their bytes per key (the calls' limiter key)."""
    return [{"key": c.scope, "entries": c.entries, "bytes": c.bytes} for c in backend.cache_stats()]
