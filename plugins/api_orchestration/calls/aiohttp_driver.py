"""The resilient call path on asyncio and aiohttp, for many concurrent calls in one task.

The same steps, semantics and log lines as :class:`~api_orchestration.calls.requests_driver.ResilientCaller`:
admission (limiter slot and breaker permit), the attempt, its verdict, retries with backoff or
``Retry-After`` (a 429 pauses the key for every worker). Admissions and verdicts go through an
:class:`~api_orchestration.calls.batching.AdmissionQueue`, which batches them into one store operation.
Sessions come from :func:`new_session`, which turns off aiohttp's silent resend of an idempotent
request on a dropped keep-alive connection: every request on the wire has been admitted.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests.utils
from yarl import URL

from api_orchestration import metrics
from api_orchestration.calls.batching import AdmissionQueue
from api_orchestration.calls.requests_driver import (
    Attempt,
    DeferralNeeded,
    _Waits,
    conclude,
    note_granted,
    on_refusal,
    redacted_error,
    retry_after_of,
)
from api_orchestration.redaction import redact_url
from api_orchestration.resilience import breaker as brk
from api_orchestration.resilience.outcome import classify_exception, classify_status, may_retry_method

logger = logging.getLogger(__name__)
MAX_RESLOTS = 3  # new slots a late call may take before it goes anyway (and says so)


@dataclass(frozen=True)
class Reply:
    """A response read in full, with what results and errors read of a ``requests.Response``."""

    status_code: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive
    content: bytes
    url: str
    encoding: str = "utf-8"

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding, errors="replace")
        except LookupError:  # an unknown charset
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def query_pairs(params: Mapping[str, Any]) -> list[tuple[str, str | int | float]]:
    """``params`` as ``requests`` encodes them: None dropped, lists repeated, other values as text."""
    pairs: list[tuple[str, str | int | float]] = []
    for name, value in params.items():
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None:
                pairs.append(
                    (str(name), v if isinstance(v, str | int | float) and not isinstance(v, bool) else str(v))
                )
    return pairs


def new_session(
    concurrency: int,
    timeout: float | tuple[float, float] | None,
    *,
    headers: Mapping[str, str] | None = None,
    auth: aiohttp.BasicAuth | None = None,
) -> aiohttp.ClientSession:
    """A session for ``concurrency`` calls in flight; ``timeout`` is ``(connect, read)`` seconds."""
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read),
        headers=dict(headers or {}),
        auth=auth,
    )
    session._retry_connection = False  # no public switch; aiohttp's own test client sets it too
    return session


def options_from_connection(extra_options: Mapping[str, Any] | None, base_url: str) -> dict[str, Any]:
    """Per-request aiohttp options from a connection's extras (as ``HttpAsyncHook.config()`` reads
    them): ``proxy``, ``verify``/``verify_ssl`` (False, or a CA bundle path), redirects. The
    operator's ``timeout`` replaces the extras' one; ``stream``, ``cert`` and ``trust_env`` are
    not supported (as in ``HttpAsyncHook``)."""
    extra, options = dict(extra_options or {}), {}
    proxy = extra.get("proxy")
    if isinstance(proxy, Mapping):
        proxy = proxy.get(URL(base_url).scheme) or proxy.get("all")
    if proxy:
        options["proxy"] = proxy
    verify = extra.get("verify_ssl", extra.get("verify"))
    if verify is False or str(verify).lower() == "false":
        options["ssl"] = False
    elif isinstance(verify, str) and verify.lower() != "true":
        options["ssl"] = ssl.create_default_context(cafile=verify)
    for name in ("allow_redirects", "max_redirects"):
        if name in extra:
            options[name] = extra[name]
    return options


class AsyncCaller:
    """Makes calls on an aiohttp session under the queue's :class:`~api_orchestration.calls.requests_driver.Guard`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        admissions: AdmissionQueue,
        *,
        request_options: Mapping[str, Any] | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.session, self.admissions, self.guard = session, admissions, admissions.guard
        self.options = dict(request_options or {})
        self.log = log or logger
        self._proxies: dict[str, str | None] = {}  # environment proxy per scheme://host, as requests reads it

    async def _admit(self, attempt: int, waits: _Waits) -> tuple[brk.BreakerDecision | None, float, float]:
        """The permit, the wait until the slot, and when the deciding store operation started."""
        held = 0.0
        while True:
            admission, sent = await self.admissions.admit()
            if admission.granted:
                note_granted(self.guard, admission, held, waits, self.log)
                return admission.breaker, admission.wait, sent
            pause = on_refusal(self.guard, admission, attempt, held)
            await asyncio.sleep(pause)
            held += pause

    async def _until_slot(self, wait: float, sent: float, attempt: int, waits: _Waits) -> None:
        """Sleep until the slot, which lies between ``sent + wait`` and the answer's arrival plus
        ``wait``. Every call is late by the steady part of the store's round trip; one later than
        that by more than half the limit's margin (its process stalled: a busy machine, a long GC)
        could share a window with calls whose slots are a whole window after its, so it takes a new
        slot (keeping its breaker permit) instead of going out."""
        limit, key = self.guard.rate_limit, self.guard.limit_key
        for _ in range(MAX_RESLOTS):
            if wait > 0:
                await asyncio.sleep(wait)
            late = time.monotonic() - sent - wait - self.admissions.round_trip
            if limit is None or late <= limit.margin * limit.per_seconds / 2:
                return
            admission, sent = await self.admissions.admit(slot_only=True)
            if not admission.granted:
                on_refusal(self.guard, admission, attempt, 0.0)  # raises: only "defer" refuses a slot
            wait = admission.wait
            waits.add(wait, f"for a new slot on {key!r} (the first was missed by {late * 1000:.0f} ms)")
        if wait > 0:
            await asyncio.sleep(wait)
        self.log.warning("limiter %r: slot missed %d times in a row, sending anyway", key, MAX_RESLOTS)

    def _proxy(self, target: URL) -> dict[str, Any]:
        if "proxy" in self.options:
            return {}
        origin = f"{target.scheme}://{target.host}"
        if origin not in self._proxies:
            found = requests.utils.get_environ_proxies(str(target))
            self._proxies[origin] = found.get(target.scheme) or found.get("all")
        proxy = self._proxies[origin]
        return {"proxy": proxy} if proxy else {}

    async def _send(self, method: str, target: URL, headers: dict[str, str], body: dict[str, Any]) -> Reply:
        options = {**self.options, **self._proxy(target)}
        async with self.session.request(method, target, headers=headers, **body, **options) as resp:
            content = await resp.read()
            return Reply(
                resp.status, resp.reason or "", resp.headers, content, str(resp.url), resp.charset or "utf-8"
            )

    async def call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        idempotency_header: str = "Idempotency-Key",
    ) -> Reply:
        """Make the call; return the successful reply or raise a typed error."""
        method = method.upper()
        g, policy = self.guard, self.guard.retry
        headers = dict(headers or {})
        if idempotency_key:
            headers[idempotency_header] = idempotency_key
        target = URL(url)
        if params:
            target = target.extend_query(query_pairs(params))
        body: dict[str, Any] = {}
        if method not in ("GET", "HEAD"):
            body = {"data": data} if data is not None else {"json": json} if json is not None else {}
        safe_url = redact_url(str(target))
        retry_ok = may_retry_method(method, idempotency_key)
        max_attempts = policy.max_attempts if retry_ok else 1
        attempt, waits = 1, _Waits()
        while True:
            permit, wait, sent = await self._admit(attempt, waits)
            reply: Reply | None = None
            error: Exception | None = None
            try:
                await self._until_slot(wait, sent, attempt, waits)
                started = time.perf_counter()
                try:
                    reply = await self._send(method, target, headers, body)
                    outcome = classify_status(reply.status_code, policy)
                except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors
                    error, outcome = exc, classify_exception(True, policy)
                except aiohttp.ClientError as exc:
                    error, outcome = exc, classify_exception(False, policy)
            except BaseException:  # cancelled mid-call: the effect is unknown, count a failure
                self.admissions.record(permit, True)
                raise
            elapsed = time.perf_counter() - started
            metrics.attempt(g.limit_key, elapsed)
            a = Attempt(
                method, safe_url, attempt, max_attempts, retry_ok, elapsed, waits, outcome, reply, error
            )
            self.admissions.record(permit, a.breaker_failure(g))  # before the retry's admission
            retry_after = await self._retry_after(reply)
            error_text = redacted_error(error, (str(target), target.raw_path_qs))
            step = conclude(a, g, self.log, retry_after, error_text)
            if step is None:
                return reply  # type: ignore[return-value]
            delay, why = step
            attempt, waits = attempt + 1, _Waits()
            if delay > g.max_sleep:
                raise DeferralNeeded(delay, why, attempt)
            await asyncio.sleep(delay)
            waits.add(delay, f"for {why}")

    async def _retry_after(self, reply: Reply | None) -> float | None:
        seconds, pause = retry_after_of(reply, self.guard.retry)
        if pause:
            await self.admissions.pause(seconds)  # type: ignore[arg-type]
            metrics.limiter_paused(self.guard.limit_key)
        return seconds
