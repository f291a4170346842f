"""The interface every shared-state store implements, and the one place driver errors are wrapped."""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from api_orchestration.errors import StateBackendError
from api_orchestration.policy import BreakerPolicy, RateLimit
from api_orchestration.redaction import redact_url
from api_orchestration.resilience.admission import (
    NO_WAIT_LIMIT,
    Admission,
    AdmissionRequest,
    Batch,
    Transition,
    Verdict,
)
from api_orchestration.resilience.breaker import BreakerDecision
from api_orchestration.resilience.policy_claims import CLAIM_TTL, ClaimResult
from api_orchestration.resilience.tokens import TokenDecision
from api_orchestration.state.records import (
    BreakerStatus,
    CachePut,
    CacheStats,
    LimiterStatus,
    Snapshot,
)

__all__ = [
    "NO_WAIT_LIMIT",
    "Admission",
    "AdmissionRequest",
    "Batch",
    "BreakerStatus",
    "CachePut",
    "CacheStats",
    "LimiterStatus",
    "Snapshot",
    "StateBackend",
    "Transition",
    "Verdict",
]

# The store operations: every driver error they raise becomes a StateBackendError (fail closed).
OPERATIONS = (
    "admit_many",
    "record",
    "limiter_pause",
    "limiter_status",
    "breaker_status",
    "breaker_reset",
    "snapshot",
    "clear",
    "saga_record",
    "saga_recent",
    "token_lease",
    "token_store",
    "token_release",
    "policy_claims",
    "cache_get",
    "cache_put",
    "cache_stats",
)


def _wrapped(operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def guarded(self: StateBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except self.driver_errors as exc:
            raise StateBackendError(self.safe_url, operation, exc) from exc

    return guarded


class StateBackend(abc.ABC):
    """Limiter, bulkhead and breaker state shared by every process that opens the same URL.

    Each operation is atomic on the store and decided on the store's clock. Subclasses list their
    driver's errors in ``driver_errors``; every operation in ``OPERATIONS`` is wrapped (here, once)
    so that any of them becomes :class:`~api_orchestration.errors.StateBackendError`.
    """

    url: str
    driver_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    local_clock: bool = False  # decisions are made on this host's time.time() (an Admission's decided_at)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in OPERATIONS:
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__isabstractmethod__", False):
                setattr(cls, name, _wrapped(name, method))

    @property
    def safe_url(self) -> str:
        """The URL with every secret-looking part redacted, for messages and the status page."""
        return redact_url(self.url)

    # -- admissions ------------------------------------------------------------------------------
    def admit(self, request: AdmissionRequest, verdict: Verdict | None = None) -> Admission:
        """One call's admission (a batch of one, see :meth:`admit_many`). ``verdict``, the caller's
        previous call, is recorded first in the same round trip (``Admission.recorded``)."""
        batch = self.admit_many(1, request, (verdict,) if verdict else ())
        admission = batch.granted[0] if batch.granted else batch.refused
        assert admission is not None
        if batch.recorded:
            return replace(admission, recorded=batch.recorded[0])
        return admission

    @abc.abstractmethod
    def admit_many(self, count: int, request: AdmissionRequest, verdicts: Sequence[Verdict] = ()) -> Batch:
        """``count`` admissions as :func:`~api_orchestration.resilience.admission.admit_batch` decides
        them, after recording ``verdicts`` in order: one atomic operation, one round trip."""

    @abc.abstractmethod
    def record(self, verdict: Verdict) -> Transition:
        """Record a finished call's verdict on its own."""

    def limiter_acquire(self, key: str, limit: RateLimit | None, max_wait: float) -> Admission:
        """Reserve the next slot for ``key`` if it is at most ``max_wait`` seconds away."""
        return self.admit(AdmissionRequest(key, limit, max_wait=max_wait, lease_seconds=0.0))

    def breaker_acquire(self, key: str, policy: BreakerPolicy, lease_seconds: float) -> BreakerDecision:
        """Ask the breaker alone whether a call may go out."""
        request = AdmissionRequest(None, breaker_key=key, breaker=policy, lease_seconds=lease_seconds)
        decision = self.admit(request).breaker
        assert decision is not None
        return decision

    def breaker_record(
        self, key: str, policy: BreakerPolicy, decision: BreakerDecision, failed: bool
    ) -> Transition:
        """Report the verdict of a call that ``decision`` (from :meth:`breaker_acquire`) allowed."""
        request = AdmissionRequest(None, breaker_key=key, breaker=policy)
        return self.record(Verdict(request, decision, "", failed))

    @abc.abstractmethod
    def limiter_pause(self, key: str, seconds: float) -> float:
        """Pause ``key`` for every caller (a ``Retry-After``); returns the store time it ends."""

    # -- reads and resets ------------------------------------------------------------------------
    @abc.abstractmethod
    def limiter_status(self, key: str) -> LimiterStatus | None:
        """The key's limiter state, or None if it was never used."""

    @abc.abstractmethod
    def breaker_status(self, key: str) -> BreakerStatus | None:
        """The key's breaker state, or None if it was never used."""

    @abc.abstractmethod
    def breaker_reset(self, key: str) -> None:
        """Close the key's breaker with an empty window."""

    @abc.abstractmethod
    def snapshot(self) -> Snapshot:
        """Every key's limiter and breaker state, read without changing anything."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Delete every key this backend owns (tests and resets)."""

    # -- one key, one policy (see api_orchestration.resilience.policy_claims) ---------------------
    def policy_claim(
        self, kind: str, name: str, policy: str, owner: str, ttl: float = CLAIM_TTL
    ) -> ClaimResult:
        """Claim limiter (``kind`` ``limiter``) or breaker key ``name`` for ``policy`` from ``owner``."""
        return self.policy_claims([(kind, name, policy)], owner, ttl)[0]

    @abc.abstractmethod
    def policy_claims(
        self, claims: Sequence[tuple[str, str, str]], owner: str, ttl: float = CLAIM_TTL
    ) -> list[ClaimResult]:
        """Claim each ``(kind, name, policy)`` for ``owner`` (see :meth:`policy_claim`), in one atomic
        operation: one round trip for all the keys of a task. A conflicting claim changes nothing."""

    # -- shared OAuth2 tokens (see api_orchestration.resilience.tokens) ----------------------------
    @abc.abstractmethod
    def token_lease(
        self, name: str, holder: str, lease_seconds: float, margin: float, reject: str | None = None
    ) -> TokenDecision:
        """The token of ``name`` (``use``), or the single-flight lease to fetch one (``fetch``), or
        how long another holder's fetch may still take (``wait``); one atomic operation."""

    @abc.abstractmethod
    def token_store(
        self, name: str, holder: str, entry: str, expires_at: float | None, fingerprint: str
    ) -> None:
        """Keep a fetched token (``entry``, secret: never shown) and free ``holder``'s lease."""

    @abc.abstractmethod
    def token_release(self, name: str, holder: str) -> None:
        """Free ``holder``'s lease after a failed fetch (the stored entry stays)."""

    # -- the saga log (see api_orchestration.state.sagas) ------------------------------------------
    @abc.abstractmethod
    def saga_record(self, entry: dict[str, Any], keep: int = 100) -> None:
        """Append one saga outcome (JSON-able) to the store's short list, keeping the newest ``keep``."""

    @abc.abstractmethod
    def saga_recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest recorded saga outcomes, newest first."""

    # -- the response cache (see api_orchestration.resilience.http_cache) -----------------------------
    @abc.abstractmethod
    def cache_get(self, scope: str, key: str) -> dict[str, Any] | None:
        """The entry stored under ``key`` in ``scope`` (a JSON-able dict), None if none is kept."""

    @abc.abstractmethod
    def cache_put(
        self,
        scope: str,
        key: str,
        entry: dict[str, Any],
        size: int,
        keep_seconds: float,
        max_total_bytes: int,
    ) -> CachePut:
        """Store ``entry`` (``size`` bytes) for ``keep_seconds``, replacing the key's previous one; the
        scope's expired entries are dropped, then the ones nearest expiry evicted until the scope
        holds at most ``max_total_bytes``. One atomic operation."""

    @abc.abstractmethod
    def cache_stats(self) -> list[CacheStats]:
        """Every cache scope's live entries and bytes, by scope."""

    # -- the last run of each sync stream (see api_orchestration.operators.sync) ---------------------
    @abc.abstractmethod
    def stream_record(self, key: str, entry: dict[str, Any]) -> None:
        """Keep ``entry`` (JSON-able) as the last run of the sync stream ``key`` (stream[partition])."""

    @abc.abstractmethod
    def stream_latest(self) -> list[dict[str, Any]]:
        """The last run of every sync stream, ordered by key."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
