"""Client and AsyncClient send what the caller asked for and return typed, converted results."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest
from client_fakes import Credentials, FakeServer
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2

import jobworker.client
from jobworker.api import jobworker_pb2 as pb
from jobworker.client import (
    AsyncClient,
    Client,
    JobInfo,
    JobState,
    Limits,
    OutputChunk,
    OutputStream,
    OutputTruncated,
    StreamEnd,
    StreamEndReason,
    Usage,
)

ALL_BYTES = bytes(range(256))


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(moment)
    return result


def finished_job(job_id: str = "job-9", **fields: object) -> pb.JobStatus:
    started = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    job = pb.JobStatus(
        id=job_id,
        owner="bob",
        command="sh",
        args=["-c", "exit 3"],
        state=pb.JOB_STATE_EXITED,
        exit_code=3,
        pid=77,
        started_at=stamp(started),
        ended_at=stamp(started + timedelta(seconds=90)),
        limits=pb.Limits(memory_bytes=1 << 20),
        usage=pb.Usage(cpu_seconds=1.5),
        stdout_bytes=10,
        stderr_bytes=2,
        output_truncated=True,
        cwd="/tmp",
    )
    for name, value in fields.items():
        setattr(job, name, value)
    return job


def test_start_sends_the_whole_request(fake: FakeServer, client: Client) -> None:
    limits = Limits(cpus=0.5, memory_bytes=256 << 20, pids=10)
    job = client.start("echo", ["a b", "c"], env={"K": "V=W"}, cwd="/srv", limits=limits)
    method, request = fake.servicer.requests[-1]
    assert method == "Start"
    assert (request.command, list(request.args), dict(request.env), request.cwd) == (
        "echo",
        ["a b", "c"],
        {"K": "V=W"},
        "/srv",
    )
    # Limits the caller did not set stay unset so the server applies its defaults.
    assert request.limits.cpus == 0.5
    assert request.limits.HasField("pids")
    assert not request.limits.HasField("io_read_bps")
    assert job.owner == "alice"
    assert job.state is JobState.RUNNING
    assert job.limits == limits
    assert job.shell_exit_code is None
    assert job.started_at is not None
    assert job.started_at.tzinfo is not None
    assert abs(datetime.now(UTC) - job.started_at) < timedelta(minutes=1)


def test_start_without_limits_sends_none(fake: FakeServer, client: Client) -> None:
    client.start("true")
    _, request = fake.servicer.requests[-1]
    assert not request.HasField("limits")
    assert request.cwd == ""


def test_stop_passes_grace_only_when_given(fake: FakeServer, client: Client) -> None:
    first = client.start("sleep", ["100"])
    second = client.start("sleep", ["100"])
    stopped = client.stop(first.id, grace_seconds=2.5)
    client.stop(second.id)
    stops = [request for method, request in fake.servicer.requests if method == "Stop"]
    assert stops[0].grace_seconds == 2.5
    assert not stops[1].HasField("grace_seconds")
    assert stopped.state is JobState.STOPPED
    assert stopped.signal == 15
    assert stopped.shell_exit_code == 143
    assert stopped.ended_at is not None


def test_a_stop_without_grace_waits_at_least_the_servers_own_grace(fake: FakeServer, client: Client) -> None:
    """A server started with a long --grace must not see its Stop cut short by the client's deadline."""
    fake.servicer.server_grace = 45.0
    job = client.start("sleep", ["100"])
    client.stop(job.id)
    assert fake.servicer.stop_time_left[-1] > 45.0


def test_status_converts_every_field(fake: FakeServer, client: Client) -> None:
    fake.servicer.jobs["job-9"] = finished_job()
    job = client.status("job-9")
    assert job == JobInfo(
        id="job-9",
        owner="bob",
        command="sh",
        args=("-c", "exit 3"),
        state=JobState.EXITED,
        exit_code=3,
        signal=None,
        pid=77,
        started_at=datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
        ended_at=datetime(2024, 5, 1, 12, 1, 30, tzinfo=UTC),
        limits=Limits(memory_bytes=1 << 20),
        usage=Usage(cpu_seconds=1.5),
        stdout_bytes=10,
        stderr_bytes=2,
        output_truncated=True,
        cwd="/tmp",
    )
    assert job.duration() == timedelta(seconds=90)
    assert job.shell_exit_code == 3


def test_unknown_state_from_a_newer_server(fake: FakeServer, client: Client) -> None:
    fake.servicer.jobs["job-9"] = finished_job(state=99)
    assert client.status("job-9").state is JobState.UNKNOWN


def test_list_filters_on_the_wire(fake: FakeServer, client: Client) -> None:
    running = client.start("sleep", ["1"])
    fake.servicer.jobs["job-9"] = finished_job()
    assert {job.id for job in client.list()} == {running.id, "job-9"}
    assert [job.id for job in client.list(states=[JobState.EXITED])] == ["job-9"]
    assert [job.id for job in client.list(owner="alice")] == [running.id]
    _, request = fake.servicer.requests[-1]
    assert request.owner == "alice"


def test_list_rejects_unfilterable_state(client: Client) -> None:
    with pytest.raises(ValueError, match="cannot filter"):
        client.list(states=[JobState.UNKNOWN])


def script_output(fake: FakeServer) -> None:
    fake.servicer.script[:] = [
        pb.StreamOutputResponse(
            chunk=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDOUT, offset=0, data=ALL_BYTES)
        ),
        pb.StreamOutputResponse(
            chunk=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDERR, offset=256, data=b"\x00err")
        ),
        pb.StreamOutputResponse(truncated=pb.OutputTruncated(offset=260)),
        pb.StreamOutputResponse(
            end=pb.StreamEnd(reason=pb.STREAM_END_REASON_JOB_ENDED, truncated=True, job=finished_job())
        ),
    ]


EXPECTED_EVENTS = [
    OutputChunk(OutputStream.STDOUT, 0, ALL_BYTES),
    OutputChunk(OutputStream.STDERR, 256, b"\x00err"),
    OutputTruncated(260),
]


def test_stream_yields_typed_events(fake: FakeServer, client: Client) -> None:
    script_output(fake)
    events = list(client.stream("job-9", streams="stdout", offset=5, follow=False))
    assert events[:3] == EXPECTED_EVENTS
    end = events[3]
    assert isinstance(end, StreamEnd)
    assert end.reason is StreamEndReason.JOB_ENDED
    assert end.truncated
    assert end.job is not None
    assert end.job.exit_code == 3
    _, request = fake.servicer.requests[-1]
    assert (request.streams, request.offset, request.follow) == (
        pb.STREAM_SELECTION_STDOUT,
        5,
        False,
    )


def test_abandoned_stream_is_cancelled(fake: FakeServer, client: Client) -> None:
    script_output(fake)
    fake.servicer.hold_stream = True
    events = client.stream("job-9")
    assert next(events) == EXPECTED_EVENTS[0]
    events.close()  # type: ignore[attr-defined]
    assert fake.servicer.stream_cancelled.wait(10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"streams": "both-ish"}, "streams must be"), ({"offset": -1}, "offset must be")],
)
def test_stream_arguments_checked_before_any_call(
    fake: FakeServer, client: Client, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        client.stream("job-9", **kwargs)  # type: ignore[arg-type]
    assert fake.servicer.requests == []


def test_health(fake: FakeServer, client: Client) -> None:
    assert client.health() is True
    fake.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert client.health() is False


def test_wait_has_no_deadline_unless_asked(fake: FakeServer, client: Client) -> None:
    fake.servicer.jobs["job-9"] = finished_job()
    assert client.wait("job-9").shell_exit_code == 3
    client.wait("job-9", max_wait=600)
    unbounded, bounded = fake.servicer.wait_time_left
    # A huge remaining time is what grpc reports for no deadline at all.
    assert unbounded is None or unbounded > 10**6
    assert bounded is not None
    assert 590 < bounded <= 601


def test_delete_prune_signal_send_what_was_asked(fake: FakeServer, client: Client) -> None:
    fake.servicer.jobs["job-9"] = finished_job()
    assert client.signal("job-9", "USR1").id == "job-9"
    cutoff = datetime(2024, 5, 2, tzinfo=UTC)
    assert [j.id for j in client.prune(cutoff)] == ["job-9"]
    assert client.delete("job-9").id == "job-9"
    sent = {method: request for method, request in fake.servicer.requests}
    assert sent["Signal"].signal == "USR1"
    assert sent["Prune"].ended_before.ToDatetime(tzinfo=UTC) == cutoff
    assert sent["Delete"].job_id == "job-9"
    with pytest.raises(ValueError, match="timezone"):
        client.prune(datetime(2024, 5, 2))


async def test_async_client_round_trip(fake: FakeServer, creds: Credentials) -> None:
    script_output(fake)
    async with AsyncClient(creds.config(fake.address)) as client:
        job = await client.start("sleep", ["5"], limits=Limits(cpus=1.0))
        assert job.limits.cpus == 1.0
        assert (await client.status(job.id)).state is JobState.RUNNING
        assert [j.id for j in await client.list(states=[JobState.RUNNING])] == [job.id]
        stopped = await client.stop(job.id, grace_seconds=1)
        assert stopped.state is JobState.STOPPED
        events = [event async for event in client.stream(job.id)]
        assert events[:3] == EXPECTED_EVENTS
        assert await client.health()
        assert (await client.wait(job.id)).state is JobState.STOPPED
        assert (await client.signal(job.id, "HUP")).id == job.id
        assert [j.id for j in await client.prune()] == [job.id]
        assert (await client.delete(job.id)).id == job.id


async def test_async_abandoned_stream_is_cancelled(fake: FakeServer, creds: Credentials) -> None:
    script_output(fake)
    fake.servicer.hold_stream = True
    async with AsyncClient(creds.config(fake.address)) as client:
        events = client.stream("job-9")
        assert await anext(events) == EXPECTED_EVENTS[0]
        await events.aclose()  # type: ignore[attr-defined]
        assert fake.servicer.stream_cancelled.wait(10)


def test_public_surface_is_exported_and_documented() -> None:
    public = {
        name
        for name, value in vars(jobworker.client).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("jobworker.")
    }
    assert public <= set(jobworker.client.__all__)
    for name in jobworker.client.__all__:
        value = getattr(jobworker.client, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"{name} has no docstring"
