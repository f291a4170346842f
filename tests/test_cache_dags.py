"""cache=, log_response= and context-taking response_check/response_filter through real Airflow
(dag.test()): the operator, the workflow builder (single-call and bulk steps) and YAML specs."""

from __future__ import annotations

import uuid

import pendulum
import pytest
from test_dags import _register, _states

from api_orchestration import RetryPolicy
from api_orchestration.errors import SpecError
from api_orchestration.policy import CachePolicy
from api_orchestration.specs import load_text
from api_orchestration.workflows.build import build
from api_orchestration.workflows.model import Bulk, Call, Step, Workflow

pytestmark = pytest.mark.usefixtures("airflow_db")
START = pendulum.datetime(2026, 1, 1, tz="UTC")
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)


def _xcom(run, task_id: str):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


def test_workflow_steps_share_cached_responses(demo):
    path = f"/reference/countries?max_age=60&t={uuid.uuid4().hex}"
    wf = Workflow(
        "wf_cache_shared", conn_id="demo_api", retry=FAST, cache=CachePolicy(ttl=60),
        steps=(
            Step("first", Call("GET", path)),
            Step("second", Call("GET", path), depends_on=("first",)),
            Step("many", Call("GET", path), depends_on=("second",), bulk=Bulk(over=[1, 2, 3], concurrency=1)),
        ),
    )  # fmt: skip
    dag = build(wf, schedule=None, start_date=START)
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert _xcom(run, "first") == _xcom(run, "second") and _xcom(run, "first")["name"] == "countries"
    assert _xcom(run, "many")["succeeded"] == 3
    assert demo.calls()["paths"]["/reference/countries"] == 1  # one call: the rest were cache hits


def test_operator_cache_key_template_log_response_and_context_callables(demo, caplog):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator

    tag = uuid.uuid4().hex
    cache = CachePolicy(ttl=60, key=f"countries-{tag}-{{{{ dag_run.run_id }}}}")
    with DAG("op_cache_context", schedule=None, start_date=START) as dag:
        a = ResilientHttpOperator(
            task_id="a", http_conn_id="demo_api", endpoint="/reference/countries?max_age=60&v=1", cache=cache,
            response_check=lambda response, ti: ti.task_id == "a" and response.status_code == 200,
            response_filter=lambda response, ti: {"task": ti.task_id, "version": response.json()["version"]},
            log_response=True,
        )  # fmt: skip
        b = ResilientHttpOperator(  # another URL, the same rendered key: served from the cache
            task_id="b", http_conn_id="demo_api", endpoint="/reference/countries?max_age=60&v=2", cache=cache,
            response_filter=lambda response, ti, run_id: {"task": ti.task_id, "run": run_id,
                                                          "cached": getattr(response, "from_cache", False)},
        )  # fmt: skip
        a >> b
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert _xcom(run, "a") == {"task": "a", "version": 1}
    assert _xcom(run, "b") == {"task": "b", "run": run.run_id, "cached": True}
    assert demo.calls()["paths"]["/reference/countries"] == 1


def test_response_check_with_context_can_fail_the_task(demo):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator

    with DAG("op_check_context", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="checked", http_conn_id="demo_api", endpoint="/echo/x",
            response_check=lambda response, params: response.json()["path"] == params["want"],
            params={"want": "/echo/other"},
        )  # fmt: skip
    _register(dag)
    assert dag.test().state == "failed"


SPEC = """
dag_id: spec_cache
defaults:
  conn_id: demo_api
  cache: {ttl: 30}
steps:
  - name: countries
    call: {path: /reference/countries}
    cache: {ttl: 60, key: "countries", methods: [GET], max_entry_bytes: 5000, max_total_bytes: 100000}
    log_response: true
  - name: currencies
    call: {path: /reference/currencies}
  - name: notify
    call: {method: POST, path: /echo/notify}
"""


def test_specs_take_cache_and_log_response():
    loaded = load_text(SPEC, "spec_cache.yaml")
    wf = loaded.workflow
    assert wf.cache == CachePolicy(ttl=30)
    step = wf.step("countries")
    assert step.cache == CachePolicy(60, "countries", ("GET",), max_entry_bytes=5000, max_total_bytes=100000)
    assert step.log_response
    ops = {t.task_id: t for t in loaded.dag.tasks}
    assert ops["countries"].cache == step.cache and ops["countries"].log_response
    assert ops["currencies"].cache == CachePolicy(ttl=30) and not ops["currencies"].log_response
    assert ops["notify"].cache is None  # the defaults' cache applies to GET/HEAD steps only


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ("cache: {ttl: 0}", "steps[0].cache.ttl", "must be a number of seconds > 0"),
        ("cache: {ttl: 5, methods: [POST]}", "steps[0].cache.methods", "must be a non-empty list of GET and HEAD"),
        ("cache: {ttl: 5, max_entry_bytes: 10, max_total_bytes: 5}", "steps[0].cache.max_total_bytes",
         "must be an integer >= max_entry_bytes (10)"),
        ("cache: {ttl: 5, size: 3}", "steps[0].cache.size", ""),
    ],
)  # fmt: skip
def test_bad_cache_specs_are_named(change, path, message):
    text = f"dag_id: bad\nsteps:\n  - name: s\n    call: {{path: /x}}\n    {change}\n"
    with pytest.raises(SpecError) as info:
        load_text(text, "bad.yaml")
    assert f"bad.yaml: {path}: " in str(info.value) and message in str(info.value)


def test_a_cache_on_a_post_step_is_an_error():
    text = "dag_id: bad\nsteps:\n  - name: s\n    call: {method: POST, path: /x}\n    cache: {ttl: 5}\n"
    with pytest.raises(SpecError, match=r"steps\[0\]\.cache: caches only GET, HEAD responses; remove cache"):
        load_text(text, "bad.yaml")


def test_operators_refuse_a_cache_on_a_method_it_cannot_cache():
    from api_orchestration import BulkHttpOperator, ResilientHttpOperator
    from api_orchestration.errors import ConfigurationError

    with pytest.raises(
        ConfigurationError, match=r"task 'pay': cache caches only GET, HEAD responses; remove cache"
    ):
        ResilientHttpOperator(task_id="pay", endpoint="/x", method="POST", cache=CachePolicy(ttl=5))
    with pytest.raises(ConfigurationError, match=r"task 'many': cache caches only GET responses"):
        BulkHttpOperator(
            task_id="many", items=[1], endpoint="/x", method="HEAD", cache=CachePolicy(5, methods=("GET",))
        )
    with pytest.raises(ConfigurationError, match=r"task 'bad': cache must be a CachePolicy"):
        ResilientHttpOperator(task_id="bad", endpoint="/x", cache={"ttl": 5})


def test_a_bulk_step_renders_the_cache_key_per_item(demo):
    tag = uuid.uuid4().hex
    step = Step(
        "many", Call("GET", "/reference/countries?max_age=60&i={{ item }}"),
        bulk=Bulk(over=[0, 1, 2, 3, 4, 5], concurrency=1), cache=CachePolicy(ttl=60, key=f"{tag}-{{{{ item % 2 }}}}"),
    )  # fmt: skip
    dag = build(
        Workflow("wf_cache_bulk_key", (step,), conn_id="demo_api", retry=FAST),
        schedule=None,
        start_date=START,
    )
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert _xcom(run, "many")["succeeded"] == 6
    assert demo.calls()["paths"]["/reference/countries"] == 2  # one per rendered key: item % 2
