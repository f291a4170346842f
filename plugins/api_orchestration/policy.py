"""Resilience policies: frozen, validated at construction (so at DAG parse time)."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

import jmespath

from api_orchestration.errors import ConfigurationError

DEFAULT_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _check(owner: str, param: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigurationError(owner, param, value, expected)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RateLimit:
    """At most ``permits`` calls in any window of ``per_seconds``, shared by every process using the key.

    ``burst`` is how many of those calls may start back to back; the default (1) spaces calls evenly,
    ``per_seconds / permits`` apart. ``margin`` is the fraction of the period kept free to absorb the
    jitter between a permit being granted and the request reaching the server (so the API's own
    window counter never sees ``permits + 1``).
    """

    permits: int
    per_seconds: float = 1.0
    burst: int = 1
    margin: float = 0.02

    def __post_init__(self) -> None:
        o = "RateLimit"
        _check(
            o,
            "permits",
            self.permits,
            isinstance(self.permits, int) and self.permits >= 1,
            "must be an integer >= 1",
        )
        _check(
            o,
            "per_seconds",
            self.per_seconds,
            _is_number(self.per_seconds) and self.per_seconds > 0,
            "must be a number > 0",
        )
        _check(
            o,
            "burst",
            self.burst,
            isinstance(self.burst, int) and 1 <= self.burst <= self.permits,
            f"must be an integer from 1 to permits ({self.permits})",
        )
        _check(
            o,
            "margin",
            self.margin,
            _is_number(self.margin) and 0 <= self.margin < 0.5,
            "must be a fraction from 0 to 0.5",
        )

    @property
    def window(self) -> float:
        """The enforced window: the period stretched by the safety margin."""
        return self.per_seconds * (1.0 + self.margin)

    @property
    def interval(self) -> float:
        """Minimum spacing between calls outside a burst."""
        return self.window / self.permits


RateLimits = RateLimit | tuple[RateLimit, ...]  # one window, or several on one key (see rate_limits)


def rate_limits(value: object, owner: str = "rate_limit", param: str = "rate_limit") -> RateLimits | None:
    """``value`` (None, a :class:`RateLimit` or a list of them: several windows of one key, all held
    at once, e.g. ``[RateLimit(10, 1.0), RateLimit(5000, 3600.0, burst=5000)]``) in its one form:
    None, a RateLimit, or a tuple of at least two ordered by period (shortest first). Raises
    :class:`ConfigurationError` naming ``owner`` and ``param`` on anything else."""
    if value is None or isinstance(value, RateLimit):
        return value
    if not isinstance(value, list | tuple) or not value or not all(isinstance(w, RateLimit) for w in value):
        raise ConfigurationError(
            owner,
            param,
            value,
            "must be a RateLimit(permits, per_seconds, burst) or a non-empty list of them",
        )
    windows = tuple(sorted(value, key=lambda w: (w.per_seconds, w.permits)))
    periods = [w.per_seconds for w in windows]
    if len(set(periods)) != len(periods):
        raise ConfigurationError(
            owner, param, value, "has two windows with the same per_seconds: keep the smaller permits only"
        )
    return windows[0] if len(windows) == 1 else windows


def policy_text(policy: object) -> str:
    """A policy as stored with its key and compared as text: ``RateLimit(permits=10, per_seconds=1, ...)``
    with every number in one form (``10`` and ``10.0`` are the same policy, from Python or a spec)."""
    if not dataclasses.is_dataclass(policy):
        return repr(policy)

    def shown(value: object) -> str:
        if _is_number(value):
            number = float(value)  # type: ignore[arg-type]
            return str(int(number)) if number.is_integer() else repr(number)
        return repr(value)

    values = ", ".join(f"{f.name}={shown(getattr(policy, f.name))}" for f in dataclasses.fields(policy))
    return f"{type(policy).__name__}({values})"


def describe_rate_limit(value: RateLimits | None) -> str:
    """The policy as stored with its key: ``RateLimit(...)`` or ``[RateLimit(...), ...]``."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(policy_text, value)) + "]"
    return policy_text(value)


def windows_of(value: RateLimits | None) -> tuple[RateLimit, ...]:
    """The windows of a normalised rate limit (see :func:`rate_limits`), shortest first."""
    if value is None:
        return ()
    return (value,) if isinstance(value, RateLimit) else value


@dataclass(frozen=True)
class BreakerPolicy:
    """Circuit breaker over a count-based sliding window, shared by every process using the key.

    Opens when at least ``min_calls`` calls are in the window and the failure rate reaches
    ``failure_rate``; stays open ``open_seconds``; then lets exactly ``half_open_calls`` trial calls
    through across all workers and, once they have all reported, opens again if their failure rate
    reaches ``failure_rate``, else closes. A half-open state whose verdicts are not all in within
    ``half_open_timeout`` seconds (a trial caller died) opens again.
    Calls slower than ``slow_call_seconds`` (if set) count as failures.
    """

    failure_rate: float = 0.5
    window_size: int = 20
    min_calls: int = 10
    open_seconds: float = 30.0
    half_open_calls: int = 1
    slow_call_seconds: float | None = None
    half_open_timeout: float = 120.0

    def __post_init__(self) -> None:
        o = "BreakerPolicy"
        _check(
            o,
            "failure_rate",
            self.failure_rate,
            _is_number(self.failure_rate) and 0 < self.failure_rate <= 1,
            "must be a fraction in (0, 1]",
        )
        _check(
            o,
            "window_size",
            self.window_size,
            isinstance(self.window_size, int) and 1 <= self.window_size <= 1000,
            "must be an integer from 1 to 1000",
        )
        _check(
            o,
            "min_calls",
            self.min_calls,
            isinstance(self.min_calls, int) and 1 <= self.min_calls <= self.window_size,
            f"must be an integer from 1 to window_size ({self.window_size})",
        )
        _check(
            o,
            "open_seconds",
            self.open_seconds,
            _is_number(self.open_seconds) and self.open_seconds > 0,
            "must be a number of seconds > 0",
        )
        _check(
            o,
            "half_open_calls",
            self.half_open_calls,
            isinstance(self.half_open_calls, int) and self.half_open_calls >= 1,
            "must be an integer >= 1",
        )
        _check(
            o,
            "slow_call_seconds",
            self.slow_call_seconds,
            self.slow_call_seconds is None
            or (_is_number(self.slow_call_seconds) and self.slow_call_seconds > 0),
            "must be None or a number of seconds > 0",
        )
        _check(
            o,
            "half_open_timeout",
            self.half_open_timeout,
            _is_number(self.half_open_timeout) and self.half_open_timeout > 0,
            "must be a number of seconds > 0",
        )

    def trips(self, outcomes: str) -> bool:
        """Whether a window of outcomes ('1' failure, '0' success, newest last) opens the breaker."""
        window = outcomes[-self.window_size :]
        return len(window) >= self.min_calls and window.count("1") >= self.failure_rate * len(window)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries inside one task try: exponential backoff with a cap and full jitter.

    Attempt ``n`` (1-based) waits a uniform random time in ``[0, min(max_delay, base_delay *
    multiplier ** (n - 1))]``. A ``Retry-After`` header overrides that delay (up to
    ``max_retry_after``). 4xx other than 408 and 429 are never retried.
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)
    retry_transport_errors: bool = True
    retry_timeouts: bool = True
    respect_retry_after: bool = True
    max_retry_after: float = 600.0

    def __post_init__(self) -> None:
        o = "RetryPolicy"
        _check(
            o,
            "max_attempts",
            self.max_attempts,
            isinstance(self.max_attempts, int) and self.max_attempts >= 1,
            "must be an integer >= 1",
        )
        _check(
            o,
            "base_delay",
            self.base_delay,
            _is_number(self.base_delay) and self.base_delay >= 0,
            "must be a number of seconds >= 0",
        )
        _check(
            o,
            "max_delay",
            self.max_delay,
            _is_number(self.max_delay) and self.max_delay >= self.base_delay,
            f"must be a number of seconds >= base_delay ({self.base_delay})",
        )
        _check(
            o,
            "multiplier",
            self.multiplier,
            _is_number(self.multiplier) and self.multiplier >= 1,
            "must be a number >= 1",
        )
        _check(
            o,
            "max_retry_after",
            self.max_retry_after,
            _is_number(self.max_retry_after) and self.max_retry_after >= 0,
            "must be a number of seconds >= 0",
        )
        statuses = frozenset(self.retry_statuses)
        bad = sorted(s for s in statuses if not (isinstance(s, int) and (s in (408, 429) or 500 <= s <= 599)))
        _check(
            o,
            "retry_statuses",
            sorted(statuses),
            not bad,
            f"may hold only 408, 429 and 5xx codes (4xx are never retried); remove {bad}",
        )
        object.__setattr__(self, "retry_statuses", statuses)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before attempt ``attempt + 1``."""
        cap = min(self.max_delay, self.base_delay * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0.0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class CompensationRetry:
    """How long a saga's compensation (``undo_<step>``) keeps trying before the saga is declared
    NOT FULLY UNDONE: Airflow task retries with exponential backoff, so an outage of minutes (a
    deploy, a failover) does not leave an order charged.

    Try ``n`` (of ``retries + 1``) waits ``delay * multiplier**(n-1)`` to twice that (Airflow's
    deterministic jitter), capped at ``max_delay``. The default keeps trying for 8.5 to 10.5 minutes
    (waits 5, 10, 20, 40, 80, 120, 120, 120 s, each up to twice as long below the cap); each try
    also retries inside the task with the step's :class:`RetryPolicy`.
    """

    retries: int = 8
    delay: float = 5.0
    multiplier: float = 2.0
    max_delay: float = 120.0

    def __post_init__(self) -> None:
        o = "CompensationRetry"
        _check(
            o,
            "retries",
            self.retries,
            isinstance(self.retries, int) and not isinstance(self.retries, bool) and 0 <= self.retries <= 100,
            "must be an integer from 0 to 100",
        )
        _check(o, "delay", self.delay, _is_number(self.delay) and self.delay >= 0, "must be seconds >= 0")
        _check(
            o,
            "multiplier",
            self.multiplier,
            _is_number(self.multiplier) and self.multiplier >= 1,
            "must be a number >= 1 (1: a constant delay)",
        )
        _check(
            o,
            "max_delay",
            self.max_delay,
            _is_number(self.max_delay) and self.max_delay >= self.delay,
            f"must be seconds >= delay ({self.delay})",
        )

    def waits(self) -> list[float]:
        """The shortest wait before each retry, in seconds (Airflow may wait up to twice as long,
        never more than ``max_delay``)."""
        return [min(self.max_delay, self.delay * self.multiplier**n) for n in range(self.retries)]

    def task_kwargs(self) -> dict[str, object]:
        """``retries``, ``retry_delay``, ``retry_exponential_backoff`` and ``max_retry_delay`` for a task."""
        from datetime import timedelta

        return {
            "retries": self.retries,
            "retry_delay": timedelta(seconds=self.delay),
            "retry_exponential_backoff": self.multiplier if self.multiplier != 1 else 0,
            "max_retry_delay": timedelta(seconds=self.max_delay),
        }


def _jmespath_problem(expression: object) -> str | None:
    if not isinstance(expression, str) or not expression.strip():
        return "must be a non-empty JMESPath string"
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        return f"is not a valid JMESPath expression ({str(exc).splitlines()[0]})"
    return None


@dataclass(frozen=True)
class Poll:
    """Poll an async job until done: the call submits it, then its status URL is polled (GETs
    through the same limiter, breaker and retries) until ``success`` or ``failure`` holds.

    ``success`` and ``failure`` are JMESPath over the status response (JSON); ``status`` is JMESPath
    over the submit response giving the status URL (default: its ``Location`` header); ``result`` is
    JMESPath over the final status giving a URL to fetch the result from (default: the final status
    is the result). Polls are ``Retry-After`` apart when the status response says so, else
    ``interval`` seconds; the job fails with its last status ``timeout`` seconds after the submit.
    """

    success: str
    failure: str | None = None
    status: str | None = None
    result: str | None = None
    interval: float = 5.0
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        o = "Poll"
        for name in ("success", "failure", "status", "result"):
            value = getattr(self, name)
            if value is None and name != "success":
                continue
            problem = _jmespath_problem(value)
            _check(o, name, value, problem is None, problem or "")
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            _check(o, name, value, _is_number(value) and value > 0, "must be a number of seconds > 0")


def allowed_failures(tolerate: float, total: int) -> float:
    """How many of ``total`` items may fail: ``tolerate`` is a count (>= 1) or a fraction (< 1)."""
    return tolerate if tolerate >= 1 else tolerate * total


CACHE_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class CachePolicy:
    """A response cache shared by every worker through the state store (see :mod:`.resilience.http_cache`).

    A response to one of ``methods`` is stored for at most ``ttl`` seconds (less when its
    ``Cache-Control``/``Expires`` says so; ``no-store`` is never stored, ``no-cache`` is stored but
    revalidated before every use); a stored response with an ``ETag``/``Last-Modified`` stays
    ``ttl`` seconds longer to be revalidated (a 304 refreshes it without a body). ``key`` is a
    template for the entry's key (default: the method and full URL). An entry larger than
    ``max_entry_bytes`` is not stored; the entries of one cache scope (the call's limiter key)
    hold at most ``max_total_bytes``, the ones nearest expiry evicted first.
    """

    ttl: float
    key: str | None = None
    methods: tuple[str, ...] = CACHE_METHODS
    max_entry_bytes: int = 1_000_000
    max_total_bytes: int = 64_000_000

    def __post_init__(self) -> None:
        o = "CachePolicy"
        _check(o, "ttl", self.ttl, _is_number(self.ttl) and self.ttl > 0, "must be a number of seconds > 0")
        _check(
            o, "key", self.key, self.key is None or (isinstance(self.key, str) and self.key.strip() != ""),
            "must be None (the method and URL) or a non-empty (templated) string",
        )  # fmt: skip
        methods = (self.methods,) if isinstance(self.methods, str) else self.methods
        ok = isinstance(methods, tuple | list | frozenset | set) and len(methods) > 0
        upper = tuple(str(m).upper() for m in methods) if ok else ()
        _check(
            o, "methods", self.methods, ok and all(m in CACHE_METHODS for m in upper),
            "must be a non-empty list of GET and HEAD (other methods change things: their responses "
            "are not reusable)",
        )  # fmt: skip
        object.__setattr__(self, "methods", tuple(dict.fromkeys(upper)))
        _check(
            o, "max_entry_bytes", self.max_entry_bytes,
            isinstance(self.max_entry_bytes, int) and not isinstance(self.max_entry_bytes, bool)
            and self.max_entry_bytes >= 1, "must be an integer >= 1",
        )  # fmt: skip
        _check(
            o, "max_total_bytes", self.max_total_bytes,
            isinstance(self.max_total_bytes, int) and not isinstance(self.max_total_bytes, bool)
            and self.max_total_bytes >= self.max_entry_bytes,
            f"must be an integer >= max_entry_bytes ({self.max_entry_bytes})",
        )  # fmt: skip
