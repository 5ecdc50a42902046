"""Proto <-> engine conversion without a server."""

from __future__ import annotations

import dataclasses

from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import convert

JOB_ID = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"


def test_name_and_labels_cross_the_wire_both_ways() -> None:
    request = pb.StartRequest(command="true", name="web-1", labels={"app": "web", "example.com/tier": "x"})
    spec = convert.spec_from_request(request, owner="alice")
    assert (spec.name, dict(spec.labels)) == ("web-1", {"app": "web", "example.com/tier": "x"})
    status = engine.JobStatus(
        id=JOB_ID, owner="alice", command="true", args=(), cwd="/", state=engine.JobState.RUNNING, pid=1,
        started_at=1.0, name=spec.name, labels=spec.labels,
    )  # fmt: skip
    message = convert.status_to_proto(status)
    assert (message.name, dict(message.labels)) == ("web-1", {"app": "web", "example.com/tier": "x"})
    assert convert.status_to_proto(dataclasses.replace(status, name="", labels={})).name == ""


def test_chunks_are_split_with_their_offsets() -> None:
    size = convert.MAX_CHUNK_BYTES
    data = bytes(range(256)) * (size * 2 // 256 + 1)
    messages = convert.event_to_proto(engine.OutputChunk(engine.Stream.STDERR, 1000, data))
    assert b"".join(m.chunk.data for m in messages) == data
    assert [m.chunk.offset for m in messages] == [1000 + i * size for i in range(len(messages))]
    assert {m.chunk.stream for m in messages} == {pb.OUTPUT_STREAM_STDERR}
    assert max(len(m.chunk.data) for m in messages) == size
    (mark,) = convert.event_to_proto(engine.OutputTruncated(77))
    assert (mark.truncated.offset, mark.truncated.reason) == (77, "output cap reached")
    (full,) = convert.event_to_proto(engine.OutputTruncated(5, engine.TruncationReason.DISK_FULL))
    assert full.truncated.reason == "state disk full"


def test_unset_limits_stay_unset_both_ways() -> None:
    request = pb.StartRequest(command="x", limits=pb.Limits(memory_bytes=5, cpus=0.5))
    limits = convert.spec_from_request(request, owner="walt").limits
    assert limits == engine.Limits(cpus=0.5, memory_bytes=5)
    back = convert.limits_to_proto(limits)
    assert back.HasField("memory_bytes")
    assert not back.HasField("pids")


def test_status_keeps_optional_fields_unset() -> None:
    status = engine.JobStatus(
        id=JOB_ID,
        owner="walt",
        command="/bin/sleep",
        args=("1",),
        cwd="/",
        state=engine.JobState.RUNNING,
        pid=42,
        started_at=1700000000.25,
    )
    message = convert.status_to_proto(status)
    assert message.state == pb.JOB_STATE_RUNNING
    assert not message.HasField("exit_code")
    assert not message.HasField("signal")
    assert not message.HasField("ended_at")
    assert not message.usage.HasField("cpu_seconds")
    assert message.started_at.ToNanoseconds() == 1700000000_250000000
    signaled = dataclasses.replace(status, state=engine.JobState.SIGNALED, signal=9, ended_at=2.0)
    ended = convert.status_to_proto(signaled)
    assert (ended.state, ended.signal, ended.ended_at.seconds) == (pb.JOB_STATE_SIGNALED, 9, 2)


def test_every_engine_state_has_a_wire_value() -> None:
    for state in engine.JobState:
        status = engine.JobStatus(JOB_ID, "o", "c", (), "/", state, 1, 0.0)
        assert convert.status_to_proto(status).state != pb.JOB_STATE_UNSPECIFIED
