"""Protobuf <-> client types, shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from jobworker.api import jobworker_pb2 as pb
from jobworker.client._limits import LIMIT_FIELDS
from jobworker.client._types import (
    EndOfInput,
    JobInfo,
    JobState,
    Limits,
    OutputChunk,
    OutputEvent,
    OutputStream,
    OutputTruncated,
    OutputWindow,
    Quota,
    ServerInfo,
    StreamEnd,
    StreamEndReason,
    StreamSelection,
    TerminalSize,
    Usage,
)

_STATE_FROM_PB: dict[pb.JobState.ValueType, JobState] = {
    pb.JOB_STATE_RUNNING: JobState.RUNNING,
    pb.JOB_STATE_EXITED: JobState.EXITED,
    pb.JOB_STATE_SIGNALED: JobState.SIGNALED,
    pb.JOB_STATE_STOPPED: JobState.STOPPED,
    pb.JOB_STATE_OOM_KILLED: JobState.OOM_KILLED,
    pb.JOB_STATE_LOST: JobState.LOST,
}
_STATE_TO_PB = {state: value for value, state in _STATE_FROM_PB.items()}
_STREAM_FROM_PB = {
    pb.OUTPUT_STREAM_STDOUT: OutputStream.STDOUT,
    pb.OUTPUT_STREAM_STDERR: OutputStream.STDERR,
}
_SELECTION_TO_PB = {
    "both": pb.STREAM_SELECTION_BOTH,
    "stdout": pb.STREAM_SELECTION_STDOUT,
    "stderr": pb.STREAM_SELECTION_STDERR,
}
_REASON_FROM_PB = {
    pb.STREAM_END_REASON_JOB_ENDED: StreamEndReason.JOB_ENDED,
    pb.STREAM_END_REASON_CAUGHT_UP: StreamEndReason.CAUGHT_UP,
    pb.STREAM_END_REASON_SERVER_SHUTDOWN: StreamEndReason.SERVER_SHUTDOWN,
    pb.STREAM_END_REASON_LIMIT_REACHED: StreamEndReason.LIMIT_REACHED,
}


def _timestamp(message: pb.JobStatus, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def limits_from_proto(message: pb.Limits) -> Limits:
    """Convert proto Limits (unset fields stay None)."""
    values: dict[str, Any] = {
        f.field: getattr(message, f.field)
        for f in LIMIT_FIELDS
        if message.HasField(f.field)  # type: ignore[arg-type]
    }
    return Limits(**values)


def limits_to_proto(limits: Limits) -> pb.Limits:
    """Convert Limits to proto, leaving None fields unset so the server applies its defaults."""
    message = pb.Limits()
    for f in LIMIT_FIELDS:
        value = getattr(limits, f.field)
        if value is not None:
            setattr(message, f.field, value)
    return message


def job_from_proto(message: pb.JobStatus) -> JobInfo:
    """Convert a proto JobStatus into a JobInfo."""
    usage = message.usage
    return JobInfo(
        id=message.id,
        owner=message.owner,
        command=message.command,
        args=tuple(message.args),
        state=_STATE_FROM_PB.get(message.state, JobState.UNKNOWN),
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        signal=message.signal if message.HasField("signal") else None,
        pid=message.pid,
        started_at=_timestamp(message, "started_at"),
        ended_at=_timestamp(message, "ended_at"),
        limits=limits_from_proto(message.limits),
        usage=Usage(
            cpu_seconds=usage.cpu_seconds if usage.HasField("cpu_seconds") else None,
            memory_peak_bytes=(usage.memory_peak_bytes if usage.HasField("memory_peak_bytes") else None),
            oom_kills=usage.oom_kills,
        ),
        stdout_bytes=message.stdout_bytes,
        stderr_bytes=message.stderr_bytes,
        output_truncated=message.output_truncated,
        cwd=message.cwd,
        truncation_reason=message.truncation_reason,
        output_dropped_bytes=message.output_dropped_bytes,
        stdin=message.stdin,
        tty=message.tty,
        name=message.name,
        labels=dict(message.labels),
    )


def event_from_proto(message: pb.StreamOutputResponse) -> OutputEvent:
    """Convert one StreamOutput response into an output event."""
    kind = message.WhichOneof("event")
    if kind == "chunk":
        chunk = message.chunk
        stream = _STREAM_FROM_PB.get(chunk.stream, OutputStream.STDOUT)
        time_ns = chunk.time.seconds * 1_000_000_000 + chunk.time.nanos if chunk.HasField("time") else None
        return OutputChunk(stream=stream, offset=chunk.offset, data=chunk.data, time_ns=time_ns)
    if kind == "truncated":
        return OutputTruncated(offset=message.truncated.offset, reason=message.truncated.reason)
    end = message.end
    return StreamEnd(
        reason=_REASON_FROM_PB.get(end.reason, StreamEndReason.UNKNOWN),
        truncated=end.truncated,
        job=job_from_proto(end.job) if end.HasField("job") else None,
    )


def server_info_request() -> pb.GetServerInfoRequest:
    return pb.GetServerInfoRequest()


def server_info_from_proto(message: pb.GetServerInfoResponse) -> ServerInfo:
    """Convert a GetServerInfo response."""
    return ServerInfo(
        version=message.version,
        cgroup_driver=message.cgroup_driver,
        cgroup_reason=message.cgroup_reason,
        limits_supported=message.limits_supported,
        namespaces=message.namespaces,
        default_limits=limits_from_proto(message.default_limits),
        max_limits=limits_from_proto(message.max_limits),
        identity=message.identity,
        role=message.role,
        isolation=message.isolation,
        isolation_detail=message.isolation_detail,
        default_grace_seconds=message.default_grace_seconds or None,
        quota=_quota_from_proto(message.quota, message.usage),
    )


def _quota_from_proto(quota: pb.OwnerQuota, usage: pb.OwnerUsage) -> Quota:
    return Quota(
        max_running_jobs=quota.max_running_jobs if quota.HasField("max_running_jobs") else None,
        max_output_bytes=quota.max_output_bytes if quota.HasField("max_output_bytes") else None,
        retained_jobs=quota.retained_jobs if quota.HasField("retained_jobs") else None,
        running_jobs=usage.running_jobs,
        output_bytes=usage.output_bytes,
        kept_jobs=usage.retained_jobs,
    )


def start_request(
    command: str,
    args: Iterable[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    limits: Limits | None,
    name: str | None = None,
    labels: Mapping[str, str] | None = None,
    stdin: bool = False,
    tty: TerminalSize | None = None,
) -> pb.StartRequest:
    """Build a StartRequest; the server checks the name and labels."""
    request = pb.StartRequest(
        command=command,
        args=list(args),
        env=dict(env or {}),
        cwd=cwd or "",
        name=name or "",
        labels=dict(labels or {}),
        stdin=stdin,
        tty=tty is not None,
    )
    if limits is not None:
        request.limits.CopyFrom(limits_to_proto(limits))
    if tty is not None:
        request.tty_size.CopyFrom(pb.TerminalSize(rows=tty.rows, cols=tty.cols))
    return request


# Data of one WriteInput message at most (the server's holder takes frames of this size).
INPUT_CHUNK = 64 * 1024


def input_requests(
    job_id: str, source: Iterable[bytes | TerminalSize | EndOfInput], eof: bool
) -> Iterator[pb.WriteInputRequest]:
    """The WriteInput messages of `source`: the first names the job; eof (if asked) after the source ends."""
    yield pb.WriteInputRequest(job_id=job_id)
    for item in source:
        yield from _input_messages(item)
    if eof:
        yield pb.WriteInputRequest(eof=True)


async def input_requests_async(
    job_id: str, source: AsyncIterable[bytes | TerminalSize | EndOfInput], eof: bool
) -> AsyncIterator[pb.WriteInputRequest]:
    """input_requests for an async source."""
    yield pb.WriteInputRequest(job_id=job_id)
    async for item in source:
        for message in _input_messages(item):
            yield message
    if eof:
        yield pb.WriteInputRequest(eof=True)


def _input_messages(item: bytes | TerminalSize | EndOfInput) -> Iterator[pb.WriteInputRequest]:
    if isinstance(item, EndOfInput):
        yield pb.WriteInputRequest(eof=True)
        return
    if isinstance(item, TerminalSize):
        yield pb.WriteInputRequest(resize=pb.TerminalSize(rows=item.rows, cols=item.cols))
        return
    for start in range(0, len(item), INPUT_CHUNK):
        yield pb.WriteInputRequest(data=item[start : start + INPUT_CHUNK])


def status_request(job_id: str) -> pb.GetStatusRequest:
    """Build a GetStatusRequest."""
    return pb.GetStatusRequest(job_id=job_id)


def wait_request(job_id: str) -> pb.WaitRequest:
    """Build a WaitRequest."""
    return pb.WaitRequest(job_id=job_id)


def delete_request(job_id: str) -> pb.DeleteRequest:
    """Build a DeleteRequest."""
    return pb.DeleteRequest(job_id=job_id)


def prune_request(ended_before: datetime | None, labels: Mapping[str, str] | None = None) -> pb.PruneRequest:
    """Build a PruneRequest; None prunes every ended job (the server's now)."""
    request = pb.PruneRequest(labels=dict(labels or {}))
    if ended_before is not None:
        if ended_before.tzinfo is None:
            raise ValueError("ended_before must be timezone-aware")
        request.ended_before.FromDatetime(ended_before.astimezone(UTC))
    return request


def signal_request(job_id: str, signal: str) -> pb.SignalRequest:
    """Build a SignalRequest; the server checks the name."""
    return pb.SignalRequest(job_id=job_id, signal=signal)


def stop_request(job_id: str, grace_seconds: float | None) -> pb.StopRequest:
    """Build a StopRequest; None leaves the grace period to the server."""
    request = pb.StopRequest(job_id=job_id)
    if grace_seconds is not None:
        request.grace_seconds = grace_seconds
    return request


def list_request(
    states: Iterable[JobState],
    owner: str | None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
) -> pb.ListRequest:
    """Build a ListRequest."""
    values: list[pb.JobState.ValueType] = []
    for state in states:
        if state not in _STATE_TO_PB:
            raise ValueError(f"cannot filter on job state {state.value!r}")
        values.append(_STATE_TO_PB[state])
    return pb.ListRequest(states=values, owner=owner or "", labels=dict(labels or {}), name=name or "")


def _time_text(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("since and until need a time zone")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def stream_request(
    job_id: str, streams: StreamSelection, offset: int, follow: bool, window: OutputWindow | None = None
) -> pb.StreamOutputRequest:
    """Build a StreamOutputRequest."""
    if streams not in _SELECTION_TO_PB:
        raise ValueError(f"streams must be 'both', 'stdout' or 'stderr', not {streams!r}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    window = window or OutputWindow()
    if window.tail_lines is not None and window.tail_lines < 0:
        raise ValueError(f"tail_lines must be >= 0, not {window.tail_lines}")
    if window.limit_bytes is not None and window.limit_bytes < 1:
        raise ValueError(f"limit_bytes must be >= 1, not {window.limit_bytes}")
    request = pb.StreamOutputRequest(
        job_id=job_id,
        streams=_SELECTION_TO_PB[streams],
        offset=offset,
        follow=follow,
        since=_time_text(window.since),
        until=_time_text(window.until),
        limit_bytes=window.limit_bytes or 0,
        timestamps=window.timestamps,
    )
    if window.tail_lines is not None:
        request.tail_lines = window.tail_lines
    return request


def resume_after(request: pb.StreamOutputRequest, chunk: OutputChunk) -> bool:
    """Make request resume after chunk (a new call starts there); False when its byte limit is used up.

    The offset now says where to start: a tail or since sent again would be resolved anew (a relative
    since later on the clock) and could skip output."""
    request.offset = chunk.end_offset
    request.ClearField("tail_lines")
    request.since = ""
    if request.limit_bytes:
        request.limit_bytes = max(0, request.limit_bytes - len(chunk.data))
        return request.limit_bytes > 0
    return True


LIMIT_END = StreamEnd(reason=StreamEndReason.LIMIT_REACHED, truncated=False, job=None)
"""The end of a stream whose byte limit was used up before the server could say so."""
