"""JobManager: one engine's jobs and the operations on them (start, stop, status, list, follow output).

The table of jobs (records, usage, quotas, retention) is `table.JobTable`; starting them is here."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jobworker.engine import output, records, validation
from jobworker.engine.cgroups import CgroupDriver, CgroupError, JobCgroup, detect_driver, null_driver
from jobworker.engine.cgroups._warm import AttachWarmer, start_warmer
from jobworker.engine.errors import (
    CapacityError,
    EngineClosedError,
    InputUnavailableError,
    InvalidSpecError,
    JobNotRunningError,
    LimitsUnsupportedError,
    StartError,
    StorageFullError,
)
from jobworker.engine.events import EngineEvents
from jobworker.engine.job import (
    JobSpec,
    JobState,
    JobStatus,
    Limits,
    OutputEvent,
    OutputWindow,
    OwnerUsage,
    StreamSelection,
)
from jobworker.engine.limits import default_job_limits, default_max_limits
from jobworker.engine.output import MAX_RECORD, OutputSpool
from jobworker.engine.sandbox import (
    DEVICE_RULES,
    JOB_WORKDIR,
    Isolation,
    Sandbox,
    SandboxConfig,
    SandboxUnavailableError,
)
from jobworker.engine.spawn import (
    ForkServer,
    ForkServerKeeper,
    HolderFiles,
    HolderLink,
    JobInput,
    LaunchError,
    LaunchSpec,
)
from jobworker.engine.supervisor import Ending, JobSupervisor, ending, load_exit
from jobworker.engine.table import JobRow, JobTable, with_output

log = logging.getLogger("jobworker.engine")

# Each running job holds four descriptors in the server; running out is a capacity problem, not bad input.
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
_OUT_OF_FDS_MESSAGE = "the server has no file descriptors left for another job (raise its open-file limit)"
# The state disk cannot take another job's record: refused like any other capacity limit.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_MESSAGE = "the server's state disk is full: no job can start until space is freed"
# A new job needs room for its record and more than one drain read of output. A disk that filled up keeps
# less than this free (cutting off the torn record frees at most one), so it counts as full.
_MIN_FREE_BYTES = 2 * MAX_RECORD
# Bounds the wait for the shim to report "started"; a healthy start takes milliseconds.
_START_TIMEOUT = 30.0
# Bounds the wait for a running job's holder to tell its state to a restarted server.
_ATTACH_TIMEOUT = 2.0


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs jobs; every field has a production default except the state directory."""

    state_dir: Path
    output_cap_bytes: int = 1 << 30
    max_running_jobs: int = 1000
    # Ended jobs kept (status and output, in memory and on disk); beyond this the oldest ended jobs are
    # deleted. None keeps every job forever.
    retained_jobs: int | None = 1000
    # Per-owner shares, so that one caller cannot take the server from the others (None: no quota).
    # Start is refused at max_running_jobs_per_owner running jobs. At max_output_bytes_per_owner of
    # stored output a Start first deletes the owner's oldest ended jobs, and is refused only if the
    # owner's running jobs hold that much.
    max_running_jobs_per_owner: int | None = 100
    max_output_bytes_per_owner: int | None = 10 << 30
    # Each owner keeps its newest ended jobs up to this many; older ones are deleted, output included.
    retained_jobs_per_owner: int | None = 100
    default_grace_seconds: float = 10.0
    # STRICT: the job sandbox (jobworker.engine.sandbox), open() fails where the host cannot provide it.
    # NONE: jobs run as the server's user, for trusted single-user hosts.
    isolation: Isolation = Isolation.STRICT
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    # With isolation NONE: run jobs in their own PID/mount/net/UTS/IPC namespaces. None: whenever the host
    # allows it (root). True: required, open() fails where they cannot be created. STRICT always has them.
    namespaces: bool | None = None
    # Use cgroups when the host allows it; limits are refused where it does not.
    cgroups: bool = True
    # Applied only where the cgroup driver can enforce limits (a host without cgroups runs jobs unlimited
    # and says so in EngineInfo rather than refusing every start).
    default_limits: Limits = field(default_factory=default_job_limits)
    max_limits: Limits = field(default_factory=default_max_limits)
    # None: the job's own working directory under strict isolation, / otherwise.
    default_cwd: str | None = None
    # Launch jobs by forking a warm launcher process (about a millisecond) instead of starting a fresh
    # interpreter per job (tens of milliseconds). Falls back to the direct path if it dies.
    fork_server: bool = True
    # Names the cgroup subtree of this server's jobs; servers sharing a host need distinct prefixes,
    # because open() removes whatever it finds under its own prefix as left over from an earlier run.
    cgroup_prefix: str = "jobworker"
    # Injected by tests (fake cgroupfs); detected from the host when None.
    cgroup_driver: CgroupDriver | None = None
    # Keep the kernel's cgroup attach path warm for a few seconds after each Start (cgroups/_warm.py): a
    # job started after a quiet spell then skips most of an RCU grace period (6-15 ms here).
    cgroup_attach_warmup: bool = True


@dataclass(frozen=True)
class EngineInfo:
    """What isolation this engine provides; shown in health and logs."""

    cgroup_driver: str
    cgroup_reason: str
    namespaces: bool
    limits_supported: bool
    isolation: Isolation = Isolation.NONE
    # One line on what the isolation does (for logs and GetServerInfo).
    isolation_detail: str = ""
    # Limits applied when a request sets none (empty where the driver cannot enforce limits).
    default_limits: Limits = field(default_factory=Limits)


class JobManager:
    """Owns every job of one server; used from one asyncio event loop."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._closed = False
        self._driver: CgroupDriver = null_driver("not opened yet")
        self._warmer: AttachWarmer | None = None
        self._namespaces = False
        self._sandbox: Sandbox | None = None
        self._default_limits = Limits()
        self._fork_servers: ForkServerKeeper | None = None
        self._table = JobTable(config)
        self.events = EngineEvents(self._table)

    async def open(self) -> None:
        """Prepare the state directory, cgroups and namespaces, reload past jobs and reattach running ones."""
        cfg = self._config
        validation.check_limit_settings(cfg.default_limits, cfg.max_limits)
        (cfg.state_dir / "jobs").mkdir(parents=True, exist_ok=True, mode=0o700)
        if cfg.cgroup_driver is not None:
            self._driver = cfg.cgroup_driver
        elif cfg.cgroups:
            self._driver = detect_driver(prefix=cfg.cgroup_prefix)
        else:
            self._driver = null_driver("cgroups disabled by configuration")
        if self._driver.supports_limits():
            self._default_limits = cfg.default_limits
        elif not cfg.default_limits.is_empty():
            log.warning("default limits are not enforced", extra={"reason": self._driver.reason})
        if cfg.isolation is Isolation.STRICT:
            if cfg.namespaces is False:
                raise SandboxUnavailableError("strict isolation needs namespaces")
            sandbox = Sandbox(cfg.sandbox, cfg.state_dir, extra_masks=(str(cfg.state_dir),))
            await asyncio.to_thread(sandbox.prepare)
            self._sandbox = sandbox
        # Before any new job (the probe included) takes a uid: reattached jobs hold theirs.
        held = await self._reattach(await self._table.load())
        try:
            removed = await asyncio.to_thread(self._driver.cleanup_stale, held)
            if removed:
                log.info("removed stale job cgroups", extra={"count": removed})
        except CgroupError as e:
            log.warning("could not remove every stale job cgroup", extra={"error": str(e)})
        try:
            if self._sandbox is not None:
                await self._open_sandbox(self._sandbox)
            else:
                log.warning("isolation none: jobs run with the server's own privileges (trusted hosts only)")
                self._namespaces = await self._probe_namespaces()
        except BaseException:
            await asyncio.gather(*(job.supervisor.detach() for job in self._table if job.supervisor))
            raise
        if cfg.fork_server:
            self._fork_servers = ForkServerKeeper()
            self._fork_servers.get()
        if cfg.cgroup_attach_warmup:
            self._warmer = start_warmer(self._driver.warm_attach_file)

    async def _reattach(self, found: builtins.list[JobRow]) -> set[str]:
        """Follow again the jobs an earlier server left running; returns the ids of those still held.

        A job whose holder still lives is RUNNING again; one that ended meanwhile gets its real end from
        its exit file; one whose holder died is LOST with what its spool holds."""
        began = time.monotonic()
        results = await asyncio.gather(*(self._reattach_one(job) for job in found))
        held = {job.status.id for job, attached in zip(found, results, strict=True) if attached}
        if found:
            log.info(
                "reattached jobs",
                extra={
                    "running": len(held),
                    "ended": len(found) - len(held),
                    "seconds": round(time.monotonic() - began, 3),
                },
            )
        return held

    async def _reattach_one(self, job: JobRow) -> bool:
        job_id, directory = job.status.id, job.directory
        assert job.spool is not None
        try:
            cgroup: JobCgroup = self._driver.attach(job_id)
        except CgroupError:
            cgroup = null_driver("").attach(job_id)
        link: HolderLink | None = None
        if not (directory / records.EXIT).exists():
            with contextlib.suppress(OSError):
                link = await HolderLink.attach(directory / records.SOCKET, _ATTACH_TIMEOUT)
        if link is not None and not link.status.closed.done():
            uid = link.status.uid
            if uid is not None and self._sandbox is not None:
                self._sandbox.claim_uid(uid)
                job.uid = uid
            job.status = dataclasses.replace(job.status, pid=link.pid or job.status.pid)
            self._supervise(job, link, cgroup)
            self._table.add(job)
            return True
        if link is not None:
            link.close()
        facts = await asyncio.to_thread(load_exit, directory)
        if facts is None:
            await asyncio.to_thread(job.spool.recover)
        else:
            reason = output.reason_of(facts.truncated) if facts.truncated is not None else None
            job.spool.restore(facts.stdout_bytes, facts.stderr_bytes, facts.dropped_bytes, reason)
        job.spool.finish()
        job.status = _ended_status(job, ending(facts, cgroup))
        self._table.add(job)
        self._table.save(job, ended=True)
        return False

    async def _open_sandbox(self, sandbox: Sandbox) -> None:
        """Start one job in strict isolation and confine devices; SandboxUnavailableError if it fails."""
        uid, gid = sandbox.acquire_uid()
        try:
            await _probe(sandbox.shim_args(uid, gid))
        except (LaunchError, OSError) as e:
            raise SandboxUnavailableError(f"strict isolation does not work on this host: {e}") from None
        finally:
            sandbox.release_uid(uid)
        try:
            devices = await asyncio.to_thread(self._driver.confine_devices, DEVICE_RULES)
        except CgroupError as e:
            raise SandboxUnavailableError(f"cannot restrict the jobs' devices: {e}") from None
        self._namespaces = True
        log.info("strict isolation", extra={"detail": sandbox.description, "devices_cgroup": devices})

    async def _probe_namespaces(self) -> bool:
        wanted = self._config.namespaces
        if wanted is False:
            return False
        if os.geteuid() != 0:
            if wanted:
                raise SandboxUnavailableError("namespaces need root")
            return False
        try:
            await _probe(())
        except (LaunchError, OSError) as e:
            if wanted:
                raise SandboxUnavailableError(f"cannot create job namespaces: {e}") from None
            log.warning("jobs run without namespaces", extra={"reason": str(e)})
            return False
        return True

    @property
    def info(self) -> EngineInfo:
        sandbox = self._sandbox
        return EngineInfo(
            cgroup_driver=self._driver.name,
            cgroup_reason=self._driver.reason,
            namespaces=self._namespaces,
            limits_supported=self._driver.supports_limits(),
            isolation=Isolation.STRICT if sandbox is not None else Isolation.NONE,
            isolation_detail=sandbox.description if sandbox is not None else "jobs run as the server's user",
            default_limits=self._default_limits,
        )

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self, spec: JobSpec) -> JobStatus:
        """Start a job; returns once its command runs, raises a JobError when it cannot."""
        if self._closed:
            raise EngineClosedError("the server is shutting down")
        if self._warmer is not None:
            # First thing: its grace period (if any) then passes while the rest is set up.
            self._warmer.kick()
        cfg = self._config
        validation.check_spec(spec)
        limits = validation.effective_limits(spec.limits, self._default_limits, cfg.max_limits)
        if self._table.running() >= cfg.max_running_jobs:
            raise CapacityError(f"the server already runs its maximum of {cfg.max_running_jobs} jobs")
        if not limits.is_empty() and not self._driver.supports_limits():
            raise LimitsUnsupportedError(
                f"resource limits cannot be enforced on this server: {self._driver.reason}"
            )
        strict = self._sandbox is not None
        env = validation.job_environment(spec.env, home=JOB_WORKDIR if strict else None)
        cwd = validation.check_cwd(spec.cwd or cfg.default_cwd or (JOB_WORKDIR if strict else "/"))
        self._table.check_name(spec.owner, spec.name)
        # Last of the checks, so a Start that fails them never makes room by deleting old output.
        self._table.check_quota(spec.owner)

        job_id = str(uuid.uuid4())
        directory = records.job_dir(cfg.state_dir, job_id)
        try:
            directory.mkdir(mode=0o700)
        except OSError as e:
            _raise_capacity(e)
            raise
        uid: int | None = None
        with self._table.launching(job_id, spec.owner, spec.name), self.events.starting():
            try:
                if self._sandbox is not None:
                    uid, gid = self._sandbox.acquire_uid()
                    sandbox_args = self._sandbox.shim_args(uid, gid)
                else:
                    sandbox_args = ()
                return await self._launch(job_id, directory, spec, limits, env, cwd, uid, sandbox_args)
            except BaseException:
                if uid is not None and self._sandbox is not None:
                    self._sandbox.release_uid(uid)
                shutil.rmtree(directory, ignore_errors=True)
                raise

    @property
    def _fork_server(self) -> ForkServer | None:
        """The current fork server, if any (tests kill it)."""
        return self._fork_servers.current if self._fork_servers is not None else None

    def _usable_fork_server(self) -> ForkServer | None:
        # Restarting one takes a few milliseconds of Popen, like the direct path it replaces.
        return self._fork_servers.get() if self._fork_servers is not None else None

    async def _launch(
        self,
        job_id: str,
        directory: Path,
        spec: JobSpec,
        limits: Limits,
        env: dict[str, str],
        cwd: str,
        uid: int | None,
        sandbox_args: tuple[str, ...],
    ) -> JobStatus:
        try:
            cgroup = await asyncio.to_thread(self._driver.create, job_id, limits)
        except CgroupError as e:
            raise StartError(f"cannot set up the job's cgroup: {e}") from None
        status = _starting_status(job_id, spec, cwd, limits)
        launch = LaunchSpec(
            argv=(spec.command, *spec.args),
            env=env,
            cwd=cwd,
            procs_files=cgroup.procs_files,
            namespaces=self._namespaces,
            hostname=f"job-{job_id[:8]}",
            sandbox_args=sandbox_args,
            files=_holder_files(directory, self._config.output_cap_bytes),
            stats_files=cgroup.stats_files,
            stdin=spec.stdin,
            terminal=spec.terminal,
        )
        try:
            # Whatever was set up is undone, newest first, unless the command runs.
            async with contextlib.AsyncExitStack() as undo:
                undo.push_async_callback(_remove_cgroup, cgroup)
                # Before the command runs: a disk that cannot take the spool or the record refuses the job.
                await asyncio.to_thread(_prepare_job_files, directory, status)
                spool = OutputSpool(directory / records.SPOOL)
                link = await HolderLink.start(launch, self._usable_fork_server())
                undo.push_async_callback(_abandon, link)
                await link.wait_started(_START_TIMEOUT)
                undo.pop_all()
        except LaunchError as e:
            raise _launch_error(spec, cwd, e) from None
        except OSError as e:
            _raise_capacity(e)
            raise StartError(f"cannot start {spec.command!r}: {e.strerror or e}") from None

        status = dataclasses.replace(status, pid=link.pid)
        job = JobRow(status=status, directory=directory, spool=spool, uid=uid)
        self._supervise(job, link, cgroup)
        self._table.add(job)
        self._table.save(job)
        log.info("job started", extra={"job_id": job_id, "owner": spec.owner, "pid": status.pid})
        return status

    def _supervise(self, job: JobRow, link: HolderLink, cgroup: JobCgroup) -> None:
        assert job.spool is not None
        job.supervisor = JobSupervisor(
            link,
            cgroup,
            job.spool,
            job.directory,
            on_end=lambda s: self._ended(job, s),
        )

    def _ended(self, job: JobRow, sup: JobSupervisor) -> None:
        assert sup.end is not None
        end = sup.end
        job.status = _ended_status(job, end)
        job.supervisor = None
        self.events.job_ended(job.status)
        # The job's processes are gone (the supervisor emptied its cgroup) and its files lived in tmpfs
        # mounts of its own mount namespace: nothing of the uid is left to inherit.
        if job.uid is not None and self._sandbox is not None:
            self._sandbox.release_uid(job.uid)
            job.uid = None
        self._table.save(job, ended=True)
        log.info(
            "job ended",
            extra={
                "job_id": job.status.id,
                "state": end.state.value,
                "exit_code": end.exit_code,
                "signal": end.signal,
            },
        )

    def usage_of(self, owner: str) -> OwnerUsage:
        """What `owner` holds now: running jobs, stored output bytes, ended jobs kept."""
        return self._table.usage_of(owner)

    def resolve(self, ref: str, caller: str, may_see: Callable[[str], bool]) -> str:
        """The id of the job `ref` (id, name or unique id prefix) names among those `may_see` allows."""
        return self._table.resolve(ref, caller, may_see)

    def status(self, job_id: str) -> JobStatus:
        """A snapshot of one job (usage and output counters are live while it runs)."""
        return self._table.snapshot(self._table.get(job_id))

    def list(
        self,
        *,
        states: Collection[JobState] | None = None,
        owner: str | None = None,
        name: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[JobStatus]:
        """Jobs in start order, optionally only those in states, of owner, called name, with all labels."""
        return self._table.statuses(states=states, owner=owner, name=name, labels=labels)

    async def wait(self, job_id: str) -> JobStatus:
        """Return the final status once the job has ended."""
        job = self._table.get(job_id)
        await job.done.wait()
        return job.status

    async def stop(self, job_id: str, grace_seconds: float | None = None) -> JobStatus:
        """SIGTERM the whole job, SIGKILL after the grace period; returns the final status."""
        job = self._table.get(job_id)
        sup = job.supervisor
        if sup is None:
            raise JobNotRunningError(f"job {job_id} has already ended ({job.status.state.value})")
        grace = self._config.default_grace_seconds if grace_seconds is None else grace_seconds
        if grace < 0 or grace != grace:
            raise InvalidSpecError("grace period must not be negative")
        await sup.stop(grace)
        await job.done.wait()
        return job.status

    def delete(self, job_id: str) -> JobStatus:
        """Delete an ended job and its output; returns its last status. JobRunningError while it runs.

        Followers still reading keep their open spool file to its end.
        """
        status = self._table.remove(job_id)
        log.info("job deleted", extra={"job_id": job_id})
        return status

    def prune(
        self, ended_before: float, owner: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[JobStatus]:
        """Delete ended jobs (of `owner` or everyone, with all `labels`) that ended before `ended_before`."""
        return [self.delete(job_id) for job_id in self._table.ended_before(ended_before, owner, labels)]

    async def open_input(self, job_id: str) -> JobInput:
        """A writer to a running job's stdin (one at a time); InputUnavailableError when there can be none."""
        job = self._table.get(job_id)
        if job.supervisor is None:
            raise JobNotRunningError(f"job {job_id} has already ended ({job.status.state.value})")
        if not job.status.stdin:
            raise InputUnavailableError("the job was not started with its stdin open (start it with -i)")
        try:
            return await JobInput.open(job.directory / records.SOCKET, job_id)
        except OSError:
            # Its holder has just let go of the job's socket: the job is ending.
            raise JobNotRunningError(f"job {job_id} has ended") from None

    def resize_terminal(self, job_id: str, rows: int, cols: int) -> None:
        """Set the window size of a running job's terminal (its foreground process gets SIGWINCH)."""
        validation.check_terminal_size(rows, cols)
        job = self._table.get(job_id)
        if not job.status.tty:
            raise InputUnavailableError("the job has no terminal (start it with -t)")
        if job.supervisor is None:
            raise JobNotRunningError(f"job {job_id} has already ended ({job.status.state.value})")
        job.supervisor.tell(f"winsize {rows} {cols}")

    def signal(self, job_id: str, number: int) -> JobStatus:
        """Send one of SIGNALS to a running job's command, without stopping it; returns its status."""
        sig = validation.check_signal(number)
        job = self._table.get(job_id)
        sup = job.supervisor
        if sup is None:
            raise JobNotRunningError(f"job {job_id} has already ended ({job.status.state.value})")
        sup.signal_command(sig)
        log.info("job signaled", extra={"job_id": job_id, "signal": sig.name})
        return self._table.snapshot(job)

    def follow(
        self,
        job_id: str,
        selection: StreamSelection = StreamSelection.BOTH,
        offset: int = 0,
        *,
        follow: bool = True,
        window: OutputWindow | None = None,
        stop: asyncio.Future[None] | None = None,
    ) -> AsyncGenerator[OutputEvent, None]:
        """Output of the selected streams from offset, within window; with follow, live until the job ends
        (or stop is done while it waits for more).

        Close the generator (``aclose()``) when abandoning it early, so its file descriptor is freed at once.
        """
        job = self._table.get(job_id)
        if offset < 0:
            raise InvalidSpecError("offset must not be negative")
        window = validation.check_window(window or OutputWindow())
        assert job.spool is not None
        job.spool.check_window(window)
        return job.spool.follow(selection, offset, follow=follow, window=window, stop=stop)

    async def close(self, grace_seconds: float | None = None, *, stop_jobs: bool = True) -> None:
        """Refuse new jobs; stop every running one (SIGTERM, SIGKILL after the grace period), or with
        stop_jobs False leave them running with their holders for the next server to reattach."""
        self._closed = True
        if self._warmer is not None:
            await asyncio.to_thread(self._warmer.close)
            self._warmer = None
        grace = self._config.default_grace_seconds if grace_seconds is None else grace_seconds
        running = [job.supervisor for job in self._table if job.supervisor is not None]
        if stop_jobs:
            await asyncio.gather(*(sup.stop(grace) for sup in running), return_exceptions=True)
        else:
            await asyncio.gather(*(sup.detach() for sup in running), return_exceptions=True)
        await self._table.close()
        if self._fork_servers is not None:
            await asyncio.to_thread(self._fork_servers.close)
        left = sum(1 for job in self._table if not job.done.is_set())
        if left:
            # Their cgroups and prepared view stay: the next server reattaches them.
            log.info("jobs left running for the next server", extra={"count": left})
            return
        if self._sandbox is not None:
            # After the fork servers: their mount namespaces held the prepared view on this directory.
            self._sandbox.close()
        try:
            await asyncio.to_thread(self._driver.close)
        except CgroupError as e:
            log.warning("could not remove every job cgroup", extra={"error": str(e)})


def _ended_status(job: JobRow, end: Ending) -> JobStatus:
    """job's final status: how it ended, and what its spool holds."""
    status = dataclasses.replace(
        job.status,
        state=end.state,
        exit_code=end.exit_code,
        signal=end.signal,
        ended_at=end.ended_at,
        usage=end.usage,
    )
    return with_output(status, job.spool)


def _launch_error(spec: JobSpec, cwd: str, error: LaunchError) -> StartError | InvalidSpecError:
    """The one-line error a failed launch means to the caller, by the step that failed."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.kind == "cwd":
        if error.errno == errno.ENOENT:
            return InvalidSpecError(f"working directory {cwd} does not exist in the job's view")
        if error.errno == errno.ENOTDIR:
            return InvalidSpecError(f"working directory {cwd} is not a directory")
        return InvalidSpecError(f"working directory {cwd}: {reason}")
    if error.kind == "exec":
        if error.errno == errno.ENOENT:
            where = "" if "/" in spec.command else " in PATH"
            return StartError(f"executable {spec.command!r} not found{where}")
        if error.errno in (errno.EACCES, errno.EISDIR, errno.EPERM):
            return StartError(f"{spec.command!r} is not executable")
        if error.errno == errno.ENOEXEC:
            return StartError(f"{spec.command!r} is not in an executable format")
        return StartError(f"cannot start {spec.command!r}: {reason}")
    if error.errno in (errno.EAGAIN, errno.ENOMEM):
        return StartError(
            f"cannot start {spec.command!r}: the job's limits leave no room to start it ({reason})"
        )
    return StartError(f"cannot start {spec.command!r}: {error}")


def _prepare_job_files(directory: Path, status: JobStatus) -> None:
    """Write a new job's record and empty spool (in a thread); OSError ENOSPC when the disk has no room."""
    vfs = os.statvfs(directory)
    free = (vfs.f_bfree if os.geteuid() == 0 else vfs.f_bavail) * vfs.f_frsize
    if free < _MIN_FREE_BYTES:
        raise OSError(errno.ENOSPC, f"{free} bytes free on the state disk")
    output.create(directory / records.SPOOL)
    records.save(directory, status)


def _holder_files(directory: Path, cap_bytes: int) -> HolderFiles:
    return HolderFiles(
        spool=directory / records.SPOOL,
        index=directory / records.INDEX,
        exit_file=directory / records.EXIT,
        socket=directory / records.SOCKET,
        cap_bytes=cap_bytes,
    )


def _raise_capacity(error: OSError) -> None:
    """Raise the capacity error an OSError of a Start means, if it means one."""
    if error.errno in _OUT_OF_FDS:
        raise CapacityError(_OUT_OF_FDS_MESSAGE) from None
    if error.errno in _DISK_FULL:
        raise StorageFullError(_DISK_FULL_MESSAGE) from None


async def _probe(sandbox_args: tuple[str, ...]) -> None:
    """Run `true` in namespaces (and the sandbox, given its flags) through a fresh shim; raise if it fails."""
    true = shutil.which("true", path=validation.DEFAULT_PATH) or "/bin/true"
    spec = LaunchSpec(
        (true,), validation.job_environment({}), "/", namespaces=True, sandbox_args=sandbox_args
    )
    link = await HolderLink.start(spec)
    try:
        await link.wait_started(_START_TIMEOUT)
    finally:
        await link.status.closed


def _starting_status(job_id: str, spec: JobSpec, cwd: str, limits: Limits) -> JobStatus:
    """The record of a job about to start (its pid is known once it runs)."""
    return JobStatus(
        id=job_id,
        owner=spec.owner,
        command=spec.command,
        args=tuple(spec.args),
        cwd=cwd,
        state=JobState.RUNNING,
        pid=0,
        started_at=time.time(),
        limits=limits,
        stdin=spec.stdin or spec.terminal is not None,
        tty=spec.terminal is not None,
        name=spec.name,
        labels=dict(spec.labels),
    )


async def _remove_cgroup(cgroup: JobCgroup) -> None:
    """Remove the cgroup of a job that did not start; a failure here must not hide why it did not."""
    with contextlib.suppress(Exception):
        await asyncio.to_thread(cgroup.remove)


async def _abandon(link: HolderLink) -> None:
    """Kill a job whose start failed and wait for its holder, so nothing outlives a failed Start."""
    link.send_signal(signal.SIGKILL, group=False)
    if link.holder_pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(link.holder_pid, signal.SIGKILL)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(link.status.closed), 10)
    link.close()
