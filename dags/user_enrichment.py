"""Parallel calls merged into one result: a user, their posts and their analytics, fetched at once.

The three calls share one rate limit and breaker; ``profile`` merges their results keyed by step name.
conf: ``{"user_id": 7}``
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param

from api_orchestration import Call, RateLimit, Step, Workflow, build

USER = "{{ params.user_id }}"

WORKFLOW = Workflow(
    "user_enrichment",
    conn_id="demo_api",
    rate_limit=RateLimit(permits=20, per_seconds=1.0, burst=5),
    steps=(
        Step("user", Call("GET", f"/users/{USER}")),
        Step("posts", Call("GET", f"/users/{USER}/posts", query={"per_page": 50}), output="items"),
        Step("analytics", Call("GET", f"/analytics/users/{USER}")),
        Step("profile", merge=("user", "posts", "analytics")),
    ),
    output="profile",
)

dag = build(
    WORKFLOW,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["api-orchestration", "example"],
    doc_md=__doc__,
    params={"user_id": Param(7, type="integer", minimum=1, maximum=240)},
)
