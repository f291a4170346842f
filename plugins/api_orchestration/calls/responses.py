"""What a successful response becomes by default (a call's result, a bulk row's ``result``)."""

from __future__ import annotations

from typing import Any


def default_response_filter(response: Any) -> Any:
    """Parsed JSON when the response says it is JSON, else the text (a ``requests.Response`` or a
    :class:`~api_orchestration.calls.aiohttp_driver.Reply`)."""
    if "json" in response.headers.get("Content-Type", "").lower():
        try:
            return response.json()
        except ValueError:
            return response.text
    return response.text
