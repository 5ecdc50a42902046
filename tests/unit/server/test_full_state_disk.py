"""A full state disk at the server: health answers, the output streams and ends, Start is refused."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import (
    Clients,
    MakeServer,
    Pki,
    channel_credentials,
    collect,
    open_channel,
    output_of,
    rpc_error,
    spawn_server,
    start_job,
)
from tmpfs_helpers import small_tmpfs

from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc


@pytest.fixture
def small_state_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs where make_server puts its first server's state."""
    with small_tmpfs(tmp_path / "state0") as path:
        yield path


async def test_a_full_state_disk(small_state_disk: Path, make_server: MakeServer, clients: Clients) -> None:
    server = await make_server()
    stub = clients.stub(server.port, "walt")
    health = health_pb2_grpc.HealthStub(clients.channel(server.port, "rita"))
    slowest = 0.0

    async def probe() -> None:
        nonlocal slowest
        while True:
            before = time.monotonic()
            response = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            slowest = max(slowest, time.monotonic() - before)
            await asyncio.sleep(0.05)

    probing = asyncio.create_task(probe())
    try:
        job = await start_job(stub, "head", "-c", "100M", "/dev/zero")
        messages, end = await asyncio.wait_for(collect(stub, job.id, follow=True), 30)
        stored = len(output_of(messages))
        marks = [m.truncated for m in messages if m.HasField("truncated")]
        assert [(m.offset, m.reason) for m in marks] == [(stored, "state disk full")]
        assert end.reason == pb.STREAM_END_REASON_JOB_ENDED
        assert end.truncated
        assert end.job.exit_code == 0
        assert (end.job.stdout_bytes, end.job.truncation_reason) == (stored, "state disk full")
        assert end.job.output_dropped_bytes == (100 << 20) - stored
        error = await rpc_error(stub.Start(pb.StartRequest(command="true")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "state disk is full" in (error.details() or "")
    finally:
        probing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probing
    print(f"slowest health check: {slowest * 1000:.1f} ms")
    assert 0 < slowest < 1, slowest


async def _fill_and_read(port: int, certs: Pki) -> pb.StreamEnd:
    async with open_channel(port, channel_credentials(certs, "walt")) as channel:
        stub = pb_grpc.JobWorkerStub(channel)
        job = await start_job(stub, "head", "-c", "100M", "/dev/zero")
        _, end = await asyncio.wait_for(collect(stub, job.id, follow=True), 30)
        return end


async def _status(port: int, certs: Pki, job_id: str) -> pb.JobStatus:
    async with open_channel(port, channel_credentials(certs, "walt")) as channel:
        stub = pb_grpc.JobWorkerStub(channel)
        response = await stub.GetStatus(pb.GetStatusRequest(job_id=job_id), timeout=10)
        return response.job


def test_sigterm_and_restart_on_a_full_state_disk(small_state_disk: Path, certs: Pki) -> None:
    process = spawn_server(certs, small_state_disk)
    try:
        end = asyncio.run(_fill_and_read(process.port, certs))
        assert end.job.truncation_reason == "state disk full"
        assert process.terminate() == 0
    finally:
        process.kill()
    again = spawn_server(certs, small_state_disk)
    try:
        job = asyncio.run(_status(again.port, certs, end.job.id))
        assert job.state == pb.JOB_STATE_EXITED
        assert job.exit_code == 0
        assert (job.stdout_bytes, job.truncation_reason) == (end.job.stdout_bytes, "state disk full")
        assert again.terminate() == 0
    finally:
        again.kill()
