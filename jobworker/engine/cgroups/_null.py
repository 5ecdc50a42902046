"""The driver for hosts where cgroups cannot be managed: jobs run, limits are refused."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from jobworker.engine.job import Limits

from ._base import CgroupError, CgroupStats, check_job_id


class NullJobCgroup:
    """A job without a cgroup: nothing to join, signal or remove; the engine uses process groups."""

    @property
    def procs_files(self) -> tuple[str, ...]:
        """No cgroup.procs to join."""
        return ()

    def pids(self) -> list[int]:
        """Unknown without a cgroup."""
        return []

    def signal_all(self, sig: int) -> None:
        """No-op; the engine signals the process group instead."""

    def kill(self) -> None:
        """No-op; the engine kills the process group instead."""

    def stats(self) -> CgroupStats:
        """Nothing measured."""
        return CgroupStats(cpu_seconds=None, memory_peak_bytes=None, oom_kills=0)

    @property
    def stats_files(self) -> tuple[str, ...]:
        """Nothing to read."""
        return ()

    def stats_from(self, contents: Mapping[str, str]) -> CgroupStats:
        """Nothing measured."""
        return self.stats()

    def remove(self) -> None:
        """Nothing to remove."""


class NullDriver:
    """No cgroups: create() refuses any limit rather than run the job unconfined."""

    name = "none"
    warm_attach_file: str | None = None

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def supports_limits(self) -> bool:
        """Never."""
        return False

    def create(self, job_id: str, limits: Limits) -> NullJobCgroup:
        """A placeholder cgroup, or CgroupError when limits were asked for."""
        check_job_id(job_id)
        if not limits.is_empty():
            raise CgroupError(f"resource limits cannot be enforced on this host: {self.reason}")
        return NullJobCgroup()

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        """Nothing to clean."""
        return 0

    def attach(self, job_id: str) -> NullJobCgroup:
        """A placeholder, like every job's here."""
        return NullJobCgroup()

    def confine_devices(self, rules: Sequence[str]) -> bool:
        """No cgroups, no device controller."""
        return False

    def close(self) -> None:
        """Nothing to remove."""
