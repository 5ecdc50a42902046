"""cgroup v1 (and hybrid hosts): one directory per job in each controller hierarchy.

Each used hierarchy (cpu, cpuacct, memory, pids, blkio, freezer; some may share one mount such as
``cpu,cpuacct``) gets ``<mount>/<server path in that hierarchy>/<prefix>/<job_id>``. A process joins
the job by writing "0" to the cgroup.procs file of every hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from jobworker.engine.job import Limits
from jobworker.engine.limits import Write, needed_controllers

from ._base import (
    FREEZE_TIMEOUT_S,
    REMOVE_TIMEOUT_S,
    CgroupError,
    CgroupStats,
    HostFeatures,
    check_job_id,
    check_limits,
    limit_writes,
    os_error_line,
    parse_int,
    parse_keyed,
    parse_pids,
    read_text,
    require_controllers,
)
from ._devices import block_devices_for
from ._host import Host, mkdir_exist_ok, remove_all, rmdir_until, subdirs, write_or_raise

CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer", "devices")
# Used where mounted, not named in the reason where not; a job joins their hierarchies only when one of
# its limits needs them, as every cgroup.procs write on v1 waits for an RCU grace period.
OPTIONAL_CONTROLLERS = ("cpuset",)
_LIMIT_CONTROLLERS = ("cpu", "memory", "pids", "blkio", "cpuset")
# v1 has no change notification for cgroup.procs or freezer.state, so waits re-read at this pace.
_POLL_INTERVAL_S = 0.01


@dataclass(frozen=True)
class Hierarchy:
    """One mounted v1 hierarchy: the controllers we use from it and our directory in it."""

    controllers: frozenset[str]
    jobs_dir: str


class V1JobCgroup:
    """One job's directories, one per hierarchy."""

    def __init__(self, host: Host, dirs: dict[str, str]) -> None:
        """dirs maps each controller to the job's directory in that controller's hierarchy."""
        self._host = host
        self._dirs = dirs
        self.paths = tuple(sorted(set(dirs.values())))

    def directory(self, controller: str) -> str:
        """The job's directory in the hierarchy of controller."""
        return self._dirs[controller]

    @property
    def procs_files(self) -> tuple[str, ...]:
        """One cgroup.procs per hierarchy."""
        return tuple(os.path.join(path, "cgroup.procs") for path in self.paths)

    def pids(self) -> list[int]:
        """Host pids in any of the job's hierarchies."""
        found: set[int] = set()
        for path in self.paths:
            found.update(parse_pids(read_text(os.path.join(path, "cgroup.procs")) or ""))
        return sorted(found)

    def signal_all(self, sig: int) -> None:
        """Send sig to every process in the job."""
        for pid in self.pids():
            self._host.kill(pid, sig)

    def kill(self) -> None:
        """Freeze (so nothing forks), SIGKILL every pid, thaw; without a freezer, repeat kills."""
        state_file = os.path.join(self._dirs.get("freezer", ""), "freezer.state")
        if "freezer" not in self._dirs or not os.path.exists(state_file):
            self._kill_until_empty()
            return
        write_or_raise(self._host, state_file, "FROZEN")
        try:
            deadline = self._host.monotonic() + FREEZE_TIMEOUT_S
            while (read_text(state_file) or "").strip() == "FREEZING":
                if self._host.monotonic() >= deadline:
                    break
                self._host.sleep(_POLL_INTERVAL_S)
            self.signal_all(signal.SIGKILL)
        finally:
            # Frozen tasks only act on the queued SIGKILL once thawed.
            write_or_raise(self._host, state_file, "THAWED")

    @property
    def stats_files(self) -> tuple[str, ...]:
        """The files stats() reads: cpuacct.usage, memory.max_usage_in_bytes, memory.oom_control, failcnt."""
        wanted = (
            ("cpuacct", "cpuacct.usage"),
            ("memory", "memory.max_usage_in_bytes"),
            ("memory", "memory.oom_control"),
            ("memory", "memory.failcnt"),
        )
        return tuple(os.path.join(self._dirs[c], name) for c, name in wanted if c in self._dirs)

    def stats(self) -> CgroupStats:
        """CPU time, peak memory and OOM kills, read now."""
        return self.stats_from(
            {path: text for path in self.stats_files if (text := read_text(path)) is not None}
        )

    def stats_from(self, contents: Mapping[str, str]) -> CgroupStats:
        """cpuacct.usage, memory.max_usage_in_bytes and the OOM kill counter, from stats_files' contents.

        Kernels before 4.13 have no ``oom_kill`` line in memory.oom_control; there oom_kills is 1
        once the memory limit was hit (memory.failcnt > 0), which with a SIGKILL is a strong hint.
        """

        def text(controller: str, name: str) -> str | None:
            if controller not in self._dirs:
                return None
            return contents.get(os.path.join(self._dirs[controller], name))

        cpu_ns = parse_int(text("cpuacct", "cpuacct.usage"))
        oom_kills = 0
        if "memory" in self._dirs:
            oom_line = parse_keyed(text("memory", "memory.oom_control") or "").get("oom_kill")
            if oom_line is not None and oom_line.isdigit():
                oom_kills = int(oom_line)
            elif (parse_int(text("memory", "memory.failcnt")) or 0) > 0:
                oom_kills = 1
        return CgroupStats(
            cpu_seconds=cpu_ns / 1e9 if cpu_ns is not None else None,
            memory_peak_bytes=parse_int(text("memory", "memory.max_usage_in_bytes")),
            oom_kills=oom_kills,
        )

    def remove(self) -> None:
        """Kill what is left, wait (bounded) until no pid remains, rmdir every hierarchy."""
        if not any(os.path.isdir(path) for path in self.paths):
            return
        deadline = self._host.monotonic() + REMOVE_TIMEOUT_S
        if self.pids():
            self.kill()
            while self.pids() and self._host.monotonic() < deadline:
                self._host.sleep(_POLL_INTERVAL_S)
        for path in self.paths:
            rmdir_until(self._host, path, deadline)

    def _kill_until_empty(self) -> None:
        deadline = self._host.monotonic() + FREEZE_TIMEOUT_S
        while (pids := self.pids()) and self._host.monotonic() < deadline:
            for pid in pids:
                self._host.kill(pid, signal.SIGKILL)
            self._host.sleep(_POLL_INTERVAL_S)


class V1Driver:
    """Jobs in ``<hierarchy>/<server path>/<prefix>/<job_id>`` for every used hierarchy."""

    name = "v1"

    def __init__(
        self,
        *,
        hierarchies: tuple[Hierarchy, ...],
        host: Host,
        sys_block: str,
        io_paths: tuple[str, ...],
        reason: str = "",
    ) -> None:
        self.hierarchies = hierarchies
        self.reason = reason
        self._host = host
        self._sys_block = sys_block
        self._io_paths = io_paths
        self._controllers = frozenset(c for h in hierarchies for c in h.controllers)
        # Every hierarchy's <prefix> directory sits in the server's own cgroup there; any one will do,
        # the semaphore it warms is the kernel's, shared by all of them. v1's `tasks` moves one thread (the
        # warm-up's own), a shorter hold of that semaphore than moving every thread of the server.
        self.warm_attach_file: str | None = (
            os.path.join(os.path.dirname(hierarchies[0].jobs_dir), "tasks") if hierarchies else None
        )

    @property
    def jobs_dirs(self) -> tuple[str, ...]:
        """The ``<prefix>`` directory in each hierarchy."""
        return tuple(h.jobs_dir for h in self.hierarchies)

    def supports_limits(self) -> bool:
        """True when at least one limit controller is mounted."""
        return any(c in self._controllers for c in _LIMIT_CONTROLLERS)

    def create(self, job_id: str, limits: Limits) -> V1JobCgroup:
        """Make the job's directory in every hierarchy and write the limits, or undo and raise."""
        check_job_id(job_id)
        check_limits(limits)
        writes = self._limit_writes(limits)
        cgroup = self._job(job_id, limits)
        made: list[str] = []
        try:
            for path in cgroup.paths:
                try:
                    self._host.mkdir(path)
                except FileExistsError as err:
                    raise CgroupError(f"cgroup {path} already exists") from err
                except OSError as err:
                    raise CgroupError(f"cannot create cgroup {path}: {os_error_line(err)}") from err
                made.append(path)
                _inherit_cpuset(self._host, path)
            for write in writes:
                file = os.path.join(cgroup.directory(write.controller), write.file)
                if write.optional and not os.path.exists(file):
                    continue
                write_or_raise(self._host, file, write.value)
        except BaseException:
            deadline = self._host.monotonic() + REMOVE_TIMEOUT_S
            for path in reversed(made):
                with contextlib.suppress(CgroupError):
                    rmdir_until(self._host, path, deadline)
            raise
        return cgroup

    def close(self) -> None:
        """Remove every job cgroup and the prefix directories themselves (server shutdown)."""
        self.cleanup_stale()
        for path in self.jobs_dirs:
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def confine_devices(self, rules: Sequence[str]) -> bool:
        """Deny every device but rules on our ``<prefix>`` directory: a new v1 cgroup copies its parent's
        device list, so each job inherits it at mkdir, at no cost per job."""
        jobs_dir = next((h.jobs_dir for h in self.hierarchies if "devices" in h.controllers), None)
        if jobs_dir is None:
            return False
        current = read_text(os.path.join(jobs_dir, "devices.list"))
        if current is not None and set(current.split("\n")) - {""} == set(rules):
            # Already in force (jobs an earlier run left running keep it): a v1 cgroup with children
            # refuses a change of its default ("a"), even to the same.
            return True
        write_or_raise(self._host, os.path.join(jobs_dir, "devices.deny"), "a")
        for rule in rules:
            write_or_raise(self._host, os.path.join(jobs_dir, "devices.allow"), rule)
        return True

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        """Kill and remove every job directory under our prefix in all hierarchies, except keep's jobs."""
        job_ids = sorted({os.path.basename(p) for d in self.jobs_dirs for p in subdirs(d)} - set(keep))
        return remove_all(self._job(job_id) for job_id in job_ids)

    def attach(self, job_id: str) -> V1JobCgroup:
        """The cgroup of a job that an earlier server started (its directories as they exist)."""
        check_job_id(job_id)
        # Every hierarchy it may have used; those it did not (or that its holder removed) read as empty.
        return self._job(job_id)

    def _job(self, job_id: str, limits: Limits | None = None) -> V1JobCgroup:
        """The job's directories: in every hierarchy (to remove), or those limits need (to create)."""
        needed = set(needed_controllers(limits, "v1")) if limits is not None else set(OPTIONAL_CONTROLLERS)
        dirs = {
            c: os.path.join(h.jobs_dir, job_id)
            for h in self.hierarchies
            if not h.controllers <= set(OPTIONAL_CONTROLLERS) or h.controllers & needed
            for c in h.controllers
        }
        return V1JobCgroup(self._host, dirs)

    def _limit_writes(self, limits: Limits) -> list[Write]:
        """The writes of limits; raises for a missing hierarchy or kernel feature."""
        require_controllers(
            limits, self._controllers, driver="v1", where="not mounted on this host (cgroup v1)"
        )
        jobs_dirs = {c: h.jobs_dir for h in self.hierarchies for c in h.controllers}
        features = HostFeatures(jobs_dirs.get, lambda: block_devices_for(self._io_paths, self._sys_block))
        return limit_writes(limits, "v1", features)


def prepare_v1(
    host: Host, hierarchies: tuple[Hierarchy, ...], sys_block: str, io_paths: tuple[str, ...]
) -> V1Driver:
    """Create the ``<prefix>`` directory in every hierarchy and return the driver."""
    for hierarchy in hierarchies:
        existed = os.path.isdir(hierarchy.jobs_dir)
        mkdir_exist_ok(host, hierarchy.jobs_dir)
        if not existed:
            _inherit_cpuset(host, hierarchy.jobs_dir)
    present = {c for h in hierarchies for c in h.controllers}
    missing = [c for c in CONTROLLERS if c not in present]
    reason = f"cgroup v1 controllers not mounted: {', '.join(missing)}" if missing else ""
    return V1Driver(hierarchies=hierarchies, host=host, sys_block=sys_block, io_paths=io_paths, reason=reason)


def _inherit_cpuset(host: Host, path: str) -> None:
    # Under a co-mounted cpuset, a cgroup takes no tasks until cpus and mems are set: inherit them.
    for name in ("cpuset.cpus", "cpuset.mems"):
        current = read_text(os.path.join(path, name))
        if current is not None and not current.strip():
            parent = read_text(os.path.join(os.path.dirname(path), name)) or ""
            if parent.strip():
                write_or_raise(host, os.path.join(path, name), parent.strip())
