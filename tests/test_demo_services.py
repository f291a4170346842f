"""The demo API over real HTTP: every endpoint, the call log, keep-alive and the CLI."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import pytest
import requests

from demo_services import DemoServer
from demo_services.endpoints import MAX_DELAY, ROUTES, parse_delay
from demo_services.routing import ApiError, Request, Response, Route, Router
from demo_services.state import DemoState

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
INCLUDE_DIR = Path(__file__).resolve().parents[1] / "include"


@pytest.fixture(scope="module")
def server() -> Iterator[DemoServer]:
    with DemoServer(port=0) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean(server: DemoServer) -> None:
    server.reset()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def calls(session: requests.Session, server: DemoServer, **params: str) -> dict:
    response = session.get(f"{server.url}/admin/calls", params=params, timeout=5)
    assert response.status_code == 200
    return response.json()


# --- server lifecycle -----------------------------------------------------------------------


def test_port_zero_binds_a_free_port_and_stop_closes_connections() -> None:
    srv = DemoServer(port=0)
    assert srv.port == 0
    with srv, requests.Session() as session:
        assert srv.port > 0
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        assert session.get(f"{srv.url}/health", timeout=5).json() == {"status": "ok"}
        with pytest.raises(RuntimeError):
            srv.start()
    with requests.Session() as session, pytest.raises(requests.ConnectionError):
        session.get(f"{srv.url}/health", timeout=5)
    srv.stop()  # idempotent


def test_stop_drops_idle_keep_alive_connection() -> None:
    srv = DemoServer(port=0).start()
    url = srv.url
    with requests.Session() as session:
        assert session.get(f"{url}/echo/x", timeout=5).status_code == 200
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(requests.ConnectionError):
            session.get(f"{url}/echo/x", timeout=5)


def test_keep_alive_reuses_one_connection(server: DemoServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/echo/first")
        assert conn.getresponse().read()
        sock = conn.sock
        assert sock is not None
        for method, path, body in [
            ("POST", "/echo/json", b'{"a": 1}'),
            ("PUT", "/echo/raw", b"x" * 100_000),
            ("GET", "/status/204", None),
            ("HEAD", "/echo/head", None),
            ("GET", "/nope", None),
            ("GET", "/status/500", None),
            ("GET", "/admin/calls", None),
        ]:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            response.read()
            assert not response.will_close
            assert conn.sock is sock, f"{method} {path} reconnected"
    finally:
        conn.close()


def test_extra_routes_extend_the_table(session: requests.Session) -> None:
    def pay(request: Request, state: DemoState) -> Response:
        return Response(201, {"payment": request.params["id"], "amount": request.int_query("amount", 0)})

    router = Router(ROUTES)
    router.add(Route("/payments/<id>", pay, frozenset({"POST"})))
    with DemoServer(port=0, router=router) as srv:
        response = session.post(f"{srv.url}/payments/p%201?amount=5", timeout=5)
        assert (response.status_code, response.json()) == (201, {"payment": "p 1", "amount": 5})
        assert session.get(f"{srv.url}/payments/p1", timeout=5).status_code == 405
        assert session.get(f"{srv.url}/echo/still-there", timeout=5).status_code == 200
        assert srv.calls()["paths"] == {"/payments/p%201": 1, "/payments/p1": 1, "/echo/still-there": 1}


def test_protocol_errors_are_json(server: DemoServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo/x HTTP/1.1\r\nHost: demo\r\nContent-Length: many\r\n\r\n")
        reply = sock.makefile("rb").read()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in head
    assert b"Connection: close" in head
    assert "error" in json.loads(body)


def test_verbose_logs_requests(capfd: pytest.CaptureFixture[str], session: requests.Session) -> None:
    with DemoServer(port=0, verbose=True) as srv:
        session.get(f"{srv.url}/echo/loud", timeout=5)
    assert '"GET /echo/loud HTTP/1.1" 200' in capfd.readouterr().err


# --- /echo ----------------------------------------------------------------------------------


def test_echo_get(server: DemoServer, session: requests.Session) -> None:
    response = session.get(
        f"{server.url}/echo/a/b?x=1&x=2&empty=",
        headers={"X-Custom": "Value", "Idempotency-Key": "key-1"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    data = response.json()
    assert data["method"] == "GET"
    assert data["path"] == "/echo/a/b"
    assert data["query"] == {"x": "2", "empty": ""}
    assert data["headers"]["x-custom"] == "Value"
    assert data["headers"]["idempotency-key"] == "key-1"
    assert data["json"] is None
    assert data["body"] is None
    assert data["idempotency_key"] == "key-1"


def test_echo_json_body(server: DemoServer, session: requests.Session) -> None:
    data = session.post(f"{server.url}/echo/orders", json={"id": 7, "items": [1, 2]}, timeout=5).json()
    assert data["method"] == "POST"
    assert data["json"] == {"id": 7, "items": [1, 2]}
    assert data["body"] is None
    assert data["idempotency_key"] is None


def test_echo_raw_body(server: DemoServer, session: requests.Session) -> None:
    data = session.put(f"{server.url}/echo/raw", data="not json", timeout=5).json()
    assert (data["method"], data["json"], data["body"]) == ("PUT", None, "not json")


def test_echo_chunked_body(server: DemoServer, session: requests.Session) -> None:
    chunks = (part.encode() for part in ["hello ", "chunked ", "world"])
    data = session.post(f"{server.url}/echo/chunked", data=chunks, timeout=5).json()
    assert data["headers"]["transfer-encoding"] == "chunked"
    assert data["body"] == "hello chunked world"
    assert session.get(f"{server.url}/echo/after", timeout=5).status_code == 200


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
def test_echo_any_method(server: DemoServer, session: requests.Session, method: str) -> None:
    response = session.request(method, f"{server.url}/echo/m", timeout=5)
    assert response.status_code == 200
    assert response.json()["method"] == method


def test_echo_head_has_length_but_no_body(server: DemoServer, session: requests.Session) -> None:
    response = session.head(f"{server.url}/echo/h", timeout=5)
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["Content-Length"]) > 0
    assert session.get(f"{server.url}/echo/after", timeout=5).status_code == 200


# --- /status --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 400, 404, 409, 429, 500, 502, 503])
def test_status(server: DemoServer, session: requests.Session, code: int) -> None:
    response = session.post(f"{server.url}/status/{code}", timeout=5)
    assert response.status_code == code
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == code
    if code < 400:
        assert body == {"status": code}
    else:  # an error explains itself
        assert body["error"] == HTTPStatus(code).phrase
        assert body["detail"] == f"the demo API answered {code} because /status/{code} was requested"
    assert response.headers["X-Request-Id"].startswith("req_")
    assert "Retry-After" not in response.headers


@pytest.mark.parametrize(
    ("code", "retry_after", "expected"),
    [(429, "5", "5"), (503, "1.5", "1.5"), (503, HTTP_DATE, HTTP_DATE), (500, "5", None)],
)
def test_status_retry_after(
    server: DemoServer, session: requests.Session, code: int, retry_after: str, expected: str | None
) -> None:
    response = session.get(f"{server.url}/status/{code}", params={"retry_after": retry_after}, timeout=5)
    assert response.status_code == code
    assert response.headers.get("Retry-After") == expected


@pytest.mark.parametrize("code", [204, 304])
def test_status_without_body_keeps_connection_usable(
    server: DemoServer, session: requests.Session, code: int
) -> None:
    response = session.get(f"{server.url}/status/{code}", timeout=5)
    assert response.status_code == code
    assert response.content == b""
    assert session.get(f"{server.url}/echo/after", timeout=5).json()["path"] == "/echo/after"


@pytest.mark.parametrize("code", ["abc", "99", "600"])
def test_status_rejects_invalid_codes(server: DemoServer, session: requests.Session, code: str) -> None:
    response = session.get(f"{server.url}/status/{code}", timeout=5)
    assert response.status_code == 400
    assert "error" in response.json()


# --- /delay ---------------------------------------------------------------------------------


def test_delay_sleeps(server: DemoServer, session: requests.Session) -> None:
    started = time.monotonic()
    response = session.get(f"{server.url}/delay/0.2", timeout=5)
    assert time.monotonic() - started >= 0.2
    assert response.json() == {"delayed": 0.2}


def test_delay_clamps_and_validates(server: DemoServer, session: requests.Session) -> None:
    assert session.get(f"{server.url}/delay/-1", timeout=5).json() == {"delayed": 0.0}
    assert session.get(f"{server.url}/delay/soon", timeout=5).status_code == 400
    assert session.get(f"{server.url}/delay/nan", timeout=5).status_code == 400
    assert parse_delay("1e9") == MAX_DELAY == 30.0
    with pytest.raises(ApiError):
        parse_delay("inf")


# --- /flaky ---------------------------------------------------------------------------------


def test_flaky_fails_first_calls_per_key(server: DemoServer, session: requests.Session) -> None:
    url = f"{server.url}/flaky/a"
    assert [session.get(url, params={"fail": 2}, timeout=5).status_code for _ in range(2)] == [503, 503]
    assert session.get(f"{server.url}/flaky/b", params={"fail": 2}, timeout=5).status_code == 503
    response = session.get(url, params={"fail": 2}, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"key": "a", "call": 3}
    assert session.get(url, params={"fail": 2}, timeout=5).json() == {"key": "a", "call": 4}


def test_flaky_custom_status_and_retry_after(server: DemoServer, session: requests.Session) -> None:
    url = f"{server.url}/flaky/custom"
    response = session.get(url, params={"fail": 1, "status": 429, "retry_after": "2"}, timeout=5)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json() == {"error": "flaky failure", "key": "custom", "call": 1}
    assert session.get(url, params={"fail": 1, "status": 429}, timeout=5).status_code == 200
    assert session.get(f"{server.url}/flaky/x", params={"status": 500}, timeout=5).status_code == 500
    assert session.get(f"{server.url}/flaky/y", params={"fail": "many"}, timeout=5).status_code == 400
    assert session.get(f"{server.url}/flaky/z", params={"status": 42}, timeout=5).status_code == 400


def test_flaky_status_zero_drops_connection(server: DemoServer, session: requests.Session) -> None:
    url = f"{server.url}/flaky/drop"
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            session.post(url, params={"fail": 2, "status": 0}, json={"n": 1}, timeout=5)
    assert session.post(url, params={"fail": 2, "status": 0}, timeout=5).json() == {"key": "drop", "call": 3}
    assert calls(session, server, path="/flaky/drop")["total"] == 3


# --- /ratelimited ---------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["3", "0.25", HTTP_DATE])
def test_ratelimited(server: DemoServer, session: requests.Session, retry_after: str) -> None:
    url = f"{server.url}/ratelimited/k"
    params = {"times": 2, "retry_after": retry_after}
    for call in (1, 2):
        response = session.get(url, params=params, timeout=5)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == retry_after
        assert response.json()["call"] == call
    response = session.get(url, params=params, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"key": "k", "call": 3}


def test_ratelimited_defaults(server: DemoServer, session: requests.Session) -> None:
    url = f"{server.url}/ratelimited/d"
    first = session.get(url, timeout=5)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1")
    assert session.get(url, timeout=5).status_code == 200


# --- health, admin, fallbacks ---------------------------------------------------------------


def test_health_is_not_recorded(server: DemoServer, session: requests.Session) -> None:
    response = session.get(f"{server.url}/health", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert calls(session, server)["total"] == 0


def test_not_found_is_recorded(server: DemoServer, session: requests.Session) -> None:
    response = session.delete(f"{server.url}/nope/x?q=1", timeout=5)
    assert response.status_code == 404
    assert response.json() == {"error": "no route", "path": "/nope/x"}
    assert calls(session, server)["paths"] == {"/nope/x": 1}


def test_wrong_method_on_admin_route(server: DemoServer, session: requests.Session) -> None:
    response = session.get(f"{server.url}/admin/reset", timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert calls(session, server)["total"] == 0


def test_admin_calls_counts_paths_and_idempotency_keys(server: DemoServer, session: requests.Session) -> None:
    session.get(f"{server.url}/echo/a?x=1", headers={"Idempotency-Key": "k1"}, timeout=5)
    session.post(f"{server.url}/echo/a", headers={"Idempotency-Key": "k1"}, timeout=5)
    session.post(f"{server.url}/echo/a", headers={"Idempotency-Key": "k2"}, timeout=5)
    session.get(f"{server.url}/status/500", headers={"Idempotency-Key": "k1"}, timeout=5)
    session.get(f"{server.url}/echo/b", timeout=5)
    expected = {
        "total": 5,
        "paths": {"/echo/a": 3, "/status/500": 1, "/echo/b": 1},
        "idempotency_keys": {"k1": 3, "k2": 1},
        "by_path_and_key": {"/echo/a": {"k1": 2, "k2": 1}, "/status/500": {"k1": 1}},
    }
    assert calls(session, server) == expected
    assert server.calls() == expected
    assert calls(session, server, path="/echo/a") == {
        "total": 3,
        "paths": {"/echo/a": 3},
        "idempotency_keys": {"k1": 2, "k2": 1},
        "by_path_and_key": {"/echo/a": {"k1": 2, "k2": 1}},
    }
    assert calls(session, server, path="/never") == {
        "total": 0,
        "paths": {},
        "idempotency_keys": {},
        "by_path_and_key": {},
    }


def test_admin_calls_arrivals(server: DemoServer, session: requests.Session) -> None:
    before = time.time()
    for _ in range(3):
        session.get(f"{server.url}/echo/t", timeout=5)
    session.get(f"{server.url}/echo/other", timeout=5)
    after = time.time()
    assert "arrivals" not in calls(session, server)
    arrivals = calls(session, server, arrivals="1")["arrivals"]
    assert set(arrivals) == {"/echo/t", "/echo/other"}
    times = arrivals["/echo/t"]
    assert len(times) == 3
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after
    assert calls(session, server, arrivals="1", path="/echo/other")["arrivals"].keys() == {"/echo/other"}


def test_arrivals_keep_the_most_recent() -> None:
    state = DemoState(max_arrivals=3)
    for _ in range(5):
        state.record("/p", None)
    snapshot = state.snapshot(arrivals=True)
    assert snapshot["paths"] == {"/p": 5}
    assert len(snapshot["arrivals"]["/p"]) == 3


def test_admin_reset(server: DemoServer, session: requests.Session) -> None:
    flaky = f"{server.url}/flaky/r"
    limited = f"{server.url}/ratelimited/r"
    assert session.get(flaky, timeout=5).status_code == 503
    assert session.get(limited, timeout=5).status_code == 429
    session.get(f"{server.url}/echo/x", headers={"Idempotency-Key": "k"}, timeout=5)
    response = session.post(f"{server.url}/admin/reset", timeout=5)
    assert response.status_code == 200
    assert calls(session, server, arrivals="1") == {
        "total": 0,
        "paths": {},
        "idempotency_keys": {},
        "by_path_and_key": {},
        "arrivals": {},
    }
    assert session.get(flaky, timeout=5).status_code == 503
    assert session.get(limited, timeout=5).status_code == 429


def test_concurrent_calls_are_all_counted(server: DemoServer) -> None:
    def worker(n: int) -> None:
        with requests.Session() as session:
            for i in range(25):
                session.get(f"{server.url}/echo/c", headers={"Idempotency-Key": f"k{i % 5}"}, timeout=5)
                session.get(f"{server.url}/flaky/shared", params={"fail": 0}, timeout=5)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(worker, range(8)))
    snapshot = server.calls()
    assert snapshot["total"] == 400
    assert snapshot["paths"] == {"/echo/c": 200, "/flaky/shared": 200}
    assert snapshot["idempotency_keys"] == {f"k{i}": 40 for i in range(5)}
    with requests.Session() as session:
        assert session.get(f"{server.url}/flaky/shared", timeout=5).json()["call"] == 201


# --- python -m demo_services ----------------------------------------------------------------


def test_cli_runs_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(INCLUDE_DIR), "DEMO_API_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "demo_services"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"demo API listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        with requests.Session() as session:
            assert session.get(f"{match[1]}/echo/cli", timeout=5).status_code == 200
            assert session.get(f"{match[1]}/admin/calls", timeout=5).json()["total"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == ""  # no per-request logging by default
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
