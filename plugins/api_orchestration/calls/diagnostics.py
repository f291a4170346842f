"""What a response tells about itself for logs and errors: the server's request id and a short,
redacted snippet of its body (an error's explanation; a success's body with ``log_response``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from api_orchestration.redaction import redact_text

SNIPPET_BYTES = 2048  # about 2 KB of body in a log line or an error
# the headers real APIs return their request id in, most common first
REQUEST_ID_HEADERS = (
    "X-Request-Id",
    "Request-Id",
    "X-Amzn-RequestId",
    "X-Amz-Request-Id",
    "X-GitHub-Request-Id",
    "X-Ms-Request-Id",
    "Request-Context",
    "X-Correlation-Id",
    "X-Trace-Id",
    "CF-Ray",
)
_TEXTUAL = re.compile(r"(json|xml|text|html|javascript|x-www-form-urlencoded|problem)", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The server's id for the request, from the first of :data:`REQUEST_ID_HEADERS` it sent."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return redact_text(str(value)[:200])
    return None


def body_snippet(response: Any, limit: int = SNIPPET_BYTES) -> str | None:
    """The body's first ``limit`` characters on one line, credentials redacted (None: no body).
    A binary body is described, not shown."""
    content: bytes = getattr(response, "content", b"") or b""
    if not content:
        return None
    kind = response.headers.get("Content-Type", "")
    head = content[: limit + 512]  # redacted before it is cut: no secret survives half-masked
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        if kind and not _TEXTUAL.search(kind):
            return f"<{len(content)} bytes of {kind.split(';')[0]}>"
        text = head.decode("utf-8", errors="replace")
    text = _SPACE.sub(" ", redact_text(text)).strip()
    if len(text) > limit or len(content) > len(head):
        return f"{text[:limit]}... ({len(content)} bytes)"
    return text
