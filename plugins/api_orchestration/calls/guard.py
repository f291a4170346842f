"""The resilience settings of one call site, and the admission request built from them once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from api_orchestration.calls.events import Listener
from api_orchestration.policy import BreakerPolicy, CachePolicy, RateLimit, RetryPolicy
from api_orchestration.resilience.admission import AdmissionRequest
from api_orchestration.state.base import StateBackend


class OnCircuitOpen(StrEnum):
    FAIL = "fail"  # raise CircuitOpenError (Airflow's task retries apply)
    DEFER = "defer"  # wait in the triggerer until half-open


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
    ``log_response``: successful bodies are logged (truncated, redacted) as error bodies are."""

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_circuit_open", OnCircuitOpen(self.on_circuit_open))

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
