"""Poll steps (submit, poll until done, fetch) through dag.test() against the demo export API."""

from __future__ import annotations

import json

import pendulum
import pytest
import requests
from test_dags import _register, _states

from api_orchestration import (
    ConfigurationError,
    JobFailedError,
    JobTimeoutError,
    Poll,
    PollingHttpOperator,
    RateLimit,
    RetryPolicy,
)
from api_orchestration.operators.resume import Resume
from api_orchestration.specs.loader import load_document
from api_orchestration.workflows.build import build
from api_orchestration.workflows.model import Call, FanOut, Step, Workflow

pytestmark = pytest.mark.usefixtures("airflow_db")

START = pendulum.datetime(2026, 1, 1, tz="UTC")
DONE = "status == 'succeeded'"
FAILED = "status == 'failed'"
ERRORS: dict[str, BaseException] = {}  # task id -> the exception its failure callback saw


def _remember(context) -> None:
    ERRORS[context["ti"].task_id] = context["exception"]


def _export_workflow(name: str, job: dict, poll: Poll, **step: object) -> Workflow:
    return Workflow(
        name,
        conn_id="demo_api",
        retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02),
        steps=(Step("export", Call("POST", "/exports", json=job), poll=poll, **step),),  # type: ignore[arg-type]
    )


def _run(dag):
    ERRORS.clear()
    for task in dag.tasks:
        existing = task.on_failure_callback or []  # a saga step's records its failure: keep it
        task.on_failure_callback = [*(existing if isinstance(existing, list) else [existing]), _remember]
    _register(dag)
    return dag.test()


def _xcom(run, task_id: str):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


def _xcom_key(run, task_id: str, key: str):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id, key=key)


def _jobs(demo) -> list[dict]:
    return requests.get(f"{demo.url}/admin/exports", timeout=5).json()["jobs"]


def test_a_job_that_succeeds_is_polled_until_done_and_its_result_fetched(demo):
    poll = Poll(success=DONE, failure=FAILED, result="result_url", interval=0.2, timeout=30)
    wf = _export_workflow(
        "poll_ok", {"rows": 3, "duration": 1.0, "retry_after": 0}, poll, output="rows[*].value"
    )
    dag = build(wf, schedule=None, start_date=START)
    assert isinstance(dag.get_task("export"), PollingHttpOperator)
    run = _run(dag)
    assert run.state == "success", (_states(run), ERRORS)
    (job,) = _jobs(demo)
    assert _xcom(run, "export") == [f"{job['id']}-{i}" for i in (1, 2, 3)]
    # Retry-After: 0 is honoured (polls MIN_INTERVAL apart, not the 0.2 s interval), never a busy loop
    assert 2 <= job["polls"] <= 11 and job["downloads"] == 1
    calls = demo.calls()
    keys = calls["by_path_and_key"]["/exports"]
    assert len(keys) == 1 and next(iter(keys)).startswith("af-")  # the submit sends the task's key
    status_path = f"/exports/{job['id']}"
    assert calls["paths"][status_path] == job["polls"]
    assert status_path not in calls["by_path_and_key"]  # polls and the fetch are GETs: no key
    assert f"{status_path}/result" not in calls["by_path_and_key"]


def test_without_retry_after_polls_follow_the_interval_and_the_final_status_is_the_result(demo):
    poll = Poll(success=DONE, failure=FAILED, interval=0.3, timeout=30)  # no result: the status is the result
    wf = _export_workflow("poll_interval", {"duration": 0.8, "retry_after": None}, poll)
    run = _run(build(wf, schedule=None, start_date=START))
    assert run.state == "success", ERRORS
    final = _xcom(run, "export")
    assert final["status"] == "succeeded" and final["result_url"].endswith("/result")
    (job,) = _jobs(demo)
    assert job["downloads"] == 0
    # no Retry-After: about 0.8 s / 0.3 s polls
    assert 2 <= job["polls"] <= 5


def test_a_job_that_fails_fails_the_step_with_the_servers_explanation(demo):
    poll = Poll(success=DONE, failure=FAILED, result="result_url", interval=0.2, timeout=30)
    wf = _export_workflow("poll_fail", {"duration": 0.5, "fail": True, "retry_after": 0}, poll)
    run = _run(build(wf, schedule=None, start_date=START))
    assert run.state == "failed" and _states(run)["export"] == "failed"
    error = ERRORS["export"]
    assert isinstance(error, JobFailedError)
    assert "the export job failed while writing rows" in str(error) and "export_failed" in str(error)
    assert error.status["status"] == "failed" and error.polls >= 1
    (job,) = _jobs(demo)
    assert job["downloads"] == 0  # no fetch after a failure


def test_a_deadline_that_passes_fails_the_step_with_the_last_status(demo):
    poll = Poll(success=DONE, failure=FAILED, interval=0.3, timeout=1.0)
    wf = _export_workflow("poll_deadline", {"duration": 60, "pending": 0.1, "retry_after": None}, poll)
    run = _run(build(wf, schedule=None, start_date=START))
    assert run.state == "failed"
    error = ERRORS["export"]
    assert isinstance(error, JobTimeoutError)
    assert "not done 1 s after its submit" in str(error) and '"status": "running"' in str(error)
    assert error.status["status"] == "running"
    assert 2 <= _jobs(demo)[0]["polls"] <= 6  # about 1 s / 0.3 s, and one at the deadline


def test_a_wait_longer_than_max_sleep_defers_to_the_triggerer_and_resumes_the_poll(demo, caplog):
    """Retry-After: 2 > max_sleep: the task defers between polls (dag.test() runs the trigger
    inline) and resumes polling the same job, with the deadline it had; the wait is the status's
    Retry-After, not the poll's interval."""
    from airflow.sdk import DAG

    resumed: list[Resume] = []

    class Recording(PollingHttpOperator):
        def execute_resume(self, context, event=None, attempt=1, **kwargs):
            resumed.append(Resume.from_event(event, attempt))
            return super().execute_resume(context, event, attempt, **kwargs)

    with DAG("poll_defer", schedule=None, start_date=START, render_template_as_native_obj=True) as dag:
        Recording(
            task_id="export", http_conn_id="demo_api", method="POST", endpoint="/exports",
            json={"duration": 5, "pending": 0.1, "retry_after": 2}, max_sleep=1.0,
            poll=Poll(success=DONE, failure=FAILED, result="result_url", timeout=60),
            rate_limit=RateLimit(20), select="id",
        )  # fmt: skip
    run = _run(dag)
    assert run.state == "success", ERRORS
    (job,) = _jobs(demo)
    assert _xcom(run, "export") == job["id"]
    # Retry-After (2 s), not the interval (5 s): polls at about 0, 2, 4 and 6 s, so two resumes or more
    assert len(resumed) >= 2
    assert all(r.phase == "poll" and r.status_url == f"/exports/{job['id']}" for r in resumed)
    assert len({r.deadline for r in resumed}) == 1  # the deadline set at the submit travels along
    assert [r.polls for r in resumed] == list(range(1, len(resumed) + 1))
    assert job["polls"] == len(resumed) + 1 and job["downloads"] == 1


def test_the_status_url_may_come_from_the_submit_body_and_must_stay_on_the_connection(demo):
    poll = Poll(success=DONE, status="status_url", interval=0.2, timeout=30, result="result_url")
    wf = _export_workflow(
        "poll_body_url", {"rows": 1, "duration": 0.3, "retry_after": 0}, poll, output="rows"
    )
    run = _run(build(wf, schedule=None, start_date=START))
    assert run.state == "success", ERRORS
    assert len(_xcom(run, "export")) == 1

    poll = Poll(success=DONE, status="'http://example.invalid/exports/1'", interval=0.2, timeout=30)
    run = _run(
        build(_export_workflow("poll_foreign_url", {"duration": 0.3}, poll), schedule=None, start_date=START)
    )
    assert run.state == "failed"
    assert "is not under connection 'demo_api'" in str(ERRORS["export"])


def test_a_poll_step_fans_out_one_job_per_item(demo):
    job = {"rows": "{{ item }}", "duration": 0.3, "retry_after": 0}
    poll = Poll(success=DONE, failure=FAILED, result="result_url", interval=0.2, timeout=30)
    step = Step(
        "export",
        Call("POST", "/exports", json=job),
        poll=poll,
        output="length(rows)",
        fan_out=FanOut(over=[1, 2]),
    )
    run = _run(
        build(Workflow("poll_fan_out", conn_id="demo_api", steps=(step,)), schedule=None, start_date=START)
    )
    assert run.state == "success", ERRORS
    assert sorted(_xcom(run, "export")["results"]) == [1, 2]
    jobs = _jobs(demo)
    assert sorted(j["rows"] for j in jobs) == [1, 2] and all(j["downloads"] == 1 for j in jobs)
    assert len(demo.calls()["by_path_and_key"]["/exports"]) == 2  # each mapped task its own key


def test_a_failed_job_in_a_saga_is_compensated(demo):
    """A failed job's effect is unknown to the saga (the server may have written part of it): the
    step's compensation runs, with its own idempotency key."""
    poll = Poll(success=DONE, failure=FAILED, interval=0.2, timeout=30)
    wf = _export_workflow(
        "poll_saga", {"duration": 0.3, "fail": True}, poll, compensate=Call("POST", "/echo/purge")
    )
    run = _run(build(wf, schedule=None, start_date=START))
    states = _states(run)
    assert run.state == "failed" and (states["export"], states["undo_export"]) == ("failed", "success")
    assert states["saga_outcome"] == "failed"
    record = _xcom_key(run, "export", "saga_failure")
    assert record["error_type"] == "JobFailedError" and record["no_effect"] is False
    keys = demo.calls()["by_path_and_key"]
    (submit_key,) = keys["/exports"]
    assert keys["/echo/purge"] == {f"{submit_key}:compensate": 1}


def test_a_spec_poll_step_behaves_like_the_builders(demo):
    spec = {
        "dag_id": "poll_spec",
        "defaults": {
            "conn_id": "demo_api",
            "retry": {"max_attempts": 2, "base_delay": 0.01, "max_delay": 0.02},
        },
        "steps": [
            {
                "name": "export",
                "call": {
                    "method": "POST",
                    "path": "/exports",
                    "json": {"rows": 2, "duration": 0.6, "retry_after": 0},
                },
                "poll": {
                    "success": DONE,
                    "failure": FAILED,
                    "result": "result_url",
                    "interval": 0.2,
                    "timeout": 30,
                },
                "output": "rows[*].row",
            },
            {
                "name": "failing",
                "call": {"method": "POST", "path": "/exports", "json": {"duration": 0.3, "fail": True}},
                "poll": {"success": DONE, "failure": FAILED, "interval": 0.2, "timeout": 30},
            },
        ],
    }
    loaded = load_document(spec, "poll_spec.yaml")
    assert loaded.workflow.step("export").poll == Poll(
        DONE, FAILED, result="result_url", interval=0.2, timeout=30
    )
    run = _run(loaded.dag)
    states = _states(run)
    assert (states["export"], states["failing"]) == ("success", "failed")
    assert _xcom(run, "export") == [1, 2]
    assert isinstance(ERRORS["failing"], JobFailedError)


@pytest.mark.parametrize(
    ("poll", "message"),
    [
        ({"success": "status ==", "timeout": 5}, "steps[0].poll.success: is not a valid JMESPath expression"),
        ({"success": DONE, "failure": "[?"}, "steps[0].poll.failure: is not a valid JMESPath expression"),
        ({"success": DONE, "interval": 0}, "steps[0].poll.interval: must be a number of seconds > 0, got 0"),
        ({"success": DONE, "timeout": -1}, "steps[0].poll.timeout: must be a number of seconds > 0, got -1"),
        ({"failure": FAILED}, "steps[0].poll.success: is required"),
        ({"success": DONE, "every": 3}, "steps[0].poll.every: unknown field 'every'"),
    ],
)
def test_bad_poll_fields_in_a_spec_are_named(poll, message):
    from api_orchestration import SpecError

    spec = {"steps": [{"name": "export", "call": {"method": "POST", "path": "/exports"}, "poll": poll}]}
    with pytest.raises(SpecError) as raised:
        load_document(spec, "bad.yaml", default_dag_id="bad")
    text = str(raised.value)
    assert message in text, text
    assert text.count("steps[0].poll") == 1, text  # one message per field


def test_bad_poll_arguments_in_python_are_configuration_errors():
    with pytest.raises(
        ConfigurationError, match=r"Poll: success must be a non-empty JMESPath string, got ''"
    ):
        Poll(success="")
    with pytest.raises(ConfigurationError, match=r"Poll: result is not a valid JMESPath expression"):
        Poll(success=DONE, result="a[")
    with pytest.raises(ConfigurationError, match=r"step 'x': poll needs a call step \(not bulk or merge\)"):
        Workflow(
            "w", steps=(Step("a", Call("GET", "/a")), Step("x", merge=("a",), poll=Poll(DONE)))
        ).validate()
    from api_orchestration.policy import CachePolicy

    with pytest.raises(ConfigurationError, match=r"step 'x': cache is not supported on a poll step"):
        Workflow(
            "w", steps=(Step("x", Call("GET", "/a"), poll=Poll(DONE), cache=CachePolicy(60)),)
        ).validate()
    with pytest.raises(ConfigurationError, match=r"task 't': cache is not supported on a poll step"):
        PollingHttpOperator(task_id="t", endpoint="/exports", poll=Poll(DONE), cache=CachePolicy(60))
    with pytest.raises(ConfigurationError, match=r"task 't': poll must be a Poll"):
        PollingHttpOperator(task_id="t", endpoint="/exports", poll={"success": DONE})  # type: ignore[arg-type]


def test_resume_keeps_the_job_across_a_json_round_trip():
    resume = Resume("poll", 2, "/exports/exp_1", 1_800_000_000.5, 3)
    from dataclasses import asdict

    assert Resume.from_event(json.loads(json.dumps(asdict(resume)))) == resume
    assert Resume.from_event({"phase": "call", "attempt": 2}) == Resume("call", 2)  # the older format
