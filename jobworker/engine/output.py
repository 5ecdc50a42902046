"""The output spool as the server reads it: a job's stdout and stderr in one file, for many followers.

The file format and its writer are in ``_spoolfile`` (the job's holder writes the file, not the server).
While the job runs, the holder reports how far it got (spawn.SpoolProgress): only what it reported counts
as committed, so followers never see a torn record. Followers read the file by offset and are woken through
an asyncio event. A spool whose holder is gone is read as far as its whole records go.

A follower may ask for a window (job.OutputWindow: a tail, a time range, a byte limit): it starts where
``_spoolread`` finds through the holder's index, and records outside the times are skipped as it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from jobworker.engine import _readbudget, _spoolread
from jobworker.engine import _spoolfile as fmt
from jobworker.engine._spoolread import Position, SpoolIndex
from jobworker.engine.errors import OutputUntimedError
from jobworker.engine.job import (
    OutputChunk,
    OutputEvent,
    OutputTruncated,
    OutputWindow,
    OutputWindowEnd,
    Stream,
    StreamSelection,
    TruncationReason,
)
from jobworker.engine.spawn import SpoolProgress

log = logging.getLogger("jobworker.engine")

_REASONS = {
    fmt.REASON_CAP: TruncationReason.OUTPUT_CAP,
    fmt.REASON_DISK_FULL: TruncationReason.DISK_FULL,
    fmt.REASON_DISK_ERROR: TruncationReason.DISK_ERROR,
}


def reason_of(code: int) -> TruncationReason:
    """The truncation reason a mark's code (_spoolfile.REASON_*) names."""
    return _REASONS.get(code, TruncationReason.DISK_ERROR)


# Followers read the file in blocks (a large one while behind, if the process-wide budget allows it: see
# _readbudget) and merge adjacent records of one stream into chunks (one gRPC message each) of at most
# _MAX_CHUNK; a record larger than the block is read on its own.
_MAX_CHUNK = _readbudget.LARGE_CHUNK
MAX_RECORD = fmt.MAX_RECORD
_SCAN_BLOCK = 64 * 1024
# The holder's index beside the spool (records.INDEX).
INDEX_NAME = "output.idx"
# A follower with an until time waits this long past it: output stamped just before until may still be
# on its way from the holder (stamped, written, reported).
UNTIL_GRACE_SECONDS = 0.25
_WHOLE = OutputWindow()


def create(path: Path) -> None:
    """Make a new job's empty spool (its holder appends to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if os.write(fd, fmt.MAGIC) != len(fmt.MAGIC):
            raise OSError(28, os.strerror(28))
    finally:
        os.close(fd)


class OutputSpool:
    """One job's spool for its followers: live (a holder reports progress) or complete on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._header, self._start = _format_of(path)
        self._committed = self._start
        self._bytes = {Stream.STDOUT: 0, Stream.STDERR: 0}
        self._dropped = 0
        self._truncated: TruncationReason | None = None
        self._complete = False
        self._changed = asyncio.Event()

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

    def update(self, progress: SpoolProgress) -> None:
        """The holder's latest report: what it stored (never less than before)."""
        if progress.committed < self._committed:
            return
        self._committed = progress.committed
        self._bytes[Stream.STDOUT] = progress.stdout_bytes
        self._bytes[Stream.STDERR] = progress.stderr_bytes
        self._dropped = progress.dropped_bytes
        if progress.truncated is not None and self._truncated is None:
            self._truncated = reason_of(progress.truncated)
        self._wake()

    def mark_truncated(self, reason: TruncationReason, dropped: int | None = None) -> None:
        """Note a truncation the file does not show (its mark could not be written), from a record."""
        if dropped is not None:
            self._dropped = dropped
        if self._truncated is None:
            self._truncated = reason
            self._wake()

    def recover(self) -> None:
        """Count what the file holds in whole records, and cut off a torn last one (its holder is gone)."""
        committed, counts, truncated = _scan(self.path, self._header, self._start)
        if os.stat(self.path).st_size > committed:
            with contextlib.suppress(OSError):
                os.truncate(self.path, committed)
        self._committed = committed
        self._bytes = counts
        if truncated is not None:
            self._truncated = truncated
        self._wake()

    def restore(
        self, stdout_bytes: int, stderr_bytes: int, dropped: int, reason: TruncationReason | None
    ) -> None:
        """An ended job's spool as its final record counts it: whole up to its end."""
        self._committed = max(self._start, os.stat(self.path).st_size)
        self._bytes = {Stream.STDOUT: stdout_bytes, Stream.STDERR: stderr_bytes}
        self._dropped = dropped
        if reason is not None:
            self._truncated = reason
        self._complete = True

    def finish(self) -> None:
        """Mark the output complete (the job ended); followers drain what is left and stop."""
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def check_window(self, window: OutputWindow) -> None:
        """Raise when this spool cannot serve window (times asked of a spool that has none)."""
        if window.timed and self._header is fmt.HEADER_V1:
            raise OutputUntimedError(
                "this job's output was stored without arrival times (by the first release): "
                "since and until cannot apply to it"
            )

    def _seek(self, fd: int, selection: StreamSelection, offset: int, window: OutputWindow) -> Position:
        """Where a follower of window starts (in a thread: a tail may read a few MiB)."""
        end = self._committed
        index = SpoolIndex(self.path.parent / INDEX_NAME, end)
        try:
            best = Position(self._start, 0, offset)
            if offset > 0 and len(index):
                i = index.last_at_or_before_view(offset, selection)
                if i >= 0:
                    best = Position(index.entry(i)[1], index.view_at(i, selection), offset)
            if window.since_ns is not None and len(index):
                i = index.last_before_time(window.since_ns)
                if i >= 0 and index.entry(i)[1] > best.pos:
                    best = Position(index.entry(i)[1], index.view_at(i, selection), best.deliver)
            if window.tail_lines is not None:
                stop = end
                if window.until_ns is not None:
                    stop = _spoolread.find_time(
                        fd, self._header, index, self._start, end, selection, window.until_ns
                    )[0]
                t = _spoolread.tail(fd, self._header, index, self._start, stop, selection, window.tail_lines)
                if t.pos >= best.pos:
                    best = Position(t.pos, t.view, max(t.deliver, offset))
                else:
                    best = Position(best.pos, best.view, max(t.deliver, best.deliver))
            return best
        finally:
            index.close()

    async def follow(
        self,
        selection: StreamSelection,
        offset: int = 0,
        *,
        follow: bool = True,
        window: OutputWindow = _WHOLE,
        stop: asyncio.Future[None] | None = None,
    ) -> AsyncGenerator[OutputEvent, None]:
        """Yield output of the selected view from offset, within window; with follow, until the spool is
        complete (or the window's until time has passed), or stop is done while waiting for more."""
        self.check_window(window)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        header = self._header
        try:
            # pos: file position of the next unread record; view: bytes of the selected view before it.
            if offset > 0 or window.tail_lines is not None or window.since_ns is not None:
                start = await asyncio.to_thread(self._seek, fd, selection, offset, window)
            else:
                start = Position(self._start, 0, 0)
            pos, view = start.pos, start.view
            budget = _readbudget.READS
            cut = _Cut(
                deliver=start.deliver,
                stop_view=None if window.limit_bytes is None else start.deliver + window.limit_bytes,
                since_ns=window.since_ns,
                until_ns=window.until_ns,
                exact_times=window.exact_times,
            )
            marked = False  # a truncation mark was delivered (from the file, or from memory)
            if cut.stop_view is not None and cut.stop_view <= cut.deliver:
                yield OutputWindowEnd(cut.deliver)
                return
            while True:
                committed = self._committed
                changed = self._changed
                while pos < committed:
                    size = budget.take(committed - pos)
                    try:
                        consumed, view, events, ended = _read(
                            fd, header, pos, min(size, committed - pos), selection, view, cut, size
                        )
                        if consumed == 0 and not ended:
                            # Only whole records are committed, so the file was changed under us: end the
                            # stream rather than read the same bytes again.
                            log.error(
                                "output spool is corrupt", extra={"path": str(self.path), "position": pos}
                            )
                            return
                        pos += consumed
                        produced = bool(events)
                        events.reverse()
                        while events:
                            if isinstance(events[-1], OutputTruncated):
                                marked = True
                            # Popped as yielded: this frame keeps no reference to a chunk being sent.
                            yield events.pop()
                    finally:
                        # Given back when the consumer asks for more: it has sent the last chunk on.
                        budget.give(size)
                    if ended:
                        yield OutputWindowEnd(min(view, cut.stop_view or view))
                        return
                    if not produced:
                        # Blocks of the other stream only: let the loop run between them.
                        await asyncio.sleep(0)
                reason = self._truncated
                # A mark the disk refused is known from the holder's report or the job's record only.
                if reason is not None and not marked and pos >= self._committed:
                    marked = True
                    if view >= cut.deliver:
                        yield OutputTruncated(view, reason)
                if self._complete and pos >= self._committed:
                    return
                if not follow:
                    return
                if pos >= self._committed:
                    remaining: float | None = None
                    if window.until_ns is not None:
                        # Output stamped just before until may still be on its way from the holder.
                        remaining = (window.until_ns - time.time_ns()) / 1e9 + UNTIL_GRACE_SECONDS
                        if remaining <= 0:
                            yield OutputWindowEnd(view)
                            return
                    if not await _wait(changed, stop, remaining):
                        return
        finally:
            os.close(fd)


def _read(
    fd: int,
    header: struct.Struct,
    pos: int,
    nbytes: int,
    selection: StreamSelection,
    view: int,
    cut: _Cut,
    block_size: int,
) -> tuple[int, int, list[OutputEvent], bool]:
    """_parse_block of the nbytes at pos (chunks as large as block_size allows); a record larger than
    that is read on its own. Nothing consumed and not ended: the file is not whole records there."""
    limit = _readbudget.chunk_bytes(block_size)
    block = os.pread(fd, nbytes, pos)
    consumed, view_after, events, ended = _parse_block(block, header, selection, view, cut, limit)
    if consumed == 0 and not ended:
        head = os.pread(fd, header.size, pos)
        if len(head) == header.size:
            length = header.unpack(head)[1]
            block = os.pread(fd, header.size + length, pos)
            consumed, view_after, events, ended = _parse_block(block, header, selection, view, cut, limit)
    return consumed, view_after, events, ended


async def _wait(changed: asyncio.Event, stop: asyncio.Future[None] | None, seconds: float | None) -> bool:
    """Wait until the spool changes or `seconds` pass; False when stop is done (first)."""
    if stop is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), seconds)
        return True
    # Only here, where a follower waits, does it race stop: reading on costs no task per chunk.
    waiter = asyncio.ensure_future(changed.wait())
    try:
        await asyncio.wait((waiter, stop), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return not stop.done()


def _format_of(path: Path) -> tuple[struct.Struct, int]:
    """The record header of the file at path and where its first record starts (version 1 or 2)."""
    with path.open("rb") as f:
        head = f.read(len(fmt.MAGIC))
    if head == fmt.MAGIC:
        return fmt.HEADER, len(fmt.MAGIC)
    return fmt.HEADER_V1, 0


def _mark(block: bytes | memoryview, at: int, length: int) -> TruncationReason:
    """The reason a truncation mark names (version 1's cap mark has no payload)."""
    return _REASONS.get(block[at] if length else fmt.REASON_CAP, TruncationReason.OUTPUT_CAP)


@dataclass(frozen=True)
class _Cut:
    """What of the records a follower gets: view bytes from `deliver` to `stop_view`, arrival times
    within [since_ns, until_ns]."""

    deliver: int
    stop_view: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    exact_times: bool = False


_ALL = _Cut(0)


def _parse_block(
    block: bytes,
    header: struct.Struct,
    selection: StreamSelection,
    view: int,
    cut: _Cut = _ALL,
    max_chunk: int = _MAX_CHUNK,
) -> tuple[int, int, list[OutputEvent], bool]:
    """Turn whole records of block into events (chunks of at most max_chunk bytes); returns (bytes
    consumed, new view offset, events, and whether the cut ended: a record after until_ns, or stop_view
    reached)."""
    events: list[OutputEvent] = []
    pos = 0
    # Views into block: each chunk's bytes are copied out of it once, when the chunk is made.
    whole = memoryview(block)
    pending: list[memoryview] = []
    pending_stream: Stream | None = None
    pending_offset = 0
    pending_size = 0
    pending_time: int | None = None
    offset, stop, since, until = cut.deliver, cut.stop_view, cut.since_ns, cut.until_ns
    timed = header.size > fmt.HEADER_V1.size
    ended = False

    def flush() -> None:
        nonlocal pending, pending_stream, pending_size
        if pending_stream is not None and pending:
            data = bytes(pending[0]) if len(pending) == 1 else b"".join(pending)
            events.append(OutputChunk(pending_stream, pending_offset, data, pending_time))
        pending, pending_stream, pending_size = [], None, 0

    while pos + header.size <= len(block):
        fields = header.unpack_from(block, pos)
        stream_id, length = fields[0], fields[1]
        time_ns: int | None = fields[2] if timed else None
        end = pos + header.size + length
        if end > len(block):
            break
        if until is not None and time_ns is not None and time_ns > until:
            ended = True
            break
        early = since is not None and time_ns is not None and time_ns < since
        if stream_id == fmt.TRUNCATED:
            flush()
            if view >= offset and not early:
                events.append(OutputTruncated(view, _mark(block, pos + header.size, length)))
        else:
            stream = Stream(stream_id)
            if selection.includes(stream):
                if not early:
                    start = max(0, offset - view)
                    last = end if stop is None else min(end, pos + header.size + max(0, stop - view))
                    for piece in range(pos + header.size + start, last, max_chunk):
                        data = whole[piece : min(last, piece + max_chunk)]
                        if (
                            pending_stream is not stream
                            or pending_size + len(data) > max_chunk
                            or (cut.exact_times and pending_time != time_ns)
                        ):
                            flush()
                            pending_stream, pending_offset = stream, view + (piece - pos - header.size)
                            pending_time = time_ns
                        pending.append(data)
                        pending_size += len(data)
                view += length
        pos = end
        if stop is not None and view >= stop:
            ended = True
            break
    flush()
    return pos, view, events, ended


def _scan(
    path: Path, header: struct.Struct, start: int
) -> tuple[int, dict[Stream, int], TruncationReason | None]:
    """Where the whole records of a spool file end, bytes per stream in them, and its truncation mark.

    Reads headers only (in blocks), so counting a big spool of big records is cheap."""
    counts = {Stream.STDOUT: 0, Stream.STDERR: 0}
    truncated: TruncationReason | None = None
    pos = start
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        block, block_at = b"", pos
        while pos + header.size <= size:
            # The header and a mark's payload byte must be in the block.
            if pos + header.size + 1 > block_at + len(block):
                f.seek(pos)
                block, block_at = f.read(_SCAN_BLOCK), pos
            at = pos - block_at
            stream_id, length = header.unpack_from(block, at)[:2]
            end = pos + header.size + length
            if stream_id not in (fmt.STDOUT, fmt.STDERR, fmt.TRUNCATED) or end > size:
                break
            if stream_id == fmt.TRUNCATED:
                truncated = _mark(block, at + header.size, length)
            else:
                counts[Stream(stream_id)] += length
            pos = end
    return pos, counts, truncated
