"""Deferral and resumption of a call: a trigger that waits until a moment, then hands back where
the task left off (which call, which attempt) in its event, so a resumed task continues exactly
there, under the real triggerer and under ``dag.test()`` (which drops a deferral's kwargs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import pendulum
from airflow.triggers.base import BaseTrigger, TriggerEvent


@dataclass(frozen=True)
class Resume:
    """Where a deferred call resumes: ``phase`` (``call``, ``fallback`` for a step's fallback;
    ``submit``, ``poll`` or ``fetch`` for a poll step) and the attempt number. A poll step also
    carries its job: the status URL, the deadline (unix seconds), the polls made so far, and in the
    ``fetch`` phase the result URL. Every field is JSON (the trigger's event)."""

    phase: str = "call"
    attempt: int = 1
    status_url: str | None = None
    deadline: float | None = None
    polls: int = 0
    result_url: str | None = None

    @classmethod
    def from_event(cls, event: Any, attempt: int = 1) -> Resume:
        if isinstance(event, dict) and "phase" in event:
            deadline = event.get("deadline")
            return cls(
                str(event["phase"]),
                int(event.get("attempt", 1)),
                event.get("status_url"),
                None if deadline is None else float(deadline),
                int(event.get("polls", 0)),
                event.get("result_url"),
            )
        return cls("call", attempt)  # a deferral made before this format existed


class ResumeTrigger(BaseTrigger):
    """Fires at ``moment`` with ``resume`` (a :class:`Resume` as a dict) as its event."""

    def __init__(self, moment: str, resume: dict[str, Any]) -> None:
        super().__init__()
        self.moment, self.resume = moment, dict(resume)

    @classmethod
    def after(cls, seconds: float, resume: Resume) -> ResumeTrigger:
        return cls(pendulum.now("UTC").add(seconds=seconds).isoformat(), asdict(resume))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"moment": self.moment, "resume": self.resume},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        moment = pendulum.parse(self.moment)
        while (delay := (moment - pendulum.now("UTC")).total_seconds()) > 0:  # type: ignore[operator]
            await asyncio.sleep(min(delay, 60.0))
        yield TriggerEvent(self.resume)
