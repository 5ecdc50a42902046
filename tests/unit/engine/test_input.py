"""A job's stdin and terminal: input through the holder, end of file, flow control, the pty's size."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from engine_helpers import collect

from jobworker.engine import (
    InputUnavailableError,
    InvalidSpecError,
    JobInput,
    JobManager,
    JobNotRunningError,
    JobSpec,
    JobState,
)


def _text(chunks: list[object]) -> bytes:
    return b"".join(getattr(c, "data", b"") for c in chunks)


async def test_binary_input_reaches_the_job_whole_and_ends_with_eof(manager: JobManager) -> None:
    data = os.urandom(10 << 20)
    status = await manager.start(JobSpec("sh", ("-c", "sha256sum; echo done"), stdin=True))
    writer = await manager.open_input(status.id)
    await writer.write(data)
    await writer.end()
    final = await manager.wait(status.id)
    assert final.state is JobState.EXITED
    assert final.stdin
    assert (
        _text(await collect(manager, status.id)) == f"{hashlib.sha256(data).hexdigest()}  -\ndone\n".encode()
    )


async def test_a_job_without_stdin_reads_dev_null_and_refuses_input(manager: JobManager) -> None:
    status = await manager.start(JobSpec("sh", ("-c", "cat; exec sleep 30")))
    with pytest.raises(InputUnavailableError, match="not started with its stdin open"):
        await manager.open_input(status.id)
    await manager.stop(status.id, grace_seconds=0)


async def test_one_writer_at_a_time_and_a_detached_one_leaves_stdin_open(manager: JobManager) -> None:
    status = await manager.start(
        JobSpec("sh", ("-c", "read a; read b; cat >/dev/null; echo $a-$b"), stdin=True)
    )
    first = await manager.open_input(status.id)
    with pytest.raises(InputUnavailableError, match="another client"):
        await manager.open_input(status.id)
    await first.write(b"one\n")
    first.close()  # goes away without end of input: the job still waits for its second line
    second = None
    for _ in range(100):  # the holder notices the first writer's close at its next poll
        try:
            second = await manager.open_input(status.id)
            break
        except InputUnavailableError:
            await asyncio.sleep(0.01)
    assert second is not None
    await second.write(b"two\n")
    await second.end()
    await manager.wait(status.id)
    assert _text(await collect(manager, status.id)) == b"one-two\n"
    with pytest.raises(JobNotRunningError):
        await manager.open_input(status.id)


async def test_a_job_that_does_not_read_makes_the_writer_wait(manager: JobManager) -> None:
    """Flow control: the holder buffers one frame, so 64 MiB to a job that never reads cannot be sent."""
    status = await manager.start(JobSpec("sleep", ("30",), stdin=True))
    writer = await manager.open_input(status.id)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(writer.write(b"x" * (64 << 20)), 2)
    writer.close()
    await manager.stop(status.id, grace_seconds=0)


async def test_a_terminal_inside_the_job(manager: JobManager) -> None:
    script = "tty; stty size; read line; echo got:$line; stty size; exit 3"
    status = await manager.start(JobSpec("sh", ("-c", script), terminal=(33, 101)))
    assert status.tty
    writer = await manager.open_input(status.id)
    seen = b""
    events = manager.follow(status.id)
    async for event in events:  # the job started on a 33x101 terminal and waits for a line
        seen += getattr(event, "data", b"")
        if b"33 101" in seen:
            break
    await events.aclose()
    manager.resize_terminal(status.id, 40, 120)
    await writer.write(b"hello\r")
    final = await manager.wait(status.id)
    writer.close()
    assert (final.state, final.exit_code) == (JobState.EXITED, 3)
    chunks = await collect(manager, status.id)
    # A pty of the job's own devpts; everything it prints is stdout.
    assert {c.stream.name for c in chunks if hasattr(c, "stream")} == {"STDOUT"}
    lines = _text(chunks).decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/")
    assert "got:hello" in lines
    assert lines[-2] == "40 120"


async def test_a_terminal_size_out_of_range_is_refused(manager: JobManager) -> None:
    with pytest.raises(InvalidSpecError, match="terminal size"):
        await manager.start(JobSpec("true", terminal=(0, 80)))


async def test_writing_to_a_job_that_ended_is_job_not_running(manager: JobManager) -> None:
    """A job that ends before it read everything: the writer learns it ended, as a pipe's writer would."""
    status = await manager.start(JobSpec("sh", ("-c", "read line; echo got:$line"), stdin=True))
    writer = await manager.open_input(status.id)
    await writer.write(b"hello\n")
    await manager.wait(status.id)
    # The holder lets go of the connection just after it reports the end; until then writes are taken.
    refusal = await _write_until_refused(writer)
    assert str(refusal) == f"job {status.id} has ended"
    with pytest.raises(JobNotRunningError):
        await writer.end()  # end of input, too
    assert _text(await collect(manager, status.id)) == b"got:hello\n"


async def _write_until_refused(writer: JobInput) -> JobNotRunningError:
    """Write (bounded: 5 s) until the ended job's holder lets go; what the writer was told then."""
    for _ in range(500):
        try:
            await writer.write(b"more\n")
        except JobNotRunningError as exc:
            return exc
        await asyncio.sleep(0.01)
    raise AssertionError("writes to an ended job were still taken after 5 s")
