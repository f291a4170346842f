"""DAG-level behaviour through dag.test(): real Airflow, real demo API, real state store."""

from __future__ import annotations

import datetime as dt
import itertools

import pendulum
import pytest

pytestmark = pytest.mark.usefixtures("airflow_db")

START = pendulum.datetime(2026, 1, 1, tz="UTC")


def _register(dag) -> None:
    """Serialize an in-test DAG into the dags-folder bundle so dag.test() can run it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


def _states(run) -> dict[str, str]:
    return {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": ti.state
        for ti in run.get_task_instances()
    }


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag()


def test_example_dags_import_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert {"resilient_call_example", "throttled_fetch_example"} <= set(dagbag.dag_ids)
    for dag_id in dagbag.dag_ids:
        assert "api-orchestration" in dagbag.get_dag(dag_id).tags


def _unbounded(name: str, schema: dict) -> list[str]:
    """What a param's JSON schema leaves unbounded: numbers without minimum and maximum, strings
    without maxLength (or an enum), arrays without maxItems or with unbounded items."""
    kind = schema.get("type")
    kinds = set(kind) - {"null"} if isinstance(kind, list) else {kind}
    if "enum" in schema:
        return []
    gaps = []
    if kinds & {"integer", "number"} and not {"minimum", "maximum"} <= set(schema):
        gaps.append(f"{name}: minimum and maximum")
    if "string" in kinds and "maxLength" not in schema:
        gaps.append(f"{name}: maxLength")
    if "array" in kinds:
        if "maxItems" not in schema:
            gaps.append(f"{name}: maxItems")
        gaps += _unbounded(f"{name}[]", schema.get("items") or {"type": "object"})
    if kinds - {"integer", "number", "string", "array", "boolean"}:
        gaps.append(f"{name}: type {kind!r}")
    return gaps


def test_example_dags_params_are_bounded_and_refuse_a_huge_integer(dagbag):
    """What a trigger is checked against (issue 13: an unbounded integer above 2**64 crashed the
    dag-processor): every param of every example DAG, Python and spec, is bounded."""
    from airflow.sdk.definitions.param import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    gaps = [
        f"{dag_id}.{gap}"
        for dag_id in dagbag.dag_ids
        for name, param in dagbag.get_dag(dag_id).params.items()
        for gap in _unbounded(name, param.schema)
    ]
    assert gaps == []
    for dag_id in ("order_saga", "order_saga_spec"):  # as the REST API checks a trigger's conf
        params = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.get_dag(dag_id))).params
        params.deep_merge({"amount_cents": 4200}).validate()
        for bad in ({"amount_cents": 10**20}, {"amount_cents": 0}, {"order_id": "o 1; drop"}):
            with pytest.raises(ParamValidationError):
                params.deep_merge(bad).validate()


def test_resilient_call_example_succeeds(dagbag, demo):
    run = dagbag.get_dag("resilient_call_example").test()
    assert run.state == "success", _states(run)
    summary = next(ti for ti in run.get_task_instances() if ti.task_id == "summary")
    assert summary.xcom_pull(task_ids="summary") == {
        "echo_path": "/echo/hello",
        "flaky_calls": 3,
        "after_429_calls": 2,
    }
    keys = [
        k
        for path, by_key in demo.calls()["by_path_and_key"].items()
        if path.startswith("/flaky/")
        for k in by_key
    ]
    assert len(keys) == 1 and keys[0].startswith("af-")  # three attempts, one idempotency key


def test_throttled_fetch_example_spaces_the_calls(dagbag, demo):
    run = dagbag.get_dag("throttled_fetch_example").test()
    assert run.state == "success", _states(run)
    arrivals = sorted(
        t
        for p, ts in demo.calls(arrivals=True)["arrivals"].items()
        if p.startswith("/echo/page-")
        for t in ts
    )
    assert len(arrivals) == 3
    assert all(b - a >= 8.0 for a, b in itertools.pairwise(arrivals)), arrivals


def test_taskflow_example_shares_one_guard_across_sync_and_async_tasks(dagbag, demo):
    from api_orchestration.state import get_backend

    run = dagbag.get_dag("taskflow_example").test(run_conf={"page": 2, "per_page": 12})
    assert run.state == "success", _states(run)
    publish = next(ti for ti in run.get_task_instances() if ti.task_id == "publish")
    result = publish.xcom_pull(task_ids="publish")
    assert result["users"] == 12 and result["idempotency_key"].startswith("af-")
    assert result["idempotency_key"].endswith("-1")  # the task's first unsafe call
    paths = demo.calls()["paths"]
    assert paths["/users"] == 1 and paths["/echo/digests"] == 1
    assert sum(n for p, n in paths.items() if p.startswith("/analytics/users/")) == 12
    assert get_backend().limiter_status("demo_taskflow").granted == 14  # one limiter for all three


def test_idempotency_key_is_stable_across_airflow_retries(demo):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator, RetryPolicy

    with DAG("it_airflow_retry", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="charge",
            http_conn_id="demo_api",
            method="POST",
            endpoint="/flaky/charge?fail=3",
            json={"amount": 5},
            retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01),
            retries=1,
            retry_delay=dt.timedelta(seconds=0),
        )
    _register(dag)
    run = dag.test()
    ti = run.get_task_instances()[0]
    assert run.state == "success" and ti.try_number == 2
    assert list(demo.calls()["by_path_and_key"]["/flaky/charge"].values()) == [
        4
    ]  # 2 tries x 2 attempts, one key


def test_client_error_fails_without_airflow_retries(demo):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator

    with DAG("it_client_error", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="lookup", http_conn_id="demo_api", endpoint="/status/404", retries=3,
            retry_delay=dt.timedelta(seconds=0),
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    ti = run.get_task_instances()[0]
    assert (run.state, ti.state, ti.try_number) == ("failed", "failed", 1)
    assert demo.calls()["paths"]["/status/404"] == 1


def test_templated_fields_and_filters(demo):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator

    with DAG("it_templates", schedule=None, start_date=START, params={"user": "ada"}) as dag:
        call = ResilientHttpOperator(
            task_id="call",
            http_conn_id="demo_api",
            method="PUT",
            endpoint="/echo/users/{{ params.user }}",
            json={"name": "{{ params.user | upper }}"},
            headers={"X-Run": "{{ run_id }}"},
            idempotency_key="user-{{ params.user }}",
            response_filter=lambda r: {"path": r.json()["path"], "name": r.json()["json"]["name"],
                                       "key": r.json()["idempotency_key"], "run": r.json()["headers"]["x-run"]},
        )  # fmt: skip
        text = ResilientHttpOperator(
            task_id="check", http_conn_id="demo_api", endpoint="/echo/x", response_check=lambda r: r.ok
        )
        call >> text
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    ti = next(t for t in run.get_task_instances() if t.task_id == "call")
    value = ti.xcom_pull(task_ids="call")
    assert value["path"] == "/echo/users/ada" and value["name"] == "ADA" and value["key"] == "user-ada"
    assert value["run"] == run.run_id


def test_response_check_false_fails_the_task(demo):
    from airflow.sdk import DAG

    from api_orchestration import ResilientHttpOperator

    with DAG("it_response_check", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="c", http_conn_id="demo_api", endpoint="/echo/x", response_check=lambda r: False
        )
    _register(dag)
    assert dag.test().state == "failed"
