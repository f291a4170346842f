"""Admissions taken ahead: one store round trip for several calls of a sequential caller.

A caller that makes calls one after another (a paging loop, the threads bulk engine, a TaskFlow
loop) would otherwise pay a store round trip per call, a quarter of a fast call's time on Redis. When
such a caller comes back for an admission soon after its last round trip, it asks for more than one
(at most twice as many as the last time, :data:`MOST_AHEAD`, and an eighth of any window's permits). The
extra ones are asked with a ``max_wait`` of their freshness (four fifths of how late a call may go
out after its slot, ``flow.late_allowance``), so they are only ever slots that are due now: a busy limiter
grants one, and the caller is back to one admission per call.

An admission taken ahead is used only while its slot is fresh (the same late-slot rule as every
call) and within :data:`AHEAD_SECONDS`; a stale one, and every one still held when a call fails, a key
is paused, the API's rate-limit headers say its window runs low (:data:`AMPLE_REMAINING`) or the
caller is flushed, is given back (an ``unused`` verdict: its breaker lease returned, a half-open trial
issued again, the breaker told nothing else). What this changes, and its bound: a breaker that opens elsewhere, or a
``Retry-After`` pause set by another worker, reaches this caller at most ``MOST_AHEAD`` calls and four
fifths of :data:`AHEAD_SECONDS` later; its own failures end the run of admissions at once. A caller with a
bulkhead (``max_in_flight``) never takes admissions ahead (each would hold a place).

How many to ask for is fitted to the caller's pace: as many as it would use while they are fresh,
measured over its last run of admissions. Nothing here does I/O or reads a clock: the requests
driver (:mod:`.requests_driver`) passes ``now``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from api_orchestration.calls.flow import Admitted
from api_orchestration.resilience.admission import Admission, AdmissionRequest

MOST_AHEAD = 16  # admissions one round trip may take
AMPLE_REMAINING = 64  # what the server must say is left (and a tenth of its limit) to take any ahead
AHEAD_SECONDS = 0.05  # an admission taken ahead is used within this time, or given back


@dataclass(frozen=True)
class AheadPlan:
    """What the next round trip asks for: ``count`` admissions under ``request``."""

    count: int
    request: AdmissionRequest


class AdmissionsAhead:
    """The admissions a sequential caller holds ahead of its calls, and how many to ask for next.
    ``allowance``: how late a call may go out after its slot (``flow.late_allowance``)."""

    def __init__(self, request: AdmissionRequest, allowance: float) -> None:
        self.request = request
        # the flow checks the slot again microseconds later: keep a fifth of the allowance for that
        self.fresh_for = min(allowance, AHEAD_SECONDS) * 0.8
        self._held: deque[Admitted] = deque()
        self._size = 1
        self._last_trip: float | None = None
        self._used = 0  # admissions used since the last round trip
        self._cap = _cap(request)
        self._server_low = False  # the server's headers said its window is running low

    def plan(self, now: float) -> AheadPlan:
        """How many admissions the next round trip asks for: as many as this caller used within
        their freshness at its pace since the last round trip (at most twice the last count)."""
        size = 1
        if self._last_trip is not None and self._used and not self._server_low:
            pace = (now - self._last_trip) / self._used  # seconds per call
            fits = int(self.fresh_for / pace + 1e-9) if pace > 0 else self._cap
            size = max(1, min(self._cap, self._size * 2, fits))
        self._size, self._last_trip, self._used = size, now, 1
        if size == 1:
            return AheadPlan(1, self.request)
        return AheadPlan(size, replace(self.request, max_wait=min(self.request.max_wait, self.fresh_for)))

    def server_allows(self, remaining: int, limit: int | None) -> bool:
        """Note what a response said is left in the server's window; False when that is too little
        to hold admissions ahead (another worker may be told "0" and pause the key meanwhile)."""
        self._server_low = remaining < max(AMPLE_REMAINING, (limit or 0) // 10)
        return not self._server_low

    def keep(self, extra: list[Admitted]) -> None:
        """Hold the extra admissions of a round trip (the first one is the caller's now)."""
        if len(extra) + 1 < self._size:  # the limiter or the breaker is busy: one at a time again
            self._size = 1
        self._held.extend(extra)

    def take(self, now: float) -> tuple[Admitted | None, list[Admission]]:
        """The next fresh admission held, rebased to ``now`` (None: ask the store), and the stale
        ones, to give back."""
        stale: list[Admission] = []
        while self._held:
            admitted = self._held.popleft()
            if admitted.lateness(now) <= self.fresh_for:
                self._used += 1
                return admitted.rebased(now), stale
            stale.append(admitted.admission)
        return None, stale

    def give_back(self) -> list[Admission]:
        """Every admission held (a call failed, the key was paused, the caller is done); the next
        round trip asks for one."""
        held = [a.admission for a in self._held]
        self._held.clear()
        self._size, self._last_trip = 1, None
        return held


def _cap(request: AdmissionRequest) -> int:
    """At most an eighth of any window's permits (a slot taken and given back is lost for its
    window), and one under a bulkhead, whose places must not be held unused."""
    if request.has_bulkhead:
        return 1
    windows = ([request.limit] if request.limit else []) + list(request.more_windows)
    return max(1, min([MOST_AHEAD] + [w.permits // 8 for w in windows]))
