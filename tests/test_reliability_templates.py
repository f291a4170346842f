"""Reliability probes of issue 13 that concern what templates and secrets can do.

- hostile templates: known Jinja escape payloads through the spec loader (refused, naming the file
  and the field), the builder and a single operator under ``dag.test()`` (the task fails with the
  sandbox's SecurityError; no code runs: a marker file the payload would create never appears and
  the demo API never receives the request);
- type-preserving native rendering: a string param stays a string whatever it looks like, a
  number stays a number, mixed text is text, checked at the demo API's ``/echo``;
- connection extras: the README's ``AIRFLOW_CONN_...`` JSON with ``{"Authorization": "Bearer ..."}``
  reaches a demo endpoint that checks the header;
- secrets: the connection's credentials are masked in the XCom value (an echo of them), secret
  query values in the rendered fields, and state URLs in errors and on the status page.

The contracts with Airflow's private parts that the sandbox and the masking rely on are in
tests/test_compat.py.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pendulum
import pytest
from test_dags import _register, _states

REPO = Path(__file__).resolve().parents[1]
START = pendulum.datetime(2026, 1, 1, tz="UTC")

pytestmark = pytest.mark.usefixtures("airflow_db")


def payloads(marker: Path) -> dict[str, str]:
    """Known Jinja escapes; each would create ``marker`` (and return text) if it ran."""
    cmd = f"touch {marker} && echo PWNED"
    return {
        "cycler": f"{{{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        "joiner": f"{{{{ joiner.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        "namespace": f"{{% set ns = namespace() %}}{{{{ ns.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        "lipsum": f"{{{{ lipsum.__globals__['os'].popen('{cmd}').read() }}}}",
        "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "self_context": "{{ self._TemplateReference__context }}",
        "attr_filter": f"{{{{ (cycler|attr('__init__')).__globals__.os.popen('{cmd}').read() }}}}",
        "format": "{{ '{0.__class__.__mro__}'.format(params) }}",
    }


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"
    yield path
    assert not path.exists(), "a template payload ran code on the worker"


def _ti(run, task_id: str, map_index: int = -1):
    return next(t for t in run.get_task_instances() if t.task_id == task_id and t.map_index == map_index)


def _xcom(run, task_id: str, map_index: int = -1):
    ti = _ti(run, task_id, map_index)
    return ti.xcom_pull(task_ids=task_id, map_indexes=map_index if map_index >= 0 else None)


FAILURES: dict[str, str] = {}


def _remember_failure(context) -> None:
    """on_failure_callback: the exception type each failed task ended with (dag.test runs in-process)."""
    ti, error = context["ti"], context.get("exception")
    key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
    FAILURES[key] = f"{type(error).__name__}: {error}"


# -- 2. hostile templates ------------------------------------------------------------------------


def _spec(step_call: dict, **step) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "params": {"channels": {"default": ["email"], "type": "array"}},
            "defaults": {"conn_id": "demo_api"},
            "steps": [{"name": "call", "call": step_call, **step}],
        }
    )


@pytest.mark.parametrize("name", sorted(payloads(Path("/tmp/x"))))
@pytest.mark.parametrize("field", ["json.v", "path", "headers.X-Trace", "query.q", "conn_id"])
def test_the_spec_loader_refuses_every_escape_payload_naming_the_file_and_field(name, field, tmp_path):
    from api_orchestration import SpecError
    from api_orchestration.specs import load_file

    payload = payloads(tmp_path / "m")[name]
    call: dict = {"method": "POST", "path": "/echo/hostile"}
    head, _, key = field.partition(".")
    if key:
        call[head] = {key: payload}
    else:
        call[head] = "/echo/" + payload if head == "path" else payload
    path = tmp_path / "hostile.yaml"
    path.write_text(_spec(call))
    with pytest.raises(SpecError) as caught:
        load_file(path)
    text = str(caught.value)
    expected_field = {"json.v": "json.v", "headers.X-Trace": "headers.X-Trace"}.get(field, field)
    assert re.search(
        rf"hostile\.yaml: steps\[0\]\.call\.{re.escape(expected_field)}: template reaches Python internals",
        text,
    ), text
    assert not (tmp_path / "m").exists()


def test_the_validator_cli_says_fail_for_a_hostile_spec(tmp_path):
    import subprocess
    import sys

    (tmp_path / "hostile.yaml").write_text(
        _spec({"method": "POST", "path": "/echo/x", "json": {"v": payloads(tmp_path / "m")["cycler"]}})
    )
    done = subprocess.run(
        [sys.executable, "-m", "api_orchestration", "validate", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "plugins")},
    )  # fmt: skip
    assert done.returncode == 1, done
    assert (
        "hostile.yaml: steps[0].call.json.v: template reaches Python internals (__init__, __globals__)"
        in (done.stdout + done.stderr)
    )


def _hostile_steps(marker: Path, path_prefix: str):
    from api_orchestration import Call, RetryPolicy, Step

    fast = RetryPolicy(max_attempts=1)
    return tuple(
        Step(f"s_{name}", Call("POST", f"{path_prefix}/{name}", json={"v": payload}), retry=fast)
        for name, payload in payloads(marker).items()
    )


def test_the_builder_renders_step_templates_in_a_sandbox(demo, marker):
    """The Python builder (no validator in the way): every payload step fails with SecurityError."""
    from api_orchestration import Call, FanOut, RetryPolicy, Step, Workflow, build

    payload = payloads(marker)["cycler"]
    wf = Workflow(
        "rel_hostile_builder",
        conn_id="demo_api",
        steps=(
            *_hostile_steps(marker, "/echo/hostile"),
            # a mapped task renders through Airflow's other path (MappedOperator)
            Step("fan", Call("POST", "/echo/hostile/fan/{{ item }}", json={"v": payload}),
                 fan_out=FanOut(over=["a", "b"]), retry=RetryPolicy(max_attempts=1)),
            # a JMESPath may hold a Jinja payload in a string literal: the builder's own Python
            # tasks must not render it (Airflow's native environment would run it)
            Step("jp", Call("POST", "/echo/ok/{{ item }}"),
                 fan_out=FanOut(over="params.channels[?@ != '" + payload.replace("'", '"') + "']")),
        ),
    )  # fmt: skip
    dag = build(wf, schedule=None, start_date=START, params={"channels": ["email", "sms"]})
    for task in dag.tasks:
        task.on_failure_callback = [_remember_failure]
    _register(dag)
    FAILURES.clear()
    run = dag.test()
    states = _states(run)
    hostile = [t for t in states if t.startswith("s_") or t.startswith("fan_each")]
    assert len(hostile) == len(payloads(marker)) + 2
    assert all(states[t] == "failed" for t in hostile), states
    for task in hostile:
        assert FAILURES[task].startswith(("SecurityError", "UndefinedError")), (task, FAILURES[task])
    assert (
        sum("SecurityError" in FAILURES[t] for t in hostile) >= len(hostile) - 1
    )  # namespace: no such attribute
    assert demo.calls()["paths"].get("/echo/hostile", 0) == 0
    assert not any(p.startswith("/echo/hostile") for p in demo.calls()["paths"]), demo.calls()["paths"]
    assert states["jp_each[0]"] == states["jp_each[1]"] == "success"  # the JMESPath ran as JMESPath
    assert _xcom(run, "jp_items") == ["email", "sms"]


def test_a_loaded_spec_with_a_payload_in_a_jmespath_literal_runs_it_as_jmespath_only(demo, marker):
    """What the validator lets through (a JMESPath string literal may hold anything) is never rendered."""
    from api_orchestration.specs import load_text

    payload = payloads(marker)["cycler"].replace("'", '"')  # inside a JMESPath 'raw string'
    over = f"params.channels[?@ != '{payload}']"
    text = _spec({"method": "POST", "path": "/echo/each/{{ item }}"}, fan_out={"over": over})
    loaded = load_text(text, "jmes.yaml", default_dag_id="rel_hostile_jmespath")
    _register(loaded.dag)
    run = loaded.dag.test()
    assert run.state == "success", _states(run)
    assert demo.calls()["paths"] == {"/echo/each/email": 1}


@pytest.mark.parametrize("native", [True, False], ids=["native-dag", "string-dag"])
def test_a_single_operator_renders_in_a_sandbox(demo, marker, native):
    """ResilientHttpOperator and BulkHttpOperator alone, in a DAG that renders native objects (Airflow's
    environment for it is not sandboxed) and in one that does not (Airflow's sandbox allows ``_x``)."""
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator, RetryPolicy
    from api_orchestration.operators.bulk import BulkHttpOperator

    dag_id = f"rel_hostile_single_{'native' if native else 'string'}"
    with DAG(dag_id, schedule=None, start_date=START, render_template_as_native_obj=native) as dag:
        for name, payload in payloads(marker).items():
            ResilientHttpOperator(
                task_id=f"op_{name}", http_conn_id="demo_api", method="POST", endpoint=f"/echo/hostile/{name}",
                json={"v": payload}, retry=RetryPolicy(max_attempts=1), on_failure_callback=_remember_failure,
            )  # fmt: skip
        ResilientHttpOperator(
            task_id="op_endpoint", http_conn_id="demo_api", endpoint="/echo/" + payloads(marker)["cycler"],
            on_failure_callback=_remember_failure,
        )  # fmt: skip
        BulkHttpOperator(
            task_id="bulk_conn", items=[1], endpoint="/echo/hostile/bulk",
            http_conn_id=payloads(marker)["cycler"] + "demo_api", on_failure_callback=_remember_failure,
        )  # fmt: skip
    _register(dag)
    FAILURES.clear()
    run = dag.test()
    states = _states(run)
    assert set(states.values()) == {"failed"}, states
    for task in states:
        assert FAILURES[task].startswith(("SecurityError", "UndefinedError")), (task, FAILURES[task])
    assert FAILURES["op_self_context"].startswith("SecurityError")  # Airflow's own sandbox allows it
    assert not any(p.startswith("/echo/hostile") for p in demo.calls()["paths"]), demo.calls()["paths"]


# -- 4. values keep their types ------------------------------------------------------------------

TYPED_PARAMS = {
    "order_id": {"default": "12345", "type": "string"},
    "none_text": {"default": "None", "type": "string"},
    "list_text": {"default": "[1, 2]", "type": "string"},
    "address": {"default": "221", "type": "string"},
    "amount_cents": {"default": 1250, "type": "integer"},
    "skus": {"default": ["SKU-1"], "type": "array"},
}
TYPED_BODY = {
    "order_id": "{{ params.order_id }}",
    "none_text": "{{ params.none_text }}",
    "list_text": "{{ params.list_text }}",
    "address": "{{ params.address }}",
    "amount_cents": "{{ params.amount_cents }}",
    "skus": "{{ params.skus }}",
    "mixed": "order-{{ params.order_id }}",
    "two": "{{ params.amount_cents }}{{ params.amount_cents }}",
    "literal_text": "100",
    "literal_number": 7,
    "expression": "{{ params.amount_cents * 2 }}",
}
TYPED_ECHO = {
    "order_id": "12345",
    "none_text": "None",
    "list_text": "[1, 2]",
    "address": "221",
    "amount_cents": 1250,
    "skus": ["SKU-1"],
    "mixed": "order-12345",
    "two": "12501250",
    "literal_text": "100",
    "literal_number": 7,
    "expression": 2500,
}


def test_a_spec_sends_values_with_the_type_they_evaluate_to(demo):
    """Spec -> builder -> dag.test(): what /echo received, and a fan-out item."""
    import yaml

    from api_orchestration.specs import load_text

    spec = {
        "params": TYPED_PARAMS,
        "defaults": {"conn_id": "demo_api"},
        "steps": [
            {"name": "typed", "call": {"method": "POST", "path": "/echo/typed", "json": TYPED_BODY}, "output": "json"},
            {"name": "items", "fan_out": {"over": ["007", 5, "None"]},
             "call": {"method": "POST", "path": "/echo/item", "json": {"item": "{{ item }}"}}, "output": "json.item"},
        ],
    }  # fmt: skip
    loaded = load_text(yaml.safe_dump(spec), "typed.yaml", default_dag_id="rel_types_spec")
    _register(loaded.dag)
    run = loaded.dag.test()
    assert run.state == "success", _states(run)
    assert _xcom(run, "typed") == TYPED_ECHO
    assert _xcom(run, "items")["results"] == ["007", 5, "None"]
    # conf values keep their types too
    run = loaded.dag.test(run_conf={"order_id": "00042", "amount_cents": 99})
    assert _xcom(run, "typed") == {**TYPED_ECHO, "order_id": "00042", "amount_cents": 99,
                                        "mixed": "order-00042", "two": "9999", "expression": 198}  # fmt: skip


@pytest.mark.parametrize("native", [True, False], ids=["native-dag", "string-dag"])
def test_a_single_operator_sends_values_with_the_type_they_evaluate_to(demo, native):
    from airflow.sdk import DAG, Param

    from api_orchestration import ResilientHttpOperator

    params = {k: Param(v["default"], type=v["type"]) for k, v in TYPED_PARAMS.items()}
    dag_id = f"rel_types_single_{'native' if native else 'string'}"
    with DAG(
        dag_id, schedule=None, start_date=START, params=params, render_template_as_native_obj=native
    ) as dag:
        ResilientHttpOperator(
            task_id="typed", http_conn_id="demo_api", method="POST", endpoint="/echo/typed", json=TYPED_BODY,
            response_filter=lambda r: r.json()["json"],
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    if native:
        assert _xcom(run, "typed") == TYPED_ECHO
    else:  # a DAG that renders strings sends strings (non-string literals stay as written)
        assert _xcom(run, "typed") == {
            k: v if k == "literal_number" else str(v) for k, v in TYPED_ECHO.items()
        }


# -- 5. connection extras as providers-http reads them -------------------------------------------


def _readme_connection_example() -> dict:
    """The AIRFLOW_CONN_... JSON the README shows for a bearer token."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"export (AIRFLOW_CONN_\w+)='(\{.*?\})'", readme)
    assert found, "the README shows how to put a bearer token in a connection"
    conn = json.loads(found.group(2))
    assert conn["extra"]["Authorization"].startswith("Bearer "), conn
    assert "headers" not in conn["extra"]
    return conn


def _connection_like_readme(monkeypatch, conn_id: str, demo, **changes) -> None:
    conn = _readme_connection_example()
    extra = changes.pop("extra", {})
    conn.update(host="127.0.0.1", port=demo.port, schema="http", **changes)
    conn["extra"] = {**conn["extra"], "Authorization": "Bearer demo-secret-token", **extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def test_a_connection_made_the_readme_way_authenticates(demo, monkeypatch):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator, RetryPolicy

    _connection_like_readme(monkeypatch, "rel_secure", demo)
    # the old advice: headers nested under "headers" (providers-http sends it as a header named "headers")
    monkeypatch.setenv(
        "AIRFLOW_CONN_REL_NESTED",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": demo.port,
                    "extra": {"headers": {"Authorization": "Bearer demo-secret-token"}}}),
    )  # fmt: skip
    monkeypatch.setenv(
        "AIRFLOW_CONN_REL_NOAUTH", json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": demo.port})
    )
    once = RetryPolicy(max_attempts=1)
    with DAG("rel_conn_extras", schedule=None, start_date=START) as dag:
        for conn_id in ("rel_secure", "rel_nested", "rel_noauth"):
            ResilientHttpOperator(
                task_id=conn_id, http_conn_id=conn_id, endpoint="/secure/orders", retry=once,
                response_filter=lambda r: r.json()["path"],
            )  # fmt: skip
    _register(dag)
    run = dag.test()
    states = _states(run)
    assert states["rel_secure"] == "success" and _xcom(run, "rel_secure") == "/secure/orders"
    assert states["rel_nested"] == "failed"  # InvalidHeader: nothing sent
    assert states["rel_noauth"] == "failed"  # 401 from the endpoint that checks the header
    assert demo.calls()["paths"]["/secure/orders"] == 2


def test_the_spec_validator_points_to_top_level_extra_headers(tmp_path):
    from api_orchestration import SpecError
    from api_orchestration.specs import load_text

    text = _spec({"path": "/secure/x", "headers": {"Authorization": "Bearer abcdef123456"}})
    with pytest.raises(SpecError) as caught:
        load_text(text, "creds.yaml")
    message = str(caught.value)
    assert 'a header as a top-level key of its extra: {"Authorization": "Bearer ..."}' in message
    assert '{"headers"' not in message


# -- 6. secrets ----------------------------------------------------------------------------------


def test_connection_credentials_echoed_by_the_api_are_masked_in_xcom(demo, monkeypatch):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator

    api_key = f"key-{uuid.uuid4().hex[:12]}"
    _connection_like_readme(
        monkeypatch, "rel_bearer", demo, extra={"X-Api-Key": api_key, "X-Tenant": "acme-corp"}
    )
    password = f"pw-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_REL_BASIC",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": demo.port,
                "login": "alice",
                "password": password,
            }
        ),
    )
    with DAG("rel_secrets_xcom", schedule=None, start_date=START, render_template_as_native_obj=True) as dag:
        ResilientHttpOperator(task_id="bearer", http_conn_id="rel_bearer", endpoint="/secure/me")
        ResilientHttpOperator(task_id="basic", http_conn_id="rel_basic", endpoint="/echo/me")
        ResilientHttpOperator(
            task_id="picked", http_conn_id="rel_bearer", endpoint="/secure/me",
            response_filter=lambda r: {"auth": r.json()["headers"]["authorization"], "key": r.json()["headers"]["x-api-key"]},
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    bearer, basic, picked = (_xcom(run, t) for t in ("bearer", "basic", "picked"))
    stored = json.dumps([bearer, basic, picked])
    for secret in ("demo-secret-token", api_key, password):
        assert secret not in stored
    import base64

    assert base64.b64encode(f"alice:{password}".encode()).decode() not in stored
    assert bearer["headers"]["authorization"] == "Bearer ***" or bearer["headers"]["authorization"] == "***"
    assert bearer["headers"]["x-api-key"] == "***" and picked == {
        "auth": bearer["headers"]["authorization"],
        "key": "***",
    }
    assert bearer["headers"]["x-tenant"] == "acme-corp"  # not a credential: kept
    assert "***" in basic["headers"]["authorization"]


def _rendered_fields(run, task_id: str) -> dict:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    return RenderedTaskInstanceFields.get_templated_fields(_ti(run, task_id)) or {}


def test_secret_query_values_are_masked_in_rendered_fields_but_sent(demo):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator

    api_key, token = f"ak-{uuid.uuid4().hex[:12]}", f"tk-{uuid.uuid4().hex[:12]}"
    with DAG("rel_secrets_rendered", schedule=None, start_date=START, render_template_as_native_obj=True,
             params={"key": api_key, "token": token}) as dag:  # fmt: skip
        ResilientHttpOperator(
            task_id="call", http_conn_id="demo_api", endpoint="/echo/q?api_key={{ params.key }}&page=2",
            query={"signature": "{{ params.token }}", "plain": "visible"},
            response_filter=lambda r: r.json()["query"] == {"api_key": api_key, "page": "2", "signature": token, "plain": "visible"},
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert _xcom(run, "call") is True  # the server got the real values
    rendered = _rendered_fields(run, "call")
    assert rendered["endpoint"] == "/echo/q?api_key=***&page=2", rendered
    assert rendered["query"] == {"signature": "***", "plain": "visible"}, rendered


def test_state_urls_are_redacted_in_errors_and_on_the_status_page():
    from api_orchestration import ConfigurationError, StateBackendError
    from api_orchestration.state import backend_for_url

    url = "redis://:hunter2-pass@127.0.0.1:1/0?password=hunter2-pass&prefix=rel:"
    backend = backend_for_url(url)
    with pytest.raises(StateBackendError) as caught:
        backend.snapshot()
    shown = str(caught.value)
    assert "hunter2" not in shown and "password=***" in shown and "127.0.0.1:1" in shown, shown
    assert "hunter2" not in caught.value.url
    # what the status page and its API show (collect_status: "state_url": backend.safe_url)
    for raw in (url, "redis://user:hunter2-pass@redis:6379/1", "rediss://redis/1?password=hunter2-pass"):
        assert "hunter2" not in backend_for_url(raw).safe_url, backend_for_url(raw).safe_url
    assert (
        backend_for_url("redis://redis:6379/1?prefix=apiorch:").safe_url
        == "redis://redis:6379/1?prefix=apiorch:"
    )
    # and an error built from a raw URL anywhere else
    assert "hunter2" not in str(StateBackendError(url, "admit", "refused"))
    with pytest.raises(ConfigurationError) as bad:
        backend_for_url("mongodb://u:hunter2-pass@h/?password=hunter2-pass")
    assert "hunter2" not in str(bad.value)


@pytest.mark.parametrize("dag_id", ["order_saga", "order_saga_spec"])
def test_the_order_saga_keeps_ids_and_statuses_in_xcom_not_order_data(demo, dag_id):
    from airflow.dag_processing.dagbag import DagBag

    from api_orchestration.state import get_backend

    get_backend().clear()  # breakers opened by earlier tests' faults must not decide this run

    address = f"{uuid.uuid4().hex[:8]} Secret Lane"
    conf = {"order_id": f"o-{dag_id}", "amount_cents": 1250, "skus": ["SKU-1"], "address": address}
    run = DagBag().get_dag(dag_id).test(run_conf=conf)
    assert run.state == "success", _states(run)
    assert _xcom(run, "charge_payment") == {
        "charge_id": _xcom(run, "charge_payment")["charge_id"],
        "status": "charged",
    }
    assert _xcom(run, "reserve_inventory")["status"] == "reserved"
    assert set(_xcom(run, "create_shipment")) == {"shipment_id", "status"}
    stored = json.dumps([_xcom(run, t) for t in ("charge_payment", "reserve_inventory", "create_shipment")])
    assert address not in stored and "SKU-1" not in stored
