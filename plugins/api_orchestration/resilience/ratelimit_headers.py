"""What a response says about the rate limit: parse its headers into a :class:`RateLimitInfo`, and decide
how long the limiter key must pause (:func:`pause_for`). Pure: no I/O, the clock is an argument.

Understood, in this order of preference:

- **IETF draft, structured fields** (draft-ietf-httpapi-ratelimit-headers-08 and later):
  ``RateLimit-Policy: "burst";q=100;w=60, "day";q=1000;w=86400`` and ``RateLimit: "burst";r=50;t=30``
  (also the interim ``l=`` for the quota); one :class:`QuotaWindow` per named policy.
- **IETF draft 07**: ``RateLimit: limit=10, remaining=5, reset=3`` (a dictionary) with
  ``RateLimit-Policy: 10;w=1, 100;w=60``.
- **Older drafts**: ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds).
- **GitHub and the X- variants**: ``x-ratelimit-limit``, ``-remaining``, ``-used``, ``-reset``,
  ``-resource`` (also ``x-rate-limit-*``, Twitter/X). A reset above 10^9 is an epoch time (GitHub, X, Okta),
  smaller values are seconds from now.
- **Shopify**: ``X-Shopify-Shop-Api-Call-Limit: 32/40``.
- **``Retry-After``** (RFC 9110 §10.2.3): seconds or an HTTP date, on any of them.

Every reset is turned into an absolute epoch time (``reset_at``), so the answer can be stored and
shared by workers whose clocks read the response at different moments.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

EPOCH_THRESHOLD = 1_000_000_000  # a reset value above this is an epoch time, below it seconds from now
DEFAULT_WAIT_SECONDS = 60.0  # GitHub: "wait at least one minute" when no header says how long
_THROTTLE_STATUSES = frozenset({403, 429})


class HeaderStyle(StrEnum):
    """Which convention the rate-limit headers of a response follow."""

    IETF = "ietf"  # RateLimit + RateLimit-Policy, structured-field lists (draft 08+)
    IETF_DRAFT7 = "ietf-draft-07"  # RateLimit dictionary (limit=, remaining=, reset=)
    IETF_LEGACY = "ietf-legacy"  # RateLimit-Limit / -Remaining / -Reset
    X_RATELIMIT = "x-ratelimit"  # GitHub, Twitter/X, Okta, Zendesk, ...
    SHOPIFY = "shopify"
    NONE = "none"  # no rate-limit header (maybe only Retry-After)


class PauseReason(StrEnum):
    """Why :func:`pause_for` asks the key to pause."""

    NONE = "none"
    RETRY_AFTER = "retry-after"  # the server said how long
    EXHAUSTED = "exhausted"  # a window has no budget left: until its reset
    THROTTLED = "throttled"  # 429, or 403 with rate-limit headers, and no timing: the default wait


@dataclass(frozen=True)
class QuotaWindow:
    """One quota: ``limit`` units per ``window_seconds``, ``remaining`` until ``reset_at`` (epoch)."""

    name: str | None = None
    limit: int | None = None
    window_seconds: float | None = None
    remaining: int | None = None
    reset_at: float | None = None

    @property
    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


@dataclass(frozen=True)
class RateLimitInfo:
    """The rate-limit state a response announced; ``limit``/``remaining``/``reset_at`` are the tightest window's."""

    style: HeaderStyle
    windows: tuple[QuotaWindow, ...] = ()
    used: int | None = None
    resource: str | None = None
    retry_after_at: float | None = None  # absolute epoch from Retry-After
    status: int | None = None
    body_says_rate_limit: bool = False  # the error body mentions a rate limit (GitHub's secondary 403s)

    @property
    def tightest(self) -> QuotaWindow | None:
        """The window with the least budget left (the later reset on ties), if any reports one."""
        known = [w for w in self.windows if w.remaining is not None]
        if not known:
            return self.windows[0] if self.windows else None
        return min(known, key=lambda w: (w.remaining, -(w.reset_at or 0.0)))

    @property
    def limit(self) -> int | None:
        return self.tightest.limit if self.tightest else None

    @property
    def remaining(self) -> int | None:
        return self.tightest.remaining if self.tightest else None

    @property
    def reset_at(self) -> float | None:
        return self.tightest.reset_at if self.tightest else None

    @property
    def exhausted(self) -> bool:
        return any(w.exhausted for w in self.windows)


@dataclass(frozen=True)
class Pause:
    """How long the key must pause: ``seconds`` from the decision's ``now``, until ``until`` (epoch)."""

    seconds: float
    until: float
    reason: PauseReason

    def __bool__(self) -> bool:
        return self.seconds > 0


# --- structured fields (RFC 8941), the subset these headers use ---------------------------------


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double-quoted strings."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _bare(value: str) -> str | int | float | bool | None:
    value = value.strip()
    if not value:
        return None
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    if value in ("?1", "?0"):
        return value == "?1"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value  # a token
    return number if math.isfinite(number) else None


def _member(text: str) -> tuple[str | int | float | bool | None, dict[str, str | int | float | bool | None]]:
    """One list member: its bare item and its ``;key=value`` parameters (a bare ``;key`` is True)."""
    head, *params = _split_top(text, ";")
    parsed: dict[str, str | int | float | bool | None] = {}
    for param in params:
        key, eq, value = param.partition("=")
        parsed[key.strip().lower()] = _bare(value) if eq else True
    return _bare(head), parsed


def parse_sf_list(
    value: str,
) -> list[tuple[str | int | float | bool | None, dict[str, str | int | float | bool | None]]]:
    """An RFC 8941 List of Items (inner lists are not used by these headers and come back as text)."""
    return [_member(part) for part in _split_top(value, ",") if part]


def parse_sf_dict(value: str) -> dict[str, str | int | float | bool | None]:
    """An RFC 8941 Dictionary, values only (``key=value``; a bare ``key`` is True)."""
    result: dict[str, str | int | float | bool | None] = {}
    for part in _split_top(value, ","):
        if not part:
            continue
        key, eq, rest = part.partition("=")
        item, _ = _member(rest) if eq else (True, {})
        result[key.strip().lower()] = item
    return result


# --- helpers ------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None or number < 0 else int(number)


def _delta_reset(value: object, now: float) -> float | None:
    seconds = _number(value)
    return None if seconds is None or seconds < 0 else now + seconds


def _epoch_or_delta_reset(value: object, now: float) -> float | None:
    number = _number(value)
    if number is None or number < 0:
        return None
    return number if number >= EPOCH_THRESHOLD else now + number


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as an absolute epoch time: delay-seconds or an HTTP date; None if absent or bad."""
    if not value or not value.strip():
        return None
    value = value.strip()
    seconds = _number(value)
    if seconds is not None:
        return now + max(seconds, 0.0)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return None if when is None else max(when.timestamp(), now)


class _Headers:
    """Case-insensitive read access over any mapping of header names to values."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._h = {str(k).lower(): str(v) for k, v in headers.items()}

    def get(self, *names: str) -> str | None:
        for name in names:
            value = self._h.get(name)
            if value is not None and value.strip():
                return value.strip()
        return None


# --- the parsers --------------------------------------------------------------------------------


def _policies(value: str | None) -> list[tuple[str | None, int | None, float | None]]:
    """(name, quota, window) per ``RateLimit-Policy`` member, in both the named and the numeric form."""
    if not value:
        return []
    found = []
    for item, params in parse_sf_list(value):
        if isinstance(item, int | float) and not isinstance(item, bool):  # draft <= 07: 10;w=1
            found.append((None, _count(item), _number(params.get("w"))))
        else:
            quota = params.get("q", params.get("l"))
            found.append((None if item is None else str(item), _count(quota), _number(params.get("w"))))
    return found


def _ietf(h: _Headers, now: float) -> tuple[HeaderStyle, tuple[QuotaWindow, ...]] | None:
    current = h.get("ratelimit")
    policies = _policies(h.get("ratelimit-policy"))
    if current is not None and re.search(r"(^|[,\s])(limit|remaining|reset)\s*=", current):
        values = parse_sf_dict(current)  # draft 07
        window = policies[0][2] if len(policies) == 1 else None
        quota = QuotaWindow(
            None,
            _count(values.get("limit")),
            window,
            _count(values.get("remaining")),
            _delta_reset(values.get("reset"), now),
        )
        return HeaderStyle.IETF_DRAFT7, (quota,)
    if current is not None:
        windows = []
        by_name = {name: (quota, window) for name, quota, window in policies if name is not None}
        for item, params in parse_sf_list(current):
            name = None if item is None else str(item)
            quota, window = by_name.get(name, (None, None)) if name is not None else (None, None)
            remaining = _count(params.get("r"))
            windows.append(QuotaWindow(name, quota, window, remaining, _delta_reset(params.get("t"), now)))
        if windows:
            return HeaderStyle.IETF, tuple(windows)
    legacy_limit = h.get("ratelimit-limit")
    legacy_remaining = h.get("ratelimit-remaining")
    if legacy_limit is not None or legacy_remaining is not None:
        limit_items = parse_sf_list(legacy_limit) if legacy_limit else []
        limit = _count(limit_items[0][0]) if limit_items else None
        window = _number(limit_items[0][1].get("w")) if limit_items else None
        if window is None and len(policies) == 1:
            window = policies[0][2]
        quota = QuotaWindow(
            None, limit, window, _count(legacy_remaining), _delta_reset(h.get("ratelimit-reset"), now)
        )
        return HeaderStyle.IETF_LEGACY, (quota,)
    if policies:  # a policy alone: quotas without the current state
        return HeaderStyle.IETF, tuple(QuotaWindow(name, quota, window) for name, quota, window in policies)
    return None


def _x_ratelimit(h: _Headers, now: float) -> tuple[QuotaWindow, int | None, str | None] | None:
    limit = h.get("x-ratelimit-limit", "x-rate-limit-limit")
    remaining = h.get("x-ratelimit-remaining", "x-rate-limit-remaining")
    if limit is None and remaining is None:
        return None
    reset = h.get("x-ratelimit-reset", "x-rate-limit-reset")
    resource = h.get("x-ratelimit-resource")
    window = QuotaWindow(resource, _count(limit), None, _count(remaining), _epoch_or_delta_reset(reset, now))
    return window, _count(h.get("x-ratelimit-used")), resource


def _shopify(h: _Headers) -> QuotaWindow | None:
    value = h.get("x-shopify-shop-api-call-limit")
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value or "")
    if match is None:
        return None
    used, limit = int(match[1]), int(match[2])
    return QuotaWindow("shopify", limit, None, max(limit - used, 0), None)


_RATE_LIMIT_WORDS = re.compile(r"rate[ _-]?limit|too many requests|throttl", re.IGNORECASE)


def parse_rate_limit(
    headers: Mapping[str, str],
    *,
    status: int | None = None,
    now: float | None = None,
    body: str | None = None,
) -> RateLimitInfo:
    """The rate-limit state ``headers`` announce (``style`` NONE when they announce nothing).

    ``body`` (the start of an error body, optional) lets a 403 that only *says* it is a rate limit
    (GitHub's secondary limit without ``retry-after``) count as one."""
    now = time.time() if now is None else now
    h = _Headers(headers)
    says = bool(body and status is not None and status >= 400 and _RATE_LIMIT_WORDS.search(body))
    retry_after_at = parse_retry_after(h.get("retry-after"), now)
    common: dict[str, Any] = {
        "retry_after_at": retry_after_at,
        "status": status,
        "body_says_rate_limit": says,
    }
    ietf = _ietf(h, now)
    if ietf is not None:
        style, windows = ietf
        return RateLimitInfo(style, windows, **common)
    x = _x_ratelimit(h, now)
    if x is not None:
        window, used, resource = x
        return RateLimitInfo(HeaderStyle.X_RATELIMIT, (window,), used, resource, **common)
    shopify = _shopify(h)
    if shopify is not None:
        return RateLimitInfo(HeaderStyle.SHOPIFY, (shopify,), **common)
    return RateLimitInfo(HeaderStyle.NONE, **common)


def is_rate_limited(info: RateLimitInfo) -> bool:
    """Was this answer a refusal for rate limiting? A 429; or a 403 with ``Retry-After``, an exhausted
    window or a body that says so (GitHub's primary and secondary limits). Any other 403 is a plain
    permission error."""
    if info.status == 429:
        return True
    return info.status == 403 and (
        info.retry_after_at is not None or info.exhausted or info.body_says_rate_limit
    )


def pause_for(
    info: RateLimitInfo, *, now: float | None = None, default_wait: float = DEFAULT_WAIT_SECONDS
) -> Pause:
    """How long every caller of the key must pause after this answer.

    ``Retry-After`` wins when given. Otherwise an exhausted window pauses until its reset (the
    latest of the exhausted windows), on a refusal and on a success alike (the next call would be
    refused). A rate-limit refusal that says nothing about timing pauses ``default_wait`` seconds.
    Anything else: no pause.
    """
    now = time.time() if now is None else now
    limited = is_rate_limited(info)
    if info.retry_after_at is not None and (limited or info.status in (503, None) or info.exhausted):
        return _pause(info.retry_after_at, now, PauseReason.RETRY_AFTER)
    resets = [w.reset_at for w in info.windows if w.exhausted and w.reset_at is not None]
    if resets:
        return _pause(max(resets), now, PauseReason.EXHAUSTED)
    if limited or (info.exhausted and info.status in _THROTTLE_STATUSES):
        return _pause(now + default_wait, now, PauseReason.THROTTLED)
    return Pause(0.0, now, PauseReason.NONE)


def _pause(until: float, now: float, reason: PauseReason) -> Pause:
    seconds = max(until - now, 0.0)
    return Pause(seconds, now + seconds, reason if seconds > 0 else PauseReason.NONE)
