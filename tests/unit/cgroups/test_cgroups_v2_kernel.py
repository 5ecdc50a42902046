"""The cgroup v2 driver's kill, wait and removal against the real kernel (no controllers needed)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from cgroupfs_helpers import SLEEP, python, wait_exited

from jobworker.engine.cgroups import CgroupError
from jobworker.engine.cgroups._v2 import V2Driver, V2JobCgroup
from jobworker.engine.job import Limits

pytestmark = pytest.mark.root

ESCAPE = (
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        os.execvp('sleep', ['sleep', '300'])\n"
    "    print(pid, flush=True)\n"
    "    os._exit(0)\n"
    "os.wait()\n"
) + SLEEP


def start_escaper(cgroup: V2JobCgroup) -> tuple[subprocess.Popen[str], int]:
    """A child in the cgroup with a setsid'd, double-forked grandchild; returns (child, pidfd)."""
    child = python(ESCAPE, cgroup.procs_files, stdout=subprocess.PIPE)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    assert child.stdout.readline() == "joined\n"
    assert sorted(cgroup.pids()) == sorted([child.pid, grandchild])
    assert os.getsid(grandchild) != os.getsid(child.pid)
    return child, os.pidfd_open(grandchild)


def test_limits_need_controllers_this_mount_lacks(real_v2: V2Driver) -> None:
    assert not real_v2.supports_limits()
    with pytest.raises(CgroupError, match="controller 'pids' is not available"):
        real_v2.create("limited", Limits(pids=4))
    assert not Path(real_v2.jobs_dir, "limited").exists()


def test_cgroup_kill_reaches_a_setsid_grandchild(real_v2: V2Driver) -> None:
    cgroup = real_v2.create("escape", Limits())
    child, pid_fd = start_escaper(cgroup)
    try:
        cgroup.kill()

        assert child.wait(timeout=10) == -signal.SIGKILL
        assert wait_exited(pid_fd)
    finally:
        os.close(pid_fd)
        child.kill()
        child.communicate()
    cgroup.remove()
    assert not Path(cgroup.path).exists()


def test_freeze_fallback_reaches_a_setsid_grandchild(real_v2: V2Driver) -> None:
    cgroup = real_v2.create("frozen", Limits())
    child, pid_fd = start_escaper(cgroup)
    try:
        # The path taken on kernels 5.2-5.13, which have cgroup.freeze but no cgroup.kill.
        cgroup._freeze_and_kill()

        assert child.wait(timeout=10) == -signal.SIGKILL
        assert wait_exited(pid_fd)
        assert Path(cgroup.path, "cgroup.freeze").read_text() == "0\n"
    finally:
        os.close(pid_fd)
        child.kill()
        child.communicate()
    cgroup.remove()


def test_remove_kills_waits_for_populated_0_and_removes(real_v2: V2Driver) -> None:
    cgroup = real_v2.create("leftover", Limits())
    child = python(SLEEP, cgroup.procs_files, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "joined\n"
        assert cgroup.stats().cpu_seconds is not None

        cgroup.remove()
        cgroup.remove()

        assert not Path(cgroup.path).exists()
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
        child.communicate()


def test_signal_all_delivers_sigterm(real_v2: V2Driver) -> None:
    cgroup = real_v2.create("term", Limits())
    child = python(SLEEP, cgroup.procs_files, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "joined\n"

        cgroup.signal_all(signal.SIGTERM)

        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        child.communicate()
    cgroup.remove()
