"""Output: binary safety, many followers, offsets, the cap, and bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import uuid
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import collect

from jobworker.engine import (
    EngineConfig,
    Isolation,
    JobManager,
    JobSpec,
    OutputChunk,
    OutputTruncated,
    Stream,
    StreamSelection,
)

# The job runs as another user in its own view of the host: the venv (under /root here) may be out of
# its reach, the system python3 on the job's PATH is not.
PY = "python3"
ALL_BYTES = bytes(range(256))


def data_of(chunks: list[OutputChunk], stream: Stream | None = None) -> bytes:
    return b"".join(c.data for c in chunks if stream is None or c.stream is stream)


def writer(code: str) -> JobSpec:
    return JobSpec(PY, ("-c", f"import sys, time\nw = sys.stdout.buffer\ne = sys.stderr.buffer\n{code}"))


async def test_all_256_byte_values_round_trip(manager: JobManager) -> None:
    status = await manager.start(writer("w.write(bytes(range(256)) * 4); e.write(bytes(range(255, -1, -1)))"))
    chunks = await collect(manager, status.id)
    assert data_of(chunks, Stream.STDOUT) == ALL_BYTES * 4
    assert data_of(chunks, Stream.STDERR) == ALL_BYTES[::-1]


class Gate:
    """A FIFO the job waits on between writes: the test lets it go on once it has seen the last write."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"gate-{uuid.uuid4().hex[:8]}"
        os.mkfifo(self.path)
        self.path.chmod(0o666)
        self._file: Any = None

    def code(self, body: str) -> str:
        """Job code with `go()` defined: it blocks until the test's next step()."""
        return f"g = open({str(self.path)!r})\ndef go(): g.readline()\n{body}"

    async def open(self) -> None:
        """Meet the job at the FIFO (it opens its end first thing)."""
        self._file = await asyncio.to_thread(open, self.path, "w")

    async def step(self) -> None:
        self._file.write("go\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def test_interleaving_of_stdout_and_stderr_is_preserved(manager: JobManager, shared_dir: Path) -> None:
    # The job waits for the test after each write, so each write reaches the engine before the next.
    gate = Gate(shared_dir)
    code = gate.code(
        "for i in range(5):\n    (w if i % 2 == 0 else e).write(b'%d' % i); w.flush(); e.flush(); go()"
    )
    status = await manager.start(writer(code))
    await gate.open()
    chunks: list[OutputChunk] = []
    try:
        async for event in manager.follow(status.id):
            assert isinstance(event, OutputChunk)
            chunks.append(event)
            await gate.step()
    finally:
        gate.close()
    assert [(c.stream, c.data) for c in chunks] == [
        (Stream.STDOUT, b"0"),
        (Stream.STDERR, b"1"),
        (Stream.STDOUT, b"2"),
        (Stream.STDERR, b"3"),
        (Stream.STDOUT, b"4"),
    ]
    assert [c.offset for c in chunks] == [0, 1, 2, 3, 4]


async def test_selection_and_offsets_count_the_selected_view(manager: JobManager, shared_dir: Path) -> None:
    gate = Gate(shared_dir)
    code = gate.code("w.write(b'aaa'); w.flush(); go(); e.write(b'BB'); e.flush(); go(); w.write(b'cc')")
    status = await manager.start(writer(code))
    await gate.open()
    try:
        seen = 0
        async for _event in manager.follow(status.id):
            seen += 1
            if seen <= 2:  # the job waits twice: after "aaa" and after "BB"
                await gate.step()
    finally:
        gate.close()
    await manager.wait(status.id)
    out = await collect(manager, status.id, StreamSelection.STDOUT)
    assert data_of(out) == b"aaacc"
    assert [(c.offset, c.data) for c in out] == [(0, b"aaacc")]
    err = await collect(manager, status.id, StreamSelection.STDERR)
    assert [(c.offset, c.data) for c in err] == [(0, b"BB")]
    both = await collect(manager, status.id, StreamSelection.BOTH, offset=4)
    assert [(c.stream, c.offset, c.data) for c in both] == [
        (Stream.STDERR, 4, b"B"),
        (Stream.STDOUT, 5, b"cc"),
    ]
    assert data_of(await collect(manager, status.id, StreamSelection.STDOUT, offset=2)) == b"acc"
    assert await collect(manager, status.id, offset=100) == []


async def test_resume_from_offset_while_following(manager: JobManager) -> None:
    status = await manager.start(
        writer("for i in range(20):\n    w.write(b'%02d' % i); w.flush(); time.sleep(0.01)")
    )
    first: list[bytes] = []
    async for event in manager.follow(status.id):
        assert isinstance(event, OutputChunk)
        first.append(event.data)
        if sum(map(len, first)) >= 10:
            break
    got = b"".join(first)
    rest = data_of(await collect(manager, status.id, offset=len(got)))
    assert got + rest == b"".join(b"%02d" % i for i in range(20))


async def test_follow_false_returns_what_exists(manager: JobManager) -> None:
    status = await manager.start(JobSpec("sh", ("-c", "echo first; exec sleep 1000")))
    # A following reader proves the first line was stored before the snapshot read.
    async for event in manager.follow(status.id):
        assert isinstance(event, OutputChunk)
        if event.data == b"first\n":
            break
    snapshot = await asyncio.wait_for(collect(manager, status.id, follow=False), 5)
    assert data_of(snapshot) == b"first\n"
    await manager.stop(status.id, grace_seconds=5)


async def test_hundred_concurrent_followers_get_identical_output(manager: JobManager) -> None:
    # 4 MiB of varied bytes, written in bursts while followers attach at different moments.
    code = (
        "import hashlib\n"
        "for i in range(64):\n"
        "    w.write(hashlib.sha512(b'%d' % i).digest() * 1024); w.flush()\n"
    )
    status = await manager.start(writer(code))
    expected = b"".join(hashlib.sha512(b"%d" % i).digest() * 1024 for i in range(64))

    async def follower() -> bytes:
        return data_of(await collect(manager, status.id))

    results = await asyncio.gather(*(follower() for _ in range(100)))
    assert all(r == expected for r in results)
    late = data_of(await collect(manager, status.id))
    assert late == expected


async def test_output_cap_truncates_and_job_keeps_running(tmp_path: Path) -> None:
    mgr = JobManager(
        EngineConfig(
            state_dir=tmp_path,
            isolation=Isolation.NONE,
            namespaces=False,
            cgroups=False,
            output_cap_bytes=1000,
        )
    )
    await mgr.open()
    status = await mgr.start(writer("w.write(b'x' * 5000); w.flush(); e.write(b'after cap'); sys.exit(7)"))
    final = await mgr.wait(status.id)
    assert final.exit_code == 7  # the job ran to its end despite the cap
    assert final.output_truncated
    assert final.stdout_bytes == 1000
    assert final.stderr_bytes == 0
    events = [e async for e in mgr.follow(status.id)]
    assert isinstance(events[-1], OutputTruncated)
    assert events[-1].offset == 1000
    assert sum(len(e.data) for e in events if isinstance(e, OutputChunk)) == 1000
    await mgr.close()


async def test_slow_reader_never_blocks_the_job(manager: JobManager) -> None:
    status = await manager.start(JobSpec("head", ("-c", str(32 << 20), "/dev/zero")))
    reader = manager.follow(status.id)
    first = await anext(reader)  # a follower that reads once and then stalls
    assert isinstance(first, OutputChunk)
    final = await asyncio.wait_for(manager.wait(status.id), 30)
    assert final.stdout_bytes == 32 << 20
    await reader.aclose()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_one_gib_of_output_keeps_memory_flat(plain_manager: JobManager) -> None:
    before = _rss_kib()
    status = await plain_manager.start(JobSpec("head", ("-c", str(1 << 30), "/dev/zero")))
    # One follower reads everything while it is produced.
    total = 0
    async for event in plain_manager.follow(status.id):
        if isinstance(event, OutputChunk):
            total += len(event.data)
    final = await plain_manager.wait(status.id)
    growth_mib = (_rss_kib() - before) / 1024
    assert total == final.stdout_bytes == 1 << 30
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"1 GiB output: RSS growth {growth_mib:.1f} MiB, peak RSS {peak_mib:.1f} MiB")
    assert growth_mib < 64
