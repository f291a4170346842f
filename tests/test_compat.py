"""Contracts with other libraries' private parts (api_orchestration.compat): each test fails
loudly when an upgrade changes what the package relies on."""

from __future__ import annotations

import asyncio
import inspect
import json

import aiohttp
import pytest
from airflow.providers.http.hooks.http import HttpAsyncHook, HttpHook
from airflow.sdk import BaseOperator

from api_orchestration import compat

CONN = {"conn_type": "http", "host": "127.0.0.1", "port": 1, "login": "u", "password": "p",
        "extra": {"X-Api-Key": "k", "allow_redirects": False}}  # fmt: skip


@pytest.fixture
def connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_COMPAT_API", json.dumps(CONN))
    return "compat_api"


def test_airflow_renders_every_templated_field_through_do_render_template_fields():
    params = list(inspect.signature(BaseOperator._do_render_template_fields).parameters)
    assert params == ["self", "parent", "template_fields", "context", "jinja_env", "seen_oids"]
    source = inspect.getsource(BaseOperator.render_template_fields)
    assert "_do_render_template_fields" in source


def test_http_hook_keeps_the_merged_extras(connection):
    hook = HttpHook(method="GET", http_conn_id=connection)
    hook.get_conn()
    assert compat.merged_extra(hook).get("allow_redirects") is False


def test_http_async_hook_reads_the_connection_through_aget_connection(connection):
    assert inspect.iscoroutinefunction(HttpAsyncHook.aget_connection)
    config = compat.async_connection_config("GET", connection)
    assert config.base_url == "http://127.0.0.1:1"
    assert config.headers == {"X-Api-Key": "k"} and config.auth.login == "u"
    assert config.extra_options.get("allow_redirects") is False


def test_aiohttp_sessions_resend_on_dropped_connections_unless_switched_off():
    async def make() -> tuple[bool, bool]:
        async with aiohttp.ClientSession() as session:
            default = session._retry_connection
            compat.no_silent_resend(session)
            return default, session._retry_connection

    assert asyncio.run(make()) == (True, False)
