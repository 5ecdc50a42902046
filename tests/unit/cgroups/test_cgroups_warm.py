"""The cgroup attach warm-up: what it writes, when it stops, and that it never moves the server."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from jobworker.engine.cgroups._v1 import V1Driver
from jobworker.engine.cgroups._warm import AttachWarmer, start_warmer


def _until(condition: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _membership(tmp_path: Path, text: str = "4:memory:/srv\n") -> Path:
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return path


def test_it_writes_only_after_a_kick_and_stops_when_the_window_ends(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    warmer = AttachWarmer(str(procs), window=0.3, period=0.01, proc_self_cgroup=str(_membership(tmp_path)))
    try:
        time.sleep(0.1)  # no Start yet: nothing may be written
        assert warmer.touches == 0
        warmer.kick()
        assert _until(lambda: warmer.touches >= 5)
        written = procs.read_text()
        assert written.isdigit()
        assert os.path.isdir(f"/proc/self/task/{written}"), "only ever a thread of ours"
        time.sleep(0.5)  # past the window (no event marks the absence of writes)
        settled = warmer.touches
        time.sleep(0.1)
        assert warmer.touches == settled
        assert warmer.active, "it waits for the next kick"
    finally:
        warmer.close()
    assert not warmer.active


def test_it_gives_up_when_the_server_was_moved_elsewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    membership = _membership(tmp_path)
    warmer = AttachWarmer(str(procs), window=5, period=0.01, proc_self_cgroup=str(membership))
    try:
        membership.write_text("4:memory:/somewhere-else\n")
        with caplog.at_level(logging.WARNING, logger="jobworker.engine"):
            warmer.kick()
            assert _until(lambda: not warmer.active)
        assert warmer.touches == 0, "moving the server back is not ours to do"
        assert "moved to another cgroup" in caplog.text
    finally:
        warmer.close()


def test_it_gives_up_when_a_write_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Opens for writing, refuses every write (ENOSPC), as a cgroup file of a vanished cgroup would.
    warmer = AttachWarmer("/dev/full", window=5, proc_self_cgroup=str(_membership(tmp_path)))
    try:
        with caplog.at_level(logging.WARNING, logger="jobworker.engine"):
            warmer.kick()
            assert _until(lambda: not warmer.active)
        assert "cgroup attach warm-up stopped" in caplog.text
    finally:
        warmer.close()


def test_it_holds_its_descriptors_for_its_whole_life(tmp_path: Path) -> None:
    """No descriptor comes and goes per write: a server's fd count stays what it was."""
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    warmer = AttachWarmer(str(procs), window=0.3, proc_self_cgroup=str(_membership(tmp_path)))
    try:
        before = sorted(os.listdir("/proc/self/fd"))
        warmer.kick()
        assert _until(lambda: warmer.touches >= 5)
        assert sorted(os.listdir("/proc/self/fd")) == before
    finally:
        warmer.close()


def test_no_warmer_without_a_cgroup_to_write_to(tmp_path: Path) -> None:
    assert start_warmer(None) is None
    assert start_warmer(str(tmp_path / "missing" / "cgroup.procs")) is None


def test_on_the_real_kernel_the_server_stays_in_its_cgroup(real_v1: V1Driver) -> None:
    before = Path("/proc/self/cgroup").read_text()
    assert real_v1.warm_attach_file is not None
    assert Path(real_v1.warm_attach_file).name == "tasks"
    assert os.getpid() in [int(p) for p in Path(real_v1.warm_attach_file).read_text().split()]
    warmer = start_warmer(real_v1.warm_attach_file)
    assert warmer is not None
    try:
        warmer.kick()
        assert _until(lambda: warmer.touches >= 5)
        assert warmer.active, "the kernel took every write"
    finally:
        warmer.close()
    assert Path("/proc/self/cgroup").read_text() == before
    for thread in os.listdir("/proc/self/task"):  # every thread of ours too, the warm-up's included
        assert Path(f"/proc/self/task/{thread}/cgroup").read_text() == before
