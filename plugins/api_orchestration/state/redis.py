"""Distributed backend: state in Redis, every decision one Lua script on the server's clock.

URL: ``redis://[:password@]host:port/db[?prefix=apiorch:]`` (``rediss://`` for TLS). The optional
``prefix`` namespaces every key, so several deployments (or test runs) can share one server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from api_orchestration.errors import StateBackendError
from api_orchestration.policy import BreakerPolicy, RateLimit
from api_orchestration.resilience import breaker as brk
from api_orchestration.state import redis_scripts
from api_orchestration.state.base import Admission, Batch, StateBackend, Transition, Verdict

T = TypeVar("T")
DEFAULT_PREFIX = "apiorch:"


def split_prefix(url: str) -> tuple[str, str]:
    """Remove our ``prefix`` query parameter from a Redis URL; returns (url for redis-py, prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _float(value: Any) -> float:
    return float(value) if value not in (None, "", b"") else 0.0


_LIMITER_FLOATS = ("tat", "last_slot", "paused_until", "last_retry_after", "limit_window", "period_start")
_LIMITER_INTS = ("granted", "limit_permits", "limit_burst", "period_count")


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis SCAN MATCH pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class RedisBackend(StateBackend):
    """Shared state in Redis for processes on any number of hosts."""

    def __init__(self, url: str, *, socket_timeout: float = 5.0) -> None:
        self.url = url
        client_url, self.prefix = split_prefix(url)
        self.client = redis.Redis.from_url(
            client_url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            decode_responses=True,
        )
        self._script = self.client.register_script(redis_scripts.STATE)

    def _keys(self, kind: str, key: str) -> list[str]:
        base = f"{self.prefix}{kind}:{{{key}}}"  # hash tag: both keys on one cluster slot
        return [base, base + ":z"]

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise StateBackendError(self.safe_url, operation, exc) from exc

    @property
    def safe_url(self) -> str:
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- admissions: one call, or a batch of calls, per script call ------------------------------
    def admit_many(
        self,
        count: int,
        limit_key: str | None,
        limit: RateLimit | None,
        breaker_key: str | None,
        breaker: BreakerPolicy | None,
        max_wait: float,
        lease_seconds: float,
        verdicts: Sequence[Verdict] = (),
    ) -> Batch:
        has_breaker, keys, shared = self._admit_args(
            limit_key, limit, breaker_key, breaker, max_wait, lease_seconds
        )
        args = ["admit_many", count, *shared, len(verdicts)]
        for verdict in verdicts:
            keys += self._keys("br", verdict.key)
            args += self._record_args(verdict)[1:]
        reply = self._call("admit_many", lambda: self._script(keys=keys, args=args))
        n, paused, kind, gen, state, has_refusal = reply[:6]
        granted = tuple(
            Admission(
                True, "ok", float(wait), bool(paused),
                brk.BreakerDecision(True, kind, int(gen), state, lease) if has_breaker else None,
            )
            for wait, lease in zip(reply[16 : 16 + 2 * n : 2], reply[17 : 17 + 2 * n : 2], strict=True)
        )  # fmt: skip
        refused = None
        if has_refusal:
            reason, wait, r_paused, allowed, b_kind, b_gen, b_state, lease, reopen_at, b_wait = reply[6:16]
            decision = None
            if b_kind:
                decision = brk.BreakerDecision(
                    bool(allowed), b_kind, int(b_gen), b_state, lease,
                    float(reopen_at) if reopen_at else None, float(b_wait),
                )  # fmt: skip
            refused = Admission(False, reason, float(wait), bool(r_paused), decision)
        states = reply[16 + 2 * n :]
        recorded = tuple(Transition(b, a) for b, a in zip(states[::2], states[1::2], strict=True))
        return Batch(granted, refused, recorded)

    # -- limiter --------------------------------------------------------------------------------
    def limiter_pause(self, key: str, seconds: float) -> float:
        until = self._call(
            "limiter_pause",
            lambda: self._script(keys=self._keys("rl", key)[:1], args=["pause", repr(seconds)]),
        )
        return float(until)

    def limiter_status(self, key: str) -> dict[str, Any] | None:
        raw = self._call("limiter_status", lambda: self.client.hgetall(self._keys("rl", key)[0]))
        if not raw:
            return None
        now = self._now()
        names = ("tat", "last_slot", "paused_until", "last_retry_after")
        return {**{n: _float(raw.get(n)) for n in names}, "granted": int(raw.get("granted") or 0), "now": now}

    def _now(self) -> float:
        sec, usec = self._call("time", self.client.time)
        return sec + usec / 1e6

    # -- breaker --------------------------------------------------------------------------------
    def _admit_args(
        self,
        limit_key: str | None,
        limit: RateLimit | None,
        breaker_key: str | None,
        breaker: BreakerPolicy | None,
        max_wait: float,
        lease_seconds: float,
    ) -> tuple[bool, list[str], list[Any]]:
        """What ``admit`` and ``admit_many`` both send: whether there is a breaker, the keys (limiter,
        then breaker) and the arguments (limiter, max wait, breaker policy, lease, hold)."""
        has_breaker = breaker is not None and breaker_key is not None
        keys = self._keys("rl", limit_key or "-") + self._keys("br", breaker_key or "-")
        lim = (
            [1, limit.permits, repr(limit.window), repr(limit.interval), limit.burst]
            if limit
            else [0, 1, 1, 1, 1]
        )
        args = [
            int(limit_key is not None), *lim, repr(min(max_wait, 1e12)), int(has_breaker),
            *(self._policy_args(breaker) if has_breaker else [0] * 6), repr(lease_seconds), repr(brk.HOLD_SECONDS),
        ]  # fmt: skip
        return has_breaker, keys, args

    @staticmethod
    def _policy_args(policy: BreakerPolicy) -> list[Any]:
        return [
            repr(policy.failure_rate), policy.window_size, policy.min_calls, repr(policy.open_seconds),
            policy.half_open_calls, repr(policy.half_open_timeout),
        ]  # fmt: skip

    def breaker_record(
        self, key: str, policy: BreakerPolicy, decision: brk.BreakerDecision, failed: bool
    ) -> Transition:
        args = self._record_args(Verdict(key, policy, decision, failed))
        before, after = self._call(
            "breaker_record", lambda: self._script(keys=self._keys("br", key), args=args)
        )
        return Transition(before, after)

    def _record_args(self, v: Verdict) -> list[Any]:
        d = v.decision
        return ["record", *self._policy_args(v.policy), d.kind, d.gen, d.lease, int(v.failed)]

    def breaker_status(self, key: str) -> dict[str, Any] | None:
        keys = self._keys("br", key)
        raw = self._call("breaker_status", lambda: self.client.hgetall(keys[0]))
        if not raw:
            return None
        now = self._now()
        in_flight = self._call("breaker_status", lambda: self.client.zcount(keys[1], f"({now}", "+inf"))
        ints = ("gen", "trials_issued", "trial_successes", "trial_failures", "seq")
        floats = ("opened_until", "half_open_since", "changed_at")
        return {
            "state": raw.get("state", brk.CLOSED),
            "outcomes": raw.get("outcomes", ""),
            **{n: int(raw.get(n) or 0) for n in ints},
            **{n: _float(raw.get(n)) for n in floats},
            "in_flight": in_flight,
            "now": now,
        }

    def breaker_reset(self, key: str) -> None:
        self._call("breaker_reset", lambda: self._script(keys=self._keys("br", key), args=["reset"]))

    # -- status page: read-only snapshot, saga outcome records ------------------------------------
    def _scan_keys(self, kind: str) -> list[str]:
        """Our keys of ``kind`` (``rl``, ``br``): names ``{prefix}{kind}:{<key>}`` (not the ``:z`` sets)."""
        pattern = _glob_escape(f"{self.prefix}{kind}:{{") + "*}"
        start = len(self.prefix) + len(kind) + 2
        names = self._call("snapshot", lambda: list(self.client.scan_iter(match=pattern, count=500)))
        return sorted({name[start:-1] for name in names})

    def snapshot(self) -> dict[str, Any]:
        limit_keys, breaker_keys = self._scan_keys("rl"), self._scan_keys("br")

        def read() -> tuple[float, list[Any]]:
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            for key in limit_keys:
                pipe.hgetall(self._keys("rl", key)[0])
            for key in breaker_keys:
                pipe.hgetall(self._keys("br", key)[0])
            (sec, usec), *hashes = pipe.execute()
            return sec + usec / 1e6, hashes

        now, hashes = self._call("snapshot", read)
        limiters = {k: h for k, h in zip(limit_keys, hashes[: len(limit_keys)], strict=True) if h}
        breakers = {k: h for k, h in zip(breaker_keys, hashes[len(limit_keys) :], strict=True) if h}

        def extra() -> list[Any]:  # leases in flight, and the slot log of bursty limiters
            pipe = self.client.pipeline(transaction=False)
            for key in breakers:
                pipe.zcount(self._keys("br", key)[1], f"({now!r}", "+inf")
            for key, h in limiters.items():
                permits, burst = int(h.get("limit_permits") or 0), int(h.get("limit_burst") or 0)
                if burst > 1:
                    pipe.zrevrange(self._keys("rl", key)[1], permits - 1, permits - 1, withscores=True)
            return pipe.execute()

        replies = iter(self._call("snapshot", extra))
        ints = ("gen", "trials_issued", "trial_successes", "trial_failures", "seq")
        floats = ("opened_until", "half_open_since", "changed_at")
        out_breakers = {
            key: {
                "state": raw.get("state", brk.CLOSED),
                "outcomes": raw.get("outcomes", ""),
                **{n: int(raw.get(n) or 0) for n in ints},
                **{n: _float(raw.get(n)) for n in floats},
                "in_flight": int(next(replies)),
                "now": now,
            }
            for key, raw in breakers.items()
        }
        out_limiters = {}
        for key, raw in limiters.items():
            nth = None
            if int(raw.get("limit_burst") or 0) > 1:
                found = next(replies)
                nth = float(found[0][1]) if found else None
            out_limiters[key] = {
                **{n: _float(raw.get(n)) for n in _LIMITER_FLOATS},
                **{n: int(raw.get(n) or 0) for n in _LIMITER_INTS},
                "nth_latest": nth,
                "now": now,
            }
        return {"now": now, "limiters": out_limiters, "breakers": out_breakers}

    def saga_record(self, entry: dict[str, Any], keep: int = 100) -> None:
        name, body = f"{self.prefix}saga_outcomes", json.dumps(entry, default=str)

        def push() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.lpush(name, body)
            pipe.ltrim(name, 0, keep - 1)
            pipe.pexpire(name, 7 * 86400 * 1000)
            pipe.execute()

        self._call("saga_record", push)

    def saga_recent(self, limit: int = 20) -> list[dict[str, Any]]:
        bodies = self._call(
            "saga_recent", lambda: self.client.lrange(f"{self.prefix}saga_outcomes", 0, limit - 1)
        )
        return [json.loads(body) for body in bodies]

    def clear(self) -> None:
        def delete_all() -> None:
            for name in self.client.scan_iter(match=f"{self.prefix}*", count=500):
                self.client.delete(name)

        self._call("clear", delete_all)

    def close(self) -> None:
        self.client.close()
