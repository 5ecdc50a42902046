"""The kernel operations with side effects that the drivers perform, behind one seam.

cgroupfs is not a plain filesystem: mkdir populates interface files, writes are validated and act
(moving processes, killing them), rmdir succeeds on a directory full of files. Drivers reach the
kernel only through Host so that unit tests can substitute a small fake that mirrors those rules on
a tmp_path tree. Reads stay plain file reads: the fake keeps real files.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Iterable
from typing import Protocol

from ._base import CgroupError, os_error_line


class Host:
    """The real kernel: cgroupfs mkdir/rmdir/write, signals and change notification."""

    def mkdir(self, path: str) -> None:
        """Create one cgroup directory (raises FileExistsError when it exists)."""
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        """Remove one empty cgroup directory."""
        os.rmdir(path)

    def write(self, path: str, value: str) -> None:
        """Write value to an existing interface file in one write(2); never creates files."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)

    def kill(self, pid: int, sig: int) -> None:
        """Send sig to pid; a process that is already gone is not an error."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def wait_changed(self, fd: int, timeout: float) -> None:
        """Block until the kernfs file open at fd reports a change, or timeout seconds pass."""
        # kernfs wakes POLLPRI waiters when a file such as cgroup.events changes.
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        poller.poll(max(0, int(timeout * 1000)))

    def sleep(self, seconds: float) -> None:
        """Pause between re-reads of files that have no change notification (v1)."""
        time.sleep(seconds)

    def monotonic(self) -> float:
        """Clock for bounded waits."""
        return time.monotonic()

    def own_pid(self) -> int:
        """This process's pid, as cgroup.procs lists it."""
        return os.getpid()


def write_or_raise(host: Host, path: str, value: str) -> None:
    """host.write, turning OSError into a one-line CgroupError naming the file and value."""
    try:
        host.write(path, value)
    except OSError as err:
        raise CgroupError(f"cannot write {value.strip()!r} to {path}: {os_error_line(err)}") from err


def mkdir_exist_ok(host: Host, path: str) -> None:
    """host.mkdir that accepts an existing directory and reports failures as CgroupError."""
    if os.path.isdir(path):
        return
    try:
        host.mkdir(path)
    except FileExistsError:
        pass
    except OSError as err:
        raise CgroupError(f"cannot create cgroup {path}: {os_error_line(err)}") from err


def rmdir_until(host: Host, path: str, deadline: float) -> None:
    """rmdir path, retrying while the kernel still reports it busy, until deadline."""
    while True:
        try:
            host.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if host.monotonic() >= deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {os_error_line(err)}") from err
        host.sleep(0.01)


def subdirs(path: str) -> list[str]:
    """Sorted child directories of path; empty when path does not exist."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


class _Removable(Protocol):
    def remove(self) -> None: ...


def remove_all(cgroups: Iterable[_Removable]) -> int:
    """remove() each cgroup, trying all before reporting the first failure; return the count."""
    count = 0
    failures: list[CgroupError] = []
    for cgroup in cgroups:
        try:
            cgroup.remove()
        except CgroupError as err:
            failures.append(err)
        count += 1
    if failures:
        raise CgroupError(f"{len(failures)} stale cgroup(s) could not be removed: {failures[0]}")
    return count
