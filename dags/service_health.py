"""Scheduled parallel health checks, each with a fallback, every 15 minutes (an Airflow DAG file).

Every service's ``/health`` is checked at once, each under its own breaker (``key``); a check that
fails for good (or whose breaker is open) calls its fallback (the echo endpoint standing in for a status page) instead of failing the
run. ``report`` merges the results by service.
"""

from __future__ import annotations

import pendulum

from api_orchestration import BreakerPolicy, Call, RetryPolicy, Step, Workflow, build

SERVICES = ("payments", "inventory", "shipping", "users", "notifications")

WORKFLOW = Workflow(
    "service_health",
    conn_id="demo_api",
    retry=RetryPolicy(max_attempts=2, base_delay=0.2, max_delay=1.0),
    breaker=BreakerPolicy(failure_rate=0.5, window_size=4, min_calls=2, open_seconds=60),
    timeout=5.0,
    steps=(
        *(
            Step(
                f"{s}_health",
                Call("GET", f"/{s}/health"),
                key=f"{s}_health",  # not the saga's key: another breaker policy
                fallback=Call("GET", f"/echo/status-page/{s}"),
            )
            for s in SERVICES
        ),
        Step("report", merge=tuple(f"{s}_health" for s in SERVICES)),
    ),
)

dag = build(
    WORKFLOW,
    schedule="*/15 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["api-orchestration", "example"],
    doc_md=__doc__,
)
