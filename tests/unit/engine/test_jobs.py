"""Start, stop, status and list: what a caller of the engine sees."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from engine_helpers import collect

from jobworker.engine import (
    CapacityError,
    EngineConfig,
    InvalidSpecError,
    Isolation,
    JobManager,
    JobNotFoundError,
    JobNotRunningError,
    JobSpec,
    JobState,
    Limits,
    LimitsUnsupportedError,
    OutputChunk,
    StartError,
    Stream,
)

# The job runs as another user in its own view of the host: the venv (under /root here) may be out of
# its reach, the system python3 on the job's PATH is not.
PY = "python3"


async def wait_for_output(mgr: JobManager, job_id: str, needle: bytes) -> None:
    """Return once the job has printed needle: the job's own signal that it is ready."""
    seen = b""
    async for event in mgr.follow(job_id):
        if isinstance(event, OutputChunk):
            seen += event.data
            if needle in seen:
                return
    raise AssertionError(f"job ended without printing {needle!r}")


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains marker (to prove nothing of a job survives)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


async def test_exit_code_and_output(manager: JobManager) -> None:
    status = await manager.start(JobSpec("sh", ("-c", "echo hello; exit 3"), owner="alice"))
    uuid.UUID(status.id, version=4)
    assert status.state is JobState.RUNNING
    assert status.owner == "alice"
    final = await manager.wait(status.id)
    assert final.state is JobState.EXITED
    assert final.exit_code == 3
    assert final.signal is None
    assert final.ended_at is not None
    assert final.ended_at >= final.started_at
    assert final.stdout_bytes == 6
    chunks = await collect(manager, status.id)
    assert b"".join(c.data for c in chunks) == b"hello\n"


async def test_signal_death_is_reported_as_signal(manager: JobManager) -> None:
    status = await manager.start(JobSpec("sh", ("-c", "kill -KILL $$")))
    final = await manager.wait(status.id)
    assert final.state is JobState.SIGNALED
    assert final.signal == signal.SIGKILL
    assert final.exit_code is None


async def test_job_environment_is_minimal(manager: JobManager) -> None:
    os.environ["JW_TEST_SECRET"] = "server-only"
    try:
        status = await manager.start(JobSpec("env", env={"GREETING": "hi"}))
        await manager.wait(status.id)
    finally:
        del os.environ["JW_TEST_SECRET"]
    lines = b"".join(c.data for c in await collect(manager, status.id)).decode().splitlines()
    names = {line.split("=", 1)[0] for line in lines}
    strict = manager.info.isolation is Isolation.STRICT
    assert names == ({"PATH", "GREETING", "HOME"} if strict else {"PATH", "GREETING"})
    assert "GREETING=hi" in lines
    if strict:
        assert "HOME=/job" in lines


async def test_cwd_is_used(manager: JobManager, shared_dir: Path) -> None:
    status = await manager.start(JobSpec("pwd", cwd=str(shared_dir)))
    await manager.wait(status.id)
    out = b"".join(c.data for c in await collect(manager, status.id))
    assert out == f"{shared_dir}\n".encode()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JobSpec("definitely-not-a-command-xyz"), "not found"),
        (JobSpec("/nonexistent/bin/tool"), "not found"),
        (JobSpec("/tmp"), "not executable"),
        (JobSpec("true", cwd="/nonexistent-dir"), "/nonexistent-dir does not exist"),
        (JobSpec("true", cwd="/etc/os-release"), "/etc/os-release is not a directory"),
    ],
)
async def test_start_errors_leave_no_record(
    plain_manager: JobManager, tmp_path: Path, spec: JobSpec, message: str
) -> None:
    with pytest.raises((StartError, InvalidSpecError), match=message):
        await plain_manager.start(spec)
    assert plain_manager.list() == []
    assert list((tmp_path / "state" / "jobs").iterdir()) == []


async def test_start_error_for_files_that_cannot_be_executed(manager: JobManager, shared_dir: Path) -> None:
    plain = shared_dir / "notes.txt"
    plain.write_text("hello")
    plain.chmod(0o644)
    garbage = shared_dir / "garbage"
    garbage.write_bytes(b"\x00\x01 not an executable format")
    garbage.chmod(0o755)
    with pytest.raises(StartError, match="not executable"):
        await manager.start(JobSpec(str(plain)))
    with pytest.raises(StartError, match="not in an executable format"):
        await manager.start(JobSpec(str(garbage)))
    assert manager.list() == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JobSpec(""), "must not be empty"),
        (JobSpec("echo", ("a\0b",)), "NUL"),
        (JobSpec("ec\0ho"), "NUL"),
        (JobSpec("env", env={"A": "x\0y"}), "NUL"),
        (JobSpec("env", env={"A=B": "x"}), "name"),
        (JobSpec("env", env={"": "x"}), "name"),
        (JobSpec("true", cwd="relative/dir"), "absolute"),
        (JobSpec("true", limits=Limits(memory_bytes=-1)), "positive"),
        (JobSpec("true", limits=Limits(cpus=float("nan"))), "finite"),
    ],
)
async def test_invalid_specs_are_rejected(plain_manager: JobManager, spec: JobSpec, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        await plain_manager.start(spec)
    assert plain_manager.list() == []


async def test_limits_over_ceiling_name_the_ceiling(tmp_path: Path) -> None:
    mgr = JobManager(
        EngineConfig(
            state_dir=tmp_path,
            isolation=Isolation.NONE,
            namespaces=False,
            cgroups=False,
            default_limits=Limits(),
            max_limits=Limits(pids=100),
        )
    )
    await mgr.open()
    with pytest.raises(InvalidSpecError, match="exceeds the server ceiling of 100"):
        await mgr.start(JobSpec("true", limits=Limits(pids=1000)))
    await mgr.close()


async def test_limits_refused_where_cgroups_are_unavailable(plain_manager: JobManager) -> None:
    assert not plain_manager.info.limits_supported
    with pytest.raises(LimitsUnsupportedError, match="cannot be enforced"):
        await plain_manager.start(JobSpec("true", limits=Limits(memory_bytes=1 << 26)))


async def test_capacity_limit(tmp_path: Path) -> None:
    mgr = JobManager(
        EngineConfig(
            state_dir=tmp_path, isolation=Isolation.NONE, namespaces=False, cgroups=False, max_running_jobs=1
        )
    )
    await mgr.open()
    first = await mgr.start(JobSpec("sleep", ("30",)))
    with pytest.raises(CapacityError):
        await mgr.start(JobSpec("true"))
    await mgr.stop(first.id, grace_seconds=5)
    second = await mgr.start(JobSpec("true"))
    await mgr.wait(second.id)
    await mgr.close()


async def test_stop_terminates_and_reports_stopped(manager: JobManager) -> None:
    status = await manager.start(JobSpec("sleep", ("1000",)))
    final = await manager.stop(status.id, grace_seconds=5)
    assert final.state is JobState.STOPPED
    assert final.signal == signal.SIGTERM
    assert manager.status(status.id).state is JobState.STOPPED


async def test_stop_escalates_to_sigkill_for_children_ignoring_sigterm(
    manager: JobManager,
) -> None:
    marker = f"{uuid.uuid4().int % 10**6}.25"
    script = f"trap '' TERM; sleep {marker} & sleep {marker} & echo ready; wait; wait"
    status = await manager.start(JobSpec("sh", ("-c", script)))
    await wait_for_output(manager, status.id, b"ready")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    final = await manager.stop(status.id, grace_seconds=0.5)
    assert loop.time() - t0 >= 0.5
    assert final.state is JobState.STOPPED
    assert processes_with(marker) == []


async def test_stop_kills_background_and_daemonised_children(manager: JobManager) -> None:
    marker = f"{uuid.uuid4().int % 10**6}.5"
    # A daemon that double-forks and leaves the process group (setsid) must not survive.
    script = f"setsid sleep {marker} & (sleep {marker} &) ; echo ready; sleep {marker}"
    status = await manager.start(JobSpec("sh", ("-c", script)))
    await wait_for_output(manager, status.id, b"ready")
    await manager.stop(status.id, grace_seconds=2)
    if not manager.info.namespaces and manager.info.cgroup_driver == "none":
        # Without namespaces or cgroups only the process group can be reached; a setsid daemon escapes.
        assert len(processes_with(marker)) <= 1
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
    else:
        assert processes_with(marker) == []


async def test_children_left_behind_by_a_finished_job_are_killed(manager: JobManager) -> None:
    marker = f"{uuid.uuid4().int % 10**6}.75"
    status = await manager.start(JobSpec("sh", ("-c", f"sleep {marker} & echo started")))
    final = await manager.wait(status.id)
    assert final.state is JobState.EXITED
    assert processes_with(marker) == []


async def test_stop_of_finished_job_is_a_typed_error(manager: JobManager) -> None:
    status = await manager.start(JobSpec("true"))
    await manager.wait(status.id)
    with pytest.raises(JobNotRunningError, match="already ended"):
        await manager.stop(status.id)


async def test_unknown_job(manager: JobManager) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(JobNotFoundError):
        manager.status(missing)
    with pytest.raises(JobNotFoundError):
        await manager.stop(missing)
    with pytest.raises(JobNotFoundError):
        manager.follow(missing)


async def test_list_filters_by_state_and_owner(plain_manager: JobManager) -> None:
    a = await plain_manager.start(JobSpec("true", owner="alice"))
    b = await plain_manager.start(JobSpec("sleep", ("100",), owner="bob"))
    await plain_manager.wait(a.id)
    assert [s.id for s in plain_manager.list()] == [a.id, b.id]
    assert [s.id for s in plain_manager.list(owner="bob")] == [b.id]
    assert [s.id for s in plain_manager.list(states={JobState.RUNNING})] == [b.id]
    assert [s.id for s in plain_manager.list(states={JobState.EXITED}, owner="bob")] == []
    await plain_manager.stop(b.id, grace_seconds=5)


async def test_no_fds_leak_after_jobs_end(manager: JobManager) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        status = await manager.start(JobSpec("echo", ("x",)))
        await manager.wait(status.id)
        await collect(manager, status.id)
    failing = JobSpec("/nonexistent")
    with pytest.raises(StartError):
        await manager.start(failing)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_jobs_reload_after_restart(tmp_path: Path) -> None:
    config = EngineConfig(state_dir=tmp_path, isolation=Isolation.NONE, namespaces=False, cgroups=False)
    first = JobManager(config)
    await first.open()
    status = await first.start(JobSpec("sh", ("-c", "echo out; echo err >&2; exit 4"), owner="al"))
    await first.wait(status.id)
    await first.close()

    second = JobManager(config)
    await second.open()
    reloaded = second.status(status.id)
    assert reloaded.state is JobState.EXITED
    assert reloaded.exit_code == 4
    assert reloaded.owner == "al"
    chunks = await collect(second, status.id)
    assert {c.stream: c.data for c in chunks} == {Stream.STDOUT: b"out\n", Stream.STDERR: b"err\n"}
    await second.close()


async def test_close_stops_running_jobs_and_refuses_new_ones(plain_manager: JobManager) -> None:
    status = await plain_manager.start(JobSpec("sleep", ("100",)))
    await plain_manager.close(grace_seconds=5)
    assert plain_manager.status(status.id).state is JobState.STOPPED
    with pytest.raises(Exception, match="shutting down"):
        await plain_manager.start(JobSpec("true"))


async def test_retention_deletes_the_oldest_ended_jobs(tmp_path: Path) -> None:
    config = EngineConfig(
        state_dir=tmp_path, isolation=Isolation.NONE, namespaces=False, cgroups=False, retained_jobs=2
    )
    mgr = JobManager(config)
    await mgr.open()
    ids = []
    for i in range(4):
        status = await mgr.start(JobSpec("sh", ("-c", f"echo {i}")))
        await mgr.wait(status.id)
        ids.append(status.id)
    assert [s.id for s in mgr.list()] == ids[2:]
    with pytest.raises(JobNotFoundError):
        mgr.status(ids[0])
    await mgr.close()
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == sorted(ids[2:])

    # The limit also holds for what a restarted server reloads.
    smaller = JobManager(dataclasses.replace(config, retained_jobs=1))
    await smaller.open()
    assert [s.id for s in smaller.list()] == ids[3:]
    await smaller.close()
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ids[3:]


async def test_running_jobs_are_never_deleted_by_retention(tmp_path: Path) -> None:
    mgr = JobManager(
        EngineConfig(
            state_dir=tmp_path, isolation=Isolation.NONE, namespaces=False, cgroups=False, retained_jobs=0
        )
    )
    await mgr.open()
    running = await mgr.start(JobSpec("sleep", ("100",)))
    done = await mgr.start(JobSpec("true"))
    await mgr.wait(done.id)
    assert [s.id for s in mgr.list()] == [running.id]
    final = await mgr.stop(running.id, grace_seconds=5)
    assert final.state is JobState.STOPPED  # the caller of stop still gets the final status
    assert mgr.list() == []
    await mgr.close()


def _ancestors(pid: int) -> list[int]:
    """pid's parent, grandparent, ... up to init."""
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        chain.append(pid)
    return chain


async def _wait_exit(pid: int) -> None:
    """Return once process pid has exited (its pidfd turns readable)."""
    fd = os.pidfd_open(pid)
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), 10)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_a_dead_fork_server_is_restarted(plain_manager: JobManager) -> None:
    first = plain_manager._fork_server
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    await _wait_exit(first.pid)
    status = await plain_manager.start(JobSpec("sleep", ("60",)))
    second = plain_manager._fork_server
    assert second is not None
    assert second.pid != first.pid
    # The fast path: the job's launcher was forked by the new fork server.
    assert second.pid in _ancestors(status.pid)
    await plain_manager.stop(status.id, grace_seconds=1)


async def test_restarts_of_a_dying_fork_server_are_bounded(plain_manager: JobManager) -> None:
    # Killed again right after its restart: the next start goes direct, and still works.
    for restarted in (True, False):
        fork_server = plain_manager._fork_server
        assert fork_server is not None
        os.kill(fork_server.pid, signal.SIGKILL)
        await _wait_exit(fork_server.pid)
        status = await plain_manager.start(JobSpec("sh", ("-c", "echo $0", "direct")))
        assert (await plain_manager.wait(status.id)).exit_code == 0
        assert b"".join(c.data for c in await collect(plain_manager, status.id)) == b"direct\n"
        assert (plain_manager._fork_server is not fork_server) is restarted


async def test_stop_right_after_start_is_not_lost(manager: JobManager) -> None:
    # Start returns as soon as the command runs, possibly before the job's init has installed the
    # handler that passes SIGTERM on. A stop in that window must still end the job by SIGTERM, long
    # before the (here very long) grace period would escalate to SIGKILL.
    for _ in range(20):
        status = await manager.start(JobSpec("sleep", ("300",)))
        final = await asyncio.wait_for(manager.stop(status.id, grace_seconds=60), 10)
        assert final.state is JobState.STOPPED
        assert final.signal == signal.SIGTERM


async def test_a_kill_that_does_not_take_effect_in_time_is_a_job_error(
    plain_manager: JobManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop whose SIGKILL the kernel has not acted on within the kill timeout says so (not a bare
    TimeoutError, which the server would answer as INTERNAL)."""
    from jobworker.engine import JobStuckError, supervisor

    status = await plain_manager.start(JobSpec("sh", ("-c", "trap '' TERM; echo ready; exec sleep 30")))
    async for event in plain_manager.follow(status.id):
        if isinstance(event, OutputChunk) and b"ready" in event.data:
            break
    monkeypatch.setattr(supervisor, "_KILL_TIMEOUT", 0)
    with pytest.raises(JobStuckError, match="did not exit within 0 s of SIGKILL"):
        await plain_manager.stop(status.id, grace_seconds=0)
    final = await plain_manager.wait(status.id)
    assert final.state is JobState.STOPPED


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody in a child, which needs root")
def test_namespaces_that_cannot_be_made_are_an_isolation_error_not_shutting_down() -> None:
    # Not under tmp_path: pytest's base directory is closed to other users.
    state = Path(tempfile.mkdtemp(dir="/var/tmp"))
    state.chmod(0o777)
    code = (
        # Everything the engine imports lazily, before the interpreter loses access to its own files.
        "import asyncio, concurrent.futures.thread, os, sys\n"
        "from jobworker.engine import EngineConfig, Isolation, JobManager, SandboxUnavailableError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "from pathlib import Path\n"
        f"mgr = JobManager(EngineConfig(state_dir=Path({str(state / 's')!r}), isolation=Isolation.NONE,"
        " namespaces=True, cgroups=False))\n"
        "try:\n    asyncio.run(mgr.open())\n"
        "except SandboxUnavailableError as e:\n    print('isolation:', e)\n"
    )
    command = [sys.executable, "-c", code]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert result.stdout.strip() == "isolation: namespaces need root", result.stderr


async def test_running_out_of_file_descriptors_is_a_capacity_error(plain_manager: JobManager) -> None:
    """EMFILE while setting a job up means the server is full, not that the request was bad."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The limit bounds descriptor numbers, not their count: fill every free number below the highest in use
    # first (a count would leave such holes for the start to use), then allow none above it.
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)]
    while fillers[-1] < highest:
        fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    resource.setrlimit(resource.RLIMIT_NOFILE, (fillers[-1] + 1, hard))
    try:
        with pytest.raises(CapacityError, match="no file descriptors left"):
            await plain_manager.start(JobSpec("true"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    assert plain_manager.list() == []
    status = await plain_manager.start(JobSpec("true"))
    assert (await plain_manager.wait(status.id)).exit_code == 0


async def test_a_request_the_fork_server_refuses_is_an_error_and_it_stays_up() -> None:
    from jobworker.engine.spawn import ForkServer, LaunchSpec

    server = ForkServer()
    try:
        spec = LaunchSpec(argv=("true",), env={}, cwd="/")
        # A request that does not parse (an environment count that is no number): "0", and it stays up.
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            with pytest.raises(OSError, match="refused the request"):
                await server.fork(dataclasses.replace(spec, cwd="/\0x"), ["--", "true"], null)
        finally:
            os.close(null)
        assert server.alive
    finally:
        server.close()
