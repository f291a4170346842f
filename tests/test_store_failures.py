"""A state store that fails around a call: what is reported must be what happened.

A Redis server of the test's own (killed on purpose) backs the guard: stopped while a call is in
flight, the call's result stands; stopped before any call, the error says no call was made and a
saga counts the step as having had no effect.
"""

from __future__ import annotations

import logging
import subprocess
import time

import pytest
import redis as redis_py
import requests
from devtools.cluster import free_port

from api_orchestration import BreakerPolicy, Guard, RateLimit, ResilientCaller, RetryPolicy, StateBackendError
from api_orchestration.operators.saga import had_no_effect
from api_orchestration.state.redis import RedisBackend


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server on a free port, for this test alone; ``stop()`` kills it."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis_py.Redis.from_url(url).ping()
            break
        except redis_py.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)

    def stop() -> None:
        proc.kill()
        proc.wait(timeout=10)

    proc.stop = stop  # type: ignore[attr-defined]
    yield url, proc
    if proc.poll() is None:
        stop()


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
