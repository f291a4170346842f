"""The attempt flow (:mod:`.flow`) carried out with asyncio and aiohttp: many concurrent calls in one task.

Admissions and verdicts go through an :class:`~api_orchestration.calls.batching.AdmissionQueue`,
which batches the calls of one event loop into one store operation. Sessions come from
:func:`new_session`, which turns off aiohttp's silent resend of an idempotent request on a dropped
keep-alive connection: every request on the wire has been admitted.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import aiohttp
import requests.utils
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from api_orchestration import compat
from api_orchestration.calls import flow
from api_orchestration.calls.batching import AdmissionQueue
from api_orchestration.redaction import redact_url
from api_orchestration.resilience.http_cache import CacheEntry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """A response read in full, with what results and errors read of a ``requests.Response``."""

    status_code: int
    reason: str
    headers: Mapping[str, str]  # case-insensitive
    content: bytes
    url: str
    encoding: str = "utf-8"
    from_cache: bool = False

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding, errors="replace")
        except LookupError:  # an unknown charset
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    @classmethod
    def from_entry(cls, entry: CacheEntry, url: str) -> Reply:
        """A reply serving a cached entry."""
        headers = CIMultiDict(entry.headers)
        charset = next(
            (p.split("=", 1)[1].strip('" ') for p in headers.get("Content-Type", "").split(";")[1:]
             if p.strip().lower().startswith("charset=")),
            "utf-8",
        )  # fmt: skip
        reason = HTTPStatus(entry.status).phrase if entry.status in HTTPStatus._value2member_map_ else ""
        return cls(entry.status, reason, CIMultiDictProxy(headers), entry.body, url, charset, from_cache=True)


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
    compat.no_silent_resend(session)
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
    """Makes calls on an aiohttp session under the queue's :class:`~api_orchestration.calls.guard.Guard`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        admissions: AdmissionQueue,
        *,
        request_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.session, self.admissions, self.guard = session, admissions, admissions.guard
        self.events = admissions.events
        self.options = dict(request_options or {})
        self._proxies: dict[str, str | None] = {}  # environment proxy per scheme://host, as requests reads it

    def _proxy(self, target: URL) -> dict[str, Any]:
        if "proxy" in self.options:
            return {}
        origin = f"{target.scheme}://{target.host}"
        if origin not in self._proxies:
            found = requests.utils.get_environ_proxies(str(target))
            self._proxies[origin] = found.get(target.scheme) or found.get("all")
        proxy = self._proxies[origin]
        return {"proxy": proxy} if proxy else {}

    async def call(
        self, r: flow.HttpRequest, cache_key: str | None = None, admissions: AdmissionQueue | None = None
    ) -> Reply:
        """Make the call; return the successful reply or raise a typed error (or DeferralNeeded).
        ``cache_key``: the entry's key in the guard's cache (default: the method and full URL);
        ``admissions``: the queue of this call's guard (default: the caller's; bulk's per-item keys)."""
        queue = admissions or self.admissions
        target = URL(r.url).extend_query(query_pairs(r.params)) if r.params else URL(r.url)
        body = {}
        if r.has_body:
            body = {"data": r.data} if r.data is not None else {"json": r.json} if r.json is not None else {}
        options = {**body, **self.options, **self._proxy(target)}
        headers = r.all_headers
        sent_headers = {**self.session.headers, **headers}  # what goes out (the cache's Vary, auth rules)
        if (
            self.session.auth is not None
        ):  # the connection's credential (the cache keeps entries per credential)
            sent_headers.setdefault("Authorization", self.session.auth.encode())
        info = flow.CallInfo(
            r.method, redact_url(str(target)), r.idempotency_key, (str(target), target.raw_path_qs),
            sent_headers, cache_key,
        )  # fmt: skip
        stepper = flow.Stepper(
            flow.attempt_flow(info, queue.guard, queue.request, self.events, time.monotonic)
        )
        while (command := stepper.next()) is not None:
            try:
                stepper.succeeded(await self._execute(command, r.method, target, headers, options, queue))
            except BaseException as exc:
                stepper.failed(exc)
        return stepper.result  # type: ignore[return-value]

    async def _execute(
        self,
        command: flow.Command,
        method: str,
        target: URL,
        headers: dict[str, str],
        options: dict[str, Any],
        admissions: AdmissionQueue,
    ) -> Any:
        guard = admissions.guard
        if isinstance(command, flow.Send):
            if command.headers:  # the OAuth2 Authorization, a revalidation's If-None-Match
                headers = {**headers, **dict(command.headers)}
            started = time.perf_counter()
            try:
                async with self.session.request(method, target, headers=headers, **options) as resp:
                    content = await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:  # aiohttp's timeouts are TimeoutErrors
                return flow.Sent(None, exc, isinstance(exc, TimeoutError), time.perf_counter() - started)
            reply = Reply(
                resp.status, resp.reason or "", resp.headers, content, str(resp.url), resp.charset or "utf-8"
            )
            return flow.Sent(reply, None, False, time.perf_counter() - started)
        if isinstance(command, flow.Authorize):  # a store read, rarely a token request: off the event loop
            return await asyncio.to_thread(guard.tokens.authorize, command.reject)  # type: ignore[union-attr]
        if isinstance(command, flow.Admit):
            return await admissions.admit(slot_only=command.slot_only)
        if isinstance(command, flow.Sleep):
            await asyncio.sleep(command.seconds)
            return None
        if isinstance(command, flow.Report):
            admissions.record(command.verdict)  # before the next admission asked for
            return None
        if isinstance(command, flow.ServerBudget):  # this driver takes no admissions ahead
            return None
        if isinstance(command, flow.Pause):
            return await admissions.pause(command.seconds)
        if isinstance(command, flow.CacheLookup):  # one short store operation, off the event loop
            found = await asyncio.to_thread(guard.backend.cache_get, command.scope, command.key)
            entry = CacheEntry.from_dict(found) if found else None
            return flow.CacheFound(entry, lambda e: Reply.from_entry(e, str(target)))
        if isinstance(command, flow.CacheStore):
            e = command.entry
            return await asyncio.to_thread(
                guard.backend.cache_put, command.scope, command.key, e.to_dict(), e.size, command.keep,
                command.max_total_bytes,
            )  # fmt: skip
        raise TypeError(f"unknown command {command!r}")
