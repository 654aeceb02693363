"""``file`` exporter: OTLP/JSON lines, one export request per line, a file per signal.

The format is the Collector ``fileexporter``'s: ``traces.jsonl``, ``metrics.jsonl``, ``logs.jsonl`` in
``path``, each line an ``Export*ServiceRequest`` in OTLP/JSON. Files rotate by size when
``rotation.max_megabytes`` is set.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from google.protobuf.message import Message

from agent.component import Consumer, CreateSettings, Factory, Kind, Signal
from agent.config.schema import setting
from agent.exporters._helper.consumer import SignalConsumer
from agent.exporters._helper.queue import SendingQueue, SendingQueueConfig
from agent.exporters._helper.retry import report_cut_short
from agent.otlp import json_codec

_CLOSE_WAIT_SECONDS = 1.0  # at shutdown, for a line being appended


@dataclass(frozen=True)
class RotationConfig:
    max_megabytes: int = setting(0, doc="Rotate a file once it reaches this size; 0 turns rotation off.", minimum=0)
    max_backups: int = setting(
        3, doc="Rotated files kept per signal (`traces.jsonl.1` is the newest); 0: a full file is deleted.", minimum=0
    )


@dataclass(frozen=True)
class FileExporterConfig:
    path: str = setting(doc="Directory the `<signal>.jsonl` files are written to (created if missing).")
    rotation: RotationConfig = setting(doc="Size-based rotation.", default_factory=RotationConfig)
    sending_queue: SendingQueueConfig = setting(
        doc="Bounded queue in front of the writer.", default_factory=SendingQueueConfig
    )

    def validate(self) -> list[tuple[str, str]]:
        return [("path", "must not be empty")] if not self.path.strip() else []


class FileExporter:
    def __init__(self, config: FileExporterConfig, settings: CreateSettings) -> None:
        self._config = config
        self._settings = settings
        self._dir = Path(config.path)
        self._files: dict[Signal, IO[bytes]] = {}
        self._queue = SendingQueue(settings, config.sending_queue, self._write)
        self._write_lock = asyncio.Lock()  # one writer at a time keeps lines whole and rotation safe
        # Between the writing thread and shutdown: no line after the files are closed, no file opened after.
        self._files_lock = threading.Lock()
        self._closed = False

    def consumer_for(self, signal: Signal) -> Consumer:
        return SignalConsumer(self._queue.offer, signal)

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._check_writable()
        await self._queue.start()

    def _check_writable(self) -> None:
        """Fail at start, not on the first batch: an agent that is ready but cannot write drops everything."""
        try:
            with tempfile.TemporaryFile(dir=self._dir):
                pass
        except OSError as exc:
            raise OSError(f"path: cannot write files in {self._dir}: {exc.strerror}") from None

    def held_items(self) -> int:
        return self._queue.held_items()

    async def shutdown(self, deadline: float) -> None:
        await self._queue.shutdown(deadline)
        self._closed = True  # no append starts from now on; one under way holds the lock
        # Bounded, and off the event loop: a write hung on a dead disk holds the lock, and must hold neither the
        # other components' shutdown nor the process (which exits anyway).
        if await asyncio.to_thread(self._files_lock.acquire, True, _CLOSE_WAIT_SECONDS):
            try:
                for handle in self._files.values():
                    handle.close()
                self._files.clear()
            finally:
                self._files_lock.release()

    async def _write(self, signal: Signal, batch: Message) -> None:
        report_cut_short(0)  # nothing is written while waiting for the lock or encoding
        async with self._write_lock:
            # Encoded off the event loop: JSON for a large batch takes seconds of pure Python. The queue owns the
            # batch (nothing else touches it meanwhile). Cancelled at the shutdown deadline while encoding (the
            # long part), nothing is written: not delivered. A line being appended at that moment is written
            # (the thread runs on), and counts as unconfirmed.
            line = await asyncio.to_thread(json_codec.encode, batch)
            report_cut_short(None)  # from here on the line may be written, even if the deadline comes
            await asyncio.to_thread(self._append_unless_closed, signal, line + b"\n")

    def _append_unless_closed(self, signal: Signal, line: bytes) -> None:
        with self._files_lock:
            if self._closed:
                raise OSError(f"{self._dir}: the file exporter has shut down")
            self._append(signal, line)

    def _append(self, signal: Signal, line: bytes) -> None:
        handle = self._files.get(signal)
        if handle is None:
            # Owner-only: telemetry can hold what redaction does not know to mask.
            fd = os.open(self._dir / f"{signal.value}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            handle = self._files[signal] = os.fdopen(fd, "ab")
        handle.write(line)
        handle.flush()
        limit = self._config.rotation.max_megabytes * 1024 * 1024
        if limit and handle.tell() >= limit:
            handle.close()
            del self._files[signal]
            self._rotate(self._dir / f"{signal.value}.jsonl")

    def _rotate(self, current: Path) -> None:
        backups = self._config.rotation.max_backups
        if backups == 0:
            current.unlink(missing_ok=True)
            return
        for index in range(backups - 1, 0, -1):
            older = current.with_name(f"{current.name}.{index}")
            if older.exists():
                os.replace(older, current.with_name(f"{current.name}.{index + 1}"))
        os.replace(current, current.with_name(f"{current.name}.1"))


FACTORY: Factory[FileExporterConfig] = Factory(
    kind=Kind.EXPORTER,
    type="file",
    config_class=FileExporterConfig,
    signals=frozenset(Signal),
    create=lambda cfg, settings: FileExporter(cfg, settings),
    description="Writes OTLP/JSON lines, one export request per line, a file per signal.",
)
