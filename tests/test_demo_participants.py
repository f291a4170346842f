"""The business participant services of the demo API over real HTTP: payments, inventory,
shipping, users, notifications, health, idempotent replays, the ledger, fault injection, reset."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from demo_services import DemoServer
from demo_services.users import analytics_of, posts_of

WRITES = [
    ("/payments/charges", {"order_id": "o-1", "amount_cents": 1250}, 201, "charge"),
    ("/inventory/reservations", {"order_id": "o-1", "skus": ["SKU-1", "SKU-2"]}, 201, "reservation"),
    ("/shipping/shipments", {"order_id": "o-1", "address": "1 Main St"}, 201, "shipment"),
]
SERVICES = ("payments", "inventory", "shipping", "users", "notifications")
CHANNELS = ("email", "sms", "push", "slack", "webhook")


@pytest.fixture(scope="module")
def server() -> Iterator[DemoServer]:
    with DemoServer(port=0) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean(server: DemoServer) -> None:
    server.reset()


@pytest.fixture
def api(server: DemoServer) -> Iterator[Api]:
    with requests.Session() as session:
        yield Api(server.url, session)


class Api:
    """Thin helpers over one session."""

    def __init__(self, url: str, session: requests.Session) -> None:
        self.url = url
        self.session = session

    def get(self, path: str, timeout: float = 5, **params: Any) -> requests.Response:
        return self.session.get(self.url + path, params=params, timeout=timeout)

    def post(
        self, path: str, body: Any = None, key: str | None = None, timeout: float = 5
    ) -> requests.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return self.session.post(self.url + path, json=body, headers=headers, timeout=timeout)

    def ledger(self, order_id: str | None = None) -> dict[str, Any]:
        params = {"order_id": order_id} if order_id else {}
        response = self.get("/admin/ledger", **params)
        assert response.status_code == 200
        return response.json()

    def fault(self, **rule: Any) -> dict[str, Any]:
        response = self.post("/admin/faults", rule)
        assert response.status_code == 201, response.text
        return response.json()["rule"]

    def users(self, **params: Any) -> dict[str, Any]:
        response = self.get("/users", **params)
        assert response.status_code == 200, response.text
        return response.json()


def order_totals(api: Api, order_id: str) -> dict[str, int]:
    return api.ledger(order_id)["orders"][order_id]


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


# --- payments -------------------------------------------------------------------------------


def test_charge_and_refunds(api: Api) -> None:
    charge = api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 1250})
    assert charge.status_code == 201
    assert charge.json() == {
        "charge_id": "ch_000001",
        "order_id": "o-1",
        "amount_cents": 1250,
        "status": "charged",
    }

    partial = api.post("/payments/refunds", {"order_id": "o-1", "amount_cents": 250})
    assert partial.status_code == 201
    assert partial.json() == {
        "refund_id": "re_000001",
        "order_id": "o-1",
        "amount_cents": 250,
        "status": "refunded",
    }
    too_much = api.post("/payments/refunds", {"order_id": "o-1", "amount_cents": 1001})
    assert too_much.status_code == 409
    assert too_much.json()["error"] == "refund_exceeds_charge"
    assert too_much.json()["refundable_cents"] == 1000
    rest = api.post("/payments/refunds", {"order_id": "o-1"})  # no amount: whatever is still charged
    assert (rest.status_code, rest.json()["amount_cents"]) == (201, 1000)

    again = api.post("/payments/refunds", {"order_id": "o-1"})
    assert again.status_code == 200
    assert again.json()["status"] == "nothing_to_refund"
    never_charged = api.post("/payments/refunds", {"order_id": "o-unknown", "amount_cents": 5})
    assert (never_charged.status_code, never_charged.json()["status"]) == (200, "nothing_to_refund")
    assert order_totals(api, "o-1") == {
        "charged": 1250,
        "refunded": 1250,
        "reserved": 0,
        "released": 0,
        "shipped": 0,
        "cancelled": 0,
        "net_cents": 0,
        "open_reservations": 0,
        "open_shipments": 0,
    }
    assert "o-unknown" not in api.ledger()["orders"]


@pytest.mark.parametrize(
    ("path", "body", "error", "field"),
    [
        ("/payments/charges", {"amount_cents": 5}, "missing_field", "order_id"),
        ("/payments/charges", {"order_id": "", "amount_cents": 5}, "invalid_field", "order_id"),
        ("/payments/charges", {"order_id": 7, "amount_cents": 5}, "invalid_field", "order_id"),
        ("/payments/charges", {"order_id": "o"}, "missing_field", "amount_cents"),
        ("/payments/charges", {"order_id": "o", "amount_cents": 0}, "invalid_field", "amount_cents"),
        ("/payments/charges", {"order_id": "o", "amount_cents": "12"}, "invalid_field", "amount_cents"),
        ("/payments/charges", {"order_id": "o", "amount_cents": 1.5}, "invalid_field", "amount_cents"),
        ("/payments/charges", {"order_id": "o", "amount_cents": True}, "invalid_field", "amount_cents"),
        ("/payments/refunds", {}, "missing_field", "order_id"),
        ("/payments/refunds", {"order_id": "o", "amount_cents": -1}, "invalid_field", "amount_cents"),
        ("/inventory/reservations", {"order_id": "o"}, "missing_field", "skus"),
        ("/inventory/reservations", {"order_id": "o", "skus": []}, "invalid_field", "skus"),
        ("/inventory/reservations", {"order_id": "o", "skus": "SKU-1"}, "invalid_field", "skus"),
        ("/inventory/reservations", {"order_id": "o", "skus": ["", "x"]}, "invalid_field", "skus"),
        ("/inventory/releases", {"order_id": None}, "missing_field", "order_id"),
        ("/shipping/shipments", {"order_id": "o"}, "missing_field", "address"),
        ("/shipping/shipments", {"order_id": "o", "address": " "}, "invalid_field", "address"),
        ("/shipping/shipments", {"order_id": "o", "address": 12}, "invalid_field", "address"),
        ("/shipping/cancellations", {"order": "o"}, "missing_field", "order_id"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(
    api: Api, path: str, body: dict[str, Any], error: str, field: str
) -> None:
    response = api.post(path, body)
    assert response.status_code == 400
    data = response.json()
    assert (data["error"], data["field"]) == (error, field)
    assert field in data["detail"]
    assert api.ledger()["entries"] == []


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"'])
def test_body_must_be_a_json_object(api: Api, raw: bytes) -> None:
    response = api.session.post(f"{api.url}/payments/charges", data=raw, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert "detail" in response.json()


def test_wrong_method_is_405(api: Api) -> None:
    response = api.get("/payments/charges")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


# --- inventory and shipping -----------------------------------------------------------------


def test_reservations_and_releases(api: Api) -> None:
    first = api.post("/inventory/reservations", {"order_id": "o-1", "skus": ["SKU-1"]})
    assert first.status_code == 201
    assert first.json() == {
        "reservation_id": "rsv_000001",
        "order_id": "o-1",
        "skus": ["SKU-1"],
        "status": "reserved",
    }
    api.post("/inventory/reservations", {"order_id": "o-1", "skus": ["SKU-2"]})
    api.post("/inventory/reservations", {"order_id": "o-2", "skus": ["SKU-3"]})
    released = api.post("/inventory/releases", {"order_id": "o-1"})
    assert released.status_code == 201
    assert released.json() == {
        "release_id": "rel_000001",
        "order_id": "o-1",
        "reservation_ids": ["rsv_000001", "rsv_000002"],
        "status": "released",
    }
    again = api.post("/inventory/releases", {"order_id": "o-1"})
    assert (again.status_code, again.json()) == (200, {"order_id": "o-1", "status": "nothing_to_release"})
    assert order_totals(api, "o-1")["reserved"] == order_totals(api, "o-1")["released"] == 2
    assert order_totals(api, "o-2")["open_reservations"] == 1


def test_out_of_stock_is_409_without_effect(api: Api) -> None:
    response = api.post(
        "/inventory/reservations", {"order_id": "o-1", "skus": ["SKU-1", "OUT-OF-STOCK"]}, "k"
    )
    assert response.status_code == 409
    data = response.json()
    assert (data["error"], data["sku"]) == ("out_of_stock", "OUT-OF-STOCK")
    assert "detail" in data
    assert api.ledger() == {"entries": [], "orders": {}}
    replay = api.post("/inventory/reservations", {"order_id": "o-1", "skus": ["SKU-1", "OUT-OF-STOCK"]}, "k")
    assert (replay.status_code, replay.json()) == (409, data)  # a business refusal is kept for the key
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_shipments_and_cancellations(api: Api) -> None:
    address = {"street": "1 Main St", "city": "Springfield"}
    shipped = api.post("/shipping/shipments", {"order_id": "o-1", "address": address})
    assert shipped.status_code == 201
    assert shipped.json() == {
        "shipment_id": "shp_000001",
        "order_id": "o-1",
        "address": address,
        "status": "shipped",
    }
    cancelled = api.post("/shipping/cancellations", {"order_id": "o-1"})
    assert cancelled.status_code == 201
    assert cancelled.json() == {
        "cancellation_id": "cxl_000001",
        "order_id": "o-1",
        "shipment_ids": ["shp_000001"],
        "status": "cancelled",
    }
    again = api.post("/shipping/cancellations", {"order_id": "o-1"})
    assert (again.status_code, again.json()["status"]) == (200, "nothing_to_cancel")
    assert order_totals(api, "o-1")["open_shipments"] == 0


# --- ledger ---------------------------------------------------------------------------------


def test_ledger_entries_and_nets_of_a_compensated_saga(api: Api) -> None:
    before = datetime.now().astimezone()
    api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 1250}, key="o-1:charge")
    api.post("/inventory/reservations", {"order_id": "o-1", "skus": ["SKU-1"]}, key="o-1:reserve")
    api.post("/shipping/shipments", {"order_id": "o-1", "address": "1 Main St"}, key="o-1:ship")
    api.post("/payments/charges", {"order_id": "o-2", "amount_cents": 99})
    mid = api.ledger("o-1")
    assert mid["orders"] == {
        "o-1": {
            "charged": 1250,
            "refunded": 0,
            "reserved": 1,
            "released": 0,
            "shipped": 1,
            "cancelled": 0,
            "net_cents": 1250,
            "open_reservations": 1,
            "open_shipments": 1,
        }
    }
    # compensations in reverse order
    api.post("/shipping/cancellations", {"order_id": "o-1"}, key="o-1:ship:undo")
    api.post("/inventory/releases", {"order_id": "o-1"}, key="o-1:reserve:undo")
    api.post("/payments/refunds", {"order_id": "o-1"}, key="o-1:charge:undo")

    ledger = api.ledger("o-1")
    entries = ledger["entries"]
    assert [e["type"] for e in entries] == [
        "charge",
        "reservation",
        "shipment",
        "cancellation",
        "release",
        "refund",
    ]
    assert [e["idempotency_key"] for e in entries] == [
        "o-1:charge",
        "o-1:reserve",
        "o-1:ship",
        "o-1:ship:undo",
        "o-1:reserve:undo",
        "o-1:charge:undo",
    ]
    assert [e["id"] for e in entries] == [
        "ch_000001",
        "rsv_000001",
        "shp_000001",
        "cxl_000001",
        "rel_000001",
        "re_000001",
    ]
    assert entries[0]["amount_cents"] == entries[-1]["amount_cents"] == 1250
    assert all(e["order_id"] == "o-1" for e in entries)
    assert all(before <= parse(e["at"]) <= datetime.now().astimezone() for e in entries)
    totals = ledger["orders"]["o-1"]
    assert (totals["net_cents"], totals["open_reservations"], totals["open_shipments"]) == (0, 0, 0)
    assert (totals["charged"], totals["refunded"], totals["cancelled"], totals["released"]) == (
        1250,
        1250,
        1,
        1,
    )

    everything = api.ledger()
    assert set(everything["orders"]) == {"o-1", "o-2"}
    assert len(everything["entries"]) == 7
    assert everything["orders"]["o-2"]["net_cents"] == 99
    assert api.ledger("o-none") == {"entries": [], "orders": {}}


# --- idempotency ----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "status", "kind"), WRITES)
def test_repeated_key_replays_the_first_response(
    api: Api, path: str, body: dict[str, Any], status: int, kind: str
) -> None:
    first = api.post(path, body, key="key-1")
    assert first.status_code == status
    assert "Idempotent-Replayed" not in first.headers
    for _ in range(2):
        replay = api.post(path, body, key="key-1")
        assert (replay.status_code, replay.json()) == (status, first.json())
        assert replay.headers["Idempotent-Replayed"] == "true"
    assert [e["type"] for e in api.ledger()["entries"]] == [kind]

    other = api.post(path, body, key="key-2")
    assert other.status_code == status and "Idempotent-Replayed" not in other.headers
    assert other.json() != first.json()  # a new id
    unkeyed = [api.post(path, body) for _ in range(2)]
    assert all(r.status_code == status and "Idempotent-Replayed" not in r.headers for r in unkeyed)
    assert len(api.ledger()["entries"]) == 4


def test_compensations_replay_too(api: Api) -> None:
    api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 500})
    first = api.post("/payments/refunds", {"order_id": "o-1", "amount_cents": 200}, key="undo")
    replay = api.post("/payments/refunds", {"order_id": "o-1", "amount_cents": 200}, key="undo")
    assert (replay.status_code, replay.json(), replay.headers["Idempotent-Replayed"]) == (
        201,
        first.json(),
        "true",
    )
    assert order_totals(api, "o-1")["refunded"] == 200


def test_keys_are_account_wide_and_a_reuse_with_other_parameters_is_rejected(api: Api) -> None:
    """Stripe: one key space per account (here: per service), compared by parameters."""
    charge = api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 500}, key="same")
    assert charge.status_code == 201
    refund = api.post("/payments/refunds", {"order_id": "o-1"}, key="same")  # another endpoint
    assert refund.status_code == 400
    assert refund.json()["error"] == "idempotency_error"
    assert "POST /payments/charges" in refund.json()["detail"]
    other_amount = api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 501}, key="same")
    assert (other_amount.status_code, other_amount.json()["error"]) == (400, "idempotency_error")
    assert (order_totals(api, "o-1")["charged"], order_totals(api, "o-1")["refunded"]) == (500, 0)
    # the rejection is not saved: the original request still replays
    again = api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 500}, key="same")
    assert (again.status_code, again.json(), again.headers["Idempotent-Replayed"]) == (
        201,
        charge.json(),
        "true",
    )
    # another service is another account: the same key is a new request there
    reserved = api.post("/inventory/reservations", {"order_id": "o-1", "skus": ["A"]}, key="same")
    assert reserved.status_code == 201 and "Idempotent-Replayed" not in reserved.headers
    # a compensation with its own key works
    undo = api.post("/payments/refunds", {"order_id": "o-1"}, key="same:compensate")
    assert undo.status_code == 201 and order_totals(api, "o-1")["net_cents"] == 0
    keys = api.get("/admin/idempotency").json()["keys"]
    assert [(k["account"], k["key"], k["request"], k["status"]) for k in keys] == [
        ("inventory", "same", "POST /inventory/reservations", 201),
        ("payments", "same", "POST /payments/charges", 201),
        ("payments", "same:compensate", "POST /payments/refunds", 201),
    ]


def test_json_parameters_are_compared_by_value(api: Api) -> None:
    first = api.session.post(
        f"{api.url}/payments/charges",
        data=b'{"order_id": "o-1", "amount_cents": 5}',
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
        timeout=5,
    )
    reordered = api.session.post(
        f"{api.url}/payments/charges",
        data=b'{"amount_cents":5,"order_id":"o-1"}',
        headers={"Idempotency-Key": "k", "Content-Type": "application/json"},
        timeout=5,
    )
    assert (first.status_code, reordered.status_code) == (201, 201)
    assert reordered.headers["Idempotent-Replayed"] == "true"
    assert reordered.headers["Original-Request"] == first.headers["X-Request-Id"]
    assert reordered.headers["X-Request-Id"] != first.headers["X-Request-Id"]


def test_rejected_request_is_not_kept_for_its_key(api: Api) -> None:
    bad = api.post("/payments/charges", {"order_id": "o-1"}, key="k")
    assert bad.status_code == 400
    good = api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 5}, key="k")
    assert good.status_code == 201 and "Idempotent-Replayed" not in good.headers
    assert len(api.ledger()["entries"]) == 1


@pytest.mark.parametrize(
    ("simulate", "status", "error", "charged"),
    [
        ("processing_error", 500, "api_error", 0),
        ("error_after_charge", 500, "api_error", 77),
        ("card_declined", 402, "card_declined", 0),
    ],
)
def test_an_error_inside_the_endpoint_is_saved_and_replayed(
    api: Api, simulate: str, status: int, error: str, charged: int
) -> None:
    """Stripe saves the result once the endpoint began executing, "including 500 errors"."""
    body = {"order_id": "o-1", "amount_cents": 77, "simulate": simulate}
    first = api.post("/payments/charges", body, key="k")
    assert (first.status_code, first.json()["error"]) == (status, error)
    assert "Idempotent-Replayed" not in first.headers
    for _ in range(2):
        replay = api.post("/payments/charges", body, key="k")
        assert (replay.status_code, replay.json()) == (status, first.json())
        assert replay.headers["Idempotent-Replayed"] == "true"
    totals = api.ledger("o-1")["orders"].get("o-1", {"charged": 0})
    assert totals["charged"] == charged  # the endpoint ran once
    fresh = api.post("/payments/charges", body, key="k2")  # only a new key runs it again
    assert fresh.status_code == status and "Idempotent-Replayed" not in fresh.headers


def test_a_duplicate_while_the_first_is_in_flight_gets_409(api: Api, server: DemoServer) -> None:
    body = {"order_id": "o-1", "amount_cents": 100, "processing_ms": 600}
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(api.post, "/payments/charges", body, "slow")
        time.sleep(0.2)
        with requests.Session() as other:
            duplicate = other.post(
                f"{server.url}/payments/charges", json=body, headers={"Idempotency-Key": "slow"}, timeout=5
            )
        assert duplicate.status_code == 409
        assert duplicate.json()["error"] == "idempotency_key_in_use"
        assert first.result().status_code == 201
    later = api.post("/payments/charges", body, key="slow")  # the 409 was not saved
    assert (later.status_code, later.headers["Idempotent-Replayed"]) == (201, "true")
    assert len(api.ledger()["entries"]) == 1


def test_concurrent_duplicates_have_one_effect(server: DemoServer) -> None:
    barrier = threading.Barrier(8)

    def charge(_: int) -> requests.Response:
        with requests.Session() as session:
            barrier.wait()
            return session.post(
                f"{server.url}/payments/charges",
                json={"order_id": "o-1", "amount_cents": 100},
                headers={"Idempotency-Key": "race"},
                timeout=5,
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(charge, range(8)))
    assert {r.status_code for r in responses} <= {201, 409}
    created = [r for r in responses if r.status_code == 201]
    assert len({r.json()["charge_id"] for r in created}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in created) == 1
    assert all(r.json()["error"] == "idempotency_key_in_use" for r in responses if r.status_code == 409)
    with requests.Session() as session:
        assert len(session.get(f"{server.url}/admin/ledger", timeout=5).json()["entries"]) == 1


# --- users, posts, analytics ----------------------------------------------------------------


def test_users_are_paginated_by_id(api: Api) -> None:
    ids, pages, number = [], [], 1
    while number is not None:
        data = api.users(page=number)
        assert (data["per_page"], data["total"], data["page"]) == (50, 240, number)
        ids += [user["id"] for user in data["items"]]
        pages.append(len(data["items"]))
        number = data["next_page"]
    assert ids == list(range(1, 241))
    assert pages == [50, 50, 50, 50, 40]
    assert api.users(page=9, per_page=30) == {
        "items": [],
        "page": 9,
        "per_page": 30,
        "total": 240,
        "next_page": None,
    }
    assert api.users(page=8, per_page=30)["next_page"] is None
    assert api.users(per_page=100, page=2)["next_page"] == 3


def test_user_fields_and_time_spread(api: Api, server: DemoServer) -> None:
    users = all_users(api)
    assert len({u["email"] for u in users}) == len({u["name"] for u in users}) == 240
    assert users[0]["name"] == "Ada Archer" and users[0]["email"] == "ada.archer.1@example.com"
    assert {len(u["updated_at"]) for u in users} == {len("2026-01-01T00:00:00.000000Z")}
    assert all(u["updated_at"].endswith("Z") for u in users)
    times = sorted(parse(u["updated_at"]) for u in users)
    started = datetime.fromtimestamp(server.state.started_at).astimezone()
    assert started - timedelta(hours=48, minutes=1) < times[0]
    assert times[-1] < started
    assert times[-1] - times[0] == timedelta(hours=48) - timedelta(minutes=12)
    assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(minutes=12)}
    assert [u["id"] for u in users] != [u["id"] for u in sorted(users, key=lambda u: u["updated_at"])]
    assert api.get("/users/17").json() == users[16]


def all_users(api: Api) -> list[dict[str, Any]]:
    return [user for number in (1, 2, 3) for user in api.users(per_page=100, page=number)["items"]]


def window(api: Api, since: datetime, hours: float = 1) -> dict[str, Any]:
    return api.users(
        updated_since=since.isoformat(), updated_before=(since + timedelta(hours=hours)).isoformat()
    )


def test_every_hour_window_holds_five_users(api: Api) -> None:
    origin = min(parse(u["updated_at"]) for u in all_users(api))
    seen: set[int] = set()
    for hour in range(48):
        aligned = window(api, origin + timedelta(hours=hour))
        assert aligned["total"] == 5
        seen |= {u["id"] for u in aligned["items"]}
        if hour < 47:
            assert window(api, origin + timedelta(hours=hour, minutes=7))["total"] == 5
    assert seen == set(range(1, 241))
    assert window(api, origin, hours=48)["total"] == 240


def test_updated_filters_since_inclusive_before_exclusive(api: Api) -> None:
    user = api.get("/users/100").json()
    at = parse(user["updated_at"])
    exact = user["updated_at"]
    inclusive = api.users(updated_since=exact, updated_before=(at + timedelta(minutes=1)).isoformat())
    assert [u["id"] for u in inclusive["items"]] == [100]
    assert (
        api.users(updated_since=(at - timedelta(minutes=1)).isoformat(), updated_before=exact)["total"] == 0
    )
    # the same instant with another offset and with "+00:00"
    in_berlin = at.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert in_berlin.endswith("+02:00")
    assert api.users(updated_since=in_berlin, updated_before=exact.replace("Z", "+00:00"))["total"] == 0
    assert api.users(updated_since=in_berlin)["total"] == api.users(updated_since=exact)["total"]
    # a "+" left unencoded in the query string arrives as a space; it still parses
    raw = api.session.get(f"{api.url}/users?updated_since={at.isoformat()}&per_page=1", timeout=5)
    assert raw.status_code == 200 and raw.json()["total"] == api.users(updated_since=exact)["total"]
    assert api.users(updated_since="2000-01-01T00:00:00Z")["total"] == 240
    assert api.users(updated_before="2000-01-01T00:00:00Z")["total"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"updated_since": "2024-01-01T00:00:00"}, "updated_since"),
        ({"updated_before": "yesterday"}, "updated_before"),
        ({"per_page": "101"}, "per_page"),
        ({"per_page": "0"}, "per_page"),
        ({"page": "0"}, "page"),
        ({"page": "two"}, "page"),
    ],
)
def test_invalid_user_queries_are_400(api: Api, params: dict[str, str], field: str) -> None:
    response = api.get("/users", **params)
    assert response.status_code == 400
    assert (response.json()["error"], response.json()["field"]) == ("invalid_query", field)


@pytest.mark.parametrize("user_id", ["0", "241", "abc", "-1", "1.5"])
def test_unknown_users_are_404(api: Api, user_id: str) -> None:
    for path in (f"/users/{user_id}", f"/users/{user_id}/posts", f"/analytics/users/{user_id}"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
    assert api.post(f"/admin/users/{user_id}/touch").status_code == 404


def test_posts_are_paginated_and_deterministic(api: Api) -> None:
    counts = {user_id: len(posts_of(user_id)) for user_id in range(1, 241)}
    assert set(counts.values()) == set(range(13))
    busy = next(user_id for user_id, count in counts.items() if count == 12)
    sizes, number, posts = [], 1, []
    while number is not None:
        data = api.get(f"/users/{busy}/posts", page=number, per_page=5).json()
        assert data["total"] == 12
        sizes.append(len(data["items"]))
        posts += data["items"]
        number = data["next_page"]
    assert sizes == [5, 5, 2]
    assert posts == posts_of(busy)
    assert all(p["user_id"] == busy for p in posts) and len({p["id"] for p in posts}) == 12
    quiet = next(user_id for user_id, count in counts.items() if count == 0)
    assert api.get(f"/users/{quiet}/posts").json() == {
        "items": [],
        "page": 1,
        "per_page": 50,
        "total": 0,
        "next_page": None,
    }


def test_analytics_are_deterministic(api: Api) -> None:
    data = api.get("/analytics/users/7").json()
    assert data == analytics_of(7)
    assert set(data) == {"user_id", "score", "segments"}
    assert data["user_id"] == 7 and isinstance(data["score"], float) and 0 <= data["score"] <= 100
    assert 1 <= len(data["segments"]) <= 3
    with DemoServer(port=0) as other, requests.Session() as session:
        assert session.get(f"{other.url}/analytics/users/7", timeout=5).json() == data
        assert session.get(f"{other.url}/users/7/posts", timeout=5).json() == api.get("/users/7/posts").json()
    assert api.get("/analytics/users/8").json() != data


def test_touch_moves_updated_at_to_now(api: Api, server: DemoServer) -> None:
    original = api.get("/users/42").json()
    before = datetime.now().astimezone()
    touched = api.post("/admin/users/42/touch")
    assert touched.status_code == 200
    assert touched.json()["id"] == 42
    at = parse(touched.json()["updated_at"])
    assert len(touched.json()["updated_at"]) == len(original["updated_at"])  # fixed width: sorts as text
    assert touched.json()["updated_at"] > original["updated_at"]
    assert before <= at <= datetime.now().astimezone()
    assert api.get("/users/42").json() == touched.json()
    recent = api.users(updated_since=before.isoformat())
    assert [u["id"] for u in recent["items"]] == [42]
    old_until = (parse(original["updated_at"]) + timedelta(minutes=1)).isoformat()
    assert api.users(updated_since=original["updated_at"], updated_before=old_until)["total"] == 0
    assert not any(path.startswith("/admin") for path in server.calls()["paths"])
    server.reset()
    assert api.get("/users/42").json() == original


# --- notifications and health ---------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_notifications_are_accepted(api: Api, channel: str) -> None:
    response = api.post(f"/notifications/{channel}", {"event": "order_shipped"}, key=f"n-{channel}")
    assert response.status_code == 202
    assert response.json() == {"notification_id": "ntf_000001", "channel": channel}
    replay = api.post(f"/notifications/{channel}", {"event": "order_shipped"}, key=f"n-{channel}")
    assert (replay.status_code, replay.json(), replay.headers["Idempotent-Replayed"]) == (
        202,
        response.json(),
        "true",
    )
    assert api.post(f"/notifications/{channel}", [1, "any json"]).json()["notification_id"] == "ntf_000002"
    sent = api.get("/admin/notifications", channel=channel).json()["notifications"]
    assert [(n["payload"], n["idempotency_key"]) for n in sent] == [
        ({"event": "order_shipped"}, f"n-{channel}"),
        ([1, "any json"], None),
    ]
    assert api.get("/admin/notifications", channel="other").json() == {"notifications": []}


def test_unknown_channel_is_404(api: Api) -> None:
    response = api.post("/notifications/fax", {"event": "x"})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_channel"
    assert api.get("/admin/notifications").json() == {"notifications": []}
    assert api.session.post(f"{api.url}/notifications/sms", data=b"{", timeout=5).status_code == 400


@pytest.mark.parametrize("service", SERVICES)
def test_health(api: Api, server: DemoServer, service: str) -> None:
    response = api.get(f"/{service}/health")
    assert (response.status_code, response.json()) == (200, {"service": service, "status": "ok"})
    assert server.calls()["paths"] == {f"/{service}/health": 1}


def test_admin_endpoints_are_not_recorded(api: Api, server: DemoServer) -> None:
    api.get("/admin/ledger")
    api.get("/admin/faults")
    api.post("/admin/faults", {"path": "/x"})
    api.session.delete(f"{api.url}/admin/faults", timeout=5)
    api.get("/admin/notifications")
    api.post("/admin/users/1/touch")
    assert server.calls()["total"] == 0


# --- faults ---------------------------------------------------------------------------------


def expected_failures(seed: int, rate: float, draws: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < rate for _ in range(draws)]


def test_error_rate_is_reproducible_and_fails_before_any_effect(api: Api, server: DemoServer) -> None:
    rule = api.fault(path="/payments", error_rate=0.3, seed=1)
    assert rule == {
        "path": "/payments",
        "error_rate": 0.3,
        "status": 503,
        "latency_ms": 0.0,
        "retry_after": None,
        "down": False,
        "seed": 1,
        "matched": 0,
        "injected": 0,
    }
    outcomes = [api.post("/payments/charges", {"order_id": f"o-{i}", "amount_cents": 10}) for i in range(40)]
    failed = [r.status_code == 503 for r in outcomes]
    assert failed == expected_failures(1, 0.3, 40)
    assert 0 < sum(failed) < 40
    assert {r.status_code for r in outcomes} == {201, 503}
    injected = next(r for r in outcomes if r.status_code == 503)
    assert injected.json()["error"] == "fault_injected" and injected.json()["rule"] == "/payments"
    assert "Retry-After" not in injected.headers
    charged = {e["order_id"] for e in api.ledger()["entries"]}
    assert charged == {f"o-{i}" for i, fail in enumerate(failed) if not fail}
    assert api.get("/admin/faults").json()["rules"] == [rule | {"matched": 40, "injected": sum(failed)}]
    assert server.calls()["paths"]["/payments/charges"] == 40  # injected failures are still calls

    api.fault(path="/payments", error_rate=0.3, seed=1)  # setting the rule again restarts its draws
    again = [api.get("/payments/health").status_code == 503 for _ in range(40)]
    assert again == failed


def test_injected_failure_is_not_kept_for_the_key(api: Api) -> None:
    api.fault(path="/payments/charges", error_rate=1.0)
    body = {"order_id": "o-1", "amount_cents": 10}
    assert api.post("/payments/charges", body, key="k").status_code == 503
    api.session.delete(f"{api.url}/admin/faults", timeout=5)
    retried = api.post("/payments/charges", body, key="k")
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert len(api.ledger()["entries"]) == 1


def test_down_answers_503_to_everything_under_the_prefix(api: Api) -> None:
    api.fault(path="/inventory", down=True, retry_after=2)
    for response in (
        api.get("/inventory/health"),
        api.post("/inventory/reservations", {"order_id": "o-1", "skus": ["A"]}),
        api.post("/inventory/releases", {"order_id": "o-1"}),
        api.get("/inventory/no-such-route"),
    ):
        assert response.status_code == 503
        assert response.json()["error"] == "service_down"
        assert response.headers["Retry-After"] == "2"
    assert api.get("/payments/health").status_code == 200
    assert api.ledger()["entries"] == []
    assert api.get("/admin/faults").json()["rules"][0]["injected"] == 4


def test_latency_applies_after_the_effect(api: Api) -> None:
    api.fault(path="/shipping", latency_ms=400)
    body = {"order_id": "o-1", "address": "1 Main St"}
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        api.post("/shipping/shipments", body, key="ship-1", timeout=0.15)
    assert time.monotonic() - started < 0.4
    # the client gave up, but the shipment happened: the effect is unknown to it, not undone
    entries = api.ledger()["entries"]
    assert [(e["type"], e["idempotency_key"]) for e in entries] == [("shipment", "ship-1")]
    started = time.monotonic()
    retry = api.post("/shipping/shipments", body, key="ship-1")
    assert time.monotonic() - started >= 0.4
    assert (retry.status_code, retry.headers["Idempotent-Replayed"]) == (201, "true")
    assert retry.json()["shipment_id"] == entries[0]["id"]
    assert len(api.ledger()["entries"]) == 1


@pytest.mark.parametrize(
    ("status", "retry_after", "header"),
    [
        (429, 7, "7"),
        (429, "Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
        (429, None, None),
        (500, 7, None),
    ],
)
def test_injected_status_and_retry_after(api: Api, status: int, retry_after: Any, header: str | None) -> None:
    api.fault(path="/users", error_rate=1.0, status=status, retry_after=retry_after)
    response = api.get("/users/1")
    assert response.status_code == status
    assert response.headers.get("Retry-After") == header


def test_most_specific_prefix_wins(api: Api) -> None:
    api.fault(path="/payments", down=True)
    api.fault(path="/payments/refunds", error_rate=0.0)
    api.fault(path="/payments/refunds/x", error_rate=1.0, status=500)
    assert api.post("/payments/charges", {"order_id": "o-1", "amount_cents": 5}).status_code == 503
    assert api.post("/payments/refunds", {"order_id": "o-1"}).status_code == 200  # nothing_to_refund
    assert api.get("/payments/refunds/x").status_code == 500
    rules = api.get("/admin/faults").json()["rules"]
    assert [(r["path"], r["matched"], r["injected"]) for r in rules] == [
        ("/payments", 1, 1),
        ("/payments/refunds", 1, 0),
        ("/payments/refunds/x", 1, 1),
    ]


def test_admin_paths_are_never_faulted(api: Api) -> None:
    api.fault(path="/", down=True)
    api.fault(path="/admin", down=True)
    assert api.get("/echo/x").status_code == 503
    assert api.get("/health").status_code == 503
    assert api.get("/admin/ledger").status_code == 200
    assert api.get("/admin/calls").status_code == 200
    assert api.post("/admin/users/1/touch").status_code == 200
    assert len(api.get("/admin/faults").json()["rules"]) == 2


def test_clearing_faults(api: Api) -> None:
    api.fault(path="/payments", down=True)
    api.fault(path="/shipping", down=True)
    response = api.session.delete(f"{api.url}/admin/faults", params={"path": "/payments"}, timeout=5)
    assert response.json() == {"cleared": 1}
    assert api.get("/payments/health").status_code == 200
    assert api.get("/shipping/health").status_code == 503
    assert api.session.delete(f"{api.url}/admin/faults", timeout=5).json() == {"cleared": 1}
    assert api.get("/shipping/health").status_code == 200
    assert api.get("/admin/faults").json() == {"rules": []}


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({}, "path"),
        ({"path": "payments"}, "path"),
        ({"path": "/p", "error_rate": 1.5}, "error_rate"),
        ({"path": "/p", "error_rate": "0.3"}, "error_rate"),
        ({"path": "/p", "status": 200}, "status"),
        ({"path": "/p", "status": 503.5}, "status"),
        ({"path": "/p", "latency_ms": -1}, "latency_ms"),
        ({"path": "/p", "retry_after": -1}, "retry_after"),
        ({"path": "/p", "down": "yes"}, "down"),
        ({"path": "/p", "seed": "one"}, "seed"),
        ({"path": "/p", "errorrate": 0.3}, "errorrate"),
    ],
)
def test_invalid_fault_rules_are_400(api: Api, rule: dict[str, Any], field: str) -> None:
    response = api.post("/admin/faults", rule)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert api.get("/admin/faults").json() == {"rules": []}


# --- reset ----------------------------------------------------------------------------------


def test_admin_reset_clears_everything(api: Api) -> None:
    original = api.get("/users/5").json()
    body = {"order_id": "o-1", "amount_cents": 10}
    api.post("/payments/charges", body, key="k")
    api.post("/notifications/email", {"n": 1})
    api.post("/admin/users/5/touch")
    api.fault(path="/shipping", down=True)

    assert api.post("/admin/reset").status_code == 200

    assert api.ledger() == {"entries": [], "orders": {}}
    assert api.get("/admin/faults").json() == {"rules": []}
    assert api.get("/admin/notifications").json() == {"notifications": []}
    assert api.get("/users/5").json() == original
    assert api.get("/shipping/health").status_code == 200
    again = api.post("/payments/charges", body, key="k")  # the key is forgotten: a new effect
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.json()["charge_id"] == "ch_000001"  # ids restart too
    assert len(api.ledger()["entries"]) == 1
