"""A state store that fails around a call: what is reported must be what happened.

A Redis server of the test's own (killed on purpose) backs the guard: stopped while a call is in
flight, the call's result stands; stopped before any call, the error says no call was made and a
saga counts the step as having had no effect.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import requests
from conftest import own_redis_server

from api_orchestration import BreakerPolicy, Guard, RateLimit, ResilientCaller, RetryPolicy, StateBackendError
from api_orchestration.calls.engines import call_concurrently
from api_orchestration.operators.saga import had_no_effect
from api_orchestration.state.redis import RedisBackend


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server on a free port, for this test alone; ``stop()`` kills it."""
    with own_redis_server(tmp_path) as (url, proc):
        yield url, proc


def _caller(url: str, **guard) -> ResilientCaller:
    backend = RedisBackend(url, socket_timeout=1.0)
    g = Guard(
        backend=backend, limit_key="pay", rate_limit=RateLimit(100), breaker_key="pay",
        breaker=BreakerPolicy(), retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0), **guard,
    )  # fmt: skip
    return ResilientCaller(requests.Session(), g, timeout=(2, 5))


def test_a_store_that_dies_during_a_call_does_not_undo_its_result(own_redis, demo, caplog):
    url, proc = own_redis
    caller = _caller(url)
    caller.session.hooks["response"].append(lambda response, *a, **k: proc.stop())  # mid-call
    with caplog.at_level(logging.ERROR):
        response = caller.call("POST", f"{demo.url}/echo/charge", json={"order": 1}, idempotency_key="o-1")
        caller.flush()  # the verdict cannot be recorded: logged, not raised
    assert response.status_code == 200 and response.json()["path"] == "/echo/charge"
    assert demo.calls()["paths"]["/echo/charge"] == 1
    assert "VERDICT NOT RECORDED" in caplog.text and "No call was made" not in caplog.text


def test_a_store_down_before_the_call_says_no_call_was_made(own_redis, demo):
    url, proc = own_redis
    proc.stop()
    with pytest.raises(StateBackendError) as info:
        _caller(url).call("POST", f"{demo.url}/echo/charge", json={"order": 2}, idempotency_key="o-2")
    assert info.value.calls_made == 0 and "No call was made" in str(info.value)
    assert "/echo/charge" not in demo.calls()["paths"]
    assert had_no_effect(info.value)  # a saga skips this step's compensation


def test_a_store_that_dies_between_attempts_says_an_attempt_was_sent(own_redis, demo):
    url, proc = own_redis
    caller = _caller(url)
    caller.session.hooks["response"].append(lambda response, *a, **k: proc.stop())
    with pytest.raises(StateBackendError) as info:
        caller.call("POST", f"{demo.url}/status/503", idempotency_key="o-3")  # 503: a retry must be admitted
    assert info.value.calls_made == 1 and "1 earlier attempt(s) of this call were sent" in str(info.value)
    assert demo.calls()["paths"]["/status/503"] == 1
    assert not had_no_effect(info.value)  # its effect is unknown: a saga compensates it


def test_the_threads_bulk_engine_keeps_the_results_of_calls_made_before_the_store_died(
    own_redis, demo, caplog
):
    """The engine's closing flush of each thread's last verdict once raised: every row was lost."""
    url, proc = own_redis
    guard = Guard(
        backend=RedisBackend(url, socket_timeout=1.0), limit_key="bulk", rate_limit=RateLimit(100),
        breaker_key="bulk", breaker=BreakerPolicy(), retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip

    def session() -> requests.Session:
        s = requests.Session()
        s.hooks["response"].append(lambda response, *a, **k: proc.stop() if proc.poll() is None else None)
        return s

    request = lambda i: {"method": "POST", "url": f"{demo.url}/echo/bulk/{i}", "idempotency_key": f"b-{i}"}  # noqa: E731
    with caplog.at_level(logging.ERROR):
        rows = list(call_concurrently(6, request, guard=guard, sessions=session, concurrency=2))
    sent = [r for r in rows if r["ok"]]
    assert len(rows) == 6 and sent, rows
    assert len(sent) == sum(demo.calls()["paths"].values())  # every call made kept its result
    for row in rows:
        if not row["ok"]:  # admitted after the store died: refused, and said so
            assert "StateBackendError" in row["error"] and "No call was made" in row["error"], row
    assert "VERDICT NOT RECORDED" in caplog.text


@pytest.mark.usefixtures("airflow_db")
def test_a_saga_reports_each_store_failure_as_it_happened(own_redis, demo):
    """``charge``: the store dies while its call is in flight, so the step succeeds (it once failed
    with "No call was made" and the saga ended NOT FULLY UNDONE). ``reserve``: the store is down
    before its call, so it had no effect and is not compensated; the saga rolls back cleanly."""
    import pendulum
    from test_dags import _register, _states

    from api_orchestration import Call, Step, Workflow, build
    from api_orchestration.state import get_backend

    url, proc = own_redis
    wf = Workflow(
        "wf_store_down_saga", conn_id="demo_api", retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0),
        rate_limit=RateLimit(100), breaker=BreakerPolicy(),
        steps=(
            Step("charge", Call("POST", "/delay/1"), compensate=Call("POST", "/echo/refund")),
            Step("reserve", Call("POST", "/echo/reserve"), depends_on=("charge",),
                 compensate=Call("POST", "/echo/release")),
        ),
    )  # fmt: skip
    dag = build(wf, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
    for step in ("charge", "reserve"):
        dag.get_task(step).state_url = url  # the undo steps keep the suite's store
    _register(dag)

    def kill_when_charging() -> None:
        deadline = time.monotonic() + 120
        while "/delay/1" not in demo.calls()["paths"] and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.stop()

    killer = threading.Thread(target=kill_when_charging, daemon=True)
    killer.start()
    run = dag.test()
    killer.join(timeout=5)
    states = _states(run)
    assert (states["charge"], states["reserve"]) == ("success", "failed"), states
    assert (states["undo_reserve"], states["undo_charge"], states["saga_outcome"]) == (
        "skipped", "success", "failed",
    )  # fmt: skip
    paths = demo.calls()["paths"]
    assert paths["/delay/1"] == 1 and paths["/echo/refund"] == 1
    assert "/echo/reserve" not in paths and "/echo/release" not in paths
    [outcome] = [s for s in get_backend().saga_recent(20) if s["run_id"] == run.run_id]
    assert (outcome["outcome"], outcome["undone"], outcome["not_undone"]) == ("rolled_back", ["charge"], [])
    assert outcome["cause"].startswith("reserve failed on try 1: state backend redis://127.0.0.1")
    assert "No call was made" in outcome["cause"]
    reserve = next(t for t in run.get_task_instances() if t.task_id == "reserve")
    record = reserve.xcom_pull(task_ids="reserve", key="saga_failure")
    assert (record["error_type"], record["no_effect"]) == ("StateBackendError", True)
