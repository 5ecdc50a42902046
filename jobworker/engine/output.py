"""The output spool: a job's stdout and stderr in one append-only file, read by any number of followers.

File format (reloadable after a restart): a sequence of records, each a 5-byte header ``<B stream><I length>``
followed by ``length`` bytes. Stream 1 is stdout, 2 is stderr, 0xFF marks the point where the output cap was
reached (length 0). Records appear in the order the engine drained them, which preserves the interleaving of
the two streams as far as two pipes can tell it.

The writer never waits for readers: followers read the file by offset and are woken through an asyncio event.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncGenerator
from pathlib import Path

from jobworker.engine.job import OutputChunk, OutputEvent, OutputTruncated, Stream, StreamSelection

_HEADER = struct.Struct("<BI")
_TRUNCATED = 0xFF
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
        self._truncated = False
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
        return self._truncated

    @property
    def complete(self) -> bool:
        return self._complete

    def append(self, stream: Stream, data: bytes) -> None:
        """Store data (up to the cap; the rest is dropped and a truncation mark written once)."""
        if self._fd is None or self._complete or self._truncated or not data:
            return
        room = self._cap - self.stdout_bytes - self.stderr_bytes
        records: list[bytes] = []
        if room > 0:
            kept = data[:room]
            records += [_HEADER.pack(stream.value, len(kept)), kept]
            self._bytes[stream] += len(kept)
        if len(data) > room:
            records.append(_HEADER.pack(_TRUNCATED, 0))
            self._truncated = True
        written = os.writev(self._fd, records)
        self._committed += written
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
        for stream_id, length, _pos in _scan_headers(self.path):
            if stream_id == _TRUNCATED:
                self._truncated = True
            else:
                self._bytes[Stream(stream_id)] += length
            size += _HEADER.size + length
        if self._fd is not None:
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
            while True:
                committed = self._committed
                changed = self._changed
                while pos < committed:
                    block = os.pread(fd, min(_READ_BLOCK, committed - pos), pos)
                    consumed, view, events = _parse_block(block, selection, view, offset)
                    if consumed == 0:
                        # A record larger than the block: read exactly it.
                        _, length = _HEADER.unpack_from(os.pread(fd, _HEADER.size, pos))
                        block = os.pread(fd, _HEADER.size + length, pos)
                        consumed, view, events = _parse_block(block, selection, view, offset)
                    pos += consumed
                    for event in events:
                        yield event
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
                events.append(OutputTruncated(view))
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
