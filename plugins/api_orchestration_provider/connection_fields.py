"""The form fields of the ``resilient_http`` connection type, one table for the UI and the parser
(:mod:`api_orchestration.connections.policies`). Imports nothing (see the package docstring).

Airflow 3.3 declares connection form fields in the provider info (``conn-fields``: a JSON Schema per
field, stored under the field's name in the connection's extra), not with ``get_connection_form_widgets``
(deprecated since 3.2). Each field maps to one argument of one policy class; the policy's own
validation decides what is allowed, so the form and the Python classes cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONN_TYPE = "resilient_http"
HOOK_NAME = "Resilient HTTP API"
HOOK_CLASS = "api_orchestration.connections.hook.ResilientHttpHook"


@dataclass(frozen=True)
class PolicyField:
    """One extra field: ``name`` in the connection's extra, ``policy`` and ``param`` it sets."""

    name: str
    policy: str  # "RateLimit", "RateLimitWindows", "BreakerPolicy", "RetryPolicy", "CachePolicy" or "OAuth2"
    param: str
    kind: str  # JSON Schema type: "integer", "number", "boolean", "string" (a list of codes) or "text"
    label: str
    description: str


FIELDS: tuple[PolicyField, ...] = (
    PolicyField("rate_limit_permits", "RateLimit", "permits", "integer", "Rate limit: permits",
                "At most this many calls per period, shared by every task using this connection. Empty: no limit."),
    PolicyField("rate_limit_per_seconds", "RateLimit", "per_seconds", "number", "Rate limit: period (s)",
                "The period of the rate limit in seconds (default 1)."),
    PolicyField("rate_limit_burst", "RateLimit", "burst", "integer", "Rate limit: burst",
                "How many calls may start back to back (default 1: evenly spaced)."),
    PolicyField("rate_limit_windows", "RateLimitWindows", "windows", "text", "Rate limit: more windows",
                "Further windows held at once, as permits/seconds, comma-separated: 5000/3600 is also at most "
                "5,000 calls per hour (calls may go as fast as the first window allows)."),
    PolicyField("breaker_failure_rate", "BreakerPolicy", "failure_rate", "number", "Breaker: failure rate",
                "Open the circuit when this fraction of the window failed (default 0.5). Any breaker field turns the breaker on."),
    PolicyField("breaker_window_size", "BreakerPolicy", "window_size", "integer", "Breaker: window size",
                "How many recent calls the failure rate is computed over (default 20)."),
    PolicyField("breaker_min_calls", "BreakerPolicy", "min_calls", "integer", "Breaker: minimum calls",
                "Calls needed in the window before the breaker may open (default 10)."),
    PolicyField("breaker_open_seconds", "BreakerPolicy", "open_seconds", "number", "Breaker: open for (s)",
                "How long an open circuit refuses calls before trial calls (default 30)."),
    PolicyField("breaker_half_open_calls", "BreakerPolicy", "half_open_calls", "integer", "Breaker: trial calls",
                "Trial calls let through when half-open, across all workers (default 1)."),
    PolicyField("retry_max_attempts", "RetryPolicy", "max_attempts", "integer", "Retry: max attempts",
                "Attempts per task try, the first included (default 3)."),
    PolicyField("retry_base_delay", "RetryPolicy", "base_delay", "number", "Retry: base delay (s)",
                "Backoff before the second attempt, doubled each time, with full jitter (default 0.5)."),
    PolicyField("retry_max_delay", "RetryPolicy", "max_delay", "number", "Retry: max delay (s)",
                "Cap of the backoff (default 30)."),
    PolicyField("retry_statuses", "RetryPolicy", "retry_statuses", "string", "Retry: statuses",
                "Comma-separated statuses to retry (408, 429 and 5xx only; default 408,429,500,502,503,504)."),
    PolicyField("retry_respect_retry_after", "RetryPolicy", "respect_retry_after", "boolean",
                "Retry: honour Retry-After", "Wait as a 429/503 Retry-After says, and pause the key for every worker (default on)."),
    PolicyField("cache_ttl", "CachePolicy", "ttl", "number", "Cache: TTL (s)",
                "Cache GET/HEAD responses for up to this many seconds, shared by every worker (Cache-Control may shorten it). Empty: no cache."),
    PolicyField("cache_max_entry_bytes", "CachePolicy", "max_entry_bytes", "integer", "Cache: largest entry (bytes)",
                "Responses larger than this are not cached (default 1,000,000)."),
    PolicyField("oauth2_conn_id", "OAuth2", "conn_id", "text", "OAuth2 connection",
                "The id of an OAuth2 client connection (token URL, client id and secret): every call sends its token, shared by every worker."),
)  # fmt: skip

BY_NAME = {f.name: f for f in FIELDS}
PREFIXES = ("rate_limit_", "breaker_", "retry_", "cache_", "oauth2_")
_SCHEMA_TYPE = {"text": "string"}


def conn_fields() -> dict[str, dict[str, Any]]:
    """The provider info's ``conn-fields`` for the connection form (every field optional)."""
    return {
        f.name: {
            "label": f.label,
            "description": f.description,
            "schema": {"type": [_SCHEMA_TYPE.get(f.kind, f.kind), "null"]},
        }
        for f in FIELDS
    }


def ui_field_behaviour() -> dict[str, Any]:
    """The provider info's ``ui-field-behaviour``: relabel and explain the standard fields."""
    return {
        "hidden-fields": [],
        "relabeling": {"schema": "Scheme"},
        "placeholders": {
            "host": "api.example.com (or https://api.example.com)",
            "schema": "https",
            "login": "user name (HTTP Basic), if the API uses it",
            "password": "password or API secret",
            "extra": '{"Authorization": "Bearer ..."}: other keys are sent as headers',
        },
    }
