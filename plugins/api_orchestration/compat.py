"""The one place that touches other libraries' private parts. Each has a contract test
(tests/test_compat.py) that fails loudly when an upgrade changes it.

- Airflow ``BaseOperator._do_render_template_fields``: the one method every templated field of a
  task (plain or mapped) is rendered through; :class:`TemplateContextMixin` adds variables there.
- providers-http ``HttpHook.merged_extra``: the connection's extras as the hook merged them
  (``allow_redirects`` and friends), read after ``get_conn``.
- providers-http ``HttpAsyncHook.aget_connection``: overridden so ``config()`` (base URL,
  credentials, headers, options read from the connection) runs in a plain event loop of a task.
- aiohttp ``ClientSession._retry_connection``: off, so aiohttp never silently re-sends an admitted
  request on a dropped keep-alive connection (aiohttp's own test client sets it the same way).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from airflow.providers.http.hooks.http import HttpAsyncHook, HttpHook


class TemplateContextMixin:
    """Operators that add variables to their templates' context define ``template_context(context)``."""

    def template_context(self, context: Any) -> None:
        """Add variables to ``context`` before the templated fields are rendered."""

    def _do_render_template_fields(
        self, parent: Any, template_fields: Any, context: Any, *args: Any, **kwargs: Any
    ) -> None:
        self.template_context(context)
        super()._do_render_template_fields(parent, template_fields, context, *args, **kwargs)  # type: ignore[misc]


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
