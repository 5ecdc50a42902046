"""One running job as the server sees it: its holder's reports, its cgroup, and the path to a final state.

The job's holder (spawn, _holder) owns the pipes and writes the spool and the exit file; the supervisor
follows it: spool progress wakes followers, the end comes from the exit file. A supervisor can be
detached (the server shuts down and leaves the job running) and a later one reattached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobworker.engine import records
from jobworker.engine.cgroups import CgroupStats, JobCgroup
from jobworker.engine.errors import JobStuckError
from jobworker.engine.job import JobState, Usage
from jobworker.engine.output import OutputSpool
from jobworker.engine.spawn import HolderLink

log = logging.getLogger("jobworker.engine")

# How long stop() waits for the kernel to take the job down after SIGKILL.
_KILL_TIMEOUT = 10.0


class JobSupervisor:
    """Follows a job's holder until the job has ended, and turns its end into a final state."""

    def __init__(
        self,
        link: HolderLink,
        cgroup: JobCgroup,
        spool: OutputSpool,
        directory: Path,
        *,
        on_end: Callable[[JobSupervisor], None],
    ) -> None:
        self._link = link
        self._cgroup = cgroup
        self._spool = spool
        self._directory = directory
        self._on_end = on_end
        self._stop_requested = False
        self._detached = False
        # How the job ended, once it has (the supervisor's one result).
        self.end: Ending | None = None
        self.done = asyncio.Event()
        spool.update(link.progress)
        link.on_progress = spool.update
        self._task = asyncio.create_task(self._supervise(), name=f"job-supervisor-{link.pid}")

    @property
    def pid(self) -> int:
        return self._link.pid

    def usage(self) -> Usage:
        """Resources used so far (live while running, final afterwards)."""
        if self.end is not None:
            return self.end.usage
        return _usage(self._read_stats())

    def _read_stats(self) -> CgroupStats | None:
        try:
            return self._cgroup.stats()
        except Exception:  # stats are best effort; a vanished cgroup must not fail a status call
            return None

    def signal_job(self, sig: int) -> None:
        """Deliver sig to the whole job: init forwards it to every process of its namespace."""
        self._link.send_signal(sig, group=not self._link.status.namespaces)

    def signal_command(self, sig: int) -> None:
        """Deliver sig to the job's command only: through init, which forwards it, under a PID namespace;
        straight to it otherwise (the pid is the command's then). The stop signals reach the whole job."""
        self._link.send_signal(sig, group=False)

    def tell(self, line: str) -> None:
        """Pass one line of the holder's protocol on (a terminal's window size)."""
        self._link.tell(line)

    async def kill(self) -> None:
        """SIGKILL every process of the job, including those that left its process group."""
        self.signal_job(signal.SIGKILL)
        try:
            await asyncio.to_thread(self._cgroup.kill)
        except Exception as e:  # the process-level kill above already happened
            log.warning("cgroup kill failed", extra={"error": str(e)})

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period; returns once the job has ended."""
        if self.done.is_set():
            return
        self._stop_requested = True
        # Into the exit file: a job stopped just before a server restart still ends STOPPED.
        self._link.tell("stopping")
        self.signal_job(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.done.wait(), grace_seconds)
        except TimeoutError:
            await self.kill()
            try:
                await asyncio.wait_for(self.done.wait(), _KILL_TIMEOUT)
            except TimeoutError:
                raise JobStuckError(
                    f"the job's processes did not exit within {_KILL_TIMEOUT:g} s of SIGKILL "
                    "(stuck in the kernel, e.g. on IO); the stop goes on in the background"
                ) from None

    async def detach(self) -> None:
        """Stop following the job and leave it running with its holder (a later server reattaches)."""
        if self.done.is_set():
            return
        self._detached = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._link.close()

    async def _supervise(self) -> None:
        try:
            await self._link.status.closed
            # The exit file is the truth, whether or not the holder had time to say "end" to us.
            facts = await asyncio.to_thread(load_exit, self._directory)
            if facts is None:
                await self._holder_lost()
            st = self._link.status
            self.end = ending(
                facts,
                self._cgroup,
                stop_requested=self._stop_requested,
                exit_code=st.exit_code,
                signal_number=st.signal,
            )
        finally:
            if not self._detached:
                if self.end is None:  # the supervision itself failed: nothing is known of the end
                    self.end = Ending(JobState.LOST, None, None, time.time(), Usage())
                self._spool.finish()
                self._on_end(self)
                self.done.set()

    async def _holder_lost(self) -> None:
        """The holder died before the job's end was recorded: take down what is left, count what is stored."""
        self.signal_job(signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._cgroup.kill)
        try:
            await asyncio.to_thread(self._cgroup.remove)
        except Exception as e:
            log.warning("cgroup removal failed", extra={"error": str(e)})
        await asyncio.to_thread(self._spool.recover)


def load_exit(directory: Path) -> records.ExitFacts | None:
    """The job's exit file; None (with a warning) when it is missing or unreadable."""
    try:
        return records.load_exit(directory)
    except (OSError, ValueError) as e:
        log.warning("unreadable exit file", extra={"path": str(directory), "error": str(e)})
        return None


@dataclass(frozen=True)
class Ending:
    """How a job ended."""

    state: JobState
    exit_code: int | None
    signal: int | None
    ended_at: float
    usage: Usage


def ending(
    facts: records.ExitFacts | None,
    cgroup: JobCgroup,
    *,
    stop_requested: bool = False,
    exit_code: int | None = None,
    signal_number: int | None = None,
) -> Ending:
    """A job's final state from its holder's exit file, or from what is known without one (the exit
    status the holder reported before it died, if any: else the job is LOST)."""
    stats: CgroupStats | None = None
    ended_at = time.time()
    if facts is not None:
        exit_code, signal_number, ended_at = facts.exit_code, facts.signal, facts.ended_at
        stop_requested = stop_requested or facts.stop_requested
        with contextlib.suppress(Exception):  # usage is best effort
            stats = cgroup.stats_from(facts.stats)
    oom = stats is not None and stats.oom_kills > 0 and signal_number == signal.SIGKILL
    if exit_code is None and signal_number is None:
        state = JobState.LOST
    elif stop_requested:
        state = JobState.STOPPED
    elif oom:
        state = JobState.OOM_KILLED
    elif exit_code is not None:
        state = JobState.EXITED
    else:
        state = JobState.SIGNALED
    return Ending(state, exit_code, signal_number, ended_at, _usage(stats))


def _usage(stats: CgroupStats | None) -> Usage:
    if stats is None:
        return Usage()
    return Usage(
        cpu_seconds=stats.cpu_seconds, memory_peak_bytes=stats.memory_peak_bytes, oom_kills=stats.oom_kills
    )
