"""Proto <-> engine conversion without a server."""

from __future__ import annotations

import dataclasses

import pytest

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


def decoded(messages: list[pb.StreamOutputResponse | bytes]) -> list[pb.StreamOutputResponse]:
    """The messages as a client receives them (chunks come encoded)."""
    return [pb.StreamOutputResponse.FromString(m) if isinstance(m, bytes) else m for m in messages]


def test_chunks_are_split_with_their_offsets() -> None:
    size = convert.MAX_CHUNK_BYTES
    data = bytes(range(256)) * (size * 2 // 256 + 1)
    messages = decoded(convert.event_to_proto(engine.OutputChunk(engine.Stream.STDERR, 1000, data)))
    assert b"".join(m.chunk.data for m in messages) == data
    assert [m.chunk.offset for m in messages] == [1000 + i * size for i in range(len(messages))]
    assert {m.chunk.stream for m in messages} == {pb.OUTPUT_STREAM_STDERR}
    assert max(len(m.chunk.data) for m in messages) == size
    (mark,) = decoded(convert.event_to_proto(engine.OutputTruncated(77)))
    assert (mark.truncated.offset, mark.truncated.reason) == (77, "output cap reached")
    (full,) = decoded(convert.event_to_proto(engine.OutputTruncated(5, engine.TruncationReason.DISK_FULL)))
    assert full.truncated.reason == "state disk full"


@pytest.mark.parametrize(
    "stream", [pb.OUTPUT_STREAM_UNSPECIFIED, pb.OUTPUT_STREAM_STDOUT, pb.OUTPUT_STREAM_STDERR]
)
@pytest.mark.parametrize("offset", [0, 1, 127, 128, 300, 2**32, 2**64 - 1])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 65_536, 1 << 20])
@pytest.mark.parametrize("time_ns", [None, 0, 999, 1_000_000_000, 1_796_119_200_123_456_789])
def test_chunks_are_encoded_byte_for_byte_as_the_library_would(
    stream: int, offset: int, size: int, time_ns: int | None
) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = pb.StreamOutputResponse()
    expected.chunk.stream = stream  # type: ignore[assignment]
    expected.chunk.offset = offset
    expected.chunk.data = data
    if time_ns is not None:
        expected.chunk.time.seconds, expected.chunk.time.nanos = divmod(time_ns, 1_000_000_000)
    assert convert.encode_chunk(stream, offset, data, time_ns) == expected.SerializeToString()


def test_an_empty_chunk_sends_nothing() -> None:
    assert convert.event_to_proto(engine.OutputChunk(engine.Stream.STDOUT, 5, b"")) == []


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
