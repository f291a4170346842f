"""The shared access token of one OAuth2 connection: who may fetch a new one (a single-flight lease).

Every worker asks the store for the token with :func:`decide` (one atomic operation; SQLite runs it
in a transaction, Redis runs its Lua port ``state/lua/token_lease.lua``). The answer is one of:

- ``use``: the stored token is good (more than ``margin`` seconds before its expiry, and not the
  one the caller saw rejected);
- ``fetch``: the caller holds the lease and must request a token, then store it (which frees the
  lease); the stale entry comes along, so a refresh token can be used (and its rotation kept);
- ``wait``: another caller holds the lease; ask again shortly (``wait``: when the lease ends).

A lease that is not released (its holder died) expires after ``lease_seconds``. Nothing here does
I/O or reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

WAIT_STEP = 0.05  # how long a caller waiting for another's token request sleeps between asks


class TokenDecisionKind(StrEnum):
    USE = "use"
    FETCH = "fetch"
    WAIT = "wait"


@dataclass
class TokenRecord:
    """What the store keeps per connection: the entry (JSON text, see ``calls.tokens``: it holds
    the tokens, so it is never shown), its expiry (None: the server did not say), the access
    token's fingerprint, and the lease."""

    entry: str = ""
    expires_at: float | None = None
    fingerprint: str = ""
    lease_holder: str = ""
    lease_until: float = 0.0


@dataclass(frozen=True)
class TokenDecision:
    kind: TokenDecisionKind
    entry: str  # the stored entry ("" when none): good for ``use``, stale for ``fetch``
    wait: float = 0.0


def usable(rec: TokenRecord, now: float, margin: float, reject: str | None) -> bool:
    if not rec.entry or not rec.fingerprint:
        return False
    if reject is not None and rec.fingerprint == reject:
        return False
    return rec.expires_at is None or now < rec.expires_at - margin


def decide(
    rec: TokenRecord, now: float, holder: str, lease_seconds: float, margin: float, reject: str | None
) -> TokenDecision:
    """The token for ``holder``, or the lease to fetch one, or how long to wait; mutates ``rec``
    (a lease taken). ``reject``: the fingerprint of a token the API refused (a 401)."""
    if usable(rec, now, margin, reject):
        return TokenDecision(TokenDecisionKind.USE, rec.entry)
    if rec.lease_holder and rec.lease_holder != holder and rec.lease_until > now:
        return TokenDecision(TokenDecisionKind.WAIT, "", rec.lease_until - now)
    rec.lease_holder, rec.lease_until = holder, now + lease_seconds
    return TokenDecision(TokenDecisionKind.FETCH, rec.entry)


def store(rec: TokenRecord, holder: str, entry: str, expires_at: float | None, fingerprint: str) -> None:
    """Keep a new token (from ``holder``'s fetch) and free the lease if ``holder`` has it."""
    rec.entry, rec.expires_at, rec.fingerprint = entry, expires_at, fingerprint
    release(rec, holder)


def release(rec: TokenRecord, holder: str) -> None:
    """Free the lease (a failed fetch) if ``holder`` has it."""
    if rec.lease_holder == holder:
        rec.lease_holder, rec.lease_until = "", 0.0
