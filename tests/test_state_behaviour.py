"""One behaviour suite for the limiter and the breaker, run against every state backend."""

from __future__ import annotations

import itertools
import time

import pytest

from api_orchestration import BreakerPolicy, ConfigurationError, RateLimit, StateBackendError
from api_orchestration.resilience.breaker import HOLD_SECONDS
from api_orchestration.state import AdmissionRequest, Verdict, backend_for_url
from api_orchestration.state.base import NO_WAIT_LIMIT as NO_LIMIT


# -- rate limiter ---------------------------------------------------------------------------------
def test_even_spacing_without_burst(backend):
    limit = RateLimit(permits=10, per_seconds=1.0, margin=0.0)
    waits = [backend.limiter_acquire("k", limit, max_wait=5).wait for _ in range(10)]
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    assert waits[0] == pytest.approx(0, abs=0.01)
    assert all(g == pytest.approx(0.1, abs=0.01) for g in gaps), gaps


def test_margin_stretches_the_window(backend):
    limit = RateLimit(permits=4, per_seconds=1.0, margin=0.1)
    waits = [backend.limiter_acquire("k", limit, max_wait=5).wait for _ in range(5)]
    assert waits[4] - waits[0] == pytest.approx(1.1, abs=0.02)


def test_burst_then_sliding_window(backend):
    limit = RateLimit(permits=5, per_seconds=0.5, burst=5, margin=0.0)
    waits = [backend.limiter_acquire("k", limit, max_wait=5).wait for _ in range(11)]
    assert all(w < 0.02 for w in waits[:5]), waits
    assert all(w == pytest.approx(0.5, abs=0.03) for w in waits[5:10]), waits
    assert waits[10] == pytest.approx(1.0, abs=0.03)


def test_partial_burst_is_spaced_after_the_burst(backend):
    limit = RateLimit(permits=4, per_seconds=1.0, burst=2, margin=0.0)
    waits = [backend.limiter_acquire("k", limit, max_wait=5).wait for _ in range(5)]
    assert waits[0] < 0.02 and waits[1] < 0.02
    assert waits[2] == pytest.approx(0.25, abs=0.02)
    assert waits[4] == pytest.approx(1.0, abs=0.02)  # window: at most 4 in any second


def test_wait_beyond_max_wait_is_not_reserved(backend):
    limit = RateLimit(permits=1, per_seconds=1.0, margin=0.0)
    assert backend.limiter_acquire("k", limit, max_wait=0).granted
    refused = backend.limiter_acquire("k", limit, max_wait=0.5)
    assert not refused.granted and refused.wait == pytest.approx(1.0, abs=0.02)
    again = backend.limiter_acquire("k", limit, max_wait=5)
    assert again.granted and again.wait == pytest.approx(1.0, abs=0.02)  # the refusal reserved nothing


def test_keys_are_independent(backend):
    limit = RateLimit(permits=1, per_seconds=10.0)
    assert backend.limiter_acquire("a", limit, 0).granted
    assert backend.limiter_acquire("b", limit, 0).granted
    assert not backend.limiter_acquire("a", limit, 0).granted


def test_pause_holds_every_caller_even_without_a_limit(backend):
    backend.limiter_pause("k", 0.3)
    decision = backend.limiter_acquire("k", None, max_wait=5)
    assert decision.granted and decision.paused and decision.wait == pytest.approx(0.3, abs=0.02)
    limited = backend.limiter_acquire("k", RateLimit(100), max_wait=0.1)
    assert not limited.granted and limited.paused
    backend.limiter_pause("k", 0.01)  # a shorter pause never shortens the current one
    assert backend.limiter_acquire("k", None, max_wait=5).wait > 0.2
    status = backend.limiter_status("k")
    assert status.last_retry_after == pytest.approx(0.01)


# -- circuit breaker ------------------------------------------------------------------------------
POLICY = BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=4, open_seconds=0.3, half_open_calls=2)


def _req(
    key=None, limit=None, breaker_key=None, policy=None, max_wait=NO_LIMIT, lease=0.0, max_in_flight=None
):
    return AdmissionRequest(key, limit, breaker_key, policy, max_in_flight, max_wait, lease)


SVC = _req(None, None, "svc", POLICY, NO_LIMIT, 10)


def _call(backend, failed: bool, policy=POLICY, key="svc"):
    decision = backend.breaker_acquire(key, policy, lease_seconds=10)
    assert decision.allowed, decision
    return backend.breaker_record(key, policy, decision, failed)


def test_opens_on_failure_rate_after_min_calls(backend):
    for failed in (False, True, False):
        assert not _call(backend, failed).changed
    transition = _call(backend, True)  # 2 of 4 failed = 50 %
    assert (transition.before, transition.after) == ("closed", "open")
    refused = backend.breaker_acquire("svc", POLICY, 10)
    assert not refused.allowed and refused.kind == "open"
    assert 0.2 < refused.wait <= 0.3


def test_successes_keep_it_closed_and_window_slides(backend):
    for failed in (True, False, False, False, False, False, True, False):
        assert not _call(backend, failed).changed
    assert backend.breaker_status("svc").outcomes == "0010"


def test_half_open_admits_exactly_the_trial_calls_then_closes(backend):
    for _ in range(4):
        _call(backend, True)
    time.sleep(0.32)
    trials = [backend.breaker_acquire("svc", POLICY, 10) for _ in range(4)]
    assert [t.kind for t in trials] == ["trial", "trial", "busy", "busy"]
    assert not backend.breaker_record("svc", POLICY, trials[0], False).changed
    assert backend.breaker_record("svc", POLICY, trials[1], False).after == "closed"
    assert backend.breaker_acquire("svc", POLICY, 10).kind == "closed"


def test_trials_decide_together_by_failure_rate(backend):
    for _ in range(4):
        _call(backend, True)
    time.sleep(0.32)
    first, second = (backend.breaker_acquire("svc", POLICY, 10) for _ in range(2))
    assert not backend.breaker_record("svc", POLICY, first, True).changed  # waits for the other trial
    assert backend.breaker_acquire("svc", POLICY, 10).kind == "busy"
    assert backend.breaker_record("svc", POLICY, second, False).after == "open"  # 1 of 2 failed = 50 %
    assert backend.breaker_acquire("svc", POLICY, 10).kind == "open"


def test_half_open_without_verdict_times_out_to_open(backend):
    policy = BreakerPolicy(
        window_size=2, min_calls=2, open_seconds=0.1, half_open_calls=1, half_open_timeout=0.2
    )
    for _ in range(2):
        _call(backend, True, policy)
    time.sleep(0.12)
    assert backend.breaker_acquire("svc", policy, 10).kind == "trial"  # ... and its caller dies
    time.sleep(0.22)
    assert backend.breaker_acquire("svc", policy, 10).kind == "open"


def test_stale_verdict_from_before_the_opening_is_ignored(backend):
    slow = backend.breaker_acquire("svc", POLICY, lease_seconds=0.05)  # its lease expires mid-call
    time.sleep(0.06)
    for _ in range(4):
        _call(backend, True)
    time.sleep(0.32)
    trial = backend.breaker_acquire("svc", POLICY, 10)
    assert not backend.breaker_record("svc", POLICY, slow, True).changed  # stale generation
    assert backend.breaker_status("svc").state == "half_open"
    backend.breaker_record("svc", POLICY, trial, False)


def test_a_healthy_breaker_never_holds_calls_in_flight(backend):
    held = [backend.breaker_acquire("svc", POLICY, 10) for _ in range(50)]
    assert [d.kind for d in held] == ["closed"] * 50
    assert backend.breaker_status("svc").in_flight == 50


def test_calls_in_flight_hold_new_calls_only_while_failing(backend):
    held = [backend.breaker_acquire("svc", POLICY, 10) for _ in range(6)]
    assert [d.kind for d in held] == ["closed"] * 6
    backend.breaker_record("svc", POLICY, held[0], True)
    # the last verdict failed, and '1' + 5 in flight that might fail would trip it
    blocked = backend.breaker_acquire("svc", POLICY, 10)
    assert blocked.kind == "hold" and blocked.wait == pytest.approx(HOLD_SECONDS)
    backend.breaker_record("svc", POLICY, held[1], False)  # the last verdict succeeded
    assert backend.breaker_acquire("svc", POLICY, 10).kind == "closed"


def test_expired_leases_stop_holding(backend):
    _call(backend, True)
    for _ in range(3):
        assert backend.breaker_acquire("svc", POLICY, lease_seconds=0.1).allowed
    assert backend.breaker_acquire("svc", POLICY, 0.1).kind == "hold"
    time.sleep(0.12)
    assert backend.breaker_acquire("svc", POLICY, 0.1).kind == "closed"


def test_reset_closes(backend):
    for _ in range(4):
        _call(backend, True)
    backend.breaker_reset("svc")
    assert backend.breaker_status("svc").state == "closed"
    assert backend.breaker_acquire("svc", POLICY, 10).kind == "closed"


def test_status_of_unknown_keys_is_none(backend):
    assert backend.breaker_status("nope") is None
    assert backend.limiter_status("nope") is None


# -- failure of the store: fail closed ------------------------------------------------------------
def test_unreachable_redis_fails_closed():
    b = backend_for_url("redis://127.0.0.1:1/0")
    with pytest.raises(StateBackendError, match=r"redis://127.0.0.1:1/0 failed during admit"):
        b.limiter_acquire("k", RateLimit(1), 1)
    with pytest.raises(StateBackendError, match="fail closed"):
        b.breaker_acquire("k", BreakerPolicy(), 1)


def test_redis_password_is_not_in_the_error():
    b = backend_for_url("redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(StateBackendError) as info:
        b.limiter_acquire("k", RateLimit(1), 1)
    assert "hunter2" not in str(info.value)


def test_unwritable_sqlite_fails_closed(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    b = backend_for_url(f"sqlite:///{blocker}/state.db")
    with pytest.raises(StateBackendError, match=r"state\.db failed during admit"):
        b.limiter_acquire("k", RateLimit(1), 1)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///relative.db", "must be absolute"),
        ("memcached://x", "must be sqlite:////abs/path.db"),
        ("nonsense", "must be sqlite"),
    ],
)
def test_bad_state_urls_name_the_fix(url, match):
    with pytest.raises(ConfigurationError, match=match):
        backend_for_url(url)


# -- batches: admit_many is admit, count times, as one atomic operation ---------------------------
def _batches(backend, sizes, limit, key="k", max_wait=5.0):
    waits = []
    for size in sizes:
        waits += [a.wait for a in backend.admit_many(size, _req(key, limit, None, None, max_wait, 0)).granted]
    return waits


def test_a_batch_takes_the_slots_single_admissions_would(backend):
    limit = RateLimit(permits=5, per_seconds=0.5, burst=5, margin=0.0)
    waits = _batches(backend, [3, 3, 3, 2], limit)  # the burst and the window span batch boundaries
    assert all(w < 0.02 for w in waits[:5]), waits
    assert all(w == pytest.approx(0.5, abs=0.03) for w in waits[5:10]), waits
    assert waits[10] == pytest.approx(1.0, abs=0.03)


def test_a_batch_spaces_calls_without_burst(backend):
    waits = _batches(backend, [10], RateLimit(permits=10, per_seconds=1.0, margin=0.0))
    assert [round(w, 2) for w in waits] == [round(0.1 * i, 2) for i in range(10)]


def test_a_batch_stops_where_the_wait_exceeds_max_wait_and_reserves_no_more(backend):
    limit = RateLimit(permits=2, per_seconds=1.0, margin=0.0)
    batch = backend.admit_many(5, _req("k", limit, None, None, 0.6, 0))
    assert [round(a.wait, 2) for a in batch.granted] == [0.0, 0.5]
    assert batch.refused.reason == "defer" and batch.refused.wait == pytest.approx(1.0, abs=0.02)
    again = backend.limiter_acquire("k", limit, max_wait=5)
    assert again.wait == pytest.approx(1.0, abs=0.02)  # the refusal reserved nothing


def test_a_batch_waits_out_a_pause(backend):
    backend.limiter_pause("k", 0.3)
    batch = backend.admit_many(3, _req("k", None, None, None, 5, 0))
    assert len(batch.granted) == 3 and all(
        a.paused and a.wait == pytest.approx(0.3, abs=0.02) for a in batch.granted
    )


def test_a_failing_batch_leases_as_many_as_could_all_fail(backend):
    assert len(backend.admit_many(6, SVC).granted) == 6  # healthy: no cap
    _call(backend, True)
    batch = backend.admit_many(6, SVC)
    # '1' recorded, 6 + 2 in flight: trips at once; as single acquires would
    assert not batch.granted
    assert batch.refused.reason == "hold" and batch.refused.wait == pytest.approx(HOLD_SECONDS)
    assert backend.breaker_status("svc").in_flight == 6


def test_a_batch_records_its_verdicts_first(backend):
    held = backend.admit_many(4, _req(None, None, "svc", POLICY, NO_LIMIT, 10)).granted
    verdicts = [Verdict(SVC, a.breaker, "", True) for a in held]
    batch = backend.admit_many(2, _req(None, None, "svc", POLICY, NO_LIMIT, 10), verdicts)
    assert [t.changed for t in batch.recorded] == [False, False, False, True]
    assert batch.recorded[-1].after == "open" and not batch.granted
    assert batch.refused.reason == "open" and 0.2 < batch.refused.wait <= 0.3
    assert batch.refused.breaker.reopen_at is not None
    assert backend.breaker_status("svc").in_flight == 0


def test_a_half_open_batch_gets_exactly_the_trial_calls(backend):
    for _ in range(4):
        _call(backend, True)
    time.sleep(0.32)
    batch = backend.admit_many(4, _req(None, None, "svc", POLICY, NO_LIMIT, 10))
    assert [a.breaker.kind for a in batch.granted] == ["trial", "trial"] and batch.refused.reason == "busy"
    assert backend.breaker_record("svc", POLICY, batch.granted[0].breaker, False).after == "half_open"
    assert backend.breaker_record("svc", POLICY, batch.granted[1].breaker, False).after == "closed"


def test_a_batch_takes_slot_and_permit_together(backend):
    limit = RateLimit(permits=100, per_seconds=1.0, margin=0.0)
    _call(backend, True)
    batch = backend.admit_many(6, _req("k", limit, "svc", POLICY, 5, 10))
    assert len(batch.granted) == 3 and batch.refused.reason == "hold"
    assert backend.admit_many(1, _req("k", limit, None, None, 5, 0)).granted[0].wait == pytest.approx(
        0.03, abs=0.01
    )


def test_the_bulkhead_caps_calls_in_flight_across_callers(backend):
    request = _req("k", None, None, None, NO_LIMIT, 10, max_in_flight=3)
    batch = backend.admit_many(5, request)
    assert len(batch.granted) == 3 and batch.refused.reason == "full"
    assert backend.limiter_status("k").in_flight == 3
    assert backend.admit(request).reason == "full"
    backend.record(Verdict(request, None, batch.granted[0].bulkhead_lease, False))
    assert backend.admit(request).granted  # a place given back is taken again
    assert backend.admit(request).reason == "full"


def test_bulkhead_places_expire(backend):
    request = _req("k", None, None, None, NO_LIMIT, 0.1, max_in_flight=1)
    assert backend.admit(request).granted and backend.admit(request).reason == "full"
    time.sleep(0.12)
    assert backend.admit(request).granted


def test_batches_and_single_admissions_never_overfill_a_window(backend):
    """Slots handed out by batches of random sizes and single admissions, mixed, as the store's
    clock sees them: never more than ``permits`` in any window."""
    import random

    rng = random.Random(7)
    limit = RateLimit(permits=20, per_seconds=0.4, burst=8, margin=0.0)
    slots = []
    for _ in range(40):
        started = time.time()  # both stores run on this host's clock
        if rng.random() < 0.3:
            waits = [backend.limiter_acquire("k", limit, max_wait=5).wait]
        else:
            waits = [
                a.wait
                for a in backend.admit_many(rng.randint(1, 9), _req("k", limit, None, None, 5, 0)).granted
            ]
        slots += [started + w for w in waits]
        time.sleep(rng.random() * 0.01)
    slots.sort()
    for i, t in enumerate(slots):
        assert sum(1 for s in slots[i:] if s < t + limit.window - 0.005) <= limit.permits
