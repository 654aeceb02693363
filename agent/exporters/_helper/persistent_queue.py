"""A file-backed sending queue: append-only segment files of checksummed records, and an acknowledgement log.

Layout of an exporter's directory::

    lock            held (flock) while an agent uses the directory; a second agent fails to start
    <seq>.seg       segments; each accepted request is one record, appended with a single write()
    acks.log        9-byte entries: b"S" + seq when a record is handed to the backend, b"A" + seq when it is
                    done with (delivered, rejected or given up)

A record is ``magic "OSQ1" | u32 body length | u32 crc32(body)`` then the body
``u64 seq | u8 signal | u32 items | serialized export request``, little-endian.

Guarantees: a request is written to the OS before the sender gets its answer, so it survives a crash of the
agent (``SIGKILL``); segments are fsync'd every ``sync_interval`` (or on every write with 0) and when closed,
which also covers a crash of the machine. Delivery is at-least-once: after a restart every record without an
``A`` entry is sent again; those with an ``S`` entry may have reached the backend before the crash and are
counted as duplicates when delivered. A segment is deleted once all its records are done. A damaged record
(bad checksum, a torn write at the end of a file) ends the reading of its segment: the rest of that segment
is skipped, counted and logged, and the agent starts anyway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from agent.component import CreateSettings, Signal
from agent.exporters._helper.queue import QueueEntry, StorageConfig
from agent.otlp.signals import SPECS
from agent.telemetry.logs import RateLimitedLog

MAGIC = b"OSQ1"
_HEADER = struct.Struct("<4sII")
_BODY_PREFIX = struct.Struct("<QBI")
_ACK = struct.Struct("<cQ")
_SENDING, _DONE, _UNSENT = b"S", b"A", b"U"  # U: an interrupted send whose attempts all failed to connect
_SIGNAL_CODES = {Signal.TRACES: 1, Signal.METRICS: 2, Signal.LOGS: 3}
_SIGNALS = {code: signal for signal, code in _SIGNAL_CODES.items()}
_MAX_ACK_LOG = 1024 * 1024
_MAX_SEQ = 2**63  # no queue writes that many records; a seq past it is garbage (near 2**64 it would overflow the u64)


def queue_directory(root: str, exporter_id: str) -> Path:
    """Where the exporter ``exporter_id`` queues under the storage directory ``root``."""
    return Path(root) / exporter_id.replace("/", "__")


_LOCK_ATTEMPTS = 20  # 10 ms apart


class QueueDirectoryBusy(RuntimeError):
    """Another agent holds the queue directory."""


class QueueDirectoryUnusable(RuntimeError):
    """The queue directory cannot be made or locked (a path under /proc, a read-only volume, permissions)."""


_SETTING = "sending_queue.storage.directory"  # named in start failures: the agent prefixes the exporter's path


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    size: int
    live: int = 0
    done: set[int] = field(default_factory=set)


@dataclass
class DiskEntry(QueueEntry):
    segment: _Segment | None = None
    offset: int = 0
    length: int = 0
    acked: bool = False  # ``ack`` is idempotent by this: a segment emptied in place forgets its records' seqs


def encode_record(seq: int, signal: Signal, items: int, payload: bytes) -> bytes:
    body = _BODY_PREFIX.pack(seq, _SIGNAL_CODES[signal], items) + payload
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


class PersistentStore:
    """The on-disk queue behind a ``SendingQueue``; same interface as its ``MemoryStore``."""

    persistent = True

    def __init__(self, directory: Path, config: StorageConfig, settings: CreateSettings) -> None:
        self._dir = directory
        self._segment_bytes = config.segment_mib * 1024 * 1024
        self._sync_interval = float(config.sync_interval)
        self._settings = settings
        self._entries: collections.deque[DiskEntry] = collections.deque()
        self._segments: list[_Segment] = []
        self._undeleted: list[_Segment] = []  # done, but their files could not be removed
        self._active: _Segment | None = None
        self._acks_fd = -1
        self._lock_fd = -1
        self._next_seq = 1
        self._sending: set[int] = set()
        self._unacked = 0
        self._dirty = False
        self._syncer: asyncio.Task[None] | None = None
        self.items = 0
        self.bytes = 0
        cid = settings.component_id
        self._errors = settings.metrics.counter(
            "exporter_persistent_queue_errors_total",
            "Damaged persistent-queue data skipped (a torn or corrupt segment tail, a record that does not decode), "
            "and writes to the queue's disk that failed (the ack log, beginning a segment, emptying the active one, "
            "removing a delivered one).",
            ["exporter", "reason"],
        )
        self._recovered = settings.metrics.counter(
            "exporter_persistent_queue_recovered_items_total",
            "Items found in the persistent queue at start, still to be delivered.",
            ["exporter", "signal"],
        )
        self._cid = cid
        self._log = RateLimitedLog(settings.logger)

    def __len__(self) -> int:
        return len(self._entries)

    def unacked(self) -> int:
        return self._unacked

    # --- open / close ----------------------------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            # Owner-only, as the file exporter's output: queued telemetry can hold what redaction does not know to
            # mask.
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            await self._lock()
        except OSError as exc:
            raise QueueDirectoryUnusable(f"{_SETTING}: cannot use {self._dir}: {exc.strerror or exc}") from exc
        try:
            self._recover()
        except BaseException:
            self._close_files()  # the lock too: a reload's fallback, or the next start, opens the directory again
            raise
        if self._sync_interval > 0:
            self._syncer = asyncio.create_task(self._sync_periodically())
        if self._entries:
            self._settings.logger.info(
                "persistent queue recovered undelivered data",
                extra={"exporter": self._cid, "batches": len(self._entries), "items": self.items},
            )

    def _recover(self) -> None:
        done, sending = self._read_ack_log()
        self._next_seq = max([*done, *sending, 0]) + 1
        for path in sorted(self._dir.glob("*.seg")):
            self._scan_segment(path, done, sending)
        self._sending = {seq for seq in sending if seq not in done}
        self._open_ack_log()
        try:
            self._start_segment()
        except OSError as exc:  # a full volume: put() tries again, and refuses the sender until it can
            self._disk_error("segment", exc)

    async def close(self) -> None:
        """Sync and close everything, whatever the disk says: an error here must not keep the directory locked,
        which would refuse the next config's queue (a reload) and the previous one's too."""
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None
        self._close_files()

    def _close_files(self) -> None:
        for segment in self._segments:
            if segment is self._active:
                with contextlib.suppress(OSError):
                    os.fsync(segment.fd)
            with contextlib.suppress(OSError):
                os.close(segment.fd)
        self._segments.clear()
        self._active = None
        if self._acks_fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._acks_fd)
            with contextlib.suppress(OSError):
                os.close(self._acks_fd)
            self._acks_fd = -1
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    async def _lock(self) -> None:
        """Take the directory's lock; held by another agent, it is refused. A holder for a moment only (the check
        for abandoned queue directories probes the lock) is waited out."""
        fd = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        for attempt in range(_LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if attempt + 1 < _LOCK_ATTEMPTS:
                    await asyncio.sleep(0.01)
                    continue
                os.close(fd)
                raise QueueDirectoryBusy(f"{_SETTING}: {self._dir} is in use by another agent") from None
            self._lock_fd = fd
            return

    # --- recovery --------------------------------------------------------------------------------------------------

    def _read_ack_log(self) -> tuple[set[int], set[int]]:
        done: set[int] = set()
        sending: set[int] = set()
        path = self._dir / "acks.log"
        data = path.read_bytes() if path.exists() else b""
        whole = len(data) - len(data) % _ACK.size  # a torn last entry (crash mid-write) is ignored
        damaged = 0
        for kind, seq in _ACK.iter_unpack(data[:whole]):
            # Garbage (an unknown kind, or a sequence number no queue reaches) is skipped and counted: taken as a
            # sequence number, one near 2**64 (0xFF bytes) would overflow the record's u64 and fail every write.
            if kind not in (_DONE, _SENDING, _UNSENT) or seq >= _MAX_SEQ:
                damaged += 1
                continue
            if kind == _DONE:
                done.add(seq)
            elif kind == _UNSENT:
                sending.discard(seq)
            else:
                sending.add(seq)
        if damaged:
            self._errors.labels(self._cid, "corrupt").inc(damaged)
            self._settings.logger.error(
                "persistent queue acknowledgement log is damaged; the damaged entries are skipped",
                extra={"exporter": self._cid, "path": str(path), "entries_skipped": damaged, "reason": "corrupt"},
            )
        return done, sending

    def _scan_segment(self, path: Path, done: set[int], sending: set[int]) -> None:
        data = path.read_bytes()
        segment = _Segment(path, os.open(path, os.O_RDONLY), len(data))
        offset = 0
        damaged = False
        while offset < len(data):
            problem = self._check_record(data, offset)
            if problem is not None:
                following = self._next_good_record(data, offset + 1)
                self._skip_damaged(path, offset, following, problem)
                damaged = True
                offset = following
                continue
            _, length, _ = _HEADER.unpack_from(data, offset)
            seq, code, items = _BODY_PREFIX.unpack_from(data, offset + _HEADER.size)
            self._next_seq = max(self._next_seq, seq + 1)
            record_length = _HEADER.size + length
            if seq in done:
                segment.done.add(seq)
            else:
                signal = _SIGNALS[code]
                self._entries.append(
                    DiskEntry(
                        signal,
                        items,
                        record_length,
                        None,
                        time.monotonic(),
                        seq=seq,
                        maybe_duplicate=seq in sending,
                        segment=segment,
                        offset=offset,
                        length=record_length,
                    )
                )
                segment.live += 1
                self.items += items
                self._unacked += 1
                self._recovered.labels(self._cid, signal.value).inc(items)
            offset += record_length
        if segment.live == 0:
            os.close(segment.fd)
            if damaged:
                if not self._set_aside(path):
                    self._undeleted.append(segment)  # left in place: its acks stay, or its records come back
                return
            try:
                path.unlink()  # every record delivered
            except OSError as exc:  # kept, with its acks, for a later start to remove
                self._undeleted.append(segment)
                self._disk_error("delete", exc)
            return
        self._segments.append(segment)
        self.bytes += segment.size

    @staticmethod
    def _check_record(data: bytes, offset: int) -> str | None:
        if offset + _HEADER.size > len(data):
            return "truncated"
        magic, length, crc = _HEADER.unpack_from(data, offset)
        if magic != MAGIC or length < _BODY_PREFIX.size:
            return "corrupt"
        body_start = offset + _HEADER.size
        if body_start + length > len(data):
            return "truncated"
        if zlib.crc32(data[body_start : body_start + length]) != crc:
            return "corrupt"
        if data[body_start + 8] not in _SIGNALS:
            return "corrupt"
        return None

    def _next_good_record(self, data: bytes, start: int) -> int:
        """Where the next intact record begins at or after ``start`` (``len(data)`` if none): a damaged record
        must not take the good ones after it along (each is found by its magic and checked by its CRC)."""
        offset = data.find(MAGIC, start)
        while offset != -1:
            if self._check_record(data, offset) is None:
                return offset
            offset = data.find(MAGIC, offset + 1)
        return len(data)

    def _set_aside(self, path: Path) -> bool:
        """Keep a segment with nothing readable in it under another name, out of the queue: it may be another
        version's format (after a downgrade) or damage an operator wants to look at, and deleting it would lose
        that for good. False when it cannot be renamed: a later start looks at it again."""
        kept = _free_name(path.with_suffix(".damaged"))
        try:
            path.rename(kept)
        except OSError as exc:
            self._disk_error("set_aside", exc)
            return False
        self._settings.logger.error(
            "persistent queue segment has no readable record; it is set aside, out of the queue",
            extra={"exporter": self._cid, "segment": path.name, "kept_as": str(kept)},
        )
        return True

    def _skip_damaged(self, path: Path, offset: int, end: int, reason: str) -> None:
        self._errors.labels(self._cid, reason).inc()
        self._settings.logger.error(
            "persistent queue segment is damaged; the damaged bytes are skipped",
            extra={
                "exporter": self._cid,
                "segment": path.name,
                "offset": offset,
                "bytes_skipped": end - offset,
                "reason": reason,
            },
        )

    # --- writing ---------------------------------------------------------------------------------------------------

    def _start_segment(self) -> None:
        path = self._dir / f"{self._next_seq:020d}.seg"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        segment = _Segment(path, fd, os.fstat(fd).st_size)
        self._segments.append(segment)
        self.bytes += segment.size
        self._active = segment
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, signal: Signal, batch: Message, items: int, size: int) -> None:
        """Write one request; it is queued only once written (and synced, without ``sync_interval``). An OSError
        leaves nothing queued and nothing on disk, so the caller can refuse the sender without a duplicate; it is
        counted and logged here, as the refusal alone reads like a full queue (a full volume is no full queue)."""
        assert self._acks_fd >= 0, "persistent queue is not open"
        try:
            self._put(signal, batch, items)
        except OSError as exc:
            self._disk_error("segment", exc)
            raise

    def _put(self, signal: Signal, batch: Message, items: int) -> None:
        if self._active is None:
            self._start_segment()  # none could be begun yet (a full volume): an OSError refuses the sender
        assert self._active is not None
        if self._active.size >= self._segment_bytes:
            finished = self._active
            os.fsync(finished.fd)
            self._start_segment()
            if finished.live == 0:
                self._delete(finished)  # every record was done while it was still being written to
        seq = self._next_seq
        record = encode_record(seq, signal, items, batch.SerializeToString())
        segment = self._active
        self._write_all(segment, record)
        if self._sync_interval <= 0:
            try:
                os.fsync(segment.fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(segment.fd, segment.size)  # the sender is refused: take the record back
                raise
        else:
            self._dirty = True
        self._next_seq += 1
        self._entries.append(
            DiskEntry(
                signal,
                items,
                len(record),
                None,
                time.monotonic(),
                seq=seq,
                segment=segment,
                offset=segment.size,
                length=len(record),
            )
        )
        segment.size += len(record)
        segment.live += 1
        self.items += items
        self.bytes += len(record)
        self._unacked += 1

    @staticmethod
    def _write_all(segment: _Segment, record: bytes) -> None:
        written = 0
        try:
            while written < len(record):
                written += os.write(segment.fd, record[written:])
        except OSError:
            if written:  # never leave a torn record behind a good one
                os.ftruncate(segment.fd, segment.size)
            raise

    async def _sync_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval)
            if not self._dirty or self._active is None:
                continue
            self._dirty = False
            try:
                await self._sync_active()
            except OSError as exc:  # out of descriptors, a failing disk: said, and tried again next time
                self._dirty = True
                self._settings.logger.error("cannot fsync the persistent queue", extra={"error": str(exc)})

    async def _sync_active(self) -> None:
        assert self._active is not None
        fd = os.dup(self._active.fd)  # the segment may be closed while the thread syncs
        try:
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)

    # --- reading and acknowledging ---------------------------------------------------------------------------------

    def peek(self) -> DiskEntry | None:
        return self._entries[0] if self._entries else None

    def pop(self) -> DiskEntry:
        entry = self._entries.popleft()
        self.items -= entry.items
        return entry

    def load(self, entry: QueueEntry) -> Message:
        assert isinstance(entry, DiskEntry) and entry.segment is not None
        data = os.pread(entry.segment.fd, entry.length, entry.offset)
        if len(data) != entry.length or self._check_record(data, 0) is not None:
            self._errors.labels(self._cid, "corrupt").inc()
            raise ValueError(f"record {entry.seq} in {entry.segment.path.name} changed on disk")
        payload = data[_HEADER.size + _BODY_PREFIX.size :]
        try:
            return SPECS[entry.signal].request_type.FromString(payload)
        except DecodeError as exc:
            self._errors.labels(self._cid, "undecodable").inc()
            raise ValueError(f"record {entry.seq} does not decode: {exc}") from None

    def begin(self, entries: list[QueueEntry]) -> None:
        self._append_acks(_SENDING, entries)

    def unbegin(self, entries: list[QueueEntry]) -> None:
        """``begin`` taken back: every attempt failed before the backend could have the batch (shutdown cut the
        retries short), so sending it after a restart is not a possible duplicate."""
        self._append_acks(_UNSENT, entries)
        self._sending.difference_update(e.seq for e in entries)

    def ack(self, entries: list[QueueEntry]) -> None:
        """Record ``entries`` as done (idempotent: the sending queue acks again after a failed attempt). Disk
        errors are counted and logged, never raised: the records are delivered whatever the disk says."""
        self._append_acks(_DONE, entries)
        for entry in entries:
            assert isinstance(entry, DiskEntry) and entry.segment is not None
            segment = entry.segment
            if entry.acked:
                continue
            entry.acked = True
            assert segment.live > 0, f"record {entry.seq} acked in {segment.path.name}, which holds none live"
            segment.live -= 1
            segment.done.add(entry.seq)
            self._sending.discard(entry.seq)
            self._unacked -= 1
            if segment.live == 0:
                if segment is self._active:
                    self._empty_active()
                else:
                    self._delete(segment)
        if os.fstat(self._acks_fd).st_size > _MAX_ACK_LOG:
            try:
                self._rewrite_ack_log()
            except OSError as exc:  # a full disk: the log keeps growing, and the next ack tries again
                self._disk_error("ack_log", exc)

    def _empty_active(self) -> None:
        """Everything written to the active segment is done: empty it in place. Otherwise delivered records stay
        on disk and in the byte bound until the segment fills (segment_mib), which on a volume or a max_bytes
        smaller than a segment means refusing data for good."""
        segment = self._active
        assert segment is not None
        try:
            os.ftruncate(segment.fd, 0)
        except OSError as exc:
            self._disk_error("truncate", exc)
            return
        self.bytes -= segment.size
        segment.size = 0
        segment.done.clear()

    def _append_acks(self, kind: bytes, entries: list[QueueEntry]) -> None:
        """Append to the ack log, whole entries or nothing. A failure (a full disk) is logged and counted, not
        raised: the entries' state is kept in memory, and what the log misses only costs accuracy after a crash
        (a resend not flagged, or sent again), where raising would give up batches the backend can take."""
        if kind == _SENDING:
            self._sending.update(e.seq for e in entries)
        data = b"".join(_ACK.pack(kind, e.seq) for e in entries)
        size = os.fstat(self._acks_fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(self._acks_fd, data[written:])
        except OSError as exc:
            if written:  # a torn entry would shift every later one off the log's fixed-size grid
                with contextlib.suppress(OSError):
                    os.ftruncate(self._acks_fd, size)
            self._disk_error("ack_log", exc)

    def _disk_error(self, reason: str, exc: OSError) -> None:
        self._errors.labels(self._cid, reason).inc()
        # A full disk fails every ack: logged at a limited rate, counted each time.
        self._log.error(
            f"disk:{reason}", "persistent queue cannot write its disk", exporter=self._cid, step=reason, error=str(exc)
        )

    def _delete(self, segment: _Segment) -> None:
        """Forget a segment whose records are all done, and remove its file. A file that cannot be removed (an
        immutable or read-only volume) is counted and logged, and its records' acks are kept in the log, so a
        restart skips them rather than sending them again."""
        self._segments.remove(segment)
        self.bytes -= segment.size
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        try:
            segment.path.unlink(missing_ok=True)
        except OSError as exc:
            self._undeleted.append(segment)
            self._disk_error("delete", exc)

    def _open_ack_log(self) -> None:
        """The ack log, rewritten without the entries of records no longer on disk; on a full volume the rewrite
        fails, and the log is appended to as it is (a torn last entry, from a crash mid-write, cut off first)."""
        try:
            self._rewrite_ack_log()
        except OSError as exc:
            self._disk_error("ack_log", exc)
            if self._acks_fd >= 0:  # the rewrite replaced the log, then failed syncing the directory
                return
            path = self._dir / "acks.log"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            size = os.fstat(fd).st_size
            if size % _ACK.size:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size - size % _ACK.size)  # a torn entry would shift every later one
            self._acks_fd = fd

    def _rewrite_ack_log(self) -> None:
        """Keep only entries about records still on disk, so the log stays small."""
        on_disk = [*self._segments, *self._undeleted]
        entries = [_ACK.pack(_DONE, seq) for segment in on_disk for seq in sorted(segment.done)]
        entries += [_ACK.pack(_SENDING, seq) for seq in sorted(self._sending)]
        temporary = self._dir / "acks.log.tmp"
        try:
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
                handle.write(b"".join(entries))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)  # the log in place is whole; a half-written copy only takes space
            raise
        os.replace(temporary, self._dir / "acks.log")
        replaced, self._acks_fd = self._acks_fd, os.open(self._dir / "acks.log", os.O_WRONLY | os.O_APPEND)
        if replaced >= 0:
            os.close(replaced)
        self._sync_directory()

    def drain(self) -> list[QueueEntry]:
        return []


def _free_name(path: Path) -> Path:
    """``path``, or ``path`` with ``.1``, ``.2`` … added, whichever is not taken: the segment numbers start over
    from the acknowledgement log, so a later segment set aside may have the name of one set aside before."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate
