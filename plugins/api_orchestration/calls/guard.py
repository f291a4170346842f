"""The resilience settings of one call site, and the admission request built from them once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from api_orchestration.calls.events import Listener
from api_orchestration.errors import PolicyConflictError
from api_orchestration.policy import (
    BreakerPolicy,
    CachePolicy,
    RateLimit,
    RetryPolicy,
    describe_rate_limit,
    policy_text,
    rate_limits,
    windows_of,
)
from api_orchestration.resilience.admission import AdmissionRequest
from api_orchestration.state.base import StateBackend


class OnCircuitOpen(StrEnum):
    FAIL = "fail"  # raise CircuitOpenError (Airflow's task retries apply)
    DEFER = "defer"  # wait in the triggerer until half-open


class TokenSource(Protocol):
    """Where a call gets its ``Authorization`` (``calls.tokens.SharedTokens``): ``authorize(reject)``
    returns an object with ``header`` and ``fingerprint``; ``reject`` is a refused token's fingerprint."""

    token_key: str

    def authorize(self, reject: str | None = None) -> Any: ...


def lease_seconds(timeout: float | tuple[float, float] | None) -> float:
    """How long a call is counted in flight (breaker and bulkhead leases): its whole timeout
    (connect + read; 60 s when none), plus 30 s."""
    seconds = float(sum(timeout)) if isinstance(timeout, tuple) else float(timeout or 60.0)
    return seconds + 30.0


@dataclass(frozen=True)
class Guard:
    """Where a call's limits live and how it behaves under them.

    ``limit_key`` names the limiter (and the bulkhead, ``max_in_flight``), ``breaker_key`` the
    breaker; waits up to ``max_sleep`` seconds are slept, longer ones raise ``DeferralNeeded``.
    ``listeners`` see every event of the call besides the log and metrics listeners. ``cache``:
    responses shared through the store under the scope ``limit_key`` (see :class:`CachePolicy`);
    ``log_response``: successful bodies are logged (truncated, redacted) as error bodies are.
    ``tokens``: the OAuth2 connection's shared tokens (each attempt sends ``Authorization: Bearer``)."""

    backend: StateBackend
    limit_key: str
    rate_limit: RateLimit | Sequence[RateLimit] | None = None  # a list: several windows, all held
    breaker_key: str = ""
    breaker: BreakerPolicy | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_sleep: float = 10.0
    on_circuit_open: str = OnCircuitOpen.FAIL
    max_in_flight: int | None = None
    listeners: Sequence[Listener] = ()
    cache: CachePolicy | None = None
    log_response: bool = False
    tokens: TokenSource | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_circuit_open", OnCircuitOpen(self.on_circuit_open))
        object.__setattr__(
            self, "rate_limit", rate_limits(self.rate_limit, f"limiter key {self.limit_key!r}")
        )

    @property
    def windows(self) -> tuple[RateLimit, ...]:
        """The rate limit's windows, shortest first (empty: no rate limit)."""
        return windows_of(self.rate_limit)  # type: ignore[arg-type]

    @property
    def shortest_window(self) -> RateLimit | None:
        windows = self.windows
        return windows[0] if windows else None

    def policy_claims(self) -> list[tuple[str, str, str]]:
        """``(kind, key, policy)`` of each key this guard uses with a policy: the limiter key with its
        windows and bulkhead, the breaker key with its breaker."""
        claims = []
        if self.rate_limit is not None or self.max_in_flight is not None:
            policy = f"{describe_rate_limit(self.rate_limit)}, max_in_flight={self.max_in_flight}"  # type: ignore[arg-type]
            claims.append(("limiter", self.limit_key, policy))
        if self.breaker is not None and self.breaker_key:
            claims.append(("breaker", self.breaker_key, policy_text(self.breaker)))
        return claims

    def claim_policies(self, owner: str, done: set[tuple[str, str, str]] | None = None) -> None:
        """Store this call site's policies with their keys, in one store round trip; raise
        :class:`PolicyConflictError` when another place uses one of the keys with another policy
        (see ``resilience.policy_claims``). ``done``: claims already made (by this task execution),
        not made again; the new ones are added to it."""
        claims = [c for c in self.policy_claims() if done is None or c not in done]
        if not claims:
            return
        for (kind, key, policy), result in zip(
            claims, self.backend.policy_claims(claims, owner), strict=True
        ):
            if not result.ok:
                raise PolicyConflictError(kind, key, policy, owner, result.policy, result.owner)
        if done is not None:
            done.update(claims)

    def with_keys(self, limit_key: str, breaker_key: str) -> Guard:
        """This guard's policies and settings under other keys (itself when they are its own)."""
        if limit_key == self.limit_key and breaker_key == self.breaker_key:
            return self
        return replace(self, limit_key=limit_key, breaker_key=breaker_key)

    def admission_request(self, lease: float) -> AdmissionRequest:
        """What every admission of a call under this guard asks for (``lease``: see
        :func:`lease_seconds`); a driver builds it once."""
        breaker_key = self.breaker_key if self.breaker is not None else None
        windows = self.windows
        return AdmissionRequest(
            self.limit_key,
            windows[0] if windows else None,
            breaker_key,
            self.breaker,
            self.max_in_flight,
            self.max_sleep,
            lease,
            windows[1:],
        )


class KeyedGuards:
    """The guards of a call site whose limiter and breaker keys are chosen per call (bulk's per-item
    ``rate_limit_key``/``breaker_key`` templates): one :class:`Guard` per key pair, ``base``'s
    policies under that pair, built on first use and shared by every later call of the pair (so
    calls of one key share one limiter and breaker; those of other keys are decided apart).

    Every per-item guard is made here: ``prepare`` runs once on each new guard before any call uses
    it (e.g. ``lambda g: g.claim_policies(owner)``), and an error it raises is raised by :meth:`get`
    for every call of that pair. Thread-safe (the threads engine asks from many threads)."""

    def __init__(self, base: Guard, prepare: Callable[[Guard], None] | None = None) -> None:
        self.base, self.prepare = base, prepare
        self._lock = threading.Lock()
        self._guards: dict[tuple[str, str], Guard | Exception] = {}

    def get(self, limit_key: str | None = None, breaker_key: str | None = None) -> Guard:
        """The guard of ``limit_key`` and ``breaker_key`` (None: the base guard's key)."""
        pair = (limit_key or self.base.limit_key, breaker_key or self.base.breaker_key)
        found = self._guards.get(pair)
        if found is None:
            with self._lock:
                found = self._guards.get(pair)
                if found is None:
                    guard = self.base.with_keys(*pair)
                    try:
                        if self.prepare is not None:
                            self.prepare(guard)
                        found = guard
                    except Exception as exc:  # raised for every call of the pair
                        found = exc
                    self._guards[pair] = found
        if isinstance(found, Exception):
            raise found
        return found

    def __len__(self) -> int:
        """How many key pairs have been used."""
        return len(self._guards)
