"""The cache commands of the attempt flow with scripted results and explicit clocks: a hit issues no
admission; a stale entry is revalidated through admission; a 304 refreshes it; a 304 for another
ETag is re-fetched unconditionally; a store failure while storing never fails the call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from test_flow import Clock, Script, granted

from api_orchestration import RetryPolicy, StateBackendError
from api_orchestration.calls.events import CacheResult, CacheUsed, Events, RecordingListener
from api_orchestration.calls.flow import (
    CacheFound,
    CacheLookup,
    CacheStore,
    CallInfo,
    Sent,
    Stepper,
    attempt_flow,
)
from api_orchestration.calls.guard import Guard
from api_orchestration.policy import CachePolicy
from api_orchestration.resilience.http_cache import CacheEntry
from api_orchestration.state.records import CachePut


@dataclass
class Response:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""


class CacheScript(Script):
    def __init__(self, entry: CacheEntry | None, sends: list[Any], clock: Clock, store: Any = None):
        super().__init__([granted()] * 3, sends, clock)
        self.entry, self.store = entry, store

    def __call__(self, command: Any) -> Any:
        if isinstance(command, CacheLookup):
            self.commands.append(command)
            return CacheFound(self.entry, lambda e: ("served", e))
        if isinstance(command, CacheStore):
            self.commands.append(command)
            if isinstance(self.store, BaseException):
                raise self.store
            return CachePut(True, 0, command.entry.size)
        return super().__call__(command)


def run(script: CacheScript, wall: float, ttl: float = 60) -> tuple[Any, RecordingListener]:
    g = Guard(backend=None, limit_key="api", retry=RetryPolicy(max_attempts=1), cache=CachePolicy(ttl=ttl))  # type: ignore[arg-type]
    seen = RecordingListener()
    info = CallInfo("GET", "http://h/x", None, ("http://h/x",), {})
    flow = attempt_flow(info, g, g.admission_request(90.0), Events([seen]), script.clock, wall=lambda: wall)
    stepper = Stepper(flow)
    while (command := stepper.next()) is not None:
        try:
            stepper.succeeded(script(command))
        except BaseException as exc:
            stepper.failed(exc)
    return stepper.result, seen


def entry(fresh_until: float, etag: str | None = '"v1"') -> CacheEntry:
    return CacheEntry(200, (("ETag", etag or ""),), b"body-v1", 1000.0, fresh_until, etag=etag)


def kinds(script: Script) -> list[str]:
    return [type(c).__name__ for c in script.commands]


def test_a_fresh_entry_is_served_with_no_admission_and_no_call():
    script = CacheScript(entry(2000.0), [], Clock())
    result, seen = run(script, wall=1500.0)
    assert result == ("served", script.entry) and kinds(script) == ["CacheLookup"]
    [event] = seen.of(CacheUsed)
    assert (event.result, event.age, event.fresh_for) == (CacheResult.HIT, 500.0, 500.0)


def test_a_stale_entry_is_revalidated_and_a_304_refreshes_it():
    sent = Sent(Response(304, {"ETag": '"v1"', "Cache-Control": "max-age=30"}), None, False, 0.01)
    script = CacheScript(entry(1100.0), [sent], Clock())
    (how, refreshed), seen = run(script, wall=1500.0)
    assert kinds(script) == ["CacheLookup", "Admit", "Send", "CacheStore"]  # no breaker: no Report
    assert dict(script.commands[2].headers) == {"If-None-Match": '"v1"'}
    assert how == "served" and refreshed.body == b"body-v1" and refreshed.fresh_until == 1530.0
    assert script.commands[-1].keep == 30.0 + 60.0  # fresh for 30 s, kept a ttl longer to revalidate
    assert [e.result for e in seen.of(CacheUsed)] == [CacheResult.REVALIDATED]


def test_a_304_for_another_etag_is_fetched_again_unconditionally():
    other = Sent(Response(304, {"ETag": '"v9"'}), None, False, 0.01)
    fresh = Sent(
        Response(200, {"ETag": '"v2"', "Cache-Control": "max-age=10"}, b"body-v2"), None, False, 0.01
    )
    script = CacheScript(entry(1100.0), [other, fresh], Clock())
    result, seen = run(script, wall=1500.0)
    assert result.content == b"body-v2"
    sends = [c for c in script.commands if type(c).__name__ == "Send"]
    assert [dict(s.headers) for s in sends] == [{"If-None-Match": '"v1"'}, {}]
    assert script.commands[-1].entry.etag == '"v2"'
    assert [e.result for e in seen.of(CacheUsed)] == [CacheResult.NOT_STORED, CacheResult.STORED]


def test_a_store_failure_while_storing_does_not_fail_the_call():
    sent = Sent(Response(200, {"Cache-Control": "max-age=10"}, b"x"), None, False, 0.01)
    failure = StateBackendError("sqlite:////tmp/x.db", "cache_put", "disk full", 1)
    script = CacheScript(None, [sent], Clock(), store=failure)
    result, seen = run(script, wall=1500.0)
    assert result.status_code == 200
    [event] = seen.of(CacheUsed)
    assert event.result == CacheResult.NOT_STORED and "disk full" in event.detail
