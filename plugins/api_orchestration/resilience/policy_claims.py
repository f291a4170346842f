"""One key, one policy: the policy a limiter or breaker key is used with is stored with the key.

Two call sites that use one key with different policies would each decide with their own numbers
on shared state (callers then wait minutes without an error). So each call site *claims* its key
with its policy (:func:`claim`): the first claim, the same policy, or the same place again (its DAG
was edited) is kept; a different policy from another place, while that place's claim is live
(used within ``ttl`` seconds), is a conflict naming both places. Pure: the store runs it atomically
(SQLite in a transaction, Redis as ``state/lua/policy_claim.lua``).
"""

from __future__ import annotations

from dataclasses import dataclass

CLAIM_TTL = 3600.0  # a claim not used for this long gives way to another policy


@dataclass
class PolicyClaim:
    policy: str = ""  # the policy's description, compared as text ("" : no claim)
    owner: str = ""  # the place that made it ("dag 'x' task 'y'")
    seen_at: float = 0.0


@dataclass(frozen=True)
class ClaimResult:
    ok: bool
    policy: str  # the key's policy after the claim (the other place's, when not ok)
    owner: str


def claim(rec: PolicyClaim, policy: str, owner: str, now: float, ttl: float = CLAIM_TTL) -> ClaimResult:
    """Claim the key for ``policy`` from ``owner``; mutates ``rec`` unless it is a conflict."""
    if rec.policy and rec.policy != policy and rec.owner != owner and now - rec.seen_at < ttl:
        return ClaimResult(False, rec.policy, rec.owner)
    if rec.policy != policy or not rec.owner:
        rec.policy, rec.owner = policy, owner
    rec.seen_at = now
    return ClaimResult(True, rec.policy, rec.owner)
