"""Large chunks for followers that are behind, within one process-wide budget of bytes in flight."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from jobworker.engine import _readbudget
from jobworker.engine import _spoolfile as fmt
from jobworker.engine.job import OutputChunk, OutputEvent, OutputWindow, Stream, StreamSelection
from jobworker.engine.output import OutputSpool

RECORD = 64 * 1024
RECORDS = 40  # 2.5 MiB: several large chunks' worth


def spool_of(directory: Path, records: list[tuple[int, bytes]]) -> OutputSpool:
    """A complete spool holding records, written with the holder's writer."""
    path = directory / "output.spool"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        writer = fmt.SpoolWriter(fd, 1 << 40)
        for i, (stream, data) in enumerate(records):
            writer.append(stream, data, 1_000 + i)
    finally:
        os.close(fd)
    spool = OutputSpool(path)
    spool.recover()
    spool.finish()
    return spool


def numbered(count: int, size: int = RECORD) -> list[tuple[int, bytes]]:
    """stdout records whose bytes say which record they are, so a lost or repeated piece shows."""
    return [(fmt.STDOUT, bytes([i % 251]) * size) for i in range(count)]


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> _readbudget.ReadBudget:
    fresh = _readbudget.ReadBudget()
    monkeypatch.setattr(_readbudget, "READS", fresh)
    return fresh


async def chunks_of(events: AsyncGenerator[OutputEvent, None]) -> list[OutputChunk]:
    return [e async for e in events if isinstance(e, OutputChunk)]


def assert_contiguous(chunks: list[OutputChunk], start: int = 0) -> None:
    at = start
    for chunk in chunks:
        assert chunk.offset == at
        at += len(chunk.data)


async def test_a_follower_behind_gets_large_chunks_and_every_byte(
    tmp_path: Path, budget: _readbudget.ReadBudget
) -> None:
    records = numbered(RECORDS)
    spool = spool_of(tmp_path, records)
    chunks = await chunks_of(spool.follow(StreamSelection.BOTH))
    assert b"".join(c.data for c in chunks) == b"".join(d for _, d in records)
    assert_contiguous(chunks)
    assert max(len(c.data) for c in chunks) == _readbudget.LARGE_CHUNK
    assert len(chunks) < RECORDS // 4
    assert budget.used == 0


async def test_with_the_budget_spent_chunks_stay_small(
    tmp_path: Path, budget: _readbudget.ReadBudget
) -> None:
    records = numbered(RECORDS)
    spool = spool_of(tmp_path, records)
    budget.limit = 0
    chunks = await chunks_of(spool.follow(StreamSelection.BOTH))
    assert b"".join(c.data for c in chunks) == b"".join(d for _, d in records)
    assert_contiguous(chunks)
    assert max(len(c.data) for c in chunks) <= _readbudget.SMALL_CHUNK


async def test_records_larger_than_a_small_block_are_still_whole(
    tmp_path: Path, budget: _readbudget.ReadBudget
) -> None:
    # The holder writes records of up to MAX_RECORD; a follower without a grant reads them on their own.
    records = numbered(6, fmt.MAX_RECORD)
    spool = spool_of(tmp_path, records)
    budget.limit = 0
    chunks = await chunks_of(spool.follow(StreamSelection.BOTH))
    assert b"".join(c.data for c in chunks) == b"".join(d for _, d in records)
    assert max(len(c.data) for c in chunks) <= _readbudget.SMALL_CHUNK


async def test_many_followers_behind_share_the_budget(tmp_path: Path, budget: _readbudget.ReadBudget) -> None:
    records = numbered(RECORDS)
    spool = spool_of(tmp_path, records)
    followers = [spool.follow(StreamSelection.BOTH) for _ in range(30)]
    async with contextlib.AsyncExitStack() as stack:
        for follower in followers:
            stack.push_async_callback(follower.aclose)
        # Each holds its first chunk (its consumer has not asked for the next): at most the budget's worth
        # are large, and the rest are as small as every chunk used to be.
        first = [await anext(f) for f in followers]
        sizes = [len(e.data) for e in first if isinstance(e, OutputChunk)]
        large = [s for s in sizes if s > _readbudget.SMALL_CHUNK]
        assert len(large) == budget.limit // _readbudget.LARGE_BLOCK
        assert len(sizes) == len(followers)
        assert all(s <= _readbudget.SMALL_CHUNK for s in sizes if s not in large)
        assert budget.used <= budget.limit
        rest = [await chunks_of(f) for f in followers]
    expected = b"".join(d for _, d in records)
    for head, tail in zip(first, rest, strict=True):
        assert isinstance(head, OutputChunk)
        assert head.data + b"".join(c.data for c in tail) == expected
        assert_contiguous([head, *tail])
    assert budget.used == 0


async def test_an_abandoned_follower_gives_its_grant_back(
    tmp_path: Path, budget: _readbudget.ReadBudget
) -> None:
    spool = spool_of(tmp_path, numbered(RECORDS))
    follower = spool.follow(StreamSelection.BOTH)
    event = await anext(follower)
    assert isinstance(event, OutputChunk)
    assert len(event.data) == _readbudget.LARGE_CHUNK
    assert budget.used == _readbudget.LARGE_BLOCK
    await follower.aclose()
    assert budget.used == 0


async def test_offsets_and_limits_hold_with_large_chunks(
    tmp_path: Path, budget: _readbudget.ReadBudget
) -> None:
    records = [*numbered(20), (fmt.STDERR, b"e" * 1000), *numbered(20)]
    spool = spool_of(tmp_path, records)
    stdout = b"".join(d for s, d in records if s == fmt.STDOUT)
    start, limit = 100_000, 1_500_000
    window = OutputWindow(limit_bytes=limit)
    chunks = await chunks_of(spool.follow(StreamSelection.STDOUT, start, window=window))
    assert b"".join(c.data for c in chunks) == stdout[start : start + limit]
    assert_contiguous(chunks, start)
    assert {c.stream for c in chunks} == {Stream.STDOUT}
    assert budget.used == 0
