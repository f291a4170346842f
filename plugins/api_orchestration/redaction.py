"""Keep secrets out of what we show: URLs in logs and errors, rendered fields, XCom values.

- :func:`redact_url`: a URL without user-info and with secret-looking query values masked.
- :func:`register_secrets`: tell Airflow's secrets masker about values to hide (it then masks them
  in log lines and in the rendered template fields the UI shows, as it does connection passwords);
  :func:`request_secrets` and :func:`connection_secrets` find them in a request and a connection.
- :func:`mask_secrets`: every registered secret in a value (strings inside dicts and lists) replaced
  by ``***``, as in log lines; used on XCom values.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_PARAM = re.compile(r"(key|token|secret|passw|pwd|auth|signature|sig|credential|session)", re.I)
# header, body and connection-extra names that hold credentials (narrower than query parameters:
# an Idempotency-Key header is not a secret)
CREDENTIAL_NAME = re.compile(
    r"(^|[-_])(authorization|auth|password|passwd|pwd|secret|token|api[-_]?key|apikey|access[-_]?key|"
    r"private[-_]?key|client[-_]?secret|cookie|session|credentials?|signature)($|[-_])",
    re.IGNORECASE,
)
# query parameters whose value is registered as a secret (narrower than SECRET_PARAM, which only
# masks URLs in log lines: registering ``?sort_key=updated_at`` would mask "updated_at" everywhere)
_SECRET_QUERY_NAMES = frozenset({"key", "sig", "code"})
_AUTH_SCHEME = re.compile(r"^\s*(bearer|basic|token|digest)\s+(\S+)\s*$", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``https://u:p@host/x?api_key=1&q=2`` -> ``https://host/x?api_key=***&q=2`` (also for
    ``redis://:pw@host/0?password=pw&prefix=a:`` -> ``redis://host/0?password=***&prefix=a:``)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, "***" if SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*:/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _with_token(value: str) -> Iterator[str]:
    """A credential value, and the token alone when it is ``<scheme> <token>``."""
    yield value
    if match := _AUTH_SCHEME.match(value):
        yield match.group(2)


def _credentials_in(value: Any) -> Iterator[str]:
    """Values under credential-like keys anywhere in ``value`` (dicts and lists)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if CREDENTIAL_NAME.search(str(k)) and isinstance(v, str | int) and not isinstance(v, bool):
                yield from _with_token(str(v))
            else:
                yield from _credentials_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _credentials_in(v)


def _is_secret_query(name: str) -> bool:
    return bool(CREDENTIAL_NAME.search(name)) or name.lower() in _SECRET_QUERY_NAMES


def request_secrets(endpoint: Any, query: Any = None, headers: Any = None, body: Any = None) -> list[str]:
    """Secret-looking values of a request: query values named like secrets (in the endpoint's query
    string or ``query``), credential headers and body fields named like credentials."""
    found: list[str] = []
    if isinstance(endpoint, str) and "?" in endpoint:
        found += [v for k, v in parse_qsl(urlsplit(endpoint).query) if _is_secret_query(k)]
    if isinstance(query, dict):
        found += [str(v) for k, v in query.items() if _is_secret_query(str(k)) and isinstance(v, str | int)]
    found += _credentials_in(headers)
    found += _credentials_in(body)
    return found


def connection_secrets(conn: Any) -> list[str]:
    """What a connection sends as credentials: its password (and the Basic header made from it)
    and its credential-like extras (providers-http sends extras as headers)."""
    found: list[str] = []
    if conn.password:
        found.append(conn.password)
        if conn.login:
            token = base64.b64encode(f"{conn.login}:{conn.password}".encode()).decode()
            found += [token, f"Basic {token}"]
    found += _credentials_in(conn.extra_dejson or {})
    return found


def register_secrets(values: Iterable[str]) -> None:
    """Have Airflow's secrets masker hide ``values`` (it skips values shorter than its minimum, 5)."""
    from airflow.sdk.log import mask_secret

    for value in values:
        if value and value.strip():
            mask_secret(value)


def mask_secrets(value: Any) -> Any:
    """``value`` with every registered secret replaced by ``***`` in its strings (dict keys kept)."""
    from api_orchestration.compat import mask_registered_secrets  # Airflow's masker, loaded when used

    if isinstance(value, str):
        return mask_registered_secrets(value)
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, tuple):
        return tuple(mask_secrets(v) for v in value)
    return value


# a JSON member whose name looks like a credential: "access_token": "..." (value masked)
_JSON_CREDENTIAL = re.compile(r'"(?P<name>[^"\\]{1,64})"(?P<sep>\s*:\s*)"(?:[^"\\]|\\.)*"')
# a credential in text: "Bearer abc...", "api_key=abc..." (form bodies, URLs, header dumps)
_TEXT_SCHEME = re.compile(r"\b(bearer|basic|token|digest)(\s+)[A-Za-z0-9._~+/=-]{6,}", re.IGNORECASE)
_TEXT_PARAM = re.compile(
    r"\b((?:access|refresh|id)?[-_]?(?:token|secret|password|passwd|api[-_]?key|apikey|client[-_]?secret|"
    r"signature|sig|key))=([^&\s\"']+)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` (a response body, say) without credentials: JSON members and ``name=value`` pairs
    named like credentials, ``Bearer``/``Basic`` tokens, and every secret registered with
    Airflow's masker (the connection's and the request's), each replaced by ``***``."""

    def json_member(m: re.Match[str]) -> str:
        if CREDENTIAL_NAME.search(m.group("name")):
            return f'"{m.group("name")}"{m.group("sep")}"***"'
        return m.group(0)

    text = _JSON_CREDENTIAL.sub(json_member, text)
    text = _TEXT_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _TEXT_PARAM.sub(lambda m: f"{m.group(1)}=***", text)
    return mask_secrets(text)
