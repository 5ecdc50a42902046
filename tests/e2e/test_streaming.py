"""Output streaming under load: many followers, late followers, followers that die mid-stream.

The producer job writes deterministic binary blocks (every byte value occurs) and holds back the
rest of its output until the test creates a "go" file inside the container, so the test knows that
its followers are attached while the job is still writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from jobworker.client import (
    AsyncClient,
    JobState,
    OutputChunk,
    OutputStream,
    StreamEnd,
    StreamEndReason,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

FOLLOWERS = 50
BLOCK_DIGESTS = 2048  # one block: a sha256 digest repeated, 64 KiB
BLOCKS = 96  # 6 MiB in all
ATTACH_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 120.0

# argv: GO_FILE BLOCKS BLOCKS_BEFORE_GO DIGESTS_PER_BLOCK
PRODUCER = r"""
import hashlib, os, sys, time
out = sys.stdout.buffer
go, blocks, early, digests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def block(i):
    return hashlib.sha256(i.to_bytes(8, "big")).digest() * digests
for i in range(early):
    out.write(block(i))
out.flush()
deadline = time.monotonic() + 120
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.01)
for i in range(early, blocks):
    out.write(block(i))
out.flush()
"""

# Endless output at a modest pace (about 400 KB/s): a stream that is always mid-way.
TRICKLE = r"""
import sys, time
while True:
    sys.stdout.write("x" * 4000 + "\n")
    sys.stdout.flush()
    time.sleep(0.01)
"""

KILLED_CLIENTS = 6
# jw-server's fds and threads may settle a little above the baseline (grpc pools); leaks grow
# with every killed client, which these bounds catch.
FD_SLACK = 3
TASK_SLACK = 2


def _producer_args(go_file: str, early_blocks: int) -> list[str]:
    return ["-c", PRODUCER, go_file, str(BLOCKS), str(early_blocks), str(BLOCK_DIGESTS)]


def _expected(blocks: int) -> bytes:
    return b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() * BLOCK_DIGESTS for i in range(blocks))


@dataclass
class Received:
    """What one follower got: a running digest, the byte count and the end event."""

    digest: hashlib._Hash
    size: int = 0
    end: StreamEnd | None = None


async def _follow(client: AsyncClient, job_id: str, reached: asyncio.Event, threshold: int = 1) -> Received:
    """Follow the job's stdout to its end; set `reached` once `threshold` bytes have arrived."""
    received = Received(hashlib.sha256())
    async for event in client.stream(job_id, streams="stdout"):
        if isinstance(event, OutputChunk):
            assert event.stream is OutputStream.STDOUT
            assert event.offset == received.size, "chunks must be contiguous"
            received.digest.update(event.data)
            received.size += len(event.data)
            if received.size >= threshold:
                reached.set()
        elif isinstance(event, StreamEnd):
            received.end = event
            break
    return received


async def _go(server: JobworkerServer, go_file: str) -> None:
    result = await asyncio.to_thread(server.exec, ["touch", go_file])
    assert result.exit_code == 0, result.stderr


def _assert_complete(received: Received, expected: bytes) -> None:
    assert received.size == len(expected)
    assert received.digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert received.end is not None
    assert received.end.reason is StreamEndReason.JOB_ENDED
    assert received.end.job is not None
    assert received.end.job.state is JobState.EXITED, received.end.job
    assert received.end.job.exit_code == 0


async def test_fifty_concurrent_followers_receive_identical_bytes(
    server: JobworkerServer, figure: Callable[[str], None]
) -> None:
    expected = _expected(BLOCKS)
    go_file = f"{server.exchange}/jw-e2e-go-{uuid.uuid4().hex}"
    identities = ("reader", "writer", "admin")
    async with contextlib.AsyncExitStack() as stack:
        writer = await stack.enter_async_context(server.async_client("writer"))
        job = await writer.start("python3", _producer_args(go_file, early_blocks=1))
        clients = [
            await stack.enter_async_context(server.async_client(identities[i % len(identities)]))
            for i in range(FOLLOWERS)
        ]
        attached = [asyncio.Event() for _ in clients]
        # On a failure the task group cancels the followers still running and waits for them.
        async with asyncio.TaskGroup() as group:
            followers = [
                group.create_task(_follow(client, job.id, event))
                for client, event in zip(clients, attached, strict=True)
            ]
            async with asyncio.timeout(ATTACH_TIMEOUT):
                await asyncio.gather(*(event.wait() for event in attached))
            started = time.monotonic()
            await _go(server, go_file)
            async with asyncio.timeout(TRANSFER_TIMEOUT):
                await asyncio.gather(*followers)
        took = time.monotonic() - started
    results = [task.result() for task in followers]
    for received in results:
        _assert_complete(received, expected)
    assert {r.digest.hexdigest() for r in results} == {hashlib.sha256(expected).hexdigest()}
    total_mib = FOLLOWERS * len(expected) / (1 << 20)
    figure(
        f"{FOLLOWERS} followers x {len(expected) / (1 << 20):.0f} MiB identical; "
        f"{total_mib:.0f} MiB delivered in {took:.2f}s ({total_mib / took:.0f} MiB/s)"
    )


async def test_late_follower_gets_everything_from_byte_0(server: JobworkerServer) -> None:
    expected = _expected(BLOCKS)
    early_blocks = BLOCKS // 2
    early_size = early_blocks * BLOCK_DIGESTS * 32
    go_file = f"{server.exchange}/jw-e2e-go-{uuid.uuid4().hex}"
    async with (
        server.async_client("writer") as writer,
        server.async_client("reader") as first_client,
        server.async_client("reader") as late_client,
    ):
        job = await writer.start("python3", _producer_args(go_file, early_blocks))
        first_has_half = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            first = group.create_task(_follow(first_client, job.id, first_has_half, early_size))
            # Once the first follower holds the whole first half, the late follower joins.
            async with asyncio.timeout(ATTACH_TIMEOUT):
                await first_has_half.wait()
            late = group.create_task(_follow(late_client, job.id, asyncio.Event()))
            await _go(server, go_file)
            async with asyncio.timeout(TRANSFER_TIMEOUT):
                await asyncio.gather(first, late)
        # And once the job is over, a new follower still replays it all.
        async with asyncio.timeout(TRANSFER_TIMEOUT):
            after_end = await _follow(late_client, job.id, asyncio.Event())
    for received in (first.result(), late.result(), after_end):
        _assert_complete(received, expected)


def _count(server: JobworkerServer, pid: int) -> tuple[int, int]:
    """Open fds and threads of process `pid` in the server container."""
    result = server.exec(["sh", "-c", f"ls /proc/{pid}/fd | wc -l; ls /proc/{pid}/task | wc -l"])
    assert result.exit_code == 0, result.stderr
    fds, tasks = (int(n) for n in result.stdout.split())
    return fds, tasks


def _wait_for_bytes(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first bytes `process` writes to its stdout, or fail after `timeout`."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"jw logs -f wrote nothing within {timeout:g}s", pytrace=False)
    data = os.read(process.stdout.fileno(), 1 << 16)
    if not data:
        assert process.stderr is not None
        pytest.fail(f"jw logs -f exited ({process.wait()}): {process.stderr.read()!r}", pytrace=False)
    return data


def test_killed_followers_leave_server_healthy(
    server: JobworkerServer, figure: Callable[[str], None]
) -> None:
    with server.client("writer") as writer:
        job = writer.start("python3", ["-c", TRICKLE])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        server.wait_for_output(job.id, b"x" * 4000)
        # Warm up what a stream allocates once (grpc threads, the job's spool) before the baseline.
        warm = server.jw("logs", job.id, identity="reader")
        assert warm.returncode == 0, warm.stderr
        pid = server.jw_server_pid()
        fds_before, tasks_before = _count(server, pid)

        processes = [server.jw_popen("logs", "-f", job.id, identity="reader") for _ in range(KILLED_CLIENTS)]
        for process in processes:
            assert _wait_for_bytes(process, timeout=30).startswith(b"x")
        fds_during, tasks_during = _count(server, pid)
        # Each follower holds at least its connection: the leak check below has something to catch.
        assert fds_during >= fds_before + KILLED_CLIENTS
        for process in processes:
            process.kill()
            process.wait(timeout=10)

        with server.client("reader") as reader:
            assert reader.health()
        alive = server.run_job("echo", ["alive"])
        assert alive.info.state is JobState.EXITED
        assert alive.stdout == b"alive\n"

        def settled() -> bool:
            fds, tasks = _count(server, pid)
            return fds <= fds_before + FD_SLACK and tasks <= tasks_before + TASK_SLACK

        server.wait_for(settled, timeout=20, what="jw-server's fds and threads to settle")
        fds_after, tasks_after = _count(server, pid)
        assert server.jw_server_pid() == pid, "jw-server restarted"
        with server.client("writer") as writer:
            assert writer.status(job.id).state is JobState.RUNNING
        figure(
            f"jw-server fds/threads before {fds_before}/{tasks_before}, with "
            f"{KILLED_CLIENTS} followers {fds_during}/{tasks_during}, after SIGKILL "
            f"{fds_after}/{tasks_after}"
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        with server.client("writer") as writer:
            writer.stop(job.id, grace_seconds=0)
    assert '"level": "error"' not in server.logs()
