"""One running job: its launched process, cgroup, output drainers and the path to a final status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from jobworker.engine.cgroups import CgroupStats, JobCgroup
from jobworker.engine.errors import JobStuckError
from jobworker.engine.job import JobState, Stream, Usage
from jobworker.engine.output import MAX_RECORD, OutputSpool
from jobworker.engine.spawn import Launched

log = logging.getLogger("jobworker.engine")

_DRAIN_READ = MAX_RECORD
# After the job's processes are gone, output still in the pipes is drained; a process that escaped the job
# (only possible without namespaces and cgroups) could hold a pipe open forever, so give up after this long.
_DRAIN_AFTER_EXIT_TIMEOUT = 2.0
# How long stop() waits for the kernel to take the job down after SIGKILL.
_KILL_TIMEOUT = 10.0


class JobSupervisor:
    """Drains a job's output into its spool and turns the shim's report into a final state."""

    def __init__(
        self,
        launched: Launched,
        cgroup: JobCgroup,
        spool: OutputSpool,
        *,
        namespaces: bool,
        on_end: Callable[[JobSupervisor], None],
    ) -> None:
        self._launched = launched
        self._cgroup = cgroup
        self._spool = spool
        self._namespaces = namespaces
        self._on_end = on_end
        self._stop_requested = False
        self.state = JobState.RUNNING
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.ended_at: float | None = None
        self.final_usage: Usage | None = None
        self.done = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._drained = {
            Stream.STDOUT: loop.create_future(),
            Stream.STDERR: loop.create_future(),
        }
        self._fds = {Stream.STDOUT: launched.stdout_fd, Stream.STDERR: launched.stderr_fd}
        for stream, fd in self._fds.items():
            loop.add_reader(fd, self._drain, stream)
        self._task = asyncio.create_task(self._supervise(), name=f"job-supervisor-{launched.pgid}")

    @property
    def pid(self) -> int:
        return self._launched.status.pid

    def usage(self) -> Usage:
        """Resources used so far (live while running, final afterwards)."""
        if self.final_usage is not None:
            return self.final_usage
        return _usage(self._read_stats())

    def _read_stats(self) -> CgroupStats | None:
        try:
            return self._cgroup.stats()
        except Exception:  # stats are best effort; a vanished cgroup must not fail a status call
            return None

    def _drain(self, stream: Stream) -> None:
        fd = self._fds[stream]
        try:
            data = os.read(fd, _DRAIN_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._spool.append(stream, data)
        else:
            self._close_pipe(stream)

    def _close_pipe(self, stream: Stream) -> None:
        fd = self._fds[stream]
        if fd < 0:
            return
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        self._fds[stream] = -1
        if not self._drained[stream].done():
            self._drained[stream].set_result(None)

    def signal_job(self, sig: int) -> None:
        """Deliver sig to the whole job: init forwards it to every process of its namespace."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._namespaces and self.pid:
                os.kill(self.pid, sig)
            else:
                os.killpg(self._launched.pgid, sig)

    def signal_command(self, sig: int) -> None:
        """Deliver sig to the job's command only: through init, which forwards it, under a PID namespace;
        straight to it otherwise (the pid is the command's then). The stop signals reach the whole job."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.pid:
                os.kill(self.pid, sig)

    async def kill(self) -> None:
        """SIGKILL every process of the job, including those that left its process group."""
        self.signal_job(signal.SIGKILL)
        if not self._namespaces:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._launched.pgid, signal.SIGKILL)
        try:
            await asyncio.to_thread(self._cgroup.kill)
        except Exception as e:  # the process-level kill above already happened
            log.warning("cgroup kill failed", extra={"error": str(e)})

    async def stop(self, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace period; returns once the job has ended."""
        if self.done.is_set():
            return
        self._stop_requested = True
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

    async def _supervise(self) -> None:
        try:
            await self._launched.status.closed
            # The job's main process tree is gone; take down anything it left behind.
            if not self._namespaces:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._launched.pgid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._cgroup.kill)
            try:
                await asyncio.wait_for(asyncio.gather(*self._drained.values()), _DRAIN_AFTER_EXIT_TIMEOUT)
            except TimeoutError:
                log.warning("output pipe held open after the job ended; closing it")
            for stream in (Stream.STDOUT, Stream.STDERR):
                self._close_pipe(stream)
            stats = self._read_stats()
            self.final_usage = _usage(stats)
            self._decide_state(stats)
            try:
                await asyncio.to_thread(self._cgroup.remove)
            except Exception as e:
                log.warning("cgroup removal failed", extra={"error": str(e)})
        finally:
            self.ended_at = time.time()
            if self.state is JobState.RUNNING:
                self.state = JobState.LOST
            self._spool.finish()
            self._on_end(self)
            self.done.set()

    def _decide_state(self, stats: CgroupStats | None) -> None:
        st = self._launched.status
        self.exit_code, self.signal = st.exit_code, st.signal
        oom = stats is not None and stats.oom_kills > 0 and st.signal == signal.SIGKILL
        if self._stop_requested:
            self.state = JobState.STOPPED
        elif oom:
            self.state = JobState.OOM_KILLED
        elif st.exit_code is not None:
            self.state = JobState.EXITED
        elif st.signal is not None:
            self.state = JobState.SIGNALED
        else:
            self.state = JobState.LOST


def _usage(stats: CgroupStats | None) -> Usage:
    if stats is None:
        return Usage()
    return Usage(
        cpu_seconds=stats.cpu_seconds, memory_peak_bytes=stats.memory_peak_bytes, oom_kills=stats.oom_kills
    )
