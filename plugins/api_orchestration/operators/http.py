"""``ResilientHttpOperator``: one HTTP call, rate-limited, circuit-broken, retried, idempotent."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, NoReturn

import requests
from airflow.sdk import BaseOperator, Context

from api_orchestration import compat
from api_orchestration.calls.claims import claim_once
from api_orchestration.calls.connection_guard import check_oauth2_conn_id, connection_guard
from api_orchestration.calls.flow import DeferralNeeded
from api_orchestration.calls.guard import Guard, OnCircuitOpen
from api_orchestration.calls.idempotency import DEFAULT_HEADER, task_key
from api_orchestration.calls.pagination import Pagination
from api_orchestration.calls.requests_driver import ResilientCaller
from api_orchestration.calls.responses import default_response_filter
from api_orchestration.connections import ResilientHttpHook
from api_orchestration.errors import (
    CircuitOpenError,
    ConfigurationError,
    HttpCallError,
    ResponseCheckError,
    StateBackendError,
)
from api_orchestration.operators.paging import fetch_pages, xcom_value
from api_orchestration.operators.resume import Resume, ResumeTrigger
from api_orchestration.operators.templates import UpstreamResults
from api_orchestration.policy import BreakerPolicy, CachePolicy, RateLimit, RetryPolicy, rate_limits
from api_orchestration.redaction import (
    connection_secrets,
    mask_secrets,
    redact_url,
    register_secrets,
    request_secrets,
)
from api_orchestration.rendering import SandboxedTemplates
from api_orchestration.syncs.progress import Progress

__all__ = ["ResilientHttpOperator", "default_response_filter"]
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
CALL_FAILURES = (HttpCallError, CircuitOpenError, StateBackendError)  # what on_call_failed sees


def _check_pagination(
    owner: str, pagination: Any, method: str, response_check: Any, response_filter: Any, cache: Any
) -> None:
    if pagination is None:
        return
    if not isinstance(pagination, Pagination):
        raise ConfigurationError(owner, "pagination", pagination, "must be a Pagination(style=...) or None")
    if method != "GET":
        raise ConfigurationError(owner, "method", method, "must be GET with pagination: pages are read")
    for name, value, fix in (
        (
            "response_check",
            response_check,
            "a page that fails is retried by the flow; check the records downstream",
        ),
        ("response_filter", response_filter, "pick each page's records with Pagination(records=<JMESPath>)"),
        ("cache", cache, "pages are read anew on every run"),
    ):
        if value is not None:
            raise ConfigurationError(owner, name, value, f"must not be set with pagination: {fix}")


def _check_type(owner: str, param: str, value: Any, types: type | tuple[type, ...], expected: str) -> None:
    if value is not None and not isinstance(value, types):
        raise ConfigurationError(owner, param, value, expected)


@dataclass(frozen=True)
class CallSpec:
    """One request of a task: the operator's own, or a step's fallback (each with its own keys)."""

    endpoint: str
    method: str
    http_conn_id: str
    json: Any = None
    data: Any = None
    query: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    rate_limit_key: str | None = None
    breaker_key: str | None = None
    idempotency_key: str | None = None  # resolved: None sends none
    cache_key: str | None = None  # rendered CachePolicy.key (None: the method and full URL)
    oauth2_conn_id: str | None = None  # the OAuth2 connection whose shared token the call sends


class ResilientHttpOperator(SandboxedTemplates, BaseOperator):
    """Call an HTTP API through an Airflow HTTP Connection, guarded by a shared rate limiter and
    circuit breaker, with in-task retries (exponential backoff, full jitter, ``Retry-After``) and an
    idempotency key that is the same for every retry of the task instance.

    :param endpoint: path appended to the connection's base URL (templated).
    :param method: HTTP method.
    :param http_conn_id: Airflow Connection (type ``resilient_http`` or ``http``) with host, credentials
        and headers (templated).
    :param json: JSON body (templated).
    :param data: form body or raw text (templated); not together with ``json``.
    :param query: query-string parameters (templated; ``params`` is Airflow's DAG params).
    :param headers: extra headers (templated).
    :param timeout: seconds, or ``(connect, read)``; default ``(10, 60)``.
    :param rate_limit: :class:`RateLimit` shared by every task using ``rate_limit_key``, or a list
        of them (several windows held at once, e.g. ``[RateLimit(10, 1.0), RateLimit(5000, 3600.0,
        burst=5000)]``); default: the connection's (a ``resilient_http`` connection's form fields), else none.
    :param rate_limit_key: default: the connection id (templated: a key per tenant or account, e.g.
        ``"crm:{{ params.tenant }}"``).
    :param max_in_flight: the bulkhead: at most this many calls in flight under ``rate_limit_key``,
        across all workers (default: no cap).
    :param breaker: :class:`BreakerPolicy` shared by every task using ``breaker_key``; default: the
        connection's, else none.
    :param breaker_key: default: the connection id (templated).
    :param retry: :class:`RetryPolicy` for retries inside one task try; default: the connection's,
        else ``RetryPolicy()``.
    :param idempotency_key: ``None`` (default): derived from dag, run, task and map index for
        POST/PUT/PATCH/DELETE; a string (templated) to set it; ``False`` to send none.
    :param idempotency_header: header name, default ``Idempotency-Key``.
    :param max_sleep: waits up to this many seconds sleep in the worker; longer ones defer to the triggerer.
    :param on_circuit_open: ``"fail"`` (raise :class:`CircuitOpenError`) or ``"defer"`` until half-open.
    :param response_check: ``f(response) -> bool``; False fails the task. Like providers-http's
        ``HttpOperator``, it may also name task-context keys: ``lambda response, ti: ...``.
    :param response_filter: ``f(response) -> value`` pushed to XCom (default: JSON or text); may
        name context keys as ``response_check`` does.
    :param cache: :class:`CachePolicy`: GET/HEAD responses shared by every worker through the state
        store (``Cache-Control``, ``ETag`` revalidation; a hit makes no call and spends no permit);
        its ``key`` is a template rendered with the task context.
    :param log_response: log successful bodies (truncated to about 2 KB, credentials redacted), as
        error bodies always are.
    :param extra_options: providers-http request options for ``HttpHook.get_conn``.
    :param auth_type: providers-http ``auth_type`` (default: HTTP basic from the connection's login).
    :param oauth2_conn_id: an OAuth2 client connection (see the README's "OAuth2 connections"): every
        attempt sends its access token, shared by every worker through the state store; a 401 gets
        one new token and one retry (templated).
    :param state_url: override ``[api_orchestration] state_url`` for this task.
    :param pagination: page through a collection (GET only; :class:`Pagination`): every page is one
        guarded call, written with its position to JSON-lines files under ``[api_orchestration]
        results_url``, so an Airflow retry or a deferral resumes at the page that failed. XCom gets
        the records of every page (``output="records"``, up to ``max_xcom_bytes``) or the files'
        manifest (``output="manifest"``; read it with ``iter_records``). Not with ``response_check``,
        ``response_filter`` or ``cache``.

    Templates render in a sandbox (:mod:`api_orchestration.rendering`); with native rendering a
    template that is one expression keeps its value's type. Secret-looking request values and the
    connection's credentials are masked in logs, rendered fields and the XCom value.
    """

    template_fields: Sequence[str] = (
        "endpoint",
        "json",
        "data",
        "query",
        "headers",
        "idempotency_key",
        "http_conn_id",
        "oauth2_conn_id",
        "rate_limit_key",
        "breaker_key",
        "cache_key",
    )
    template_fields_renderers = {"json": "json", "headers": "json", "query": "json"}
    ui_color = "#e8f4ff"
    first_phase = "call"  # the phase execute() starts with

    def __init__(
        self,
        *,
        endpoint: str,
        method: str = "GET",
        http_conn_id: str = "http_default",
        json: Any = None,
        data: Any = None,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        rate_limit: RateLimit | Sequence[RateLimit] | None = None,
        rate_limit_key: str | None = None,
        max_in_flight: int | None = None,
        breaker: BreakerPolicy | None = None,
        breaker_key: str | None = None,
        retry: RetryPolicy | None = None,
        idempotency_key: str | bool | None = None,
        idempotency_header: str = DEFAULT_HEADER,
        max_sleep: float = 10.0,
        on_circuit_open: str = "fail",
        response_check: Callable[..., bool] | None = None,
        response_filter: Callable[..., Any] | None = None,
        extra_options: dict[str, Any] | None = None,
        auth_type: Any = None,
        oauth2_conn_id: str | None = None,
        state_url: str | None = None,
        cache: CachePolicy | None = None,
        log_response: bool = False,
        pagination: Pagination | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        method = str(method).upper()
        owner = f"task {self.task_id!r}"
        _check_pagination(owner, pagination, method, response_check, response_filter, cache)
        check_oauth2_conn_id(owner, oauth2_conn_id, auth_type)
        if method not in METHODS:
            raise ConfigurationError(owner, "method", method, f"must be one of {', '.join(METHODS)}")
        rate_limit = rate_limits(rate_limit, owner)  # one window, or a list: several on one key
        _check_type(owner, "breaker", breaker, BreakerPolicy, "must be a BreakerPolicy(...)")
        _check_type(owner, "retry", retry, RetryPolicy, "must be a RetryPolicy(...)")
        _check_type(owner, "cache", cache, CachePolicy, "must be a CachePolicy(ttl, key=..., methods=...)")
        _check_type(owner, "log_response", log_response, bool, "must be True or False")
        if cache is not None and method not in cache.methods:
            raise ConfigurationError(
                owner,
                "cache",
                method,
                f"caches only {', '.join(cache.methods)} responses; remove cache from this {method} call",
            )
        for name, fn in (("response_check", response_check), ("response_filter", response_filter)):
            if fn is not None and not callable(fn):
                raise ConfigurationError(
                    owner, name, fn, "must be a callable: f(response) or f(response, ti)"
                )
        _check_type(
            owner,
            "idempotency_key",
            idempotency_key,
            (str, bool),
            "must be None, False or a (templated) string",
        )
        if idempotency_key is True:
            raise ConfigurationError(
                owner, "idempotency_key", True, "must be None (derived), False or a string"
            )
        if on_circuit_open not in tuple(OnCircuitOpen):
            raise ConfigurationError(owner, "on_circuit_open", on_circuit_open, "must be 'fail' or 'defer'")
        if not (isinstance(max_sleep, int | float) and max_sleep >= 0):
            raise ConfigurationError(owner, "max_sleep", max_sleep, "must be a number of seconds >= 0")
        if max_in_flight is not None and not (
            isinstance(max_in_flight, int) and not isinstance(max_in_flight, bool) and max_in_flight >= 1
        ):
            raise ConfigurationError(owner, "max_in_flight", max_in_flight, "must be None or an integer >= 1")
        parts = timeout if isinstance(timeout, tuple) else (timeout,)
        if not all(isinstance(t, int | float) and t > 0 for t in parts) or len(parts) > 2:
            raise ConfigurationError(
                owner, "timeout", timeout, "must be seconds > 0 or a (connect, read) pair"
            )
        if json is not None and data is not None:
            raise ConfigurationError(owner, "json/data", "both", "must not both be set: send one body")
        self.endpoint, self.method, self.http_conn_id = endpoint, method, http_conn_id
        self.json, self.data, self.query, self.headers = json, data, query, headers
        self.timeout = timeout
        self.rate_limit, self.rate_limit_key, self.max_in_flight = rate_limit, rate_limit_key, max_in_flight
        self.breaker, self.breaker_key = breaker, breaker_key
        self.retry = retry  # None: the connection's, else RetryPolicy()
        self.idempotency_key, self.idempotency_header = idempotency_key, idempotency_header
        self.max_sleep, self.on_circuit_open = float(max_sleep), on_circuit_open
        self.response_check, self.response_filter = response_check, response_filter
        self.extra_options, self.auth_type, self.state_url = extra_options or {}, auth_type, state_url
        self.oauth2_conn_id = oauth2_conn_id
        self.cache, self.log_response = cache, log_response
        self.cache_key = cache.key if cache is not None else None  # a template, rendered with the task
        self.pagination = pagination

    # -- what is called -------------------------------------------------------------------------------
    def template_context(self, context: Any) -> None:
        # ``{{ results.<step> }}``: upstream results, pulled only when a template reads them
        context.setdefault("results", UpstreamResults(context["ti"]))

    def after_rendering(self, context: Any) -> None:
        # masked in the rendered fields Airflow stores next, and in logs from now on
        register_secrets(request_secrets(self.endpoint, self.query, self.headers, self.json))

    def own_key(self, context: Context) -> str | None:
        """This task's idempotency key (None: send none)."""
        if self.idempotency_key is False:
            return None
        if isinstance(self.idempotency_key, str) and self.idempotency_key:
            return self.idempotency_key
        if self.method not in UNSAFE_METHODS:
            return None
        return task_key(context["ti"])

    def call_spec(self, context: Context, phase: str) -> CallSpec:
        """The request of ``phase`` (the operator's own: ``call``)."""
        if phase != "call":
            raise ValueError(f"task {self.task_id!r} has no call phase {phase!r}")
        return CallSpec(
            self.endpoint, self.method, self.http_conn_id, self.json, self.data, self.query, self.headers,
            self.rate_limit_key, self.breaker_key, self.own_key(context), self.cache_key,
            oauth2_conn_id=self.oauth2_conn_id,
        )  # fmt: skip

    # -- execution --------------------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        return self.run_phase(context, Resume(self.first_phase))

    def execute_resume(self, context: Context, event: Any = None, attempt: int = 1, **_: Any) -> Any:
        """Resume after a deferral (a long limiter, breaker or Retry-After wait), where it left off."""
        resume = Resume.from_event(event, attempt)
        self.log.info("resumed after deferral; continuing the %s at attempt %d", resume.phase, resume.attempt)
        return self.run_phase(context, resume)

    def run_phase(self, context: Context, resume: Resume) -> Any:
        """Make (or continue) the call of ``resume.phase``; its outcome goes to :meth:`on_call_failed`
        or :meth:`on_call_succeeded`. The same path runs with or without a deferral in between."""
        spec = self.call_spec(context, resume.phase)
        paged = self.pagination is not None and resume.phase == "call"
        try:
            outcome = self._pages(context, spec, resume) if paged else self._call(spec, resume)
        except CALL_FAILURES as exc:
            return self.on_call_failed(context, resume.phase, exc)
        if paged:
            return self.on_pages_done(context, outcome)
        return self.on_call_succeeded(context, resume.phase, spec, outcome)

    def on_call_failed(self, context: Context, phase: str, error: Exception) -> Any:
        """A call of ``phase`` failed for good (subclasses: a fallback, a loud compensation failure)."""
        raise error

    def on_call_succeeded(self, context: Context, phase: str, spec: CallSpec, response: Any) -> Any:
        check, keep = self.response_check, self.response_filter or default_response_filter
        if check is not None and not check(response, **compat.context_kwargs(check, [response], context)):
            url = redact_url(spec.endpoint)
            raise ResponseCheckError(
                f"response_check returned False for {spec.method} {url} (status {response.status_code})",
                method=spec.method,
                url=url,
            )
        # an echoed credential never reaches XCom: the connection's and the request's are masked
        return mask_secrets(keep(response, **compat.context_kwargs(keep, [response], context)))

    def on_pages_done(self, context: Context, manifest: dict[str, Any]) -> Any:
        """Every page is written: the records of all pages, or the manifest (``pagination.output``)."""
        assert self.pagination is not None
        return mask_secrets(xcom_value(manifest, self.pagination))

    def defer_resume(self, seconds: float, resume: Resume) -> NoReturn:
        """Free the worker slot: the triggerer waits ``seconds``, then :meth:`execute_resume`
        continues at ``resume`` (the caller has logged why)."""
        self.defer(
            trigger=ResumeTrigger.after(seconds, resume),
            method_name="execute_resume",
            timeout=timedelta(seconds=seconds + 3600),
        )

    def guard(self, spec: CallSpec) -> Guard:
        return connection_guard(
            spec.http_conn_id, state_url=self.state_url, rate_limit=self.rate_limit, breaker=self.breaker,
            retry=self.retry, oauth2_conn_id=spec.oauth2_conn_id, limit_key=spec.rate_limit_key,
            breaker_key=spec.breaker_key, cache=self.cache, method=spec.method, max_sleep=self.max_sleep,
            on_circuit_open=self.on_circuit_open, max_in_flight=self.max_in_flight,
            log_response=self.log_response,
        )  # fmt: skip

    def _caller(
        self, spec: CallSpec, progress: Progress | None = None
    ) -> tuple[ResilientHttpHook, ResilientCaller]:
        hook = ResilientHttpHook(method=spec.method, http_conn_id=spec.http_conn_id, auth_type=self.auth_type)
        register_secrets(connection_secrets(hook.get_connection(spec.http_conn_id)))
        session = hook.get_conn(extra_options=self.extra_options)
        guard = self.guard(spec)
        if progress is not None:  # counts failed attempts and limiter waits for the progress lines
            guard = replace(guard, listeners=(*guard.listeners, progress))
        claim_once(self, guard)  # one key, one policy: once per task execution
        caller = ResilientCaller(
            session,
            guard,
            timeout=self.timeout,
            send_options=compat.merged_extra(hook),
            log=progress or self.log,
        )
        return hook, caller

    def _pages(self, context: Context, spec: CallSpec, resume: Resume) -> dict[str, Any]:
        """Every page of the call (see :mod:`~api_orchestration.operators.paging`); the manifest."""
        assert self.pagination is not None
        progress = Progress(self.log, f"pages of {self.task_id}")
        hook, caller = self._caller(spec, progress)
        try:
            return fetch_pages(
                caller,
                hook.url_from_endpoint(spec.endpoint),
                self.pagination,
                ti=context["ti"],
                owner=f"task {self.task_id!r}",
                params=spec.query,
                headers=spec.headers,
                progress=progress,
            )
        except DeferralNeeded as wait:  # the checkpoint says which page comes next
            caller.flush()
            self.log.info("%s; deferring %.2f s: %s", progress.line(), wait.seconds, wait.reason)
            self.defer_resume(wait.seconds, replace(resume, attempt=1))
        finally:
            caller.flush()

    def _call(self, spec: CallSpec, resume: Resume) -> requests.Response:
        hook, caller = self._caller(spec)
        try:
            return caller.call(
                spec.method,
                hook.url_from_endpoint(spec.endpoint),
                params=spec.query,
                json=spec.json,
                data=spec.data,
                headers=spec.headers,
                idempotency_key=spec.idempotency_key,
                idempotency_header=self.idempotency_header,
                first_attempt=resume.attempt,
                cache_key=spec.cache_key,
            )
        except DeferralNeeded as wait:
            caller.flush()
            self.defer_resume(wait.seconds, replace(resume, attempt=wait.attempt))  # logged by the flow
        finally:
            caller.flush()
