"""StreamOutput: selection, offsets, chunking, live follow, truncation, concurrency, disconnects."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_helpers import (
    Clients,
    Connect,
    LogCapture,
    MakeServer,
    collect,
    next_message,
    output_of,
    read_rest,
    start_job,
)

from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import JobWorkerServer, convert

OUT, ERR = pb.OUTPUT_STREAM_STDOUT, pb.OUTPUT_STREAM_STDERR


def assert_contiguous(messages: list[pb.StreamOutputResponse], start: int = 0) -> None:
    offset = start
    for message in messages:
        if message.HasField("chunk"):
            assert message.chunk.offset == offset
            offset += len(message.chunk.data)


async def finished_job(server: JobWorkerServer, stub: Any, script: str) -> pb.JobStatus:
    job = await start_job(stub, "/bin/sh", "-c", script)
    await server.manager.wait(job.id)
    return job


async def test_streams_are_tagged_and_selectable(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await finished_job(server, stub, "printf out1; printf err1 >&2; printf out2")
    both, end = await collect(stub, job.id)
    assert (output_of(both, OUT), output_of(both, ERR)) == (b"out1out2", b"err1")
    assert len(output_of(both)) == 12
    assert_contiguous(both)
    assert end.reason == pb.STREAM_END_REASON_JOB_ENDED
    assert not end.truncated
    assert end.job.state == pb.JOB_STATE_EXITED
    only_out, _ = await collect(stub, job.id, streams=pb.STREAM_SELECTION_STDOUT)
    assert output_of(only_out) == b"out1out2"
    assert {m.chunk.stream for m in only_out} == {OUT}
    assert_contiguous(only_out)
    only_err, _ = await collect(stub, job.id, streams=pb.STREAM_SELECTION_STDERR)
    assert output_of(only_err) == b"err1"
    assert {m.chunk.stream for m in only_err} == {ERR}


async def test_resume_from_an_offset(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await finished_job(server, stub, "printf 0123456789")
    messages, end = await collect(stub, job.id, offset=4)
    assert output_of(messages) == b"456789"
    assert_contiguous(messages, start=4)
    beyond, end = await collect(stub, job.id, offset=1000)
    assert beyond == []
    assert end.reason == pb.STREAM_END_REASON_JOB_ENDED


async def test_large_output_is_split_into_bounded_chunks(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await finished_job(server, stub, "head -c 300000 /dev/zero")
    messages, end = await collect(stub, job.id)
    assert output_of(messages) == bytes(300000)
    assert max(len(m.chunk.data) for m in messages) <= convert.MAX_CHUNK_BYTES
    assert_contiguous(messages)
    assert end.job.stdout_bytes == 300000


async def test_no_follow_on_a_running_job_ends_caught_up(connect: Connect) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/sleep", "30")
    messages, end = await collect(stub, job.id, follow=False)
    assert messages == []
    assert end.reason == pb.STREAM_END_REASON_CAUGHT_UP
    assert end.job.state == pb.JOB_STATE_RUNNING


async def test_follow_delivers_output_live_until_the_job_ends(connect: Connect, tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    stub = connect("walt")
    job = await start_job(stub, "/bin/sh", "-c", f"echo first; read x < {fifo}; echo second")
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
    first = await next_message(call)
    assert first.chunk.data == b"first\n"
    # The job blocks until we open the FIFO: "second" can only arrive over the live stream.
    await asyncio.to_thread(fifo.write_text, "go\n")
    rest = await read_rest(call)
    assert output_of(rest) == b"second\n"
    assert rest[-1].end.reason == pb.STREAM_END_REASON_JOB_ENDED
    assert rest[-1].end.job.exit_code == 0


async def test_truncated_output_is_reported(make_server: MakeServer, clients: Clients) -> None:
    server = await make_server(output_cap_bytes=1000)
    stub = clients.stub(server.port, "walt")
    job = await finished_job(server, stub, "head -c 5000 /dev/zero")
    messages, end = await collect(stub, job.id)
    assert len(output_of(messages)) == 1000
    marks = [m.truncated.offset for m in messages if m.HasField("truncated")]
    assert marks == [1000]
    assert end.truncated
    assert end.job.output_truncated


async def test_many_concurrent_streams(connect: Connect, tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    stubs = [connect(name) for name in ("walt", "ada", "rita")]
    script = f"read x < {fifo}; head -c 200000 /dev/urandom"
    job = await start_job(stubs[0], "/bin/sh", "-c", script)
    streams = [
        stubs[i % 3].StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True)) for i in range(60)
    ]
    readers = [asyncio.ensure_future(_drain(call)) for call in streams]
    await asyncio.to_thread(fifo.write_text, "go\n")
    results = await asyncio.gather(*readers)
    outputs = {output_of(messages) for messages in results}
    assert len(outputs) == 1
    assert len(outputs.pop()) == 200000
    assert {m[-1].end.reason for m in results} == {pb.STREAM_END_REASON_JOB_ENDED}


async def _drain(call: Any) -> list[pb.StreamOutputResponse]:
    return [message async for message in call]


def _stream_tasks() -> list[asyncio.Task[Any]]:
    names = {"_next"}
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ in names]  # type: ignore[union-attr]


async def test_client_disconnect_frees_the_stream(
    connect: Connect, server: JobWorkerServer, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    closed = asyncio.Event()
    real_follow = server.manager.follow

    def spying_follow(*args: Any, **kwargs: Any) -> AsyncIterator[engine.OutputEvent]:
        inner = real_follow(*args, **kwargs)

        async def wrapper() -> AsyncIterator[engine.OutputEvent]:
            try:
                async for event in inner:
                    yield event
            finally:
                closed.set()

        return wrapper()

    monkeypatch.setattr(server.manager, "follow", spying_follow)
    stub = connect("walt")
    job = await start_job(stub, "/bin/sh", "-c", "echo first; exec sleep 60")
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
    assert (await next_message(call)).chunk.data == b"first\n"
    assert server.service.active_streams == 1
    call.cancel()
    audit = await logs.wait_for("jobworker.audit", lambda x: x["method"].endswith("StreamOutput"))
    assert audit["code"] == "CANCELLED"
    assert closed.is_set()
    assert server.service.active_streams == 0
    assert _stream_tasks() == []
    # The job itself is not affected by a reader leaving.
    status = await stub.GetStatus(pb.GetStatusRequest(job_id=job.id))
    assert status.job.state == pb.JOB_STATE_RUNNING


async def test_shutdown_ends_streams_with_server_shutdown(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/sh", "-c", "echo first; exec sleep 60")
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
    assert (await next_message(call)).chunk.data == b"first\n"
    shutdown = asyncio.ensure_future(server.shutdown(5.0))
    rest = await read_rest(call)
    assert [m.WhichOneof("event") for m in rest] == ["end"]
    assert rest[0].end.reason == pb.STREAM_END_REASON_SERVER_SHUTDOWN
    await shutdown
    final = server.manager.status(job.id)
    assert final.state is engine.JobState.STOPPED
    late = await _code(stub.List(pb.ListRequest(), timeout=5))
    assert late == grpc.StatusCode.UNAVAILABLE


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_hundreds_of_idle_followers_need_no_threads(
    connect: Connect, server: JobWorkerServer, tmp_path: Path
) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    stubs = [connect("ada") for _ in range(5)]
    job = await start_job(stubs[0], "/bin/sh", "-c", f"echo ready; read x < {fifo}; echo done")
    threads_before = threading.active_count()
    calls = [
        stubs[i % 5].StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True)) for i in range(500)
    ]
    # Each stream's first message proves the server is serving it; all then wait for output.
    firsts = await asyncio.gather(*(next_message(call) for call in calls))
    assert {m.chunk.data for m in firsts} == {b"ready\n"}
    assert server.service.active_streams == len(calls)
    assert threading.active_count() - threads_before < 10
    await asyncio.to_thread(fifo.write_text, "go\n")
    results = await asyncio.gather(*(read_rest(call) for call in calls))
    assert {output_of(messages) for messages in results} == {b"done\n"}
    assert server.service.active_streams == 0


async def test_a_stream_that_delivered_everything_ends_even_if_retention_removed_the_job(
    make_server: MakeServer, clients: Clients, tmp_path: Path
) -> None:
    # With nothing retained, the job is deleted the moment it ends, while its follower is still attached.
    server = await make_server(retain_jobs=0)
    stub = clients.stub(server.port, "walt")
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    job = await start_job(stub, "/bin/sh", "-c", f"echo first; read x < {fifo}; echo second")
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
    assert (await next_message(call)).chunk.data == b"first\n"
    await asyncio.to_thread(fifo.write_text, "go\n")
    rest = await read_rest(call)
    assert output_of(rest) == b"second\n"
    assert rest[-1].end.reason == pb.STREAM_END_REASON_JOB_ENDED
    assert rest[-1].end.job.exit_code == 0
