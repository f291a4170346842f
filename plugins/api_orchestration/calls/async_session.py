"""The asyncio twin of :mod:`api_orchestration.calls.session`: many concurrent calls through the
shared limiter and breaker from ``async`` TaskFlow code (``@task.resilient_http`` on an
``async def``).

:class:`AsyncGuardedClient` opens an aiohttp session configured from the Airflow connection (as
``HttpAsyncHook`` reads it), an :class:`~api_orchestration.calls.batching.AdmissionQueue` (admissions of
concurrent calls batched into one store operation) and an
:class:`~api_orchestration.calls.aiohttp_driver.AsyncCaller`: the same attempt flow, retries, idempotency keys and
log lines as the bulk operator's async engine. Replies are read in full
(:class:`~api_orchestration.calls.aiohttp_driver.Reply`: ``status_code``, ``headers``, ``text``, ``json()``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from api_orchestration import compat
from api_orchestration.calls.aiohttp_driver import AsyncCaller, Reply, new_session, options_from_connection
from api_orchestration.calls.batching import AdmissionQueue
from api_orchestration.calls.connection_guard import connection_guard
from api_orchestration.calls.events import default_events
from api_orchestration.calls.flow import HttpRequest
from api_orchestration.calls.guard import lease_seconds
from api_orchestration.calls.session import UNSAFE_METHODS, IdempotencyKeys
from api_orchestration.errors import HttpStatusError
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy


class AsyncGuardedClient:
    """``async with AsyncGuardedClient("payments") as client: await client.get("/x")``.

    Paths are joined to the connection's base URL; an error status after the retries is returned
    as the reply; a call that could not be made raises the toolkit's typed error.
    """

    def __init__(
        self,
        conn_id: str,
        *,
        rate_limit: RateLimit | Sequence[RateLimit] | None = None,
        rate_limit_key: str | None = None,
        breaker: BreakerPolicy | None = None,
        breaker_key: str | None = None,
        retry: RetryPolicy | None = None,
        oauth2_conn_id: str | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        concurrency: int = 16,
        max_sleep: float = 3600.0,
        state_url: str | None = None,
        idempotency_base: str | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        claim_as: str | None = None,
    ) -> None:
        self.conn_id, self.timeout, self.concurrency, self.log = conn_id, timeout, concurrency, log
        self.guard = connection_guard(
            conn_id, state_url=state_url, rate_limit=rate_limit, breaker=breaker, retry=retry,
            oauth2_conn_id=oauth2_conn_id, limit_key=rate_limit_key, breaker_key=breaker_key, cacheable=False,
            max_sleep=max_sleep,
        )  # fmt: skip
        self.keys = IdempotencyKeys(idempotency_base) if idempotency_base else None
        self.claim_as = claim_as  # the place claiming the keys for these policies (Guard.claim_policies)
        self.base_url = ""
        self._session: Any = None
        self._admissions: AdmissionQueue | None = None
        self._caller: AsyncCaller | None = None

    async def __aenter__(self) -> AsyncGuardedClient:
        if self.claim_as:
            await asyncio.to_thread(self.guard.claim_policies, self.claim_as)
        config = await compat.connection_config("GET", self.conn_id)  # as HttpAsyncHook reads it
        self.base_url = config.base_url.rstrip("/")
        self._session = new_session(self.concurrency, self.timeout, headers=config.headers, auth=config.auth)
        events = default_events(self.log, self.guard.listeners)
        self._admissions = AdmissionQueue(self.guard, lease_seconds(self.timeout), events)
        self._caller = AsyncCaller(
            self._session, self._admissions,
            request_options=options_from_connection(config.extra_options, config.base_url),
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._admissions is not None:
                await self._admissions.close()  # records the verdicts still queued
        finally:
            if self._session is not None:
                await self._session.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Reply:
        """One guarded call; ``url`` is a path under the connection's base URL or a full URL."""
        if self._caller is None:
            raise RuntimeError("use AsyncGuardedClient in 'async with' (it opens its session there)")
        method = method.upper()
        if idempotency_key is None and self.keys is not None and method in UNSAFE_METHODS:
            idempotency_key = self.keys.next()
        target = url if "://" in url else f"{self.base_url}/{url.lstrip('/')}"
        try:
            return await self._caller.call(
                HttpRequest(method, target, params, json, data, headers, idempotency_key)
            )
        except HttpStatusError as exc:
            if exc.response is None:
                raise
            return exc.response  # type: ignore[return-value]

    async def get(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> Reply:
        return await self.request("DELETE", url, **kwargs)
