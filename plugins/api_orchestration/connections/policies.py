"""A connection's default policies: read from its extra, validated by the policy classes themselves.

:func:`connection_policies` is the one place that turns a ``resilient_http`` connection into
policies; the operators, the bulk operator, ``build()`` and specs (through the operators) and
``@task.resilient_http`` call it. The DAG's own policy wins where it sets one
(:meth:`ConnectionPolicies.under`). A bad value never means "unlimited": it raises a
:class:`~api_orchestration.errors.ConfigurationError` naming the connection and the field, with the
policy class's own message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from api_orchestration.connections.fields import BY_NAME, CONN_TYPE, FIELDS, PREFIXES
from api_orchestration.errors import ConfigurationError, did_you_mean
from api_orchestration.policy import (
    BreakerPolicy,
    CachePolicy,
    RateLimit,
    RateLimits,
    RetryPolicy,
    rate_limits,
)

_CLASSES: dict[str, type] = {
    "RateLimit": RateLimit,
    "BreakerPolicy": BreakerPolicy,
    "RetryPolicy": RetryPolicy,
    "CachePolicy": CachePolicy,
}
_NEEDS = {"rate_limit_": "rate_limit_permits", "cache_": "cache_ttl"}  # a policy's one required field


@dataclass(frozen=True)
class ConnectionPolicies:
    """The policies a connection sets (None: the connection sets none of that kind)."""

    conn_id: str
    rate_limit: RateLimits | None = None  # one window, or several held at once
    breaker: BreakerPolicy | None = None
    retry: RetryPolicy | None = None
    cache: CachePolicy | None = None  # applies to the connection's GET/HEAD calls
    oauth2_conn_id: str | None = None

    def under(
        self,
        *,
        rate_limit: RateLimits | None = None,
        breaker: BreakerPolicy | None = None,
        retry: RetryPolicy | None = None,
        cache: CachePolicy | None = None,
        oauth2_conn_id: str | None = None,
        method: str = "GET",
    ) -> ConnectionPolicies:
        """The policies in force for a ``method`` call: the DAG's own where given, else the
        connection's (whose cache applies only to the methods it caches)."""
        own_cache = self.cache if self.cache is not None and method.upper() in self.cache.methods else None
        return ConnectionPolicies(
            self.conn_id, rate_limit or self.rate_limit, breaker or self.breaker, retry or self.retry,
            cache or own_cache, oauth2_conn_id or self.oauth2_conn_id,
        )  # fmt: skip


def policy_fields(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The extra's keys that belong to policies (every key with a policy prefix)."""
    return {k: v for k, v in extra.items() if k.startswith(PREFIXES)}


def _value(conn_id: str, name: str, value: Any, kind: str) -> Any:
    """A form or URI value in the type the policy expects; anything else is passed on for the
    policy class to reject with its own message."""
    if isinstance(value, str):
        text = value.strip()
        if kind == "string":  # a list of status codes: "429, 503"
            parts = [p.strip() for p in text.split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                raise ConfigurationError(
                    f"connection {conn_id!r}",
                    name,
                    value,
                    "must be comma-separated HTTP status codes, such as 429,503",
                )
            return frozenset(int(p) for p in parts)
        if kind == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        for cast in (int, float) if kind in ("integer", "number") else ():
            try:
                return cast(text)
            except ValueError:
                continue
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "string" and isinstance(value, list | tuple):
        return frozenset(value)
    return value


def _windows(owner: str, value: Any) -> list[RateLimit]:
    """``"5000/3600, 100000/86400"``: further windows, each ``permits/seconds`` (burst: permits, so
    calls go as fast as the first window allows)."""
    expected = "must be windows as permits/seconds, comma-separated, such as 5000/3600"
    if not isinstance(value, str):
        raise ConfigurationError(owner, "rate_limit_windows", value, expected)
    windows = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        permits, _, seconds = part.partition("/")
        try:
            n, s = int(permits), float(seconds)
        except ValueError:
            raise ConfigurationError(owner, "rate_limit_windows", value, expected) from None
        try:
            windows.append(RateLimit(n, s, burst=max(n, 1)))
        except ConfigurationError as exc:
            raise ConfigurationError(
                owner, "rate_limit_windows", value, f"{exc.expected} (RateLimit.{exc.param} of {part!r})"
            ) from exc
    if not windows:
        raise ConfigurationError(owner, "rate_limit_windows", value, expected)
    return windows


def policies_from_extra(conn_id: str, extra: Mapping[str, Any]) -> ConnectionPolicies:
    """Build the policies a connection's extra sets; raise ConfigurationError naming the
    connection and the field on an unknown field or a value the policy class refuses."""
    given = {k: v for k, v in policy_fields(extra).items() if v is not None and v != ""}
    owner = f"connection {conn_id!r}"
    for name in given:
        if name not in BY_NAME:
            raise ConfigurationError(
                owner, name, given[name],
                f"is not a field of a {CONN_TYPE} connection{did_you_mean(name, BY_NAME)}; "
                f"the fields are {', '.join(f.name for f in FIELDS)}",
            )  # fmt: skip
    for prefix, needed in _NEEDS.items():
        if needed not in given and any(n.startswith(prefix) for n in given):
            other = next(n for n in given if n.startswith(prefix))
            raise ConfigurationError(owner, other, given[other], f"needs {needed} too")
    oauth2 = given.get("oauth2_conn_id")
    if oauth2 is not None and (not isinstance(oauth2, str) or not oauth2.strip()):
        raise ConfigurationError(
            owner, "oauth2_conn_id", oauth2, "must be the id of an OAuth2 client connection"
        )
    built: dict[str, Any] = {}
    for cls_name, cls in _CLASSES.items():
        fields = [f for f in FIELDS if f.policy == cls_name and f.name in given]
        if not fields:
            continue
        kwargs = {f.param: _value(conn_id, f.name, given[f.name], f.kind) for f in fields}
        try:
            built[cls_name] = cls(**kwargs)
        except ConfigurationError as exc:
            field = next((f.name for f in fields if f.param == exc.param), fields[0].name)
            raise ConfigurationError(
                owner, field, given.get(field, exc.value), f"{exc.expected} ({cls_name}.{exc.param})"
            ) from exc
    rate_limit = built.get("RateLimit")
    if rate_limit is not None and "rate_limit_windows" in given:
        more = _windows(owner, given["rate_limit_windows"])
        try:
            rate_limit = rate_limits([rate_limit, *more], owner, "rate_limit_windows")
        except ConfigurationError as exc:
            raise ConfigurationError(
                owner, "rate_limit_windows", given["rate_limit_windows"], exc.expected
            ) from exc
    return ConnectionPolicies(
        conn_id, rate_limit, built.get("BreakerPolicy"), built.get("RetryPolicy"),
        built.get("CachePolicy"), oauth2.strip() if isinstance(oauth2, str) else None,
    )  # fmt: skip


def connection_policies(conn_id: str) -> ConnectionPolicies:
    """The default policies of the Airflow connection ``conn_id``: those its form fields set if it
    is a ``resilient_http`` connection, none for any other type (an ``http`` connection's extras
    are request headers). Reads the connection through Airflow's secrets backends (env vars first)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type != CONN_TYPE:
        return ConnectionPolicies(conn_id)
    return policies_from_extra(conn_id, conn.extra_dejson)
