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
