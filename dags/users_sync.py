"""An hourly API sync: the users changed in the run's data interval, upserted into a local table.

Built on the general sync (``ApiSyncOperator``): each run pages through ``GET /users?page=&per_page=100
&updated_since=<interval start>&updated_before=<interval end>`` (page numbers, stopping when
``total`` is reached; every page through the shared rate limit and breaker) and upserts the rows on
``id`` into the table ``users`` with declared columns: a SQLite file under ``AIRFLOW_HOME`` by default,
or PostgreSQL when the ``target_conn_id`` param names an Airflow Postgres connection. Re-running an
interval changes nothing; a run killed mid-way resumes at the page that was not committed. The
schedule is a ``CronDataIntervalTimetable``: Airflow 3's default for cron strings
(``CronTriggerTimetable``) gives every run an empty data interval. A run triggered from the UI or
REST with ``logical_date: null`` has none either: it syncs the last 24 hours.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from api_orchestration import RateLimit, RetryPolicy
from api_orchestration.calls.pagination import Pagination
from api_orchestration.operators.sync import ApiSyncOperator
from api_orchestration.syncs.stream import Stream

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
    ApiSyncOperator(
        task_id="sync_users",
        http_conn_id="demo_api",
        endpoint="/users",
        pagination=Pagination(
            "page_number", records="items", page_size=100, size_param="per_page", total_path="total"
        ),
        stream=Stream(
            "users",
            primary_key=("id",),
            cursor_field="updated_at",
            mode="interval",
            since_param="updated_since",
            until_param="updated_before",
        ),
        columns={"id": "integer", "name": "text", "email": "text", "updated_at": "text"},
        keep_raw=False,
        destination="{{ 'postgres://' ~ params.target_conn_id if params.target_conn_id else '' }}",
        rate_limit=RateLimit(20, 1.0, burst=5),
        rate_limit_key="demo_users",  # one key, one policy
        retry=RetryPolicy(),
    )
