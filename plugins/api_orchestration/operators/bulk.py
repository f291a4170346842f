"""``BulkHttpOperator``: many calls in one task, concurrently, through the shared limiter and breaker.

10,000 calls should not become 10,000 task instances. Each item's request is rendered from the
templates in the sandboxed native environment (:mod:`api_orchestration.rendering`) with Airflow's task context (``params``, ``run_id``,
``ds``, ``dag_run``, ...), ``results.<step>`` (upstream results), ``item`` and ``index``, and ``conf``
as a shortcut for ``dag_run.conf``; a template that is exactly ``{{ expression }}`` keeps its native
type. ``rate_limit_key`` and ``breaker_key`` may be templates too (a key per tenant, account or
host): each item's calls are then limited and broken under its own keys, through one
:class:`~api_orchestration.calls.guard.KeyedGuards`. Results go to a JSON-lines file (one line per
item: index, status, result or error); the task returns its path and the counts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jmespath
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from api_orchestration import compat
from api_orchestration.calls.aiohttp_driver import options_from_connection
from api_orchestration.calls.claims import claim_once
from api_orchestration.calls.connection_guard import check_oauth2_conn_id, connection_guard
from api_orchestration.calls.engines import call_concurrently, call_concurrently_async
from api_orchestration.calls.guard import Guard, KeyedGuards
from api_orchestration.calls.idempotency import task_key
from api_orchestration.calls.requests_driver import ResilientCaller
from api_orchestration.connections import ResilientHttpHook
from api_orchestration.errors import ConfigurationError
from api_orchestration.operators.http import UNSAFE_METHODS
from api_orchestration.operators.paging import PagedItems, PagedList, fetch_pages
from api_orchestration.operators.step import items_from
from api_orchestration.operators.templates import UpstreamResults, referenced_results
from api_orchestration.paths import data_path, shared_results_url
from api_orchestration.policy import (
    BreakerPolicy,
    CachePolicy,
    RateLimit,
    RetryPolicy,
    allowed_failures,
    rate_limits,
)
from api_orchestration.rendering import SandboxedNativeEnvironment, SandboxedTemplates
from api_orchestration.syncs.progress import Progress

_ENV = SandboxedNativeEnvironment()
_STRICT_ENV = SandboxedNativeEnvironment(undefined=jinja2.StrictUndefined)  # keys: no silent "tenant-"
ENGINES = ("async", "threads")


@functools.lru_cache(maxsize=256)
def _compiled(text: str) -> Callable[..., Any]:
    """``text`` compiled once per task (not once per item)."""
    return _ENV.from_string(text).render


@functools.lru_cache(maxsize=64)
def _compiled_key(text: str) -> Callable[..., Any]:
    return _STRICT_ENV.from_string(text).render


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def render_key(template: str, variables: dict[str, Any]) -> str:
    """A limiter or breaker key rendered for one item: undefined names are errors (a missing
    ``item.tenant`` must not put every tenant under the key ``"tenant-"``), and the key must be a
    non-empty string (a number is taken as its text)."""
    value = _compiled_key(template)(**variables)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ValueError(f"rendered to {value!r}, not a non-empty string")
    return str(value)


def render(value: Any, variables: dict[str, Any]) -> Any:
    """Render every string in ``value``; ``"{{ expr }}"`` alone keeps the expression's native type."""
    if isinstance(value, str):
        return _compiled(value)(**variables) if "{" in value else value
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    return value


def results_dir() -> Path:
    return data_path("results")


def results_base(override: str | None = None) -> str:
    """Where bulk results go, as an ``ObjectStoragePath`` URI: the operator's ``results_url``, else
    ``[api_orchestration] results_url`` (``AIRFLOW__API_ORCHESTRATION__RESULTS_URL``; e.g. ``s3://bucket/x``
    so a task on another worker can read them), else ``file://`` under ``AIRFLOW_HOME``."""
    return override or shared_results_url() or results_dir().as_uri()


def join_url(base_url: str, endpoint: str) -> str:
    """``base_url`` + ``endpoint`` with one slash between them (as ``HttpHook.url_from_endpoint``)."""
    if base_url and not base_url.endswith("/") and endpoint and not endpoint.startswith("/"):
        return f"{base_url}/{endpoint}"
    return (base_url or "") + (endpoint or "")


class BulkHttpOperator(SandboxedTemplates, BaseOperator):
    """Call ``endpoint`` once per item of ``items``, ``concurrency`` calls at a time.

    Per-item templates (``endpoint``, ``json``, ``query``, ``headers``) see ``{{ item }}``,
    ``{{ index }}``, the task context, ``{{ results.<step> }}`` and ``{{ conf }}`` (``dag_run.conf``).

    :param items: a list, a JMESPath over ``{"conf", "params", "results"}``, or a
        :class:`~api_orchestration.operators.paging.PagedList`: a paginated GET whose records are the
        items, read page by page through this task's limiter and breaker into files (an Airflow
        retry resumes the list at the page that failed), then fanned out a few pages in memory at a time.
    :param endpoint: path under the connection's base URL (a per-item template).
    :param method: HTTP method of every call.
    :param http_conn_id: Airflow Connection (``resilient_http`` or ``http``) (templated).
    :param json: JSON body (a per-item template).
    :param query: query-string parameters (a per-item template).
    :param headers: extra request headers (a per-item template).
    :param inputs: the upstream steps ``items`` may read as ``results.<step>``.
    :param concurrency: calls in flight at once (1 to 256).
    :param tolerate_failures: how many items may fail (a count, or a fraction when < 1).
    :param rate_limit: :class:`~api_orchestration.RateLimit`, or a list of them (several windows held
        at once); default: the connection's, else none.
    :param rate_limit_key: default: the connection id. A per-item template (e.g.
        ``"crm:{{ item.tenant }}"``): items of one key share its limiter (and bulkhead) with every
        other call under that key; items of other keys are limited apart. Undefined names are errors.
    :param max_in_flight: the bulkhead: at most this many calls in flight under ``rate_limit_key``,
        across all workers (default: no cap).
    :param breaker: :class:`~api_orchestration.BreakerPolicy`; default: the connection's, else none.
    :param breaker_key: default: the connection id. A per-item template, like ``rate_limit_key``
        (e.g. ``"{{ item.host }}"``): one key's open breaker fails only that key's items.
    :param retry: :class:`~api_orchestration.RetryPolicy`; default: the connection's, else ``RetryPolicy()``.
    :param timeout: seconds, or ``(connect, read)``, per call.
    :param select: JMESPath applied to each JSON response to form the row's result.
    :param state_url: override ``[api_orchestration] state_url`` for this task.
    :param engine: ``"async"`` (default): one asyncio event loop over aiohttp, the connection read
        by ``HttpAsyncHook``, admissions batched into one store operation; ``"threads"``:
        ``concurrency`` threads with ``requests`` sessions from ``HttpHook``, one store operation
        per call (about 3x slower). Same rows, limits, breaker, retries and log lines.
    :param cache: :class:`CachePolicy` shared with every other task on the same key (its ``key``
        template renders per item, with ``{{ item }}``); a row served from the cache has ``"cached": true``.
    :param log_response: log successful bodies (truncated, redacted), as error bodies always are.
    :param results_url: where the rows go, an ``ObjectStoragePath`` URI (default:
        ``[api_orchestration] results_url``, else ``file://`` under ``AIRFLOW_HOME``).
    :param oauth2_conn_id: an OAuth2 connection: every call carries a token shared by every worker
        (templated).
    """

    template_fields: Sequence[str] = ("http_conn_id", "oauth2_conn_id")
    ui_color = "#e6f7ee"

    def __init__(
        self,
        *,
        items: list[Any] | str | PagedList,
        endpoint: str,
        method: str = "GET",
        http_conn_id: str = "http_default",
        json: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        inputs: Sequence[str] = (),
        concurrency: int = 16,
        tolerate_failures: float = 0,
        rate_limit: RateLimit | Sequence[RateLimit] | None = None,
        rate_limit_key: str | None = None,
        max_in_flight: int | None = None,
        breaker: BreakerPolicy | None = None,
        breaker_key: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        select: str | None = None,
        state_url: str | None = None,
        results_url: str | None = None,
        engine: str = "async",
        cache: CachePolicy | None = None,
        log_response: bool = False,
        oauth2_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_oauth2_conn_id(f"task {self.task_id!r}", oauth2_conn_id)
        self.oauth2_conn_id = oauth2_conn_id
        if cache is not None and not isinstance(cache, CachePolicy):
            raise ConfigurationError(
                f"task {self.task_id!r}", "cache", cache, "must be a CachePolicy(ttl, ...)"
            )
        if cache is not None and method.upper() not in cache.methods:
            raise ConfigurationError(
                f"task {self.task_id!r}", "cache", method,
                f"caches only {', '.join(cache.methods)} responses; remove cache from this {method.upper()} call",
            )  # fmt: skip
        if engine not in ENGINES:
            raise ConfigurationError(f"task {self.task_id!r}", "engine", engine, f"must be one of {ENGINES}")
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
        rate_limit = rate_limits(rate_limit, f"task {self.task_id!r}")  # one window, or several
        self.rate_limit, self.breaker, self.retry = rate_limit, breaker, retry  # None: the connection's
        self.rate_limit_key, self.breaker_key, self.max_in_flight = rate_limit_key, breaker_key, max_in_flight
        self.timeout, self.select, self.state_url, self.engine = timeout, select, state_url, engine
        self.results_url = results_url
        self.cache, self.log_response = cache, bool(log_response)

    def _rows(
        self,
        count: int,
        request: Callable[[str], Callable[[int], dict[str, Any]]],
        guard: Guard,
        select: Callable[[Any], Any] | None,
    ) -> Iterator[dict[str, Any]]:
        """The chosen engine's rows; the connection (base URL, credentials, headers, extras) is read
        by the providers-http hook of that engine."""
        common = {"guard": guard, "concurrency": self.concurrency, "timeout": self.timeout, "log": self.log}
        if self.engine == "threads":
            hook = ResilientHttpHook(method=self.method, http_conn_id=self.http_conn_id)
            hook.get_conn()  # resolves the connection: base URL

            def sessions() -> Any:
                return ResilientHttpHook(method=self.method, http_conn_id=self.http_conn_id).get_conn()

            return call_concurrently(
                count, request(hook.base_url), sessions=sessions, select=select, **common
            )
        config = compat.async_connection_config(self.method, self.http_conn_id)
        return call_concurrently_async(
            count, request(config.base_url), select=select, headers=config.headers, auth=config.auth,
            request_options=options_from_connection(config.extra_options, config.base_url), **common,
        )  # fmt: skip

    def _guards(self, base: Guard) -> KeyedGuards:
        """Where every guard of this task comes from, the per-item ones included."""
        return KeyedGuards(base, prepare=lambda guard: claim_once(self, guard))  # one key, one policy

    def _items(self, context: Context) -> Sequence[Any]:
        if isinstance(self.items, PagedList):
            return self._paged_items(context, self.items)
        return self.items if isinstance(self.items, list) else items_from(self.items, context, self.inputs)

    def _paged_items(self, context: Context, source: PagedList) -> Sequence[Any]:
        """Every page of ``source`` through this task's connection, limiter and breaker (its keys
        when they are not per-item templates), written to files; the items read back lazily."""
        ti = context["ti"]
        progress = Progress(self.log, f"items of {self.task_id}")

        def key(value: str | None) -> str:
            return value if value and not is_template(value) else self.http_conn_id

        guard = self._guards(connection_guard(
            self.http_conn_id, state_url=self.state_url, rate_limit=self.rate_limit, breaker=self.breaker,
            retry=self.retry, oauth2_conn_id=self.oauth2_conn_id, limit_key=key(self.rate_limit_key),
            breaker_key=key(self.breaker_key), cacheable=False, max_sleep=3600.0,
            max_in_flight=self.max_in_flight, listeners=(progress,),
        )).get()  # fmt: skip
        variables = {
            **context,
            "results": UpstreamResults(ti),
            "conf": dict(getattr(context.get("dag_run"), "conf", None) or {}),
            "params": dict(context.get("params") or {}),
        }
        hook = ResilientHttpHook(method="GET", http_conn_id=self.http_conn_id)
        caller = ResilientCaller(
            hook.get_conn(), guard, timeout=self.timeout, send_options=compat.merged_extra(hook), log=progress
        )
        try:
            manifest = fetch_pages(
                caller, hook.url_from_endpoint(render(source.endpoint, variables)), source.pagination, ti=ti,
                owner=f"bulk {self.task_id!r}", params=render(source.query, variables),
                headers=render(source.headers, variables), progress=progress, results_url=self.results_url,
                kind="bulk_items", limit=False,
            )  # fmt: skip
        finally:
            caller.flush()
        return PagedItems(manifest)

    def execute(self, context: Context) -> dict[str, Any]:
        items = self._items(context)
        ti = context["ti"]
        base = connection_guard(
            self.http_conn_id, state_url=self.state_url, rate_limit=self.rate_limit, breaker=self.breaker,
            retry=self.retry, oauth2_conn_id=self.oauth2_conn_id, limit_key=self.rate_limit_key,
            breaker_key=self.breaker_key, cache=self.cache, method=self.method, max_sleep=3600.0,
            max_in_flight=self.max_in_flight, log_response=self.log_response,
        )  # fmt: skip
        guards = self._guards(base)
        keys = {
            name: template
            for name, template in (("rate_limit_key", self.rate_limit_key), ("breaker_key", self.breaker_key))
            if is_template(template)
        }  # rendered per item; else every call is under the one guard
        guard = guards.base if keys else guards.get()
        cache_key = base.cache.key if base.cache is not None else None
        base_key = task_key(ti)
        select = jmespath.compile(self.select) if self.select else None
        results = UpstreamResults(ti)
        fields = [self.endpoint, self.json, self.query, self.headers, cache_key, *keys.values()]
        for step in referenced_results(fields):
            results[step]  # pulled here, once, not from the engine's threads or event loop
        shared = {
            **context,
            "results": results,
            "conf": dict(getattr(context.get("dag_run"), "conf", None) or {}),
            "params": dict(context.get("params") or {}),
        }
        owner = f"bulk {self.task_id!r}"

        def request(base_url: str) -> Callable[[int], dict[str, Any]]:
            def one(index: int) -> dict[str, Any]:
                v = {**shared, "item": items[index], "index": index}

                def field(
                    name: str, value: Any, renderer: Callable[[Any, dict[str, Any]], Any] = render
                ) -> Any:
                    try:
                        return renderer(value, v)
                    except Exception as exc:  # any template error fails this item's row
                        shown = value if isinstance(value, str) else "{...}"  # a dict may hold a secret
                        why = f"did not render ({type(exc).__name__}: {exc})"
                        raise ConfigurationError(f"{owner} item {index}", name, shown, why) from None

                call = {
                    "method": self.method, "url": join_url(base_url, field("endpoint", self.endpoint)),
                    "json": field("json", self.json), "params": field("query", self.query),
                    "headers": field("headers", self.headers),
                    "idempotency_key": f"{base_key}-{index}" if self.method in UNSAFE_METHODS else None,
                    "cache_key": None if cache_key is None else str(field("cache.key", cache_key)),
                }  # fmt: skip
                if keys:
                    rendered = {name: field(name, template, render_key) for name, template in keys.items()}
                    call["guard"] = guards.get(rendered.get("rate_limit_key"), rendered.get("breaker_key"))
                return call

            return one

        started = time.monotonic()
        rows = self._rows(len(items), request, guard, select.search if select else None)
        first_error = None
        from airflow.sdk import ObjectStoragePath

        out = ObjectStoragePath(results_base(self.results_url)) / ti.dag_id / ti.run_id.replace("/", "_")
        out = out / f"{ti.task_id}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        failed, size, digest = 0, 0, hashlib.sha256()
        with out.open("wb") as fh:
            for row in rows:
                failed += not row["ok"]
                if not row["ok"] and first_error is None:
                    first_error = f"item {row['index']}: {row['error']}"
                line = (json.dumps(row, default=str) + "\n").encode()
                size += len(line)
                digest.update(line)
                fh.write(line)
        seconds = time.monotonic() - started
        summary = {
            "uri": str(out),  # readable from any worker when results_url is shared storage
            "path": out.path if out.protocol == "file" else str(out),
            "bytes": size,
            "checksum": digest.hexdigest(),
            "total": len(items),
            "succeeded": len(items) - failed,
            "failed": failed,
            "seconds": round(seconds, 3),
        }
        if keys:
            summary["keys"] = len(guards)  # the key pairs the items were limited and broken under
        self.log.info("bulk %s: %s", self.task_id, summary)
        allowed = allowed_failures(self.tolerate_failures, len(items))
        if failed > allowed:
            raise AirflowFailException(
                f"bulk {self.task_id!r}: {failed} of {len(items)} calls failed (see {out}); at most {allowed:g} "
                f"tolerated; the first: {first_error}"
            )
        return summary
