"""A checked :class:`WorkflowSpec` -> the :class:`Workflow` and ``DAG`` arguments that Python DAGs use.

The policy and workflow dataclasses validate values; their :class:`ConfigurationError` is reported
at the spec's field path (``steps[2].retry.max_attempts``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

import pendulum

from api_orchestration.calls.pagination import Pagination
from api_orchestration.errors import ConfigurationError
from api_orchestration.policy import (
    BreakerPolicy,
    CachePolicy,
    CompensationRetry,
    Poll,
    RateLimit,
    RateLimits,
    RetryPolicy,
    rate_limits,
)
from api_orchestration.specs.model import (
    CallSpec,
    PartitionsSpec,
    ScheduleSpec,
    StepSpec,
    SyncSpec,
    WorkflowSpec,
)
from api_orchestration.specs.problems import Problem, shown
from api_orchestration.syncs.stream import Stream
from api_orchestration.workflows.model import Bulk, Call, FanOut, Partitions, Step, Sync, Workflow

T = TypeVar("T")


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def make(
        self,
        path: str,
        factory: Callable[..., T],
        *args: Any,
        renamed: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> T | None:
        try:
            return factory(*args, **kwargs)
        except ConfigurationError as exc:
            param = (renamed or {}).get(exc.param, exc.param)
            self.problems.append((f"{path}.{param}", f"{exc.expected}, got {shown(exc.value)}"))
            return None


def to_workflow(spec: WorkflowSpec, dag_id: str) -> tuple[Workflow | None, list[Problem]]:
    c = _Collector()
    d = spec.defaults
    retry = _policy(c, "defaults.retry", RetryPolicy, d.retry)
    rate_limit = _rate_limit(c, "defaults.rate_limit", d.rate_limit)
    breaker = _policy(c, "defaults.breaker", BreakerPolicy, d.breaker)
    compensation_retry = (
        _policy(c, "defaults.compensation_retry", CompensationRetry, d.compensation_retry)
        or CompensationRetry()
    )
    cache = _cache(c, "defaults.cache", d.cache)
    steps = [_step(c, f"steps[{i}]", s) for i, s in enumerate(spec.steps)]
    if c.problems:
        return None, c.problems
    wf = Workflow(
        dag_id, tuple(s for s in steps if s), conn_id=d.conn_id, oauth2_conn_id=d.oauth2_conn_id, retry=retry,
        rate_limit=rate_limit, breaker=breaker, timeout=d.timeout, max_in_flight=d.max_in_flight, output=spec.output,
        cache=cache, log_response=d.log_response, compensation_retry=compensation_retry,
    )  # fmt: skip
    try:
        wf.validate()
    except ConfigurationError as exc:
        found = [i for i, s in enumerate(spec.steps) if s.name == exc.step]
        param = "name" if exc.param.startswith("step ") else exc.param.split("/")[0]
        index = (found[-1] if param == "name" else found[0]) if found else None  # a duplicate: the later one
        path = f"steps[{index}].{param}" if index is not None else param
        return None, [(path, f"{exc.expected}, got {shown(exc.value)}")]
    return wf, []


def dag_kwargs(spec: WorkflowSpec, source: str) -> dict[str, Any]:
    from airflow.sdk import Param

    params = {
        name: Param(**value) if isinstance(value, dict) else Param(value)
        for name, value in spec.params.items()
    }
    doc = f"{spec.description or ''}\n\nDefined by the workflow spec `{source}`.".strip()
    kwargs: dict[str, Any] = {
        "schedule": schedule(spec.schedule),
        "catchup": spec.catchup,
        "tags": [*spec.tags, "workflow-spec"],
        "params": params,
        "doc_md": doc,
        "description": (spec.description or "").strip().split("\n")[0][:200] or None,
    }
    if spec.start_date is not None:
        kwargs["start_date"] = start_date(spec.start_date)
    for key in ("max_active_runs", "max_active_tasks"):
        if getattr(spec, key) is not None:
            kwargs[key] = getattr(spec, key)
    return kwargs


def schedule(value: str | ScheduleSpec | None) -> Any:
    """A spec's schedule as DAG(schedule=...): a cron string (CronTriggerTimetable: no data
    intervals), a CronDataIntervalTimetable (``data_interval: true``), or a list of assets."""
    if not isinstance(value, ScheduleSpec):
        return value
    from airflow.sdk import Asset, CronDataIntervalTimetable

    if value.assets:
        return [Asset(name) for name in value.assets]
    if value.data_interval:
        return CronDataIntervalTimetable(value.cron, timezone=value.timezone)
    return value.cron


def start_date(value: Any) -> pendulum.DateTime:
    if isinstance(value, dt.datetime):
        return pendulum.instance(value, tz="UTC")
    if isinstance(value, dt.date):
        return pendulum.datetime(value.year, value.month, value.day, tz="UTC")
    parsed = pendulum.parse(str(value), tz="UTC")
    if not isinstance(parsed, pendulum.DateTime):
        raise ValueError(f"{value!r} is not a date or a date-time")
    return parsed


def _policy(c: _Collector, path: str, cls: Callable[..., T], spec: Any) -> T | None:
    return None if spec is None else c.make(path, cls, **spec.model_dump(exclude_none=True))


def _rate_limit(c: _Collector, path: str, spec: Any) -> RateLimits | None:
    """One window (a mapping) or several (a list: ``path[i]`` names the bad one)."""
    if not isinstance(spec, list):
        return _policy(c, path, RateLimit, spec)
    windows = [_policy(c, f"{path}[{i}]", RateLimit, w) for i, w in enumerate(spec)]
    if not all(windows):
        return None
    try:
        return rate_limits(windows, path)
    except ConfigurationError as exc:
        c.problems.append(
            (path, f"{exc.expected}, got {shown([w.model_dump(exclude_none=True) for w in spec])}")
        )
        return None


def _cache(c: _Collector, path: str, spec: Any) -> CachePolicy | None:
    if spec is None:
        return None
    fields = spec.model_dump(exclude_none=True)
    if "methods" in fields:
        fields["methods"] = tuple(fields["methods"])
    return c.make(path, CachePolicy, **fields)


def _call(c: _Collector, path: str, spec: CallSpec | None) -> Call | None:
    if spec is None:
        return None
    paginate = None
    if spec.paginate is not None:
        paginate = c.make(f"{path}.paginate", Pagination, **spec.paginate.model_dump(exclude_none=True))
    return c.make(
        path, Call, spec.method, spec.path, json=spec.body, query=spec.query, headers=spec.headers,
        conn_id=spec.conn_id, oauth2_conn_id=spec.oauth2_conn_id, paginate=paginate,
        idempotency_key=spec.idempotency_key,
    )  # fmt: skip


def _sync(c: _Collector, path: str, spec: SyncSpec | None) -> Sync | None:
    if spec is None:
        return None
    fields = spec.model_dump(
        exclude_none=True,
        exclude={"stream", "destination", "columns", "keep_raw", "asset", "lookback_seconds", "partitions"},
    )
    if spec.lookback_seconds is not None:
        fields["lookback"] = dt.timedelta(seconds=spec.lookback_seconds)
    stream = c.make(path, Stream, spec.stream, renamed={"name": "stream"}, **fields)
    if stream is None:
        return None
    if spec.columns:
        from api_orchestration.syncs.sinks.base import declared_columns

        c.make(path, declared_columns, "sync", spec.columns)
    if spec.destination and "{{" not in spec.destination:
        from api_orchestration.operators.sync import sink_for

        c.make(path, sink_for, spec.destination, owner="sync")
    extra: dict[str, Any] = {"keep_raw": spec.keep_raw} if spec.keep_raw is not None else {}
    if spec.partitions is not None:
        extra["partitions"] = _partitions(c, f"{path}.partitions", spec.partitions)
        if extra["partitions"] is None:
            return None
    return c.make(
        path, Sync, stream, destination=spec.destination, columns=spec.columns, asset=spec.asset, **extra
    )


def _partitions(c: _Collector, path: str, spec: PartitionsSpec) -> Partitions | None:
    parent = None
    if spec.parent is not None:
        p = spec.parent
        paginate = c.make(f"{path}.parent.paginate", Pagination, **p.paginate.model_dump(exclude_none=True))
        if paginate is None:
            return None
        parent = c.make(
            f"{path}.parent", Call, "GET", p.path, query=p.query, headers=p.headers, conn_id=p.conn_id,
            oauth2_conn_id=p.oauth2_conn_id, paginate=paginate,
        )  # fmt: skip
        if parent is None:
            return None
    fields = spec.model_dump(exclude_none=True, exclude={"parent"})
    return c.make(path, Partitions, parent=parent, **fields)


def _step(c: _Collector, path: str, s: StepSpec) -> Step | None:
    fan_out = s.fan_out and c.make(f"{path}.fan_out", FanOut, **s.fan_out.model_dump())
    bulk = None
    if s.bulk is not None:
        listing = _call(c, f"{path}.bulk.items_from", s.bulk.items_from)
        if s.bulk.items_from is None or listing is not None:  # else its problem is reported already
            fields = s.bulk.model_dump(exclude={"items_from"})
            bulk = c.make(f"{path}.bulk", Bulk, items_from=listing, **fields)
    return c.make(
        path, Step, s.name, call=_call(c, f"{path}.call", s.call), depends_on=tuple(s.depends_on), when=s.when,
        compensate=_call(c, f"{path}.compensate", s.compensate),
        compensation_retry=_policy(c, f"{path}.compensation_retry", CompensationRetry, s.compensation_retry),
        fallback=_call(c, f"{path}.fallback", s.fallback),
        key=s.key, merge=tuple(s.merge), fan_out=fan_out, bulk=bulk, output=s.output,
        retry=_policy(c, f"{path}.retry", RetryPolicy, s.retry),
        rate_limit=_rate_limit(c, f"{path}.rate_limit", s.rate_limit),
        breaker=_policy(c, f"{path}.breaker", BreakerPolicy, s.breaker), timeout=s.timeout,
        sync=_sync(c, f"{path}.sync", s.sync),
        max_in_flight=s.max_in_flight, cache=_cache(c, f"{path}.cache", s.cache),
        log_response=bool(s.log_response),
        poll=_policy(c, f"{path}.poll", Poll, s.poll),
    )  # fmt: skip
