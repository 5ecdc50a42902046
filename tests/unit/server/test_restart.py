"""Jobs outlive the server: after kill -9 or SIGTERM of jw-server, the next one reattaches every job.

Real jw-server processes with strict isolation and cgroups (root), so the jobs' holders, exit files and
OOM accounting are the production ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from server_helpers import (
    Pki,
    ServerProcess,
    channel_credentials,
    collect,
    next_message,
    open_channel,
    output_of,
    spawn_server,
    start_job,
)

from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc
from jobworker.engine import records

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jobs with cgroups and the sandbox need root")

# Prints 0, 1, 2, ... one per line, for about a minute at most (the test stops it much earlier).
COUNTER = (
    "import sys, time\n"
    "for i in range(2_000_000):\n"
    "    sys.stdout.write(f'{i}\\n')\n"
    "    if i % 50 == 0:\n"
    "        sys.stdout.flush(); time.sleep(0.001)\n"
)
WAIT_FOR_TRIGGER = "while [ ! -e /trigger/go ]; do sleep 0.05; done; "
_OUTAGE_LIMIT_S = 30.0


@pytest.fixture
def setup(certs: Pki, tmp_path: Path) -> Iterator[tuple[Path, Path, tuple[str, ...]]]:
    """State dir, trigger dir and the jw-server flags shared by the servers of one test. Whatever a test
    leaves running is stopped at the end by a last server that stops its jobs on shutdown."""
    state, trigger = tmp_path / "state", tmp_path / "trigger"
    trigger.mkdir(mode=0o755)
    trigger.chmod(0o755)
    flags = (
        "--cgroups",
        "--cgroup-prefix", f"jwtest-restart-{uuid.uuid4().hex[:10]}",
        "--job-mount", f"{trigger}:/trigger:ro",
    )  # fmt: skip
    yield state, trigger, flags
    with contextlib.suppress(AssertionError):
        spawn_server(certs, state, *flags).terminate()


def _stub(channel: grpc.aio.Channel) -> pb_grpc.JobWorkerStub:
    return pb_grpc.JobWorkerStub(channel)


async def _status(server: ServerProcess, certs: Pki, job_id: str) -> pb.JobStatus:
    async with open_channel(server.port, channel_credentials(certs, "walt")) as channel:
        response = await _stub(channel).GetStatus(pb.GetStatusRequest(job_id=job_id), timeout=10)
        return response.job


def _wait_for_exit_files(state: Path, job_ids: list[str]) -> None:
    """The holders record the jobs' ends while no server runs (bounded wait on the files)."""
    deadline = time.monotonic() + _OUTAGE_LIMIT_S
    while not all((records.job_dir(state, j) / records.EXIT).exists() for j in job_ids):
        assert time.monotonic() < deadline, "the jobs did not end during the outage"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
async def test_jobs_survive_a_server_restart(
    certs: Pki, setup: tuple[Path, Path, tuple[str, ...]], how: str
) -> None:
    state, trigger, flags = setup
    first = spawn_server(certs, state, *flags, stop_jobs=False)
    try:
        async with open_channel(first.port, channel_credentials(certs, "walt")) as channel:
            stub = _stub(channel)
            counter = await start_job(stub, "python3", "-c", COUNTER)
            silent = await start_job(stub, "sleep", "600")
            seven = await start_job(stub, "sh", "-c", WAIT_FOR_TRIGGER + "exit 7")
            oom = await start_job(
                stub,
                "sh",
                "-c",
                WAIT_FOR_TRIGGER + "exec python3 -c 'b = bytearray(512 << 20)'",
                limits=pb.Limits(memory_bytes=64 << 20),
            )
            # The counter runs and its output flows before the server goes away.
            call = stub.StreamOutput(pb.StreamOutputRequest(job_id=counter.id, follow=True))
            assert (await next_message(call)).HasField("chunk")
            call.cancel()
    finally:
        if how == "kill -9":
            first.kill()
        else:
            assert first.terminate() == 0
    assert any(line.get("msg") == "jobs left running for the next server" for line in first.lines) == (
        how == "SIGTERM"
    )
    # During the outage: two jobs end, one of them by the OOM killer.
    (trigger / "go").touch()
    _wait_for_exit_files(state, [seven.id, oom.id])
    outage_ended = time.time()

    second = spawn_server(certs, state, *flags)
    try:
        reattached = second.wait_for_log("reattached jobs")
        assert (reattached["running"], reattached["ended"]) == (2, 2)
        got = {j.id: await _status(second, certs, j.id) for j in (counter, silent, seven, oom)}
        assert got[counter.id].state == pb.JOB_STATE_RUNNING
        assert got[silent.id].state == pb.JOB_STATE_RUNNING
        assert got[silent.id].pid == silent.pid
        assert (got[seven.id].state, got[seven.id].exit_code) == (pb.JOB_STATE_EXITED, 7)
        assert got[oom.id].state == pb.JOB_STATE_OOM_KILLED
        # The real end, from the holder: before the new server started, not when it looked.
        assert got[seven.id].ended_at.ToSeconds() <= outage_ended
        assert got[counter.id].stdout_bytes > 0

        async with open_channel(second.port, channel_credentials(certs, "walt")) as channel:
            stub = _stub(channel)
            stopped = await stub.Stop(pb.StopRequest(job_id=counter.id, grace_seconds=1), timeout=30)
            assert stopped.job.state == pb.JOB_STATE_STOPPED
            await stub.Stop(pb.StopRequest(job_id=silent.id, grace_seconds=1), timeout=30)
            messages, end = await collect(stub, counter.id, follow=True)
        assert end.job.state == pb.JOB_STATE_STOPPED
        text = output_of(messages).decode()
        numbers = [int(n) for n in text.splitlines()[:-1]]  # the last line may be cut by the stop
        # From byte 0, every number exactly once: nothing lost or repeated across the restart.
        assert numbers == list(range(len(numbers)))
        assert len(text.encode()) == end.job.stdout_bytes
    finally:
        assert second.terminate() == 0


async def test_a_job_whose_holder_died_is_lost_with_its_real_byte_counts(
    certs: Pki, setup: tuple[Path, Path, tuple[str, ...]]
) -> None:
    state, _trigger, flags = setup
    first = spawn_server(certs, state, *flags, stop_jobs=False)
    try:
        async with open_channel(first.port, channel_credentials(certs, "walt")) as channel:
            stub = _stub(channel)
            job = await start_job(stub, "sh", "-c", "echo hello; exec sleep 600")
            call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
            assert (await next_message(call)).chunk.data == b"hello\n"
            call.cancel()
    finally:
        first.kill()
    # The holder (the job's init's parent, in the host's PID namespace) dies too: the job is lost.
    holder = _parent_of(job.pid)
    os.kill(holder, 9)
    second = spawn_server(certs, state, *flags)
    try:
        status = await _status(second, certs, job.id)
        assert status.state == pb.JOB_STATE_LOST
        assert status.stdout_bytes == len(b"hello\n")
        # Nothing of the job is left: its cgroup was removed with its processes.
        assert await _gone(job.pid)
    finally:
        assert second.terminate() == 0


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


async def _gone(pid: int) -> bool:
    for _ in range(100):
        if not await asyncio.to_thread(os.path.exists, f"/proc/{pid}"):
            return True
        await asyncio.sleep(0.05)
    return False
