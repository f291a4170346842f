"""TaskFlow with ``@task.resilient_http``: a page of users read through the guarded session (a real
``requests.Session``), their analytics fetched concurrently through the async client, and a digest
posted with an idempotency key. Every call of the three tasks shares one rate limit and breaker
(key ``demo_taskflow``), across every worker.

conf: ``{"page": 1, "per_page": 20}``
"""

from __future__ import annotations

import asyncio

import pendulum
from airflow.sdk import Param, dag, task

from api_orchestration import BreakerPolicy, RateLimit

GUARDED = {
    "http_conn_id": "demo_api",
    "rate_limit": RateLimit(permits=20, per_seconds=1.0, burst=10),
    "rate_limit_key": "demo_taskflow",
    "breaker": BreakerPolicy(),
    "breaker_key": "demo_taskflow",
}


@dag(
    dag_id="taskflow_example",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["api-orchestration", "example"],
    doc_md=__doc__,
    params={
        "page": Param(1, type="integer", minimum=1, maximum=240),
        "per_page": Param(20, type="integer", minimum=1, maximum=100),
    },
)
def taskflow_example():
    @task.resilient_http(**GUARDED)
    def user_ids(client, params=None) -> list[int]:
        response = client.get("/users", params={"page": params["page"], "per_page": params["per_page"]})
        response.raise_for_status()
        return [user["id"] for user in response.json()["items"]]

    @task.resilient_http(**GUARDED, concurrency=8)
    async def analytics(ids: list[int], client) -> dict[str, dict]:
        replies = await asyncio.gather(*(client.get(f"/analytics/users/{i}") for i in ids))
        failed = [i for i, reply in zip(ids, replies, strict=True) if reply.status_code != 200]
        if failed:
            raise RuntimeError(f"analytics failed for users {failed}")
        return {str(i): reply.json() for i, reply in zip(ids, replies, strict=True)}

    @task.resilient_http(**GUARDED)
    def publish(stats: dict[str, dict], client, params=None) -> dict:
        response = client.post("/echo/digests", json={"page": params["page"], "users": sorted(stats)})
        response.raise_for_status()  # POST: sent with Idempotency-Key <task key>-1
        return {"users": len(stats), "idempotency_key": response.json()["idempotency_key"]}

    publish(analytics(user_ids()))


taskflow_example()
