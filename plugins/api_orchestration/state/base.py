"""The small interface every shared-state backend implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from api_orchestration.policy import BreakerPolicy, RateLimit
from api_orchestration.resilience.breaker import BreakerDecision

NO_WAIT_LIMIT = float("inf")


@dataclass(frozen=True)
class Admission:
    """The answer to "may this call go out now?".

    Granted: a limiter slot ``wait`` seconds from now is reserved and, with a breaker, ``breaker``
    is the permit to report the verdict with. Refused, by ``reason``: ``defer`` (the next slot is
    ``wait`` s away, more than the caller would sleep; nothing was reserved), or the breaker's
    ``open`` (``wait`` = time until half-open), ``busy`` (half-open, trials taken) or ``hold``
    (calls in flight could trip it: ask again in ``wait`` s).
    """

    granted: bool
    reason: str
    wait: float
    paused: bool = False
    breaker: BreakerDecision | None = None
    recorded: Transition | None = None  # what the verdict passed along with this admission did


@dataclass(frozen=True)
class Transition:
    """What a breaker verdict did: ``before`` and ``after`` states (equal when nothing changed)."""

    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class Verdict:
    """A finished call's outcome, to record in breaker ``key`` (see ``StateBackend.admit``)."""

    key: str
    policy: BreakerPolicy
    decision: BreakerDecision
    failed: bool


@dataclass(frozen=True)
class Batch:
    """The answer to ``StateBackend.admit_many``: ``granted`` admissions, in slot order; when fewer
    were granted than asked, ``refused`` is the answer each of the others got (one refusal stands
    for all: nothing changes between them within the one atomic operation). ``recorded`` says what
    each verdict did, in order."""

    granted: tuple[Admission, ...]
    refused: Admission | None
    recorded: tuple[Transition, ...] = ()


class StateBackend(abc.ABC):
    """Limiter and breaker state shared by every process that opens the same URL.

    Each method is one atomic operation on the store, decided on the store's clock. Any store
    failure raises :class:`~api_orchestration.errors.StateBackendError` (fail closed).
    """

    url: str

    def admit(
        self,
        limit_key: str | None,
        limit: RateLimit | None,
        breaker_key: str | None,
        breaker: BreakerPolicy | None,
        max_wait: float,
        lease_seconds: float,
        verdict: Verdict | None = None,
    ) -> Admission:
        """One atomic decision for one call: the breaker's permit (if ``breaker``) and the next
        limiter slot of ``limit_key`` (its ``Retry-After`` pause applies even without ``limit``),
        granted only together and only if the slot is at most ``max_wait`` seconds away.

        ``verdict``, the outcome of the caller's previous call, is recorded first, in the same
        round trip (``Admission.recorded`` says what it did). A batch of one (:meth:`admit_many`)."""
        batch = self.admit_many(
            1, limit_key, limit, breaker_key, breaker, max_wait, lease_seconds, (verdict,) if verdict else ()
        )
        admission = batch.granted[0] if batch.granted else batch.refused
        assert admission is not None
        return replace(admission, recorded=batch.recorded[0] if batch.recorded else None)

    @abc.abstractmethod
    def admit_many(
        self,
        count: int,
        limit_key: str | None,
        limit: RateLimit | None,
        breaker_key: str | None,
        breaker: BreakerPolicy | None,
        max_wait: float,
        lease_seconds: float,
        verdicts: Sequence[Verdict] = (),
    ) -> Batch:
        """``count`` admissions as :meth:`admit` describes them, made one after another and
        stopping at the first refusal, after recording ``verdicts`` in order: one atomic
        operation (one round trip for a batch of calls)."""

    def limiter_acquire(self, key: str, limit: RateLimit | None, max_wait: float) -> Admission:
        """Reserve the next slot for ``key`` if it is at most ``max_wait`` seconds away."""
        return self.admit(key, limit, None, None, max_wait, 0.0)

    def breaker_acquire(self, key: str, policy: BreakerPolicy, lease_seconds: float) -> BreakerDecision:
        """Ask the breaker alone whether a call may go out."""
        decision = self.admit(None, None, key, policy, NO_WAIT_LIMIT, lease_seconds).breaker
        assert decision is not None
        return decision

    @abc.abstractmethod
    def limiter_pause(self, key: str, seconds: float) -> float:
        """Pause ``key`` for every caller (a ``Retry-After``); returns the store time it ends."""

    @abc.abstractmethod
    def limiter_status(self, key: str) -> dict[str, Any] | None:
        """The key's limiter state, or None if it was never used."""

    @abc.abstractmethod
    def breaker_record(
        self, key: str, policy: BreakerPolicy, decision: BreakerDecision, failed: bool
    ) -> Transition:
        """Report the verdict of a call that ``decision`` allowed."""

    @abc.abstractmethod
    def breaker_status(self, key: str) -> dict[str, Any] | None:
        """The key's breaker state, or None if it was never used."""

    @abc.abstractmethod
    def breaker_reset(self, key: str) -> None:
        """Forget the key's breaker state (closed, empty window)."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Delete every key this backend owns (tests and resets)."""

    # -- read-only views and small records for the status page (api_orchestration.status) -------
    def snapshot(self) -> dict[str, Any]:
        """Every key's limiter and breaker state, read without changing anything (time does not
        advance a breaker here: an ``open`` one past ``opened_until`` half-opens on its next call).

        ``{"now": store time, "limiters": {key: limiter fields (as :meth:`limiter_status`, plus
        ``nth_latest``: the ``limit_permits``-th latest reserved slot when ``limit_burst > 1``)},
        "breakers": {key: breaker fields (as :meth:`breaker_status`)}}``."""
        raise NotImplementedError(f"{type(self).__name__} has no snapshot()")

    def saga_record(self, entry: dict[str, Any], keep: int = 100) -> None:
        """Append one saga outcome (a JSON-able dict) to the store's short list of recent ones,
        keeping the newest ``keep``."""
        raise NotImplementedError(f"{type(self).__name__} has no saga_record()")

    def saga_recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest recorded saga outcomes, newest first."""
        raise NotImplementedError(f"{type(self).__name__} has no saga_recent()")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
