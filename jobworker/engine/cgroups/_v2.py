"""cgroup v2 (unified hierarchy): one directory per job under ``<server cgroup>/<prefix>-jobs``."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Collection, Mapping, Sequence

from jobworker.engine.job import Limits
from jobworker.engine.limits import Write

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

CONTROLLERS = ("cpu", "io", "memory", "pids")
# Enabled where the host has them, but not named in the reason when it does not (few limits need them).
OPTIONAL_CONTROLLERS = ("cpuset",)
# Processes keep forking while they are moved; a handful of passes empties a cgroup in practice.
_MOVE_ROUNDS = 20
# Re-check at least this often in case a change notification was missed.
_POLL_SLICE_S = 0.1


class V2JobCgroup:
    """One job's directory in the unified hierarchy."""

    def __init__(self, host: Host, path: str) -> None:
        self._host = host
        self.path = path

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The single cgroup.procs file of the job."""
        return (os.path.join(self.path, "cgroup.procs"),)

    def pids(self) -> list[int]:
        """Host pids currently in the cgroup."""
        text = read_text(os.path.join(self.path, "cgroup.procs"))
        return parse_pids(text) if text else []

    def signal_all(self, sig: int) -> None:
        """Send sig to every process in the cgroup."""
        for pid in self.pids():
            self._host.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL everything: cgroup.kill if present (5.14+), else freeze, kill, thaw."""
        if not os.path.isdir(self.path):
            return
        kill_file = os.path.join(self.path, "cgroup.kill")
        if os.path.exists(kill_file):
            write_or_raise(self._host, kill_file, "1")
            return
        if os.path.exists(os.path.join(self.path, "cgroup.freeze")):
            self._freeze_and_kill()
        else:
            self._kill_until_empty()

    def _freeze_and_kill(self) -> None:
        freeze_file = os.path.join(self.path, "cgroup.freeze")
        write_or_raise(self._host, freeze_file, "1")
        try:
            # A frozen cgroup cannot fork, so one pass over cgroup.procs reaches every process.
            deadline = self._host.monotonic() + FREEZE_TIMEOUT_S
            self._wait_events(lambda ev: ev.get("frozen") == "1", deadline)
            self.signal_all(signal.SIGKILL)
        finally:
            write_or_raise(self._host, freeze_file, "0")

    @property
    def stats_files(self) -> tuple[str, ...]:
        """The files stats() reads: cpu.stat, memory.peak, memory.events."""
        return tuple(os.path.join(self.path, name) for name in ("cpu.stat", "memory.peak", "memory.events"))

    def stats(self) -> CgroupStats:
        """CPU time, peak memory and OOM kills, read now."""
        return self.stats_from(
            {path: text for path in self.stats_files if (text := read_text(path)) is not None}
        )

    def stats_from(self, contents: Mapping[str, str]) -> CgroupStats:
        """cpu.stat usage_usec, memory.peak (kernel 5.19+) and memory.events oom_kill."""
        cpu_text = contents.get(os.path.join(self.path, "cpu.stat"))
        usage = parse_keyed(cpu_text).get("usage_usec") if cpu_text else None
        events_text = contents.get(os.path.join(self.path, "memory.events"))
        oom = parse_keyed(events_text).get("oom_kill", "0") if events_text else "0"
        return CgroupStats(
            cpu_seconds=int(usage) / 1e6 if usage and usage.isdigit() else None,
            memory_peak_bytes=parse_int(contents.get(os.path.join(self.path, "memory.peak"))),
            oom_kills=int(oom) if oom.isdigit() else 0,
        )

    def remove(self) -> None:
        """Kill what is left, wait for ``populated 0`` (bounded) and rmdir; idempotent."""
        if not os.path.isdir(self.path):
            return
        deadline = self._host.monotonic() + REMOVE_TIMEOUT_S
        if not self._wait_events(_unpopulated, self._host.monotonic()):
            self.kill()
            self._wait_events(_unpopulated, deadline)
        rmdir_until(self._host, self.path, deadline)

    def _kill_until_empty(self) -> None:
        # Kernels before 5.2 have neither cgroup.kill nor a freezer: repeat until nothing is left.
        deadline = self._host.monotonic() + FREEZE_TIMEOUT_S
        while (pids := self.pids()) and self._host.monotonic() < deadline:
            for pid in pids:
                self._host.kill(pid, signal.SIGKILL)
            self._host.sleep(0.01)

    def _wait_events(self, done: Callable[[dict[str, str]], bool], deadline: float) -> bool:
        """Wait until cgroup.events satisfies done or deadline passes; True if it did."""
        try:
            fd = os.open(os.path.join(self.path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            # Gone already, or a kernel without cgroup.events (< 4.5): judge by what is left.
            return not os.path.isdir(self.path) or not self.pids()
        try:
            while True:
                os.lseek(fd, 0, os.SEEK_SET)
                if done(parse_keyed(os.read(fd, 4096).decode("ascii", "replace"))):
                    return True
                remaining = deadline - self._host.monotonic()
                if remaining <= 0:
                    return False
                self._host.wait_changed(fd, min(remaining, _POLL_SLICE_S))
        finally:
            os.close(fd)


def _unpopulated(events: dict[str, str]) -> bool:
    return events.get("populated") == "0"


class V2Driver:
    """Jobs in ``<base>/<prefix>-jobs/<job_id>`` with cpu, memory, io and pids limits."""

    name = "v2"

    def __init__(
        self,
        *,
        jobs_dir: str,
        controllers: frozenset[str],
        host: Host,
        sys_block: str,
        io_paths: tuple[str, ...],
        reason: str = "",
        server_dir: str | None = None,
    ) -> None:
        self.jobs_dir = jobs_dir
        self.controllers = controllers
        self.warm_attach_file = os.path.join(server_dir, "cgroup.procs") if server_dir else None
        self.reason = reason
        self._host = host
        self._sys_block = sys_block
        self._io_paths = io_paths

    def supports_limits(self) -> bool:
        """True when at least one limit controller is enabled for jobs."""
        return bool(self.controllers)

    def create(self, job_id: str, limits: Limits) -> V2JobCgroup:
        """Make ``<jobs_dir>/<job_id>`` and write the limits; on failure remove it and raise."""
        check_job_id(job_id)
        check_limits(limits)
        writes = self._limit_writes(limits)
        path = os.path.join(self.jobs_dir, job_id)
        try:
            self._host.mkdir(path)
        except FileExistsError as err:
            raise CgroupError(f"cgroup {path} already exists") from err
        except OSError as err:
            raise CgroupError(f"cannot create cgroup {path}: {os_error_line(err)}") from err
        cgroup = V2JobCgroup(self._host, path)
        try:
            for write in writes:
                file = os.path.join(path, write.file)
                if write.optional and not os.path.exists(file):
                    continue
                write_or_raise(self._host, file, write.value)
        except BaseException:
            with contextlib.suppress(CgroupError):
                cgroup.remove()
            raise
        return cgroup

    def close(self) -> None:
        """Remove every job cgroup and the prefix directories themselves (server shutdown)."""
        self.cleanup_stale()
        with contextlib.suppress(OSError):
            os.rmdir(self.jobs_dir)

    def confine_devices(self, rules: Sequence[str]) -> bool:
        """Not done: v2 filters devices with a BPF program, which this driver does not attach (jobs under
        strict isolation reach only the nodes of their own /dev: every other mount they see is nodev)."""
        return False

    def cleanup_stale(self, keep: Collection[str] = ()) -> int:
        """Kill and remove every job cgroup under jobs_dir but keep's; return how many there were."""
        kept = set(keep)
        return remove_all(
            V2JobCgroup(self._host, path)
            for path in subdirs(self.jobs_dir)
            if os.path.basename(path) not in kept
        )

    def attach(self, job_id: str) -> V2JobCgroup:
        """The cgroup of a job that an earlier server started."""
        check_job_id(job_id)
        return V2JobCgroup(self._host, os.path.join(self.jobs_dir, job_id))

    def _limit_writes(self, limits: Limits) -> list[Write]:
        """The writes of limits; raises for a missing controller or kernel feature."""
        require_controllers(
            limits, self.controllers, driver="v2", where="not available on this host (cgroup v2)"
        )
        features = HostFeatures(
            lambda controller: self.jobs_dir, lambda: block_devices_for(self._io_paths, self._sys_block)
        )
        return limit_writes(limits, "v2", features)


def prepare_v2(host: Host, base_dir: str, prefix: str, sys_block: str, io_paths: tuple[str, ...]) -> V2Driver:
    """Set up ``<base>/<prefix>-jobs`` with every available controller enabled for jobs."""
    available = frozenset((read_text(os.path.join(base_dir, "cgroup.controllers")) or "").split())
    wanted = [c for c in (*CONTROLLERS, *OPTIONAL_CONTROLLERS) if c in available]
    base_control = os.path.join(base_dir, "cgroup.subtree_control")
    if set(wanted) - set((read_text(base_control) or "").split()):
        # "No internal processes": a non-root cgroup that enables controllers for its children may
        # not hold processes itself, so the server (and anything beside it) moves to a leaf first.
        move_to_leaf(host, base_dir, os.path.join(base_dir, f"{prefix}-server"))
    jobs_dir = os.path.join(base_dir, f"{prefix}-jobs")
    mkdir_exist_ok(host, jobs_dir)
    jobs_control = os.path.join(jobs_dir, "cgroup.subtree_control")
    enabled: list[str] = []
    problems: list[str] = []
    # One controller at a time, so one the kernel refuses (cpu with realtime tasks around, say)
    # only disables its own limits, and the reason names it.
    for controller in wanted:
        try:
            for control in (base_control, jobs_control):
                if controller not in (read_text(control) or "").split():
                    write_or_raise(host, control, f"+{controller}")
        except CgroupError as err:
            problems.append(str(err))
            continue
        enabled.append(controller)
    controllers = frozenset(enabled)
    missing = [c for c in CONTROLLERS if c not in controllers]
    reason = "; ".join(
        ([f"cgroup v2 controllers unavailable: {', '.join(missing)}"] if missing else []) + problems
    )
    return V2Driver(
        jobs_dir=jobs_dir,
        controllers=controllers,
        host=host,
        sys_block=sys_block,
        io_paths=io_paths,
        reason=reason,
        server_dir=_server_dir(host, base_dir, os.path.join(base_dir, f"{prefix}-server")),
    )


def _server_dir(host: Host, base_dir: str, leaf_dir: str) -> str | None:
    """Which of the two holds this process (the server), if either does."""
    for candidate in (leaf_dir, base_dir):
        if host.own_pid() in parse_pids(read_text(os.path.join(candidate, "cgroup.procs")) or ""):
            return candidate
    return None


def move_to_leaf(host: Host, base_dir: str, leaf_dir: str) -> None:
    """Move every process of base_dir into leaf_dir (a no-op for the host's root cgroup)."""
    procs_file = os.path.join(base_dir, "cgroup.procs")
    if not parse_pids(read_text(procs_file) or ""):
        return
    if not os.path.exists(os.path.join(base_dir, "cgroup.type")):
        # Only the real root cgroup lacks cgroup.type; it is exempt from the rule and holds the
        # whole host's processes, which must stay where they are.
        return
    mkdir_exist_ok(host, leaf_dir)
    leaf_procs = os.path.join(leaf_dir, "cgroup.procs")
    for _ in range(_MOVE_ROUNDS):
        pids = parse_pids(read_text(procs_file) or "")
        if not pids:
            return
        for pid in pids:
            try:
                host.write(leaf_procs, str(pid))
            except ProcessLookupError:
                continue
            except OSError as err:
                raise CgroupError(
                    f"cannot move pid {pid} from {base_dir} to {leaf_dir}: {os_error_line(err)}"
                ) from err
    raise CgroupError(f"processes keep appearing in {base_dir}; cannot move them to {leaf_dir}")
