"""What a sync remembers between pages (the checkpoint) and what it hands to XCom (the manifest)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from api_orchestration.calls.pagination import PageRequest
from api_orchestration.syncs.stream import Window


class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class Checkpoint:
    """The position of one stream partition's run, committed with every page's rows.

    ``next_request`` is the page to send next (None once the last page is written); ``mark`` is the
    highest cursor value written so far (ISO text or int); ``checksum`` chains every page's digest.
    """

    run_id: str
    window: dict[str, Any]
    next_request: dict[str, Any] | None
    pages: int = 0
    rows: int = 0
    bytes: int = 0
    mark: Any = None
    checksum: str = ""
    status: RunStatus = RunStatus.RUNNING

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(**{**data, "status": RunStatus(data.get("status", "running"))})

    @classmethod
    def start(cls, run_id: str, window: Window, first: PageRequest) -> Checkpoint:
        return cls(run_id, window.as_dict(), first.as_dict())

    def after_page(
        self, following: PageRequest | None, rows: int, size: int, mark: Any, digest: str
    ) -> Checkpoint:
        chained = hashlib.sha256(f"{self.checksum}{digest}".encode()).hexdigest()
        return replace(
            self,
            next_request=following.as_dict() if following is not None else None,
            pages=self.pages + 1,
            rows=self.rows + rows,
            bytes=self.bytes + size,
            mark=mark,
            checksum=chained,
            status=RunStatus.RUNNING if following is not None else RunStatus.DONE,
        )


@dataclass(frozen=True)
class Manifest:
    """The small record of a finished sync pushed to XCom (never the rows)."""

    stream: str
    partition: str
    uri: str
    window: dict[str, Any]
    pages: int
    rows: int
    bytes: int
    checksum: str
    cursor: Any
    resumed_at_page: int = 0
    stop: str = ""
    parts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
