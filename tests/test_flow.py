"""The attempt flow on its own: scripted command results and an explicit clock; no sockets, no sleeps.

Each test drives :func:`attempt_flow` the way a driver does (``Stepper``), answering every command
from a script, and asserts on the commands the flow issued and the events a recording listener saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from api_orchestration import (
    BreakerPolicy,
    CircuitOpenError,
    HttpStatusError,
    PermanentHttpStatusError,
    RateLimit,
    RetryPolicy,
    StateBackendError,
    TransportError,
)
from api_orchestration.calls.events import (
    AttemptFinished,
    BreakerTransition,
    Deferred,
    Events,
    KeyPaused,
    Next,
    RecordingListener,
    SlotMissed,
    TokenRefused,
    VerdictNotRecorded,
)
from api_orchestration.calls.flow import (
    Admit,
    Admitted,
    Authorize,
    CallInfo,
    DeferralNeeded,
    Pause,
    Report,
    Send,
    Sent,
    ServerBudget,
    Sleep,
    Stepper,
    attempt_flow,
)
from api_orchestration.calls.guard import Guard
from api_orchestration.resilience.admission import Admission, AdmissionRequest, Transition
from api_orchestration.resilience.breaker import BreakerDecision
from api_orchestration.resilience.kinds import BreakerDecisionKind, BreakerState

EPOCH = 1_800_000_000.0  # the wall clock rate-limit resets are read against
NO_RETRY_WAIT = RetryPolicy(max_attempts=3, base_delay=0, max_delay=0)
DECISION = BreakerDecision(True, BreakerDecisionKind.CLOSED, 1, BreakerState.CLOSED, lease="1:1")


@dataclass
class Response:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Script:
    """Answers each command: admissions and sends from queues, sleeps advance the clock."""

    def __init__(
        self, admissions: list[Any], sends: list[Any], clock: Clock, reports: list[Any] | None = None
    ):
        self.admissions, self.sends, self.clock, self.reports = list(admissions), list(sends), clock, reports
        self.commands: list[Any] = []

    def __call__(self, command: Any) -> Any:
        self.commands.append(command)
        if isinstance(command, Admit):
            item = self.admissions.pop(0)
            if isinstance(item, BaseException):
                raise item
            return Admitted(item, self.clock.now, 0.001)
        if isinstance(command, Sleep):
            self.clock.now += command.seconds
            return None
        if isinstance(command, Send):
            item = self.sends.pop(0)
            if isinstance(item, BaseException):
                raise item
            self.clock.now += 0.01
            return item
        if isinstance(command, Report):
            if self.reports:
                item = self.reports.pop(0)
                if isinstance(item, BaseException):
                    raise item
                return item
            return None
        if isinstance(command, (Pause, ServerBudget)):
            return None
        if isinstance(command, Authorize):
            return self.authorize(command)
        raise AssertionError(command)

    def authorize(self, command: Authorize) -> Any:
        raise AssertionError(command)


def granted(wait: float = 0.0, decision: BreakerDecision | None = DECISION, **kw: Any) -> Admission:
    return Admission(True, "ok", wait, breaker=decision, **kw)


def ok(status: int = 200, **headers: str) -> Sent:
    return Sent(Response(status, headers), None, False, 0.01)


def run(
    script: Script,
    *,
    method: str = "GET",
    key: str | None = None,
    first_attempt: int = 1,
    recording: RecordingListener | None = None,
    **guard: Any,
):
    guard.setdefault("retry", NO_RETRY_WAIT)
    guard.setdefault("breaker", BreakerPolicy())
    g = Guard(backend=None, limit_key="api", breaker_key="api", **guard)  # type: ignore[arg-type]
    recording = recording if recording is not None else RecordingListener()
    info = CallInfo(method, "http://h/x", key, ("http://h/x?token=s3cret",))
    flow = attempt_flow(
        info,
        g,
        g.admission_request(90.0),
        Events([recording]),
        script.clock,
        first_attempt,
        wall=lambda: EPOCH,
    )
    stepper = Stepper(flow)
    while (command := stepper.next()) is not None:
        try:
            stepper.succeeded(script(command))
        except BaseException as exc:
            stepper.failed(exc)
    return stepper.result, recording


def kinds(script: Script) -> list[str]:
    return [type(c).__name__ for c in script.commands]


def test_a_success_is_admit_send_report():
    script = Script([granted()], [ok()], Clock())
    response, rec = run(script)
    assert response.status_code == 200
    assert kinds(script) == ["Admit", "Send", "Report"]
    report = script.commands[-1]
    assert not report.verdict.failed and not report.urgent  # may travel with the next admission
    assert [e.next for e in rec.of(AttemptFinished)] == [Next.DONE]


def test_a_5xx_is_retried_with_an_urgent_failed_verdict_then_succeeds():
    script = Script([granted(), granted()], [ok(503), ok(200)], Clock())
    response, rec = run(script)
    assert response.status_code == 200
    assert kinds(script) == ["Admit", "Send", "Report", "Sleep", "Admit", "Send", "Report"]
    first_report = script.commands[2]
    assert first_report.verdict.failed and first_report.urgent
    assert [e.next for e in rec.of(AttemptFinished)] == [Next.RETRY, Next.DONE]


def test_a_4xx_gives_up_at_once_and_counts_as_a_success_for_the_breaker():
    script = Script([granted()], [ok(409)], Clock())
    with pytest.raises(PermanentHttpStatusError):
        run(script)
    assert not script.commands[-1].verdict.failed


def test_post_without_a_key_is_not_retried_and_says_why():
    script, rec = Script([granted()], [ok(503)], Clock()), RecordingListener()
    with pytest.raises(HttpStatusError):
        run(script, method="POST", recording=rec)
    (finished,) = rec.of(AttemptFinished)
    assert finished.unkeyed and finished.next == Next.GIVE_UP


def test_post_with_a_key_is_retried():
    script = Script([granted(), granted()], [ok(503), ok(201)], Clock())
    response, _ = run(script, method="POST", key="k-1")
    assert response.status_code == 201


def test_put_and_delete_are_idempotent_and_retried_without_a_key():
    for method in ("PUT", "DELETE"):
        script = Script([granted(), granted()], [ok(503), ok(200)], Clock())
        assert run(script, method=method)[0].status_code == 200


def test_retry_after_replaces_the_backoff_and_pauses_the_key_on_429():
    script = Script([granted(), granted()], [ok(429, **{"Retry-After": "2"}), ok()], Clock())
    _, rec = run(script)
    pause = next(c for c in script.commands if isinstance(c, Pause))
    sleep = next(c for c in script.commands if isinstance(c, Sleep))
    assert pause.seconds == 2.0 and sleep.seconds == 2.0
    assert rec.of(KeyPaused)[0].seconds == 2.0
    assert rec.of(AttemptFinished)[0].why == "Retry-After"


def test_a_wait_longer_than_max_sleep_defers_at_the_next_attempt():
    script, rec = Script([granted()], [ok(503, **{"Retry-After": "60"})], Clock()), RecordingListener()
    with pytest.raises(DeferralNeeded) as info:
        run(script, max_sleep=10, recording=rec)
    assert info.value.attempt == 2 and info.value.seconds == 60
    assert [(e.seconds, e.attempt) for e in rec.of(Deferred)] == [(60, 2)]


def test_a_resumed_call_continues_at_its_attempt():
    script = Script([granted()], [ok(503)], Clock())
    with pytest.raises(HttpStatusError) as info:
        run(script, first_attempt=3)  # the last of 3
    assert info.value.attempts == 3


def test_a_limiter_refusal_defers_and_a_hold_sleeps_then_asks_again():
    defer = Admission(False, "defer", 42.0)
    with pytest.raises(DeferralNeeded, match="rate limit on 'api'"):
        run(Script([defer], [], Clock()))
    hold = Admission(False, "hold", 0.02)
    script = Script([hold, hold, granted()], [ok()], Clock())
    run(script)
    assert kinds(script) == ["Admit", "Sleep", "Admit", "Sleep", "Admit", "Send", "Report"]


def test_an_open_breaker_fails_or_defers_as_configured():
    decision = BreakerDecision(
        False, BreakerDecisionKind.OPEN, 2, BreakerState.OPEN, reopen_at=130.0, wait=30.0
    )
    refused = Admission(False, "open", 30.0, breaker=decision)
    with pytest.raises(CircuitOpenError) as info:
        run(Script([refused], [], Clock()))
    assert info.value.reopen_at == 130.0
    with pytest.raises(DeferralNeeded) as deferred:
        run(Script([refused], [], Clock()), on_circuit_open="defer")
    assert deferred.value.seconds == 30.0


def test_a_late_call_takes_a_new_slot_before_it_goes():
    clock = Clock()
    limit = RateLimit(permits=10, per_seconds=1.0)

    class Stalled(Script):
        def __call__(self, command: Any) -> Any:
            result = super().__call__(command)
            if isinstance(command, Sleep) and len(self.commands) == 2:
                self.clock.now += 0.2  # the process stalled 200 ms past its slot
            return result

    script = Stalled([granted(0.1), granted(0.05, decision=None)], [ok()], clock)
    run(script, rate_limit=limit)
    assert kinds(script) == ["Admit", "Sleep", "Admit", "Sleep", "Send", "Report"]
    assert script.commands[2].slot_only  # keeps its breaker permit


def test_a_call_that_keeps_missing_its_slot_goes_anyway_and_says_so():
    clock = Clock()

    class AlwaysLate(Script):
        def __call__(self, command: Any) -> Any:
            result = super().__call__(command)
            if isinstance(command, Sleep):
                self.clock.now += 1.0
            return result

    script = AlwaysLate([granted(0.1)] + [granted(0.1, decision=None)] * 3, [ok()], clock)
    _, rec = run(script, rate_limit=RateLimit(permits=10))
    assert len(rec.of(SlotMissed)) == 1 and kinds(script).count("Admit") == 4


def test_a_store_failure_before_any_call_says_no_call_was_made():
    down = StateBackendError("redis://h", "admit_many", "connection refused")
    with pytest.raises(StateBackendError) as info:
        run(Script([down], [], Clock()))
    assert info.value.calls_made == 0 and "No call was made" in str(info.value)


def test_a_store_failure_after_a_sent_attempt_says_so():
    down = StateBackendError("redis://h", "admit_many", "connection refused")
    script = Script([granted(), down], [ok(503)], Clock())
    with pytest.raises(StateBackendError) as info:
        run(script)
    assert info.value.calls_made == 1 and "1 earlier attempt(s) of this call were sent" in str(info.value)


def test_a_verdict_that_cannot_be_recorded_after_the_call_does_not_fail_it():
    down = StateBackendError("redis://h", "record", "connection refused")
    script = Script([granted(), granted()], [ok(503), ok(200)], Clock(), reports=[down])
    response, rec = run(script)
    assert response.status_code == 200  # the result stands
    assert len(rec.of(VerdictNotRecorded)) == 1


def test_a_call_killed_mid_request_reports_a_failure_then_re_raises():
    script = Script([granted()], [KeyboardInterrupt()], Clock())
    with pytest.raises(KeyboardInterrupt):
        run(script)
    report = script.commands[-1]
    assert isinstance(report, Report) and report.verdict.failed and report.urgent


def test_transport_errors_are_typed_and_redacted():
    error = ConnectionError("cannot reach http://h/x?token=s3cret")
    script = Script([granted()] * 3, [Sent(None, error, False, 0.01)] * 3, Clock())
    with pytest.raises(TransportError) as info:
        run(script)
    assert "s3cret" not in str(info.value) and info.value.attempts == 3


def test_slow_calls_count_as_breaker_failures():
    script = Script([granted()], [Sent(Response(200), None, False, 2.5)], Clock())
    run(script, breaker=BreakerPolicy(slow_call_seconds=2.0))
    assert script.commands[-1].verdict.failed


def test_breaker_transitions_and_trials_are_events():
    trial = BreakerDecision(True, BreakerDecisionKind.TRIAL, 3, BreakerState.HALF_OPEN)
    script = Script([granted(decision=trial)], [ok()], Clock(), reports=[Transition("half_open", "closed")])
    # a non-urgent report of a trial still gets its transition back from the driver here
    _, rec = run(script)
    assert [(e.before, e.after) for e in rec.of(BreakerTransition)] == [("half_open", "closed")]


def test_no_breaker_no_bulkhead_means_nothing_to_report():
    script = Script([granted(decision=None)], [ok()], Clock())
    run(script, breaker=None)
    assert kinds(script) == ["Admit", "Send"]


def test_the_admission_request_is_built_once_from_the_guard():
    g = Guard(backend=None, limit_key="a", rate_limit=RateLimit(5), breaker_key="b", max_in_flight=3)  # type: ignore[arg-type]
    request = g.admission_request(42.0)
    assert request == AdmissionRequest("a", RateLimit(5), None, None, 3, 10.0, 42.0)  # no breaker policy
    assert request.slot_only().max_in_flight is None


# -- rate-limit headers --------------------------------------------------------------------------------
def test_an_exhausted_window_pauses_the_key_until_its_reset_even_on_a_success():
    headers = {
        "x-ratelimit-limit": "10",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(EPOCH) + 5),
    }
    script = Script([granted()], [ok(200, **headers)], Clock())
    response, rec = run(script)
    assert response.status_code == 200
    pause = next(c for c in script.commands if isinstance(c, Pause))
    assert pause.seconds == 5.0 and rec.of(KeyPaused)[0].seconds == 5.0


def test_remaining_budget_pauses_nothing():
    headers = {
        "x-ratelimit-limit": "10",
        "x-ratelimit-remaining": "3",
        "x-ratelimit-reset": str(int(EPOCH) + 5),
    }
    script = Script([granted()], [ok(200, **headers)], Clock())
    run(script)
    assert "Pause" not in kinds(script)


def test_a_secondary_limit_403_is_retried_after_its_retry_after_like_a_429():
    script = Script([granted(), granted()], [ok(403, **{"retry-after": "3"}), ok()], Clock())
    response, _ = run(script)
    assert response.status_code == 200
    assert next(c for c in script.commands if isinstance(c, Pause)).seconds == 3.0
    assert next(c for c in script.commands if isinstance(c, Sleep)).seconds == 3.0
    first = next(c for c in script.commands if isinstance(c, Report))
    assert first.verdict.failed and first.urgent  # counted as a 429 is


def test_a_plain_403_is_permanent():
    script = Script([granted()], [ok(403)], Clock())
    with pytest.raises(PermanentHttpStatusError):
        run(script)
    assert "Pause" not in kinds(script)


def test_the_headers_are_ignored_when_the_policy_does_not_respect_the_server():
    headers = {
        "x-ratelimit-limit": "10",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(EPOCH) + 5),
    }
    script = Script([granted()], [ok(200, **headers)], Clock())
    run(script, retry=RetryPolicy(max_attempts=1, respect_retry_after=False))
    assert "Pause" not in kinds(script)


# -- OAuth2 --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Auth:
    header: str
    fingerprint: str


class Tokens:
    token_key = "crm_oauth:token"

    def __init__(self) -> None:
        self.version = 1

    def authorize(self, reject: str | None = None) -> Auth:
        if reject == f"fp{self.version}":
            self.version += 1
        return Auth(f"Bearer t{self.version}", f"fp{self.version}")


class TokenScript(Script):
    def __init__(self, *args: Any, tokens: Tokens) -> None:
        super().__init__(*args)
        self.tokens = tokens

    def authorize(self, command: Authorize) -> Any:
        return self.tokens.authorize(command.reject)


def test_a_401_gets_one_new_token_and_one_retry_and_is_no_failure():
    tokens = Tokens()
    script = TokenScript([granted(), granted()], [ok(401), ok()], Clock(), tokens=tokens)
    response, rec = run(script, tokens=tokens, retry=RetryPolicy(max_attempts=1))
    assert response.status_code == 200
    sends = [c for c in script.commands if isinstance(c, Send)]
    assert [dict(s.headers) for s in sends] == [
        {"Authorization": "Bearer t1"},
        {"Authorization": "Bearer t2"},
    ]
    assert [c.reject for c in script.commands if isinstance(c, Authorize)] == [None, "fp1"]
    assert not next(c for c in script.commands if isinstance(c, Report)).verdict.failed
    assert rec.of(TokenRefused)[0].attempt == 1
    assert "Bearer" not in repr(sends[0])


def test_a_second_401_fails_as_any_4xx():
    tokens = Tokens()
    script = TokenScript([granted(), granted()], [ok(401), ok(401)], Clock(), tokens=tokens)
    with pytest.raises(PermanentHttpStatusError):
        run(script, tokens=tokens)
    assert len([c for c in script.commands if isinstance(c, Send)]) == 2
