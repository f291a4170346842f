"""Rate-limit decisions: a reserving GCRA plus, for bursts, a sliding log of the last ``permits`` slots.

Every decision is one atomic operation on the shared store (together with the breaker's, see
``StateBackend.admit``). The SQLite backend runs :func:`next_slot` and :func:`reserve` inside a
``BEGIN IMMEDIATE`` transaction; the Redis backend runs the same algorithm as a Lua script
(``state/lua/``) against the Redis server's clock.

A granted permit is a *reserved slot*: the caller sleeps until the slot, then calls. Slots are
handed out in FIFO order, so no process starves. A permit whose wait would exceed ``max_wait`` is
not reserved (the caller defers and asks again later), because a caller that comes back late
must not spend a slot in the past.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from api_orchestration.policy import RateLimit


@dataclass
class LimiterRecord:
    """Per-key limiter state (unix seconds of the store's clock)."""

    tat: float = 0.0
    last_slot: float = 0.0
    paused_until: float = 0.0
    last_retry_after: float = 0.0
    granted: int = 0
    leased: int = 0  # bulkhead leases handed out (their ids)
    # for the status page (never read by the algorithm): the policy last used, and the grants
    # whose slot falls in the period [period_start, period_start + limit_window) (epoch-aligned)
    limit_permits: int = 0
    limit_window: float = 0.0
    limit_burst: int = 0
    period_start: float = 0.0
    period_count: int = 0


def next_slot(rec: LimiterRecord, limit: RateLimit | None, now: float, nth_latest: float | None) -> float:
    """The earliest slot a new caller may take. ``nth_latest`` is the ``permits``-th most recent
    reserved slot (only needed, and only stored, when ``burst > 1``)."""
    slot = max(now, rec.paused_until)
    if limit is None:
        return slot
    tolerance = (limit.burst - 1) * limit.interval
    slot = max(slot, rec.tat - tolerance, rec.last_slot)
    if limit.burst > 1 and nth_latest is not None:
        slot = max(slot, nth_latest + limit.window)
    return slot


def reserve(rec: LimiterRecord, limit: RateLimit, slot: float) -> None:
    """Book ``slot`` (from :func:`next_slot`) for the caller; mutates ``rec``."""
    rec.tat = max(rec.tat, slot) + limit.interval
    rec.last_slot = slot
    rec.granted += 1
    start = math.floor(slot / limit.window) * limit.window
    rec.period_count = rec.period_count + 1 if rec.period_start == start else 1
    rec.period_start = start
    rec.limit_permits, rec.limit_window, rec.limit_burst = limit.permits, limit.window, limit.burst


def pause(rec: LimiterRecord, now: float, seconds: float) -> float:
    """Pause the key for ``seconds`` (a ``Retry-After``); pauses only ever extend."""
    rec.paused_until = max(rec.paused_until, now + seconds)
    rec.last_retry_after = seconds
    return rec.paused_until
