"""The output spool: a job's stdout and stderr in one append-only file, read by any number of followers.

File format (reloadable after a restart): a sequence of records, each a 5-byte header ``<B stream><I length>``
followed by ``length`` bytes. Stream 1 is stdout, 2 is stderr, 0xFF marks the point where output stopped
being stored: length 0 at the output cap, or length 1 with one byte naming the reason (_MARK_REASONS). Records
appear in the order the engine drained them, which preserves the interleaving of the two streams as far as two
pipes can tell it.

The writer never waits for readers: followers read the file by offset and are woken through an asyncio event.
Only whole records count as committed, so readers never see a torn one. When the disk refuses a write (ENOSPC,
EIO) the torn tail is cut off, the spool stops storing (later output is counted and dropped) and the mark is
written if the disk still takes five bytes, else kept in memory for followers (and in the job's record).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
from collections.abc import AsyncGenerator
from pathlib import Path

from jobworker.engine.job import (
    OutputChunk,
    OutputEvent,
    OutputTruncated,
    Stream,
    StreamSelection,
    TruncationReason,
)

log = logging.getLogger("jobworker.engine")

_HEADER = struct.Struct("<BI")
_TRUNCATED = 0xFF
# The payload byte of a mark that is not the cap's (which has none), and back.
_MARK_REASONS = {TruncationReason.DISK_FULL: 1, TruncationReason.DISK_ERROR: 2}
_REASON_OF_MARK = {code: reason for reason, code in _MARK_REASONS.items()}
# Errors that mean the disk has no room; any other write error is a disk error.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Followers read the file in blocks of this size and merge adjacent records of one stream into chunks of
# at most _MAX_CHUNK (the size of one gRPC message). Both bound what each of many followers holds at once.
_MAX_CHUNK = 64 * 1024
# The engine appends at most this much per record (one drain read), so one block holds whole records.
MAX_RECORD = 256 * 1024
_READ_BLOCK = MAX_RECORD + 64


class OutputSpool:
    """Append-only record of one job's output with a size cap; one writer, many followers."""

    def __init__(self, path: Path, cap_bytes: int, *, create: bool = True) -> None:
        self.path = path
        self._cap = cap_bytes
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd: int | None = os.open(path, flags, 0o600)
        self._committed = 0
        self._bytes = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._dropped = 0
        self._truncated: TruncationReason | None = None
        # False when the truncation mark could not be written: followers then get it from memory.
        self._mark_in_file = True
        self._complete = False
        self._changed = asyncio.Event()
        if not create:
            self._recover()

    @property
    def stdout_bytes(self) -> int:
        return self._bytes[Stream.STDOUT]

    @property
    def stderr_bytes(self) -> int:
        return self._bytes[Stream.STDERR]

    @property
    def truncated(self) -> bool:
        return self._truncated is not None

    @property
    def truncation_reason(self) -> TruncationReason | None:
        return self._truncated

    @property
    def dropped_bytes(self) -> int:
        """Output the job wrote that was not stored (past the cap or refused by the disk)."""
        return self._dropped

    def append(self, stream: Stream, data: bytes) -> None:
        """Store data (up to the cap; the rest is dropped and a truncation mark written once)."""
        if self._fd is None or self._complete or not data:
            return
        if self._truncated is not None:
            self._dropped += len(data)
            return
        room = max(0, self._cap - self.stdout_bytes - self.stderr_bytes)
        kept = data[:room]
        records: list[bytes] = [_HEADER.pack(stream.value, len(kept)), kept] if kept else []
        if len(kept) < len(data):
            records.append(_HEADER.pack(_TRUNCATED, 0))
        error = self._write(records)
        if error is not None:
            self._dropped += len(data)
            self._refused(error)
            return
        self._committed += sum(len(r) for r in records)
        self._bytes[stream] += len(kept)
        if len(kept) < len(data):
            self._dropped += len(data) - len(kept)
            self._truncated = TruncationReason.OUTPUT_CAP
        self._wake()

    def mark_truncated(self, reason: TruncationReason) -> None:
        """Note a truncation the file does not show (its mark could not be written), from the job's record."""
        if self._truncated is None:
            self._truncated = reason
            self._mark_in_file = False
            self._wake()

    def _write(self, records: list[bytes]) -> OSError | None:
        """Append records whole, or cut the file back to the last whole record and return the error."""
        assert self._fd is not None
        total = sum(len(r) for r in records)
        try:
            written = os.writev(self._fd, records)
            if written < total:
                # A short write to a regular file means the disk filled up; the rest says so or fits.
                written += os.write(self._fd, b"".join(records)[written:])
            if written < total:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            # Shrinking needs no space; should even that fail, readers still stop at _committed and a
            # restarted server cuts the torn tail off (_recover).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._committed)
            return e
        return None

    def _refused(self, error: OSError) -> None:
        """The disk refused output: stop storing, and mark the point (in the file if it still fits)."""
        reason = TruncationReason.DISK_FULL if error.errno in _FULL_ERRNOS else TruncationReason.DISK_ERROR
        self._truncated = reason
        mark = [_HEADER.pack(_TRUNCATED, 1), bytes((_MARK_REASONS[reason],))]
        if self._write(mark) is None:
            self._committed += _HEADER.size + 1
        else:
            self._mark_in_file = False
        log.warning(
            "job output no longer stored",
            extra={"path": str(self.path), "reason": reason.value, "error": str(error)},
        )
        self._wake()

    def finish(self) -> None:
        """Mark the output complete (the job ended); followers drain what is left and stop."""
        self._complete = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _recover(self) -> None:
        """Rebuild counters from the file after a restart; a torn last record is cut off."""
        size = 0
        for stream_id, length, pos in _scan_headers(self.path):
            if stream_id == _TRUNCATED:
                self._truncated = _mark_reason(self.path, pos, length)
            else:
                self._bytes[Stream(stream_id)] += length
            size += _HEADER.size + length
        if self._fd is not None:
            # Readers stop at _committed whatever the file holds, so a disk that refuses even this is fine.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
        self._committed = size

    async def follow(
        self, selection: StreamSelection, offset: int = 0, *, follow: bool = True
    ) -> AsyncGenerator[OutputEvent, None]:
        """Yield output of the selected view from offset; with follow, until the spool is complete."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pos = 0  # file position of the next unread record
            view = 0  # bytes of the selected view before that record
            marked = False  # the in-memory truncation mark was delivered
            while True:
                committed = self._committed
                changed = self._changed
                while pos < committed:
                    block = os.pread(fd, min(_READ_BLOCK, committed - pos), pos)
                    consumed, view, events = _parse_block(block, selection, view, offset)
                    if consumed == 0:
                        # A record larger than the block: read exactly it.
                        header = os.pread(fd, _HEADER.size, pos)
                        if len(header) == _HEADER.size:
                            _, length = _HEADER.unpack(header)
                            block = os.pread(fd, _HEADER.size + length, pos)
                            consumed, view, events = _parse_block(block, selection, view, offset)
                    if consumed == 0:
                        # Only whole records are committed, so the file was changed under us: end the
                        # stream rather than read the same bytes again.
                        log.error("output spool is corrupt", extra={"path": str(self.path), "position": pos})
                        return
                    pos += consumed
                    for event in events:
                        yield event
                    if not events:
                        # Blocks of the other stream only: let the loop run between them.
                        await asyncio.sleep(0)
                reason = self._truncated
                if reason is not None and not self._mark_in_file and not marked and pos >= self._committed:
                    marked = True
                    if view >= offset:
                        yield OutputTruncated(view, reason)
                if self._complete and pos >= self._committed:
                    return
                if not follow:
                    return
                if pos >= self._committed:
                    await changed.wait()
        finally:
            os.close(fd)


def _parse_block(
    block: bytes, selection: StreamSelection, view: int, offset: int
) -> tuple[int, int, list[OutputEvent]]:
    """Turn whole records of block into events; returns (bytes consumed, new view offset, events)."""
    events: list[OutputEvent] = []
    pos = 0
    pending: list[bytes] = []
    pending_stream: Stream | None = None
    pending_offset = 0
    pending_size = 0

    def flush() -> None:
        nonlocal pending, pending_stream, pending_size
        if pending_stream is not None and pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            events.append(OutputChunk(pending_stream, pending_offset, data))
        pending, pending_stream, pending_size = [], None, 0

    while pos + _HEADER.size <= len(block):
        stream_id, length = _HEADER.unpack_from(block, pos)
        end = pos + _HEADER.size + length
        if end > len(block):
            break
        if stream_id == _TRUNCATED:
            flush()
            if view >= offset:
                code = block[pos + _HEADER.size] if length else 0
                events.append(OutputTruncated(view, _REASON_OF_MARK.get(code, TruncationReason.OUTPUT_CAP)))
        else:
            stream = Stream(stream_id)
            if selection.includes(stream):
                start = max(0, offset - view)
                for piece in range(pos + _HEADER.size + start, end, _MAX_CHUNK):
                    data = block[piece : min(end, piece + _MAX_CHUNK)]
                    if pending_stream is not stream or pending_size + len(data) > _MAX_CHUNK:
                        flush()
                        pending_stream, pending_offset = stream, view + (piece - pos - _HEADER.size)
                    pending.append(data)
                    pending_size += len(data)
                view += length
        pos = end
    flush()
    return pos, view, events


def _scan_headers(path: Path) -> list[tuple[int, int, int]]:
    """(stream id, length, position) of every whole record in a spool file."""
    records: list[tuple[int, int, int]] = []
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = 0
        while pos + _HEADER.size <= size:
            f.seek(pos)
            stream_id, length = _HEADER.unpack(f.read(_HEADER.size))
            if pos + _HEADER.size + length > size or stream_id not in (1, 2, _TRUNCATED):
                break
            records.append((stream_id, length, pos))
            pos += _HEADER.size + length
    return records


def _mark_reason(path: Path, pos: int, length: int) -> TruncationReason:
    """The reason a truncation mark at pos names (the cap's mark has no payload)."""
    if not length:
        return TruncationReason.OUTPUT_CAP
    with path.open("rb") as f:
        f.seek(pos + _HEADER.size)
        code = f.read(1)
    return _REASON_OF_MARK.get(code[0] if code else 0, TruncationReason.OUTPUT_CAP)
