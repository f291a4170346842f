"""The ``resilient_http`` form fields (defined with the provider info, which must import nothing)."""

from api_orchestration_provider.connection_fields import (
    BY_NAME,
    CONN_TYPE,
    FIELDS,
    HOOK_CLASS,
    HOOK_NAME,
    PREFIXES,
    PolicyField,
    conn_fields,
    ui_field_behaviour,
)

__all__ = [
    "BY_NAME",
    "CONN_TYPE",
    "FIELDS",
    "HOOK_CLASS",
    "HOOK_NAME",
    "PREFIXES",
    "PolicyField",
    "conn_fields",
    "ui_field_behaviour",
]
