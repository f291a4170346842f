"""Make URLs safe to log: no user-info, no secret-looking query values."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_PARAM = re.compile(r"(key|token|secret|passw|pwd|auth|signature|sig|credential|session)", re.I)


def redact_url(url: str) -> str:
    """``https://u:p@host/x?api_key=1&q=2`` -> ``https://host/x?api_key=***&q=2``."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
