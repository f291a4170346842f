"""``@task.resilient_http`` in the checkout: resolved by Airflow's providers manager through the
checkout's entry points, and its client (a real ``requests.Session``, or the async client) shares
the limiter, retries and idempotency keys of the operator; so does a third-party library
(uplink, a declarative REST client nobody here wrote) given that session."""

from __future__ import annotations

import json

import pendulum
import pytest
import requests
from test_dags import _register, _states

from api_orchestration.calls.idempotency import task_key

pytestmark = pytest.mark.usefixtures("airflow_db")
START = pendulum.datetime(2026, 1, 1, tz="UTC")


def set_connection(monkeypatch, conn_id: str, port: int, extra: dict) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "resilient_http", "host": "127.0.0.1", "port": port, "extra": extra}),
    )


def span(demo, prefix: str) -> float:
    """Seconds from the first to the last arrival of the paths starting with ``prefix``. Under a
    limit of r per second (burst 1) n calls span about (n - 1) / r; unlimited, a few ms. (A span,
    not the gaps: a call that reached the server late shortens the gap after it.)"""
    arrivals = demo.calls(arrivals=True)["arrivals"]
    times = sorted(t for p, ts in arrivals.items() if p.startswith(prefix) for t in ts)
    return times[-1] - times[0]


def test_the_decorator_is_found_through_the_providers_manager():
    from airflow.sdk import task

    from api_orchestration.decorators.resilient_http import resilient_http_task

    assert task.resilient_http is resilient_http_task


def test_the_client_is_a_session_under_the_connections_limit_with_idempotency_keys(demo, monkeypatch):
    from airflow.sdk import DAG, task

    set_connection(monkeypatch, "deco_api", demo.port, {"rate_limit_permits": 4, "retry_base_delay": 0.01})
    with DAG("deco_session", schedule=None, start_date=START) as dag:

        @task.resilient_http(http_conn_id="deco_api")
        def calls(n: int, client):
            assert isinstance(client, requests.Session)
            got = [client.get(f"/echo/deco-{i}").json()["path"] for i in range(n)]
            posted = [
                client.post("/echo/deco-post", json={"i": i}).json()["idempotency_key"] for i in range(2)
            ]
            flaky = client.post("/flaky/deco?fail=1").status_code  # retried with the same key
            missing = client.get("/status/404").status_code  # returned, as requests does
            return {"got": got, "posted": posted, "flaky": flaky, "missing": missing}

        calls(5)
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    ti = next(t for t in run.get_task_instances())
    out = ti.xcom_pull(task_ids="calls")
    assert out["got"] == [f"/echo/deco-{i}" for i in range(5)]
    assert out["posted"] == [f"{task_key(ti)}-1", f"{task_key(ti)}-2"]  # the task's key, numbered
    assert (out["flaky"], out["missing"]) == (200, 404)
    calls = demo.calls()
    assert calls["paths"]["/flaky/deco"] == 2 and len(calls["by_path_and_key"]["/flaky/deco"]) == 1
    assert span(demo, "/echo/deco") >= 1.2  # 7 calls at 4 per second across GETs and POSTs: 1.53 s


def test_a_third_party_client_given_the_session_goes_through_the_shared_limiter(demo, monkeypatch):
    from airflow.sdk import DAG, task

    set_connection(monkeypatch, "uplink_api", demo.port, {"rate_limit_permits": 5})
    with DAG("deco_uplink", schedule=None, start_date=START) as dag:

        @task.resilient_http(http_conn_id="uplink_api")
        def via_uplink(client):
            import uplink

            class Users(uplink.Consumer):
                @uplink.get("echo/users/{user_id}")
                def user(self, user_id: uplink.Path): ...

            api = Users(base_url=client.base_url + "/", client=client)
            return [api.user(i).json()["path"] for i in range(6)]

        via_uplink()
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert demo.calls()["total"] == 6
    assert span(demo, "/echo/users/") >= 0.8  # 6 calls at 5 per second: 1.02 s, held for uplink too


def test_the_oauth2_token_goes_with_a_third_party_clients_and_the_async_clients_calls(demo, monkeypatch):
    """The connection's ``oauth2_conn_id`` field (uplink through the session) and the decorator's own
    ``oauth2_conn_id`` (the async client on a plain ``http`` connection): every call carries the
    shared token; the API answers 401 to a call without one."""
    from airflow.sdk import DAG, task

    monkeypatch.setenv("AIRFLOW_CONN_DECO_OAUTH", json.dumps({
        "conn_type": "generic", "host": f"{demo.url}/oauth/token", "login": "demo-client",
        "password": "demo-secret", "extra": {"scopes": ["read"]},
    }))  # fmt: skip
    set_connection(monkeypatch, "deco_oauth_api", demo.port, {"oauth2_conn_id": "deco_oauth"})
    with DAG("deco_oauth", schedule=None, start_date=START) as dag:

        @task.resilient_http(http_conn_id="deco_oauth_api")
        def via_uplink(client):
            import uplink

            class Me(uplink.Consumer):
                @uplink.get("oauth/api/users/{user_id}")
                def user(self, user_id: uplink.Path): ...

            api = Me(base_url=client.base_url + "/", client=client)
            return [api.user(i).json().get("client_id") for i in range(3)]

        @task.resilient_http(http_conn_id="demo_api", oauth2_conn_id="deco_oauth")
        async def concurrent(client):
            import asyncio

            replies = await asyncio.gather(*(client.get(f"/oauth/api/async/{i}") for i in range(4)))
            return [r.json().get("client_id") for r in replies]

        via_uplink() >> concurrent()
    _register(dag)
    before = requests.get(f"{demo.url}/admin/oauth", timeout=5).json()["counts"]
    run = dag.test()
    assert run.state == "success", _states(run)
    tis = {t.task_id: t for t in run.get_task_instances()}
    assert tis["via_uplink"].xcom_pull(task_ids="via_uplink") == ["demo-client"] * 3
    assert tis["concurrent"].xcom_pull(task_ids="concurrent") == ["demo-client"] * 4
    after = requests.get(f"{demo.url}/admin/oauth", timeout=5).json()["counts"]
    assert after.get("api_ok", 0) - before.get("api_ok", 0) == 7, after
    assert requests.get(f"{demo.url}/oauth/api/users/1", timeout=5).status_code == 401  # no token, no answer


def test_an_async_function_gets_the_async_client_for_concurrent_calls(demo, monkeypatch):
    from airflow.sdk import DAG, task

    set_connection(monkeypatch, "async_api", demo.port, {"rate_limit_permits": 10, "rate_limit_burst": 2})
    with DAG("deco_async", schedule=None, start_date=START) as dag:

        @task.resilient_http(http_conn_id="async_api", concurrency=8)
        async def many(client):
            import asyncio

            replies = await asyncio.gather(*(client.get(f"/echo/async-{i}") for i in range(8)))
            return sorted(r.json()["path"] for r in replies)

        many()
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert next(t for t in run.get_task_instances()).xcom_pull(task_ids="many") == sorted(
        f"/echo/async-{i}" for i in range(8)
    )
    assert span(demo, "/echo/async-") >= 0.45  # 8 calls at 10/s after a burst of 2: 0.61 s


def test_the_client_argument_must_exist():
    from airflow.sdk import DAG, task

    from api_orchestration import ConfigurationError

    with (
        DAG("deco_bad", schedule=None, start_date=START),
        pytest.raises(ConfigurationError, match="client_arg"),
    ):

        @task.resilient_http(http_conn_id="x")
        def no_client(n: int):
            return n

        no_client(1)


def test_the_status_plugin_is_registered_once():
    from airflow import plugins_manager

    plugins, errors = plugins_manager._get_plugins()
    assert [p.name for p in plugins].count("api_orchestration") == 1
    assert not [e for e in errors.values() if "api_orchestration" in e]


def test_one_key_one_policy_on_every_path(demo):
    """The single-call operator, bulk and ``@task.resilient_http`` each claim their key once per task
    execution: the same policy shares the key; another policy from another task fails before any call."""
    from airflow.sdk import DAG, task

    from api_orchestration import BulkHttpOperator, RateLimit, ResilientHttpOperator

    five = RateLimit(5, 1.0)
    common = {"http_conn_id": "demo_api", "rate_limit_key": "claimed", "trigger_rule": "all_done"}
    with DAG("one_key_one_policy", schedule=None, start_date=START) as dag:
        first = ResilientHttpOperator(
            task_id="first", endpoint="/echo/claims-first", rate_limit=five, **common
        )
        windows = ResilientHttpOperator(
            task_id="windows", endpoint="/echo/claims-windows", **common,
            rate_limit=[five, RateLimit(50, 60.0, burst=50)],
        )  # fmt: skip
        bulk = BulkHttpOperator(
            task_id="bulk",
            items=[1, 2],
            endpoint="/echo/claims-bulk/{{ item }}",
            rate_limit=RateLimit(10),
            **common,
        )

        @task.resilient_http(rate_limit=five, **common)
        def same(client):
            return client.get("/echo/claims-same").status_code

        first >> [windows, bulk, same()]
    _register(dag)
    run = dag.test()
    states = _states(run)
    assert states == {"first": "success", "windows": "failed", "bulk": "failed", "same": "success"}, states
    paths = demo.calls()["paths"]
    assert "/echo/claims-first" in paths and "/echo/claims-same" in paths
    assert not any(p.startswith(("/echo/claims-windows", "/echo/claims-bulk")) for p in paths)
