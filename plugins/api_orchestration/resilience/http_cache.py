"""HTTP caching decisions for a client-side response cache (RFC 9111), pure: no I/O, the clock is an argument.

- :func:`parse_cache_control` reads ``Cache-Control`` into a typed :class:`CacheControl`.
- :func:`store_decision` says whether a response may be stored: a cacheable method (GET and HEAD by
  default), a storable status (200 and 203 by default), no ``no-store`` (on the request or the
  response), not ``Vary: *``, and either some freshness or a validator to revalidate with.
- :func:`freshness_lifetime` is how long a stored response stays fresh: ``max-age`` (``s-maxage`` too,
  since every worker of a deployment shares the cache), else ``Expires`` minus ``Date``, else the
  caller's ``ttl``; a ``ttl`` also caps what the server allows; ``no-cache`` makes it 0 (store, but
  revalidate before every use). ``Age`` is subtracted.
- :func:`lookup` decides, for a stored :class:`CacheEntry`: ``FRESH`` (serve it, no call), ``REVALIDATE``
  (call with :func:`conditional_headers`: ``If-None-Match``/``If-Modified-Since``) or ``MISS``.
- :func:`refreshed` applies a ``304 Not Modified``: the stored body stays, headers and freshness update.
- :func:`credential_partition` names the credential a request is made with (an OAuth2 connection,
  the ``Authorization``, ``Cookie`` or API-key headers), hashed: entries fetched with one credential
  are never served to a request made with another. No stored entry holds a credential: the request
  header values a response ``Vary``-es on are kept as digests.

:class:`CacheEntry` converts to and from a JSON-able dict (:meth:`CacheEntry.to_dict`) for a shared store.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from api_orchestration.redaction import CREDENTIAL_NAME

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
STORABLE_STATUSES = frozenset({200, 203})
# Headers never kept from a 304 update (RFC 9111 §3.2 lists the ones a cache must not update from it)
_NOT_UPDATED = frozenset({"content-length", "content-encoding", "transfer-encoding", "content-range"})


class CacheLookup(StrEnum):
    FRESH = "fresh"  # serve the stored response without a call
    REVALIDATE = "revalidate"  # call with conditional headers; a 304 refreshes the entry
    MISS = "miss"  # call unconditionally


class StoreVerdict(StrEnum):
    STORE = "store"
    METHOD = "method not cacheable"
    STATUS = "status not storable"
    NO_STORE = "no-store"
    VARY_STAR = "Vary: *"
    PRIVATE_AUTH = "request carried Authorization and the response is not explicitly shareable"
    USELESS = "neither fresh nor revalidatable"


@dataclass(frozen=True)
class CacheControl:
    """The directives of one ``Cache-Control`` field (unknown ones in ``extensions``)."""

    max_age: int | None = None
    s_maxage: int | None = None
    no_store: bool = False
    no_cache: bool = False
    must_revalidate: bool = False
    public: bool = False
    private: bool = False
    extensions: tuple[tuple[str, str | None], ...] = ()


def _seconds(value: str | None) -> int | None:
    """A delta-seconds argument; a malformed one is None (RFC 9111 §1.2.2: treat as stale, 0)."""
    if value is None:
        return None
    value = value.strip().strip('"')
    return int(value) if value.isdigit() else 0


def _split_directives(value: str) -> Iterable[tuple[str, str | None]]:
    for part in value.split(","):
        name, eq, argument = part.strip().partition("=")
        if name:
            yield name.strip().lower(), (argument.strip() if eq else None)


def parse_cache_control(value: str | None) -> CacheControl:
    """``Cache-Control`` directives, case-insensitive; on duplicates the most restrictive max-age wins."""
    if not value:
        return CacheControl()
    fields: dict[str, Any] = {}
    extensions = []
    for name, argument in _split_directives(value):
        if name in ("max-age", "s-maxage"):
            seconds = _seconds(argument) if argument is not None else 0
            key = name.replace("-", "_")
            fields[key] = seconds if key not in fields else min(fields[key], seconds)
        elif name in ("no-store", "no-cache", "must-revalidate", "public", "private"):
            fields[name.replace("-", "_")] = True
        else:
            extensions.append((name, argument))
    return CacheControl(**fields, extensions=tuple(extensions))


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return None if when is None else when.timestamp()


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k).lower(): str(v) for k, v in items}


def freshness_lifetime(
    response_headers: Mapping[str, str], *, ttl: float | None = None, now: float | None = None
) -> float:
    """Seconds a response stays fresh from when it was received at ``now`` (0: revalidate before any use)."""
    h = _lower(response_headers)
    cc = parse_cache_control(h.get("cache-control"))
    if cc.no_cache or cc.no_store:
        return 0.0
    lifetime: float | None
    if cc.s_maxage is not None:
        lifetime = float(cc.s_maxage)
    elif cc.max_age is not None:
        lifetime = float(cc.max_age)
    elif "expires" in h:
        expires = _http_date(h["expires"])
        date = _http_date(h.get("date"))
        # An invalid Expires (e.g. "0") means already expired (RFC 9111 §5.3)
        received = date if date is not None else (time.time() if now is None else now)
        lifetime = 0.0 if expires is None else max(expires - received, 0.0)
    else:
        lifetime = ttl
    if lifetime is None:
        return 0.0
    if ttl is not None:
        lifetime = min(lifetime, ttl)
    age = _seconds(h.get("age")) or 0
    return max(lifetime - age, 0.0)


def store_decision(
    method: str,
    status: int,
    request_headers: Mapping[str, str],
    response_headers: Mapping[str, str],
    *,
    ttl: float | None = None,
    methods: Iterable[str] = CACHEABLE_METHODS,
    statuses: Iterable[int] = STORABLE_STATUSES,
    now: float | None = None,
    per_credential: bool = False,
) -> StoreVerdict:
    """May this response be stored? ``StoreVerdict.STORE``, or the reason why not.

    ``per_credential``: the entry is served only to requests made with the same credential (its key
    includes :func:`credential_partition`), so a response to a request carrying ``Authorization``
    may be stored like any other, as a private cache would; otherwise (one cache for everyone) only
    when the server marks it shareable (RFC 9111 §3.5)."""
    if method.upper() not in {m.upper() for m in methods}:
        return StoreVerdict.METHOD
    if status not in set(statuses):
        return StoreVerdict.STATUS
    req, resp = _lower(request_headers), _lower(response_headers)
    response_cc = parse_cache_control(resp.get("cache-control"))
    if response_cc.no_store or parse_cache_control(req.get("cache-control")).no_store:
        return StoreVerdict.NO_STORE
    if "*" in {v.strip() for v in resp.get("vary", "").split(",")}:
        return StoreVerdict.VARY_STAR
    if (
        "authorization" in req
        and not per_credential
        and not (response_cc.public or response_cc.s_maxage is not None or response_cc.must_revalidate)
    ):
        return StoreVerdict.PRIVATE_AUTH  # RFC 9111 §3.5: a cache shared by workers must not reuse it
    if freshness_lifetime(resp, ttl=ttl, now=now) <= 0 and "etag" not in resp and "last-modified" not in resp:
        return StoreVerdict.USELESS
    return StoreVerdict.STORE


@dataclass(frozen=True)
class CacheEntry:
    """A stored response: what to serve, until when it is fresh, and how to revalidate it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    stored_at: float
    fresh_until: float
    etag: str | None = None
    last_modified: str | None = None
    vary: tuple[tuple[str, str | None], ...] = ()  # the request headers the response varies on: digests

    @property
    def header_map(self) -> dict[str, str]:
        return dict(self.headers)

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until

    @property
    def size(self) -> int:
        """Bytes the entry holds (body plus headers), for size caps."""
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": [list(pair) for pair in self.headers],
            "body": base64.b64encode(self.body).decode("ascii"),
            "stored_at": self.stored_at,
            "fresh_until": self.fresh_until,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "vary": [list(pair) for pair in self.vary],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheEntry:
        return cls(
            status=int(data["status"]),
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            body=base64.b64decode(data["body"]),
            stored_at=float(data["stored_at"]),
            fresh_until=float(data["fresh_until"]),
            etag=data.get("etag"),
            last_modified=data.get("last_modified"),
            vary=tuple((str(k), None if v is None else str(v)) for k, v in data.get("vary", ())),
        )


def _digest(value: str | None) -> str | None:
    """A request header's value as an entry keeps it (``Vary`` matching): a digest, so that no
    credential (``Vary: Authorization``) lands in the shared store."""
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:32]


def _vary_of(
    request_headers: Mapping[str, str], response_headers: Mapping[str, str]
) -> tuple[tuple[str, str | None], ...]:
    req, resp = _lower(request_headers), _lower(response_headers)
    names = sorted({n.strip().lower() for n in resp.get("vary", "").split(",") if n.strip()})
    return tuple((name, _digest(req.get(name))) for name in names)


def credential_partition(request_headers: Mapping[str, str], token_source: str | None = None) -> str:
    """Which credential a request is made with, as a digest ("" for none): ``token_source`` (an
    OAuth2 connection, whose tokens rotate while it stays the same credential) and the values of
    the credential headers sent (``Authorization``, ``Cookie``, ``X-Api-Key``, ...). A cache key
    that includes it keeps what one tenant's credential fetched from any other's."""
    parts = [f"oauth2 {token_source}"] if token_source else []
    parts += sorted(f"{k} {v}" for k, v in _lower(request_headers).items() if CREDENTIAL_NAME.search(k))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32] if parts else ""


def entry_from_response(
    status: int,
    request_headers: Mapping[str, str],
    response_headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: float,
    ttl: float | None = None,
) -> CacheEntry:
    """The entry to store for a response (call :func:`store_decision` first)."""
    pairs = tuple(
        (str(k), str(v))
        for k, v in (response_headers.items() if isinstance(response_headers, Mapping) else response_headers)
    )
    h = _lower(pairs)
    return CacheEntry(
        status=status,
        headers=pairs,
        body=body,
        stored_at=now,
        fresh_until=now + freshness_lifetime(h, ttl=ttl, now=now),
        etag=h.get("etag"),
        last_modified=h.get("last-modified"),
        vary=_vary_of(request_headers, h),
    )


def lookup(entry: CacheEntry | None, request_headers: Mapping[str, str], *, now: float) -> CacheLookup:
    """What to do with a request given its stored entry (None: nothing stored)."""
    if entry is None:
        return CacheLookup.MISS
    req = _lower(request_headers)
    if any(_digest(req.get(name)) != value for name, value in entry.vary):
        return CacheLookup.MISS
    request_cc = parse_cache_control(req.get("cache-control"))
    if request_cc.no_store:
        return CacheLookup.MISS
    fresh = entry.is_fresh(now) and not request_cc.no_cache and request_cc.max_age != 0
    if fresh:
        return CacheLookup.FRESH
    return CacheLookup.REVALIDATE if (entry.etag or entry.last_modified) else CacheLookup.MISS


def conditional_headers(entry: CacheEntry) -> dict[str, str]:
    """The validators to send when revalidating ``entry``."""
    headers = {}
    if entry.etag:
        headers["If-None-Match"] = entry.etag
    if entry.last_modified:
        headers["If-Modified-Since"] = entry.last_modified
    return headers


def refreshed(
    entry: CacheEntry, not_modified_headers: Mapping[str, str], *, now: float, ttl: float | None = None
) -> CacheEntry:
    """The entry after a ``304 Not Modified``: same body, headers updated from the 304, fresh again.

    Raises ValueError when the 304 names another ``ETag`` than the stored one (it then validates a
    different response, which the caller must fetch unconditionally)."""
    update = _lower(not_modified_headers)
    new_etag = update.get("etag")
    if new_etag and entry.etag and new_etag.removeprefix("W/") != entry.etag.removeprefix("W/"):
        raise ValueError(f"304 validates ETag {new_etag}, not the stored {entry.etag}")
    merged = {k.lower(): (k, v) for k, v in entry.headers}
    for name, value in not_modified_headers.items():
        if name.lower() not in _NOT_UPDATED:
            merged[name.lower()] = (name, value)
    headers = tuple(merged.values())
    h = _lower(headers)
    return replace(
        entry,
        headers=headers,
        stored_at=now,
        fresh_until=now + freshness_lifetime(h, ttl=ttl, now=now),
        etag=h.get("etag"),
        last_modified=h.get("last-modified"),
    )


def is_cacheable_method(method: str, methods: Iterable[str] = CACHEABLE_METHODS) -> bool:
    return method.upper() in {m.upper() for m in methods}


def remaining_freshness(entry: CacheEntry, now: float) -> float:
    """Seconds until ``entry`` turns stale (0 if it already is)."""
    return max(entry.fresh_until - now, 0.0) if math.isfinite(entry.fresh_until) else math.inf
