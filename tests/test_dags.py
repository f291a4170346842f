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
