"""Client-side value types: what a caller sees of jobs and their output (no protobuf, no engine)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeAlias

StreamSelection: TypeAlias = Literal["both", "stdout", "stderr"]

# Shells report death by signal N as 128 + N; `jw run` follows that convention.
SIGNAL_EXIT_BASE = 128


class JobState(enum.Enum):
    """Lifecycle state of a job; every state but RUNNING is final."""

    RUNNING = "running"
    EXITED = "exited"
    SIGNALED = "signaled"
    STOPPED = "stopped"
    OOM_KILLED = "oom_killed"
    LOST = "lost"
    # A state this client does not know (a newer server); treated as final.
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        """Whether the job has ended."""
        return self is not JobState.RUNNING


class OutputStream(enum.Enum):
    """Which of the job's output streams a chunk came from."""

    STDOUT = "stdout"
    STDERR = "stderr"


class StreamEndReason(enum.Enum):
    """Why the server ended an output stream."""

    JOB_ENDED = "job_ended"
    CAUGHT_UP = "caught_up"
    SERVER_SHUTDOWN = "server_shutdown"
    # The window's until time or byte limit was reached before the end of the output.
    LIMIT_REACHED = "limit_reached"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Limits:
    """Resource limits of a job; None means the server's default."""

    cpus: float | None = None
    memory_bytes: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    pids: int | None = None
    # CPUs the job may run on, a kernel CPU list such as "0-1,3".
    cpuset: str | None = None
    # Swap on top of memory_bytes.
    memory_swap_bytes: int | None = None


@dataclass(frozen=True)
class Usage:
    """Resources a job has used; None when the server cannot measure them."""

    cpu_seconds: float | None = None
    memory_peak_bytes: int | None = None
    # Processes of the job killed by the kernel for memory (also when the job itself went on).
    oom_kills: int = 0


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job's status as reported by the server."""

    id: str
    owner: str
    command: str
    args: tuple[str, ...]
    state: JobState
    exit_code: int | None = None
    signal: int | None = None
    pid: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    limits: Limits = field(default_factory=Limits)
    usage: Usage = field(default_factory=Usage)
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_truncated: bool = False
    cwd: str = ""
    # Why output stopped being stored ("output cap reached", "state disk full", ...); "" if it was not.
    truncation_reason: str = ""
    output_dropped_bytes: int = 0
    # Started with its stdin open (write_input) / on a terminal.
    stdin: bool = False
    tty: bool = False
    # "" when the job has no name (or the server predates names).
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def shell_exit_code(self) -> int | None:
        """The job's outcome as a shell exit status (128+N for signal N); None while running."""
        if not self.state.is_final:
            return None
        if self.exit_code is not None:
            return self.exit_code
        if self.signal is not None:
            return SIGNAL_EXIT_BASE + self.signal
        return None

    def duration(self, now: datetime | None = None) -> timedelta | None:
        """Run time so far (or in total once ended); None when the start time is unknown."""
        if self.started_at is None:
            return None
        end = self.ended_at or (now or datetime.now(UTC))
        return max(end - self.started_at, timedelta(0))


@dataclass(frozen=True)
class Quota:
    """The caller's share of the server (None: no quota) and what the caller uses of it now."""

    max_running_jobs: int | None = None
    max_output_bytes: int | None = None
    retained_jobs: int | None = None
    running_jobs: int = 0
    output_bytes: int = 0
    kept_jobs: int = 0


@dataclass(frozen=True)
class ServerInfo:
    """What a server enforces, and who we are to it."""

    version: str
    cgroup_driver: str
    cgroup_reason: str
    limits_supported: bool
    namespaces: bool
    default_limits: Limits
    max_limits: Limits
    identity: str
    role: str
    quota: Quota = Quota()
    # "strict" or "none" (empty from servers older than the job sandbox).
    isolation: str = ""
    isolation_detail: str = ""
    # What a Stop without a grace period waits before SIGKILL; None from servers that do not say.
    default_grace_seconds: float | None = None


@dataclass(frozen=True)
class OutputChunk:
    """Bytes of job output; `offset` is the position of `data[0]` in the selected view.

    `time_ns`: when data[0] reached the server's spool (ns since the epoch), None when the server does not
    know (output stored by its first release)."""

    stream: OutputStream
    offset: int
    data: bytes
    time_ns: int | None = field(default=None, compare=False)

    @property
    def end_offset(self) -> int:
        """The offset to resume from after this chunk."""
        return self.offset + len(self.data)


@dataclass(frozen=True)
class OutputWindow:
    """Which part of a job's output to stream, besides the streams and the start offset.

    since/until: a datetime, or text the server reads (RFC 3339, or a duration ago such as "10m" on the
    server's clock). Times are those of the server's spool records (one read of the job's pipe each).
    """

    # Start at the last this many lines; None: no tail, 0: only new output.
    tail_lines: int | None = None
    since: datetime | str | None = None
    until: datetime | str | None = None
    # Stop after this many bytes; None: no limit.
    limit_bytes: int | None = None
    # Ask for chunks whose time is exact for every byte (for per-line timestamps).
    timestamps: bool = False


@dataclass(frozen=True)
class OutputTruncated:
    """The job's output stopped being stored at `offset`, for `reason`; later output was discarded."""

    offset: int
    # "output cap reached", "state disk full", "state disk error"; "" from older servers.
    reason: str = ""


@dataclass(frozen=True)
class StreamEnd:
    """The last event of an output stream, with the job's status at that moment."""

    reason: StreamEndReason
    truncated: bool
    job: JobInfo | None


OutputEvent: TypeAlias = OutputChunk | OutputTruncated | StreamEnd


@dataclass(frozen=True)
class TerminalSize:
    """A terminal's window size: for a job started on a terminal, and a resize in write_input."""

    rows: int
    cols: int


@dataclass(frozen=True)
class EndOfInput:
    """In a write_input source: the end of the job's input (it reads end of file); nothing may follow."""
