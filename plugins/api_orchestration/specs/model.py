"""The typed shape of a workflow spec (pydantic): types and known fields only.

Value rules (ranges, cross-field rules, graph rules) live once, in the policy and workflow
dataclasses that Python DAGs use too; :mod:`api_orchestration.specs.convert` reports their
errors at the spec's field paths.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic_core import PydanticCustomError


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _list_or_expression(value: Any) -> Any:
    if isinstance(value, list) or (isinstance(value, str) and value.strip()):
        return value
    raise PydanticCustomError("over", "must be a list of items or a JMESPath string")


def _date(value: Any) -> Any:
    if value is None or isinstance(value, dt.date | str):
        return value
    raise PydanticCustomError("date", "must be a date such as 2026-01-01")


def _step_names(schema: dict[str, Any]) -> None:
    """A step name or a list of them."""
    schema.pop("type", None)
    schema.pop("items", None)
    schema["anyOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]


_OVER = {"anyOf": [{"type": "array"}, {"type": "string", "minLength": 1}]}


class RetrySpec(_Spec):
    """Retries inside one task try (``RetryPolicy``): exponential backoff, full jitter, ``Retry-After``."""

    max_attempts: int | None = Field(None, description="attempts per task try, >= 1 (default 3)")
    base_delay: float | None = Field(None, description="seconds before the first retry's jitter cap (0.5)")
    max_delay: float | None = Field(None, description="cap on the backoff, seconds (30)")
    multiplier: float | None = Field(None, description="backoff growth per attempt (2)")
    retry_statuses: list[int] | None = Field(None, description="408, 429 and 5xx codes to retry")
    retry_transport_errors: bool | None = None
    retry_timeouts: bool | None = None
    respect_retry_after: bool | None = None
    max_retry_after: float | None = Field(None, description="longest Retry-After honoured, seconds (600)")


class RateLimitSpec(_Spec):
    """At most ``permits`` calls per ``per_seconds``, shared by every worker using the step's key."""

    permits: int = Field(description="calls allowed per period, >= 1")
    per_seconds: float | None = Field(None, description="the period, seconds (1)")
    burst: int | None = Field(None, description="calls that may start back to back (1)")
    margin: float | None = Field(None, description="fraction of the period kept free (0.02)")


def _window_count(value: Any) -> str:
    return "windows" if isinstance(value, list) else "one window"


# one window (a mapping) or several held at once (a list of mappings); the tags never reach a field path
RateLimitsSpec = Annotated[
    Annotated[RateLimitSpec, Tag("one window")] | Annotated[list[RateLimitSpec], Tag("windows")],
    Discriminator(_window_count),
]


class BreakerSpec(_Spec):
    """Circuit breaker over a count-based window, shared by every worker using the step's key."""

    failure_rate: float | None = Field(None, description="fraction of failures that opens it (0.5)")
    window_size: int | None = Field(None, description="calls in the window (20)")
    min_calls: int | None = Field(None, description="calls needed before it can open (10)")
    open_seconds: float | None = Field(None, description="seconds open before half-open (30)")
    half_open_calls: int | None = Field(None, description="trial calls when half-open (1)")
    slow_call_seconds: float | None = Field(None, description="calls slower than this count as failures")
    half_open_timeout: float | None = Field(None, description="seconds to wait for trial verdicts (120)")


class PaginateSpec(_Spec):
    """How the call's collection pages: one guarded call per page, resumable at the page that failed.
    On an ordinary step the result is the records of every page (or a manifest); on a sync step the
    pages go to its sink."""

    style: str = Field(description="cursor, offset, page_number, link_header or next_url")
    records: str | None = Field(None, description="JMESPath to the records in the body (default: the body)")
    page_size: int | None = Field(None, description="records per page, sent as size_param")
    size_param: str | None = Field(None, description="query parameter of the page size, e.g. per_page, limit")
    cursor_path: str | None = Field(
        None, description="cursor style: JMESPath to the next cursor, e.g. data[-1].id"
    )
    cursor_param: str | None = Field(None, description="cursor style: query parameter it is sent as")
    offset_param: str | None = Field(None, description="offset style: the offset parameter (offset)")
    page_param: str | None = Field(None, description="page_number style: the page parameter (page)")
    first_page: int | None = Field(None, description="page_number style: the first page's number (1)")
    next_url_path: str | None = Field(None, description="next_url style: JMESPath to the next URL")
    has_more_path: str | None = Field(None, description="JMESPath to a has-more flag; false stops")
    total_path: str | None = Field(None, description="JMESPath to the total; reaching it stops")
    max_pages: int | None = Field(None, description="stop after this many pages")
    stop_on_empty: bool | None = Field(None, description="an empty page stops (true)")
    output: str | None = Field(
        None,
        description="ordinary steps: records (every page's records in the result, default) or manifest "
        "(the URIs of the JSON-lines files holding them; any size)",
    )
    max_xcom_bytes: int | None = Field(
        None, description="records output: page bodies allowed in the result, bytes (1,048,576)"
    )


class CacheSpec(_Spec):
    """A response cache shared by every worker (``CachePolicy``): GET/HEAD responses kept ``ttl``
    seconds at most, ``Cache-Control`` and ``ETag`` honoured."""

    ttl: float = Field(description="seconds a response is kept at most (the server may say less)")
    key: str | None = Field(None, description="entry key template (default: the method and full URL)")
    methods: list[str] | None = Field(None, description="GET and/or HEAD (default both)")
    max_entry_bytes: int | None = Field(None, description="larger responses are not stored (1,000,000)")
    max_total_bytes: int | None = Field(
        None, description="bytes kept per key; the entries nearest expiry are evicted first (64,000,000)"
    )


class CallSpec(_Spec):
    """One HTTP request through an Airflow HTTP Connection. Strings are Jinja templates."""

    method: str = Field("GET", description="GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS")
    path: str = Field(description="appended to the connection's base URL, e.g. /orders/{{ params.id }}")
    conn_id: str | None = Field(None, description="Airflow Connection id (default: defaults.conn_id)")
    oauth2_conn_id: str | None = Field(
        None, description="OAuth2 client Connection id whose shared token the call sends (default: defaults')"
    )
    headers: dict[str, str] | None = Field(
        None, description="extra headers; credentials belong in the Connection"
    )
    query: dict[str, Any] | None = Field(None, description="query-string parameters")
    body: Any = Field(None, alias="json", description="JSON body (any YAML value; strings are templates)")
    paginate: PaginateSpec | None = Field(
        None, description="page through the collection (GET): the result is every page's records"
    )
    idempotency_key: str | None = Field(
        None,
        description="Idempotency-Key template, e.g. order-{{ params.order_id }}-charge: a business id "
        "makes the same order act once however often it is triggered (default: one key per run)",
    )


class ParentCallSpec(_Spec):
    """The paginated GET whose records are a sync's partitions (e.g. an org's repositories)."""

    path: str = Field(description="appended to the connection's base URL, e.g. /orgs/acme/repos")
    conn_id: str | None = Field(None, description="Airflow Connection id (default: the sync call's)")
    oauth2_conn_id: str | None = Field(
        None, description="OAuth2 client Connection id (default: the sync call's)"
    )
    headers: dict[str, str] | None = Field(None, description="extra headers")
    query: dict[str, Any] | None = Field(None, description="query-string parameters")
    paginate: PaginateSpec = Field(description="how the listing pages")


class PartitionsSpec(_Spec):
    """Sync once per partition (a mapped task each): its own cursor, checkpoint, rows, status row."""

    over: Any = Field(
        None,
        description="a list, or a JMESPath over conf, params and results, e.g. conf.repos",
        json_schema_extra=_OVER,
    )
    parent: ParentCallSpec | None = Field(
        None, description="a paginated GET whose records are the partitions (instead of over)"
    )
    key: str | None = Field(
        None, description="JMESPath giving each item's label, e.g. name (default: the item itself)"
    )
    max_active: int | None = Field(None, description="partitions syncing at once (8)")
    max_partitions: int | None = Field(None, description="more partitions fail the step (1000)")


class SyncSpec(_Spec):
    """The step's paginated GET becomes a recurring, incremental, resumable sync into a sink."""

    stream: str = Field(description="the table (SQL) or folder (files): letters, digits and _")
    primary_key: list[str] = Field(
        description="the field(s) identifying a record", json_schema_extra=_step_names
    )
    cursor_field: str | None = Field(None, description="the field that moves on change, e.g. updated_at")
    cursor_kind: str | None = Field(None, description="timestamp (default) or integer")
    mode: str | None = Field(None, description="interval (the run's data interval, default) or cursor")
    start: Any = Field(
        None,
        description="cursor mode: the first start value",
        json_schema_extra={"type": ["string", "integer", "null"]},
    )
    lookback_seconds: float | None = Field(
        None, description="re-read this long before the mark (timestamp cursor)"
    )
    lookback: int | None = Field(None, description="re-read this much before the mark (integer cursor)")
    since_param: str | None = Field(None, description="query parameter receiving the window start")
    until_param: str | None = Field(None, description="query parameter receiving the window end")
    param_format: str | None = Field(None, description="iso (default), iso_z or epoch")
    ordered: bool | None = Field(
        None, description="records come in ascending cursor order: stop past the window"
    )
    partition: str | None = Field(None, description="a label: state is per stream and partition")
    destination: str | None = Field(
        None,
        description="'' (SQLite), sqlite:///<path>, postgres://<conn id>[/<schema>], files or an object-storage URI",
    )
    columns: dict[str, str] | None = Field(
        None, description="declared schema: field -> integer|number|boolean|text|timestamp|json"
    )
    keep_raw: bool | None = Field(None, description="keep each record as JSON in _raw (true)")
    asset: str | None = Field(None, description="asset updated (with window, cursor, rows) after each run")
    partitions: PartitionsSpec | None = Field(
        None,
        description="one sync per partition, {{ item }} in the call: a list, conf/results, or a parent call",
    )

    _lists = field_validator("primary_key", mode="before")(_as_list)


class ScheduleSpec(_Spec):
    """A cron schedule with real data intervals, or a schedule on assets."""

    cron: str | None = Field(None, description="five-field cron or a preset such as @hourly")
    data_interval: bool = Field(
        False, description="true: CronDataIntervalTimetable (runs get real data intervals)"
    )
    timezone: str = Field("UTC", description="the cron's time zone")
    assets: list[str] | None = Field(None, description="run when any of these assets is updated")


class CompensationRetrySpec(_Spec):
    """How long a compensation keeps trying: Airflow task retries with exponential backoff."""

    retries: int | None = Field(None, description="task retries after the first try (8)")
    delay: float | None = Field(None, description="seconds before the first retry (5)")
    multiplier: float | None = Field(None, description="growth of the wait per retry, >= 1 (2)")
    max_delay: float | None = Field(None, description="cap on one wait, seconds (120)")


class _ItemsSpec(_Spec):
    over: Any = Field(
        description="a list, or a JMESPath such as results.list_users.items", json_schema_extra=_OVER
    )
    tolerate_failures: float = Field(0, description="items that may fail: a count, or a fraction when < 1")

    _over = field_validator("over")(_list_or_expression)


class FanOutSpec(_ItemsSpec):
    """Run the step once per item (a mapped task): a list, or a JMESPath over conf/params/results."""

    max_active: int = Field(8, description="items running at once, >= 1")


class BulkSpec(_ItemsSpec):
    """Make every call in one task, concurrently, writing results to a JSON-lines file."""

    over: Any = Field(
        None,
        description="a list, or a JMESPath such as results.list_users.items (or items_from)",
        json_schema_extra=_OVER,
    )
    items_from: CallSpec | None = Field(
        None,
        description="a paginated GET (with paginate:) whose records are the items, read page by page",
    )
    concurrency: int = Field(16, description="calls in flight, 1 to 256")


class PollSpec(_Spec):
    """The call submits an async job: poll its status URL until done, then fetch the result."""

    success: str = Field(description="JMESPath over the status response: true when the job is done")
    failure: str | None = Field(
        None, description="JMESPath over the status response: true when the job failed (fails the step)"
    )
    status: str | None = Field(
        None, description="JMESPath over the submit response giving the status URL (default: Location)"
    )
    result: str | None = Field(
        None,
        description="JMESPath over the final status giving the result URL (default: the status is the result)",
    )
    interval: float | None = Field(None, description="seconds between polls without Retry-After (5)")
    timeout: float | None = Field(None, description="seconds from the submit until the step fails (3600)")


class StepSpec(_Spec):
    """One node of the workflow: a call, or a ``merge`` of other steps' results."""

    name: str = Field(description="the task id: letters, digits and _")
    call: CallSpec | None = None
    depends_on: list[str] = Field(
        default_factory=list,
        description="steps that must finish first (a name or a list)",
        json_schema_extra=_step_names,
    )
    when: str | None = Field(None, description="JMESPath over conf, params and results; false skips the step")
    compensate: CallSpec | None = Field(None, description="the call that undoes this step (saga)")
    compensation_retry: CompensationRetrySpec | None = Field(
        None, description="how long compensate keeps trying (default: defaults.compensation_retry)"
    )
    fallback: CallSpec | None = Field(None, description="called instead when the call fails for good")
    key: str | None = Field(
        None,
        description="limiter and breaker key (default: the connection id); a template, per item in a bulk step",
    )
    merge: list[str] = Field(
        default_factory=list,
        description="steps whose results this step merges",
        json_schema_extra=_step_names,
    )
    fan_out: FanOutSpec | None = None
    bulk: BulkSpec | None = None
    sync: SyncSpec | None = None
    output: str | None = Field(None, description="JMESPath applied to the response to form the result")
    retry: RetrySpec | None = None
    rate_limit: RateLimitsSpec | None = None
    breaker: BreakerSpec | None = None
    timeout: float | None = Field(None, description="read timeout, seconds")
    max_in_flight: int | None = Field(
        None, description="at most this many calls in flight on the step's key, across all workers"
    )
    cache: CacheSpec | None = Field(None, description="share GET/HEAD responses through the state store")
    log_response: bool | None = Field(None, description="log successful bodies (truncated, redacted)")
    poll: PollSpec | None = Field(None, description="the call submits an async job: poll it until done")

    _lists = field_validator("depends_on", "merge", mode="before")(_as_list)


class DefaultsSpec(_Spec):
    """Settings every step inherits unless it sets its own."""

    conn_id: str = Field("http_default", description="Airflow HTTP Connection id")
    oauth2_conn_id: str | None = Field(
        None, description="OAuth2 client Connection id: every call sends its token, shared by every worker"
    )
    retry: RetrySpec | None = None
    rate_limit: RateLimitsSpec | None = None
    breaker: BreakerSpec | None = None
    timeout: float = Field(30.0, description="read timeout, seconds")
    max_in_flight: int | None = Field(None, description="calls in flight per key, across all workers")
    cache: CacheSpec | None = Field(None, description="share every GET/HEAD step's responses (see steps)")
    log_response: bool = Field(False, description="log successful bodies (truncated, redacted)")
    compensation_retry: CompensationRetrySpec | None = Field(
        None, description="how long compensations keep trying (default: about 9 minutes)"
    )


class WorkflowSpec(_Spec):
    """A workflow spec: one YAML file in include/workflows, one DAG."""

    dag_id: str | None = Field(None, description="default: the file name without .yaml")
    description: str | None = None
    schedule: str | ScheduleSpec | None = Field(
        None,
        description="cron, a preset such as @hourly, null (manual), {cron, data_interval: true} or {assets: [names]}",
    )
    start_date: Any = Field(
        None, description="required when scheduled", json_schema_extra={"type": ["string", "null"]}
    )
    catchup: bool = False
    tags: list[str] = Field(default_factory=list)
    max_active_runs: int | None = None
    max_active_tasks: int | None = None
    params: dict[str, Any] = Field(
        default_factory=dict, description="name: default, or name: {default, type, description, ...}"
    )
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    steps: list[StepSpec] = Field(min_length=1)
    output: str | None = Field(None, description="the step whose result is the workflow's output")

    _start = field_validator("start_date")(_date)
