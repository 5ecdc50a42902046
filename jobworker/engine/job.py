"""Job records: what a caller asks for (JobSpec, Limits) and what it gets back (JobStatus, Usage)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields


class JobState(enum.Enum):
    """Lifecycle: RUNNING -> one of the ended states, never back."""

    RUNNING = "running"
    EXITED = "exited"
    SIGNALED = "signaled"
    STOPPED = "stopped"
    OOM_KILLED = "oom_killed"
    LOST = "lost"

    @property
    def ended(self) -> bool:
        return self is not JobState.RUNNING


class Stream(enum.Enum):
    """One of the job's output streams."""

    STDOUT = 1
    STDERR = 2


class StreamSelection(enum.Enum):
    """Which streams a follower reads; offsets count bytes of the selected view."""

    BOTH = 0
    STDOUT = 1
    STDERR = 2

    def includes(self, stream: Stream) -> bool:
        return self is StreamSelection.BOTH or self.value == stream.value


class TruncationReason(enum.Enum):
    """Why a job's output stopped being stored; what came later was drained and dropped."""

    OUTPUT_CAP = "output cap reached"
    DISK_FULL = "state disk full"
    DISK_ERROR = "state disk error"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job; None means the server default (or no limit)."""

    cpus: float | None = None
    memory_bytes: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    pids: int | None = None
    # A kernel CPU list in canonical form ("0-1,3"), as validation leaves it.
    cpuset: str | None = None
    # Swap on top of memory_bytes.
    memory_swap_bytes: int | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True)
class Usage:
    """Resources used by a job; None where the host cannot measure them."""

    cpu_seconds: float | None = None
    memory_peak_bytes: int | None = None
    # Processes of the job the OOM killer took (a child may have died while the job went on).
    oom_kills: int = 0


@dataclass(frozen=True)
class OwnerUsage:
    """What one owner holds on the server, derived from the job table (the quotas count this)."""

    running_jobs: int = 0
    output_bytes: int = 0
    retained_jobs: int = 0


@dataclass(frozen=True)
class JobSpec:
    """What to run and on whose behalf."""

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    limits: Limits = field(default_factory=Limits)
    owner: str = ""
    # Keep the job's stdin open for input (JobManager.open_input); else it reads /dev/null.
    stdin: bool = False
    # A terminal of (rows, columns) for the job: its stdin, stdout and stderr are one pty (output is all
    # stdout); implies stdin.
    terminal: tuple[int, int] | None = None
    # Unique among the owner's stored jobs; "" for none (validation.check_name has the rule).
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job."""

    id: str
    owner: str
    command: str
    args: tuple[str, ...]
    cwd: str
    state: JobState
    pid: int
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    limits: Limits = field(default_factory=Limits)
    usage: Usage = field(default_factory=Usage)
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_truncated: bool = False
    # Set when output_truncated; output_dropped_bytes counts what the job wrote that was not stored.
    truncation_reason: TruncationReason | None = None
    output_dropped_bytes: int = 0
    # Started with its stdin open / on a terminal.
    stdin: bool = False
    tty: bool = False
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputChunk:
    """Bytes of one stream; offset counts bytes of the follower's selected view before data[0].

    time_ns: when the first of these bytes arrived (ns since the epoch); None in spools of the first release.
    Chunks are equal when they hold the same bytes at the same place, whatever their times.
    """

    stream: Stream
    offset: int
    data: bytes
    time_ns: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class OutputWindow:
    """Which part of the output a follower reads, besides its streams and start offset.

    Times are record times: all bytes of one pipe read share the time they arrived, so a window may start
    or end inside a line that the job wrote in two pieces.
    """

    # Start at the last this many lines of the view (newline-counted, arrival order); None: no tail.
    tail_lines: int | None = None
    # Only records that arrived at or after since_ns and at or before until_ns (ns since the epoch).
    since_ns: int | None = None
    until_ns: int | None = None
    # Stop after this many bytes of the view; None: no limit.
    limit_bytes: int | None = None
    # Never merge records of different arrival times into one chunk (so each chunk's time is exact).
    exact_times: bool = False

    @property
    def timed(self) -> bool:
        """Whether the window needs arrival times (since or until)."""
        return self.since_ns is not None or self.until_ns is not None


@dataclass(frozen=True)
class OutputTruncated:
    """Output stopped being stored at offset (of the selected view), for reason; later output was dropped."""

    offset: int
    reason: TruncationReason = TruncationReason.OUTPUT_CAP


@dataclass(frozen=True)
class OutputWindowEnd:
    """The follower's window ended at offset (its until time or byte limit) before the output did."""

    offset: int


OutputEvent = OutputChunk | OutputTruncated | OutputWindowEnd
