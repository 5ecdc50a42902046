"""Reading a spool by position and time (tail, since, until, byte limit, record times), through its index.

Spools are written here with the holder's own writer (_spoolfile.SpoolWriter), at chosen arrival times.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.engine import _spoolfile as fmt
from jobworker.engine import _spoolread
from jobworker.engine.errors import OutputUntimedError
from jobworker.engine.job import (
    OutputChunk,
    OutputEvent,
    OutputTruncated,
    OutputWindow,
    OutputWindowEnd,
    Stream,
    StreamSelection,
)
from jobworker.engine.output import OutputSpool
from jobworker.engine.spawn import SpoolProgress

SECOND = 1_000_000_000
T0 = 1_796_119_200 * SECOND  # 2026-12-01T10:00:00Z
Record = tuple[int, bytes, int]  # (stream id, data, arrival ns)


def write_spool(directory: Path, records: list[Record], *, index: bool = True) -> Path:
    """A version-2 spool (and its index) holding records, as a holder writes them."""
    path = directory / "output.spool"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    index_fd = (
        os.open(directory / "output.idx", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if index else -1
    )
    try:
        writer = fmt.SpoolWriter(fd, 1 << 40, index_fd)
        for stream, data, time_ns in records:
            writer.append(stream, data, time_ns)
    finally:
        os.close(fd)
        if index_fd >= 0:
            os.close(index_fd)
    return path


def write_v1_spool(directory: Path, records: list[tuple[int, bytes]]) -> Path:
    """A spool as the first release wrote it: no magic, 5-byte headers, no times, no index."""
    path = directory / "output.spool"
    path.write_bytes(b"".join(fmt.HEADER_V1.pack(stream, len(data)) + data for stream, data in records))
    return path


def opened(path: Path) -> OutputSpool:
    spool = OutputSpool(path)
    spool.recover()
    spool.finish()
    return spool


async def read(
    spool: OutputSpool,
    window: OutputWindow | None = None,
    selection: StreamSelection = StreamSelection.BOTH,
    offset: int = 0,
) -> list[OutputEvent]:
    window = window or OutputWindow()
    return [e async for e in spool.follow(selection, offset, follow=False, window=window)]


def chunks(events: list[OutputEvent]) -> list[OutputChunk]:
    return [e for e in events if isinstance(e, OutputChunk)]


def joined(events: list[OutputEvent]) -> bytes:
    return b"".join(c.data for c in chunks(events))


def view_of(records: list[Record], selection: StreamSelection) -> bytes:
    return b"".join(data for stream, data, _ in records if selection.includes(Stream(stream)))


def last_lines(data: bytes, n: int) -> bytes:
    """`tail -n n` of data."""
    if n == 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


def assert_contiguous(events: list[OutputEvent], first: int) -> None:
    """Chunk offsets are byte offsets of the view: each chunk starts where the last ended."""
    at = first
    for chunk in chunks(events):
        assert chunk.offset == at
        at += len(chunk.data)


def random_records(rng: random.Random, count: int, *, start: int = T0) -> Iterator[Record]:
    now = start
    for _ in range(count):
        now += rng.choice((0, 1, 1000, SECOND // 3, 2 * SECOND))
        words = [
            rng.choice((b"a", b"bc", b"\n", b"def", b"\n\n", b"x" * rng.randrange(0, 300))) for _ in range(8)
        ]
        yield rng.choice((fmt.STDOUT, fmt.STDERR)), b"".join(words), now


# Tail ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_tail_of_random_output_is_its_last_lines(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small index steps: many entries, so a tail steps back through several of them.
    monkeypatch.setattr(fmt, "INDEX_EVERY_BYTES", 512)
    rng = random.Random(seed)
    records = list(random_records(rng, 400))
    spool = opened(write_spool(tmp_path, records))
    assert len(_spoolread.SpoolIndex(tmp_path / "output.idx", spool._committed)) > 50
    for selection in StreamSelection:
        view = view_of(records, selection)
        for n in (0, 1, 2, 7, 50, 300, 100_000, rng.randrange(0, 2000)):
            events = await read(spool, OutputWindow(tail_lines=n), selection)
            expected = last_lines(view, n)
            assert joined(events) == expected, (selection, n)
            assert_contiguous(events, len(view) - len(expected))


async def test_tail_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    spool = opened(write_spool(tmp_path, [(fmt.STDOUT, b"one\ntwo\nthree", T0)]))
    assert joined(await read(spool, OutputWindow(tail_lines=1))) == b"three"
    assert joined(await read(spool, OutputWindow(tail_lines=2))) == b"two\nthree"


async def test_tail_without_an_index_gives_the_same_answer(tmp_path: Path) -> None:
    rng = random.Random(7)
    records = list(random_records(rng, 200))
    spool = opened(write_spool(tmp_path, records, index=False))
    for n in (1, 10, 100):
        assert joined(await read(spool, OutputWindow(tail_lines=n))) == last_lines(
            view_of(records, StreamSelection.BOTH), n
        )


async def test_an_index_from_another_format_is_ignored(tmp_path: Path) -> None:
    records = [(fmt.STDOUT, b"%d\n" % i, T0 + i * SECOND) for i in range(100)]
    spool = opened(write_spool(tmp_path, records))
    # A 16-byte-entry index of a development build, without the magic: no seek, same answer.
    (tmp_path / "output.idx").write_bytes(b"\x00" * 16 * 10)
    assert joined(await read(spool, OutputWindow(tail_lines=3))) == b"97\n98\n99\n"
    assert joined(await read(spool, OutputWindow(since_ns=T0 + 98 * SECOND))) == b"98\n99\n"


async def test_a_tail_of_a_large_spool_reads_only_its_end(tmp_path: Path) -> None:
    line = b"y" * 99 + b"\n"
    records = [(fmt.STDOUT, line * 2000, T0 + i * SECOND) for i in range(100)]  # 20 MB
    spool = opened(write_spool(tmp_path, records))
    read_bytes = 0
    real = os.pread

    def counting(fd: int, n: int, at: int) -> bytes:
        nonlocal read_bytes
        data = real(fd, n, at)
        read_bytes += len(data)
        return data

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "pread", counting)
        events = await read(spool, OutputWindow(tail_lines=100))
    assert joined(events) == line * 100
    assert read_bytes < 3 * fmt.INDEX_EVERY_BYTES


# Since and until ----------------------------------------------------------------------------------


def timed_records() -> list[Record]:
    # One line per record, one record every half second, stdout and stderr alternating.
    return [
        (fmt.STDOUT if i % 2 == 0 else fmt.STDERR, b"line %d\n" % i, T0 + i * SECOND // 2) for i in range(40)
    ]


async def test_since_starts_at_the_first_record_that_arrived_at_or_after_it(tmp_path: Path) -> None:
    records = timed_records()
    spool = opened(write_spool(tmp_path, records))
    for selection in StreamSelection:
        view = view_of(records, selection)
        for k in (0, 1, 9, 10, 39):
            since = records[k][2]
            kept = [r for r in records if r[2] >= since]
            events = await read(spool, OutputWindow(since_ns=since), selection)
            expected = view_of(kept, selection)
            assert joined(events) == expected
            assert_contiguous(events, len(view) - len(expected))
    # Between two records: the later one; after the last: nothing.
    assert joined(await read(spool, OutputWindow(since_ns=records[3][2] + 1))).startswith(b"line 4\n")
    assert joined(await read(spool, OutputWindow(since_ns=records[-1][2] + 1))) == b""


async def test_until_stops_after_the_last_record_that_arrived_by_then(tmp_path: Path) -> None:
    records = timed_records()
    spool = opened(write_spool(tmp_path, records))
    events = await read(spool, OutputWindow(until_ns=records[5][2]))
    assert joined(events) == b"".join(b"line %d\n" % i for i in range(6))
    assert events[-1] == OutputWindowEnd(len(joined(events)))
    both = await read(spool, OutputWindow(since_ns=records[2][2], until_ns=records[4][2] + 1))
    assert joined(both) == b"line 2\nline 3\nline 4\n"
    # An until after the end is no cut: the output simply ends.
    assert not any(
        isinstance(e, OutputWindowEnd) for e in await read(spool, OutputWindow(until_ns=T0 + 100 * SECOND))
    )


async def test_tail_with_until_is_the_last_lines_before_until(tmp_path: Path) -> None:
    records = timed_records()
    spool = opened(write_spool(tmp_path, records))
    events = await read(spool, OutputWindow(tail_lines=2, until_ns=records[9][2]))
    assert joined(events) == b"line 8\nline 9\n"


async def test_tail_and_since_together_take_the_later_start(tmp_path: Path) -> None:
    records = timed_records()
    spool = opened(write_spool(tmp_path, records))
    assert (
        joined(await read(spool, OutputWindow(tail_lines=2, since_ns=records[10][2])))
        == b"line 38\nline 39\n"
    )
    assert joined(await read(spool, OutputWindow(tail_lines=50, since_ns=records[37][2]))) == (
        b"line 37\nline 38\nline 39\n"
    )


async def test_offset_resumes_inside_a_window(tmp_path: Path) -> None:
    records = timed_records()
    spool = opened(write_spool(tmp_path, records))
    first = await read(spool, OutputWindow(since_ns=records[10][2]))
    middle = chunks(first)[3].offset + 2
    resumed = await read(spool, OutputWindow(since_ns=records[10][2]), offset=middle)
    assert joined(resumed) == joined(first)[middle - chunks(first)[0].offset :]
    assert_contiguous(resumed, middle)


async def test_offset_far_into_a_spool_seeks_through_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fmt, "INDEX_EVERY_BYTES", 256)
    rng = random.Random(3)
    records = list(random_records(rng, 300))
    spool = opened(write_spool(tmp_path, records))
    for selection in StreamSelection:
        view = view_of(records, selection)
        for offset in (0, 1, len(view) // 3, len(view) - 1, len(view)):
            events = await read(spool, selection=selection, offset=offset)
            assert joined(events) == view[offset:]
            assert_contiguous(events, offset)


# Byte limit and record times -----------------------------------------------------------------------


async def test_limit_bytes_cuts_the_window(tmp_path: Path) -> None:
    records = timed_records()
    spool = opened(write_spool(tmp_path, records))
    events = await read(spool, OutputWindow(limit_bytes=10))
    assert joined(events) == b"line 0\nlin"
    assert events[-1] == OutputWindowEnd(10)
    tail = await read(spool, OutputWindow(tail_lines=2, limit_bytes=9))
    assert joined(tail) == b"line 38\nl"


async def test_chunks_carry_the_arrival_time_of_their_first_byte(tmp_path: Path) -> None:
    records = [(fmt.STDOUT, b"a\n", T0), (fmt.STDOUT, b"b\n", T0 + 5), (fmt.STDOUT, b"c\n", T0 + SECOND)]
    spool = opened(write_spool(tmp_path, records))
    exact = chunks(await read(spool, OutputWindow(exact_times=True)))
    assert [(c.data, c.time_ns) for c in exact] == [(data, t) for _, data, t in records]
    merged = chunks(await read(spool))
    assert [(c.data, c.time_ns) for c in merged] == [(b"a\nb\nc\n", T0)]
    tail = chunks(await read(spool, OutputWindow(tail_lines=1, exact_times=True)))
    assert [(c.data, c.time_ns) for c in tail] == [(b"c\n", T0 + SECOND)]


# The first release's spools ------------------------------------------------------------------------


async def test_a_version_1_spool_has_tails_and_no_times(tmp_path: Path) -> None:
    spool = opened(write_v1_spool(tmp_path, [(1, b"a\nb\n"), (2, b"err\n"), (1, b"c\n")]))
    events = await read(spool, OutputWindow(tail_lines=2))
    assert joined(events) == b"err\nc\n"
    assert {c.time_ns for c in chunks(events)} == {None}
    with pytest.raises(OutputUntimedError, match="without arrival times"):
        spool.check_window(OutputWindow(since_ns=T0))
    with pytest.raises(OutputUntimedError):
        await read(spool, OutputWindow(until_ns=T0))


# Following ---------------------------------------------------------------------------------------


async def test_follow_from_a_tail_then_live(tmp_path: Path) -> None:
    path = tmp_path / "output.spool"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    index_fd = os.open(tmp_path / "output.idx", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    writer = fmt.SpoolWriter(fd, 1 << 30, index_fd)
    spool = OutputSpool(path)

    def append(data: bytes, time_ns: int) -> None:
        writer.append(fmt.STDOUT, data, time_ns)
        spool.update(SpoolProgress(writer.committed, writer.stdout_bytes, writer.stderr_bytes))

    try:
        for i in range(10):
            append(b"old %d\n" % i, T0 + i * SECOND)
        events = spool.follow(StreamSelection.BOTH, window=OutputWindow(tail_lines=2))
        first = await asyncio.wait_for(anext(events), 5)
        assert isinstance(first, OutputChunk)
        assert (first.offset, first.data) == (len(b"old 0\n") * 8, b"old 8\nold 9\n")
        append(b"new\n", T0 + 20 * SECOND)
        live = await asyncio.wait_for(anext(events), 5)
        assert isinstance(live, OutputChunk)
        assert (live.offset, live.data, live.time_ns) == (first.offset + 12, b"new\n", T0 + 20 * SECOND)
        spool.finish()
        assert [e async for e in events] == []
    finally:
        os.close(fd)
        os.close(index_fd)


async def test_follow_with_until_ends_when_that_time_has_passed(tmp_path: Path) -> None:
    import time

    spool = OutputSpool(write_spool(tmp_path, [(fmt.STDOUT, b"early\n", time.time_ns())]))
    spool.recover()  # running: never finished
    until = time.time_ns() + SECOND // 5
    t0 = time.monotonic()
    events = await asyncio.wait_for(
        _all(spool.follow(StreamSelection.BOTH, window=OutputWindow(until_ns=until))), 5
    )
    assert joined(events) == b"early\n"
    assert isinstance(events[-1], OutputWindowEnd)
    assert time.monotonic() - t0 >= 0.2


async def _all(events: object) -> list[OutputEvent]:
    return [e async for e in events]  # type: ignore[attr-defined]


async def test_a_truncation_mark_inside_the_window_is_delivered(tmp_path: Path) -> None:
    path = tmp_path / "output.spool"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        writer = fmt.SpoolWriter(fd, 10)
        writer.append(fmt.STDOUT, b"12345\n", T0)
        writer.append(fmt.STDOUT, b"67890abc\n", T0 + SECOND)
    finally:
        os.close(fd)
    spool = opened(path)
    events = await read(spool, OutputWindow(tail_lines=1))
    assert joined(events) == b"6789"
    assert isinstance(events[-1], OutputTruncated)


async def test_a_tail_of_one_stream_skips_the_other_streams_output(tmp_path: Path) -> None:
    records: list[Record] = [(fmt.STDOUT, b"out %d\n" % i, T0 + i) for i in range(3)]
    records += [(fmt.STDERR, b"e" * 99 + b"\n", T0 + SECOND * (10 + i)) for i in range(200)]  # 200 entries
    spool = opened(write_spool(tmp_path, records))
    read_bytes = 0
    real = os.pread

    def counting(fd: int, n: int, at: int) -> bytes:
        nonlocal read_bytes
        data = real(fd, n, at)
        read_bytes += len(data)
        return data

    assert joined(await read(spool, OutputWindow(tail_lines=2), StreamSelection.STDOUT)) == b"out 1\nout 2\n"
    end = spool._committed
    index = _spoolread.SpoolIndex(tmp_path / "output.idx", end)
    fd = os.open(tmp_path / "output.spool", os.O_RDONLY)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "pread", counting)
            found = _spoolread.tail(fd, fmt.HEADER, index, len(fmt.MAGIC), end, StreamSelection.STDOUT, 2)
    finally:
        os.close(fd)
        index.close()
    assert found.deliver == len(b"out 0\n")
    # The last segment and the stdout one: none of the 200 stderr records between them.
    assert read_bytes < 1000
