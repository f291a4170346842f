"""The status API and page: real state backends (SQLite and Redis), real calls through the demo API,
the FastAPI app served by a real uvicorn in a thread, authenticated by Airflow's own auth manager
(SimpleAuthManager; JWTs it signs, checked by Airflow's ``get_user``).

The same app mounted in a real api-server, with the Airflow UI and a headless browser, is in
``e2e/test_status_ui.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from status_helpers import PAYMENTS_BREAKER, call, make_state

from api_orchestration import BreakerPolicy, RateLimit
from api_orchestration.state import backend_for_url
from api_orchestration.status import collect_status
from api_orchestration.status.views import iso


def test_status_shows_breakers_limiters_and_pauses(backend, demo):
    make_state(backend, demo)
    status = collect_status(backend)
    breakers = {b["key"]: b for b in status["breakers"]}
    limiters = {row["key"]: row for row in status["limiters"]}

    payments = breakers["payments"]
    raw = backend.breaker_status("payments")
    assert payments["state"] == "open" and payments["next_half_open_at"] == iso(raw.opened_until)
    assert 290 < payments["next_half_open_in_seconds"] <= 300 and not payments["half_open_due"]
    assert payments["calls_in_window"] == 0  # the window restarts when it opens

    users = breakers["users"]
    assert (users["state"], users["calls_in_window"], users["failure_rate"]) == ("closed", 1, 0.0)
    assert users["next_half_open_at"] is None

    pay = limiters["payments"]  # 4 granted back to back (burst), all in the current period
    assert (pay["permits"], pay["burst"], pay["granted_total"], pay["permits_used"]) == (100, 100, 4, 4)
    assert pay["next_free_in_seconds"] == 0 and not pay["paused"]
    slow = limiters["slow"]  # 1 per minute, just used: the next permit is about a minute away
    assert (slow["permits_used"], slow["permits"]) == (1, 1)
    assert 55 < slow["next_free_in_seconds"] <= 61.2
    partner = limiters["partner"]  # no limit, but a 429 paused the key for every caller
    assert partner["paused"] and partner["last_retry_after_seconds"] == 30 and partner["permits"] is None
    assert 25 < partner["next_free_in_seconds"] <= 30


def test_status_shows_each_window_of_a_key(backend):
    from api_orchestration.policy import rate_limits
    from api_orchestration.state import AdmissionRequest

    windows = rate_limits([RateLimit(3, 60.0, burst=3), RateLimit(2, 1.0, burst=2)])
    batch = backend.admit_many(
        3, AdmissionRequest.of("gh", windows, max_wait=5.0)
    )  # two now, one a second later
    assert [round(a.wait) for a in batch.granted] == [0, 0, 1]
    (row,) = collect_status(backend)["limiters"]  # one row per key, its windows inside
    assert row["key"] == "gh" and row["granted_total"] == 3
    assert [(w["permits"], w["window_seconds"], w["burst"]) for w in row["windows"]] == [
        (2, 1.02, 2),
        (3, 61.2, 3),
    ]
    assert row["windows"][1]["next_free_in_seconds"] > 60  # the minute's three are spent
    assert (
        row["next_free_in_seconds"] == row["windows"][1]["next_free_in_seconds"]
    )  # the latest window decides


def test_snapshot_does_not_move_a_breaker(backend):
    policy = BreakerPolicy(min_calls=1, window_size=1, open_seconds=0.2)
    permit = backend.breaker_acquire("k", policy, 60)
    backend.breaker_record("k", policy, permit, True)
    time.sleep(0.3)
    row = collect_status(backend)["breakers"][0]
    assert (row["state"], row["half_open_due"], row["next_half_open_in_seconds"]) == ("open", True, 0)
    assert backend.breaker_status("k").state == "open"  # reading did not half-open it


def test_saga_outcomes_are_capped_newest_first(backend):
    for i in range(5):
        backend.saga_record(
            {"dag_id": "d", "run_id": f"r{i}", "outcome": "rolled_back", "at": time.time()}, keep=3
        )
    assert [s["run_id"] for s in backend.saga_recent(10)] == ["r4", "r3", "r2"]
    assert [s["run_id"] for s in collect_status(backend, sagas=2)["sagas"]] == ["r4", "r3"]


# -- over HTTP ----------------------------------------------------------------------------------
def test_sync_streams_keep_their_last_run(backend):
    backend.stream_record("issues", {"key": "issues", "at": 1_767_225_600.0, "rows": 5, "cursor": "a"})
    backend.stream_record("issues", {"key": "issues", "at": 1_767_229_200.0, "rows": 7, "cursor": "b"})
    backend.stream_record("charges[eu]", {"key": "charges[eu]", "at": 1_767_225_600.0, "rows": 1})
    streams = collect_status(backend, sagas=0)["streams"]
    assert [(s["key"], s["rows"]) for s in streams] == [("charges[eu]", 1), ("issues", 7)]
    assert streams[1]["at"] == iso(1_767_229_200.0) and streams[1]["cursor"] == "b"
    backend.clear()
    assert collect_status(backend, sagas=0)["streams"] == []


@pytest.fixture(scope="module")
def auth(airflow_db):
    """Airflow's auth manager (SimpleAuthManager) in this process, and tokens it signed."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    os.environ.setdefault(
        "AIRFLOW__API_AUTH__JWT_SECRET", "status-tests-" + "s" * 64
    )  # else a short random one
    manager = init_auth_manager()

    def token(role: str, name: str | None = None) -> str:
        return manager.generate_jwt(SimpleAuthManagerUser(username=name or role, role=role))

    return token


@contextlib.contextmanager
def serve(backend) -> Iterator[str]:
    """The status app on a real uvicorn server in a thread, over ``backend``."""
    import uvicorn

    from api_orchestration.status.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(backend, auth) -> Iterator[str]:
    with serve(backend) as url:
        yield url


def test_api_needs_airflow_credentials_and_reset_needs_op(backend, demo, server, auth):
    make_state(backend, demo)
    admin, viewer = (
        {"Authorization": f"Bearer {auth('admin')}"},
        {"Authorization": f"Bearer {auth('viewer')}"},
    )
    reset = f"{server}/api/breakers/payments/reset"

    assert requests.get(f"{server}/api/status", timeout=10).status_code == 401
    assert (
        requests.get(
            f"{server}/api/status", headers={"Authorization": "Bearer forged"}, timeout=10
        ).status_code
        == 403
    )
    assert requests.post(reset, timeout=10).status_code == 401
    assert requests.post(reset, headers=viewer, timeout=10).status_code == 403  # viewers read, ops reset
    assert backend.breaker_status("payments").state == "open"

    body = requests.get(f"{server}/api/status", headers=viewer, timeout=10).json()
    assert {b["key"]: b["state"] for b in body["breakers"]} == {"payments": "open", "users": "closed"}
    one = requests.get(f"{server}/api/breakers/payments", headers=viewer, timeout=10).json()
    assert one["next_half_open_at"] == iso(backend.breaker_status("payments").opened_until)
    limiter = requests.get(f"{server}/api/limiters/slow", headers=viewer, timeout=10).json()
    assert limiter["permits_used"] == 1 and limiter["next_free_in_seconds"] > 50
    assert requests.get(f"{server}/api/breakers/nope", headers=viewer, timeout=10).status_code == 404
    assert requests.post(f"{server}/api/breakers/nope/reset", headers=admin, timeout=10).status_code == 404

    cookie = {"_token": auth("op", "oscar")}  # the UI's session cookie: writes must be same-origin
    assert requests.post(reset, cookies=cookie, timeout=10).status_code == 403
    assert (
        requests.post(
            reset, cookies=cookie, headers={"Origin": "http://evil.example"}, timeout=10
        ).status_code
        == 403
    )
    done = requests.post(reset, cookies=cookie, headers={"Origin": server}, timeout=10)
    assert done.status_code == 200 and done.json()["by"] == "oscar"
    assert done.json()["breaker"]["state"] == "closed"
    assert backend.breaker_status("payments").state == "closed"
    requests.delete(f"{demo.url}/admin/faults", timeout=5)
    assert (
        call(backend, "payments", f"{demo.url}/payments/health", breaker=PAYMENTS_BREAKER).status_code == 200
    )


def _form_tokens(html: str) -> tuple[str, dict[str, str]]:
    """The page's Refresh token and its reset tokens by breaker key."""
    refresh = re.search(r'action="[^"]*/">\s*<input type="hidden" name="token" value="([^"]+)"', html).group(
        1
    )
    resets = dict(
        re.findall(
            r'action="[^"]*/breakers/([^"/]+)/reset">\s*<input type="hidden" name="token" value="([^"]+)"',
            html,
        )
    )
    return refresh, resets


def test_page_redirects_to_login_and_its_forms_carry_a_token(backend, demo, server, auth):
    make_state(backend, demo)
    anonymous = requests.get(f"{server}/", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/auth/login?next=%2Fapi-orchestration%2F"

    page = requests.get(f"{server}/", cookies={"_token": auth("admin")}, timeout=10)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    html = page.text
    assert re.search(r'<tr data-breaker="payments" data-state="open">', html)
    opened_until = iso(backend.breaker_status("payments").opened_until)
    assert f'data-next-half-open="{opened_until}"' in html
    assert re.search(r'<tr data-limiter="slow">.*?data-used="1">1 / 1<', html, re.S)
    assert re.search(r'<tr data-limiter="partner">.*?<b>paused</b> until', html, re.S)
    refresh, resets = _form_tokens(html)
    assert set(resets) == {"payments", "users"}

    viewer_page = requests.get(
        f"{server}/", headers={"Authorization": f"Bearer {auth('viewer')}"}, timeout=10
    )
    assert "(read only)" in viewer_page.text and "data-reset=" not in viewer_page.text

    form = f"{server}/breakers/payments/reset"
    assert (
        requests.post(form, cookies={"_token": auth("admin")}, timeout=10).status_code == 401
    )  # no form token
    after = requests.post(form, data={"token": resets["payments"]}, timeout=10)  # what the iframe sends
    assert after.status_code == 200 and "Breaker &#39;payments&#39; reset to closed by admin." in after.text
    assert '<tr data-breaker="payments" data-state="closed">' in after.text
    assert backend.breaker_status("payments").state == "closed"
    refreshed = requests.post(f"{server}/", data={"token": refresh}, timeout=10)
    assert refreshed.status_code == 200 and 'data-breaker="users"' in refreshed.text


def test_form_tokens_can_only_do_what_they_were_minted_for(backend, demo, server, auth):
    """A reset form token resets its own breaker and nothing else: not another breaker, not the
    JSON API, not Airflow's API; it expires; a forged or altered one is refused."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import resolve_user_from_token
    from fastapi import HTTPException

    from api_orchestration.status import form_token
    from api_orchestration.status.form_token import FormAction

    make_state(backend, demo)
    refresh, resets = _form_tokens(
        requests.get(f"{server}/", cookies={"_token": auth("admin")}, timeout=10).text
    )
    payments = resets["payments"]

    def reset(key: str, token: str) -> int:
        return requests.post(f"{server}/breakers/{key}/reset", data={"token": token}, timeout=10).status_code

    assert reset("users", payments) == 403  # bound to the breaker it was minted for
    assert reset("payments", refresh) == 403  # a Refresh token cannot reset
    tampered = payments.replace(payments.split(":")[1], payments.split(":")[1][:-2] + "xx")
    assert reset("payments", tampered) == 403
    forged = form_token.mint(
        SimpleAuthManagerUser(username="admin", role="admin"), FormAction.RESET, "payments"
    )
    forged = f"{forged.rsplit(':', 1)[0]}:{'A' * 43}"
    assert reset("payments", forged) == 403
    expired = form_token.mint(
        SimpleAuthManagerUser(username="admin", role="admin"), FormAction.RESET, "payments", seconds=-1
    )
    assert reset("payments", expired) == 401
    viewer_token = form_token.mint(
        SimpleAuthManagerUser(username="vic", role="viewer"), FormAction.RESET, "payments"
    )
    assert reset("payments", viewer_token) == 403  # permissions are checked again on use
    assert backend.breaker_status("payments").state == "open"

    # not an API credential: neither the status JSON API nor Airflow's own auth accept it
    bearer = {"Authorization": f"Bearer {payments}"}
    assert requests.get(f"{server}/api/status", headers=bearer, timeout=10).status_code == 403
    assert (
        requests.post(f"{server}/api/breakers/payments/reset", headers=bearer, timeout=10).status_code == 403
    )
    with pytest.raises(HTTPException) as refused:
        import asyncio

        asyncio.run(resolve_user_from_token(payments))
    assert refused.value.status_code == 403
    assert backend.breaker_status("payments").state == "open"

    assert reset("payments", payments) == 200
    assert backend.breaker_status("payments").state == "closed"


def test_redis_snapshot_reads_only_its_own_prefix(redis_available):
    from conftest import unique_redis_url

    mine, other = (
        backend_for_url(unique_redis_url(redis_available)),
        backend_for_url(unique_redis_url(redis_available)),
    )
    try:
        other.limiter_acquire("theirs", RateLimit(5), 10)
        mine.limiter_acquire("we*[x]", RateLimit(5), 10)  # glob characters in the key are literal
        assert list(mine.snapshot().limiters) == ["we*[x]"]
    finally:
        for b in (mine, other):
            b.clear()
            b.close()


def test_cache_entries_show_on_the_api_and_the_page(backend, demo, server, auth):
    from api_orchestration import Guard, ResilientCaller
    from api_orchestration.policy import CachePolicy

    g = Guard(backend=backend, limit_key="reference", cache=CachePolicy(ttl=60))
    caller = ResilientCaller(requests.Session(), g, timeout=5)
    for name in ("countries", "currencies", "rates"):  # rates is no-store: not cached
        caller.call("GET", f"{demo.url}/reference/{name}")
    viewer = {"Authorization": f"Bearer {auth('viewer')}"}
    [row] = requests.get(f"{server}/api/caches", headers=viewer, timeout=10).json()
    assert (row["key"], row["entries"]) == ("reference", 2) and row["bytes"] > 200
    assert requests.get(f"{server}/api/status", headers=viewer, timeout=10).json()["caches"] == [row]
    assert requests.get(f"{server}/api/caches", timeout=10).status_code == 401
    html = requests.get(f"{server}/", headers=viewer, timeout=10).text
    assert (
        f'<tr data-cache="reference"><td><b>reference</b></td><td class="num">2</td><td class="num">{row["bytes"]}</td>'
        in html
    )


def test_a_redis_password_never_shows_on_the_page_or_the_api(auth, tmp_path):
    """A store behind ``requirepass``, its password in the URL both ways (user info and
    ``?password=``): the page and the JSON API show the URL with the password redacted."""
    from conftest import own_redis_server

    password = f"pw-{os.urandom(6).hex()}"
    with own_redis_server(tmp_path, password=password) as (url, _):
        host = url.removeprefix("redis://")
        for raw in (f"redis://:{password}@{host}?prefix=s:", f"redis://{host}?password={password}&prefix=s:"):
            backend = backend_for_url(raw)
            backend.breaker_reset("payments")  # the store answers only with the password
            try:
                with serve(backend) as server:
                    page = requests.get(f"{server}/", cookies={"_token": auth("admin")}, timeout=10)
                    api = requests.get(
                        f"{server}/api/status",
                        headers={"Authorization": f"Bearer {auth('viewer')}"},
                        timeout=10,
                    )
            finally:
                backend.close()
            assert page.status_code == api.status_code == 200
            assert password not in page.text and password not in api.text
            shown = api.json()["state_url"]
            assert shown.startswith(f"redis://{host}") and "prefix=s:" in shown, shown
            assert f"<code>{shown}</code>" in page.text.replace("&amp;", "&")
