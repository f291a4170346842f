"""``BulkHttpOperator``: many calls in one task, concurrently, through the shared limiter and breaker.

10,000 calls should not become 10,000 task instances. Each item's request is rendered from the
templates with ``item`` (and ``conf``, ``params``) in a sandboxed Jinja environment; a template that
is exactly ``{{ expression }}`` keeps its native type. Results go to a JSON-lines file (one line per
item: index, status, result or error); the task returns its path and the counts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jmespath
import requests
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException
from jinja2.sandbox import SandboxedEnvironment

from api_orchestration.call import Guard, ResilientCaller
from api_orchestration.errors import ApiOrchestrationError, ConfigurationError
from api_orchestration.home import data_path
from api_orchestration.idempotency import task_key
from api_orchestration.operators.http import UNSAFE_METHODS, default_response_filter
from api_orchestration.operators.step import items_from
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy
from api_orchestration.state import get_backend
from api_orchestration.workflow import allowed_failures

_ENV = SandboxedEnvironment()


def render(value: Any, variables: dict[str, Any]) -> Any:
    """Render every string in ``value``; ``"{{ expr }}"`` alone keeps the expression's native type."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
            return _ENV.compile_expression(stripped[2:-2].strip())(**variables)
        return _ENV.from_string(value).render(**variables) if "{" in value else value
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    return value


def results_dir() -> Path:
    return data_path("results")


def call_concurrently(
    count: int,
    request: Callable[[int], dict[str, Any]],
    *,
    guard: Guard,
    sessions: Callable[[], requests.Session],
    concurrency: int,
    timeout: float | tuple[float, float] = (10.0, 60.0),
    log: Any = None,
    select: Callable[[Any], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Make ``count`` calls with ``concurrency`` threads, each thread with its own session and
    ``ResilientCaller`` sharing ``guard`` (so the shared limiter and breaker). ``request(i)`` gives
    call i's ``method``, ``url`` and keyword arguments. Yields one row per call, in order."""
    local, callers, lock = threading.local(), [], threading.Lock()

    def one(index: int) -> dict[str, Any]:
        caller = getattr(local, "caller", None)
        if caller is None:  # each keeps its last verdict for its next admission
            caller = local.caller = ResilientCaller(sessions(), guard, timeout=timeout, log=log)
            with lock:
                callers.append(caller)
        kwargs = request(index)
        try:
            response = caller.call(kwargs.pop("method"), kwargs.pop("url"), **kwargs)
            value = default_response_filter(response)
            return {
                "index": index,
                "ok": True,
                "status": response.status_code,
                "result": select(value) if select else value,
            }
        except ApiOrchestrationError as exc:
            return {"index": index, "ok": False, "error": f"{type(exc).__name__}: {exc}"}

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            yield from pool.map(one, range(count))
        finally:
            for caller in callers:
                caller.flush()


class BulkHttpOperator(BaseOperator):
    """Call ``endpoint`` once per item of ``items`` with ``concurrency`` threads.

    :param items: a list, or a JMESPath over ``{"conf", "params", "results"}`` (``inputs`` names the
        upstream steps it may read).
    :param endpoint, method, json, query, headers: per-item templates (``{{ item }}``).
    :param tolerate_failures: how many items may fail (a count, or a fraction when < 1).
    """

    template_fields: Sequence[str] = ("http_conn_id",)
    ui_color = "#e6f7ee"

    def __init__(
        self,
        *,
        items: list[Any] | str,
        endpoint: str,
        method: str = "GET",
        http_conn_id: str = "http_default",
        json: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        inputs: Sequence[str] = (),
        concurrency: int = 16,
        tolerate_failures: float = 0,
        rate_limit: RateLimit | None = None,
        rate_limit_key: str | None = None,
        breaker: BreakerPolicy | None = None,
        breaker_key: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        select: str | None = None,
        state_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (isinstance(concurrency, int) and 1 <= concurrency <= 256):
            raise ConfigurationError(
                f"task {self.task_id!r}", "concurrency", concurrency, "must be an integer from 1 to 256"
            )
        self.items, self.endpoint, self.method, self.http_conn_id = (
            items,
            endpoint,
            method.upper(),
            http_conn_id,
        )
        self.json, self.query, self.headers, self.inputs = json, query, headers, tuple(inputs)
        self.concurrency, self.tolerate_failures = concurrency, tolerate_failures
        self.rate_limit, self.breaker, self.retry = rate_limit, breaker, retry or RetryPolicy()
        self.rate_limit_key, self.breaker_key = rate_limit_key, breaker_key
        self.timeout, self.select, self.state_url = timeout, select, state_url

    def _items(self, context: Context) -> list[Any]:
        return self.items if isinstance(self.items, list) else items_from(self.items, context, self.inputs)

    def execute(self, context: Context) -> dict[str, Any]:
        items = self._items(context)
        ti = context["ti"]
        hook = HttpHook(method=self.method, http_conn_id=self.http_conn_id)
        hook.get_conn()  # resolve the connection once (base URL)
        guard = Guard(
            backend=get_backend(self.state_url), limit_key=self.rate_limit_key or self.http_conn_id,
            rate_limit=self.rate_limit, breaker_key=self.breaker_key or self.http_conn_id, breaker=self.breaker,
            retry=self.retry, max_sleep=3600.0,
        )  # fmt: skip
        base_key = task_key(ti)
        select = jmespath.compile(self.select) if self.select else None
        shared = {
            "conf": dict(getattr(context.get("dag_run"), "conf", None) or {}),
            "params": dict(context.get("params") or {}),
        }

        def request(index: int) -> dict[str, Any]:
            v = {**shared, "item": items[index], "index": index}
            return {
                "method": self.method, "url": hook.url_from_endpoint(render(self.endpoint, v)),
                "json": render(self.json, v), "params": render(self.query, v), "headers": render(self.headers, v),
                "idempotency_key": f"{base_key}-{index}" if self.method in UNSAFE_METHODS else None,
            }  # fmt: skip

        def sessions() -> Any:
            return HttpHook(method=self.method, http_conn_id=self.http_conn_id).get_conn()

        rows = call_concurrently(
            len(items), request, guard=guard, sessions=sessions, concurrency=self.concurrency,
            timeout=self.timeout, log=self.log, select=select.search if select else None,
        )  # fmt: skip
        started = time.monotonic()
        out = results_dir() / ti.dag_id / ti.run_id.replace("/", "_") / f"{ti.task_id}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        failed = 0
        with out.open("w") as fh:
            for row in rows:
                failed += not row["ok"]
                fh.write(json.dumps(row, default=str) + "\n")
        seconds = time.monotonic() - started
        summary = {
            "path": str(out),
            "total": len(items),
            "succeeded": len(items) - failed,
            "failed": failed,
            "seconds": round(seconds, 3),
        }
        self.log.info("bulk %s: %s", self.task_id, summary)
        allowed = allowed_failures(self.tolerate_failures, len(items))
        if failed > allowed:
            raise AirflowFailException(
                f"bulk {self.task_id!r}: {failed} of {len(items)} calls failed (see {out}); at most {allowed:g} tolerated"
            )
        return summary
