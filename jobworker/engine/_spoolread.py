"""Finding a place in a spool without reading it all: its index, and the last lines of a view.

The index (format in ``_spoolfile``) is read through mmap and searched with bisect: the entry before a time
or before a byte of the selected view is found in O(log entries), and records are then scanned from there.
Entries point at least every ``INDEX_EVERY_BYTES``, so a scan from an entry reads about a MiB. Entries past
the committed end are ignored (the holder may have indexed a record it has not reported yet); a spool without
a usable index (version 1, or an index the disk refused) is scanned from its first record: slower, the same
answer.

``--tail N`` counts newlines backwards from the end: scan forward from the last entry to the end, and when
that segment holds fewer than N lines, step back one entry (past entries with no output of the selected
streams between them). Only records with a newline are remembered, at
most as many as N lines need, so memory stays bounded by N however large the spool.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jobworker.engine import _spoolfile as fmt
from jobworker.engine.job import Stream, StreamSelection

# Scans read this much at once: an indexed segment is about one read.
_SCAN_BLOCK = fmt.INDEX_EVERY_BYTES + fmt.MAX_RECORD
_STREAMS = (fmt.STDOUT, fmt.STDERR, fmt.TRUNCATED)


@dataclass(frozen=True)
class Position:
    """Where to start reading: the record at file position `pos`, with `view` bytes of the selected view
    before it; delivery starts at view offset `deliver` (>= view, possibly inside that record)."""

    pos: int
    view: int
    deliver: int


class SpoolIndex:
    """The entries of one spool's index that point below `end` (the committed end of the spool)."""

    def __init__(self, path: Path, end: int) -> None:
        self._map: mmap.mmap | None = None
        self._count = 0
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                if size >= len(fmt.INDEX_MAGIC) + fmt.INDEX_ENTRY.size:
                    self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        if self._map is None or self._map[: len(fmt.INDEX_MAGIC)] != fmt.INDEX_MAGIC:
            self.close()
            return
        # A torn last entry (the holder died mid-write, or the disk refused it) is not an entry.
        total = (len(self._map) - len(fmt.INDEX_MAGIC)) // fmt.INDEX_ENTRY.size
        self._count = bisect.bisect_left(_Column(self, 1, total), end)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._map = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def entry(self, i: int) -> tuple[int, int, int, int]:
        """(time_ns, offset, stdout bytes before, stderr bytes before) of entry i."""
        assert self._map is not None
        at = len(fmt.INDEX_MAGIC) + i * fmt.INDEX_ENTRY.size
        time_ns, offset, out, err = fmt.INDEX_ENTRY.unpack_from(self._map, at)
        return int(time_ns), int(offset), int(out), int(err)

    def view_at(self, i: int, selection: StreamSelection) -> int:
        """Bytes of the selected view before the record entry i points at."""
        _, _, out, err = self.entry(i)
        return view_of(selection, out, err)

    def last_before_time(self, time_ns: int) -> int:
        """The last entry whose record arrived before time_ns; -1 if none."""
        return bisect.bisect_left(_Column(self, 0, self._count), time_ns) - 1

    def last_at_or_before_time(self, time_ns: int) -> int:
        """The last entry whose record arrived at or before time_ns; -1 if none."""
        return bisect.bisect_right(_Column(self, 0, self._count), time_ns) - 1

    def last_at_or_before_view(self, view: int, selection: StreamSelection) -> int:
        """The last entry with at most `view` bytes of the selected view before it; -1 if none."""
        column = _ViewColumn(self, selection)
        return bisect.bisect_right(column, view) - 1

    def last_before_pos(self, pos: int) -> int:
        """The last entry pointing below file position pos; -1 if none."""
        return bisect.bisect_left(_Column(self, 1, self._count), pos) - 1


class _Column:
    """One field of the index entries as a sequence, for bisect (entries are read only when probed)."""

    def __init__(self, index: SpoolIndex, field: int, count: int) -> None:
        self._index, self._field, self._count = index, field, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: int) -> int:
        return self._index.entry(i)[self._field]


class _ViewColumn:
    def __init__(self, index: SpoolIndex, selection: StreamSelection) -> None:
        self._index, self._selection = index, selection

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> int:
        return self._index.view_at(i, self._selection)


def view_of(selection: StreamSelection, stdout_bytes: int, stderr_bytes: int) -> int:
    """Bytes of the selected view among these counts."""
    if selection is StreamSelection.STDOUT:
        return stdout_bytes
    if selection is StreamSelection.STDERR:
        return stderr_bytes
    return stdout_bytes + stderr_bytes


def records(
    fd: int, header: struct.Struct, start: int, end: int
) -> Iterator[tuple[int, int, int | None, memoryview]]:
    """(file position, stream id, arrival time or None, payload) of each whole record in [start, end)."""
    pos = start
    timed = header.size > fmt.HEADER_V1.size
    while pos + header.size <= end:
        block = os.pread(fd, min(_SCAN_BLOCK, end - pos), pos)
        view = memoryview(block)
        at = 0
        while at + header.size <= len(block):
            fields = header.unpack_from(block, at)
            stream_id, length = fields[0], fields[1]
            if stream_id not in _STREAMS:
                return
            if at + header.size + length > len(block):
                break
            yield (
                pos + at,
                stream_id,
                fields[2] if timed else None,
                view[at + header.size : at + header.size + length],
            )
            at += header.size + length
        if at == 0:
            # A record larger than the block: read exactly it, or stop at a torn one.
            stream_id, length = header.unpack_from(block, 0)[:2]
            if pos + header.size + length > end:
                return
            record = os.pread(fd, header.size + length, pos)
            if len(record) < header.size + length:
                return
            fields = header.unpack_from(record, 0)
            yield pos, stream_id, fields[2] if timed else None, memoryview(record)[header.size :]
            at = header.size + length
        pos += at


def _selected(selection: StreamSelection, stream_id: int) -> bool:
    return stream_id != fmt.TRUNCATED and selection.includes(Stream(stream_id))


def find_time(
    fd: int,
    header: struct.Struct,
    index: SpoolIndex,
    start: int,
    end: int,
    selection: StreamSelection,
    after_ns: int,
) -> tuple[int, int]:
    """(file position, view offset) of the first record that arrived after after_ns; (end, view) if none."""
    i = index.last_at_or_before_time(after_ns)
    pos, view = (index.entry(i)[1], index.view_at(i, selection)) if i >= 0 else (start, 0)
    stop = index.entry(i + 1)[1] if i + 1 < len(index) else end
    for at, stream_id, time_ns, payload in records(fd, header, pos, end):
        if time_ns is not None and time_ns > after_ns:
            return at, view
        if at >= stop:
            # The next entry arrived after after_ns (the index says so): its record is the first.
            return at, view
        if _selected(selection, stream_id):
            view += len(payload)
    return end, view


def tail(
    fd: int,
    header: struct.Struct,
    index: SpoolIndex,
    start: int,
    end: int,
    selection: StreamSelection,
    lines: int,
) -> Position:
    """Where the last `lines` lines of the selected view in [start, end) begin.

    As `tail -n`: lines end with a newline, a last line without one counts too, and with both streams
    selected lines are counted in arrival order."""
    k = index.last_before_pos(end)
    seg_end = end
    need = lines
    final: bool | None = None  # whether the view's last byte is a newline, once known
    view_end: int | None = None
    while True:
        seg_start, seg_view = (index.entry(k)[1], index.view_at(k, selection)) if k >= 0 else (start, 0)
        # (file position, view offset, payload length, newlines) of records with newlines, oldest first.
        kept: deque[tuple[int, int, int, int]] = deque()
        total = 0
        view = seg_view
        last: tuple[int, bool] | None = None
        for at, stream_id, _time, payload in records(fd, header, seg_start, seg_end):
            if not _selected(selection, stream_id) or not payload:
                continue
            count = payload.tobytes().count(b"\n") if len(payload) < 4096 else bytes(payload).count(b"\n")
            if count:
                kept.append((at, view, len(payload), count))
                total += count
                # One newline more than needed: the view's last newline may not count.
                while total - kept[0][3] >= need + 1:
                    total -= kept.popleft()[3]
            view += len(payload)
            last = (view, payload[-1] == ord("\n"))
        if view_end is None:
            view_end = view
            if lines == 0:
                return Position(seg_end, view_end, view_end)
        exclude_last = False
        if final is None and last is not None:
            final = last[1]
            # A newline that ends the view ends the last line; it starts none.
            exclude_last = final
            if exclude_last:
                total -= 1
        if total >= need:
            return _locate(fd, header, kept, need, exclude_last)
        need -= total
        if k < 0 or seg_view == 0:
            return Position(start, 0, 0)
        # Step back to the last entry with less of the view before it: the entries in between hold only the
        # other stream (the index counts each), so a tail of one stream never reads the other's output.
        j = index.last_at_or_before_view(seg_view - 1, selection)
        seg_end, k = index.entry(j + 1)[1], j


def _locate(
    fd: int, header: struct.Struct, kept: deque[tuple[int, int, int, int]], need: int, exclude_last: bool
) -> Position:
    """The start of the need-th line from the end among the kept records (see tail)."""
    for n, (at, view, length, count) in enumerate(reversed(kept)):
        if n == 0 and exclude_last:
            count -= 1
        if count < need:
            need -= count
            continue
        payload = os.pread(fd, length, at + header.size)
        cut = length - 1 if n == 0 and exclude_last else length
        for _ in range(need):
            cut = payload.rfind(b"\n", 0, cut)
        return Position(at, view, view + cut + 1)
    at, view = kept[0][0], kept[0][1]
    return Position(at, view, view)
