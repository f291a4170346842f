"""The builder's modes and the saga, through dag.test() against the demo API."""

from __future__ import annotations

import pendulum
import pytest
from test_dags import _register, _states

from api_orchestration import ConfigurationError, RetryPolicy
from api_orchestration.workflows.build import build
from api_orchestration.workflows.model import Call, FanOut, Step, Workflow, result

pytestmark = pytest.mark.usefixtures("airflow_db")

START = pendulum.datetime(2026, 1, 1, tz="UTC")
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)


def _run(wf: Workflow, conf: dict | None = None):
    dag = build(wf, schedule=None, start_date=START)
    _register(dag)
    return dag.test(run_conf=conf)


def _xcom(run, task_id: str):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


def saga(name: str, reserve_path: str) -> Workflow:
    return Workflow(
        name,
        conn_id="demo_api",
        retry=FAST,
        steps=(
            Step("charge", Call("POST", "/echo/charge", json={"order": "{{ dag_run.conf['order_id'] }}"}),
                 compensate=Call("POST", "/echo/refund")),
            Step("reserve", Call("POST", reserve_path), depends_on=("charge",), compensate=Call("POST", "/echo/release")),
            Step("ship", Call("POST", "/echo/ship"), depends_on=("reserve",), compensate=Call("POST", "/echo/cancel")),
        ),
    )  # fmt: skip


def test_saga_happy_path_succeeds_and_undoes_nothing(demo):
    run = _run(saga("wf_saga_ok", "/echo/reserve"), {"order_id": "o-1"})
    states = _states(run)
    assert run.state == "success", states
    assert [states[t] for t in ("charge", "reserve", "ship")] == ["success"] * 3
    assert states["saga_check"] == "success"  # it short-circuits: no compensation task is launched
    assert [states[f"undo_{t}"] for t in ("ship", "reserve", "charge")] == ["skipped"] * 3
    assert states["saga_outcome"] == "skipped"


def test_saga_business_failure_undoes_exactly_the_completed_steps(demo):
    run = _run(saga("wf_saga_409", "/status/409"), {"order_id": "o-2"})
    states = _states(run)
    assert run.state == "failed", states
    assert (states["charge"], states["reserve"], states["ship"]) == ("success", "failed", "upstream_failed")
    assert (states["undo_ship"], states["undo_reserve"], states["undo_charge"]) == (
        "skipped",
        "skipped",
        "success",
    )
    assert states["saga_outcome"] == "failed"
    calls = demo.calls()
    assert calls["paths"].get("/status/409") == 1  # a 4xx is never retried
    assert "/echo/ship" not in calls["paths"] and "/echo/release" not in calls["paths"]
    charge_key = next(iter(calls["by_path_and_key"]["/echo/charge"]))
    # its own key, derived from the step's: never the step's key for another request
    assert calls["by_path_and_key"]["/echo/refund"] == {f"{charge_key}:compensate": 1}


def test_saga_compensates_a_step_whose_effect_is_unknown(demo):
    run = _run(saga("wf_saga_503", "/status/503"), {"order_id": "o-3"})
    states = _states(run)
    assert run.state == "failed"
    assert (states["undo_reserve"], states["undo_charge"]) == ("success", "success")  # a 5xx may have acted
    paths = demo.calls()["paths"]
    assert paths["/status/503"] == 2 and paths["/echo/release"] == 1 and paths["/echo/refund"] == 1


def test_a_failed_compensation_fails_the_run_loudly(demo):
    wf = Workflow(
        "wf_saga_undo_fails",
        conn_id="demo_api",
        retry=FAST,
        steps=(
            Step("charge", Call("POST", "/echo/charge"), compensate=Call("POST", "/status/500")),
            Step("reserve", Call("POST", "/status/409"), depends_on=("charge",)),
        ),
    )
    dag = build(wf, schedule=None, start_date=START, default_args={"retry_delay": 0})
    for task in dag.tasks:
        if task.task_id.startswith("undo_"):
            task.retries = 1
            task.retry_delay = pendulum.duration(seconds=0)
    _register(dag)
    run = dag.test()
    states = _states(run)
    assert run.state == "failed"
    assert states["undo_charge"] == "failed" and states["saga_outcome"] == "failed"


def test_parallel_steps_merge_by_name(demo):
    wf = Workflow(
        "wf_parallel",
        conn_id="demo_api",
        steps=(
            Step("user", Call("GET", "/echo/user"), output="path"),
            Step("posts", Call("GET", "/echo/posts"), output="path"),
            Step("profile", merge=("user", "posts")),
        ),
    )
    run = _run(wf)
    assert run.state == "success"
    assert _xcom(run, "profile") == {"user": "/echo/user", "posts": "/echo/posts"}


def test_pipeline_templates_upstream_results_as_native_values(demo):
    wf = Workflow(
        "wf_pipeline",
        conn_id="demo_api",
        steps=(
            Step("first", Call("POST", "/echo/first", json={"n": 41})),
            Step("second", Call("POST", "/echo/second", json={"n": result("first", "json.n"), "from": result("first", "path")}),
                 depends_on=("first",), output="json"),
        ),
    )  # fmt: skip
    run = _run(wf)
    assert _xcom(run, "second") == {"n": 41, "from": "/echo/first"}


def test_conditional_step_runs_only_when_its_condition_holds(demo):
    wf = Workflow(
        "wf_conditional",
        conn_id="demo_api",
        steps=(
            Step(
                "quote",
                Call("GET", "/echo/quote", query={"express": "{{ dag_run.conf.get('express', False) }}"}),
            ),
            Step("express", Call("POST", "/echo/express"), depends_on=("quote",), when="conf.express"),
            Step("standard", Call("POST", "/echo/standard"), depends_on=("quote",), when="!(conf.express)"),
        ),
    )
    states = _states(_run(wf, {"express": True}))
    assert (states["express"], states["standard"]) == ("success", "skipped")
    states = _states(_run(wf, {"express": False}))
    assert (states["express"], states["standard"]) == ("skipped", "success")


def test_fan_out_over_an_upstream_list_tolerates_failures(demo):
    wf = Workflow(
        "wf_fan_out",
        conn_id="demo_api",
        retry=FAST,
        steps=(
            Step("channels", Call("POST", "/echo/channels", json={"items": ["email", "sms", "push", "broken"]}), output="json"),
            Step("notify", Call("POST", "/echo/notify/{{ item }}"), depends_on=("channels",),
                 fan_out=FanOut(over="results.channels.items", max_active=2, tolerate_failures=1)),
            Step("done", Call("GET", "/echo/done"), depends_on=("notify",)),
        ),
    )  # fmt: skip
    run = _run(wf)
    states = _states(run)
    assert run.state == "success", states
    summary = _xcom(run, "notify")
    assert summary["total"] == 4 and summary["succeeded"] == 4  # echo never fails
    assert sorted(r["path"] for r in summary["results"]) == [
        f"/echo/notify/{c}" for c in ("broken", "email", "push", "sms")
    ]


def test_fan_out_beyond_tolerance_fails_the_step(demo):
    wf = Workflow(
        "wf_fan_out_fail",
        conn_id="demo_api",
        retry=FAST,
        steps=(Step("hit", Call("GET", "{{ item }}"), fan_out=FanOut(over=["/echo/a", "/status/503", "/status/500"], tolerate_failures=1)),),
    )  # fmt: skip
    run = _run(wf)
    states = _states(run)
    assert run.state == "failed" and states["hit"] == "failed"
    assert sorted(s for k, s in states.items() if k.startswith("hit_each")) == ["failed", "failed", "success"]


def test_fallback_replaces_a_call_that_failed_for_good(demo):
    wf = Workflow(
        "wf_fallback",
        conn_id="demo_api",
        retry=FAST,
        steps=(
            Step(
                "primary",
                Call("GET", "/status/503"),
                fallback=Call("GET", "/echo/status-page"),
                output="path",
            ),
            Step("healthy", Call("GET", "/echo/ok"), fallback=Call("GET", "/echo/never"), output="path"),
        ),
    )
    run = _run(wf)
    assert run.state == "success"
    assert _xcom(run, "primary") == {"fallback": True, "result": "/echo/status-page"}
    assert _xcom(run, "healthy") == "/echo/ok"
    assert demo.calls()["paths"]["/status/503"] == 2 and "/echo/never" not in demo.calls()["paths"]


def test_a_fallback_runs_after_a_deferral_and_a_deferred_fallback_resumes_the_fallback(demo):
    """The primary defers (a 429's Retry-After beyond max_sleep), resumes, fails for good: its
    fallback runs, defers in turn, and resumes the fallback (not the primary)."""
    from airflow.sdk import DAG

    from api_orchestration import StepOperator

    with DAG(
        "wf_fallback_deferred", schedule=None, start_date=START, render_template_as_native_obj=True
    ) as dag:
        StepOperator(
            task_id="step", http_conn_id="demo_api", endpoint="/ratelimited/fd-primary?times=5&retry_after=1",
            retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0), max_sleep=0.2,
            fallback={"endpoint": "/ratelimited/fd-fallback?times=1&retry_after=1", "method": "GET",
                      "breaker_key": "fd:fallback", "rate_limit_key": "fd-fallback"},
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert _xcom(run, "step")["fallback"] is True
    paths = demo.calls()["paths"]
    assert paths["/ratelimited/fd-primary"] == 2  # attempt 2 ran after the deferral
    assert paths["/ratelimited/fd-fallback"] == 2  # the fallback's attempt 2, after its own deferral


def test_the_workflow_output_is_the_dag_result(demo):
    wf = Workflow(
        "wf_output",
        conn_id="demo_api",
        steps=(
            Step("a", Call("GET", "/echo/a"), output="path"),
            Step("b", Call("GET", "/echo/b"), depends_on=("a",)),
        ),
        output="a",
    )
    dag = build(wf, schedule=None, start_date=START)
    assert dag.get_task("a").returns_dag_result and not dag.get_task("b").returns_dag_result
    _register(dag)
    run = dag.test()
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel).filter_by(dag_id="wf_output", run_id=run.run_id, dag_result=True).all()
        )
    assert [(r.task_id, XComModel.deserialize_value(r)) for r in rows] == [("a", "/echo/a")]


def test_bulk_makes_every_call_in_one_task_under_the_shared_limit(demo):
    import json
    from pathlib import Path

    from api_orchestration import Bulk, RateLimit

    users = [{"id": i} for i in range(60)]
    wf = Workflow(
        "wf_bulk",
        conn_id="demo_api",
        rate_limit=RateLimit(permits=100, per_seconds=1.0, burst=10),
        steps=(
            Step("upsert", Call("POST", "/echo/users/{{ item.id }}", json={"id": "{{ item.id }}", "n": "{{ index }}"}),
                 bulk=Bulk(over=users, concurrency=8), output="json"),
        ),
    )  # fmt: skip
    run = _run(wf)
    assert run.state == "success"
    summary = _xcom(run, "upsert")
    assert (summary["total"], summary["succeeded"], summary["failed"]) == (60, 60, 0)
    rows = [json.loads(line) for line in Path(summary["path"]).read_text().splitlines()]
    assert [r["result"]["id"] for r in rows] == list(range(60))  # native ints, in item order
    assert summary["seconds"] >= (60 - 10) / (100 / 1.02) - 0.05  # limit held: a burst of 10, then 100/s
    keys = demo.calls()["idempotency_keys"]
    assert len(keys) == 60 and all(k.endswith(tuple(f"-{i}" for i in range(60))) for k in keys)


def test_bulk_templates_see_results_the_task_context_and_conf(demo):
    import json
    from pathlib import Path

    from api_orchestration import Bulk

    wf = Workflow(
        "wf_bulk_context",
        conn_id="demo_api",
        steps=(
            Step("batch", Call("POST", "/echo/batch", json={"tag": "b-7", "ids": [3, 5]})),
            Step("push", Call("POST", "/echo/push/{{ item }}", json={
                    "tag": "{{ results.batch.json.tag }}", "run": "{{ run_id }}", "order": "{{ dag_run.conf['order'] }}",
                    "same": "{{ conf.order }}", "dag": "{{ dag.dag_id }}", "i": "{{ index }}"}),
                 bulk=Bulk(over="results.batch.json.ids"), depends_on=("batch",), output="json"),
        ),
    )  # fmt: skip
    run = _run(wf, {"order": "o-9"})
    assert run.state == "success"
    rows = [json.loads(line) for line in Path(_xcom(run, "push")["path"]).read_text().splitlines()]
    assert [r["result"] for r in rows] == [
        {"tag": "b-7", "run": run.run_id, "order": "o-9", "same": "o-9", "dag": "wf_bulk_context", "i": i}
        for i in (0, 1)
    ]
    assert {"/echo/push/3", "/echo/push/5"} <= set(demo.calls()["paths"])


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            (
                Step("a", Call("GET", "/x"), depends_on=("b",)),
                Step("b", Call("GET", "/y"), depends_on=("a",)),
            ),
            "forms a cycle; remove one of these dependencies, got 'a -> b -> a'",
        ),
        (
            (Step("a", Call("GET", "/x"), depends_on=("nope",)),),
            "step 'a': depends_on names an unknown step; steps are ['a'], got 'nope'",
        ),
        ((Step("a", Call("GET", "/x")), Step("a", Call("GET", "/y"))), "is defined twice"),
        ((Step("a"),), "needs exactly one of a call or a merge"),
    ],
)
def test_invalid_workflows_name_the_step(steps, message):
    with pytest.raises(ConfigurationError) as info:
        Workflow("bad", steps=steps).validate()
    assert message in str(info.value)
