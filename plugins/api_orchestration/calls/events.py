"""What a guarded call reports as it goes: events, published to listeners.

The attempt flow publishes; logging and metrics are two listeners (:class:`LogListener`,
:class:`MetricsListener`); a test attaches a :class:`RecordingListener` and asserts on what it saw.
A listener that raises is logged and skipped: observing a call must never break it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from api_orchestration import metrics

logger = logging.getLogger(__name__)


class Next(StrEnum):
    """What the flow does after an attempt."""

    DONE = "done"  # a success: the call returns
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class AttemptFinished:
    """One attempt with its outcome (``status``, or ``error`` when no response came) and what follows.
    ``waits`` are what the attempt waited for before it went out, as ``(seconds, why)``."""

    method: str
    url: str  # redacted
    limit_key: str
    number: int
    max_attempts: int
    status: int | None
    error: str | None
    elapsed: float
    waits: tuple[tuple[float, str], ...]
    next: Next
    delay: float = 0.0  # before the retry
    why: str = ""  # "backoff" or "Retry-After"
    unkeyed: bool = False  # given up only because a POST/PATCH without a key is not retried
    request_id: str | None = None  # the server's id for the request (X-Request-Id, ...)
    body: str | None = None  # a redacted snippet of an error's body (a success's with log_response)


class CacheResult(StrEnum):
    HIT = "hit"  # served from the shared cache: no call, no permit
    REVALIDATED = "revalidated"  # a 304 refreshed the stored entry
    STORED = "stored"
    NOT_STORED = "not stored"


@dataclass(frozen=True)
class CacheUsed:
    """The shared response cache served, refreshed, stored or declined a response of ``scope``.
    ``age``: seconds since the entry was stored (a hit); ``detail``: why not stored, or evictions."""

    method: str
    url: str  # redacted
    scope: str
    result: CacheResult
    age: float = 0.0
    fresh_for: float = 0.0
    size: int = 0
    detail: str = ""


@dataclass(frozen=True)
class TokenRefused:
    """The API answered 401 to the OAuth2 token of ``token_key``'s connection: a new token is
    fetched (or read, when another worker already did) and the attempt sent again."""

    limit_key: str
    token_key: str
    attempt: int


@dataclass(frozen=True)
class Granted:
    """An admission let a call out ``wait`` seconds from now (a trial call when ``trial``)."""

    limit_key: str
    breaker_key: str
    wait: float
    trial: bool


@dataclass(frozen=True)
class Refused:
    """An admission was refused (``reason``: a :class:`~api_orchestration.resilience.kinds.Refusal`)."""

    limit_key: str
    breaker_key: str
    reason: str
    wait: float


@dataclass(frozen=True)
class Deferred:
    """The next step is ``seconds`` away, longer than the caller sleeps: the task defers to the
    triggerer and resumes at attempt ``attempt``."""

    limit_key: str
    seconds: float
    why: str
    attempt: int


@dataclass(frozen=True)
class BreakerTransition:
    key: str
    before: str
    after: str


@dataclass(frozen=True)
class KeyPaused:
    """A 429's ``Retry-After`` paused the limiter key for every caller."""

    key: str
    seconds: float


@dataclass(frozen=True)
class SlotMissed:
    """A call reached its send later than its slot allows; ``times`` new slots did not help."""

    key: str
    times: int


@dataclass(frozen=True)
class VerdictNotRecorded:
    """The store failed while recording the verdict of ``calls`` call(s) that were made. The calls'
    results stand; their breaker leases and bulkhead places expire."""

    key: str
    calls: int
    error: str


Event = (
    AttemptFinished
    | CacheUsed
    | Granted
    | Refused
    | Deferred
    | BreakerTransition
    | KeyPaused
    | SlotMissed
    | VerdictNotRecorded
    | TokenRefused
)


class Listener(Protocol):
    def __call__(self, event: Event) -> None: ...


class Events:
    """Publishes each event to every listener, in order."""

    def __init__(self, listeners: Iterable[Listener]) -> None:
        self.listeners = tuple(listeners)

    def publish(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("api_orchestration listener %r failed on %r", listener, event)


def default_events(log: Any, extra: Iterable[Listener] = ()) -> Events:
    """Logging to ``log``, metrics, then ``extra`` listeners (a guard's own)."""
    return Events([LogListener(log), MetricsListener(), *extra])


class RecordingListener:
    """Keeps every event (for tests and diagnostics)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def attempt_line(e: AttemptFinished) -> str:
    """The one log line of an attempt."""
    result = str(e.status) if e.status is not None else (e.error or "error").split(":", 1)[0]
    line = f"{e.method} {e.url} attempt {e.number}/{e.max_attempts} -> {result} in {e.elapsed * 1000:.1f} ms"
    parts = [f"{seconds:.3f} s {why}" for seconds, why in e.waits if seconds > 0.0005]
    line += f"; waited {', '.join(parts)}" if parts else ""
    line += f"; request id {e.request_id}" if e.request_id else ""
    return line + (f"; body: {e.body}" if e.body else "")


def cache_line(e: CacheUsed) -> str:
    """The log line of a cache event."""
    what = {
        CacheResult.HIT: f"served from the shared cache {e.scope!r} (stored {e.age:.1f} s ago, fresh "
        f"{e.fresh_for:.1f} s more): no call made",
        CacheResult.REVALIDATED: f"304 Not Modified: cache entry refreshed (fresh {e.fresh_for:.1f} s)",
        CacheResult.STORED: f"stored in the shared cache {e.scope!r} ({e.size} bytes, fresh {e.fresh_for:.1f} s)",
        CacheResult.NOT_STORED: f"not stored in the shared cache {e.scope!r}",
    }[e.result]
    return f"{e.method} {e.url} {what}" + (f": {e.detail}" if e.detail else "")


class LogListener:
    """One line per attempt (info, warning when retried, error when given up; with the server's
    request id and, for errors or with ``log_response``, a redacted body snippet); one info line per
    cache hit, store, 304 refresh or refusal to store; breaker transitions, trial calls and lost
    verdicts as warnings."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter | Any = None) -> None:
        self.log = log or logging.getLogger("api_orchestration.calls")

    def __call__(self, event: Event) -> None:
        log = self.log
        if isinstance(event, AttemptFinished):
            line = attempt_line(event)
            if event.next == Next.DONE:
                log.info("%s", line)
            elif event.next == Next.RETRY:
                log.warning("%s; retrying in %.3f s (%s)", line, event.delay, event.why)
            else:
                reason = (
                    f" ({event.method} without an idempotency key is not retried)" if event.unkeyed else ""
                )
                log.error("%s; giving up%s%s", line, reason, f": {event.error}" if event.error else "")
        elif isinstance(event, CacheUsed):
            log.info("%s", cache_line(event))
        elif isinstance(event, BreakerTransition):
            log.warning("circuit %r: %s -> %s", event.key, event.before, event.after)
        elif isinstance(event, Granted) and event.trial:
            log.warning("circuit %r is half-open: this is a trial call", event.breaker_key)
        elif isinstance(event, TokenRefused):
            log.warning(
                "%r answered 401 to the OAuth2 token of %r: sending attempt %d again with a new token",
                event.limit_key, event.token_key.removesuffix(":token"), event.attempt,
            )  # fmt: skip
        elif isinstance(event, Deferred):
            log.info("deferring %.2f s to the triggerer: %s", event.seconds, event.why)
        elif isinstance(event, SlotMissed):
            log.warning("limiter %r: slot missed %d times in a row, sending anyway", event.key, event.times)
        elif isinstance(event, VerdictNotRecorded):
            log.error(
                "VERDICT NOT RECORDED: the state store failed after %d call(s) on %r were made; their "
                "results stand, their leases expire: %s",
                event.calls,
                event.key,
                event.error,
            )


class MetricsListener:
    """Counters and timers through Airflow's metrics (see :mod:`api_orchestration.metrics`)."""

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptFinished):
            metrics.attempt(event.limit_key, event.elapsed)
            if event.next == Next.RETRY:
                metrics.retry(event.limit_key)
            else:
                metrics.call_done(event.limit_key, ok=event.next == Next.DONE)
        elif isinstance(event, Granted):
            metrics.limiter_wait(event.limit_key, event.wait)
            if event.trial:
                metrics.breaker_trial(event.breaker_key)
        elif isinstance(event, Refused):
            if event.reason == "defer":
                metrics.limiter_deferred(event.limit_key)
            elif event.reason in ("open", "busy"):
                metrics.breaker_rejected(event.breaker_key)
        elif isinstance(event, BreakerTransition):
            metrics.breaker_transition(event.key, event.before, event.after)
        elif isinstance(event, KeyPaused):
            metrics.limiter_paused(event.key)
        elif isinstance(event, CacheUsed):
            metrics.incr(f"cache.{event.result.name.lower()}", event.scope)
