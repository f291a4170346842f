"""Bulk mode's two engines (asyncio + aiohttp, threads + requests) against the real demo API, on
each state backend: same rows, limits, breaker, retries and log lines."""

from __future__ import annotations

import logging
import time

import pendulum
import pytest
import requests
from fleet import window_stats

from api_orchestration import BreakerPolicy, ConfigurationError, Guard, RateLimit, RetryPolicy
from api_orchestration.calls.engines import call_concurrently, call_concurrently_async

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture(params=["async", "threads"])
def engine(request) -> str:
    return request.param


def run(engine, backend, request, count, *, concurrency=8, timeout=5.0, log=None, stats=None, **guard):
    guard.setdefault("limit_key", "bulk")
    guard.setdefault("retry", FAST)
    g = Guard(backend=backend, max_sleep=3600.0, **guard)
    common = {"guard": g, "concurrency": concurrency, "timeout": timeout, "log": log}
    if engine == "async":
        return list(call_concurrently_async(count, request, stats=stats, **common))
    return list(call_concurrently(count, request, sessions=requests.Session, **common))


def test_rows_come_in_item_order(engine, backend, demo):
    rows = run(
        engine,
        backend,
        lambda i: {"method": "GET", "url": f"{demo.url}/echo/items/{i}", "params": {"q": i}},
        30,
    )
    assert [r["index"] for r in rows] == list(range(30))
    assert all(r["ok"] and r["status"] == 200 for r in rows)
    assert [r["result"]["path"] for r in rows] == [f"/echo/items/{i}" for i in range(30)]
    assert rows[7]["result"]["query"] == {"q": "7"}


def test_query_values_are_encoded_like_requests(engine, backend, demo):
    params = {"a": [1, 2], "none": None, "flag": True, "text": "x y"}
    (row,) = run(
        engine, backend, lambda i: {"method": "GET", "url": f"{demo.url}/echo/q?z=0", "params": params}, 1
    )
    assert row["result"]["query"] == {
        "z": "0",
        "a": "2",
        "flag": "True",
        "text": "x y",
    }  # the demo keeps the last a


def test_transient_failures_are_retried_with_the_same_key(engine, backend, demo):
    def request(i):
        return {
            "method": "POST",
            "url": f"{demo.url}/flaky/k{i}?fail=2",
            "json": {"i": i},
            "idempotency_key": f"key-{i}",
        }

    rows = run(engine, backend, request, 6)
    assert all(r["ok"] and r["result"]["call"] == 3 for r in rows), rows
    assert demo.calls()["by_path_and_key"]["/flaky/k0"] == {"key-0": 3}


def test_client_errors_fail_their_row_without_a_retry(engine, backend, demo):
    rows = run(
        engine, backend, lambda i: {"method": "GET", "url": f"{demo.url}/status/{404 if i % 2 else 200}"}, 6
    )
    assert [r["ok"] for r in rows] == [True, False] * 3
    assert (
        rows[1]["error"].startswith("PermanentHttpStatusError: GET ") and "answered 404" in rows[1]["error"]
    )
    assert demo.calls()["paths"]["/status/404"] == 3


def test_post_without_a_key_is_not_retried(engine, backend, demo):
    (row,) = run(engine, backend, lambda i: {"method": "POST", "url": f"{demo.url}/flaky/nokey?fail=1"}, 1)
    assert row["error"].startswith("HttpStatusError") and demo.calls()["paths"]["/flaky/nokey"] == 1


def test_a_429_retry_after_pauses_the_key(engine, backend, demo):
    started = time.monotonic()
    rows = run(
        engine,
        backend,
        lambda i: {"method": "GET", "url": f"{demo.url}/ratelimited/r?times=1&retry_after=0.4"},
        1,
    )
    assert rows[0]["ok"] and time.monotonic() - started >= 0.4
    assert backend.limiter_status("bulk").last_retry_after == pytest.approx(0.4)


def test_timeouts_are_typed(engine, backend, demo):
    rows = run(
        engine, backend, lambda i: {"method": "GET", "url": f"{demo.url}/delay/1"}, 1,
        timeout=0.2, retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    assert rows[0]["error"].startswith("CallTimeoutError: GET ")


def test_a_dropped_connection_is_not_resent_behind_the_limiter(engine, backend, demo):
    """aiohttp resends an idempotent request once when a reused keep-alive connection drops; the
    engine turns that off: every request on the wire is one the limiter admitted."""
    urls = [f"{demo.url}/echo/warm", f"{demo.url}/flaky/drop?fail=1&status=0"]
    rows = run(
        engine, backend, lambda i: {"method": "GET", "url": urls[i]}, 2,
        concurrency=1, retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    assert rows[0]["ok"] and rows[1]["error"].startswith("TransportError: GET ")
    assert demo.calls()["paths"]["/flaky/drop"] == 1


def test_a_downed_endpoint_gets_the_calls_in_flight_plus_what_trips_it(engine, backend, demo):
    """The breaker's bound: the calls already in flight when the first failure is recorded (8 here,
    the concurrency) plus the calls it takes to trip it (min_calls); nothing after it opens."""
    policy = BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=4, open_seconds=30)
    rows = run(
        engine, backend, lambda i: {"method": "GET", "url": f"{demo.url}/status/503"}, 60,
        breaker_key="down", breaker=policy, retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    errors = [r["error"].split(":")[0] for r in rows]
    sent = errors.count("HttpStatusError")
    assert policy.min_calls <= sent <= 8 + policy.min_calls and errors.count("CircuitOpenError") == 60 - sent
    assert demo.calls()["paths"]["/status/503"] == sent  # counted at the server


def test_a_bulkhead_of_one_lets_exactly_min_calls_reach_a_downed_endpoint(engine, backend, demo):
    policy = BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=4, open_seconds=30)
    rows = run(
        engine, backend, lambda i: {"method": "GET", "url": f"{demo.url}/status/503"}, 30,
        breaker_key="down", breaker=policy, retry=RetryPolicy(max_attempts=1), max_in_flight=1,
    )  # fmt: skip
    errors = [r["error"].split(":")[0] for r in rows]
    assert errors.count("HttpStatusError") == 4 and errors.count("CircuitOpenError") == 26
    assert demo.calls()["paths"]["/status/503"] == 4
    assert demo.calls()["paths"]["/status/503"] == 4
    assert backend.breaker_status("down").state == "open"


def test_the_limit_holds_at_the_server(engine, backend, demo):
    limit = RateLimit(permits=40, per_seconds=1.0, burst=10, margin=0.1)  # margin: a busy test machine
    started = time.time()
    rows = run(
        engine, backend, lambda i: {"method": "POST", "url": f"{demo.url}/echo/limited", "json": {"i": i}}, 70,
        concurrency=16, rate_limit=limit,
    )  # fmt: skip
    wall = time.time() - started
    arrivals = demo.calls(path="/echo/limited", arrivals=True)["arrivals"]["/echo/limited"]
    assert all(r["ok"] for r in rows) and len(arrivals) == 70
    assert window_stats(arrivals, 40, 1.0, started, wall).max_in_window <= 40
    assert wall >= (70 - 10) * limit.interval - 0.05  # a burst of 10, then spaced


def test_one_log_line_per_attempt_without_secrets(engine, backend, demo, caplog):
    log = logging.getLogger("test.bulk")
    with caplog.at_level(logging.INFO, logger="test.bulk"):
        run(
            engine,
            backend,
            lambda i: {"method": "GET", "url": f"{demo.url}/flaky/log?fail=1&api_key=s3cret"},
            1,
            log=log,
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "test.bulk"]
    assert len(lines) == 2 and "attempt 1/3 -> 503" in lines[0] and "retrying in" in lines[0]
    assert "attempt 2/3 -> 200" in lines[1]
    assert all("s3cret" not in line and "api_key=***" in line for line in lines)


def test_async_admissions_are_batched(backend, demo):
    stats: dict = {}
    rows = run(
        "async", backend, lambda i: {"method": "POST", "url": f"{demo.url}/echo/batched", "json": {}}, 200,
        concurrency=32, stats=stats, rate_limit=RateLimit(permits=1000, burst=50),
    )  # fmt: skip
    assert all(r["ok"] for r in rows)
    assert stats["store_operations"] <= 100, stats  # one store operation per call would be 200


# -- the operator ---------------------------------------------------------------------------------
@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("engine_name", ["async", "threads"])
def test_operator_reads_the_connection_with_either_engine(demo, monkeypatch, engine_name):
    import json

    from airflow.sdk import DAG
    from test_dags import _register

    from api_orchestration.operators.bulk import BulkHttpOperator

    conn = {"conn_type": "http", "host": "127.0.0.1", "port": demo.port, "login": "bob", "password": "pw",
            "extra": {"X-Tenant": "acme"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_DEMO_AUTH", json.dumps(conn))
    with DAG(
        f"bulk_engine_{engine_name}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")
    ) as dag:
        BulkHttpOperator(
            task_id="upsert", http_conn_id="demo_auth", method="POST", endpoint="/echo/users/{{ item }}",
            items=[1, 2, 3], json={"n": "{{ index }}"}, engine=engine_name, select="headers",
        )  # fmt: skip
    _register(dag)
    run_ = dag.test()
    ti = next(t for t in run_.get_task_instances() if t.task_id == "upsert")
    summary = ti.xcom_pull(task_ids="upsert")
    assert (summary["total"], summary["failed"]) == (3, 0)
    from pathlib import Path

    rows = [json.loads(line) for line in Path(summary["path"]).read_text().splitlines()]
    headers = rows[0]["result"]
    assert headers["authorization"] == "Basic Ym9iOnB3" and headers["x-tenant"] == "acme"
    assert headers["idempotency-key"].endswith("-0") and rows[2]["result"]["idempotency-key"].endswith("-2")


def test_unknown_engine_is_a_configuration_error():
    from api_orchestration.operators.bulk import BulkHttpOperator

    with pytest.raises(ConfigurationError, match="engine must be one of"):
        BulkHttpOperator(task_id="t", items=[], endpoint="/x", engine="processes")


def test_a_stalled_loop_does_not_bunch_late_calls_into_one_window(backend, demo):
    """Calls whose slots pass while the event loop is blocked would all go out at once when it
    resumes, next to calls on time a window later; they take new slots instead."""

    def request(i):
        if i in (20, 60):
            time.sleep(0.25)  # a slow template, a long GC pause: the loop stalls
        return {"method": "POST", "url": f"{demo.url}/echo/stall", "json": {"i": i}}

    started = time.time()
    rows = run("async", backend, request, 120, concurrency=16, rate_limit=RateLimit(permits=50))
    wall = time.time() - started
    arrivals = demo.calls(path="/echo/stall", arrivals=True)["arrivals"]["/echo/stall"]
    assert all(r["ok"] for r in rows) and len(arrivals) == 120
    assert window_stats(arrivals, 50, 1.0, started, wall).max_in_window <= 50  # 61 without new slots


def test_bulk_results_go_to_object_storage_with_size_and_checksum(demo, tmp_path, monkeypatch):
    import hashlib
    import json

    from airflow.sdk import DAG, ObjectStoragePath
    from test_dags import _register

    from api_orchestration.operators.bulk import BulkHttpOperator

    monkeypatch.setenv("AIRFLOW__API_ORCHESTRATION__RESULTS_URL", (tmp_path / "shared").as_uri())
    with DAG(
        "bulk_results_storage", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")
    ) as dag:
        BulkHttpOperator(
            task_id="fetch", http_conn_id="demo_api", endpoint="/echo/items/{{ item }}", items=[1, 2, 3]
        )
    _register(dag)
    run_ = dag.test()
    summary = next(t for t in run_.get_task_instances() if t.task_id == "fetch").xcom_pull(task_ids="fetch")
    assert summary["uri"].startswith((tmp_path / "shared").as_uri() + "/bulk_results_storage/")
    with ObjectStoragePath(summary["uri"]).open("rb") as f:  # as a task on any worker reads it
        data = f.read()
    assert len(data) == summary["bytes"] and hashlib.sha256(data).hexdigest() == summary["checksum"]
    assert [json.loads(line)["ok"] for line in data.splitlines()] == [True, True, True]
