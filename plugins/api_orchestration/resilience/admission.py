"""One admission: the limiter's slot, the bulkhead's place and the breaker's permit, decided together.

:func:`admit_batch` is the whole decision for ``count`` calls, on records the store has read; the
SQLite store calls it inside its transaction, the Redis store runs its Lua port
(``state/lua/admit_many.lua``), and a property test runs both on the same random scenarios.
:func:`apply_verdict` records a finished call. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from api_orchestration.policy import BreakerPolicy, RateLimit, RateLimits, rate_limits, windows_of
from api_orchestration.resilience import breaker as brk
from api_orchestration.resilience import limiter as rl
from api_orchestration.resilience.kinds import GRANTED, Refusal

NO_WAIT_LIMIT = math.inf
FULL_SECONDS = 0.02  # how long a caller refused by a full bulkhead waits before asking again


@dataclass(frozen=True)
class AdmissionRequest:
    """What every admission of one call site asks for, built once (see ``calls.guard.Guard``).

    ``max_in_flight``, the bulkhead, caps the calls in flight under ``limit_key`` across all
    workers (leases expire after ``lease_seconds``). ``max_wait``: a limiter slot further away than
    this is not reserved (the caller defers). ``more_windows``: the key's longer windows besides
    ``limit`` (its shortest), each kept in a record of its own (:func:`window_key`); a slot is the
    earliest every window allows, and is reserved in every window."""

    limit_key: str | None
    limit: RateLimit | None = None
    breaker_key: str | None = None
    breaker: BreakerPolicy | None = None
    max_in_flight: int | None = None
    max_wait: float = NO_WAIT_LIMIT
    lease_seconds: float = 90.0
    more_windows: tuple[RateLimit, ...] = ()

    @classmethod
    def of(
        cls, limit_key: str | None, limits: RateLimits | list[RateLimit] | None, **kwargs: Any
    ) -> AdmissionRequest:
        """A request for ``limits``: one window, or several (in any order, see ``policy.rate_limits``)."""
        windows = windows_of(rate_limits(limits))
        return cls(limit_key, windows[0] if windows else None, more_windows=windows[1:], **kwargs)

    @property
    def has_breaker(self) -> bool:
        return self.breaker is not None and self.breaker_key is not None

    @property
    def has_bulkhead(self) -> bool:
        return self.max_in_flight is not None and self.limit_key is not None

    def slot_only(self) -> AdmissionRequest:
        """A new limiter slot for a call that keeps its breaker permit and bulkhead place."""
        return replace(self, breaker_key=None, breaker=None, max_in_flight=None)


@dataclass(frozen=True)
class Transition:
    """What a breaker verdict did: ``before`` and ``after`` states (equal when nothing changed)."""

    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class Admission:
    """The answer to "may this call go out now?".

    Granted (``reason`` ``ok``): a limiter slot ``wait`` seconds from now is reserved; ``breaker``
    and ``bulkhead_lease`` are what the call's verdict must carry. Refused: ``reason`` is a
    :class:`Refusal`; ``wait`` is when to ask again (``defer``: the next slot; ``open``: the
    breaker's half-open time)."""

    granted: bool
    reason: str
    wait: float
    paused: bool = False
    breaker: brk.BreakerDecision | None = None
    bulkhead_lease: str = ""
    recorded: Transition | None = None  # what the verdict sent along with this admission did
    decided_at: float = 0.0  # when the store decided, on the store's clock


@dataclass(frozen=True)
class Verdict:
    """A finished call's outcome: recorded in its breaker, and its bulkhead place given back.
    ``unused``: the admission was never used for a call (one taken ahead, see
    ``calls.ahead``): its breaker lease and bulkhead place are given back, the breaker is told nothing."""

    request: AdmissionRequest
    breaker: brk.BreakerDecision | None
    bulkhead_lease: str
    failed: bool
    unused: bool = False

    @classmethod
    def of(cls, request: AdmissionRequest, admission: Admission, failed: bool) -> Verdict | None:
        """The verdict to report for a call that ``admission`` let out (None when there is nothing to report)."""
        decision = admission.breaker if request.has_breaker else None
        if decision is None and not admission.bulkhead_lease:
            return None
        return cls(request, decision, admission.bulkhead_lease, failed)


@dataclass(frozen=True)
class Batch:
    """The answer to a batch of admissions: ``granted`` ones, in slot order; when fewer were granted
    than asked, ``refused`` is the answer each of the others got (nothing changes between them within
    the one atomic operation). ``recorded`` says what each verdict did, in order."""

    granted: tuple[Admission, ...]
    refused: Admission | None
    recorded: tuple[Transition, ...] = ()


class SlotLog:
    """The latest reserved slots of a bursty key as one batch sees them: ``older`` holds the stored
    ones from the ``offset``-th latest on (newest first), ``added`` the batch's own (oldest first)."""

    def __init__(self, permits: int, offset: int, older: list[float]) -> None:
        self.permits, self.offset, self.older, self.added = permits, offset, older, []

    def nth_latest(self) -> float | None:
        """The ``permits``-th most recent slot, counting the batch's own."""
        j = len(self.added)
        if j >= self.permits:
            return self.added[j - self.permits]
        i = self.permits - 1 - j - self.offset
        return self.older[i] if 0 <= i < len(self.older) else None


def slot_log_window(limit: RateLimit | None, count: int) -> tuple[int, int] | None:
    """Which stored slots a batch of ``count`` must read for a bursty key: ``(offset, how many)``,
    newest first; None when the key keeps no slot log."""
    if limit is None or limit.burst == 1:
        return None
    offset = max(0, limit.permits - count)
    return offset, limit.permits - offset


def window_key(limit_key: str, limit: RateLimit) -> str:
    """Where a key's longer window is kept (its shortest is kept under the key itself)."""
    return f"{limit_key}#{limit.per_seconds:g}s"


@dataclass
class WindowState:
    """One of a key's longer windows as a batch reads and writes it."""

    key: str
    limit: RateLimit
    rec: rl.LimiterRecord
    slots: SlotLog | None = None  # bursty windows only


@dataclass
class AdmissionState:
    """What a batch reads from the store and writes back. Leases map an id to its expiry."""

    limiter: rl.LimiterRecord | None = None  # None: no limiter key
    slots: SlotLog | None = None  # bursty keys only
    more: list[WindowState] = field(default_factory=list)  # the request's more_windows, in order
    breaker: brk.BreakerRecord | None = None  # None: no breaker
    breaker_leases: dict[str, float] = field(default_factory=dict)
    bulkhead_leases: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchResult:
    """The decisions, and what the store must write: ``breaker_asked`` (a refused slot leaves the
    breaker untouched), ``breaker_gen_before`` (a new generation drops its leases)."""

    granted: list[Admission]
    refused: Admission | None
    breaker_asked: bool
    breaker_gen_before: int


def live(leases: dict[str, float], now: float) -> dict[str, float]:
    return {lease: expires for lease, expires in leases.items() if expires > now}


def admit_batch(count: int, request: AdmissionRequest, state: AdmissionState, now: float) -> BatchResult:
    """``count`` admissions one after another, stopping at the first refusal; mutates ``state``.

    Each is granted only if the limiter's next slot is at most ``max_wait`` away, the bulkhead has a
    place, and the breaker allows it; then the slot is reserved, the place and the breaker lease taken."""
    r = request
    state.breaker_leases = live(state.breaker_leases, now)
    state.bulkhead_leases = live(state.bulkhead_leases, now)
    gen_before = state.breaker.gen if state.breaker is not None else 0
    granted: list[Admission] = []
    refused: Admission | None = None
    asked = False
    lrec = state.limiter
    paused = lrec is not None and lrec.paused_until > now
    for _ in range(count):
        slot = now
        if lrec is not None:
            nth = state.slots.nth_latest() if state.slots is not None else None
            slot = rl.next_slot(lrec, r.limit, now, nth)
            for w in state.more:  # the earliest slot every window allows
                nth = w.slots.nth_latest() if w.slots is not None else None
                slot = max(slot, rl.next_slot(w.rec, w.limit, now, nth))
            if slot - now > r.max_wait:
                refused = Admission(False, Refusal.DEFER, slot - now, paused, decided_at=now)
                break
        if r.has_bulkhead and len(state.bulkhead_leases) >= r.max_in_flight:  # type: ignore[operator]
            refused = Admission(False, Refusal.FULL, FULL_SECONDS, paused, decided_at=now)
            break
        decision = None
        if r.has_breaker and state.breaker is not None:
            asked = True
            decision = brk.acquire(state.breaker, r.breaker, now, len(state.breaker_leases))  # type: ignore[arg-type]
            if not decision.allowed:
                refused = Admission(
                    False, Refusal(decision.kind), decision.wait, paused, decision, decided_at=now
                )
                break
            if decision.lease:
                state.breaker_leases[decision.lease] = now + r.lease_seconds
        lease = ""
        if r.has_bulkhead and lrec is not None:
            lrec.leased += 1
            lease = str(lrec.leased)
            state.bulkhead_leases[lease] = now + r.lease_seconds
        if lrec is not None and r.limit is not None:
            rl.reserve(lrec, r.limit, slot)
            if state.slots is not None:
                state.slots.added.append(slot)
            for w in state.more:
                rl.reserve(w.rec, w.limit, slot)
                if w.slots is not None:
                    w.slots.added.append(slot)
        granted.append(Admission(True, GRANTED, slot - now, paused, decision, lease, decided_at=now))
    return BatchResult(granted, refused, asked, gen_before)


def apply_verdict(
    verdict: Verdict,
    breaker: brk.BreakerRecord | None,
    breaker_leases: dict[str, float],
    bulkhead_leases: dict[str, float],
    now: float,
) -> Transition:
    """Record ``verdict``: its bulkhead place and breaker lease given back, the breaker told the
    outcome (an ``unused`` one gives back its trial permit instead); mutates the records. Returns the breaker's transition
    (``"" -> ""`` without one)."""
    bulkhead_leases.pop(verdict.bulkhead_lease, None)
    decision = verdict.breaker
    if breaker is None or decision is None or verdict.request.breaker is None:
        return Transition("", "")
    before = breaker.state
    breaker_leases.pop(decision.lease, None)
    if verdict.unused:
        brk.give_back(breaker, verdict.request.breaker, decision, now)
    else:
        brk.record(breaker, verdict.request.breaker, decision, verdict.failed, now)
    return Transition(str(before), str(breaker.state))
