"""The ``resilient_http`` connection type: form fields in the provider info, policies read from a
real connection (``AIRFLOW_CONN_*`` JSON), validated with the policy classes' own messages, used by
the operators unless the DAG sets its own, and never sent as headers."""

from __future__ import annotations

import json
import os

import jsonschema
import pendulum
import pytest
from test_dags import _register, _states

from api_orchestration import (
    ConfigurationError,
    RateLimit,
    ResilientHttpOperator,
    RetryPolicy,
)
from api_orchestration.connections import ConnectionPolicies, ResilientHttpHook, connection_policies
from api_orchestration.connections.fields import FIELDS
from api_orchestration.connections.policies import policies_from_extra
from api_orchestration.operators.bulk import BulkHttpOperator
from api_orchestration.policy import BreakerPolicy

START = pendulum.datetime(2026, 1, 1, tz="UTC")


def set_connection(
    monkeypatch, conn_id: str, port: int, extra: dict, conn_type: str = "resilient_http"
) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": conn_type, "host": "127.0.0.1", "port": port, "extra": extra}),
    )


# -- the policies, from the extra -----------------------------------------------------------------
def test_fields_build_the_policies_and_leave_the_rest_at_their_defaults():
    p = policies_from_extra(
        "pay",
        {"rate_limit_permits": 20, "rate_limit_burst": 5, "breaker_failure_rate": 0.25,
         "retry_max_attempts": 5, "retry_statuses": "429, 503", "X-Team": "payments"},
    )  # fmt: skip
    assert p == ConnectionPolicies(
        "pay",
        RateLimit(20, burst=5),
        BreakerPolicy(failure_rate=0.25),
        RetryPolicy(max_attempts=5, retry_statuses=frozenset({429, 503})),
    )
    assert policies_from_extra("plain", {"X-Team": "payments"}) == ConnectionPolicies("plain")


def test_uri_form_strings_are_read_as_the_field_types():
    p = policies_from_extra(
        "u",
        {"rate_limit_permits": "3", "rate_limit_per_seconds": "2.5", "retry_respect_retry_after": "false"},
    )
    assert p.rate_limit == RateLimit(3, per_seconds=2.5)
    assert p.retry == RetryPolicy(respect_retry_after=False)


def test_more_windows_of_one_rate_limit_from_the_extra():
    p = policies_from_extra("gh", {"rate_limit_permits": 10, "rate_limit_windows": "5000/3600, 100/60"})
    assert p.rate_limit == (
        RateLimit(10),
        RateLimit(100, 60.0, burst=100),
        RateLimit(5000, 3600.0, burst=5000),
    )
    for windows, words in (
        ("5000 per hour", "must be windows as permits/seconds, comma-separated, such as 5000/3600"),
        ("0/60", "must be an integer >= 1 (RateLimit.permits of '0/60')"),
        ("20/1", "has two windows with the same per_seconds"),
    ):
        with pytest.raises(ConfigurationError) as caught:
            policies_from_extra("gh", {"rate_limit_permits": 10, "rate_limit_windows": windows})
        assert str(caught.value).startswith("connection 'gh': rate_limit_windows "), caught.value
        assert words in str(caught.value)
    with pytest.raises(ConfigurationError, match="rate_limit_windows needs rate_limit_permits too"):
        policies_from_extra("gh", {"rate_limit_windows": "5000/3600"})


@pytest.mark.parametrize(
    ("extra", "field", "cls", "kwargs"),
    [
        ({"rate_limit_permits": 0}, "rate_limit_permits", RateLimit, {"permits": 0}),
        (
            {"rate_limit_permits": 5, "rate_limit_burst": 9},
            "rate_limit_burst",
            RateLimit,
            {"permits": 5, "burst": 9},
        ),
        ({"breaker_failure_rate": 1.5}, "breaker_failure_rate", BreakerPolicy, {"failure_rate": 1.5}),
        ({"breaker_min_calls": 50}, "breaker_min_calls", BreakerPolicy, {"min_calls": 50}),
        ({"retry_max_attempts": "many"}, "retry_max_attempts", RetryPolicy, {"max_attempts": "many"}),
        ({"retry_statuses": "404"}, "retry_statuses", RetryPolicy, {"retry_statuses": frozenset({404})}),
    ],
)
def test_a_bad_value_names_the_connection_and_field_with_the_policy_message(extra, field, cls, kwargs):
    with pytest.raises(ConfigurationError) as python_side:
        cls(**kwargs)
    with pytest.raises(ConfigurationError) as caught:
        policies_from_extra("payments", extra)
    message = str(caught.value)
    assert message.startswith(f"connection 'payments': {field} ")
    assert python_side.value.expected in message  # the Python class's own words
    assert f"({cls.__name__}.{python_side.value.param})" in message


def test_unknown_policy_fields_and_incomplete_rate_limits_are_refused():
    with pytest.raises(
        ConfigurationError, match=r"rate_limit_permit is not a field .*did you mean 'rate_limit_permits'"
    ):
        policies_from_extra("c", {"rate_limit_permit": 5})
    with pytest.raises(ConfigurationError, match="rate_limit_per_seconds needs rate_limit_permits too"):
        policies_from_extra("c", {"rate_limit_per_seconds": 2})
    with pytest.raises(ConfigurationError, match="comma-separated HTTP status codes"):
        policies_from_extra("c", {"retry_statuses": "429;503"})


def test_the_dags_own_policies_win():
    conn = ConnectionPolicies("c", RateLimit(5), BreakerPolicy(), RetryPolicy(max_attempts=5))
    mine = conn.under(rate_limit=RateLimit(1), retry=None)
    assert (mine.rate_limit, mine.breaker, mine.retry) == (
        RateLimit(1),
        BreakerPolicy(),
        RetryPolicy(max_attempts=5),
    )


def test_connection_policies_reads_a_real_connection(monkeypatch):
    set_connection(monkeypatch, "pol_real", 9, {"rate_limit_permits": 7})
    set_connection(monkeypatch, "pol_http", 9, {"rate_limit_permits": 7}, conn_type="http")
    assert connection_policies("pol_real").rate_limit == RateLimit(7)
    assert connection_policies("pol_http") == ConnectionPolicies("pol_http")  # http: extras are headers


# -- the provider info and the connection form ----------------------------------------------------
def test_provider_info_is_valid_and_offers_the_connection_form():
    import importlib.resources

    from api_orchestration_provider import get_provider_info

    info = get_provider_info()
    schema = json.loads(
        importlib.resources.files("airflow").joinpath("provider_info.schema.json").read_text()
    )
    jsonschema.validate(info, schema)
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "resilient_http"
    assert set(conn["conn-fields"]) == {f.name for f in FIELDS}

    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    meta = {m.connection_type: m for m in HookMetaService.hook_meta_data()}["resilient_http"]
    assert meta.hook_name == "Resilient HTTP API"
    assert meta.extra_fields["rate_limit_permits"]["schema"]["type"] == ["integer", "null"]
    assert meta.extra_fields["rate_limit_permits"]["schema"]["title"] == "Rate limit: permits"


def test_the_state_url_is_a_sensitive_option(tmp_path):
    """Airflow hides ``[api_orchestration] state_url`` (a Redis password) wherever it shows
    configuration, and reads it from a command or a secrets backend like its own secrets."""
    import subprocess
    import sys

    secret_url = "redis://:hunter2-state@127.0.0.1:6379/0"
    script = (
        "from airflow.configuration import conf\n"
        "shown = conf.as_dict(display_sensitive=False, display_source=True)['api_orchestration']\n"
        "print(shown['state_url'][0])\n"
        "from api_orchestration.state import configured_state_url\n"
        "print(configured_state_url())\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__API_ORCHESTRATION__STATE_URL": secret_url}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["< hidden >", secret_url]
    del env["AIRFLOW__API_ORCHESTRATION__STATE_URL"]
    env["AIRFLOW__API_ORCHESTRATION__STATE_URL_CMD"] = f"echo {secret_url}"
    script = "from api_orchestration.state import configured_state_url\nprint(configured_state_url())\n"
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == secret_url, out.stderr[-2000:]


# -- the operators use them -----------------------------------------------------------------------
@pytest.mark.usefixtures("airflow_db")
def test_operator_takes_the_connections_retry_policy_unless_the_dag_sets_one(demo, monkeypatch):
    from airflow.sdk import DAG

    fast = {"retry_max_attempts": 5, "retry_base_delay": 0.01, "retry_max_delay": 0.02}
    set_connection(monkeypatch, "conn_retry", demo.port, {**fast, "X-Team": "payments"})
    with DAG("conn_policy_retry", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(task_id="from_conn", http_conn_id="conn_retry", endpoint="/flaky/a?fail=3")
        ResilientHttpOperator(
            task_id="own",
            http_conn_id="conn_retry",
            endpoint="/flaky/b?fail=3",
            retry=RetryPolicy(max_attempts=2),
        )
        ResilientHttpOperator(task_id="echo", http_conn_id="conn_retry", endpoint="/echo/h")
    _register(dag)
    run = dag.test()
    states = _states(run)
    assert (states["from_conn"], states["own"]) == ("success", "failed")
    paths = demo.calls()["paths"]
    assert (paths["/flaky/a"], paths["/flaky/b"]) == (4, 2)  # 3 failures + 1; the DAG's 2 attempts
    ti = next(t for t in run.get_task_instances() if t.task_id == "echo")
    headers = {k.lower(): v for k, v in ti.xcom_pull(task_ids="echo")["headers"].items()}
    assert headers["x-team"] == "payments" and not any(h.startswith(("retry_", "retry-")) for h in headers)


@pytest.mark.usefixtures("airflow_db")
def test_bulk_takes_the_connections_rate_limit(demo, monkeypatch):
    from airflow.sdk import DAG

    set_connection(
        monkeypatch, "conn_limited", demo.port, {"rate_limit_permits": 4, "rate_limit_per_seconds": 1}
    )
    with DAG("conn_policy_bulk", schedule=None, start_date=START) as dag:
        BulkHttpOperator(
            task_id="bulk",
            http_conn_id="conn_limited",
            items=list(range(6)),
            endpoint="/echo/bulk-{{ item }}",
        )
    _register(dag)
    assert dag.test().state == "success"
    arrivals = sorted(
        t
        for p, ts in demo.calls(arrivals=True)["arrivals"].items()
        if p.startswith("/echo/bulk-")
        for t in ts
    )
    assert len(arrivals) == 6
    # 4 per second, evenly spaced (burst 1): 0.255 s apart, 1.27 s for 6 (unlimited: a few ms)
    assert arrivals[-1] - arrivals[0] >= 1.0, arrivals


@pytest.mark.usefixtures("airflow_db")
def test_a_bad_policy_in_the_connection_fails_the_task_without_calling(demo, monkeypatch):
    """Every path (operator, bulk, a builder step, a spec step, ``@task.resilient_http``) fails its
    task with the error naming the connection and the field; none calls (never silently unlimited)."""
    from airflow.sdk import DAG, task

    from api_orchestration import Call, Step, Workflow, build
    from api_orchestration.specs import load_text

    set_connection(monkeypatch, "conn_bad", demo.port, {"rate_limit_permits": 0})
    message = "connection 'conn_bad': rate_limit_permits must be an integer >= 1"
    with pytest.raises(ConfigurationError, match=message):
        connection_policies("conn_bad")
    errors: dict[str, str] = {}

    def record(context) -> None:
        errors[context["ti"].task_id] = str(context["exception"])

    with DAG(
        "conn_policy_bad", schedule=None, start_date=START, default_args={"on_failure_callback": record}
    ) as dag:
        ResilientHttpOperator(task_id="call", http_conn_id="conn_bad", endpoint="/echo/never")
        BulkHttpOperator(task_id="bulk", http_conn_id="conn_bad", items=[1, 2], endpoint="/echo/never")

        @task.resilient_http(http_conn_id="conn_bad")
        def decorated(client):
            return client.get("/echo/never").status_code

        decorated()
    workflow = build(
        Workflow("conn_policy_bad_wf", conn_id="conn_bad", steps=(Step("step", Call("GET", "/echo/never")),)),
        schedule=None, start_date=START, default_args={"on_failure_callback": record},
    )  # fmt: skip
    loaded = load_text(
        "dag_id: conn_policy_bad_spec\ndefaults: {conn_id: conn_bad}\n"
        "steps:\n  - name: spec_step\n    call: {path: /echo/never}\n",
        "conn_policy_bad_spec.yaml",
    )
    default_args = {**loaded.dag_kwargs.get("default_args", {}), "on_failure_callback": record}
    spec = build(loaded.workflow, **{**loaded.dag_kwargs, "default_args": default_args})
    for d in (dag, workflow, spec):
        _register(d)
    assert _states(dag.test()) == {"call": "failed", "bulk": "failed", "decorated": "failed"}
    assert _states(workflow.test()) == {"step": "failed"}
    assert _states(spec.test()) == {"spec_step": "failed"}
    assert demo.calls()["total"] == 0  # never silently unlimited
    assert set(errors) == {"call", "bulk", "decorated", "step", "spec_step"}
    assert all(message in text for text in errors.values()), errors


def test_hook_reads_the_connection_without_the_policy_fields(demo, monkeypatch):
    set_connection(monkeypatch, "conn_hook", demo.port, {"rate_limit_permits": 3, "X-Team": "t"})
    session = ResilientHttpHook(method="GET", http_conn_id="conn_hook").get_conn()
    assert session.headers["X-Team"] == "t" and "rate_limit_permits" not in session.headers


def test_the_ui_test_button_reports_a_bad_policy_with_the_policy_message(demo, monkeypatch):
    """``ResilientHttpHook.test_connection`` (the connection form's Test button): a bad field is
    refused with the same words as the Python class, before any call; a good one tests the host."""
    with pytest.raises(ConfigurationError) as python_side:
        BreakerPolicy(failure_rate=1.5)
    set_connection(monkeypatch, "conn_ui_bad", demo.port, {"breaker_failure_rate": 1.5})
    ok, message = ResilientHttpHook(method="GET", http_conn_id="conn_ui_bad").test_connection()
    assert not ok and message.startswith("connection 'conn_ui_bad': breaker_failure_rate ")
    assert python_side.value.expected in message
    assert demo.calls()["total"] == 0
    monkeypatch.setenv(
        "AIRFLOW_CONN_CONN_UI_GOOD",
        json.dumps(
            {
                "conn_type": "resilient_http",
                "host": f"{demo.url}/echo/ui-test",
                "extra": {"rate_limit_permits": 5},
            }
        ),
    )
    assert ResilientHttpHook(method="GET", http_conn_id="conn_ui_good").test_connection() == (
        True,
        "Connection successfully tested",
    )
    assert demo.calls()["paths"] == {"/echo/ui-test": 1}


@pytest.mark.usefixtures("airflow_db")
def test_workflows_and_specs_take_the_connections_policies_unless_they_set_their_own(demo, monkeypatch):
    from api_orchestration import Call, Step, Workflow, build
    from api_orchestration.specs import load_text

    fast = {"retry_max_attempts": 5, "retry_base_delay": 0.01, "retry_max_delay": 0.02}
    set_connection(monkeypatch, "conn_wf", demo.port, fast)
    wf = Workflow(
        "conn_policy_workflow",
        conn_id="conn_wf",
        steps=(
            Step("inherits", Call("GET", "/flaky/wf-a?fail=3")),
            Step(
                "own", Call("GET", "/flaky/wf-b?fail=3"), retry=RetryPolicy(max_attempts=2, base_delay=0.01)
            ),
        ),
    )
    dag = build(wf, schedule=None, start_date=START)
    set_connection(monkeypatch, "conn_spec_limited", demo.port, {"rate_limit_permits": 5})
    spec = load_text(
        "dag_id: conn_policy_spec\ndefaults: {conn_id: conn_wf}\n"
        "steps:\n  - name: inherits\n    call: {path: /flaky/spec-a?fail=3}\n"
        "  - name: limited\n    call: {path: '/echo/spec-limited-{{ item }}', conn_id: conn_spec_limited}\n"
        "    bulk: {over: [1, 2, 3, 4, 5, 6]}\n",
        "conn_policy_spec.yaml",
    ).dag
    for d in (dag, spec):
        _register(d)
    assert _states(dag.test()) == {"inherits": "success", "own": "failed"}
    assert _states(spec.test()) == {"inherits": "success", "limited": "success"}
    paths = demo.calls()["paths"]
    assert (paths["/flaky/wf-a"], paths["/flaky/wf-b"], paths["/flaky/spec-a"]) == (4, 2, 4)
    # a spec step without rate_limit holds the connection's 5 per second: 6 calls span 1 s (unlimited: ms)
    arrivals = sorted(
        t
        for p, ts in demo.calls(arrivals=True)["arrivals"].items()
        if p.startswith("/echo/spec-limited-")
        for t in ts
    )
    assert len(arrivals) == 6 and arrivals[-1] - arrivals[0] >= 0.8, arrivals


def test_the_connections_cache_and_oauth2_settings_are_validated():
    p = policies_from_extra("api", {"cache_ttl": "60", "oauth2_conn_id": " auth "})
    assert p.cache is not None and p.cache.ttl == 60 and p.oauth2_conn_id == "auth"
    assert p.under(method="POST").cache is None  # the connection's cache: GET and HEAD only
    with pytest.raises(ConfigurationError, match="cache_max_entry_bytes needs cache_ttl too"):
        policies_from_extra("api", {"cache_max_entry_bytes": 10})
    with pytest.raises(
        ConfigurationError, match=r"connection 'api': cache_ttl must be a number of seconds > 0"
    ):
        policies_from_extra("api", {"cache_ttl": 0})


@pytest.mark.usefixtures("airflow_db")
def test_operator_takes_the_connections_cache_and_oauth2_connection(demo, monkeypatch):
    """A connection that sets a cache TTL and an OAuth2 connection: a DAG that sets neither gets
    both (the second GET is served from the shared cache; every call carries the shared token)."""
    from airflow.sdk import DAG

    requests_module = pytest.importorskip("requests")
    monkeypatch.setenv("AIRFLOW_CONN_CONN_AUTH", json.dumps({
        "conn_type": "generic", "host": f"{demo.url}/oauth/token", "login": "demo-client",
        "password": "demo-secret", "extra": {"scopes": ["read"]},
    }))  # fmt: skip
    set_connection(monkeypatch, "conn_cached", demo.port, {"cache_ttl": 300, "oauth2_conn_id": "conn_auth"})
    with DAG("conn_policy_cache_oauth", schedule=None, start_date=START) as dag:
        first = ResilientHttpOperator(
            task_id="first", http_conn_id="conn_cached", endpoint="/reference/countries"
        )
        again = ResilientHttpOperator(
            task_id="again", http_conn_id="conn_cached", endpoint="/reference/countries"
        )
        me = ResilientHttpOperator(task_id="me", http_conn_id="conn_cached", endpoint="/oauth/api/me")
        first >> again >> me
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert demo.calls()["paths"]["/reference/countries"] == 1  # the second came from the cache
    counts = requests_module.get(f"{demo.url}/admin/oauth", timeout=5).json()["counts"]
    assert counts["token_requests"] >= 1 and counts["api_ok"] >= 1
