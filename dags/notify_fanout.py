"""Fan-out: one event to several notification channels, as mapped tasks (at most 3 at once).

One channel down does not stop the others: up to 1 failed channel is tolerated by ``notify``.
conf: ``{"event": "order_shipped", "channels": ["email", "sms", "push", "slack", "webhook"]}``
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param

from api_orchestration import Call, FanOut, RetryPolicy, Step, Workflow, build

WORKFLOW = Workflow(
    "notify_fanout",
    conn_id="demo_api",
    retry=RetryPolicy(max_attempts=2, base_delay=0.2, max_delay=1.0),
    steps=(
        Step(
            "notify",
            Call(
                "POST",
                "/notifications/{{ item }}",
                json={"event": "{{ params.event }}", "run": "{{ run_id }}"},
            ),
            fan_out=FanOut(over="params.channels", max_active=3, tolerate_failures=1),
        ),
    ),
)

dag = build(
    WORKFLOW,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["api-orchestration", "example"],
    doc_md=__doc__,
    params={
        "event": Param(
            "order_shipped", type="string", minLength=1, maxLength=64, pattern=r"^[A-Za-z0-9_.:-]+$"
        ),
        "channels": Param(
            ["email", "sms", "push", "slack", "webhook"],
            type="array",
            minItems=1,
            maxItems=5,
            uniqueItems=True,
            items={"type": "string", "enum": ["email", "sms", "push", "slack", "webhook"]},
        ),
    },
)
