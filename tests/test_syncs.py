"""Incremental API syncs end to end: the example DAGs through dag.test() against the demo API, into
PostgreSQL (a fresh database per test), SQLite and files; kill -9 mid-sync and resume; clear;
backfill; 429 and 5xx mid-sync; a schema change mid-sync."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

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
    run = dag.test(logical_date=logical, run_conf={"destination": ""})  # SQLite
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
    again = _xcom(dag.test(logical_date=logical, run_conf={"destination": ""}), "sync_issues")
    assert (again["rows"], again["checksum"]) == (first["rows"], first["checksum"])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT * FROM github_issues ORDER BY number").fetchall() == before


def _run(dag, logical, conn_id):
    run = dag.test(logical_date=logical, run_conf={"destination": f"postgres://{conn_id}"})
    assert run.state == "success", _states(run)
    return _xcom(run, "sync_issues")


def _checkpoint_pages(conn_id: str) -> int:
    state = _state(conn_id)
    return 0 if state is None else state["pages"]


def test_kill_9_mid_sync_then_resume_equals_a_clean_sync_and_clearing_changes_nothing(dagbag, demo, pg):
    hour = _freeze(demo)
    logical = hour.subtract(hours=8)
    resumed_db, clean_db = pg(), pg()
    requests.post(f"{demo.url}/admin/faults", json={"path": "/github", "latency_ms": 250}, timeout=5)
    script = (
        "import pendulum\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "dag = DagBag().get_dag('github_issues_sync')\n"
        f"dag.test(logical_date=pendulum.parse({logical.isoformat()!r}), run_conf={{'destination': 'postgres://{resumed_db}'}})\n"
    )
    task = subprocess.Popen(
        [sys.executable, "-c", script], env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while _checkpoint_pages(resumed_db) < 3:
            assert task.poll() is None and time.monotonic() < deadline, "the sync did not start paging"
            time.sleep(0.05)
        os.kill(task.pid, signal.SIGKILL)  # kill -9 the process running the task, mid-sync
        task.wait(timeout=10)
    finally:
        if task.poll() is None:
            task.kill()
    killed = _state(resumed_db)
    assert killed["status"] == "running" and 3 <= killed["pages"] < 10
    requests.delete(f"{demo.url}/admin/faults", timeout=5)
    resumed = _run(dagbag.get_dag("github_issues_sync"), logical, resumed_db)
    assert resumed["resumed_at_page"] >= killed["pages"]  # started at the page that was not committed
    clean = _run(dagbag.get_dag("github_issues_sync"), logical, clean_db)
    assert clean["resumed_at_page"] == 0
    table = _table(resumed_db)
    assert table == _table(clean_db)  # no duplicates, no gaps, same values
    expected = _issues_in(demo, logical.subtract(hours=1), logical)
    assert {number: updated for number, updated, _ in table} == expected
    assert (resumed["rows"], resumed["checksum"]) == (clean["rows"], clean["checksum"])
    cleared = _run(dagbag.get_dag("github_issues_sync"), logical, resumed_db)  # a cleared run: same interval
    assert cleared["resumed_at_page"] == 0 and cleared["rows"] == clean["rows"]
    assert _table(resumed_db) == table


def test_backfill_of_three_intervals_covers_them_exactly(dagbag, demo, pg):
    hour = _freeze(demo)
    conn_id = pg()
    dag = dagbag.get_dag("github_issues_sync")
    ends = [hour.subtract(hours=h) for h in (12, 11, 10)]
    manifests = [_run(dag, end, conn_id) for end in ends]
    windows = [(m["window"]["start"], m["window"]["end"]) for m in manifests]
    assert windows == [(e.subtract(hours=1).isoformat(), e.isoformat()) for e in ends]  # contiguous, in order
    expected = _issues_in(demo, ends[0].subtract(hours=1), ends[-1])
    assert {n: u for n, u, _ in _table(conn_id)} == expected
    assert sum(m["rows"] for m in manifests) == len(expected)


def test_pages_answered_429_and_5xx_mid_sync_still_give_every_row(dagbag, demo, pg):
    hour = _freeze(demo)
    conn_id = pg()
    dag = dagbag.get_dag("github_issues_sync")
    logical = hour.subtract(hours=20)
    rule = {"path": "/github", "error_rate": 0.2, "status": 429, "retry_after": "0", "seed": 11}
    requests.post(f"{demo.url}/admin/faults", json=rule, timeout=5).raise_for_status()
    first = _run(dag, logical, conn_id)
    rule |= {"status": 503, "seed": 5}
    requests.post(f"{demo.url}/admin/faults", json=rule, timeout=5).raise_for_status()
    second = _run(dag, logical.add(hours=1), conn_id)
    (applied,) = requests.get(f"{demo.url}/admin/faults", timeout=5).json()["rules"]
    assert applied["injected"] >= 1
    requests.delete(f"{demo.url}/admin/faults", timeout=5)
    expected = _issues_in(demo, logical.subtract(hours=1), logical.add(hours=1))
    assert {n: u for n, u, _ in _table(conn_id)} == expected and first["rows"] + second["rows"] == len(
        expected
    )


def test_a_schema_change_mid_sync_adds_columns_without_failing(dagbag, demo, pg):
    import threading

    hour = _freeze(demo)
    conn_id = pg()
    logical = hour.subtract(hours=30)
    requests.post(f"{demo.url}/admin/faults", json={"path": "/github", "latency_ms": 200}, timeout=5)

    def change_schema_after_three_pages():
        deadline = time.monotonic() + 120
        while _checkpoint_pages(conn_id) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        requests.post(f"{demo.url}/admin/datasets", json={"schema": 2}, timeout=5)

    flipper = threading.Thread(target=change_schema_after_three_pages, daemon=True)
    flipper.start()
    manifest = _run(dagbag.get_dag("github_issues_sync"), logical, conn_id)
    flipper.join(timeout=5)
    import psycopg2

    dbname = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])["schema"]
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=dbname) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'github_issues'"
        )
        columns = dict(cur.fetchall())
        cur.execute(
            "SELECT count(*) FILTER (WHERE milestone IS NULL), count(milestone), count(*) FROM github_issues"
        )
        without, with_, total = cur.fetchone()
        cur.execute("SELECT count(*) FROM github_issues WHERE _raw ? 'reactions'")
        (raw_with,) = cur.fetchone()
    assert (
        columns["reactions"] == "jsonb" and columns["milestone"] == "text" and columns["number"] == "bigint"
    )
    assert without >= 200 and with_ >= 100 and raw_with == with_ and total == manifest["rows"]


def test_a_successful_sync_emits_an_asset_event_with_window_cursor_and_rows(dagbag, demo):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    hour = _freeze(demo)
    logical = hour.subtract(hours=40)
    run = dagbag.get_dag("github_issues_sync").test(logical_date=logical, run_conf={"destination": ""})
    manifest = _xcom(run, "sync_issues")
    with create_session() as session:
        event = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "github_issues")
            .order_by(AssetEvent.id.desc())
        ).first()
        extra = dict(event.extra)
    assert extra["window"] == manifest["window"] and extra["rows"] == manifest["rows"] > 0
    assert extra["cursor"] == manifest["cursor"] and extra["uri"].endswith("#github_issues")
    from api_orchestration.state import get_backend
    from api_orchestration.status import collect_status

    (shown,) = [s for s in collect_status(get_backend(), sagas=0)["streams"] if s["key"] == "github_issues"]
    assert (shown["rows"], shown["cursor"], shown["window"]) == (
        manifest["rows"],
        manifest["cursor"],
        manifest["window"],
    )
    assert shown["dag_id"] == "github_issues_sync" and shown["run_id"] == run.run_id  # the status page's row
    report = dagbag.get_dag("github_issues_report")
    assert [a.name for a in report.timetable.asset_condition.objects] == ["github_issues"]  # scheduled on it


def _stripe_operator(destination: str, **stream_overrides):
    from api_orchestration.calls.pagination import Pagination
    from api_orchestration.operators.sync import ApiSyncOperator
    from api_orchestration.syncs.stream import Stream

    stream = Stream(
        "charges",
        primary_key="id",
        cursor_field="created",
        cursor_kind="integer",
        mode="cursor",
        since_param="created[gte]",
        **stream_overrides,
    )
    pagination = Pagination(
        "cursor",
        records="data",
        cursor_path="data[-1].id",
        cursor_param="starting_after",
        has_more_path="has_more",
        page_size=100,
        size_param="limit",
    )
    return ApiSyncOperator(
        task_id="sync_charges",
        http_conn_id="demo_api",
        endpoint="/stripe/v1/charges",
        pagination=pagination,
        stream=stream,
        destination=destination,
    )


def test_cursor_mode_into_object_storage_finds_only_new_records_and_commits_the_mark(demo, tmp_path):
    from airflow.sdk import DAG
    from test_dags import _register

    from api_orchestration.syncs.sinks.files import read_parts

    now = int(time.time()) + 600  # ten minutes of one charge a second before the frozen clock
    requests.post(
        f"{demo.url}/admin/datasets", json={"now": pendulum.from_timestamp(now).isoformat()}, timeout=5
    )
    with DAG("stripe_charges_files", schedule=None, tags=["api-orchestration"]) as dag:
        _stripe_operator(tmp_path.as_uri(), start=now - 1800, lookback=5)
    _register(dag)
    first = _xcom(dag.test(), "sync_charges")
    assert first["rows"] >= 600 and first["cursor"] == now and len(first["parts"]) == first["pages"]
    records = read_parts(first["parts"])
    numbers = sorted(int(r["id"][3:11]) for r in records)
    assert numbers == list(range(numbers[0], numbers[0] + first["rows"]))  # no duplicates, no gaps
    assert min(r["created"] for r in records) >= now - 1800
    requests.post(
        f"{demo.url}/admin/datasets", json={"now": pendulum.from_timestamp(now + 60).isoformat()}, timeout=5
    )
    second = _xcom(dag.test(), "sync_charges")
    new = read_parts(second["parts"])
    assert second["window"]["start"] == now - 5  # the committed mark minus the lookback
    assert {r["created"] for r in new} == set(range(now - 5, now + 61)) and second["cursor"] == now + 60
    assert (tmp_path / "charges" / "_cursor.json").read_text() == json.dumps({"mark": now + 60})


def test_bad_sync_settings_are_refused_at_parse_time():
    from api_orchestration import ConfigurationError
    from api_orchestration.syncs.stream import Stream

    with pytest.raises(
        ConfigurationError, match="destination must name an Airflow connection id, never credentials"
    ):
        _stripe_operator("postgres://user:secret@db/x")
    with pytest.raises(ConfigurationError, match=r"cursor_field is required in cursor mode"):
        Stream("x", primary_key="id", mode="cursor")
    with pytest.raises(ConfigurationError, match=r"mode must be one of interval, cursor, got 'incremental'"):
        Stream("x", primary_key="id", mode="incremental")
    with pytest.raises(ConfigurationError, match=r"name must be a plain identifier"):
        Stream("my-table", primary_key="id")
    with pytest.raises(ConfigurationError, match=r"lookback must be a timedelta for a timestamp cursor"):
        Stream("x", primary_key="id", cursor_field="updated_at", lookback=60)


def test_partitions_as_mapped_tasks_keep_their_own_state(demo, tmp_path):
    from airflow.sdk import DAG
    from test_dags import _register

    from api_orchestration.calls.pagination import Pagination
    from api_orchestration.operators.sync import ApiSyncOperator
    from api_orchestration.syncs.stream import Stream

    before_start = pendulum.from_timestamp(int(demo.state.started_at) - 1, tz="UTC")  # no update yet
    requests.post(f"{demo.url}/admin/datasets", json={"now": before_start.isoformat()}, timeout=5)
    db = tmp_path / "repos.db"
    with DAG("repo_issues_partitions", schedule=None, tags=["api-orchestration"]) as dag:
        ApiSyncOperator.partial(
            task_id="sync_repo",
            http_conn_id="demo_api",
            query={"state": "all", "sort": "updated", "direction": "asc"},
            pagination=Pagination("link_header", page_size=100, size_param="per_page"),
            stream=Stream("repo_issues", primary_key="id", cursor_field="updated_at", mode="cursor",
                          since_param="since", param_format="iso_z", ordered=True),
            destination=f"sqlite:///{db}",
        ).expand_kwargs(
            [{"endpoint": f"/github/repos/acme/{repo}/issues", "partition": repo} for repo in ("docs", "gadgets")]
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    with sqlite3.connect(db) as conn:
        marks = dict(conn.execute("SELECT part, mark FROM _api_sync_cursors WHERE stream = 'repo_issues'"))
        rows = conn.execute("SELECT count(*), count(DISTINCT id) FROM repo_issues").fetchone()
    assert set(marks) == {"docs", "gadgets"}
    assert rows == (1000 + 5000, 1000 + 5000)  # both repositories, each issue once


def test_a_long_limiter_wait_defers_and_the_resumed_task_continues_at_the_next_page(demo, tmp_path):
    from airflow.sdk import DAG
    from test_dags import _register

    from api_orchestration import RateLimit
    from api_orchestration.calls.pagination import Pagination
    from api_orchestration.operators.sync import ApiSyncOperator
    from api_orchestration.syncs.stream import Stream

    requests.post(f"{demo.url}/admin/datasets", json={"now": "2030-01-01T00:00:00Z"}, timeout=5)
    with DAG("sync_defers", schedule=None, tags=["api-orchestration"]) as dag:
        ApiSyncOperator(
            task_id="sync_docs",
            http_conn_id="demo_api",
            endpoint="/github/repos/acme/docs/issues",
            query={"state": "all"},
            pagination=Pagination("link_header", page_size=100, size_param="per_page", max_pages=3),
            stream=Stream("docs_issues", primary_key="number"),
            destination=f"sqlite:///{tmp_path / 'docs.db'}",
            rate_limit=RateLimit(1, 2.5),  # one page per 2.5 s ...
            rate_limit_key=f"defer-{tmp_path.name}",
            max_sleep=0.5,  # ... longer than the task may sleep: it defers to the triggerer between pages
        )
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    manifest = _xcom(run, "sync_docs")
    assert (manifest["pages"], manifest["rows"], manifest["stop"]) == (3, 300, "max_pages reached")
    assert manifest["resumed_at_page"] >= 1  # the last resumption started after the committed pages
    with sqlite3.connect(tmp_path / "docs.db") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT number) FROM docs_issues").fetchone() == (
            300,
            300,
        )


def _mapped_xcoms(run, task_id: str) -> dict[int, dict]:
    tis = [t for t in run.get_task_instances() if t.task_id == task_id]
    return {t.map_index: t.xcom_pull(task_ids=task_id, map_indexes=t.map_index) for t in tis}


FAR = pendulum.datetime(2100, 1, 1, tz="UTC")


def test_partitions_from_a_parent_listing_fan_out_with_their_own_cursors(demo, tmp_path):
    """A builder sync step partitioned per repository (the records of a paginated parent listing):
    one mapped sync per partition, each with its own cursor, rows (``_partition``) and status row;
    a re-run fetches only what is new in each partition."""
    from test_dags import _register

    from api_orchestration.calls.pagination import Pagination
    from api_orchestration.state import get_backend
    from api_orchestration.syncs.stream import Stream
    from api_orchestration.workflows.build import build
    from api_orchestration.workflows.model import Call, Partitions, Step, Sync, Workflow

    epoch = pendulum.from_timestamp(int(demo.state.started_at), tz="UTC")
    settings = f"{demo.url}/admin/datasets"
    requests.post(settings, json={"now": epoch.subtract(seconds=1).isoformat()}, timeout=5).raise_for_status()
    start = epoch.start_of("hour").subtract(minutes=30)  # widgets 500 issues, gadgets 25, docs 5
    db = tmp_path / "repos.db"
    issues = Call(
        "GET", "/github/repos/{{ item.full_name }}/issues",
        query={"state": "all", "sort": "updated", "direction": "asc"},
        paginate=Pagination("link_header", page_size=100, size_param="per_page"),
    )  # fmt: skip
    repos = Call(
        "GET",
        "/github/orgs/acme/repos",
        paginate=Pagination("link_header", page_size=2, size_param="per_page"),
    )
    stream = Stream(
        "repo_issues", primary_key=("_partition", "number"), cursor_field="updated_at", mode="cursor",
        start=start.isoformat(), since_param="since", param_format="iso_z", ordered=True,
    )  # fmt: skip
    sync = Sync(
        stream, destination=f"sqlite:///{db}", partitions=Partitions(parent=repos, key="name", max_active=3)
    )
    dag = build(
        Workflow("repo_issues_fanout", conn_id="demo_api", steps=(Step("issues", issues, sync=sync),))
    )
    _register(dag)

    run = dag.test()
    assert run.state == "success", _states(run)
    listed = _xcom(run, "issues_partitions")
    assert [p["partition"] for p in listed] == ["docs", "gadgets", "widgets"]
    assert demo.calls()["paths"]["/github/orgs/acme/repos"] == 2  # the listing's two pages
    first = {m["partition"]: m for m in _mapped_xcoms(run, "issues").values()}
    truth = {repo: _issues_in(demo, start, FAR, f"acme/{repo}") for repo in first}
    assert {repo: m["rows"] for repo, m in first.items()} == {r: len(t) for r, t in truth.items()}
    assert [len(truth[r]) for r in ("docs", "gadgets", "widgets")] == [5, 25, 500]
    for repo, m in first.items():  # each partition's own high-water mark: its newest issue
        assert m["cursor"] == max(truth[repo].values()).replace("Z", "+00:00"), repo
    with sqlite3.connect(db) as conn:
        marks = dict(conn.execute("SELECT part, mark FROM _api_sync_cursors WHERE stream = 'repo_issues'"))
        counts = dict(conn.execute("SELECT _partition, count(*) FROM repo_issues GROUP BY _partition"))
    assert marks == {repo: json.dumps(m["cursor"]) for repo, m in first.items()}
    assert len(set(marks.values())) == 3  # three independent cursors
    assert counts == {r: len(t) for r, t in truth.items()}
    status = {e["key"]: e for e in get_backend().stream_latest()}
    assert {f"repo_issues[{r}]" for r in truth} <= set(status)
    assert all(status[f"repo_issues[{r}]"]["rows"] == len(truth[r]) for r in truth)

    # The updates since (one a second per repository, from the epoch to now, frozen just before the
    # run: a cursor window ends at the run's start): each partition fetches from its own mark, and
    # only what moved since.
    now = pendulum.now("UTC").subtract(seconds=1)
    ticks = int((now - epoch).total_seconds()) + 1
    assert ticks >= 2, "the first run took a moment"
    requests.post(settings, json={"now": now.isoformat()}, timeout=5).raise_for_status()
    run = dag.test()
    assert run.state == "success", _states(run)
    second = {m["partition"]: m for m in _mapped_xcoms(run, "issues").values()}
    for repo, m in second.items():
        since = pendulum.parse(first[repo]["cursor"])
        assert m["window"]["start"] == first[repo]["cursor"], repo
        new = _issues_in(demo, since, FAR, f"acme/{repo}")
        assert m["rows"] == len(new) and 2 <= len(new) <= ticks + 1, (repo, m["rows"], ticks)
    with sqlite3.connect(db) as conn:
        counts = dict(conn.execute("SELECT _partition, count(*) FROM repo_issues GROUP BY _partition"))
        dupes = conn.execute("SELECT count(*) - count(DISTINCT _partition || '/' || number) FROM repo_issues")
        assert dupes.fetchone()[0] == 0
    assert counts == {
        r: len(_issues_in(demo, start, FAR, f"acme/{r}")) for r in truth
    }  # no gap, no duplicate


def test_a_spec_partitions_a_sync_over_dag_run_conf_into_postgres(demo, pg):
    """The spec twin of a partitioned sync: partitions from ``dag_run.conf``, one mapped sync each,
    every partition's rows and cursor of its own in PostgreSQL."""
    import psycopg2
    import yaml
    from test_dags import _register

    from api_orchestration.specs import load_text

    epoch = pendulum.from_timestamp(int(demo.state.started_at), tz="UTC")
    requests.post(
        f"{demo.url}/admin/datasets", json={"now": epoch.subtract(seconds=1).isoformat()}, timeout=5
    ).raise_for_status()
    start = epoch.start_of("hour").subtract(minutes=30)
    conn_id = pg()
    spec = {
        "dag_id": "repo_issues_partitions_spec",
        "defaults": {"conn_id": "demo_api"},
        "steps": [{
            "name": "issues",
            "call": {
                "path": "/github/repos/acme/{{ item }}/issues",
                "query": {"state": "all", "sort": "updated", "direction": "asc"},
                "paginate": {"style": "link_header", "page_size": 100, "size_param": "per_page"},
            },
            "sync": {
                "stream": "spec_repo_issues", "primary_key": ["_partition", "number"], "cursor_field": "updated_at",
                "mode": "cursor", "start": start.isoformat(), "since_param": "since", "param_format": "iso_z",
                "ordered": True, "destination": f"postgres://{conn_id}", "partitions": {"over": "conf.repos"},
            },
        }],
    }  # fmt: skip
    dag = load_text(yaml.safe_dump(spec), "repo_issues_partitions_spec.yaml").dag
    _register(dag)
    run = dag.test(run_conf={"repos": ["docs", "gadgets", "widgets"]})
    assert run.state == "success", _states(run)
    truth = {r: _issues_in(demo, start, FAR, f"acme/{r}") for r in ("docs", "gadgets", "widgets")}
    manifests = {m["partition"]: m for m in _mapped_xcoms(run, "issues").values()}
    assert {r: m["rows"] for r, m in manifests.items()} == {r: len(t) for r, t in truth.items()}
    dbname = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])["schema"]
    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname=dbname) as conn, conn.cursor() as cur:
        cur.execute("SELECT _partition, number, updated_at FROM spec_repo_issues")
        rows = cur.fetchall()
        cur.execute("SELECT part, mark FROM _api_sync_cursors WHERE stream = 'spec_repo_issues'")
        marks = dict(cur.fetchall())
    stored: dict[str, dict[int, str]] = {}
    for part, number, updated in rows:
        stored.setdefault(part, {})[number] = updated
    assert stored == truth  # each partition exactly its own issues
    assert marks == {r: m["cursor"] for r, m in manifests.items()} and len(set(marks.values())) == 3
