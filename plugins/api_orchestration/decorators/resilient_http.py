"""``@task.resilient_http``: a TaskFlow task that receives a guarded client bound to a connection.

::

    from airflow.sdk import task

    @task.resilient_http(http_conn_id="payments")
    def charge(order: dict, client):                  # client: a requests.Session
        return client.post("/charges", json=order).json()

    @task.resilient_http(http_conn_id="users", concurrency=32)
    async def profiles(ids: list[int], client):        # client: an AsyncGuardedClient
        replies = await asyncio.gather(*(client.get(f"/users/{i}") for i in ids))
        return [r.json() for r in replies]

Every call the function makes through ``client`` (or through a library given the session) shares the
limiter, breaker, retries, OAuth2 token, idempotency keys and log lines of ``ResilientHttpOperator``:
the connection's policies (a ``resilient_http`` connection's form fields) unless the decorator sets
its own (the response cache is the operators' only). POST/PUT/PATCH/DELETE get the idempotency keys ``<task key>-1``, ``-2``, ... in call order, so a
retried task that repeats its calls repeats its keys (concurrent async calls: pass
``idempotency_key=`` yourself, their order is not fixed). The client is passed by keyword, under
the name ``client_arg`` (default ``client``); do not pass it when calling the task.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from api_orchestration.calls.claims import task_owner
from api_orchestration.calls.connection_guard import check_oauth2_conn_id
from api_orchestration.calls.idempotency import task_key
from api_orchestration.errors import ConfigurationError
from api_orchestration.policy import BreakerPolicy, RateLimit, RetryPolicy, rate_limits


class _ResilientHttpDecoratedOperator(DecoratedOperator, PythonOperator):
    """Runs the function with a guarded client for ``http_conn_id`` as its ``client_arg`` argument.

    :param http_conn_id: the Airflow connection (``resilient_http`` or ``http``) (templated).
    :param rate_limit: overrides the connection's rate limit (a list: several windows held at once).
    :param rate_limit_key: limiter key, default: the connection id.
    :param breaker: overrides the connection's breaker policy.
    :param breaker_key: breaker key, default: the connection id.
    :param retry: overrides the connection's retry policy.
    :param oauth2_conn_id: an OAuth2 client connection whose shared token every call sends
        (default: the ``resilient_http`` connection's ``oauth2_conn_id`` field).
    :param timeout: seconds, or ``(connect, read)``.
    :param max_sleep: the longest wait (limiter, ``Retry-After``, backoff) made in the worker; a
        longer one fails the call (a running function cannot defer).
    :param concurrency: connections of the async client.
    :param client_arg: the name of the function's argument that receives the client.
    :param state_url: overrides ``[api_orchestration] state_url``.
    """

    custom_operator_name = "@task.resilient_http"
    template_fields: Sequence[str] = (*PythonOperator.template_fields, "http_conn_id")

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Any = None,
        op_kwargs: Any = None,
        http_conn_id: str = "http_default",
        rate_limit: RateLimit | Sequence[RateLimit] | None = None,
        rate_limit_key: str | None = None,
        breaker: BreakerPolicy | None = None,
        breaker_key: str | None = None,
        retry: RetryPolicy | None = None,
        oauth2_conn_id: str | None = None,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        max_sleep: float = 3600.0,
        concurrency: int = 16,
        client_arg: str = "client",
        state_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        owner = f"@task.resilient_http {getattr(python_callable, '__name__', python_callable)!r}"
        if client_arg not in inspect.signature(python_callable).parameters:
            raise ConfigurationError(
                owner,
                "client_arg",
                client_arg,
                "must name an argument of the function (it receives the client)",
            )
        rate_limit = rate_limits(rate_limit, owner)  # one window, or several
        for name, value, cls in (("breaker", breaker, BreakerPolicy), ("retry", retry, RetryPolicy)):
            if value is not None and not isinstance(value, cls):
                raise ConfigurationError(owner, name, value, f"must be a {cls.__name__}(...)")
        check_oauth2_conn_id(owner, oauth2_conn_id)
        op_kwargs = dict(op_kwargs or {})
        op_kwargs.setdefault(client_arg, None)  # filled at run time; lets the call omit it
        super().__init__(
            kwargs_to_upstream={"python_callable": python_callable, "op_args": op_args, "op_kwargs": op_kwargs},
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs,
        )  # fmt: skip
        self.http_conn_id, self.client_arg, self.state_url = http_conn_id, client_arg, state_url
        self.rate_limit, self.rate_limit_key, self.breaker, self.breaker_key = (
            rate_limit, rate_limit_key, breaker, breaker_key,
        )  # fmt: skip
        self.retry, self.timeout, self.max_sleep, self.concurrency = retry, timeout, max_sleep, concurrency
        self.oauth2_conn_id = oauth2_conn_id

    def _client_kwargs(self, context: Any) -> dict[str, Any]:
        return {
            "rate_limit": self.rate_limit, "rate_limit_key": self.rate_limit_key, "breaker": self.breaker,
            "breaker_key": self.breaker_key, "retry": self.retry, "oauth2_conn_id": self.oauth2_conn_id,
            "timeout": self.timeout, "max_sleep": self.max_sleep, "state_url": self.state_url,
            "idempotency_base": task_key(context["ti"]), "log": self.log, "claim_as": task_owner(self),
        }  # fmt: skip

    def execute(self, context: Any) -> Any:
        if self.is_async:
            return super().execute(context)  # runs aexecute() in an event loop
        from api_orchestration.calls.session import guarded_session

        with guarded_session(self.http_conn_id, **self._client_kwargs(context)) as client:
            self.op_kwargs = {**self.op_kwargs, self.client_arg: client}
            return super().execute(context)

    async def aexecute(self, context: Any) -> Any:
        from api_orchestration.calls.async_session import AsyncGuardedClient

        kwargs = {**self._client_kwargs(context), "concurrency": self.concurrency}
        async with AsyncGuardedClient(self.http_conn_id, **kwargs) as client:
            self.op_kwargs = {**self.op_kwargs, self.client_arg: client}
            return await super().aexecute(context)


def resilient_http_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """Wrap a function into a task that receives a guarded HTTP client (``@task.resilient_http``).

    :param python_callable: the function (a plain or an ``async`` function).
    :param multiple_outputs: unroll a returned dict into one XCom per key.
    :param kwargs: the operator's arguments: ``http_conn_id``, ``rate_limit``, ``breaker``,
        ``retry``, ``oauth2_conn_id``, ``timeout``, ``max_sleep``, ``concurrency``, ``client_arg`` and ``BaseOperator``'s.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_ResilientHttpDecoratedOperator,
        **kwargs,
    )
