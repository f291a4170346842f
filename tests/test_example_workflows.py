"""The example workflow DAGs through dag.test() against the demo participant services."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3

import pendulum
import pytest
import requests
from conftest import fresh_postgres_database
from test_dags import _states

pytestmark = pytest.mark.usefixtures("airflow_db")

ORDER = {"amount_cents": 1250, "skus": ["SKU-1"], "address": "1 Main St"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag()


def _xcom(run, task_id: str):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


def ledger(demo, order_id: str) -> dict:
    return requests.get(f"{demo.url}/admin/ledger", params={"order_id": order_id}, timeout=5).json()


def fault(demo, **rule) -> None:
    requests.post(f"{demo.url}/admin/faults", json=rule, timeout=5).raise_for_status()


def test_order_saga_happy_path(dagbag, demo):
    run = dagbag.get_dag("order_saga").test(run_conf={**ORDER, "order_id": "o-happy"})
    assert run.state == "success", _states(run)
    order = ledger(demo, "o-happy")["orders"]["o-happy"]
    assert (order["charged"], order["refunded"], order["open_reservations"], order["open_shipments"]) == (
        1250,
        0,
        1,
        1,
    )


def test_order_saga_out_of_stock_refunds_and_ends_failed(dagbag, demo):
    run = dagbag.get_dag("order_saga").test(run_conf={**ORDER, "order_id": "o-oos", "skus": ["OUT-OF-STOCK"]})
    states = _states(run)
    assert run.state == "failed"
    assert (states["charge_payment"], states["reserve_inventory"], states["create_shipment"]) == (
        "success", "failed", "upstream_failed",
    )  # fmt: skip
    assert (states["undo_create_shipment"], states["undo_reserve_inventory"], states["undo_charge_payment"]) == (
        "skipped", "skipped", "success",
    )  # fmt: skip
    assert states["saga_outcome"] == "failed"
    book = ledger(demo, "o-oos")
    order = book["orders"]["o-oos"]
    assert order["net_cents"] == 0 and order["open_reservations"] == 0 and order["shipped"] == 0
    assert [e["type"] for e in book["entries"]] == ["charge", "refund"]
    assert demo.calls()["paths"]["/inventory/reservations"] == 1  # 409 is a business failure: never retried


def test_user_enrichment_merges_parallel_calls(dagbag, demo):
    run = dagbag.get_dag("user_enrichment").test(run_conf={"user_id": 7})
    assert run.state == "success", _states(run)
    profile = _xcom(run, "profile")
    assert set(profile) == {"user", "posts", "analytics"}
    assert (
        profile["user"]["id"] == 7
        and profile["analytics"]["user_id"] == 7
        and isinstance(profile["posts"], list)
    )


def test_notify_fanout_survives_one_channel_down(dagbag, demo):
    fault(demo, path="/notifications/sms", down=True)
    run = dagbag.get_dag("notify_fanout").test()
    states = _states(run)
    assert run.state == "success", states
    summary = _xcom(run, "notify")
    assert summary["total"] == 5 and summary["succeeded"] == 4 and summary["failed"] == [1]
    assert states["notify_each[1]"] == "failed"


def test_service_health_falls_back_for_a_downed_service(dagbag, demo):
    fault(demo, path="/payments", down=True)
    run = dagbag.get_dag("service_health").test()
    assert run.state == "success", _states(run)
    report = _xcom(run, "report")
    assert report["payments_health"]["fallback"] is True
    assert report["inventory_health"] == {"service": "inventory", "status": "ok"}


def _window_with_users(hours_back: int) -> pendulum.DateTime:
    return pendulum.now("UTC").start_of("hour").subtract(hours=hours_back)


def test_users_sync_is_idempotent_per_interval(dagbag, demo, airflow_db):
    dag = dagbag.get_dag("users_sync")
    logical = _window_with_users(5)
    first = _xcom(dag.test(logical_date=logical), "sync_users")
    since, before = (pendulum.parse(first["window"][k]) for k in ("start", "end"))
    assert before - since == pendulum.duration(hours=1) and since.minute == 0  # the run's data interval
    assert first["rows"] == 5 and first["pages"] == 1 and first["stop"] == "total reached"  # 5 users an hour
    db = os.path.join(airflow_db, "api_orchestration", "sync.db")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, name, email, updated_at FROM users ORDER BY id").fetchall()
        in_window = [r for r in rows if since.isoformat() <= r[3].replace("Z", "+00:00") < before.isoformat()]
    assert len(in_window) == 5 and all(isinstance(r[0], int) for r in rows)
    again = _xcom(dag.test(logical_date=logical), "sync_users")
    assert (again["rows"], again["checksum"]) == (first["rows"], first["checksum"])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, name, email, updated_at FROM users ORDER BY id").fetchall() == rows


def test_users_sync_into_postgresql(dagbag, demo, postgres_url):
    os.environ["AIRFLOW_CONN_SYNC_PG"] = json.dumps(
        {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": "postgres",
            "schema": postgres_url,
        }
    )
    try:
        run = dagbag.get_dag("users_sync").test(
            logical_date=_window_with_users(7), run_conf={"target_conn_id": "sync_pg"}
        )
        result = _xcom(run, "sync_users")
        assert result["rows"] == 5 and result["uri"] == "postgres://sync_pg/users"
        import psycopg2

        with (
            psycopg2.connect(host="127.0.0.1", user="postgres", dbname=postgres_url) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SELECT COUNT(*) FROM users")
            assert cur.fetchone()[0] == result["rows"]
            cur.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'id'"
            )
            assert cur.fetchone()[0] == "bigint"  # the declared column type
        conn.close()
    finally:
        os.environ.pop("AIRFLOW_CONN_SYNC_PG", None)


@pytest.fixture
def postgres_url():
    """A fresh database on the machine's PostgreSQL; dropped afterwards."""
    with fresh_postgres_database("apiorch_test_") as name:
        yield name


ORDERS = 40  # 1-2 s each under the faults below


@pytest.mark.slow
def test_chaos_order_sagas_complete_or_fully_compensate(dagbag, demo):
    """60 orders under faults (1 in 10 out of stock): every order completed or fully compensated,
    never charged twice; both outcomes occur."""
    import random
    import time

    rng = random.Random(7)
    fault(demo, path="/payments", error_rate=0.3, status=503, seed=1)
    fault(demo, path="/inventory", error_rate=0.3, status=429, retry_after="0.1", seed=2)
    fault(demo, path="/shipping", error_rate=0.3, status=502, latency_ms=20, seed=3)
    dag = dagbag.get_dag("order_saga")
    started = time.monotonic()
    outcomes = {}
    for i in range(ORDERS):
        skus = ["OUT-OF-STOCK"] if rng.random() < 0.1 else ["SKU-1"]
        run = dag.test(run_conf={**ORDER, "order_id": f"chaos-{i}", "skus": skus})
        outcomes[f"chaos-{i}"] = run.state
    wall = time.monotonic() - started
    book = requests.get(f"{demo.url}/admin/ledger", timeout=10).json()
    for order_id, state in outcomes.items():
        o = book["orders"].get(
            order_id, {"charged": 0, "net_cents": 0, "open_reservations": 0, "open_shipments": 0}
        )
        if state == "success":
            assert (o["charged"], o["net_cents"], o["open_reservations"], o["open_shipments"]) == (
                1250,
                1250,
                1,
                1,
            ), order_id
        else:
            assert (o["net_cents"], o["open_reservations"], o["open_shipments"]) == (0, 0, 0), (order_id, o)
    charges = [e for e in book["entries"] if e["type"] == "charge"]
    assert len(charges) == len({e["order_id"] for e in charges})  # no order charged twice
    assert set(outcomes.values()) == {"success", "failed"}, outcomes  # completions and rollbacks
    print(
        f"\nchaos: {ORDERS} order_saga runs in {wall:.1f} s; {sum(s == 'success' for s in outcomes.values())} completed"
    )
    assert dt.timedelta(seconds=wall) < dt.timedelta(minutes=8)
