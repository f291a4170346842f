"""The resilience settings of one call site, and the admission request built from them once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from api_orchestration.calls.events import Listener
from api_orchestration.errors import PolicyConflictError
from api_orchestration.policy import BreakerPolicy, CachePolicy, RateLimit, RetryPolicy
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
    rate_limit: RateLimit | None = None
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

    def claim_policies(self, owner: str) -> None:
        """Store this call site's policies with their keys; raise :class:`PolicyConflictError` when
        another place uses one of the keys with another policy (see ``resilience.policy_claims``)."""
        claims = []
        if self.rate_limit is not None or self.max_in_flight is not None:
            claims.append(
                ("limiter", self.limit_key, f"{self.rate_limit!r}, max_in_flight={self.max_in_flight}")
            )
        if self.breaker is not None and self.breaker_key:
            claims.append(("breaker", self.breaker_key, repr(self.breaker)))
        for kind, key, policy in claims:
            result = self.backend.policy_claim(kind, key, policy, owner)
            if not result.ok:
                raise PolicyConflictError(kind, key, policy, owner, result.policy, result.owner)

    def admission_request(self, lease: float) -> AdmissionRequest:
        """What every admission of a call under this guard asks for (``lease``: see
        :func:`lease_seconds`); a driver builds it once."""
        breaker_key = self.breaker_key if self.breaker is not None else None
        return AdmissionRequest(
            self.limit_key,
            self.rate_limit,
            breaker_key,
            self.breaker,
            self.max_in_flight,
            self.max_sleep,
            lease,
        )
