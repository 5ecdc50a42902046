"""Readers of a byte stream, timed: a jobworker follower, a bare grpc.aio stream, a pipe, docker logs."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from dataclasses import dataclass

import grpc.aio
from _harness import BenchError

from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc
from jobworker.client import AsyncClient, JobInfo, OutputChunk, StreamEnd


@dataclass(frozen=True)
class Followed:
    """What one reader got and when it finished (seconds since the shared start)."""

    nbytes: int
    seconds: float
    final: JobInfo | None = None


@dataclass
class Tally:
    """Bytes received so far by a group of readers, readable while they still run."""

    nbytes: int = 0


async def follow_job(client: AsyncClient, job_id: str, t0: float, tally: Tally | None = None) -> Followed:
    """Follow a job from byte 0 to its StreamEnd through the client library."""
    nbytes = 0
    final: JobInfo | None = None
    async for event in client.stream(job_id, offset=0, follow=True):
        if isinstance(event, OutputChunk):
            nbytes += len(event.data)
            if tally is not None:
                tally.nbytes += len(event.data)
        elif isinstance(event, StreamEnd):
            final = event.job
    return Followed(nbytes, time.perf_counter() - t0, final)


async def follow_bare(
    stub: pb_grpc.JobWorkerAsyncStub, size: int, t0: float, chunk: int | None = None
) -> Followed:
    """Read `size` bytes from the bare server with the generated stub (no client library).

    `chunk` is the server's message size (default: jw-server's own).
    """
    nbytes = 0
    request = f"{size}:{chunk}" if chunk else str(size)
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=request, follow=True))
    async for message in call:
        if message.HasField("chunk"):
            nbytes += len(message.chunk.data)
    return Followed(nbytes, time.perf_counter() - t0)


async def follow_stub(channel: grpc.aio.Channel, job_id: str, t0: float) -> Followed:
    """Follow a job of jw-server from byte 0 with the generated stub: the server's side, no client library."""
    nbytes = 0
    call = pb_grpc.JobWorkerStub(channel).StreamOutput(
        pb.StreamOutputRequest(job_id=job_id, streams=pb.STREAM_SELECTION_BOTH, offset=0, follow=True)
    )
    async for message in call:
        if message.HasField("chunk"):
            nbytes += len(message.chunk.data)
    return Followed(nbytes, time.perf_counter() - t0)


async def bare_streams(
    channel: grpc.aio.Channel, size: int, count: int, chunk: int | None = None
) -> list[Followed]:
    """`count` concurrent bare streams of `size` bytes each over one channel, in `chunk`-byte messages."""
    stub = pb_grpc.JobWorkerStub(channel)
    t0 = time.perf_counter()
    return list(await asyncio.gather(*(follow_bare(stub, size, t0, chunk) for _ in range(count))))


def pipe_seconds(size: int) -> float:
    """Wall time of `head -c SIZE /dev/zero | cat > /dev/null`."""
    t0 = time.perf_counter()
    subprocess.run(["sh", "-c", f"head -c {size} /dev/zero | cat > /dev/null"], check=True, timeout=300)
    return time.perf_counter() - t0


def docker_logs_seconds(image: str, size: int) -> tuple[float, int]:
    """(seconds, bytes) for `docker logs -f` of a container writing SIZE zero bytes, from its start."""
    name = f"jwbench-{uuid.uuid4().hex[:10]}"
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--memory",
                "64m",
                "--entrypoint",
                "head",
                image,
                "-c",
                str(size),
                "/dev/zero",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        logs = subprocess.Popen(
            ["docker", "logs", "-f", name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert logs.stdout is not None
        nbytes = 0
        while chunk := logs.stdout.read(1 << 20):
            nbytes += len(chunk)
        if logs.wait(60) != 0:
            raise BenchError(f"docker logs -f exited with {logs.returncode}")
        return time.perf_counter() - t0, nbytes
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)


def docker_run_seconds(image: str) -> float:
    """Wall time of `docker run --rm --memory 64m IMAGE true` (entrypoint replaced by `true`)."""
    t0 = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--memory", "64m", "--entrypoint", "true", image],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return time.perf_counter() - t0
