"""Admissions taken ahead: fewer store round trips for a quick sequential caller, nothing held unused,
no slot wasted on a busy limiter, and a failure or a pause ends the run at once."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import requests

from api_orchestration import BreakerPolicy, Guard, HttpStatusError, RateLimit, ResilientCaller, RetryPolicy
from api_orchestration.calls.ahead import MOST_AHEAD, AdmissionsAhead
from api_orchestration.calls.flow import Admitted
from api_orchestration.resilience.admission import Admission, AdmissionRequest, Verdict

ONCE = RetryPolicy(max_attempts=1)


class Trips:
    """The store operations a caller makes: ``(admissions asked, verdicts sent)`` of each."""

    def __init__(self, backend) -> None:
        self.asked: list[tuple[int, list]] = []
        real = backend.admit_many

        def admit_many(count, request, verdicts=()):
            self.asked.append((count, list(verdicts)))
            return real(count, request, verdicts)

        backend.admit_many = admit_many


def caller(backend, **guard) -> ResilientCaller:
    guard.setdefault("limit_key", "ahead")
    guard.setdefault("retry", ONCE)
    return ResilientCaller(requests.Session(), Guard(backend=backend, **guard), timeout=5)


def test_a_quick_sequential_caller_asks_the_store_less_often_than_it_calls(backend, demo):
    trips = Trips(backend)
    c = caller(backend, rate_limit=RateLimit(100_000, 1.0), breaker_key="ahead", breaker=BreakerPolicy())
    for _ in range(60):
        c.call("GET", f"{demo.url}/echo/ahead")
    c.flush()
    assert demo.calls()["paths"]["/echo/ahead"] == 60
    assert trips.asked[0][0] == 1  # a first call (a single-call task's only one) takes one admission
    assert max(count for count, _ in trips.asked) > 1
    assert len(trips.asked) < 50, trips.asked
    breaker = backend.breaker_status("ahead")
    assert breaker.in_flight == 0  # every admission taken ahead and not used was given back
    assert breaker.outcomes == "0" * BreakerPolicy().window_size  # only the calls made were counted
    unused = [v for _, verdicts in trips.asked for v in verdicts if v.unused]
    assert breaker.seq == 60 + len(unused)


def test_a_busy_limiter_grants_one_at_a_time_and_wastes_no_slot(backend, demo):
    trips = Trips(backend)
    c = caller(backend, rate_limit=RateLimit(40, 1.0))  # slots 25 ms apart: none due "now" ahead
    for _ in range(8):
        c.call("GET", f"{demo.url}/echo/busy")
    c.flush()
    assert backend.limiter_status("ahead").granted == 8
    assert sum(count for count, _ in trips.asked) <= 8 + 2  # asked for two at most a couple of times


def test_a_failure_ends_the_run_and_travels_with_the_next_admission(backend, demo):
    trips = Trips(backend)
    c = caller(backend, rate_limit=RateLimit(100_000, 1.0), breaker_key="ahead", breaker=BreakerPolicy())
    for _ in range(12):
        c.call("GET", f"{demo.url}/echo/ok")
    with pytest.raises(HttpStatusError):
        c.call("GET", f"{demo.url}/status/500")
    before = len(trips.asked)
    c.call("GET", f"{demo.url}/echo/ok")
    assert len(trips.asked) == before + 1  # the next call asked the store: nothing was held
    count, verdicts = trips.asked[-1]
    assert count == 1 and [v.failed for v in verdicts if not v.unused][-1] is True
    c.flush()
    assert backend.breaker_status("ahead").in_flight == 0


def test_a_bulkhead_is_never_held_ahead(backend, demo):
    trips = Trips(backend)
    c = caller(backend, rate_limit=RateLimit(100_000, 1.0), max_in_flight=3)
    for _ in range(10):
        c.call("GET", f"{demo.url}/echo/bulkhead")
    c.flush()
    assert [count for count, _ in trips.asked] == [1] * 10


# -- the plan, with an explicit clock ---------------------------------------------------------------
def _admitted(sent: float, wait: float = 0.0) -> Admitted:
    return Admitted(Admission(True, "ok", wait), sent, 0.0)


def test_the_count_follows_the_callers_pace_and_caps():
    ahead = AdmissionsAhead(AdmissionRequest.of("k", RateLimit(1000, 1.0)), allowance=0.00625)
    assert ahead.fresh_for == pytest.approx(0.005)  # four fifths of the allowance
    sizes, now = [], 0.0
    for _ in range(6):  # one call per millisecond: five fit in the 5 ms an admission stays fresh
        plan = ahead.plan(now)
        sizes.append(plan.count)
        ahead.keep([_admitted(now) for _ in range(plan.count - 1)])
        for _ in range(plan.count - 1):
            now += 0.001
            held, stale = ahead.take(now)
            assert held is not None and not stale
        now += 0.001
    assert sizes == [1, 2, 4, 5, 5, 5]
    assert plan.request.max_wait == pytest.approx(0.005)  # only slots due now are taken ahead
    slow = AdmissionsAhead(AdmissionRequest.of("k", RateLimit(1000, 1.0)), allowance=0.00625)
    slow.plan(0.0)
    assert slow.plan(0.030).count == 1  # a caller slower than an admission's freshness: one at a time
    assert _cap(RateLimit(40, 1.0)) == 5 and _cap(RateLimit(10**6, 1.0)) == MOST_AHEAD
    bulkhead = AdmissionsAhead(AdmissionRequest.of("k", RateLimit(1000, 1.0), max_in_flight=4), 0.01)
    bulkhead.plan(0.0)
    assert bulkhead.plan(0.0001).count == 1


def _cap(limit: RateLimit) -> int:
    ahead = AdmissionsAhead(AdmissionRequest.of("k", limit), allowance=1.0)
    ahead.plan(0.0)
    ahead.plan(1e-9)  # size 2
    ahead.keep([])
    for _ in range(6):
        ahead._size = MOST_AHEAD * 4  # let the cap, not the doubling, decide
        ahead.plan(1e-9)
    return ahead._size


def test_stale_admissions_are_given_back_and_a_kept_one_is_rebased():
    ahead = AdmissionsAhead(AdmissionRequest.of("k", RateLimit(1000, 1.0)), allowance=0.00625)
    ahead.plan(0.0)
    ahead.keep([_admitted(0.0), _admitted(0.0, wait=0.004)])
    held, stale = ahead.take(0.006)  # the first is 6 ms late (more than 5): given back
    assert [a.wait for a in stale] == [0.0]
    assert held is not None and held.lateness(0.006) == pytest.approx(0.002)  # rebasing keeps the slot
    assert held.admission.wait == 0.0 and held.sent == pytest.approx(0.004)
    ahead.keep([_admitted(0.01, wait=0.003)])
    held, _ = ahead.take(0.011)
    assert held.admission.wait == pytest.approx(0.002)  # sleeps what is left until the slot
    ahead.keep([_admitted(0.02)])
    assert len(ahead.give_back()) == 1 and ahead.take(0.02) == (None, [])


def test_an_unused_trial_is_issued_again(backend):
    policy = BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=2, open_seconds=0.2, half_open_calls=2)
    request = AdmissionRequest(None, breaker_key="trials", breaker=policy, lease_seconds=5.0)
    for _ in range(2):  # two failures open it
        a = backend.admit(request)
        backend.record(Verdict.of(request, a, True))
    time.sleep(0.25)
    batch = backend.admit_many(3, request)  # half-open: both trials, then "busy"
    assert [a.breaker.kind for a in batch.granted] == ["trial", "trial"] and batch.refused.reason == "busy"
    backend.record(replace(Verdict.of(request, batch.granted[1], False), unused=True))
    again = backend.admit(request)  # the trial given back goes to the next caller
    assert again.granted and again.breaker.kind == "trial"
    assert not backend.admit(request).granted


def test_a_server_running_low_stops_admissions_ahead():
    ahead = AdmissionsAhead(AdmissionRequest.of("k", None), allowance=float("inf"))
    assert ahead.server_allows(4000, 5000)
    assert not ahead.server_allows(400, 5000)  # under a tenth of the server's window
    assert not ahead.server_allows(63, None)
    ahead.plan(0.0)
    assert ahead.plan(0.0001).count == 1  # low: one admission per call until the window refills
    assert ahead.server_allows(5000, 5000)
    assert ahead.plan(0.0002).count == 2
