"""An hourly API sync: the users changed in the run's data interval, upserted into a local table.

Each run pages through ``GET /users?updated_since=<interval start>&updated_before=<interval end>``
(through the shared rate limit and breaker) and upserts the rows into the table ``users``: a
SQLite file under ``AIRFLOW_HOME`` by default, or PostgreSQL when the ``target_conn_id`` param names
an Airflow Postgres connection. Re-running an interval changes nothing (rows are updated only when
``updated_at`` is newer). The schedule is a ``CronDataIntervalTimetable``: Airflow 3's default for
cron strings (``CronTriggerTimetable``) gives every run an empty data interval. A run triggered
from the UI or REST with ``logical_date: null`` has none either: it syncs the last 24 hours.
"""

from __future__ import annotations

import pendulum
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import DAG, CronDataIntervalTimetable, Param, task

from api_orchestration import Guard, RateLimit, ResilientCaller, RetryPolicy
from api_orchestration.state import get_backend
from api_orchestration.sync import fetch_all, sync_window, upsert

CONN = "demo_api"

with DAG(
    dag_id="users_sync",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),  # real hourly data intervals
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["api-orchestration", "example", "sync"],
    doc_md=__doc__,
    params={
        "target_conn_id": Param(
            "",
            type="string",
            maxLength=250,
            pattern=r"^[A-Za-z0-9_.-]*$",
            description="empty: SQLite under AIRFLOW_HOME",
        )
    },
) as dag:

    @task
    def sync_users(**context) -> dict:
        since, before = sync_window(context)
        hook = HttpHook(method="GET", http_conn_id=CONN)
        guard = Guard(
            backend=get_backend(), limit_key=CONN, rate_limit=RateLimit(20, 1.0, burst=5), retry=RetryPolicy()
        )
        caller = ResilientCaller(hook.get_conn(), guard)
        query = {"updated_since": since.isoformat(), "updated_before": before.isoformat()}
        try:
            users = fetch_all(caller, hook.url_from_endpoint("/users"), query)
        finally:
            caller.flush()
        counts = upsert(
            users,
            "users",
            ("id", "name", "email", "updated_at"),
            conn_id=context["params"]["target_conn_id"] or None,
        )
        return {"window": [since.isoformat(), before.isoformat()], **counts}

    sync_users()
