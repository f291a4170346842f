"""Circuit-breaker decisions over a count-based sliding window, shared through the state store.

States: ``closed`` -> ``open`` when :meth:`BreakerPolicy.trips` holds; ``open`` -> ``half_open``
when ``open_seconds`` have passed (on the next acquire); ``half_open`` lets exactly
``half_open_calls`` trial permits out across all processes; once all have reported, ``open`` again
if their failure rate reaches ``failure_rate``, else ``closed`` (``open`` too when the verdicts did
not all come within ``half_open_timeout``).

Every transition bumps ``gen``; a verdict carrying an older ``gen`` is ignored, so a slow call
that started before the breaker opened cannot close it or pollute the new window.

**Hold, only while failing.** Calls in flight hold *leases*. While the last recorded verdict is a
success (or there is none), every call is admitted: a healthy key runs at full concurrency. Once
the last verdict is a failure, a call is admitted only if the breaker would stay closed were every
call in flight to fail; otherwise the caller waits briefly (``HOLD_SECONDS``) and asks again. So a
service that fails every call receives at most the calls already in flight when its first failure
is recorded (no breaker can recall those), plus the calls it takes to trip the breaker from there
(at most ``min_calls``), plus ``half_open_calls`` per half-open round, however many workers call
it. A hard cap on calls in flight is the bulkhead's job (``max_in_flight``). Leases expire, so a
worker that dies mid-call cannot wedge the key.

The SQLite backend runs these functions inside one ``BEGIN IMMEDIATE`` transaction; the Redis
backend runs the same algorithm in Lua (``state/lua/``).
"""

from __future__ import annotations

from dataclasses import dataclass

from api_orchestration.policy import BreakerPolicy
from api_orchestration.resilience.kinds import BreakerDecisionKind as Kind
from api_orchestration.resilience.kinds import BreakerState

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
HOLD_SECONDS = 0.02  # how long a held caller waits before asking again


@dataclass(frozen=True)
class BreakerDecision:
    """``allowed``: make the call and report its verdict with this decision. For ``open``, ``wait``
    is the time until it half-opens, on the store's clock; for ``hold``, when to ask again."""

    allowed: bool
    kind: Kind
    gen: int
    state: BreakerState
    lease: str = ""
    reopen_at: float | None = None
    wait: float = 0.0


@dataclass
class BreakerRecord:
    """Per-key breaker state (unix seconds of the store's clock)."""

    state: str = CLOSED
    gen: int = 0
    opened_until: float = 0.0
    half_open_since: float = 0.0
    trials_issued: int = 0
    trial_successes: int = 0
    trial_failures: int = 0
    outcomes: str = ""  # '1' failure, '0' success, newest last, at most window_size long
    seq: int = 0
    changed_at: float = 0.0


def _open(rec: BreakerRecord, policy: BreakerPolicy, now: float) -> None:
    rec.state, rec.gen, rec.changed_at = OPEN, rec.gen + 1, now
    rec.opened_until = now + policy.open_seconds
    rec.outcomes, rec.trials_issued, rec.trial_successes, rec.trial_failures = "", 0, 0, 0


def _close(rec: BreakerRecord, now: float) -> None:
    rec.state, rec.gen, rec.changed_at = CLOSED, rec.gen + 1, now
    rec.outcomes, rec.trials_issued, rec.trial_successes, rec.trial_failures = "", 0, 0, 0


def advance(rec: BreakerRecord, policy: BreakerPolicy, now: float) -> None:
    """Apply the transitions that time alone causes."""
    if rec.state == OPEN and now >= rec.opened_until:
        rec.state, rec.gen, rec.changed_at = HALF_OPEN, rec.gen + 1, now
        rec.half_open_since, rec.trials_issued, rec.trial_successes, rec.trial_failures = now, 0, 0, 0
    elif rec.state == HALF_OPEN and now - rec.half_open_since > policy.half_open_timeout:
        _open(rec, policy, now)


def holds(rec: BreakerRecord, policy: BreakerPolicy, leases_in_flight: int) -> bool:
    """The hold rule: the last verdict failed and the calls in flight, all failing, would trip it."""
    return rec.outcomes.endswith("1") and policy.trips(rec.outcomes + "1" * leases_in_flight)


def acquire(rec: BreakerRecord, policy: BreakerPolicy, now: float, leases_in_flight: int) -> BreakerDecision:
    """Decide whether a call may go out now; mutates ``rec``. The caller stores a lease for a
    ``closed`` decision (``lease`` is set) and drops leases when ``gen`` changed."""
    advance(rec, policy, now)
    state = BreakerState(rec.state)
    if state == OPEN:
        return BreakerDecision(
            False, Kind.OPEN, rec.gen, state, reopen_at=rec.opened_until, wait=rec.opened_until - now
        )
    if state == HALF_OPEN:
        if rec.trials_issued >= policy.half_open_calls:
            return BreakerDecision(False, Kind.BUSY, rec.gen, state)
        rec.trials_issued += 1
        return BreakerDecision(True, Kind.TRIAL, rec.gen, state)
    if holds(rec, policy, leases_in_flight):
        return BreakerDecision(False, Kind.HOLD, rec.gen, state, wait=HOLD_SECONDS)
    rec.seq += 1
    return BreakerDecision(True, Kind.CLOSED, rec.gen, state, lease=f"{rec.gen}:{rec.seq}")


def record(
    rec: BreakerRecord, policy: BreakerPolicy, decision: BreakerDecision, failed: bool, now: float
) -> bool:
    """Apply a call's verdict; mutates ``rec``. Returns whether the state changed."""
    advance(rec, policy, now)
    if decision.gen != rec.gen:
        return False
    before = rec.state
    if rec.state == HALF_OPEN and decision.kind == Kind.TRIAL:
        if failed:
            rec.trial_failures += 1
        else:
            rec.trial_successes += 1
        if rec.trial_successes + rec.trial_failures >= policy.half_open_calls:
            if rec.trial_failures >= policy.failure_rate * policy.half_open_calls:
                _open(rec, policy, now)
            else:
                _close(rec, now)
    elif rec.state == CLOSED and decision.kind == Kind.CLOSED:
        rec.outcomes = (rec.outcomes + ("1" if failed else "0"))[-policy.window_size :]
        if policy.trips(rec.outcomes):
            _open(rec, policy, now)
    return rec.state != before


def give_back(rec: BreakerRecord, policy: BreakerPolicy, decision: BreakerDecision, now: float) -> None:
    """An admission that was never used for a call: a half-open trial permit it held is issued
    again to the next caller; nothing else changes (its lease is the caller's to drop)."""
    advance(rec, policy, now)
    if decision.gen == rec.gen and rec.state == HALF_OPEN and decision.kind == Kind.TRIAL:
        rec.trials_issued = max(0, rec.trials_issued - 1)


def reset(rec: BreakerRecord, now: float) -> BreakerRecord:
    """A closed breaker with an empty window, in a new generation (in-flight verdicts are ignored)."""
    return BreakerRecord(gen=rec.gen + 1, changed_at=now)
