"""Payments: charge an order, refund it (the saga compensation).

``POST /payments/charges {"order_id", "amount_cents"}`` -> 201 charge. ``POST /payments/refunds
{"order_id", "amount_cents"?}`` refunds what is still charged (all of it by default) -> 201; with
nothing left to refund -> 200 ``nothing_to_refund``, so compensations can run blindly.
"""

from __future__ import annotations

from demo_services.common import POST, ServiceError, health_route, json_object, positive_int, required_str
from demo_services.idempotency import idempotent
from demo_services.ledger import ledger_of
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState


def charge(request: Request, state: DemoState) -> Response:
    body = json_object(request)
    order_id = required_str(body, "order_id")
    amount = positive_int(body, "amount_cents")
    ledger = ledger_of(state)
    charge_id = ledger.next_id("ch")
    ledger.append("charge", order_id, charge_id, request.idempotency_key, amount_cents=amount)
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
