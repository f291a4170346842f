"""The small interface every shared-state backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from api_orchestration.breaker import BreakerDecision
from api_orchestration.policy import BreakerPolicy, RateLimit
from api_orchestration.ratelimit import LimiterDecision


@dataclass(frozen=True)
class Transition:
    """What a breaker verdict did: ``before`` and ``after`` states (equal when nothing changed)."""

    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


class StateBackend(abc.ABC):
    """Limiter and breaker state shared by every process that opens the same URL.

    Each method is one atomic operation on the store, decided on the store's clock. Any store
    failure raises :class:`~api_orchestration.errors.StateBackendError` (fail closed).
    """

    url: str

    @abc.abstractmethod
    def limiter_acquire(self, key: str, limit: RateLimit | None, max_wait: float) -> LimiterDecision:
        """Reserve the next slot for ``key`` if it is at most ``max_wait`` seconds away."""

    @abc.abstractmethod
    def limiter_pause(self, key: str, seconds: float) -> float:
        """Pause ``key`` for every caller (a ``Retry-After``); returns the store time it ends."""

    @abc.abstractmethod
    def limiter_status(self, key: str) -> dict[str, Any] | None:
        """The key's limiter state, or None if it was never used."""

    @abc.abstractmethod
    def breaker_acquire(self, key: str, policy: BreakerPolicy, lease_seconds: float) -> BreakerDecision:
        """Ask whether a call may go out; a ``closed`` permit holds a lease for ``lease_seconds``."""

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

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
