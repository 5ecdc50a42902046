"""Deleting ended jobs (one, or pruned by time and owner) and signaling running ones."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from engine_helpers import collect

from jobworker.engine import (
    InvalidSpecError,
    JobManager,
    JobNotFoundError,
    JobNotRunningError,
    JobRunningError,
    JobSpec,
    JobState,
    OutputChunk,
    StreamSelection,
)


async def _ended(mgr: JobManager, script: str, owner: str = "alice") -> str:
    status = await mgr.start(JobSpec("sh", ("-c", script), owner=owner))
    await mgr.wait(status.id)
    return status.id


async def test_delete_removes_record_and_spool(plain_manager: JobManager) -> None:
    job_id = await _ended(plain_manager, "echo hi")
    directory = plain_manager.config.state_dir / "jobs" / job_id
    assert directory.exists()
    deleted = plain_manager.delete(job_id)
    assert (deleted.id, deleted.state) == (job_id, JobState.EXITED)
    with pytest.raises(JobNotFoundError):
        plain_manager.status(job_id)
    await plain_manager.close(grace_seconds=0)  # waits for the deletion in its thread
    assert not directory.exists()


async def test_a_follower_reading_when_its_job_is_deleted_reads_to_the_end(plain_manager: JobManager) -> None:
    job_id = await _ended(plain_manager, "head -c 300000 /dev/zero")
    follower = plain_manager.follow(job_id, StreamSelection.BOTH, 0, follow=False)
    first = await anext(follower)
    assert isinstance(first, OutputChunk)
    plain_manager.delete(job_id)
    await asyncio.sleep(0.2)  # the directory is gone by now
    rest = [e async for e in follower if isinstance(e, OutputChunk)]
    assert len(first.data) + sum(len(e.data) for e in rest) == 300000


async def test_delete_refuses_a_running_job(plain_manager: JobManager) -> None:
    status = await plain_manager.start(JobSpec("sleep", ("30",)))
    with pytest.raises(JobRunningError, match=status.id):
        plain_manager.delete(status.id)
    assert plain_manager.status(status.id).state is JobState.RUNNING


async def test_prune_by_time_and_owner(plain_manager: JobManager) -> None:
    old = await _ended(plain_manager, "true")
    bobs = await _ended(plain_manager, "true", owner="bob")
    await asyncio.sleep(0.05)
    cutoff = time.time()
    new = await _ended(plain_manager, "true")
    running = await plain_manager.start(JobSpec("sleep", ("30",), owner="alice"))
    assert [s.id for s in plain_manager.prune(cutoff, owner="alice")] == [old]
    assert {s.id for s in plain_manager.prune(time.time())} == {bobs, new}
    assert [s.id for s in plain_manager.list()] == [running.id]


async def test_signal_reaches_the_command_and_it_keeps_running(manager: JobManager) -> None:
    script = "trap 'echo got USR1' USR1; echo ready; while :; do sleep 0.05; done"
    status = await manager.start(JobSpec("sh", ("-c", script)))
    output = b""
    deadline = time.monotonic() + 20
    signaled = False
    while b"got USR1" not in output and time.monotonic() < deadline:
        if not signaled and b"ready" in output:
            manager.signal(status.id, signal.SIGUSR1)
            signaled = True
        await asyncio.sleep(0.05)
        output = b"".join(c.data for c in await collect(manager, status.id, follow=False))
    assert b"got USR1" in output
    # Only the command got it: the shell's `sleep` child would have died of it ("User defined signal 1").
    await asyncio.sleep(0.3)
    output = b"".join(c.data for c in await collect(manager, status.id, follow=False))
    assert b"User defined signal" not in output
    assert manager.status(status.id).state is JobState.RUNNING
    await manager.stop(status.id, 0)


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGSEGV, 0, 999])
async def test_signal_outside_the_set_is_refused(plain_manager: JobManager, sig: int) -> None:
    status = await plain_manager.start(JobSpec("sleep", ("30",)))
    with pytest.raises(InvalidSpecError, match="allowed: HUP, INT"):
        plain_manager.signal(status.id, sig)


async def test_signal_of_an_ended_job(plain_manager: JobManager) -> None:
    job_id = await _ended(plain_manager, "true")
    with pytest.raises(JobNotRunningError):
        plain_manager.signal(job_id, signal.SIGTERM)
