"""Circuit-breaker decisions over a count-based sliding window, shared through the state store.

States: ``closed`` -> ``open`` when :meth:`BreakerPolicy.trips` holds; ``open`` -> ``half_open``
when ``open_seconds`` have passed (on the next acquire); ``half_open`` lets exactly
``half_open_calls`` trial permits out across all processes; once all have reported, ``open`` again
if their failure rate reaches ``failure_rate``, else ``closed`` (``open`` too when the verdicts did
not all come within ``half_open_timeout``).

Every transition bumps ``gen``; a verdict carrying an older ``gen`` is ignored, so a slow call
that started before the breaker opened cannot close it or pollute the new window.

In the closed state, calls in flight hold *leases*. A call is admitted only if the breaker would
still be closed were every call in flight to fail; otherwise the caller waits briefly. So a
downed service receives no more than the calls needed to trip the breaker, however many
workers call it at once. Leases expire, so a worker that dies mid-call cannot wedge the key.

The SQLite backend runs these functions inside one ``BEGIN IMMEDIATE`` transaction; the Redis
backend runs the same algorithm as a Lua script.
"""

from __future__ import annotations

from dataclasses import dataclass

from api_orchestration.policy import BreakerPolicy

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
HOLD_SECONDS = 0.02  # how long a caller waits before asking again when calls in flight could trip it


@dataclass(frozen=True)
class BreakerDecision:
    """``allowed``: make the call and report its verdict with this decision.
    ``kind``: ``closed`` or ``trial`` (allowed); ``open``, ``busy`` (half-open, trials taken) or
    ``hold`` (calls in flight could trip it: ask again in ``wait`` s). For ``open``, ``wait`` is the
    time until it half-opens, on the store's clock."""

    allowed: bool
    kind: str
    gen: int
    state: str
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


def _advance(rec: BreakerRecord, policy: BreakerPolicy, now: float) -> None:
    """Apply the transitions that time alone causes."""
    if rec.state == OPEN and now >= rec.opened_until:
        rec.state, rec.gen, rec.changed_at = HALF_OPEN, rec.gen + 1, now
        rec.half_open_since, rec.trials_issued, rec.trial_successes, rec.trial_failures = now, 0, 0, 0
    elif rec.state == HALF_OPEN and now - rec.half_open_since > policy.half_open_timeout:
        _open(rec, policy, now)


def acquire(rec: BreakerRecord, policy: BreakerPolicy, now: float, leases_in_flight: int) -> BreakerDecision:
    """Decide whether a call may go out now; mutates ``rec``. The caller stores a lease for a
    ``closed`` decision (``lease`` is set) and drops leases when ``gen`` changed."""
    _advance(rec, policy, now)
    if rec.state == OPEN:
        return BreakerDecision(
            False, "open", rec.gen, OPEN, reopen_at=rec.opened_until, wait=rec.opened_until - now
        )
    if rec.state == HALF_OPEN:
        if rec.trials_issued >= policy.half_open_calls:
            return BreakerDecision(False, "busy", rec.gen, HALF_OPEN, reopen_at=None)
        rec.trials_issued += 1
        return BreakerDecision(True, "trial", rec.gen, HALF_OPEN)
    if policy.trips(rec.outcomes + "1" * leases_in_flight):
        return BreakerDecision(False, "hold", rec.gen, CLOSED, wait=HOLD_SECONDS)
    rec.seq += 1
    return BreakerDecision(True, "closed", rec.gen, CLOSED, lease=f"{rec.gen}:{rec.seq}")


def record(
    rec: BreakerRecord, policy: BreakerPolicy, decision: BreakerDecision, failed: bool, now: float
) -> bool:
    """Apply a call's verdict; mutates ``rec``. Returns whether the state changed."""
    _advance(rec, policy, now)
    if decision.gen != rec.gen:
        return False
    before = rec.state
    if rec.state == HALF_OPEN and decision.kind == "trial":
        if failed:
            rec.trial_failures += 1
        else:
            rec.trial_successes += 1
        if rec.trial_successes + rec.trial_failures >= policy.half_open_calls:
            if rec.trial_failures >= policy.failure_rate * policy.half_open_calls:
                _open(rec, policy, now)
            else:
                rec.state, rec.gen, rec.changed_at = CLOSED, rec.gen + 1, now
                rec.outcomes, rec.trials_issued, rec.trial_successes, rec.trial_failures = "", 0, 0, 0
    elif rec.state == CLOSED and decision.kind == "closed":
        rec.outcomes = (rec.outcomes + ("1" if failed else "0"))[-policy.window_size :]
        if policy.trips(rec.outcomes):
            _open(rec, policy, now)
    return rec.state != before
