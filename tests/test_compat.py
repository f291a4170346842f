"""Contracts with other libraries' private parts (api_orchestration.compat): each test fails
loudly when an upgrade changes what the package relies on."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid

import aiohttp
import pendulum
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


def test_airflow_template_filters_are_there():
    from api_orchestration.compat import airflow_template_filters

    filters = airflow_template_filters()
    assert {"ds", "ds_nodash", "ts", "ts_nodash", "ts_nodash_with_tz"} <= set(filters)
    assert filters["ds"](pendulum.datetime(2026, 3, 4)) == "2026-03-04"


def test_the_masker_pattern_masks_registered_secrets_by_value():
    from airflow.sdk.log import mask_secret

    from api_orchestration.compat import mask_registered_secrets

    secret = f"s3cret-{uuid.uuid4().hex[:8]}"
    assert mask_registered_secrets(f"x {secret} y") == f"x {secret} y"
    mask_secret(secret)
    assert mask_registered_secrets(f"x {secret} y") == "x *** y"


def test_every_field_renders_through_the_hook_with_the_runner_environment_replaced():
    """Airflow's task runner passes the DAG's environment (native: not sandboxed); plain and mapped
    tasks both render through ``_do_render_template_fields``, which TemplateContextMixin intercepts."""
    from airflow.sdk import DAG

    from api_orchestration.compat import TemplateContextMixin

    seen: list[tuple[str, str]] = []

    class Probe(TemplateContextMixin, BaseOperator):
        template_fields = ("value",)

        def __init__(self, value, **kw):
            super().__init__(**kw)
            self.value = value

        def get_template_env(self, dag=None):
            import jinja2.sandbox

            return jinja2.sandbox.SandboxedEnvironment()

        def template_context(self, context):
            seen.append(("before", self.task_id))

        def render_template(self, content, context, jinja_env=None, seen_oids=None):
            seen.append(("env", type(jinja_env).__name__))
            return super().render_template(content, context, jinja_env, seen_oids)

        def after_rendering(self, context):
            seen.append(("after", self.value))

    with DAG(
        "rel_compat_probe",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        render_template_as_native_obj=True,
    ) as dag:
        plain = Probe(task_id="plain", value="{{ 1 + 1 }}")
    runner_env = dag.get_template_env()
    assert type(runner_env).__name__ == "NativeEnvironment"  # the reason for all this
    plain.render_template_fields({"x": 1}, jinja_env=runner_env)
    assert seen == [("before", "plain"), ("env", "SandboxedEnvironment"), ("after", 2)]
    # the mapped path: MappedOperator.render_template_fields -> unmapped._do_render_template_fields
    # (proved end to end by the fan-out in test_reliability_templates.py)
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    source = inspect.getsource(MappedOperator.render_template_fields)
    assert "unmapped_task._do_render_template_fields(" in source
    # the task runner passes the DAG's environment in: what the mixin replaces
    from airflow.sdk.execution_time import task_runner

    assert "ti.task.dag.get_template_env()" in inspect.getsource(task_runner._prepare)


def test_determine_kwargs_passes_the_context_keys_a_callable_names():
    context = {"ti": "TI", "run_id": "r1", "params": {}}
    assert compat.context_kwargs(lambda response: 1, ["resp"], context) == {}
    assert compat.context_kwargs(lambda response, ti: 1, ["resp"], context) == {"ti": "TI"}
    assert compat.context_kwargs(lambda r, run_id, **kw: 1, ["resp"], context) == context
    assert compat.context_kwargs(len, ["resp"], context) == {}  # a builtin without a signature
