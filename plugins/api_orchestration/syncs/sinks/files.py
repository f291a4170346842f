"""Files through Airflow's ``ObjectStoragePath``: gzip JSON lines, one part per page, partitioned by window.

Layout under ``base`` (``file://`` by default; ``s3://``, ``gs://`` ... through their providers)::

    <stream>/[<partition>/]window=<start>_<end>/part-00001.jsonl.gz   one object per page
    <stream>/[<partition>/]window=<start>_<end>/_manifest.json        written when the run ends
    <stream>/[<partition>/]window=<start>_<end>/_checkpoint.json      the position, after every part
                                                                      (cursor mode: in <stream>/[<partition>/])
    <stream>/[<partition>/]_cursor.json                               the high-water mark (cursor mode)

A part is named by its page number and written before the checkpoint that counts it, so a run
killed between the two rewrites the same part on resume: no duplicate, no gap. A finished window
fetched again (a cleared run, a backfill) first removes its old parts.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from api_orchestration.syncs.checkpoint import Checkpoint, RunStatus
from api_orchestration.syncs.sinks.base import Sink
from api_orchestration.syncs.stream import Stream, SyncMode, Window, window_slot


class FileSink(Sink):
    """JSON-lines parts under ``base`` (a URI or path; default ``<results_url>/syncs`` when
    ``[api_orchestration] results_url`` is set, so any worker reads them, else
    ``$AIRFLOW_HOME/api_orchestration/syncs``)."""

    def __init__(self, base: str | None = None, *, compress: bool = True) -> None:
        from airflow.sdk import ObjectStoragePath

        if base is None:
            from api_orchestration.paths import data_path, shared_results_url

            shared = shared_results_url()
            base = f"{shared.rstrip('/')}/syncs" if shared else data_path("syncs").as_uri()
        self.root = ObjectStoragePath(base)
        self.uri = str(self.root)
        self.compress = compress
        self._written: list[str] = []

    def _dir(self, stream: Stream) -> Any:
        folder = self.root / stream.name
        return folder / stream.partition if stream.partition else folder

    def _state_dir(self, stream: Stream, slot: str) -> Any:
        """Where a slot's checkpoint lives: its window folder (interval mode) or the stream's folder."""
        return self._dir(stream) / f"window={slot}" if slot else self._dir(stream)

    def _parts_dir(self, stream: Stream, checkpoint: Checkpoint) -> Any:
        return self._dir(stream) / f"window={window_slot(Window.from_dict(checkpoint.window))}"

    def _read_json(self, path: Any) -> Any:
        if not path.exists():
            return None
        with path.open("rb") as f:
            return json.loads(f.read())

    def _write_json(self, path: Any, data: Any) -> None:
        with path.open("wb") as f:
            f.write(json.dumps(data, sort_keys=True).encode())

    # -- Sink --------------------------------------------------------------------------------------
    def open(self, stream: Stream) -> None:
        self._dir(stream).mkdir(parents=True, exist_ok=True)

    def checkpoint(self, stream: Stream, slot: str) -> Checkpoint | None:
        data = self._read_json(self._state_dir(stream, slot) / "_checkpoint.json")
        return None if data is None else Checkpoint.from_dict(data)

    def high_water_mark(self, stream: Stream) -> Any:
        data = self._read_json(self._dir(stream) / "_cursor.json")
        return None if data is None else data.get("mark")

    def restart(self, stream: Stream, slot: str) -> None:
        folder = self._state_dir(stream, slot)
        if slot and folder.exists():
            for child in folder.iterdir():
                child.unlink()

    def write_page(
        self, stream: Stream, slot: str, records: list[dict[str, Any]], checkpoint: Checkpoint
    ) -> int:
        folder = self._parts_dir(stream, checkpoint)
        folder.mkdir(parents=True, exist_ok=True)
        size = 0
        if records:
            lines = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
            payload = gzip.compress(lines, compresslevel=5) if self.compress else lines
            part = folder / f"part-{checkpoint.pages:05d}.jsonl{'.gz' if self.compress else ''}"
            with part.open("wb") as f:
                f.write(payload)
            size = len(payload)
        self._write_json(self._state_dir(stream, slot) / "_checkpoint.json", checkpoint.as_dict())
        if checkpoint.status is RunStatus.DONE:
            parts = sorted(str(p) for p in folder.iterdir() if p.name.startswith("part-"))
            self._written = parts
            manifest = {**checkpoint.as_dict(), "parts": parts}
            self._write_json(folder / "_manifest.json", manifest)
            if stream.mode is SyncMode.CURSOR and checkpoint.mark is not None:
                self._write_json(self._dir(stream) / "_cursor.json", {"mark": checkpoint.mark})
        return size

    def parts(self, stream: Stream, slot: str) -> list[str]:
        return list(self._written)

    def close(self) -> None:
        pass


def read_parts(uris: list[str]) -> list[dict[str, Any]]:
    """Every record of the given parts (a downstream task's reader; small data only)."""
    from airflow.sdk import ObjectStoragePath

    records: list[dict[str, Any]] = []
    for uri in uris:
        with ObjectStoragePath(uri).open("rb") as f:
            data = f.read()
        if uri.endswith(".gz"):
            data = gzip.decompress(data)
        records += [json.loads(line) for line in data.splitlines() if line]
    return records
