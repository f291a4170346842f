"""The Python decisions (run by the SQLite store) and their Lua port (run by Redis) agree.

Hypothesis generates scenarios (batches of admissions under random limits, breakers and bulkheads,
verdicts of earlier grants, pauses, the clock moving) and both stores play them on the same explicit
clock; every answer and the final state must be the same.
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import asdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_orchestration import BreakerPolicy, RateLimit
from api_orchestration.policy import windows_of
from api_orchestration.state import AdmissionRequest, Verdict
from api_orchestration.state.redis import RedisBackend
from api_orchestration.state.sqlite import SQLiteBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


LIMITS = [
    None,
    RateLimit(5, 1.0),
    RateLimit(4, 1.0, burst=3),
    RateLimit(20, 2.0, burst=20, margin=0.0),
    # several windows on one key (rate_limits() orders them): every one held, one slot for all
    (RateLimit(5, 1.0), RateLimit(8, 3.0, burst=8)),
    (RateLimit(4, 1.0, burst=3), RateLimit(6, 2.5, burst=2)),
    (RateLimit(3, 0.5, burst=3), RateLimit(10, 2.0), RateLimit(12, 6.0, burst=12, margin=0.0)),
]
BREAKERS = [
    None,
    BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=2, open_seconds=1.0, half_open_calls=2),
    BreakerPolicy(failure_rate=0.3, window_size=10, min_calls=5, open_seconds=0.5, half_open_timeout=2.0),
]

op = st.one_of(
    st.tuples(st.just("admit"), st.integers(1, 6), st.booleans()),
    st.tuples(st.just("verdict"), st.integers(0, 50), st.sampled_from(["ok", "failed", "unused"])),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.05, 0.3, 1.1, 2.5])),
    st.tuples(st.just("pause"), st.sampled_from([0.2, 1.0])),
)


def _answer(batch):
    def one(a):
        d = a.breaker
        decision = None if d is None else (d.allowed, str(d.kind), d.gen, str(d.state), d.lease, d.reopen_at)
        return (a.granted, str(a.reason), round(a.wait, 6), a.paused, decision, a.bulkhead_lease)

    refused = one(batch.refused) if batch.refused else None
    return [one(a) for a in batch.granted], refused, [(t.before, t.after) for t in batch.recorded]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, redis_available):
    clock = Clock()
    sqlite = SQLiteBackend(f"sqlite:///{tmp_path_factory.mktemp('ports')}/state.db", clock=clock)
    redis = RedisBackend(f"{redis_available}?prefix=apiorch-ports-{uuid.uuid4().hex[:10]}:", clock=clock)
    yield clock, sqlite, redis
    for store in (sqlite, redis):
        store.clear()
        store.close()


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.sampled_from(LIMITS),
    breaker=st.sampled_from(BREAKERS),
    bulkhead=st.sampled_from([None, 2, 5]),
    ops=st.lists(op, min_size=1, max_size=25),
)
def test_sqlite_and_lua_decide_alike(stores, limit, breaker, bulkhead, ops):
    clock, sqlite, redis = stores
    key = uuid.uuid4().hex[:8]
    request = AdmissionRequest.of(
        key,
        limit,
        breaker_key=f"b{key}",
        breaker=breaker,
        max_in_flight=bulkhead,
        max_wait=3.0,
        lease_seconds=5.0,
    )
    held: dict[str, list] = {"sqlite": [], "redis": []}
    slots: list[float] = []  # every granted slot
    for step in ops:
        answers = {}
        for name, store in (("sqlite", sqlite), ("redis", redis)):
            if step[0] == "admit":
                verdicts = []
                if step[2] and held[name]:  # the previous grant's verdict travels with the admission
                    verdicts = [Verdict(request, held[name].pop(0).breaker, "", True)]
                batch = store.admit_many(step[1], request, verdicts)
                if name == "sqlite":
                    slots += [clock.now + a.wait for a in batch.granted]
                held[name] += list(batch.granted)
                answers[name] = _answer(batch)
            elif step[0] == "verdict" and held[name]:
                a = held[name].pop(step[1] % len(held[name]))
                verdict = Verdict(
                    request, a.breaker, a.bulkhead_lease, step[2] == "failed", step[2] == "unused"
                )
                answers[name] = store.record(verdict)
            elif step[0] == "pause":
                answers[name] = round(store.limiter_pause(key, step[1]) - clock.now, 6)
        assert answers.get("sqlite") == answers.get("redis"), step
        if step[0] == "tick":
            clock.now += step[1]
    snap_s, snap_r = sqlite.snapshot(), redis.snapshot()
    for kind in ("limiters", "breakers"):
        mine_s = {k: asdict(v) for k, v in getattr(snap_s, kind).items() if key in k}
        mine_r = {k: asdict(v) for k, v in getattr(snap_r, kind).items() if key in k}
        for rows in (mine_s, mine_r):
            for row in rows.values():
                for name, value in row.items():
                    if isinstance(value, float):
                        row[name] = round(value, 6)
        assert mine_s == mine_r
    for window in windows_of(limit):  # each window holds: at most permits slots in any [t, t + window)
        ts = sorted(slots)
        most = max(
            (bisect.bisect_left(ts, t + window.window - 1e-9) - i for i, t in enumerate(ts)), default=0
        )
        assert most <= window.permits, (window, ts)
