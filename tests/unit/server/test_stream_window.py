"""StreamOutput with tail_lines, since, until, limit_bytes and timestamps, through gRPC."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from server_helpers import Clients, Connect, MakeServer, collect, output_of, rpc_error, start_job

from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.engine import _spoolfile as fmt
from jobworker.engine import records
from jobworker.server import JobWorkerServer


async def finished(server: JobWorkerServer, stub: Any, script: str) -> pb.JobStatus:
    job = await start_job(stub, "/bin/sh", "-c", script)
    await server.manager.wait(job.id)
    return job


def chunk_ns(message: pb.StreamOutputResponse) -> int:
    return message.chunk.time.seconds * 1_000_000_000 + message.chunk.time.nanos


async def test_tail_lines_and_offsets_of_the_view(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await finished(server, stub, "seq 1 1000")
    messages, end = await collect(stub, job.id, tail_lines=2)
    assert output_of(messages) == b"999\n1000\n"
    total = len(b"".join(b"%d\n" % i for i in range(1, 1001)))
    assert messages[0].chunk.offset == total - len(b"999\n1000\n")
    assert end.reason == pb.STREAM_END_REASON_JOB_ENDED
    nothing, _ = await collect(stub, job.id, tail_lines=0)
    assert output_of(nothing) == b""


async def test_chunks_carry_times_and_since_until_select_by_them(
    connect: Connect, server: JobWorkerServer
) -> None:
    stub = connect("walt")
    before = time.time_ns()
    job = await finished(server, stub, "echo a; sleep 0.6; echo b; sleep 0.6; echo c")
    messages, _ = await collect(stub, job.id, timestamps=True)
    assert [m.chunk.data for m in messages] == [b"a\n", b"b\n", b"c\n"]
    times = [chunk_ns(m) for m in messages]
    assert before <= times[0] < times[1] < times[2] <= time.time_ns()

    def rfc(ns: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"

    since, _ = await collect(stub, job.id, since=rfc(times[1]))
    assert output_of(since) == b"b\nc\n"
    assert since[0].chunk.offset == 2
    until, end = await collect(stub, job.id, until=rfc(times[1]))
    assert output_of(until) == b"a\nb\n"
    assert end.reason == pb.STREAM_END_REASON_LIMIT_REACHED
    relative, _ = await collect(stub, job.id, since="1h")
    assert output_of(relative) == b"a\nb\nc\n"


async def test_limit_bytes(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await finished(server, stub, "seq 1 100")
    messages, end = await collect(stub, job.id, limit_bytes=4)
    assert output_of(messages) == b"1\n2\n"
    assert end.reason == pb.STREAM_END_REASON_LIMIT_REACHED


async def test_follow_with_until_ends_once_it_has_passed(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/sh", "-c", "echo now; sleep 30")
    t0 = time.monotonic()
    messages, end = await collect(stub, job.id, follow=True, until="0s")
    assert time.monotonic() - t0 < 5
    assert end.reason == pb.STREAM_END_REASON_LIMIT_REACHED
    assert output_of(messages) in (b"", b"now\n")
    await stub.Stop(pb.StopRequest(job_id=job.id))


async def test_bad_windows_are_invalid_argument_in_one_line(
    connect: Connect, server: JobWorkerServer
) -> None:
    stub = connect("walt")
    job = await finished(server, stub, "true")
    for fields in (
        {"tail_lines": -1},
        {"since": "yesterday"},
        {"until": "2026-02-30T00:00:00Z"},
        {"since": "1m", "until": "2m"},
        {"since": "x" * 100},
    ):
        error = await rpc_error(stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, **fields)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        details = error.details() or ""
        assert "\n" not in details
        assert "Traceback" not in details


async def test_a_first_release_spool_refuses_times_and_serves_tails(
    make_server: MakeServer, clients: Clients, tmp_path: Path
) -> None:
    # An ended job of the first release: its record, and a spool without magic, times or index.
    job_id = str(uuid.uuid4())
    directory = records.job_dir(tmp_path / "state0", job_id)
    directory.mkdir(parents=True)
    spool = fmt.HEADER_V1.pack(1, 6) + b"x\ny\nz\n"
    (directory / records.SPOOL).write_bytes(spool)
    status = engine.JobStatus(
        id=job_id,
        owner="walt",
        command="sh",
        args=(),
        cwd="/",
        state=engine.JobState.EXITED,
        pid=1,
        started_at=time.time() - 10,
        ended_at=time.time() - 5,
        exit_code=0,
        stdout_bytes=6,
    )
    records.save(directory, status)
    server = await make_server()
    stub = clients.stub(server.port, "walt")
    messages, _ = await collect(stub, job_id, tail_lines=1)
    assert output_of(messages) == b"z\n"
    assert not messages[0].chunk.HasField("time")
    for fields in ({"since": "1h"}, {"until": "2026-12-01T10:00:00Z"}):
        error = await rpc_error(stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id, **fields)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "without arrival times" in (error.details() or "")
