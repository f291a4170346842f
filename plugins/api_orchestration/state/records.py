"""Typed, read-only views of the store: the same fields from every backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from api_orchestration.resilience.kinds import BreakerState


@dataclass(frozen=True)
class LimiterStatus:
    """A limiter key's state (unix seconds of the store's clock). The ``limit_*`` fields are the
    policy last used; ``period_count`` counts grants whose slot falls in the epoch-aligned period
    starting at ``period_start``; ``nth_latest`` is the ``limit_permits``-th latest reserved slot
    (bursty keys); ``in_flight`` the bulkhead's live leases."""

    key: str
    now: float
    tat: float = 0.0
    last_slot: float = 0.0
    paused_until: float = 0.0
    last_retry_after: float = 0.0
    granted: int = 0
    leased: int = 0
    limit_permits: int = 0
    limit_window: float = 0.0
    limit_burst: int = 0
    period_start: float = 0.0
    period_count: int = 0
    nth_latest: float | None = None
    in_flight: int = 0


@dataclass(frozen=True)
class BreakerStatus:
    """A breaker key's state (unix seconds of the store's clock); ``in_flight``: live leases."""

    key: str
    now: float
    state: BreakerState = BreakerState.CLOSED
    gen: int = 0
    opened_until: float = 0.0
    half_open_since: float = 0.0
    trials_issued: int = 0
    trial_successes: int = 0
    trial_failures: int = 0
    outcomes: str = ""
    seq: int = 0
    changed_at: float = 0.0
    in_flight: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Every key's limiter and breaker state, read without changing anything (time does not advance
    a breaker here: an ``open`` one past ``opened_until`` half-opens on its next call)."""

    now: float
    limiters: dict[str, LimiterStatus] = field(default_factory=dict)
    breakers: dict[str, BreakerStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheStats:
    """One cache scope's live entries and their bytes (body plus headers)."""

    scope: str
    entries: int
    bytes: int


@dataclass(frozen=True)
class CachePut:
    """What storing a cache entry did: ``stored`` (False: larger than the scope's cap), how many
    entries were evicted to make room, and the scope's bytes afterwards."""

    stored: bool
    evicted: int
    total_bytes: int
