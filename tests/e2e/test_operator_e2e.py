"""The operator under a real scheduler, dag-processor, triggerer and api-server (LocalExecutor, SQLite).

Deferral only really happens here: the task leaves its worker, the triggerer waits, a worker resumes
it. Runs are triggered over REST API v2; task instances, tries and logs are read back over REST.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import REPO
from devtools.cluster import LocalAirflow, free_port

pytestmark = pytest.mark.e2e

SECRETS = {"password": "s3cret-pw-e2e", "header": "k-header-e2e", "query": "k-query-e2e"}
SECRET_DAG = textwrap.dedent(
    f"""
    from airflow.sdk import DAG
    from api_orchestration import ResilientHttpOperator, RetryPolicy

    with DAG("e2e_secrets", schedule=None, tags=["api-orchestration", "e2e"]):
        ResilientHttpOperator(
            task_id="call_with_credentials",
            http_conn_id="demo_api_secure",
            endpoint="/flaky/{{{{ run_id | urlencode }}}}?fail=1&api_key={SECRETS["query"]}",
            retry=RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=0.2),
        )
    """
)


BAD_SPEC = "steps:\n  - name: charge\n    call: {path: /payments/charges}\n    retry: {max_attempts: 0}\n"
NEW_SPEC = textwrap.dedent(
    """
    description: "Dropped in while Airflow runs: a pipeline from one call's result into the next."
    defaults: {conn_id: demo_api}
    params: {user_id: 5}
    steps:
      - name: user
        call: {path: "/users/{{ params.user_id }}"}
      - name: posts
        depends_on: user
        call: {path: "/users/{{ results.user.id }}/posts", query: {per_page: 2}}
        output: items[*].user_id
    """
)
POLL_DAG = textwrap.dedent(
    """
    \"\"\"An Airflow DAG file: a poll step (built by api_orchestration's builder).\"\"\"
    import pendulum
    from api_orchestration import Call, Poll, Step, Workflow, build

    job = {"rows": 2, "duration": 10, "pending": 1, "retry_after": 11}  # Retry-After 11 s > max_sleep 10 s
    dag = build(
        Workflow("e2e_export_poll", conn_id="demo_api", steps=(
            Step("export", Call("POST", "/exports", json=job), output="rows[*].value",
                 poll=Poll(success="status == 'succeeded'", failure="status == 'failed'", result="result_url",
                           timeout=120)),
        )),
        schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), tags=["api-orchestration", "e2e"],
    )
    """
)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, demo_server) -> Iterator[LocalAirflow]:
    """Airflow over a DAGs folder holding the repo's example DAGs plus one test DAG."""
    base = tmp_path_factory.mktemp("operator_e2e")
    dags = base / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    (dags / "e2e_secrets.py").write_text(SECRET_DAG)
    (dags / "e2e_export_poll.py").write_text(POLL_DAG)
    workflows = base / "workflows"  # the repo's specs plus one bad file; tests drop more in
    shutil.copytree(REPO / "include" / "workflows", workflows)
    (workflows / "bad_orders.yaml").write_text(BAD_SPEC)
    secure = {
        "conn_type": "http", "host": "127.0.0.1", "port": demo_server.port, "login": "alice",
        "password": SECRETS["password"], "extra": {"X-Api-Key": SECRETS["header"]},
    }  # fmt: skip
    extra = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_DEMO_API": os.environ["AIRFLOW_CONN_DEMO_API"],
        "AIRFLOW_CONN_DEMO_API_SECURE": json.dumps(secure),
        "AIRFLOW__API_ORCHESTRATION__STATE_URL": f"sqlite:///{base}/state.db",
        "AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR": str(workflows),
    }
    cluster = LocalAirflow(base / "home", free_port(), extra_env=extra)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _run(
    airflow: LocalAirflow, dag_id: str, timeout: float = 240, conf: dict | None = None
) -> tuple[str, str]:
    client = airflow.client()
    client.wait_for_dag(dag_id, timeout=120)
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, conf=conf)
    return run_id, client.wait_for_run(dag_id, run_id, timeout=timeout)


def test_mapped_tasks_defer_on_the_limiter_and_complete(airflow, demo_server):
    demo_server.reset()
    client = airflow.client()
    run_id, state = _run(airflow, "throttled_fetch_example")
    assert state == "success"
    tis = [ti for ti in client.task_instances("throttled_fetch_example", run_id) if ti["task_id"] == "fetch"]
    assert sorted((ti["map_index"], ti["state"]) for ti in tis) == [
        (0, "success"),
        (1, "success"),
        (2, "success"),
    ]

    logs = {
        ti["map_index"]: client.log(
            "throttled_fetch_example", run_id, "fetch", ti["try_number"], ti["map_index"]
        )
        for ti in tis
    }
    deferred = [i for i, text in logs.items() if "deferring" in text and "resumed after deferral" in text]
    assert len(deferred) >= 2, logs  # two of the three had to wait ~8 s and ~16 s: more than max_sleep

    arrivals = sorted(
        t
        for p, ts in demo_server.calls(arrivals=True)["arrivals"].items()
        if p.startswith("/echo/page-")
        for t in ts
    )
    assert len(arrivals) == 3
    assert all(b - a >= 8.0 for a, b in itertools.pairwise(arrivals)), arrivals  # 1 permit per 8 s held


def test_example_dag_succeeds_and_logs_each_attempt(airflow):
    client = airflow.client()
    run_id, state = _run(airflow, "resilient_call_example")
    assert state == "success"
    tries = client.tries("resilient_call_example", run_id, "post_flaky")
    assert [t["try_number"] for t in tries] == [1]  # retried inside the task: one Airflow try
    text = client.log("resilient_call_example", run_id, "post_flaky", 1)
    assert "attempt 1/4 -> 503" in text and "attempt 2/4 -> 503" in text and "attempt 3/4 -> 200" in text
    summary = client.xcom("resilient_call_example", run_id, "summary")
    assert summary["flaky_calls"] == 3 and summary["after_429_calls"] == 2


def test_credentials_never_reach_the_task_log(airflow):
    client = airflow.client()
    run_id, state = _run(airflow, "e2e_secrets")
    assert state == "success"
    text = client.log("e2e_secrets", run_id, "call_with_credentials", 1)
    assert "attempt 1/3 -> 503" in text and "attempt 2/3 -> 200" in text and "api_key=***" in text
    basic = base64.b64encode(f"alice:{SECRETS['password']}".encode()).decode()
    for secret in [*SECRETS.values(), basic]:
        assert secret not in text, f"{secret!r} leaked into the task log"


def test_order_saga_rolls_back_under_the_real_scheduler(airflow, demo_server):
    """Callbacks, task-state reads and XCom go through the Execution API here, not in-process."""
    import requests

    client = airflow.client()
    conf = {"order_id": "e2e-oos", "amount_cents": 990, "skus": ["OUT-OF-STOCK"], "address": "x"}
    run_id, state = _run(airflow, "order_saga", conf=conf)
    assert state == "failed"
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances("order_saga", run_id)}
    assert states == {
        "charge_payment": "success", "reserve_inventory": "failed", "create_shipment": "upstream_failed",
        "saga_check": "success",
        "undo_create_shipment": "skipped", "undo_reserve_inventory": "skipped", "undo_charge_payment": "success",
        "saga_outcome": "failed",
    }  # fmt: skip
    assert [t["try_number"] for t in client.tries("order_saga", run_id, "reserve_inventory")] == [1]
    record = client.xcom("order_saga", run_id, "reserve_inventory", key="saga_failure")
    assert record["step"] == "reserve_inventory" and record["no_effect"] is True and "409" in record["error"]
    assert "saga rolled back" in client.log("order_saga", run_id, "saga_outcome", 1)
    ledger = requests.get(f"{demo_server.url}/admin/ledger", params={"order_id": "e2e-oos"}, timeout=5).json()
    assert ledger["orders"]["e2e-oos"]["net_cents"] == 0 and [e["type"] for e in ledger["entries"]] == [
        "charge",
        "refund",
    ]


def test_marking_a_running_step_failed_compensates_it(airflow, demo_server):
    """As the UI's "Mark as failed" does: the step was mid-call, its effect unknown, so it is undone."""
    import time

    import requests

    demo_server.reset()
    requests.post(
        f"{demo_server.url}/admin/faults",
        json={"path": "/inventory/reservations", "latency_ms": 15000},
        timeout=5,
    )
    client = airflow.client()
    client.wait_for_dag("order_saga", timeout=120)
    client.unpause("order_saga")
    conf = {"order_id": "e2e-marked", "amount_cents": 500, "skus": ["SKU-1"], "address": "x"}
    run_id = client.trigger("order_saga", conf=conf)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the reservation call is in flight
        states = {ti["task_id"]: ti["state"] for ti in client.task_instances("order_saga", run_id)}
        if states.get("reserve_inventory") == "running" and demo_server.calls()["paths"].get(
            "/inventory/reservations"
        ):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"reserve_inventory never ran: {states}")
    path = f"/api/v2/dags/order_saga/dagRuns/{run_id}/taskInstances/reserve_inventory"
    client.request("PATCH", path, json={"new_state": "failed"}).raise_for_status()
    assert client.wait_for_run("order_saga", run_id, timeout=240) == "failed"
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances("order_saga", run_id)}
    assert states["undo_reserve_inventory"] == "success" and states["undo_charge_payment"] == "success", (
        states
    )
    order = requests.get(
        f"{demo_server.url}/admin/ledger", params={"order_id": "e2e-marked"}, timeout=5
    ).json()
    assert (
        order["orders"]["e2e-marked"]["net_cents"] == 0
        and order["orders"]["e2e-marked"]["open_reservations"] == 0
    )
    requests.delete(f"{demo_server.url}/admin/faults", timeout=5)


def _wait_for(check, timeout: float = 90.0, every: float = 1.0):
    import time

    deadline = time.monotonic() + timeout
    while (value := check()) is None or value is False:
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s")
        time.sleep(every)
    return value


def test_spec_files_load_next_to_a_bad_one_and_new_files_appear(airflow):
    """A bad spec is an import error naming file and field; it hides nothing; a dropped-in file loads."""
    client = airflow.client()
    client.wait_for_dag("order_saga_spec", timeout=120)
    client.wait_for_dag("user_enrichment_spec", timeout=30)
    errors = _wait_for(
        lambda: [e for e in client.import_errors() if e["filename"].endswith("workflow_spec_errors.py")]
    )
    assert (
        "bad_orders.yaml: steps[0].retry.max_attempts: must be an integer >= 1, got 0"
        in errors[0]["stack_trace"]
    )
    assert not [e for e in client.import_errors() if e["filename"].endswith("/workflows.py")]
    run_id, state = _run(airflow, "user_enrichment_spec", conf={"user_id": 3})  # triggerable meanwhile
    assert state == "success"

    workflows = airflow.env["AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR"]
    (Path(workflows) / "user_pipeline.yaml").write_text(NEW_SPEC)
    (Path(workflows) / "bad_orders.yaml").unlink()
    client.wait_for_dag("user_pipeline", timeout=120)
    _wait_for(
        lambda: not [e for e in client.import_errors() if e["filename"].endswith("workflow_spec_errors.py")]
    )
    run_id, state = _run(airflow, "user_pipeline", conf={"user_id": 9})
    assert state == "success"
    assert client.xcom("user_pipeline", run_id, "posts") == [9, 9]


def test_a_poll_step_defers_between_polls_on_the_real_triggerer(airflow, demo_server):
    """Retry-After: 11 > max_sleep (10 s): the task leaves its worker between polls (state
    *deferred*), the triggerer waits, a worker resumes polling the same job, then fetches its rows."""
    demo_server.reset()
    client = airflow.client()
    client.wait_for_dag("e2e_export_poll", timeout=120)
    client.unpause("e2e_export_poll")
    run_id = client.trigger("e2e_export_poll")
    states = lambda: {ti["state"] for ti in client.task_instances("e2e_export_poll", run_id)}  # noqa: E731
    assert _wait_for(lambda: "deferred" in states(), timeout=120)  # no worker slot while the job runs
    assert client.wait_for_run("e2e_export_poll", run_id, timeout=180) == "success"
    jobs = requests.get(f"{demo_server.url}/admin/exports", timeout=5).json()["jobs"]
    assert len(jobs) == 1 and jobs[0]["downloads"] == 1 and jobs[0]["polls"] >= 2
    assert client.xcom("e2e_export_poll", run_id, "export") == [f"{jobs[0]['id']}-1", f"{jobs[0]['id']}-2"]
    text = client.log("e2e_export_poll", run_id, "export", 1)
    assert "deferring" in text and "polling /exports/" in text and "resumed after deferral" in text
    assert "the job succeeded" in text


def _github_issues(demo_url: str, start, end) -> dict[int, str]:
    """Ground truth, read by hand: ``{number: updated_at}`` of acme/widgets' issues updated in ``[start, end)``."""
    stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    url = f"{demo_url}/github/repos/acme/widgets/issues"
    params: dict | None = {
        "state": "all",
        "sort": "updated",
        "direction": "asc",
        "per_page": 100,
        "since": stamp(start),
    }
    found: dict[int, str] = {}
    while url:
        response = requests.get(url, params=params, timeout=10)
        page = response.json()
        found.update((i["number"], i["updated_at"]) for i in page if i["updated_at"] < stamp(end))
        ended = any(i["updated_at"] >= stamp(end) for i in page)
        url, params = (None if ended else response.links.get("next", {}).get("url")), None
    return found


def _created(response: requests.Response) -> dict | None:
    """The created backfill, or None on the SQLite lock's 503 (anything else fails)."""
    if response.status_code == 503 and "Database is locked" in response.text:
        return None
    assert response.ok, f"POST /api/v2/backfills -> {response.status_code}: {response.text}"
    return response.json()


def test_a_backfill_of_three_intervals_through_the_scheduler_syncs_exactly_them(
    airflow, demo_server, tmp_path
):
    """``POST /api/v2/backfills`` over three hourly intervals of the interval-mode example sync: the
    scheduler creates and runs the three runs; the table holds exactly those intervals' issues (by
    the demo API's own listing) and each run's asset event carries its window."""
    import sqlite3

    import pendulum

    epoch = pendulum.from_timestamp(int(demo_server.state.started_at), tz="UTC")
    settings = f"{demo_server.url}/admin/datasets"
    # the clock stands still: each window's issues stay the same while the runs and the check read them
    requests.post(settings, json={"now": epoch.subtract(seconds=1).isoformat()}, timeout=5).raise_for_status()
    try:
        client = airflow.client()
        client.wait_for_dag("github_issues_sync", timeout=120)
        client.unpause(
            "github_issues_sync"
        )  # the scheduler starts no run of a paused DAG, backfills included
        first = epoch.start_of("hour").subtract(hours=6)
        db = tmp_path / "backfill.db"
        body = {
            "dag_id": "github_issues_sync", "from_date": first.isoformat(), "to_date": first.add(hours=2).isoformat(),
            "dag_run_conf": {"destination": f"sqlite:///{db}"}, "reprocess_behavior": "none", "max_active_runs": 3,
        }  # fmt: skip
        # On the embedded SQLite, Airflow answers 503 while another component holds the write lock
        # ("Backfill creation is not supported on SQLite under concurrent access"): ask again.
        backfill = _wait_for(
            lambda: _created(client.request("POST", "/api/v2/backfills", json=body)), timeout=60
        )
        done = _wait_for(
            lambda: client._json("GET", f"/api/v2/backfills/{backfill['id']}").get("completed_at"),
            timeout=240,
        )
        assert done
        runs = [
            r for r in client._paged("/api/v2/dags/github_issues_sync/dagRuns", "dag_runs")
            if r["run_type"] == "backfill"
        ]  # fmt: skip
        assert sorted(r["state"] for r in runs) == ["success"] * 3, runs
        windows = sorted(
            (pendulum.parse(r["data_interval_start"]), pendulum.parse(r["data_interval_end"])) for r in runs
        )
        assert windows == [(first.add(hours=i), first.add(hours=i + 1)) for i in range(3)], windows

        truth = [_github_issues(demo_server.url, start, end) for start, end in windows]
        assert all(len(t) > 900 for t in truth)
        with sqlite3.connect(db) as conn:
            stored = dict(conn.execute("SELECT number, updated_at FROM github_issues"))
        expected = {n: u for t in truth for n, u in t.items()}
        assert len(expected) == sum(len(t) for t in truth)  # the intervals do not overlap
        assert stored == expected  # exactly the three intervals: no gap, no duplicate, nothing else

        run_ids = {r["dag_run_id"] for r in runs}
        events = [
            e for e in client._paged("/api/v2/assets/events", "asset_events", {"source_dag_id": "github_issues_sync"})
            if e["source_run_id"] in run_ids
        ]  # fmt: skip
        by_window = {(e["extra"]["window"]["start"], e["extra"]["window"]["end"]): e["extra"] for e in events}
        assert len(events) == 3 and sorted(by_window) == [(s.isoformat(), e.isoformat()) for s, e in windows]
        for (start, end), t in zip(windows, truth, strict=True):
            extra = by_window[start.isoformat(), end.isoformat()]
            assert extra["rows"] == len(t) and extra["cursor"] == max(t.values()).replace("Z", "+00:00")
    finally:
        requests.post(settings, json={"now": None}, timeout=5)
        airflow.client().request("PATCH", "/api/v2/dags/github_issues_sync", json={"is_paused": True})
