"""Disk faults: a full or failing state disk never hangs, crashes or lies; broken job directories never stop
start-up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import collect
from tmpfs_helpers import small_tmpfs

from jobworker.engine import (
    EngineConfig,
    Isolation,
    JobManager,
    JobSpec,
    JobState,
    OutputChunk,
    OutputTruncated,
    StorageFullError,
    Stream,
    StreamSelection,
    TruncationReason,
    _readbudget,
    _spoolfile,
    output,
    records,
)
from jobworker.engine.output import MAX_RECORD, OutputSpool
from jobworker.engine.spawn import SpoolProgress

IS_ROOT = os.geteuid() == 0
# A follower that spins without awaiting blocks the event loop: only a signal gets the test out.
_TEST_DEADLINE = 60


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (rather than hang) when the body takes longer, even if the event loop is wedged."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"the test did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def plain_config(state_dir: Path, **overrides: object) -> EngineConfig:
    return dataclasses.replace(
        EngineConfig(state_dir=state_dir, isolation=Isolation.NONE, namespaces=False, cgroups=False),
        **overrides,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs as the state directory."""
    with small_tmpfs(tmp_path / "state") as path:
        yield path


def fill(path: Path) -> None:
    """Take every free block of path's filesystem."""
    with (path / "ballast").open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


class LoopProbe:
    """Measures how late the event loop wakes a task that sleeps 20 ms, and asks for a status each time."""

    def __init__(self, mgr: JobManager, job_id: str) -> None:
        self.worst = 0.0
        self._mgr = mgr
        self._job_id = job_id
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            self._mgr.status(self._job_id)
            self.worst = max(self.worst, time.monotonic() - before - 0.02)

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.worst


async def first_chunk(mgr: JobManager, job_id: str) -> OutputChunk:
    events = mgr.follow(job_id)
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, OutputChunk):
                return event
    raise AssertionError("the job ended without output")


async def test_full_disk_is_reported_and_hangs_nothing(small_disk: Path) -> None:
    with deadline(_TEST_DEADLINE):
        mgr = JobManager(plain_config(small_disk, max_running_jobs=2))
        await mgr.open()
        try:
            quiet = await mgr.start(JobSpec("sh", ("-c", "echo ready; exec sleep 60")))
            assert (await first_chunk(mgr, quiet.id)).data == b"ready\n"
            filler = await mgr.start(JobSpec("head", ("-c", "100M", "/dev/zero")))
            probe = LoopProbe(mgr, filler.id)
            # A follower from byte 0 while the disk fills: it gets every stored byte, then the mark.
            events = [e async for e in mgr.follow(filler.id)]
            final = await mgr.wait(filler.id)
            # The job itself was never held up: its output was drained and dropped.
            assert final.state is JobState.EXITED
            assert final.exit_code == 0
            stored = final.stdout_bytes
            assert 0 < stored < 2 << 20
            assert final.output_truncated
            assert final.truncation_reason is TruncationReason.DISK_FULL
            assert final.output_dropped_bytes == (100 << 20) - stored
            chunks = [e for e in events if isinstance(e, OutputChunk)]
            assert sum(len(c.data) for c in chunks) == stored
            assert set(b"".join(c.data for c in chunks)) == {0}
            assert events[-1] == OutputTruncated(stored, TruncationReason.DISK_FULL)
            # The other job's output is still served, fast, while the disk is full.
            before = time.monotonic()
            assert b"".join(c.data for c in await collect(mgr, quiet.id, follow=False)) == b"ready\n"
            assert time.monotonic() - before < 1
            # A new job is refused with the reason, and no job runs for it.
            with pytest.raises(StorageFullError, match="state disk is full"):
                await mgr.start(JobSpec("true"))
            assert [s.id for s in mgr.list(states=[JobState.RUNNING])] == [quiet.id]
            worst = await probe.stop()
            print(f"worst event loop delay while the disk filled: {worst * 1000:.1f} ms")
            assert worst < 1
            await mgr.stop(quiet.id, grace_seconds=1)
        finally:
            await mgr.close(grace_seconds=1)

        # Restarting on the full disk works, and the job's end was recorded in spite of it.
        again = JobManager(plain_config(small_disk))
        await again.open()
        try:
            reloaded = again.status(filler.id)
            assert reloaded.state is JobState.EXITED
            assert reloaded.exit_code == 0
            assert (reloaded.stdout_bytes, reloaded.output_truncated) == (stored, True)
            assert reloaded.truncation_reason is TruncationReason.DISK_FULL
            events = [e async for e in again.follow(filler.id)]
            assert sum(len(e.data) for e in events if isinstance(e, OutputChunk)) == stored
            assert events[-1] == OutputTruncated(stored, TruncationReason.DISK_FULL)
        finally:
            await again.close()


async def test_capacity_counts_jobs_whose_start_failed_on_a_full_disk(small_disk: Path) -> None:
    # Refused starts must not free slots: the running count comes from the job table.
    mgr = JobManager(plain_config(small_disk, max_running_jobs=2))
    await mgr.open()
    try:
        first = await mgr.start(JobSpec("sleep", ("60",)))
        await asyncio.to_thread(fill, small_disk)
        for _ in range(3):
            with pytest.raises(StorageFullError):
                await mgr.start(JobSpec("sleep", ("60",)))
        (small_disk / "ballast").unlink()
        await mgr.start(JobSpec("sleep", ("60",)))
        with pytest.raises(Exception, match="maximum of 2 jobs"):
            await mgr.start(JobSpec("sleep", ("60",)))
        assert len(mgr.list(states=[JobState.RUNNING])) == 2
        await mgr.stop(first.id, grace_seconds=1)
    finally:
        await mgr.close(grace_seconds=1)


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Writes past 64 KiB fail with EFBIG, as on a full disk (SIGXFSZ ignored)."""
    limit = 64 * 1024
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, previous[1]))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, previous_handler)


class HeldSpool:
    """A spool file written as a job's holder writes it, and read as the server reads it."""

    def __init__(self, path: Path, cap: int = 1 << 30) -> None:
        output.create(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.writer = _spoolfile.SpoolWriter(self._fd, cap)
        self.reader = OutputSpool(path)

    def append(self, stream: Stream, data: bytes) -> None:
        w = self.writer
        w.append(stream.value, data, time.time_ns())
        self.reader.update(
            SpoolProgress(w.committed, w.stdout_bytes, w.stderr_bytes, w.dropped_bytes, w.truncated)
        )

    def finish(self) -> None:
        os.close(self._fd)
        self.reader.finish()


_HEAD = len(_spoolfile.MAGIC)
_RECORD = _spoolfile.HEADER.size


async def test_a_torn_write_is_never_committed(tmp_path: Path, file_size_limit: int) -> None:
    held = HeldSpool(tmp_path / "spool")
    spool = held.reader
    with deadline(_TEST_DEADLINE):
        held.append(Stream.STDOUT, b"a" * 40000)
        held.append(Stream.STDERR, b"b" * 40000)  # only part of this record fits
        held.append(Stream.STDOUT, b"c" * 10)  # dropped, counted
        assert (spool.stdout_bytes, spool.stderr_bytes) == (40000, 0)
        assert spool.truncation_reason is TruncationReason.DISK_FULL
        assert spool.dropped_bytes == 40010
        # The torn record was cut off; the mark (a header and one byte) still fitted.
        assert (tmp_path / "spool").stat().st_size == _HEAD + _RECORD + 40000 + _RECORD + 1
        live = [e async for e in spool.follow(StreamSelection.BOTH, follow=False)]
        held.finish()
        done = [e async for e in spool.follow(StreamSelection.BOTH)]
    assert (
        live
        == done
        == [OutputChunk(Stream.STDOUT, 0, b"a" * 40000), OutputTruncated(40000, TruncationReason.DISK_FULL)]
    )
    reloaded = OutputSpool(tmp_path / "spool")
    reloaded.recover()
    assert (reloaded.stdout_bytes, reloaded.truncation_reason) == (40000, TruncationReason.DISK_FULL)


async def test_a_mark_that_does_not_fit_reaches_followers_from_memory(
    tmp_path: Path, file_size_limit: int
) -> None:
    held = HeldSpool(tmp_path / "spool")
    size = file_size_limit - _HEAD - _RECORD
    with deadline(_TEST_DEADLINE):
        held.append(Stream.STDOUT, b"a" * size)  # fills the file exactly
        follower = held.reader.follow(StreamSelection.STDOUT, 100)
        first = await anext(follower)
        held.append(Stream.STDOUT, b"more")
        second = await anext(follower)
        held.finish()
        rest = [e async for e in follower]
    assert first == OutputChunk(Stream.STDOUT, 100, b"a" * (size - 100))
    assert second == OutputTruncated(size, TruncationReason.DISK_FULL)
    assert rest == []
    assert (tmp_path / "spool").stat().st_size == file_size_limit


def write_record(directory: Path, text: str) -> None:
    directory.mkdir(parents=True)
    (directory / records.RECORD).write_text(text)
    (directory / records.SPOOL).write_bytes(b"")


async def test_broken_job_directories_are_skipped_and_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = plain_config(tmp_path)
    first = JobManager(config)
    await first.open()
    good = await first.start(JobSpec("sh", ("-c", "echo kept")))
    await first.wait(good.id)
    lost_spool = await first.start(JobSpec("true"))
    await first.wait(lost_spool.id)
    await first.close()
    jobs = tmp_path / "jobs"
    (jobs / lost_spool.id / records.SPOOL).unlink()
    valid = json.loads((jobs / good.id / records.RECORD).read_text())
    broken = {
        "garbage": "{not json",
        "not an object": "[1, 2]",
        "wrong version": json.dumps({**valid, "version": 99}),
        "another job's id": json.dumps({**valid}),
        "bad type": json.dumps({**valid, "id": "bad-type", "started_at": "yesterday"}),
    }
    for name, text in broken.items():
        write_record(jobs / name.replace(" ", "-").replace("'", ""), text)
    (jobs / "empty").mkdir()

    with caplog.at_level(logging.WARNING, logger="jobworker.engine"):
        second = JobManager(config)
        await second.open()
        assert [s.id for s in second.list()] == [good.id]
        assert b"".join(c.data for c in await collect(second, good.id)) == b"kept\n"
        await second.close()
    skipped = {r.path for r in caplog.records if r.getMessage() == "skipping unreadable job directory"}
    assert len(skipped) == len(broken) + 2
    assert [p.name for p in jobs.iterdir()] == [good.id]


@pytest.mark.parametrize("isolation", [Isolation.NONE, Isolation.STRICT])
async def test_a_full_disk_at_start_up_does_not_stop_the_server(
    small_disk: Path, isolation: Isolation
) -> None:
    # Strict isolation keeps its seccomp program in the state dir: an unchanged one must not be rewritten.
    config = plain_config(small_disk, isolation=isolation, namespaces=None)
    first = JobManager(config)
    await first.open()
    status = await first.start(JobSpec("sh", ("-c", "echo out")))
    final = await first.wait(status.id)
    await first.close()
    # As if the server had died while the job ran: a running record, and no room to rewrite it.
    directory = records.job_dir(small_disk, status.id)
    records.save(directory, dataclasses.replace(final, state=JobState.RUNNING, ended_at=None))
    # ... and its holder died before it could write the exit file.
    (directory / records.EXIT).unlink()
    for reserve in directory.glob("*.reserve"):
        reserve.unlink()
    await asyncio.to_thread(fill, small_disk)

    second = JobManager(config)
    await second.open()
    try:
        reloaded = second.status(status.id)
        assert reloaded.state is JobState.LOST
        assert reloaded.stdout_bytes == 4  # what the spool holds
        with pytest.raises(StorageFullError):
            await second.start(JobSpec("true"))
    finally:
        await second.close()


async def test_a_follower_that_skips_the_other_stream_lets_the_loop_run(tmp_path: Path) -> None:
    held = HeldSpool(tmp_path / "spool")
    spool = held.reader
    for _ in range(64):
        held.append(Stream.STDOUT, b"x" * MAX_RECORD)
    held.append(Stream.STDERR, b"end")
    held.finish()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    events = [e async for e in spool.follow(StreamSelection.STDERR)]
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    assert events == [OutputChunk(Stream.STDERR, 0, b"end")]
    # A block is at most a large read (a few records of the other stream): the loop ran between them.
    assert ticks >= 64 * MAX_RECORD // _readbudget.LARGE_BLOCK // 2
