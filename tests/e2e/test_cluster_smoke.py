"""Smoke test of the local Airflow harness: real scheduler, dag-processor, triggerer and api-server.

Uses a temporary AIRFLOW_HOME and a temporary DAGs folder, so nothing is written into the repo.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator

import pytest
from devtools.cluster import AirflowRestClient, LocalAirflow, free_port

pytestmark = pytest.mark.e2e

DAG_ID = "e2e_smoke"
MARKER = "E2E_SMOKE_MARKER the answer is 42"
SMOKE_DAG = textwrap.dedent(
    f'''
    from airflow.sdk import DAG, task

    with DAG("{DAG_ID}", schedule=None, tags=["e2e"]):

        @task
        def answer() -> int:
            print("{MARKER}")
            return 42

        answer()
    '''
)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirflow]:
    """A running LocalAirflow whose DAGs folder holds only the smoke DAG."""
    base = tmp_path_factory.mktemp("airflow_e2e")
    dags = base / "dags"
    dags.mkdir()
    (dags / "smoke_dag.py").write_text(SMOKE_DAG)
    cluster = LocalAirflow(
        base / "home",
        free_port(),
        # None unsets: the test must not depend on the caller's environment for the pause default.
        extra_env={
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": None,
        },
        stop_timeout=5,  # throwaway home: no need to wait ~10 s for the triggerer's graceful exit
    )
    try:
        cluster.start()
        print(f"\nLocalAirflow healthy after {cluster.startup_seconds:.1f}s at {cluster.base_url}")
        yield cluster
    finally:
        cluster.stop()


def test_trigger_run_and_read_log(airflow: LocalAirflow) -> None:
    client: AirflowRestClient = airflow.client()
    t0 = time.monotonic()

    dag = client.wait_for_dag(DAG_ID, timeout=120)
    assert dag["is_paused"] is True  # dags_are_paused_at_creation stays at its default
    client.unpause(DAG_ID)

    run_id = client.trigger(DAG_ID, conf={"source": "e2e"}, run_id="smoke_run_1")
    assert run_id == "smoke_run_1"
    assert client.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    print(f"DAG parsed + run finished in {time.monotonic() - t0:.1f}s")

    tis = client.task_instances(DAG_ID, run_id)
    assert [(ti["task_id"], ti["map_index"], ti["state"]) for ti in tis] == [("answer", -1, "success")]

    tries = client.tries(DAG_ID, run_id, "answer")
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "success")]

    log = client.log(DAG_ID, run_id, "answer", try_number=1)
    assert MARKER in log, log
    assert client.xcom(DAG_ID, run_id, "answer") == 42
    assert client.import_errors() == []

    # Task logs land under AIRFLOW_HOME/logs, process logs under AIRFLOW_HOME/proc-logs.
    assert list((airflow.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=answer/attempt=1.log"))
    assert airflow.log_path("scheduler").stat().st_size > 0
