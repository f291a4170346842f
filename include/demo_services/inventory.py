"""Inventory: reserve an order's SKUs, release them (the saga compensation).

``POST /inventory/reservations {"order_id", "skus": [...]}`` -> 201 reservation, or 409
``out_of_stock`` (no effect) if any SKU is ``OUT-OF-STOCK``. ``POST /inventory/releases
{"order_id"}`` releases every open reservation of the order -> 201, or 200 ``nothing_to_release``.
"""

from __future__ import annotations

from typing import Any

from demo_services.common import POST, ServiceError, health_route, json_object, required_str
from demo_services.idempotency import idempotent
from demo_services.ledger import ledger_of
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

OUT_OF_STOCK = "OUT-OF-STOCK"


def _skus(body: dict[str, Any]) -> list[str]:
    skus = body.get("skus")
    if skus is None:
        raise ServiceError(400, "missing_field", "'skus' is required", field="skus")
    if not isinstance(skus, list) or not skus or not all(isinstance(s, str) and s for s in skus):
        raise ServiceError(400, "invalid_field", "'skus' must be a non-empty list of strings", field="skus")
    return skus


def reserve(request: Request, state: DemoState) -> Response:
    body = json_object(request)
    order_id = required_str(body, "order_id")
    skus = _skus(body)
    if OUT_OF_STOCK in skus:
        raise ServiceError(409, "out_of_stock", f"{OUT_OF_STOCK} cannot be reserved", sku=OUT_OF_STOCK)
    ledger = ledger_of(state)
    reservation_id = ledger.next_id("rsv")
    ledger.append("reservation", order_id, reservation_id, request.idempotency_key, skus=skus)
    result = {"reservation_id": reservation_id, "order_id": order_id, "skus": skus, "status": "reserved"}
    return Response(201, result)


def release(request: Request, state: DemoState) -> Response:
    order_id = required_str(json_object(request), "order_id")
    ledger = ledger_of(state)
    key = request.idempotency_key
    entry = ledger.close_open(order_id, "reservation", "release", "reservation_ids", "rel", key)
    if entry is None:
        return Response(200, {"order_id": order_id, "status": "nothing_to_release"})
    result = {
        "release_id": entry["id"],
        "order_id": order_id,
        "reservation_ids": entry["reservation_ids"],
        "status": "released",
    }
    return Response(201, result)


ROUTES: tuple[Route, ...] = (
    health_route("inventory"),
    Route("/inventory/reservations", idempotent(reserve), POST),
    Route("/inventory/releases", idempotent(release), POST),
)
