"""An order as a saga: charge the payment, reserve the stock, create the shipment.

If a step fails for good, the steps that completed are undone in reverse order (refund, release,
cancel), each with the step's own idempotency key, and the run ends *failed* (``saga_outcome``) so a
rolled-back order never looks like a success. Each service has its own limiter and breaker (``key``),
so a failing inventory service cannot cut off refunds. Try ``{"skus": ["OUT-OF-STOCK"]}``: the charge
succeeds, the reservation is refused (409, never retried), the refund runs, shipping never runs.

conf: ``{"order_id": "o-1", "amount_cents": 1250, "skus": ["SKU-1"], "address": "1 Main St"}``
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param

from api_orchestration import BreakerPolicy, Call, RateLimit, RetryPolicy, Step, Workflow, build

ORDER = "{{ params.order_id or run_id }}"

WORKFLOW = Workflow(
    "order_saga",
    conn_id="demo_api",
    retry=RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=2.0),
    rate_limit=RateLimit(permits=50, per_seconds=1.0, burst=10),
    breaker=BreakerPolicy(failure_rate=0.6, window_size=50, min_calls=20, open_seconds=10),
    steps=(
        Step(
            "charge_payment",
            Call(
                "POST",
                "/payments/charges",
                json={"order_id": ORDER, "amount_cents": "{{ params.amount_cents }}"},
            ),
            compensate=Call("POST", "/payments/refunds", json={"order_id": ORDER}),
            key="payments",
            output="{charge_id: charge_id, status: status}",  # XCom keeps what is needed, no order data
        ),
        Step(
            "reserve_inventory",
            Call("POST", "/inventory/reservations", json={"order_id": ORDER, "skus": "{{ params.skus }}"}),
            depends_on=("charge_payment",),
            compensate=Call("POST", "/inventory/releases", json={"order_id": ORDER}),
            key="inventory",
            output="{reservation_id: reservation_id, status: status}",
        ),
        Step(
            "create_shipment",
            Call("POST", "/shipping/shipments", json={"order_id": ORDER, "address": "{{ params.address }}"}),
            depends_on=("reserve_inventory",),
            compensate=Call("POST", "/shipping/cancellations", json={"order_id": ORDER}),
            key="shipping",
            output="{shipment_id: shipment_id, status: status}",  # not the customer's address
        ),
    ),
)

dag = build(
    WORKFLOW,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["api-orchestration", "example", "saga"],
    doc_md=__doc__,
    params={
        "order_id": Param("", type="string", description="empty: the run id"),
        "amount_cents": Param(1250, type="integer", minimum=1),
        "skus": Param(["SKU-1"], type="array", description='["OUT-OF-STOCK"] makes the reservation fail'),
        "address": Param("1 Main St", type="string"),
    },
)
