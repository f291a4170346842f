"""OAuth2 through real Airflow (dag.test()): the single-call operator, bulk, the builder and a YAML
spec send the OAuth2 connection's shared token; the token never reaches XCom or rendered fields."""

from __future__ import annotations

import json

import pendulum
import pytest
import requests
from test_dags import _register, _states
from test_workflows import _xcom

from api_orchestration import ConfigurationError, ResilientHttpOperator
from api_orchestration.specs import load_text
from api_orchestration.workflows.build import build
from api_orchestration.workflows.model import Bulk, Call, Step, Workflow

pytestmark = pytest.mark.usefixtures("airflow_db")
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@pytest.fixture
def oauth_conn(demo, monkeypatch):
    connection = {
        "conn_type": "generic", "host": f"{demo.url}/oauth/token", "login": "demo-client",
        "password": "demo-secret", "extra": {"scopes": ["read"]},
    }  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_DEMO_OAUTH", json.dumps(connection))
    # the API's own connection: the demo's base URL, no credentials (the token is the authorization)
    return demo


def _oauth(demo) -> dict:
    return requests.get(f"{demo.url}/admin/oauth", timeout=5).json()["counts"]


def test_builder_steps_and_bulk_send_the_shared_token(oauth_conn) -> None:
    demo = oauth_conn
    wf = Workflow(
        "wf_oauth", conn_id="demo_api", oauth2_conn_id="demo_oauth",
        steps=(
            Step("me", Call("GET", "/oauth/api/me")),
            Step("items", Call("GET", "/oauth/api/items/{{ item }}"), bulk=Bulk([1, 2, 3, 4, 5]), depends_on=("me",)),
        ),
    )  # fmt: skip
    dag = build(wf, schedule=None, start_date=START)
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    me = _xcom(run, "me")
    assert me["client_id"] == "demo-client" and "access_token" not in json.dumps(me)
    assert _xcom(run, "items")["succeeded"] == 5
    c = _oauth(demo)  # (a token kept from an earlier test, which the reset demo forgot, costs one 401)
    assert c["token_requests"] == 1 and c["api_ok"] == 6


def test_a_spec_with_an_oauth2_connection_recovers_from_a_revoked_token(oauth_conn) -> None:
    demo = oauth_conn
    spec = """
dag_id: spec_oauth
defaults:
  conn_id: demo_api
  oauth2_conn_id: demo_oauth
steps:
  - name: first
    call: {path: /oauth/api/first}
  - name: second
    depends_on: first
    call: {path: /oauth/api/second}
"""
    dag = load_text(spec, "spec_oauth.yaml").dag
    assert dag.get_task("first").oauth2_conn_id == "demo_oauth"
    _register(dag)
    assert dag.test().state == "success"
    before = _oauth(demo)
    requests.post(f"{demo.url}/admin/oauth/revoke", json={}, timeout=5)
    run = dag.test()
    assert run.state == "success", _states(run)
    after = _oauth(demo)
    assert after["token_requests"] - before["token_requests"] == 1  # one 401, one new token
    assert after.get("api_invalid_token", 0) - before.get("api_invalid_token", 0) == 1


def test_oauth2_conn_id_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="oauth2_conn_id"):
        ResilientHttpOperator(task_id="t", endpoint="/x", oauth2_conn_id="")
    with pytest.raises(ConfigurationError, match="auth_type must not be set with oauth2_conn_id"):
        ResilientHttpOperator(task_id="t", endpoint="/x", oauth2_conn_id="crm", auth_type=object())


def test_limiter_and_breaker_keys_are_templated_per_tenant(demo) -> None:
    from airflow.sdk import DAG

    from api_orchestration import BreakerPolicy, RateLimit
    from api_orchestration.state import get_backend

    with DAG("it_tenant_keys", schedule=None, start_date=START, params={"tenant": "acme"}) as dag:
        ResilientHttpOperator(
            task_id="call", http_conn_id="demo_api", endpoint="/limits/github/{{ params.tenant }}/repos",
            rate_limit=RateLimit(5, 1.0), rate_limit_key="gh:{{ params.tenant }}",
            breaker=BreakerPolicy(), breaker_key="gh:{{ params.tenant }}",
        )  # fmt: skip
    _register(dag)
    run = dag.test(run_conf={"tenant": "globex"})
    assert run.state == "success", _states(run)
    backend = get_backend()
    assert backend.limiter_status("gh:globex").granted >= 1
    assert backend.breaker_status("gh:globex") is not None
    assert backend.limiter_status("gh:{{ params.tenant }}") is None


def test_a_sync_sends_the_token_of_its_connections_oauth2_conn_id(oauth_conn, monkeypatch, tmp_path) -> None:
    """A resilient_http connection naming an OAuth2 connection in its extra: every page of a sync
    carries the shared token, as the single-call and bulk operators' calls do (one code path)."""
    import sqlite3

    from airflow.sdk import DAG
    from test_connection_type import set_connection

    from api_orchestration.calls.pagination import Pagination
    from api_orchestration.operators.sync import ApiSyncOperator
    from api_orchestration.syncs.stream import Stream

    demo = oauth_conn
    set_connection(monkeypatch, "api_with_oauth", demo.port, {"oauth2_conn_id": "demo_oauth"})
    db = tmp_path / "oauth_sync.db"
    with DAG("sync_oauth", schedule=None, start_date=START) as dag:
        ApiSyncOperator(
            task_id="sync_me",
            http_conn_id="api_with_oauth",  # sets no oauth2_conn_id itself: the connection's applies
            endpoint="/oauth/api/me",
            pagination=Pagination("page_number", records="[@]", max_pages=3),  # the echo: one record a page
            stream=Stream("oauth_echo", primary_key="path"),
            destination=f"sqlite:///{db}",
        )
    _register(dag)
    before = _oauth(demo)
    run = dag.test()
    assert run.state == "success", _states(run)
    after = _oauth(demo)
    assert after.get("api_ok", 0) - before.get("api_ok", 0) == 3, (
        after
    )  # three pages, each with the bearer token
    assert after.get("api_unauthorized", 0) == before.get("api_unauthorized", 0)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path, client_id, _raw FROM oauth_echo").fetchall()
    assert [r[:2] for r in rows] == [("/oauth/api/me", "demo-client")]
    assert "access_token" not in rows[0][2]
    with pytest.raises(ConfigurationError, match="oauth2_conn_id"):
        ApiSyncOperator(
            task_id="bad", endpoint="/x", pagination=Pagination("link_header"),
            stream=Stream("x", primary_key="id"), oauth2_conn_id=" ",
        )  # fmt: skip
    from api_orchestration.workflows.model import Sync

    wf = Workflow(
        "wf_sync_oauth", conn_id="demo_api", oauth2_conn_id="demo_oauth",
        steps=(Step("s", Call("GET", "/oauth/api/me", paginate=Pagination("page_number", records="[@]")),
                    sync=Sync(Stream("oauth_echo", primary_key="path"))),),
    )  # fmt: skip
    assert build(wf, schedule=None, start_date=START).get_task("s").oauth2_conn_id == "demo_oauth"


def _stored_tokens_and_entries() -> tuple[set[str], list[str]]:
    """The access tokens in the suite's state store, and every response-cache entry as stored."""
    import sqlite3

    from api_orchestration.state import get_backend

    with sqlite3.connect(get_backend().path) as db:
        tokens = {
            json.loads(entry)["access_token"] for (entry,) in db.execute("SELECT entry FROM oauth_token")
        }
        entries = [body for (body,) in db.execute("SELECT body FROM cache_entry")]
    return tokens, entries


def test_a_cached_get_behind_oauth2_needs_no_token_is_kept_per_credential_and_revalidates_after_a_401(
    oauth_conn, monkeypatch, caplog
) -> None:
    """Two OAuth2 clients call the same URL under the same limiter key (so the same cache scope):
    each gets its own entry. A fresh entry is served with no call and no token request though the
    token is expiring; a stale one is revalidated with the token, a 401 (revoked) gets one new
    token and one retry, and the 304 serves the stored body. No token is in an entry, log or XCom."""
    import logging
    import time
    import uuid

    from airflow.sdk import DAG

    from api_orchestration.policy import CachePolicy

    demo = oauth_conn
    reader = {"conn_type": "generic", "host": f"{demo.url}/oauth/token", "login": "reader-client",
              "password": "reader-secret", "extra": {"scopes": ["read"]}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_READER_OAUTH", json.dumps(reader))
    path = f"/oauth/api/ref-{uuid.uuid4().hex[:8]}"
    with DAG("oauth_cache", schedule=None, start_date=START, params={"max_age": 60}) as dag:
        for task_id, conn in (("as_demo", "demo_oauth"), ("as_reader", "reader_oauth")):
            ResilientHttpOperator(
                task_id=task_id, http_conn_id="demo_api", oauth2_conn_id=conn, rate_limit_key="crm",
                endpoint=path + "?max_age={{ params.max_age }}", cache=CachePolicy(ttl=60), log_response=True,
                response_filter=lambda r: {**r.json(), "cached": getattr(r, "from_cache", False)},
            )  # fmt: skip
    _register(dag)

    def run(max_age: int) -> dict:
        result = dag.test(run_conf={"max_age": max_age})
        assert result.state == "success", _states(result)
        return {t: _xcom(result, t) for t in ("as_demo", "as_reader")}

    def settings(**values) -> None:
        requests.post(f"{demo.url}/admin/oauth/settings", json=values, timeout=5).raise_for_status()

    tokens, xcoms = set(), []
    with caplog.at_level(logging.INFO):
        # 1. tokens of 30 s: within the 60 s refresh margin, so any call would first fetch a new one
        settings(access_token_ttl=30)
        first = run(60)
        tokens |= _stored_tokens_and_entries()[0]
        before = _oauth(demo)
        again = run(60)
        after = _oauth(demo)
        assert (first["as_demo"]["client_id"], first["as_reader"]["client_id"]) == (
            "demo-client",
            "reader-client",
        )
        assert again == {t: {**first[t], "cached": True} for t in first}  # each client its own entry
        assert (
            after["token_requests"] == before["token_requests"] and after["api_calls"] == before["api_calls"]
        )
        # 2. a stale entry, a token the API has revoked: 401, one new token, one retry, 304
        settings(access_token_ttl=3600)
        stored = run(1)
        tokens |= _stored_tokens_and_entries()[0]
        requests.post(f"{demo.url}/admin/oauth/revoke", json={}, timeout=5).raise_for_status()
        time.sleep(1.1)  # max-age=1: stale, revalidated with its ETag
        before = _oauth(demo)
        revalidated = run(1)
        after = _oauth(demo)
        xcoms += [first, again, stored, revalidated]
    assert revalidated == {t: {**stored[t], "cached": True} for t in stored}
    delta = {
        k: after.get(k, 0) - before.get(k, 0)
        for k in ("token_requests", "api_invalid_token", "api_not_modified", "api_ok")
    }
    assert delta == {"token_requests": 2, "api_invalid_token": 2, "api_not_modified": 2, "api_ok": 0}
    current, entries = _stored_tokens_and_entries()
    tokens |= current
    assert len(tokens) >= 4 and entries  # (demo and reader) x (30 s, 3600 s, after the 401)
    seen = caplog.text + json.dumps(xcoms) + "".join(entries)
    assert not [t for t in tokens if t in seen]
