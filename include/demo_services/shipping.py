"""Shipping: ship an order, cancel its shipments (the saga compensation).

``POST /shipping/shipments {"order_id", "address"}`` -> 201 shipment. ``POST
/shipping/cancellations {"order_id"}`` cancels every open shipment of the order -> 201, or 200
``nothing_to_cancel``.
"""

from __future__ import annotations

from typing import Any

from demo_services.common import POST, ServiceError, health_route, json_object, required_str
from demo_services.idempotency import idempotent
from demo_services.ledger import ledger_of
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState


def _address(body: dict[str, Any]) -> str | dict[str, Any]:
    address = body.get("address")
    if address is None:
        raise ServiceError(400, "missing_field", "'address' is required", field="address")
    if not isinstance(address, str | dict) or not (address.strip() if isinstance(address, str) else address):
        detail = "'address' must be a non-empty string or object"
        raise ServiceError(400, "invalid_field", detail, field="address")
    return address


def ship(request: Request, state: DemoState) -> Response:
    body = json_object(request)
    order_id = required_str(body, "order_id")
    address = _address(body)
    ledger = ledger_of(state)
    shipment_id = ledger.next_id("shp")
    ledger.append("shipment", order_id, shipment_id, request.idempotency_key, address=address)
    result = {"shipment_id": shipment_id, "order_id": order_id, "address": address, "status": "shipped"}
    return Response(201, result)


def cancel(request: Request, state: DemoState) -> Response:
    order_id = required_str(json_object(request), "order_id")
    ledger = ledger_of(state)
    key = request.idempotency_key
    entry = ledger.close_open(order_id, "shipment", "cancellation", "shipment_ids", "cxl", key)
    if entry is None:
        return Response(200, {"order_id": order_id, "status": "nothing_to_cancel"})
    result = {
        "cancellation_id": entry["id"],
        "order_id": order_id,
        "shipment_ids": entry["shipment_ids"],
        "status": "cancelled",
    }
    return Response(201, result)


ROUTES: tuple[Route, ...] = (
    health_route("shipping"),
    Route("/shipping/shipments", idempotent(ship), POST),
    Route("/shipping/cancellations", idempotent(cancel), POST),
)
