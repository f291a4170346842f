"""Payments: charge an order, refund it (the saga compensation), with Stripe's idempotency semantics.

``POST /payments/charges {"order_id", "amount_cents", "simulate"?}`` -> 201 charge. ``POST
/payments/refunds {"order_id", "amount_cents"?}`` refunds what is still charged (all of it by
default) -> 201; with nothing left to refund -> 200 ``nothing_to_refund``, so compensations can
run blindly. Both honour ``Idempotency-Key`` as Stripe does (:mod:`demo_services.idempotency`):
the charge and the refund share one key space, so a refund must not reuse the charge's key.

``simulate`` makes a charge fail the way Stripe's test cards do, inside the endpoint (so the
answer is saved for its idempotency key and replayed): ``card_declined`` -> 402 without effect,
``processing_error`` -> 500 without effect, ``error_after_charge`` -> 500 *after* the charge was
recorded (the client cannot tell it from ``processing_error``: the effect is unknown).
``processing_ms`` (0..10000) makes the charge take that long before its effect, so a duplicate
sent meanwhile meets the first still in flight (409 ``idempotency_key_in_use``).
"""

from __future__ import annotations

import time

from demo_services.common import POST, ServiceError, health_route, json_object, positive_int, required_str
from demo_services.idempotency import idempotent
from demo_services.ledger import ledger_of
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

SIMULATIONS = ("card_declined", "processing_error", "error_after_charge")


def _simulation(body: dict[str, object]) -> str | None:
    value = body.get("simulate")
    if value is not None and value not in SIMULATIONS:
        detail = f"'simulate' must be one of {', '.join(SIMULATIONS)}"
        raise ServiceError(400, "invalid_field", detail, field="simulate")
    return value  # type: ignore[return-value]


def charge(request: Request, state: DemoState) -> Response:
    body = json_object(request)
    order_id = required_str(body, "order_id")
    amount = positive_int(body, "amount_cents")
    simulate = _simulation(body)
    processing_ms = positive_int(body, "processing_ms", required=False)
    if processing_ms is not None and processing_ms > 10_000:
        raise ServiceError(
            400, "invalid_field", "'processing_ms' must be at most 10000", field="processing_ms"
        )
    if processing_ms:
        time.sleep(processing_ms / 1000)
    if simulate == "card_declined":
        raise ServiceError(402, "card_declined", "Your card was declined.", decline_code="generic_decline")
    if simulate == "processing_error":
        raise ServiceError(500, "api_error", "An error occurred while processing the charge.")
    ledger = ledger_of(state)
    charge_id = ledger.next_id("ch")
    ledger.append("charge", order_id, charge_id, request.idempotency_key, amount_cents=amount)
    if simulate == "error_after_charge":
        raise ServiceError(500, "api_error", "An error occurred while processing the charge.")
    result = {"charge_id": charge_id, "order_id": order_id, "amount_cents": amount, "status": "charged"}
    return Response(201, result)


def refund(request: Request, state: DemoState) -> Response:
    body = json_object(request)
    order_id = required_str(body, "order_id")
    amount = positive_int(body, "amount_cents", required=False)
    ledger = ledger_of(state)
    with ledger.lock:
        refundable = ledger.net_cents(order_id)
        if refundable <= 0:
            return Response(200, {"order_id": order_id, "amount_cents": 0, "status": "nothing_to_refund"})
        if amount is not None and amount > refundable:
            detail = f"refund of {amount} exceeds the {refundable} cents still charged"
            raise ServiceError(409, "refund_exceeds_charge", detail, refundable_cents=refundable)
        refund_id = ledger.next_id("re")
        amount = refundable if amount is None else amount
        ledger.append("refund", order_id, refund_id, request.idempotency_key, amount_cents=amount)
    result = {"refund_id": refund_id, "order_id": order_id, "amount_cents": amount, "status": "refunded"}
    return Response(201, result)


ROUTES: tuple[Route, ...] = (
    health_route("payments"),
    Route("/payments/charges", idempotent(charge), POST),
    Route("/payments/refunds", idempotent(refund), POST),
)
