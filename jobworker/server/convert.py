"""Proto messages <-> engine records, and the request checks that need no engine (ids, sizes)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from google.protobuf import timestamp_pb2

from jobworker import engine, units
from jobworker.api import jobworker_pb2 as pb
from jobworker.server.errors import invalid_argument

MAX_COMMAND_BYTES = 4096
MAX_ARGS = 4096
MAX_ARGS_BYTES = 256 * 1024
MAX_ENV_ENTRIES = 1024
MAX_ENV_BYTES = 256 * 1024
MAX_CWD_BYTES = 4096
MAX_OWNER_BYTES = 256
MAX_GRACE_SECONDS = 3600.0
MAX_CHUNK_BYTES = 1 << 20
"""Largest `OutputChunk.data` the server sends (64 KiB unless the follower is behind); longer engine chunks
are split."""

_STATES_TO_PROTO: dict[engine.JobState, pb.JobState.ValueType] = {
    engine.JobState.RUNNING: pb.JOB_STATE_RUNNING,
    engine.JobState.EXITED: pb.JOB_STATE_EXITED,
    engine.JobState.SIGNALED: pb.JOB_STATE_SIGNALED,
    engine.JobState.STOPPED: pb.JOB_STATE_STOPPED,
    engine.JobState.OOM_KILLED: pb.JOB_STATE_OOM_KILLED,
    engine.JobState.LOST: pb.JOB_STATE_LOST,
}
_STATES_FROM_PROTO: dict[int, engine.JobState] = {v: s for s, v in _STATES_TO_PROTO.items()}

_SELECTIONS: dict[int, engine.StreamSelection] = {
    pb.STREAM_SELECTION_BOTH: engine.StreamSelection.BOTH,
    pb.STREAM_SELECTION_STDOUT: engine.StreamSelection.STDOUT,
    pb.STREAM_SELECTION_STDERR: engine.StreamSelection.STDERR,
}

_STREAMS: dict[engine.Stream, pb.OutputStream.ValueType] = {
    engine.Stream.STDOUT: pb.OUTPUT_STREAM_STDOUT,
    engine.Stream.STDERR: pb.OUTPUT_STREAM_STDERR,
}


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _total(texts: Iterable[str]) -> int:
    return sum(_utf8_len(t) for t in texts)


def limits_from_proto(limits: pb.Limits) -> engine.Limits:
    """Engine limits from the request; unset fields stay None (server default)."""
    values: dict[str, Any] = {
        kind.field: getattr(limits, kind.field)
        for kind in engine.LIMIT_KINDS
        if limits.HasField(kind.field)  # type: ignore[arg-type]
    }
    return engine.Limits(**values)


def spec_from_request(request: pb.StartRequest, owner: str) -> engine.JobSpec:
    """Build the engine's JobSpec, refusing requests over the server's size limits."""
    if _utf8_len(request.command) > MAX_COMMAND_BYTES:
        raise invalid_argument(f"command is longer than {MAX_COMMAND_BYTES} bytes")
    if len(request.args) > MAX_ARGS:
        raise invalid_argument(f"{len(request.args)} arguments, at most {MAX_ARGS} allowed")
    if _total(request.args) > MAX_ARGS_BYTES:
        raise invalid_argument(f"arguments exceed {MAX_ARGS_BYTES} bytes in total")
    if len(request.env) > MAX_ENV_ENTRIES:
        raise invalid_argument(f"{len(request.env)} environment variables, at most {MAX_ENV_ENTRIES} allowed")
    if _total(request.env.keys()) + _total(request.env.values()) > MAX_ENV_BYTES:
        raise invalid_argument(f"environment exceeds {MAX_ENV_BYTES} bytes in total")
    if _utf8_len(request.cwd) > MAX_CWD_BYTES:
        raise invalid_argument(f"cwd is longer than {MAX_CWD_BYTES} bytes")
    return engine.JobSpec(
        command=request.command,
        args=tuple(request.args),
        env=dict(request.env),
        cwd=request.cwd or None,
        limits=limits_from_proto(request.limits),
        owner=owner,
        stdin=request.stdin,
        terminal=terminal_size(request.tty_size) if request.tty else None,
        name=request.name,
        labels=dict(request.labels),
    )


# What a terminal is when the client sends no size (as a terminal emulator starts).
DEFAULT_TERMINAL = (24, 80)


def terminal_size(size: pb.TerminalSize) -> tuple[int, int]:
    """(rows, cols) of a TerminalSize; unset means the default, the engine checks the range."""
    if size.rows == 0 and size.cols == 0:
        return DEFAULT_TERMINAL
    return size.rows, size.cols


def grace_seconds(request: pb.StopRequest) -> float | None:
    """The requested grace period, None for the server default; INVALID_ARGUMENT if out of range."""
    if not request.HasField("grace_seconds"):
        return None
    grace = request.grace_seconds
    if not math.isfinite(grace) or not 0 <= grace <= MAX_GRACE_SECONDS:
        raise invalid_argument(f"grace_seconds must be between 0 and {MAX_GRACE_SECONDS:g}")
    return grace


def signal_from_proto(name: str) -> int:
    """The number of a signal named "USR1" or "SIGUSR1"; INVALID_ARGUMENT naming the allowed ones.

    Only names cross the wire (numbers differ between architectures); which signals a job may be sent is
    the engine's rule.
    """
    wanted = name.strip().upper()
    wanted = wanted if wanted.startswith("SIG") else "SIG" + wanted
    for sig in engine.SIGNALS:
        if sig.name == wanted:
            return int(sig)
    allowed = ", ".join(s.name.removeprefix("SIG") for s in sorted(engine.SIGNALS))
    shown = name[:32] or "(empty)"
    raise invalid_argument(f"signal {shown} may not be sent to a job; allowed: {allowed}")


def ended_before(request: pb.PruneRequest) -> float:
    """The cutoff of a Prune call in seconds since the epoch; now when unset."""
    if not request.HasField("ended_before"):
        return time.time()
    stamp = request.ended_before
    if not 0 <= stamp.nanos < 1_000_000_000:
        raise invalid_argument("ended_before has invalid nanos")
    return stamp.seconds + stamp.nanos / 1e9


_MAX_TIME_TEXT = 64


def _point_in_time(name: str, text: str, now_ns: int) -> int | None:
    if not text:
        return None
    if len(text) > _MAX_TIME_TEXT:
        raise invalid_argument(f"{name} is longer than {_MAX_TIME_TEXT} characters")
    try:
        return units.parse_point_in_time(text, now_ns)
    except ValueError as exc:
        raise invalid_argument(f"{name}: {exc}") from None


def window_from_request(request: pb.StreamOutputRequest) -> engine.OutputWindow:
    """The part of the output a StreamOutput call asks for; INVALID_ARGUMENT (one line) when malformed."""
    now_ns = time.time_ns()
    tail = request.tail_lines if request.HasField("tail_lines") else None
    if tail is not None and tail < 0:
        raise invalid_argument(f"tail_lines must not be negative (got {tail})")
    since = _point_in_time("since", request.since, now_ns)
    until = _point_in_time("until", request.until, now_ns)
    if since is not None and until is not None and since > until:
        raise invalid_argument(f"since ({request.since}) is after until ({request.until})")
    return engine.OutputWindow(
        tail_lines=tail,
        since_ns=since,
        until_ns=until,
        limit_bytes=request.limit_bytes or None,
        exact_times=request.timestamps,
    )


def states_from_proto(values: Iterable[int]) -> set[engine.JobState] | None:
    """The state filter of a List call, None for all states."""
    states: set[engine.JobState] = set()
    for value in values:
        state = _STATES_FROM_PROTO.get(value)
        if state is None:
            raise invalid_argument(f"unknown job state {value} in the filter")
        states.add(state)
    return states or None


def owner_filter(value: str) -> str:
    """The owner filter of a List call, checked for size."""
    if _utf8_len(value) > MAX_OWNER_BYTES:
        raise invalid_argument(f"owner is longer than {MAX_OWNER_BYTES} bytes")
    return value


def selection_from_proto(value: int) -> engine.StreamSelection:
    """The engine's stream selection; INVALID_ARGUMENT for values this server does not know."""
    selection = _SELECTIONS.get(value)
    if selection is None:
        raise invalid_argument(f"unknown stream selection {value}")
    return selection


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    # Splitting first keeps sub-microsecond precision that seconds * 1e9 would lose in a double.
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def quota_to_proto(config: engine.EngineConfig) -> pb.OwnerQuota:
    """The per-owner quotas of `config`; a quota that is off stays unset."""
    message = pb.OwnerQuota()
    if config.max_running_jobs_per_owner is not None:
        message.max_running_jobs = config.max_running_jobs_per_owner
    if config.max_output_bytes_per_owner is not None:
        message.max_output_bytes = config.max_output_bytes_per_owner
    if config.retained_jobs_per_owner is not None:
        message.retained_jobs = config.retained_jobs_per_owner
    return message


def owner_usage_to_proto(usage: engine.OwnerUsage) -> pb.OwnerUsage:
    """What one owner holds."""
    return pb.OwnerUsage(
        running_jobs=usage.running_jobs, output_bytes=usage.output_bytes, retained_jobs=usage.retained_jobs
    )


def limits_to_proto(limits: engine.Limits) -> pb.Limits:
    """Proto limits; None fields stay unset."""
    message = pb.Limits()
    for kind in engine.LIMIT_KINDS:
        value = getattr(limits, kind.field)
        if value is not None:
            setattr(message, kind.field, value)
    return message


def status_to_proto(status: engine.JobStatus) -> pb.JobStatus:
    """The wire form of a job's status."""
    message = pb.JobStatus(
        id=status.id,
        owner=status.owner,
        command=status.command,
        args=list(status.args),
        state=_STATES_TO_PROTO[status.state],
        pid=status.pid,
        started_at=_timestamp(status.started_at),
        limits=limits_to_proto(status.limits),
        usage=pb.Usage(),
        stdout_bytes=status.stdout_bytes,
        stderr_bytes=status.stderr_bytes,
        output_truncated=status.output_truncated,
        cwd=status.cwd,
        truncation_reason=status.truncation_reason.value if status.truncation_reason else "",
        output_dropped_bytes=status.output_dropped_bytes,
        stdin=status.stdin,
        tty=status.tty,
        name=status.name,
        labels=dict(status.labels),
    )
    if status.ended_at is not None:
        message.ended_at.CopyFrom(_timestamp(status.ended_at))
    if status.exit_code is not None:
        message.exit_code = status.exit_code
    if status.signal is not None:
        message.signal = status.signal
    if status.usage.cpu_seconds is not None:
        message.usage.cpu_seconds = status.usage.cpu_seconds
    if status.usage.memory_peak_bytes is not None:
        message.usage.memory_peak_bytes = status.usage.memory_peak_bytes
    message.usage.oom_kills = status.usage.oom_kills
    return message


def stored_bytes(status: engine.JobStatus, selection: engine.StreamSelection) -> int:
    """Bytes stored so far in the selected view of a job's output."""
    total = 0
    if selection.includes(engine.Stream.STDOUT):
        total += status.stdout_bytes
    if selection.includes(engine.Stream.STDERR):
        total += status.stderr_bytes
    return total


def event_to_proto(event: engine.OutputEvent) -> list[pb.StreamOutputResponse | bytes]:
    """Stream messages for one engine event, splitting data into chunks of MAX_CHUNK_BYTES; chunks come
    encoded (see encode_chunk), for a serializer that passes bytes through (registration)."""
    if isinstance(event, engine.OutputTruncated):
        truncated = pb.OutputTruncated(offset=event.offset, reason=event.reason.value)
        return [pb.StreamOutputResponse(truncated=truncated)]
    if isinstance(event, engine.OutputWindowEnd):
        return []
    stream = _STREAMS[event.stream]
    data = event.data
    if len(data) <= MAX_CHUNK_BYTES:
        return [encode_chunk(stream, event.offset, data, event.time_ns)] if data else []
    view = memoryview(data)
    return [
        encode_chunk(stream, event.offset + start, view[start : start + MAX_CHUNK_BYTES], event.time_ns)
        for start in range(0, len(data), MAX_CHUNK_BYTES)
    ]


def encode_chunk(stream: int, offset: int, data: bytes | memoryview, time_ns: int | None) -> bytes:
    """A StreamOutputResponse holding this OutputChunk, encoded exactly as SerializeToString would.

    By hand because the message is mostly data: the library would copy the data into the message and
    again into its encoding; here it is copied once, into the encoding."""
    # StreamOutputResponse.chunk = 1; OutputChunk: stream = 1, offset = 2, data = 3, time = 4 (a Timestamp:
    # seconds = 1, nanos = 2); scalars at their default are left out, as proto3 does.
    head = bytearray()
    if stream:
        head += b"\x08" + _varint(stream)
    if offset:
        head += b"\x10" + _varint(offset)
    tail = b""
    if time_ns is not None:
        seconds, nanos = divmod(time_ns, 1_000_000_000)
        stamp = b"\x08" + _varint(seconds) if seconds else b""
        if nanos:
            stamp += b"\x10" + _varint(nanos)
        tail = b"\x22" + _varint(len(stamp)) + stamp
    if data:
        head += b"\x1a" + _varint(len(data))
    size = len(head) + len(data) + len(tail)
    return b"".join((b"\x0a", _varint(size), head, data, tail))


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a 64-bit value (a negative one as its two's complement)."""
    value &= (1 << 64) - 1
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
