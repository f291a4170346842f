"""``SyncPartitionsOperator``: the partitions of a partitioned sync, for a fan-out of mapped syncs.

It returns ``[{"partition": <label>, "item": <item>}, ...]``, which
``ApiSyncOperator.partial(...).expand_kwargs(...)`` turns into one sync task per partition (the
builder and specs wire this for ``Sync(partitions=...)``). The items are a static list, a JMESPath
over ``conf``/``params``/upstream ``results``, or the records of a paginated parent call (every
page a guarded call, like the sync's own pages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jmespath
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from api_orchestration.calls.pagination import Pagination, iterate_pages
from api_orchestration.errors import ConfigurationError
from api_orchestration.operators.http import check_oauth2_conn_id
from api_orchestration.operators.step import items_from
from api_orchestration.operators.sync import page_caller
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy
from api_orchestration.rendering import SandboxedTemplates
from api_orchestration.syncs.progress import Progress


def partition_label(item: Any, key: Any = None) -> str | None:
    """The label of one partition item: ``key`` (a compiled JMESPath) over it, else the item; a
    non-empty string or an integer (as text), else None."""
    value = key.search(item) if key is not None else item
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


class SyncPartitionsOperator(SandboxedTemplates, BaseOperator):
    """List the partitions of a sync step; see the module.

    :param step: the sync step's name (in messages).
    :param over: a list, or a JMESPath over ``{"conf", "params", "results"}`` (``inputs`` are the
        upstream steps it may read).
    :param parent_endpoint / parent_query / parent_headers / parent_pagination: the paginated parent
        call whose records are the partitions (templated), instead of ``over``.
    :param key: JMESPath giving each item's label (default: the item).
    :param max_partitions: more fail the task (a runaway parent listing).
    The connection and resilience parameters are those of ``ApiSyncOperator``.
    """

    template_fields: Sequence[str] = ("parent_endpoint", "parent_query", "parent_headers", "http_conn_id")
    ui_color = "#e8fff0"

    def __init__(
        self,
        *,
        step: str,
        over: list[Any] | str | None = None,
        parent_endpoint: str | None = None,
        parent_query: dict[str, Any] | None = None,
        parent_headers: dict[str, str] | None = None,
        parent_pagination: Pagination | None = None,
        key: str | None = None,
        inputs: Sequence[str] = (),
        max_partitions: int = 1000,
        http_conn_id: str = "http_default",
        oauth2_conn_id: str | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        rate_limit: RateLimit | None = None,
        rate_limit_key: str | None = None,
        breaker: BreakerPolicy | None = None,
        breaker_key: str | None = None,
        retry: RetryPolicy | None = None,
        max_in_flight: int | None = None,
        max_sleep: float = 60.0,
        state_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        owner = f"task {self.task_id!r}"
        if (over is None) == (parent_endpoint is None):
            raise ConfigurationError(owner, "over/parent_endpoint", None, "needs exactly one of them")
        if parent_endpoint is not None and not isinstance(parent_pagination, Pagination):
            raise ConfigurationError(
                owner, "parent_pagination", parent_pagination, "must be a Pagination(...)"
            )
        check_oauth2_conn_id(owner, oauth2_conn_id)
        self.step, self.over, self.key, self.inputs = step, over, key, tuple(inputs)
        self.parent_endpoint, self.parent_query, self.parent_headers = (
            parent_endpoint,
            parent_query,
            parent_headers,
        )
        self.parent_pagination, self.max_partitions = parent_pagination, max_partitions
        self.http_conn_id, self.oauth2_conn_id, self.timeout = http_conn_id, oauth2_conn_id, timeout
        self.rate_limit, self.rate_limit_key = rate_limit, rate_limit_key
        self.breaker, self.breaker_key, self.retry = breaker, breaker_key, retry
        self.max_in_flight, self.max_sleep, self.state_url = max_in_flight, float(max_sleep), state_url
        self.on_circuit_open = "fail"  # a listing is short: no deferral between its pages
        self._key = jmespath.compile(key) if key else None

    def execute(self, context: Context) -> list[dict[str, Any]]:
        items = self._parent_records() if self.parent_endpoint is not None else self._listed(context)
        where = f"sync step {self.step!r}"
        if len(items) > self.max_partitions:
            raise AirflowFailException(
                f"{where}: {len(items)} partitions, more than max_partitions={self.max_partitions}; "
                "raise max_partitions or narrow the parent listing"
            )
        partitions: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            label = partition_label(item, self._key)
            if label is None:
                fix = (
                    f"key {self.key!r} gave no string or integer"
                    if self.key
                    else "set key: a JMESPath to its label"
                )
                raise AirflowFailException(f"{where}: partition {index} ({_brief(item)}) has no label; {fix}")
            if label in seen:
                raise AirflowFailException(
                    f"{where}: partitions {seen[label]} and {index} have the same label {label!r}; "
                    "labels name each partition's state and rows: choose a key that is unique"
                )
            seen[label] = index
            partitions.append({"partition": label, "item": item})
        self.log.info("sync step %r: %d partitions: %s", self.step, len(partitions), list(seen)[:20])
        return partitions

    def _listed(self, context: Context) -> list[Any]:
        if isinstance(self.over, list):
            return list(self.over)
        return items_from(str(self.over), context, self.inputs)

    def _parent_records(self) -> list[Any]:
        progress = Progress(self.log, f"partitions of {self.step}", every=5.0)
        hook, caller = page_caller(self, progress)
        pagination = self.parent_pagination
        assert pagination is not None
        first = pagination.first_request(hook.url_from_endpoint(self.parent_endpoint), self.parent_query)
        records: list[Any] = []
        try:
            for _sent, page, _following in iterate_pages(
                caller, pagination, first, headers=self.parent_headers
            ):
                records.extend(page.records)
                progress.page(len(page.records))
                if len(records) > self.max_partitions:
                    break  # reported by execute
        finally:
            caller.flush()
        return records


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
