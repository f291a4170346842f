"""Incremental API syncs end to end: the example DAGs through dag.test() against the demo API, into
PostgreSQL (a fresh database per test), SQLite and files; kill -9 mid-sync and resume; clear;
backfill; 429 and 5xx mid-sync; a schema change mid-sync."""

from __future__ import annotations

import json
import os
import sqlite3

import pendulum
import pytest
import requests
from conftest import fresh_postgres_database
from test_dags import _states

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag()


def _xcom(run, task_id: str):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


def _freeze(demo, hours_after_start: float = 1.0) -> pendulum.DateTime:
    """Freeze the datasets' clock (both syncs of a comparison see the same data); the server's start hour."""
    start = pendulum.from_timestamp(int(demo.state.started_at), tz="UTC")
    frozen = start.add(hours=hours_after_start)
    requests.post(
        f"{demo.url}/admin/datasets", json={"now": frozen.isoformat()}, timeout=5
    ).raise_for_status()
    return start.start_of("hour")


@pytest.fixture
def pg():
    """A fresh PostgreSQL database and the Airflow connection ``sync_pg_<n>`` to it."""
    names = []

    def make() -> str:
        context = fresh_postgres_database("apiorch_sync_")
        name = context.__enter__()
        names.append(context)
        conn_id = f"sync_pg_{len(names)}"
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": name}
        )
        return conn_id

    yield make
    for i, context in enumerate(names, start=1):
        os.environ.pop(f"AIRFLOW_CONN_SYNC_PG_{i}", None)
        context.__exit__(None, None, None)


def _table(conn_id: str, table: str = "github_issues") -> list[tuple]:
    import psycopg2

    dbname = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])["schema"]
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=dbname) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT number, updated_at, _raw::text FROM {table} ORDER BY number")
        return cur.fetchall()


def _state(conn_id: str) -> dict | None:
    import psycopg2

    dbname = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])["schema"]
    try:
        with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=dbname) as conn, conn.cursor() as cur:
            cur.execute("SELECT checkpoint FROM _api_sync_state")
            row = cur.fetchone()
    except psycopg2.Error:
        return None
    return row[0] if row else None


def _issues_in(
    demo, start: pendulum.DateTime, end: pendulum.DateTime, repo: str = "acme/widgets"
) -> dict[int, str]:
    """Ground truth, read by hand: ``{number: updated_at}`` of the issues updated in ``[start, end)``."""
    since = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    url = f"{demo.url}/github/repos/{repo}/issues?state=all&sort=updated&direction=asc&per_page=100&since={since}"
    found: dict[int, str] = {}
    while url:
        response = requests.get(url, timeout=10)
        page = [i for i in response.json() if i["updated_at"] < end.strftime("%Y-%m-%dT%H:%M:%SZ")]
        found.update((i["number"], i["updated_at"]) for i in page)
        url = response.links.get("next", {}).get("url") if len(page) == len(response.json()) else None
    return found


def test_github_issues_sync_into_sqlite_is_idempotent_per_interval(dagbag, demo, airflow_db):
    hour = _freeze(demo)
    dag = dagbag.get_dag("github_issues_sync")
    logical = hour.subtract(hours=5)  # CronDataIntervalTimetable: the interval is the hour before
    run = dag.test(logical_date=logical)
    assert run.state == "success", _states(run)
    first = _xcom(run, "sync_issues")
    start, end = logical.subtract(hours=1), logical
    assert first["window"] == {"start": start.isoformat(), "end": end.isoformat()}
    expected = _issues_in(demo, start, end)
    assert first["rows"] == len(expected) > 900 and first["stop"] == "records past the window end"
    db = os.path.join(airflow_db, "api_orchestration", "sync.db")
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT * FROM github_issues ORDER BY number").fetchall()
        in_window = conn.execute(
            "SELECT number, updated_at FROM github_issues WHERE updated_at >= ? AND updated_at < ?",
            (start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ).fetchall()
    assert dict(in_window) == expected
    again = _xcom(dag.test(logical_date=logical), "sync_issues")
    assert (again["rows"], again["checksum"]) == (first["rows"], first["checksum"])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT * FROM github_issues ORDER BY number").fetchall() == before
