"""Keeping the kernel's cgroup attach path fast while jobs are being started.

Every write to a cgroup.procs file takes the kernel's global cgroup_threadgroup_rwsem for writing. Unless the
hierarchy is mounted with ``favordynmods`` (Linux 6.0+, a host setting), the first such write after a quiet
spell waits for an RCU grace period (``percpu_down_write -> rcu_sync_enter -> synchronize_rcu``): 6-15 ms on
this 2-vCPU VM, against 0.1 ms when another write came less than ~20 ms before. A job's init joins its
cgroup with such a write, so a job started on its own paid the whole grace period.

While jobs are being started (for WINDOW_S after the last Start), a thread of ours writes its own thread id
into the cgroup it already is in, every PERIOD_S: a no-op move that keeps the semaphore in its writer state,
so init's join finds it there. (Its id, not "0": v1's `tasks` takes the semaphore only for a named task.)
That is ``favordynmods``' own trade, for a few seconds only: forks and exits on the host take the
semaphore's slower shared path meanwhile. The first Start after a quiet spell still waits, but only for the
rest of a grace period, which began alongside its other set-up work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

log = logging.getLogger("jobworker.engine")

# How long after a Start the attach path is kept warm, and how often it is touched meanwhile: measured
# here, a write every 10 ms kept attaches at p90 0.21 ms, every 20 ms let p90 reach 4.3 ms; 10 ms costs
# about 16 ms of CPU per second (1.6% of a core) while active.
WINDOW_S = 2.0
PERIOD_S = 0.01


def _read_all(fd: int) -> bytes:
    """The whole of a (proc) file open at fd, read from its start."""
    parts, offset = [], 0
    while chunk := os.pread(fd, 4096, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


class AttachWarmer:
    """Keeps cgroup attach fast for WINDOW_S after each kick() by no-op moves of ours into our own cgroup
    (`attach_file`: v1's tasks or v2's cgroup.procs of the cgroup we are in).

    It stops for good, with one log line, when a write fails or our cgroup membership changed under us
    (someone else moved the server: moving it back is not ours to do).
    """

    def __init__(
        self,
        attach_file: str,
        *,
        window: float = WINDOW_S,
        period: float = PERIOD_S,
        proc_self_cgroup: str = "/proc/self/cgroup",
    ) -> None:
        # Opened once: a file opened per write would come and go among the server's descriptors.
        self._fd = os.open(attach_file, os.O_WRONLY | os.O_CLOEXEC)
        self._window, self._period = window, period
        try:
            self._membership_fd = os.open(proc_self_cgroup, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self._fd)
            raise
        self._membership = _read_all(self._membership_fd)
        self._until = 0.0
        self._wake = threading.Event()
        self._closed = False
        self.touches = 0
        self._thread = threading.Thread(target=self._run, name="jw-cgroup-warm", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """A job is about to join its cgroup: warm the attach path now and for WINDOW_S more."""
        self._until = time.monotonic() + self._window
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(5)
        if not self._thread.is_alive():
            os.close(self._fd)
            os.close(self._membership_fd)

    @property
    def active(self) -> bool:
        """Whether it still warms (False once it gave up)."""
        return self._thread.is_alive() and not self._closed

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                if _read_all(self._membership_fd) != self._membership:
                    log.warning("cgroup attach warm-up stopped: the server was moved to another cgroup")
                    return
                me = str(threading.get_native_id()).encode()
                while not self._closed and time.monotonic() < self._until:
                    os.pwrite(self._fd, me, 0)
                    self.touches += 1
                    # A timer between writes, not a synchronisation: nothing waits for this thread.
                    time.sleep(self._period)
            except OSError as err:
                log.warning("cgroup attach warm-up stopped", extra={"reason": err.strerror or str(err)})
                return


def start_warmer(attach_file: str | None) -> AttachWarmer | None:
    """An AttachWarmer for the server's own cgroup, or None where there is none to write to."""
    if attach_file is None:
        return None
    with contextlib.suppress(OSError):  # no such file, or not ours to write: no warm-up
        return AttachWarmer(attach_file)
    return None
