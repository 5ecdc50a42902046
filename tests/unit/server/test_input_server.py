"""WriteInput against a job that ends while its writer still writes: the end, never an internal error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from server_helpers import Connect, start_job

from jobworker.api import jobworker_pb2 as pb
from jobworker.server import JobWorkerServer


async def test_input_after_the_job_ended_is_failed_precondition(
    connect: Connect, server: JobWorkerServer
) -> None:
    """`echo hello | jw attach` where the job reads one line and ends before our end of file arrives."""
    stub = connect("walt")
    job = await start_job(stub, "/bin/sh", "-c", "read line; echo got:$line", stdin=True)

    async def requests() -> AsyncIterator[pb.WriteInputRequest]:
        yield pb.WriteInputRequest(job_id=job.id, data=b"hello\n")
        await server.manager.wait(job.id)
        for _ in range(500):  # bounded: 5 s for its holder to let go of the connection
            yield pb.WriteInputRequest(data=b"more\n")
            await asyncio.sleep(0.01)
        yield pb.WriteInputRequest(eof=True)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.WriteInput(requests())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == f"job {job.id} has ended"
