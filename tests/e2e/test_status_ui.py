"""The status plugin in a real Airflow: the api-server mounts it, Airflow's auth guards it, the
worker's saga outcome and metrics reach it, and a headless Chromium shows it, on its own and inside
the Airflow UI (the nav entry's page).

The browser authenticates like a user who logged in: the ``_token`` cookie that Airflow's login page
sets, holding a JWT from ``POST /auth/token``. Screenshots: ``tests/artifacts/ui-status.png``,
``tests/artifacts/ui-status-in-airflow.png`` and ``tests/artifacts/ui-status-after-reset.png``.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import REPO, service_missing
from devtools.airflow_env import PASSWORDS_FILE_NAME
from devtools.cluster import AirflowRestClient, LocalAirflow, free_port
from status_helpers import PAYMENTS_BREAKER, call, open_payments_breaker

from api_orchestration import DeferralNeeded, RetryPolicy
from api_orchestration.state import backend_for_url
from api_orchestration.status.views import iso

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "tests" / "artifacts"
VIEWER, VIEWER_PASSWORD = "vera", "vera-pw"


class StatsdListener:
    """A UDP socket collecting StatsD lines in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.lines += self.sock.recv(65535).decode().splitlines()
            except TimeoutError:
                continue

    def count(self, name: str) -> int:
        return sum(
            int(line.split(":")[1].split("|")[0]) for line in self.lines if line.startswith(f"{name}:")
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, demo_server, statsd) -> Iterator[LocalAirflow]:
    """Airflow with the repo's plugins folder, the order_saga DAG, a viewer user, StatsD on."""
    base = tmp_path_factory.mktemp("status_ui")
    dags = base / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "order_saga.py", dags)
    home = base / "home"
    home.mkdir()
    (home / PASSWORDS_FILE_NAME).write_text(json.dumps({"admin": "admin", VIEWER: VIEWER_PASSWORD}))
    extra = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{VIEWER}:viewer",
        "AIRFLOW_CONN_DEMO_API": json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": demo_server.port}
        ),
        "AIRFLOW__API_ORCHESTRATION__STATE_URL": f"sqlite:///{base}/state.db",
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
    }
    cluster = LocalAirflow(home, free_port(), extra_env=extra)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def store(airflow):
    """The cluster's state backend, opened by this process too (the same SQLite file)."""
    backend = backend_for_url(airflow.env["AIRFLOW__API_ORCHESTRATION__STATE_URL"])
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def saga_run(airflow, demo_server, store) -> str:
    """An order_saga run that rolls back (out of stock): the worker records it for the page.

    The store is cleared first: the earlier tests' calls took permits on the "payments" limiter key
    under a one-hour policy, which order_saga's 50/s policy on that key would wait out (minutes)."""
    demo_server.reset()
    store.clear()
    client = airflow.client()
    client.wait_for_dag("order_saga", timeout=120)
    client.unpause("order_saga")
    run_id = client.trigger("order_saga", conf={"order_id": "o-status", "skus": ["OUT-OF-STOCK"]})
    assert client.wait_for_run("order_saga", run_id, timeout=300) == "failed"
    return run_id


def _browser():
    from chromium import Chromium, chromium_path

    if chromium_path() is None:
        service_missing("chromium (headless browser)", "not installed; `make browser` installs it")
    return Chromium()


def test_plugin_is_loaded_listed_and_in_the_nav(airflow):
    client = airflow.client()
    plugins = client._json("GET", "/api/v2/plugins")["plugins"]
    mine = next(p for p in plugins if p["name"] == "api_orchestration")
    assert [a["url_prefix"] for a in mine["fastapi_apps"]] == ["/api-orchestration"]
    (view,) = mine["external_views"]
    assert (view["href"], view["destination"], view["url_route"], view["category"]) == (
        "/api-orchestration/", "nav", "api-orchestration", "browse",
    )  # fmt: skip
    assert client._json("GET", "/api/v2/plugins/importErrors")["total_entries"] == 0


def test_reset_is_refused_without_airflow_auth_and_works_with_it(airflow, demo_server, store):
    demo_server.reset()
    store.breaker_reset("payments")
    open_payments_breaker(store, demo_server)
    base = f"{airflow.base_url}/api-orchestration"
    reset = f"{base}/api/breakers/payments/reset"
    viewer = AirflowRestClient(airflow.base_url, VIEWER, VIEWER_PASSWORD)
    admin = airflow.client()

    assert requests.get(f"{base}/api/status", timeout=10).status_code == 401
    assert requests.post(reset, timeout=10).status_code == 401
    assert requests.post(reset, headers={"Authorization": "Bearer not-a-jwt"}, timeout=10).status_code == 403
    assert viewer.request("POST", "/api-orchestration/api/breakers/payments/reset").status_code == 403
    assert store.breaker_status("payments").state == "open"

    seen = viewer.request("GET", "/api-orchestration/api/breakers/payments").json()  # viewers may read
    assert seen["state"] == "open" and seen["next_half_open_at"] == iso(
        store.breaker_status("payments").opened_until
    )

    done = admin.request("POST", "/api-orchestration/api/breakers/payments/reset")
    assert (
        done.status_code == 200
        and done.json()["by"] == "admin"
        and done.json()["breaker"]["state"] == "closed"
    )
    assert store.breaker_status("payments").state == "closed"
    demo_server.reset()  # payments up again: the next call goes through
    assert (
        call(store, "payments", f"{demo_server.url}/payments/health", breaker=PAYMENTS_BREAKER).status_code
        == 200
    )


def test_the_worker_records_the_saga_outcome_and_sends_metrics(airflow, saga_run, statsd):
    sagas = airflow.client()._json("GET", "/api-orchestration/api/sagas")
    mine = next(s for s in sagas if s["run_id"] == saga_run)
    assert (mine["dag_id"], mine["outcome"]) == ("order_saga", "rolled_back")
    assert (mine["failed_steps"], mine["not_run"], mine["undone"], mine["not_undone"]) == (
        ["reserve_inventory"],
        ["create_shipment"],
        ["charge_payment"],
        [],
    )
    assert "409" in mine["cause"]

    deadline = time.monotonic() + 10  # UDP: give the last datagrams a moment
    while (
        statsd.count("airflow.api_orchestration.saga.rolled_back.order_saga") < 1
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert statsd.count("airflow.api_orchestration.saga.rolled_back.order_saga") == 1
    assert statsd.count("airflow.api_orchestration.compensation.ok.charge_payment") == 1
    assert any(
        line.startswith("airflow.api_orchestration.compensation.duration.charge_payment:")
        for line in statsd.lines
    )
    assert statsd.count("airflow.api_orchestration.call.ok.payments") == 2  # the charge and the refund
    assert statsd.count("airflow.api_orchestration.call.failed.inventory") == 1  # 409, not retried


def test_status_page_in_a_headless_browser(airflow, demo_server, store, saga_run):
    demo_server.reset()
    store.breaker_reset("payments")
    open_payments_breaker(store, demo_server)  # payments down, calls until the breaker refuses
    with pytest.raises(DeferralNeeded):  # a 429 with Retry-After 45 s pauses "partner" for everyone
        call(
            store, "partner", f"{demo_server.url}/ratelimited/ui?times=1&retry_after=45", retry=RetryPolicy(2)
        )
    api = airflow.client()._json("GET", "/api-orchestration/api/status")
    payments = next(b for b in api["breakers"] if b["key"] == "payments")
    assert payments["state"] == "open"
    token = airflow.client().token()

    browser = _browser()
    try:
        browser.open(f"{airflow.base_url}/api-orchestration/")  # no session yet: Airflow's login page
        assert "/auth/login" in browser.url()

        browser.set_cookie(airflow.base_url, "_token", token)  # what Airflow's login page stores
        browser.open(f"{airflow.base_url}/api-orchestration/")
        shot = browser.screenshot(ARTIFACTS / "ui-status.png")
        print(f"\nscreenshot: {shot}")
        row = browser.evaluate(
            """(() => { const r = document.querySelector('tr[data-breaker="payments"]');
                 return {state: r.dataset.state, next: r.querySelector('[data-next-half-open]').dataset.nextHalfOpen,
                         text: r.innerText}; })()"""
        )
        assert row["state"] == "open" and row["next"] == payments["next_half_open_at"]
        assert payments["next_half_open_at"] in row["text"] and "open" in row["text"]
        limiter = browser.evaluate("document.querySelector('tr[data-limiter=\"payments\"]').innerText")
        assert "100 per" in limiter and "/ 100" in limiter
        paused = browser.evaluate("document.querySelector('tr[data-limiter=\"partner\"]').innerText")
        assert "paused until" in paused
        saga = browser.evaluate(
            f"document.querySelector('tr[data-saga=\"order_saga/{saga_run}\"]').innerText"
        )
        assert "rolled back" in saga and "charge_payment" in saga and "reserve_inventory" in saga
        assert "signed in as admin" in browser.evaluate("document.body.innerText")

        # the nav entry's page: the Airflow UI with the status page in its frame
        browser.open(f"{airflow.base_url}/plugin/api-orchestration", settle=4)
        browser.screenshot(ARTIFACTS / "ui-status-in-airflow.png")
        frames = browser.call("Page.getFrameTree", session=True)["frameTree"].get("childFrames", [])
        assert [f["frame"]["url"] for f in frames] == [f"{airflow.base_url}/api-orchestration/"]

        # reset from the page (a form posting the page's short-lived token, as inside the frame)
        browser.open(f"{airflow.base_url}/api-orchestration/")
        browser.click_and_wait('[data-reset="payments"]')
        browser.screenshot(ARTIFACTS / "ui-status-after-reset.png")
        assert browser.evaluate("document.getElementById('message').innerText") == (
            "Breaker 'payments' reset to closed by admin."
        )
        assert (
            browser.evaluate("document.querySelector('tr[data-breaker=\"payments\"]').dataset.state")
            == "closed"
        )
        assert store.breaker_status("payments").state == "closed"
    finally:
        browser.close()
    assert Path(ARTIFACTS / "ui-status.png").stat().st_size > 10_000
