"""HTTP/1.1 keep-alive server for the demo API (standard library only).

:class:`DemoServer` runs a :class:`~http.server.ThreadingHTTPServer` in a daemon thread and
dispatches every request through a :class:`~demo_services.routing.Router`. Non-admin requests
are recorded in a :class:`~demo_services.state.DemoState` before their handler runs; then the
fault rules (:mod:`demo_services.faults`) may answer instead of the handler, or delay its answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import traceback
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

from demo_services.endpoints import default_router
from demo_services.faults import Faults
from demo_services.routing import ApiError, Request, Response, Router
from demo_services.state import DemoState

_NO_BODY_STATUSES = frozenset({204, 304})
REQUEST_ID_HEADER = "X-Request-Id"


def new_request_id() -> str:
    """A unique id for one request, sent back in ``X-Request-Id`` (as real APIs do, for support)."""
    return f"req_{uuid.uuid4().hex[:20]}"


class _HTTPServer(ThreadingHTTPServer):
    """Threading server that knows its router and state and can close idle keep-alive sockets."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], router: Router, state: DemoState, verbose: bool) -> None:
        self.router = router
        self.state = state
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection so blocked keep-alive threads exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (or stop() closing their sockets) is routine; stay quiet about it.
        if self.verbose or not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    """Reads one request (body by Content-Length or chunked), routes it, writes a JSON reply.

    Every reply carries ``X-Request-Id`` (a new id per request); error replies have a JSON body
    ``{"error": ..., "detail": ...}`` explaining them.
    """

    protocol_version = "HTTP/1.1"
    server_version = "DemoAPI/1.0"
    disable_nagle_algorithm = True
    wbufsize = -1  # buffer head and body; handle_one_request() flushes them in one send
    server: _HTTPServer

    request_id = ""

    def dispatch(self) -> None:
        self.request_id = new_request_id()
        path, _, query_string = self.path.partition("?")
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            body = self._read_body(headers)
        except ValueError:
            self.send_error(HTTPStatus.BAD_REQUEST, "malformed request body framing")
            return
        route, params = self.server.router.resolve(self.command, path)
        request = Request(
            method=self.command,
            path=path,
            query=dict(parse_qsl(query_string, keep_blank_values=True)),
            headers=headers,
            body=body,
            params=params,
            request_id=self.request_id,
        )
        state = self.server.state
        if route.record:
            state.record(path, request.idempotency_key)
        fault = state.extension(Faults).check(path)
        if fault is not None and fault.response is not None:
            self._send(fault.response)  # injected before the handler: no effect
            return
        try:
            response = route.handler(request, state)
        except ApiError as exc:
            response = exc.response()
        except Exception as exc:
            traceback.print_exc()
            response = Response(500, {"error": "internal error", "detail": repr(exc)})
        if fault is not None and fault.latency:
            time.sleep(fault.latency)  # after the handler: the effect happened, the answer is late
        self._send(response)

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler calls ``do_<METHOD>``: every method goes through dispatch().
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (bad request line, oversized headers ...) as JSON; closes the connection."""
        self.log_error("code %d, message %s", code, message)
        self.request_id = new_request_id()
        self.close_connection = True
        self._send(Response(code, {"error": message or HTTPStatus(code).phrase}))

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = int(headers.get("content-length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        return b"".join(chunks)

    def _send(self, response: Response) -> None:
        if response.drop:
            self.close_connection = True
            return
        has_body = response.status not in _NO_BODY_STATUSES
        payload = json.dumps(response.body).encode() if has_body else b""
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header(REQUEST_ID_HEADER, self.request_id or new_request_id())
        if has_body:
            self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class DemoServer:
    """The demo API on ``host:port`` (port 0 picks a free port), served from a daemon thread.

    ``start()``/``stop()`` or ``with DemoServer(port=0) as server: ...``. ``router`` defaults to
    the core endpoints; ``state`` holds the call log (also via ``calls()`` and ``reset()``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8900,
        *,
        verbose: bool = False,
        router: Router | None = None,
    ) -> None:
        self.host = host
        self.verbose = verbose
        self.router = router if router is not None else default_router()
        self.state = DemoState()
        self._port = port
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port while running, else the configured one."""
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("DemoServer already started")
        server = _HTTPServer((self.host, self._port), self.router, self.state, self.verbose)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"demo-api-{server.server_address[1]}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release the port (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def calls(self, path: str | None = None, arrivals: bool = False) -> dict[str, Any]:
        """Same as ``GET /admin/calls``, without an HTTP round trip."""
        return self.state.snapshot(path, arrivals)

    def reset(self) -> None:
        """Same as ``POST /admin/reset``."""
        self.state.reset()

    def __enter__(self) -> Self:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
