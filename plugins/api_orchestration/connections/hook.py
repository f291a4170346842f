"""``ResilientHttpHook``: the hook of ``resilient_http`` connections.

An ``HttpHook`` (base URL, credentials, request options and headers from the extra, exactly as
providers-http reads an ``http`` connection) that leaves the policy fields out of the request: to
``HttpHook`` every unknown extra key is a header, and ``rate_limit_permits: 5`` is not one. The
policies themselves are read by :func:`~api_orchestration.connections.policies.connection_policies`.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.http.hooks.http import HttpHook

from api_orchestration.connections.fields import CONN_TYPE, HOOK_NAME
from api_orchestration.connections.policies import policy_fields


class _WithoutPolicyFields:
    """A connection seen without its policy fields (every other attribute is the connection's)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    @property
    def extra_dejson(self) -> dict[str, Any]:
        extra = self._conn.extra_dejson
        return {k: v for k, v in extra.items() if k not in policy_fields(extra)}

    @property
    def extra(self) -> str | None:
        return json.dumps(self.extra_dejson) if self.extra_dejson else None


def without_policy_fields(conn: Any) -> Any:
    """``conn`` as ``HttpHook`` should see it: without the policy fields in its extra."""
    return _WithoutPolicyFields(conn) if policy_fields(conn.extra_dejson) else conn


class ResilientHttpHook(HttpHook):
    """An ``HttpHook`` for ``resilient_http`` connections (and ``http`` ones: it reads both).

    :param method: the HTTP method of :meth:`run`.
    :param http_conn_id: the connection id.
    :param auth_type: the ``requests`` auth class for login/password (default HTTP Basic).
    """

    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    @classmethod
    def get_connection(cls, conn_id: str) -> Any:
        return without_policy_fields(super().get_connection(conn_id))

    def test_connection(self) -> tuple[bool, str]:
        """Check that the policy fields are valid and the host answers (the UI's Test button)."""
        from api_orchestration.connections.policies import connection_policies
        from api_orchestration.errors import ConfigurationError

        try:
            connection_policies(self.http_conn_id)
        except ConfigurationError as exc:
            return False, str(exc)
        return super().test_connection()
