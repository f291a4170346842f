"""A slow API: one call every 8 seconds for the whole deployment.

Three mapped tasks share the ``demo_api_slow`` limiter key. The first calls at once; the others
would have to wait longer than ``max_sleep`` (2 s), so they *defer*: they leave their worker slot,
wait in the triggerer, and resume when a permit is due. Watch them turn purple (deferred) in the
grid view, then succeed about 8 and 16 seconds apart.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from api_orchestration import RateLimit, ResilientHttpOperator

with DAG(
    dag_id="throttled_fetch_example",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["api-orchestration", "example"],
    doc_md=__doc__,
) as dag:
    ResilientHttpOperator.partial(
        task_id="fetch",
        http_conn_id="demo_api",
        rate_limit=RateLimit(permits=1, per_seconds=8.0),
        rate_limit_key="demo_api_slow",
        max_sleep=2.0,
    ).expand(endpoint=["/echo/page-1", "/echo/page-2", "/echo/page-3"])
