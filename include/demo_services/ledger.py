"""The ledger: every effect of payments, inventory and shipping, in order, per server.

It is the services' only business state (what an order may still refund, release or cancel is
derived from it), so saga tests can assert nets with ``GET /admin/ledger[?order_id=X]``.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from typing import Any

from demo_services.common import now_iso
from demo_services.routing import Request, Response
from demo_services.state import DemoState

EntryType = str  # "charge" | "refund" | "reservation" | "release" | "shipment" | "cancellation"


class Ledger:
    """Append-only entries behind one re-entrant lock; hold ``lock`` to check and append atomically."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._entries: list[dict[str, Any]] = []
        self._ids: Counter[str] = Counter()

    def reset(self) -> None:
        with self.lock:
            self._entries.clear()
            self._ids.clear()

    def next_id(self, prefix: str) -> str:
        """A new id like ``ch_000001`` (sequential per prefix until reset)."""
        with self.lock:
            self._ids[prefix] += 1
            return f"{prefix}_{self._ids[prefix]:06d}"

    def append(
        self, kind: EntryType, order_id: str, entry_id: str, idempotency_key: str | None, **fields: Any
    ) -> dict[str, Any]:
        """Record one effect; returns (a copy of) the entry."""
        entry = {
            "type": kind,
            "order_id": order_id,
            **fields,
            "idempotency_key": idempotency_key,
            "id": entry_id,
            "at": now_iso(),
        }
        with self.lock:
            self._entries.append(entry)
        return copy.deepcopy(entry)

    def entries(self, order_id: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            found = [e for e in self._entries if order_id is None or e["order_id"] == order_id]
            return copy.deepcopy(found)

    def open_ids(self, order_id: str, opened: EntryType, closed: EntryType, field: str) -> list[str]:
        """Ids of ``opened`` entries of the order not listed in the ``field`` of a ``closed`` entry."""
        entries = self.entries(order_id)
        done = {i for e in entries if e["type"] == closed for i in e[field]}
        return [e["id"] for e in entries if e["type"] == opened and e["id"] not in done]

    def close_open(
        self, order_id: str, opened: EntryType, closed: EntryType, field: str, prefix: str, key: str | None
    ) -> dict[str, Any] | None:
        """Append one ``closed`` entry listing the order's open ``opened`` ids; None if none are open."""
        with self.lock:
            ids = self.open_ids(order_id, opened, closed, field)
            if not ids:
                return None
            return self.append(closed, order_id, self.next_id(prefix), key, **{field: ids})

    def orders(self, order_id: str | None = None) -> dict[str, dict[str, int]]:
        """Per-order totals and nets."""
        totals: dict[str, Counter[str]] = {}
        for entry in self.entries(order_id):
            t = totals.setdefault(entry["order_id"], Counter())
            kind = entry["type"]
            if kind in ("charge", "refund"):
                t["charged" if kind == "charge" else "refunded"] += entry["amount_cents"]
            elif kind in ("reservation", "shipment"):
                t["reserved" if kind == "reservation" else "shipped"] += 1
            elif kind == "release":
                t["released"] += len(entry["reservation_ids"])
            elif kind == "cancellation":
                t["cancelled"] += len(entry["shipment_ids"])
        return {order: _summary(t) for order, t in totals.items()}

    def net_cents(self, order_id: str) -> int:
        """Charged minus refunded for the order."""
        return self.orders(order_id).get(order_id, {}).get("net_cents", 0)


def _summary(t: Counter[str]) -> dict[str, int]:
    keys = ("charged", "refunded", "reserved", "released", "shipped", "cancelled")
    summary = {key: t[key] for key in keys}
    summary["net_cents"] = t["charged"] - t["refunded"]
    summary["open_reservations"] = t["reserved"] - t["released"]
    summary["open_shipments"] = t["shipped"] - t["cancelled"]
    return summary


def ledger_of(state: DemoState) -> Ledger:
    return state.extension(Ledger)


def admin_ledger(request: Request, state: DemoState) -> Response:
    """``GET /admin/ledger[?order_id=X]``: the entries and per-order nets."""
    order_id = request.query.get("order_id") or None
    ledger = ledger_of(state)
    with ledger.lock:
        return Response(200, {"entries": ledger.entries(order_id), "orders": ledger.orders(order_id)})
