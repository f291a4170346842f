"""The typed workflow model: steps, calls, modes and compensations, validated before any DAG exists.

Python DAG authors build it directly (see :mod:`api_orchestration.workflows.build`); YAML specs are parsed
into the same model. Validation errors name the workflow, the step and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from api_orchestration.calls.pagination import PageOutput, Pagination
from api_orchestration.errors import ConfigurationError, did_you_mean
from api_orchestration.policy import (
    BreakerPolicy,
    CachePolicy,
    CompensationRetry,
    Poll,
    RateLimit,
    RetryPolicy,
    allowed_failures,
    rate_limits,
)
from api_orchestration.syncs.stream import Stream

__all__ = [
    "Bulk",
    "Call",
    "FanOut",
    "Partitions",
    "Poll",
    "Step",
    "Sync",
    "Workflow",
    "allowed_failures",
    "result",
]
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def result(step: str, path: str = "") -> str:
    """A template for an upstream step's result (its XCom), optionally a key path: ``result("user", "id")``
    renders ``ti.xcom_pull(task_ids="user")["id"]`` (as a native value: workflow DAGs render natively)."""
    expr = f"ti.xcom_pull(task_ids={step!r})"
    for part in filter(None, path.split(".")):
        expr += f"[{int(part)}]" if part.isdigit() else f"[{part!r}]"
    return "{{ " + expr + " }}"


@dataclass(frozen=True)
class Call:
    """An HTTP request; every string in it is a Jinja template (conf, params, upstream results).

    ``idempotency_key`` (a template) makes a business id the unit of idempotency, for example
    ``"order-{{ params.order_id }}-charge"``: the same order triggered twice sends the same key, so
    the API acts once. Default: a key derived from the DAG, run, task and map index (per run).

    ``paginate`` (GET only) pages through a collection, every page one guarded call, resumable at
    the page that failed: the step's result is the records of every page (or a manifest of the files
    holding them, ``Pagination(output="manifest")``); on a sync step's call, pages go to its sink.
    """

    method: str
    path: str
    json: Any = None
    query: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    conn_id: str | None = None
    idempotency_key: str | None = None
    oauth2_conn_id: str | None = None  # default: the workflow's
    paginate: Pagination | None = None  # every page, one guarded call; the records are the result

    def __post_init__(self) -> None:
        if self.paginate is not None and not isinstance(self.paginate, Pagination):
            raise ConfigurationError("Call", "paginate", self.paginate, "must be a Pagination(style=...)")
        method = str(self.method).upper()
        if method not in METHODS:
            raise ConfigurationError("Call", "method", self.method, f"must be one of {', '.join(METHODS)}")
        object.__setattr__(self, "method", method)
        if not isinstance(self.path, str) or not self.path:
            raise ConfigurationError("Call", "path", self.path, "must be a non-empty string like /orders")
        key = self.idempotency_key
        if key is not None and not (isinstance(key, str) and key.strip()):
            raise ConfigurationError(
                "Call",
                "idempotency_key",
                key,
                "must be a non-empty string (a template such as order-{{ params.order_id }}-charge) or None",
            )


@dataclass(frozen=True)
class FanOut:
    """Run the step once per item: ``over`` is a list (one input to many endpoints: each item may set
    ``path``/``json``/``query``), or a JMESPath over ``conf``, ``params`` and upstream ``results``
    such as ``"results.users.items"`` (one endpoint over an upstream list). Each item is
    ``{{ item }}`` in ``Call`` templates. At most ``max_active`` run at once; up to
    ``tolerate_failures`` items (a count, or a fraction when < 1) may fail."""

    over: list[Any] | str
    max_active: int = 8
    tolerate_failures: float = 0

    def __post_init__(self) -> None:
        _check_items("FanOut", self.over, self.tolerate_failures)
        if not (
            isinstance(self.max_active, int)
            and not isinstance(self.max_active, bool)
            and self.max_active >= 1
        ):
            raise ConfigurationError("FanOut", "max_active", self.max_active, "must be an integer >= 1")


@dataclass(frozen=True)
class Bulk:
    """Make every call in one task: ``over`` as in :class:`FanOut`, ``concurrency`` calls in flight,
    results written to a JSON-lines file whose path (and counts) the task returns.

    ``items_from`` instead of ``over``: a paginated GET (``Call(..., paginate=Pagination(...))``)
    whose records are the items, read page by page through the step's limiter and breaker (resumable
    at the page that failed) and fanned out in chunks, so memory stays flat however long the list."""

    over: list[Any] | str | None = None
    concurrency: int = 16
    tolerate_failures: float = 0
    items_from: Call | None = None

    def __post_init__(self) -> None:
        if self.items_from is not None:
            if self.over is not None:
                raise ConfigurationError(
                    "Bulk", "over", self.over, "must not be set with items_from: the items are its records"
                )
            call = self.items_from
            if not isinstance(call, Call) or call.paginate is None or call.method != "GET":
                shown = "no paginate" if isinstance(call, Call) and call.method == "GET" else call
                shown = f"method {call.method}" if isinstance(call, Call) and call.paginate else shown
                raise ConfigurationError(
                    "Bulk", "items_from", shown,
                    "must be a paginated GET: Call('GET', path, paginate=Pagination(...)) (spec: paginate: {style: ...})",
                )  # fmt: skip
            if call.conn_id is not None or call.oauth2_conn_id is not None:
                raise ConfigurationError(
                    "Bulk", "items_from.conn_id", call.conn_id or call.oauth2_conn_id,
                    "must not be set: the list is read through the step's connection, limiter and breaker",
                )  # fmt: skip
        elif self.over is None:
            raise ConfigurationError(
                "Bulk", "over", None,
                "must be a list of items or a JMESPath string, or set items_from to a paginated list call",
            )  # fmt: skip
        _check_items("Bulk", [] if self.items_from is not None else self.over, self.tolerate_failures)
        ok = isinstance(self.concurrency, int) and not isinstance(self.concurrency, bool)
        if not (ok and 1 <= self.concurrency <= 256):
            raise ConfigurationError(
                "Bulk", "concurrency", self.concurrency, "must be an integer from 1 to 256"
            )


def _check_items(owner: str, over: Any, tolerate: Any) -> None:
    if not (isinstance(over, list) or (isinstance(over, str) and over.strip())):
        raise ConfigurationError(owner, "over", over, "must be a list of items or a JMESPath string")
    if (
        isinstance(tolerate, bool)
        or not isinstance(tolerate, int | float)
        or not 0 <= tolerate < float("inf")
    ):
        raise ConfigurationError(
            owner, "tolerate_failures", tolerate, "must be a count >= 0, or a fraction of the items when < 1"
        )


@dataclass(frozen=True)
class Partitions:
    """Sync once per partition (e.g. per repository), as a fan-out of mapped tasks: each partition
    has its own checkpoint and cursor, its rows (``_partition`` in tables, a folder in files), its
    progress line, status row and asset event. The partitions are one of:

    - ``over``: a list (static), or a JMESPath over ``conf`` (``dag_run.conf``), ``params`` and
      upstream ``results`` such as ``"conf.repos"``;
    - ``parent``: a paginated GET whose records are the partitions (``GET /orgs/acme/repos``), each
      page a guarded call like the sync's own.

    Each partition is ``{{ item }}`` in the sync call's templates (``/repos/{{ item.full_name }}/issues``);
    ``key`` (JMESPath over the item) gives its label (default: the item itself, a string or integer).
    At most ``max_active`` partitions sync at once; more than ``max_partitions`` fail the step.
    """

    over: list[Any] | str | None = None
    parent: Call | None = None
    key: str | None = None
    max_active: int = 8
    max_partitions: int = 1000

    def __post_init__(self) -> None:
        o = "Partitions"
        if (self.over is None) == (self.parent is None):
            raise ConfigurationError(
                o,
                "over/parent",
                None,
                "needs exactly one of over (a list or a JMESPath) or parent (a paginated call)",
            )
        if self.over is not None and not (
            (isinstance(self.over, list) and self.over) or (isinstance(self.over, str) and self.over.strip())
        ):
            raise ConfigurationError(
                o, "over", self.over, "must be a non-empty list, or a JMESPath such as conf.repos"
            )
        if self.parent is not None:
            if not isinstance(self.parent, Call):
                raise ConfigurationError(o, "parent", self.parent, "must be a Call(GET, path, paginate=...)")
            if self.parent.method != "GET" or self.parent.paginate is None:
                raise ConfigurationError(
                    o, "parent.paginate", self.parent.paginate,
                    "is required: the parent is a paginated GET whose records are the partitions, "
                    "e.g. paginate: {style: link_header}",
                )  # fmt: skip
        for expression, name in (
            (self.key, "key"),
            (self.over if isinstance(self.over, str) else None, "over"),
        ):
            if expression is not None:
                try:
                    jmespath.compile(expression)
                except (JMESPathError, TypeError, AttributeError) as exc:
                    raise ConfigurationError(
                        o, name, expression, f"must be a JMESPath expression ({exc})"
                    ) from None
        if isinstance(self.over, list) and self.key is None:
            bad = [i for i, item in enumerate(self.over) if not _label_value(item)]
            if bad:
                raise ConfigurationError(
                    o, f"over[{bad[0]}]", self.over[bad[0]],
                    "must be a string or integer label, or set key: a JMESPath giving each item's label",
                )  # fmt: skip
        for name, value in (("max_active", self.max_active), ("max_partitions", self.max_partitions)):
            if not _count(value):
                raise ConfigurationError(o, name, value, "must be an integer >= 1")


def _label_value(value: Any) -> bool:
    """A usable partition label: a non-empty string or an integer."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and bool(value.strip()))


@dataclass(frozen=True)
class Sync:
    """Make the step's paginated GET a recurring sync: ``stream`` into ``destination`` (see
    ``ApiSyncOperator``), with an asset event on ``asset`` (a name) after each successful run;
    ``partitions`` runs it once per partition (see :class:`Partitions`)."""

    stream: Stream
    destination: str | None = None
    columns: dict[str, str] | None = None
    keep_raw: bool = True
    asset: str | None = None
    partitions: Partitions | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.stream, Stream):
            raise ConfigurationError(
                "Sync", "stream", self.stream, "must be a Stream(name=..., primary_key=...)"
            )
        if self.asset is not None and not (isinstance(self.asset, str) and self.asset.strip()):
            raise ConfigurationError("Sync", "asset", self.asset, "must be an asset name")
        if self.partitions is not None:
            if not isinstance(self.partitions, Partitions):
                raise ConfigurationError(
                    "Sync", "partitions", self.partitions, "must be a Partitions(over=...) or Partitions(parent=...)"
                )  # fmt: skip
            if self.stream.partition:
                raise ConfigurationError(
                    "Sync", "partition", self.stream.partition,
                    "must not be set with partitions: each partition's label comes from partitions",
                )  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One node of the workflow: a call (or, with ``merge``, a merge of other steps' results)."""

    name: str
    call: Call | None = None
    depends_on: tuple[str, ...] = ()
    when: str | None = None  # JMESPath over {"conf": ..., "params": ..., "results": {step: result}}
    compensate: Call | None = None
    compensation_retry: CompensationRetry | None = None  # how long ``compensate`` keeps trying
    fallback: Call | None = None  # called instead when the call fails for good; the result says so
    key: str | None = None  # the limiter and breaker key (default: the connection id; per item in bulk)
    merge: tuple[str, ...] = ()
    fan_out: FanOut | None = None
    bulk: Bulk | None = None
    output: str | None = None  # JMESPath applied to the response JSON before it becomes the result
    retry: RetryPolicy | None = None
    rate_limit: RateLimit | Sequence[RateLimit] | None = None  # a list: several windows held at once
    breaker: BreakerPolicy | None = None
    timeout: float | None = None
    max_in_flight: int | None = None  # the bulkhead on the step's key: calls in flight, all workers
    cache: CachePolicy | None = None  # GET/HEAD responses shared through the store (not compensations)
    log_response: bool = False  # log successful bodies (truncated, redacted)
    poll: Poll | None = None  # the call submits an async job: poll its status until done, fetch the result
    sync: Sync | None = None  # the call pages into a sink, incrementally (needs call.paginate)

    @property
    def paginated(self) -> bool:
        """The step's own call pages (an ordinary step, not a sync)."""
        return self.sync is None and self.call is not None and self.call.paginate is not None


@dataclass(frozen=True)
class Workflow:
    """A named set of steps and defaults; :meth:`validate` checks it, ``workflows.build.build`` renders it."""

    name: str
    steps: tuple[Step, ...]
    conn_id: str = "http_default"
    oauth2_conn_id: str | None = None  # an OAuth2 client connection: every call sends its shared token
    retry: RetryPolicy | None = None  # None: the connection's (resilient_http), else RetryPolicy()
    rate_limit: RateLimit | Sequence[RateLimit] | None = None  # a list: several windows held at once
    breaker: BreakerPolicy | None = None
    timeout: float = 30.0
    max_in_flight: int | None = None
    cache: CachePolicy | None = None  # for every GET/HEAD step without its own
    log_response: bool = False
    output: str | None = None  # the step whose result is the workflow's result (the DAG's result)
    compensation_retry: CompensationRetry = field(default_factory=CompensationRetry)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def validate(self) -> Workflow:
        """Raise :class:`ConfigurationError` naming the step and field of the first problem."""
        names = [s.name for s in self.steps]
        owner = f"workflow {self.name!r}"
        if not self.steps:
            raise ConfigurationError(owner, "steps", [], "must hold at least one step")
        _check_rate_limit(owner, self.rate_limit, None)
        seen: set[str] = set()
        for s in self.steps:
            if not isinstance(s.name, str) or not (s.name.isascii() and s.name.replace("_", "a").isalnum()):
                raise ConfigurationError(
                    owner, "step name", s.name, "must be letters, digits and _ only", step=str(s.name)
                )
            if s.name in seen:
                raise ConfigurationError(
                    owner,
                    f"step {s.name!r}",
                    s.name,
                    "is defined twice; step names must be unique",
                    step=s.name,
                )
            seen.add(s.name)
            where = f"{owner} step {s.name!r}"
            step = s.name
            _check_rate_limit(where, s.rate_limit, step)
            if (s.call is None) == (not s.merge):
                raise ConfigurationError(
                    where, "call/merge", None, "needs exactly one of a call or a merge", step=step
                )
            if s.fan_out and s.bulk:
                raise ConfigurationError(where, "fan_out/bulk", "both", "must not both be set", step=step)
            if s.poll is not None and not isinstance(s.poll, Poll):
                raise ConfigurationError(
                    where, "poll", s.poll, "must be a Poll(success=..., failure=..., ...)", step=step
                )
            if s.poll is not None and s.cache is not None:
                raise ConfigurationError(
                    where, "cache", s.cache, "is not supported on a poll step (a cached status would never "
                    "change); remove it", step=step,
                )  # fmt: skip
            if s.poll is not None and (s.bulk or s.merge):
                raise ConfigurationError(
                    where, "poll", s.poll, "needs a call step (not bulk or merge): the call submits the job",
                    step=step,
                )  # fmt: skip
            _check_sync(where, s)
            if s.compensate and (s.fan_out or s.bulk or s.merge):
                raise ConfigurationError(
                    where, "compensate", s.compensate, "is supported on single-call steps only", step=step
                )
            key = s.call.idempotency_key if s.call else None
            if key and s.bulk:
                raise ConfigurationError(
                    where, "call.idempotency_key", key,
                    "is not supported on bulk steps (each item's key is <task key>-<index>)", step=step,
                )  # fmt: skip
            if key and s.fan_out and "item" not in key:
                raise ConfigurationError(
                    where, "call.idempotency_key", key,
                    "must use {{ item }} in a fan-out step, so each item has its own key", step=step,
                )  # fmt: skip
            if s.compensation_retry is not None and s.compensate is None:
                raise ConfigurationError(
                    where, "compensation_retry", s.compensation_retry, "needs a compensate call", step=step
                )
            for param, refs in (("depends_on", s.depends_on), ("merge", s.merge)):
                for ref in refs:
                    if ref not in names:
                        hint = did_you_mean(ref, names)
                        raise ConfigurationError(
                            where, param, ref, f"names an unknown step{hint}; steps are {names}", step=step
                        )
                    if ref == s.name:
                        raise ConfigurationError(
                            where, param, ref, "must not name the step itself", step=step
                        )
        for s in self.steps:
            if s.timeout is not None and not _positive(s.timeout):
                raise ConfigurationError(
                    f"{owner} step {s.name!r}", "timeout", s.timeout, "must be seconds > 0", step=s.name
                )
        for s in self.steps:
            if s.max_in_flight is not None and not _count(s.max_in_flight):
                raise ConfigurationError(
                    f"{owner} step {s.name!r}", "max_in_flight", s.max_in_flight, "must be an integer >= 1",
                    step=s.name,
                )  # fmt: skip
        for s in self.steps:
            where = f"{owner} step {s.name!r}"
            if s.cache is not None and not isinstance(s.cache, CachePolicy):
                raise ConfigurationError(
                    where, "cache", s.cache, "must be a CachePolicy(ttl, ...)", step=s.name
                )
            if s.cache is not None and s.call is not None and s.call.method not in s.cache.methods:
                raise ConfigurationError(
                    where, "cache", s.call.method,
                    f"caches only {', '.join(s.cache.methods)} responses; remove cache from this {s.call.method} step",
                    step=s.name,
                )  # fmt: skip
        if self.cache is not None and not isinstance(self.cache, CachePolicy):
            raise ConfigurationError(owner, "cache", self.cache, "must be a CachePolicy(ttl, ...)")
        if self.max_in_flight is not None and not _count(self.max_in_flight):
            raise ConfigurationError(owner, "max_in_flight", self.max_in_flight, "must be an integer >= 1")
        if not _positive(self.timeout):
            raise ConfigurationError(owner, "timeout", self.timeout, "must be seconds > 0")
        if self.output is not None and self.output not in names:
            raise ConfigurationError(owner, "output", self.output, f"must name a step; steps are {names}")
        cycle = _find_cycle({s.name: (*s.depends_on, *s.merge) for s in self.steps})
        if cycle:
            raise ConfigurationError(
                owner, "depends_on", " -> ".join(cycle), "forms a cycle; remove one of these dependencies",
                step=cycle[0],
            )  # fmt: skip
        return self

    def upstream(self, name: str) -> tuple[str, ...]:
        s = self.step(name)
        return tuple(dict.fromkeys((*s.depends_on, *s.merge)))

    def order(self) -> list[str]:
        """Step names in a topological order (declaration order among independent steps)."""
        done: list[str] = []
        pending = [s.name for s in self.steps]
        while pending:
            for name in pending:
                if all(u in done for u in self.upstream(name)):
                    done.append(name)
                    pending.remove(name)
                    break
        return done


def _check_rate_limit(where: str, value: Any, step: str | None) -> None:
    """A RateLimit or a list of them (several windows of one key)."""
    try:
        rate_limits(value, where)
    except ConfigurationError as exc:
        raise ConfigurationError(where, "rate_limit", value, exc.expected, step=step) from None


def _check_paginate(where: str, s: Step) -> None:
    """An ordinary step's paginated call: a GET whose records are the step's result."""
    p = s.call.paginate if s.call is not None else None
    if p is None:
        return
    if s.call.method != "GET":  # type: ignore[union-attr]
        raise ConfigurationError(
            where, "call.paginate", s.call.method,  # type: ignore[union-attr]
            "pages GET requests only; set method: GET or remove paginate", step=s.name,
        )  # fmt: skip
    for param, value, fix in (
        ("bulk", s.bulk, "to fan out over a paginated list, put the list call in bulk.items_from"),
        ("poll", s.poll, "a polled job's result is one response"),
        ("cache", s.cache, "pages are read anew on every run"),
    ):
        if value:
            raise ConfigurationError(
                where, param, "set", f"is not supported with call.paginate: {fix}", step=s.name
            )
    if s.output is not None and p.output is PageOutput.MANIFEST:
        raise ConfigurationError(
            where, "output", s.output,
            "applies to the records, and paginate.output is 'manifest' (the result is the files' manifest); "
            "remove one of them", step=s.name,
        )  # fmt: skip


def _check_sync(where: str, s: Step) -> None:
    """A sync step is one paginated GET into a sink; an ordinary step's pages are its result."""
    if s.sync is None:
        _check_paginate(where, s)
        return
    if s.call is None or s.call.paginate is None:
        raise ConfigurationError(
            where, "call.paginate", None, "is required on the call of a sync step", step=s.name
        )
    if s.call.method != "GET":
        raise ConfigurationError(
            where, "call.method", s.call.method, "must be GET for a sync step", step=s.name
        )
    if s.sync.partitions is not None:
        templates = repr((s.call.path, s.call.query, s.call.headers))
        if "item" not in templates:
            raise ConfigurationError(
                where, "call.path", s.call.path,
                "must use {{ item }} (in the path, query or headers) when sync.partitions is set, so each "
                "partition fetches its own records, e.g. /repos/{{ item.full_name }}/issues",
                step=s.name,
            )  # fmt: skip
    for param, value in (
        ("fan_out", s.fan_out),
        ("bulk", s.bulk),
        ("compensate", s.compensate),
        ("fallback", s.fallback),
        ("output", s.output),
        ("when", s.when),
        ("cache", s.cache),
        ("poll", s.poll),
    ):
        if value:
            raise ConfigurationError(where, param, value, "is not supported on a sync step", step=s.name)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")


def _find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None
