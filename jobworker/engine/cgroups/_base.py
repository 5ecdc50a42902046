"""The driver interface shared by every cgroup version, and checks run before touching cgroupfs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from jobworker.engine.job import Limits
from jobworker.engine.limits import (
    LimitError,
    Write,
    WriteContext,
    check_sane,
    needed_controllers,
    writes_for,
)

# A job id becomes a directory name: no separators, no dot-names, nothing a shell would trip on.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# How long remove() waits for a killed cgroup to empty before giving up on rmdir.
REMOVE_TIMEOUT_S = 2.0
# How long kill() waits for a freezer to report FROZEN before killing anyway.
FREEZE_TIMEOUT_S = 1.0


class CgroupError(Exception):
    """A cgroup could not be set up, limited or removed; the message is one readable line."""


@dataclass(frozen=True)
class CgroupStats:
    """Resource usage of one job cgroup; None where the kernel does not report it."""

    cpu_seconds: float | None
    memory_peak_bytes: int | None
    oom_kills: int


class JobCgroup(Protocol):
    """The cgroup(s) of one job: join, signal, kill, measure, remove."""

    @property
    def procs_files(self) -> tuple[str, ...]:
        """Absolute paths of the cgroup.procs files a process writes "0" into to join the job."""
        ...

    def pids(self) -> list[int]:
        """Host pids currently in the cgroup."""
        ...

    def signal_all(self, sig: int) -> None:
        """Send sig to every process in the cgroup."""
        ...

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, including those that left the process group."""
        ...

    def stats(self) -> CgroupStats:
        """Read CPU time, peak memory and OOM kills."""
        ...

    @property
    def stats_files(self) -> tuple[str, ...]:
        """The files stats() reads (the job's holder keeps their contents before removing the cgroup)."""
        ...

    def stats_from(self, contents: Mapping[str, str]) -> CgroupStats:
        """stats() from the contents of stats_files kept earlier (path -> text; absent ones missing)."""
        ...

    def remove(self) -> None:
        """Kill what is left, wait (bounded) until empty and remove the directories; idempotent."""
        ...


class CgroupDriver(Protocol):
    """Creates job cgroups on one kind of host (cgroup v2, v1, or none)."""

    name: str
    reason: str
    # The file of the cgroup the server itself is in that the attach warm-up (_warm.py) writes its thread
    # id to: v1's tasks, v2's cgroup.procs; None where there is none.
    warm_attach_file: str | None

    def supports_limits(self) -> bool:
        """Whether this driver can enforce resource limits at all."""
        ...

    def create(self, job_id: str, limits: Limits) -> JobCgroup:
        """Make the job's cgroup(s) with limits applied, or raise CgroupError leaving nothing."""
        ...

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        """Remove job cgroups left by an earlier server run, but those of jobs in keep (still held)."""
        ...

    def attach(self, job_id: str) -> JobCgroup:
        """The existing cgroup of a job an earlier server run started (its holder still lives)."""
        ...

    def confine_devices(self, rules: Sequence[str]) -> bool:
        """Allow every later job only these device rules ("c 1:3 rwm"); False where the driver cannot."""
        ...

    def close(self) -> None:
        """Remove every job cgroup and the prefix directories themselves (server shutdown)."""
        ...


def check_job_id(job_id: str) -> None:
    """Raise CgroupError unless job_id is safe to use as one directory name."""
    if not _JOB_ID.fullmatch(job_id):
        raise CgroupError(f"job id {job_id!r} cannot name a cgroup (letters, digits, '_.-')")


def check_limits(limits: Limits) -> None:
    """Raise CgroupError for limits no kernel could enforce as asked."""
    try:
        check_sane(limits)
    except LimitError as err:
        raise CgroupError(str(err)) from None


def require_controllers(limits: Limits, available: Collection[str], *, driver: str, where: str) -> None:
    """Raise CgroupError naming the first controller limits need on driver ("v2", "v1") that is not in
    available; where says how it is missing, for the message."""
    for controller in needed_controllers(limits, driver):
        if controller not in available:
            raise CgroupError(
                f"cgroup controller '{controller}' is {where}, so {controller} limits cannot be enforced"
            )


class HostFeatures:
    """A driver's answers to limit kinds while they compute writes (a WriteContext): which interface
    files jobs get, as our prefix directories have them, and the disks io limits apply to."""

    def __init__(self, dir_of: Callable[[str], str | None], devices: Callable[[], list[str]]) -> None:
        """dir_of maps a controller to the prefix directory of its hierarchy (None: not mounted)."""
        self._dir_of = dir_of
        self._devices = devices
        self._found: list[str] | None = None

    def has_file(self, controller: str, name: str) -> bool:
        """Whether jobs of controller get interface file name."""
        directory = self._dir_of(controller)
        return directory is not None and os.path.exists(os.path.join(directory, name))

    def block_devices(self) -> list[str]:
        """MAJ:MIN of the whole disks io limits apply to, looked up once per create()."""
        if self._found is None:
            self._found = self._devices()
        if not self._found:
            raise LimitError("no block device found to apply io limits to")
        return self._found


def limit_writes(limits: Limits, driver: str, ctx: WriteContext) -> list[Write]:
    """The writes of limits on driver, with a kind's refusal (no swap accounting, no disk) as CgroupError."""
    try:
        return writes_for(limits, driver, ctx)
    except LimitError as err:
        raise CgroupError(str(err)) from None


def parse_keyed(text: str) -> dict[str, str]:
    """Parse "key value" lines (cpu.stat, memory.events, memory.oom_control, cgroup.events)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out[key] = value.strip()
    return out


def parse_pids(text: str) -> list[int]:
    """Parse a cgroup.procs file."""
    return [int(line) for line in text.split() if line.isdigit()]


def read_text(path: str) -> str | None:
    """Read a cgroupfs file, or None when it is absent (an older kernel) or unreadable."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        # Gone (job removed), or a kernel refusing reads of a dying cgroup: report nothing.
        return None


def read_int(path: str) -> int | None:
    """Read a cgroupfs file holding one integer, or None when absent or unparsable."""
    return parse_int(read_text(path))


def parse_int(text: str | None) -> int | None:
    """The one integer a cgroupfs file holds, or None when absent or unparsable."""
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def os_error_line(err: OSError) -> str:
    """strerror of an OSError without the errno number and path noise."""
    return err.strerror or type(err).__name__
