"""A real ``requests.Session`` whose every request goes through the shared limiter, breaker and
retries: for TaskFlow code and for third-party libraries that accept a session.

:class:`GuardedAdapter` is a transport adapter (``requests.adapters.HTTPAdapter``) mounted for
``http://`` and ``https://``; its ``send()`` hands the prepared request to a
:class:`~api_orchestration.ResilientCaller`, whose own session is a separate plain session built
from the Airflow connection (base URL, credentials, headers, TLS and proxy options), so nothing
recurses. Every call therefore shares the limiter, breaker, retries, idempotency keys and log
lines of :class:`~api_orchestration.ResilientHttpOperator`. An error status after the retries is
returned as the response (as ``requests`` does: the caller or library decides); a call that could
not be made raises the toolkit's typed error (``CircuitOpenError``, ``TransportError``, ...).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from api_orchestration import compat
from api_orchestration.calls.connection_guard import connection_guard
from api_orchestration.calls.idempotency import DEFAULT_HEADER
from api_orchestration.calls.requests_driver import ResilientCaller
from api_orchestration.connections import ResilientHttpHook
from api_orchestration.errors import HttpStatusError
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy

UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class IdempotencyKeys:
    """``<base>-1``, ``<base>-2``, ...: one key per unsafe call, in call order, so a retried task
    that makes the same calls sends the same keys (as bulk's ``<task key>-<index>``)."""

    base: str
    header: str = DEFAULT_HEADER
    _counter: Any = field(default_factory=lambda: itertools.count(1), repr=False)

    def next(self) -> str:
        return f"{self.base}-{next(self._counter)}"


class GuardedAdapter(HTTPAdapter):
    """A transport adapter whose ``send()`` goes through a :class:`ResilientCaller`.

    :param caller: the guarded caller; its session must not mount this adapter.
    :param keys: idempotency keys for POST/PUT/PATCH/DELETE without one (None: send none).
    """

    def __init__(self, caller: ResilientCaller, keys: IdempotencyKeys | None = None) -> None:
        super().__init__()
        self.caller, self.keys = caller, keys

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        """Send ``request`` under the guard (the caller's timeout, TLS and proxy settings apply)."""
        method = (request.method or "GET").upper()
        headers = dict(request.headers)
        header = self.keys.header if self.keys else DEFAULT_HEADER
        given = next((h for h in headers if h.lower() == header.lower()), None)
        key = headers.pop(given) if given else None
        if key is None and self.keys is not None and method in UNSAFE_METHODS:
            key = self.keys.next()
        try:
            return self.caller.call(
                method, request.url or "", data=request.body, headers=headers,
                idempotency_key=key, idempotency_header=header,
            )  # fmt: skip
        except HttpStatusError as exc:
            if exc.response is None:
                raise
            return exc.response

    def close(self) -> None:
        self.caller.flush()
        super().close()


class GuardedSession(requests.Session):
    """A ``requests.Session`` bound to a connection: paths (``"/users"``) are joined to its base URL,
    full URLs are sent as they are, and every request goes through the shared guard."""

    def __init__(self, caller: ResilientCaller, base_url: str = "", keys: IdempotencyKeys | None = None):
        super().__init__()
        self.base_url, self.caller = base_url.rstrip("/"), caller
        self.headers.clear()  # the connection's session adds its headers; a request's own win
        adapter = GuardedAdapter(caller, keys)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = url.decode() if isinstance(url, bytes) else url
        if "://" not in url:
            url = f"{self.base_url}/{url.lstrip('/')}"
        return super().request(method, url, *args, **kwargs)


def guarded_session(
    conn_id: str,
    *,
    rate_limit: RateLimit | Sequence[RateLimit] | None = None,
    rate_limit_key: str | None = None,
    breaker: BreakerPolicy | None = None,
    breaker_key: str | None = None,
    retry: RetryPolicy | None = None,
    oauth2_conn_id: str | None = None,
    timeout: float | tuple[float, float] = (10.0, 60.0),
    max_sleep: float = 3600.0,
    state_url: str | None = None,
    idempotency_base: str | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    claim_as: str | None = None,
) -> GuardedSession:
    """A :class:`GuardedSession` for the Airflow connection ``conn_id``: the connection's policies
    (:func:`~api_orchestration.connections.connection_policies`) unless given here, its OAuth2
    connection's shared token on every request (``oauth2_conn_id``, else the connection's field);
    limiter and breaker keys default to the connection id; no response cache. Waits up to
    ``max_sleep`` in the process (a session cannot defer). ``idempotency_base`` (e.g. the task's
    key) numbers the keys of unsafe calls. ``claim_as``: the place (a task) claiming the keys for
    these policies (``Guard.claim_policies``). Close it (or use it in a ``with`` block) to record
    the last call's verdict."""
    guard = connection_guard(
        conn_id, state_url=state_url, rate_limit=rate_limit, breaker=breaker, retry=retry,
        oauth2_conn_id=oauth2_conn_id, limit_key=rate_limit_key, breaker_key=breaker_key, cacheable=False,
        max_sleep=max_sleep,
    )  # fmt: skip
    hook = ResilientHttpHook(method="GET", http_conn_id=conn_id)
    inner = hook.get_conn()  # a plain session: the connection's auth, headers, TLS and proxies
    if claim_as:
        guard.claim_policies(claim_as)
    caller = ResilientCaller(inner, guard, timeout=timeout, send_options=compat.merged_extra(hook), log=log)
    keys = IdempotencyKeys(idempotency_base) if idempotency_base else None
    return GuardedSession(caller, hook.base_url, keys)
