"""The one place that touches other libraries' private parts. Each has a contract test
(tests/test_compat.py) that fails loudly when an upgrade changes it.

- Airflow ``BaseOperator._do_render_template_fields(parent, template_fields, context, jinja_env,
  seen_oids)``: the one method every templated field of a task is rendered through, plain
  (``BaseOperator.render_template_fields``) or mapped (``MappedOperator.render_template_fields``, on
  the unmapped task), with the environment the task runner passes in: the DAG's, which is *not*
  sandboxed when the DAG renders native objects. :class:`TemplateContextMixin` adds variables
  there, renders with the operator's own ``get_template_env()`` instead, and calls
  ``after_rendering`` before Airflow stores the rendered fields.
- Airflow ``airflow.sdk.definitions._internal.templater.FILTERS``: Airflow's template filters
  (``ds``, ``ts``, ...), so our sandboxed environment offers the same ones.
- Airflow's secrets masker ``SecretsMasker.replacer`` (``airflow.sdk._shared.secrets_masker``): the
  compiled pattern of every secret registered with ``airflow.sdk.log.mask_secret``, so an XCom value
  is masked by value exactly as log lines are.
- providers-http ``HttpHook.merged_extra``: the connection's extras as the hook merged them
  (``allow_redirects`` and friends), read after ``get_conn``.
- providers-http ``HttpAsyncHook.aget_connection``: overridden so ``config()`` (base URL,
  credentials, headers, options read from the connection) runs in a plain event loop of a task.
- Airflow ``airflow.sdk.bases.decorator.determine_kwargs(func, args, context)``: the context keys a
  callable names (what providers-http's ``HttpOperator`` passes to ``response_check``/``response_filter``).
- aiohttp ``ClientSession._retry_connection``: off, so aiohttp never silently re-sends an admitted
  request on a dropped keep-alive connection (aiohttp's own test client sets it the same way).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from airflow.providers.http.hooks.http import HttpAsyncHook, HttpHook


class TemplateContextMixin:
    """Operators that add variables to their templates' context define ``template_context(context)``;
    ``after_rendering(context)`` sees the rendered fields; every field renders in the operator's
    ``get_template_env()``, whatever environment Airflow passes in."""

    def template_context(self, context: Any) -> None:
        """Add variables to ``context`` before the templated fields are rendered."""

    def after_rendering(self, context: Any) -> None:
        """Look at the rendered fields (before Airflow stores them as the task's rendered fields)."""

    def _do_render_template_fields(
        self, parent: Any, template_fields: Any, context: Any, jinja_env: Any, seen_oids: set[int]
    ) -> None:
        if parent is self:
            self.template_context(context)
        own_env = self.get_template_env()  # type: ignore[attr-defined]
        super()._do_render_template_fields(parent, template_fields, context, own_env, seen_oids)  # type: ignore[misc]
        if parent is self:
            self.after_rendering(context)


def airflow_template_filters() -> dict[str, Any]:
    """Airflow's template filters (``ds``, ``ds_nodash``, ``ts``, ``ts_nodash``, ``ts_nodash_with_tz``)."""
    from airflow.sdk.definitions._internal.templater import FILTERS

    return dict(FILTERS)


def context_kwargs(func: Any, args: list[Any], context: Any) -> dict[str, Any]:
    """The context entries ``func`` asks for besides ``args`` (``lambda response, ti: ...``), as
    providers-http's ``HttpOperator`` passes them."""
    import inspect

    from airflow.sdk.bases.decorator import determine_kwargs

    try:
        inspect.signature(func)
    except (TypeError, ValueError):  # a builtin without a signature: it takes the response only
        return {}
    return dict(determine_kwargs(func, args, context))


def mask_registered_secrets(text: str) -> str:
    """``text`` with every secret registered with Airflow's secrets masker replaced by ``***``
    (what the masker does to log lines; no masking by key name)."""
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    replacer = _secrets_masker().replacer
    return replacer.sub("***", text) if replacer is not None else text


def merged_extra(hook: HttpHook) -> dict[str, Any]:
    """The connection extras ``hook.get_conn()`` merged (call it after ``get_conn``)."""
    return dict(getattr(hook, "merged_extra", None) or {})


class _SyncFetchAsyncHook(HttpAsyncHook):
    """``HttpAsyncHook`` whose connection is fetched as ``HttpHook`` fetches it (the event loop it
    runs in belongs to this task alone, so the synchronous fetch blocks nothing)."""

    async def aget_connection(self, conn_id: str) -> Any:  # type: ignore[override]
        from api_orchestration.connections.hook import without_policy_fields  # not headers

        return without_policy_fields(self.get_connection(conn_id))


async def connection_config(method: str, conn_id: str) -> Any:
    """``HttpAsyncHook.config()`` for ``conn_id`` in a running event loop: ``base_url``, ``headers``,
    ``auth``, ``extra_options``."""
    return await _SyncFetchAsyncHook(method=method, http_conn_id=conn_id).config()


def async_connection_config(method: str, conn_id: str) -> Any:
    """:func:`connection_config` from synchronous code (in an event loop of its own)."""
    return asyncio.run(connection_config(method, conn_id))


def no_silent_resend(session: aiohttp.ClientSession) -> None:
    """Turn off aiohttp's resend of a request whose keep-alive connection dropped (no public switch)."""
    session._retry_connection = False
