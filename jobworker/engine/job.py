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
    """Bytes of one stream; offset counts bytes of the follower's selected view before data[0]."""

    stream: Stream
    offset: int
    data: bytes


@dataclass(frozen=True)
class OutputTruncated:
    """Output stopped being stored at offset (of the selected view), for reason; later output was dropped."""

    offset: int
    reason: TruncationReason = TruncationReason.OUTPUT_CAP


OutputEvent = OutputChunk | OutputTruncated
