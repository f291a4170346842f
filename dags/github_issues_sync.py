"""An hourly incremental sync of a GitHub-style issues API into PostgreSQL (SQLite when no connection).

Each run fetches the issues updated in its data interval: ``GET /github/repos/acme/widgets/issues
?state=all&sort=updated&direction=asc&since=<interval start>``, following the ``Link: rel="next"``
header page by page (100 a page, each page one guarded call under a shared 20/s limit and a
breaker) and stopping at the first page that passes the interval's end. Rows are upserted on
``number`` into the table ``github_issues``, with typed columns inferred from the records and the
whole record in ``_raw`` (JSONB). Each page commits its rows and the position together, so a retry
after a crash resumes at the page that failed; a cleared run or a backfill re-fetches exactly its
interval and changes nothing that is already there.

Destination: ``postgres://sync_postgres`` when the connection ``sync_postgres`` is set in the
environment (``AIRFLOW_CONN_SYNC_POSTGRES``), else SQLite under ``AIRFLOW_HOME``; the ``destination``
param of a run overrides it. Every successful run updates the asset ``github_issues`` with the
window, the cursor and the row counts; ``github_issues_report`` runs on it.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param

from api_orchestration import BreakerPolicy, RateLimit, RetryPolicy
from api_orchestration.calls.pagination import Pagination
from api_orchestration.operators.sync import ApiSyncOperator
from api_orchestration.syncs.stream import Stream

GITHUB_ISSUES = Asset("github_issues", uri="sync://demo_api/github_issues")
DEFAULT_DESTINATION = "postgres://sync_postgres" if os.environ.get("AIRFLOW_CONN_SYNC_POSTGRES") else ""

with DAG(
    dag_id="github_issues_sync",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),  # real hourly data intervals
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    tags=["api-orchestration", "example", "sync"],
    doc_md=__doc__,
    params={
        "destination": Param(
            DEFAULT_DESTINATION,
            type="string",
            maxLength=500,
            description="'' (SQLite), postgres://<conn id>, or an object-storage URI",
        )
    },
) as dag:
    ApiSyncOperator(
        task_id="sync_issues",
        http_conn_id="demo_api",
        endpoint="/github/repos/acme/widgets/issues",
        query={"state": "all", "sort": "updated", "direction": "asc"},
        pagination=Pagination("link_header", page_size=100, size_param="per_page"),
        stream=Stream(
            "github_issues",
            primary_key=("number",),
            cursor_field="updated_at",
            mode="interval",
            since_param="since",
            param_format="iso_z",
            ordered=True,
        ),
        destination="{{ params.destination }}",
        rate_limit=RateLimit(20, 1.0, burst=5),
        rate_limit_key="github",  # one key, one policy
        breaker_key="github",
        breaker=BreakerPolicy(failure_rate=0.5, window_size=20, min_calls=10, open_seconds=30),
        retry=RetryPolicy(max_attempts=5, base_delay=0.2, max_delay=5.0),
        retries=2,
        retry_delay=pendulum.duration(seconds=10),
        outlets=[GITHUB_ISSUES],
    )
