"""``ApiSyncOperator``: a recurring, incremental, resumable API sync into a table or object storage.

Every page is one guarded call (shared limiter and breaker, its own retries and ``Retry-After``);
each page's rows and the position are committed together, so an Airflow retry, a kill -9 or a
deferral resumes at the page that was not committed. XCom gets a small manifest; each outlet Asset
gets an asset event whose extra holds the window, the cursor and the row counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, Context

from api_orchestration import compat
from api_orchestration.calls.claims import claim_once
from api_orchestration.calls.connection_guard import check_oauth2_conn_id, connection_guard
from api_orchestration.calls.flow import DeferralNeeded
from api_orchestration.calls.pagination import Pagination
from api_orchestration.calls.requests_driver import ResilientCaller
from api_orchestration.connections import ResilientHttpHook
from api_orchestration.errors import ConfigurationError
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy, rate_limits
from api_orchestration.rendering import SandboxedTemplates
from api_orchestration.state import get_backend
from api_orchestration.syncs.engine import Source, run_sync
from api_orchestration.syncs.progress import Progress
from api_orchestration.syncs.sinks.base import Sink
from api_orchestration.syncs.sinks.files import FileSink
from api_orchestration.syncs.sinks.sql import PostgresSink, SqliteSink
from api_orchestration.syncs.stream import Stream, SyncMode

DESTINATION_HELP = (
    "must be '' or 'sqlite' (the embedded default), 'sqlite:///<path>', 'postgres://<airflow conn id>[/<schema>]', "
    "'files' (under [api_orchestration] results_url, else AIRFLOW_HOME) or an object-storage URI such as 'file:///data/syncs' or 's3://bucket/prefix'"
)


def sink_for(
    destination: str | None,
    *,
    columns: Mapping[str, Any] | None = None,
    keep_raw: bool = True,
    owner: str = "sync",
) -> Sink:
    """The sink a destination string names (see :data:`DESTINATION_HELP`)."""
    value = (destination or "").strip()
    if value in ("", "sqlite"):
        return SqliteSink(columns=columns, keep_raw=keep_raw)
    if value.startswith("sqlite:///"):
        return SqliteSink(value.removeprefix("sqlite:///"), columns=columns, keep_raw=keep_raw)
    if value.startswith(("postgres://", "postgresql://")):
        rest = value.split("://", 1)[1]
        if "@" in rest or ":" in rest:
            raise ConfigurationError(
                owner,
                "destination",
                "postgres://…",
                "must name an Airflow connection id, never credentials: postgres://<conn id>",
            )
        conn_id, _, schema = rest.partition("/")
        if not conn_id:
            raise ConfigurationError(owner, "destination", value, DESTINATION_HELP)
        return PostgresSink(conn_id, schema=schema or None, columns=columns, keep_raw=keep_raw)
    if value == "files":
        return FileSink()
    if "://" in value:
        return FileSink(value)
    raise ConfigurationError(owner, "destination", value, DESTINATION_HELP)


def page_caller(op: Any, progress: Any) -> tuple[ResilientHttpHook, ResilientCaller]:
    """The connection's hook and a caller sending pages through the guard of ``op``'s policies.

    ``op`` has the resilience attributes of :class:`ApiSyncOperator` (``http_conn_id``,
    ``oauth2_conn_id``, ``rate_limit``, ``breaker``, ``retry``, their keys, ``max_sleep``,
    ``on_circuit_open``, ``max_in_flight``, ``timeout``, ``state_url``); ``progress`` hears every
    attempt and gets the caller's log lines. A page is never served from a response cache.
    """
    hook = ResilientHttpHook(method="GET", http_conn_id=op.http_conn_id)  # policy fields are no headers
    session = hook.get_conn()
    guard = connection_guard(
        op.http_conn_id, state_url=op.state_url, rate_limit=op.rate_limit, breaker=op.breaker, retry=op.retry,
        oauth2_conn_id=op.oauth2_conn_id, limit_key=op.rate_limit_key, breaker_key=op.breaker_key,
        cacheable=False, max_sleep=op.max_sleep, on_circuit_open=op.on_circuit_open,
        max_in_flight=op.max_in_flight, listeners=(progress,),
    )  # fmt: skip
    claim_once(op, guard)  # one key, one policy: once per task execution
    caller = ResilientCaller(
        session, guard, timeout=op.timeout, send_options=compat.merged_extra(hook), log=progress
    )
    return hook, caller


class ApiSyncOperator(SandboxedTemplates, BaseOperator):
    """Sync a paginated collection into a table or object storage, incrementally and resumably.

    :param endpoint: path on the connection's base URL (templated).
    :param http_conn_id: Airflow HTTP connection (host, credentials, headers).
    :param pagination: how the collection pages (:class:`Pagination`).
    :param stream: primary key, cursor, mode, lookback (:class:`Stream`).
    :param destination: where rows go (templated): '' / 'sqlite', 'sqlite:///<path>',
        'postgres://<conn id>[/<schema>]', 'files' or an object-storage URI.
    :param columns: a declared schema ``{field: integer|number|boolean|text|timestamp|json}``; without
        one, columns are inferred and new fields add columns.
    :param keep_raw: keep each whole record as JSON in ``_raw``.
    :param query, headers: fixed query parameters and headers (templated).
    :param oauth2_conn_id: an OAuth2 client connection: every page carries its token, shared by
        every worker (default: the ``resilient_http`` connection's ``oauth2_conn_id``; templated).
    :param manual_window: the window of a run without a data interval (triggered with no logical
        date) in interval mode: the last ``manual_window`` before the run started.
    :param partition: the stream partition this task syncs (templated; overrides ``stream.partition``):
        one task per parent record, e.g. ``ApiSyncOperator.partial(...).expand_kwargs([{"endpoint":
        "/repos/a/issues", "partition": "a"}, ...])``; state, checkpoints and marks are per partition.
    :param item: the partition's item (a builder or spec ``partitions`` fan-out), ``{{ item }}`` in
        templated fields.
    :param progress_every: seconds between progress lines.
    The resilience parameters are those of :class:`ResilientHttpOperator`.
    """

    template_fields: Sequence[str] = (
        "endpoint",
        "destination",
        "query",
        "headers",
        "http_conn_id",
        "oauth2_conn_id",
        "partition",
    )
    template_fields_renderers = {"query": "json", "headers": "json"}
    ui_color = "#e8fff0"

    def __init__(
        self,
        *,
        endpoint: str,
        pagination: Pagination,
        stream: Stream,
        http_conn_id: str = "http_default",
        destination: str | None = None,
        columns: Mapping[str, Any] | None = None,
        keep_raw: bool = True,
        query: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        oauth2_conn_id: str | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        rate_limit: RateLimit | Sequence[RateLimit] | None = None,
        rate_limit_key: str | None = None,
        breaker: BreakerPolicy | None = None,
        breaker_key: str | None = None,
        retry: RetryPolicy | None = None,
        max_in_flight: int | None = None,
        max_sleep: float = 10.0,
        on_circuit_open: str = "fail",
        manual_window: timedelta = timedelta(hours=24),
        partition: str | None = None,
        item: Any = None,
        progress_every: float = 5.0,
        state_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        owner = f"task {self.task_id!r}"
        checks = (
            ("pagination", pagination, Pagination, "must be a Pagination(style=...)"),
            ("stream", stream, Stream, "must be a Stream(name=..., primary_key=...)"),
            ("breaker", breaker, (BreakerPolicy, type(None)), "must be a BreakerPolicy(...)"),
            ("retry", retry, (RetryPolicy, type(None)), "must be a RetryPolicy(...)"),
            ("manual_window", manual_window, timedelta, "must be a timedelta"),
        )
        for name, value, kind, expected in checks:
            if not isinstance(value, kind):
                raise ConfigurationError(owner, name, value, expected)
        check_oauth2_conn_id(owner, oauth2_conn_id)
        rate_limit = rate_limits(rate_limit, owner)  # one window, or several
        if on_circuit_open not in ("fail", "defer"):
            raise ConfigurationError(owner, "on_circuit_open", on_circuit_open, "must be 'fail' or 'defer'")
        if destination and "{{" not in destination:
            sink_for(destination, owner=owner)  # a bad destination fails at parse time
        sink_for("", columns=columns, owner=owner)  # validates the declared columns
        self.endpoint, self.http_conn_id = endpoint, http_conn_id
        self.pagination, self.stream = pagination, stream
        self.destination, self.columns, self.keep_raw = destination, dict(columns or {}), keep_raw
        self.query, self.headers, self.timeout = query, headers, timeout
        self.oauth2_conn_id = oauth2_conn_id
        self.rate_limit, self.rate_limit_key = rate_limit, rate_limit_key
        self.breaker, self.breaker_key = breaker, breaker_key
        self.retry = retry  # None: the connection's (a resilient_http connection), else RetryPolicy()
        self.max_in_flight = max_in_flight
        self.max_sleep, self.on_circuit_open = float(max_sleep), on_circuit_open
        self.manual_window, self.progress_every, self.state_url = manual_window, progress_every, state_url
        self.partition, self.item = partition, item

    def template_context(self, context: Any) -> None:
        # plain and mapped tasks render through here; a mapped task's item is set by now
        context["item"] = self.item

    # -- execution --------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        return self._run(context)

    def execute_resume(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resume after a deferral: the checkpoint says which page comes next."""
        self.log.info("resumed after deferral (%s); continuing at the checkpointed page", event)
        return self._run(context)

    def _interval(self, context: Context) -> tuple[dt.datetime | None, dt.datetime | None] | None:
        if self.stream.mode is not SyncMode.INTERVAL:
            return None
        if self.stream.cursor_field is None:  # a full refresh: no window to fetch
            return None, None
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None:  # triggered with no logical date
            now = pendulum.now("UTC")
            return now - self.manual_window, now
        if end <= start:
            raise ConfigurationError(
                f"task {self.task_id!r}",
                "schedule",
                f"data interval {start}..{end}",
                "gives an empty data interval; interval mode needs CronDataIntervalTimetable (airflow.sdk) or "
                "another timetable with real intervals (Airflow 3's cron default, CronTriggerTimetable, has none)",
            )
        return start, end

    def _run(self, context: Context) -> dict[str, Any]:
        if self.partition:
            self.stream = dataclasses.replace(self.stream, partition=str(self.partition))
        label = f"{self.stream.name}" + (f"[{self.stream.partition}]" if self.stream.partition else "")
        progress = Progress(self.log, f"sync {label}", every=self.progress_every)
        hook, caller = page_caller(self, progress)
        source = Source(hook.url_from_endpoint(self.endpoint), self.pagination, self.query, self.headers)
        sink = sink_for(
            self.destination, columns=self.columns, keep_raw=self.keep_raw, owner=f"task {self.task_id!r}"
        )
        try:
            manifest = run_sync(
                caller,
                source,
                self.stream,
                sink,
                run_id=context["run_id"],
                interval=self._interval(context),
                progress=progress,
            )
        except DeferralNeeded as wait:
            caller.flush()
            self.log.info(
                "%s; deferring %.2f s to the triggerer: %s", progress.line(), wait.seconds, wait.reason
            )
            self.defer(
                trigger=DateTimeTrigger(moment=pendulum.now("UTC").add(seconds=wait.seconds)),
                method_name="execute_resume",
                timeout=timedelta(seconds=wait.seconds + 3600),
            )
        finally:
            caller.flush()
            sink.close()
        self.log.info("%s; stopped on %s", progress.line(final=True), manifest.stop or "the last page")
        result = manifest.as_dict()
        self._emit_asset_events(context, result)
        self._record_run(context, result)
        return result

    def _record_run(self, context: Context, manifest: dict[str, Any]) -> None:
        """The stream's last run, for the status page (best effort: the sync itself succeeded)."""
        key = manifest["stream"] + (f"[{manifest['partition']}]" if manifest["partition"] else "")
        ti = context.get("ti")
        entry = {
            "key": key,
            "at": time.time(),
            "dag_id": getattr(ti, "dag_id", None),
            "run_id": context.get("run_id"),
            **{
                k: manifest[k]
                for k in ("uri", "window", "cursor", "rows", "pages", "stop", "resumed_at_page")
            },
        }
        try:
            get_backend(self.state_url).stream_record(key, entry)
        except Exception as exc:  # the state store is down: the rows are written all the same
            self.log.warning("could not record the sync's status for the status page: %s", exc)

    def _emit_asset_events(self, context: Context, manifest: dict[str, Any]) -> None:
        from airflow.sdk import Asset

        extra = {
            "stream": manifest["stream"],
            "partition": manifest["partition"],
            "uri": manifest["uri"],
            "window": manifest["window"],
            "cursor": manifest["cursor"],
            "rows": manifest["rows"],
            "pages": manifest["pages"],
        }
        events = context.get("outlet_events")
        for outlet in self.outlets or ():
            if isinstance(outlet, Asset) and events is not None:
                events[outlet].extra = extra
