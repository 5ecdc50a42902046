"""Strict isolation on the real kernel, seen from inside a job: every attack fails, normal work works.

Each attack is what a writer would try from `jw run`; each must fail *because of the sandbox* (the command
that fails is asserted, not just a non-zero exit). Root only: the sandbox needs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobworker.engine import (
    EngineConfig,
    Isolation,
    JobManager,
    JobMount,
    JobSpec,
    JobState,
    Limits,
    OutputChunk,
    SandboxConfig,
    SandboxUnavailableError,
    Stream,
)
from jobworker.engine.sandbox import UidPool, compile_seccomp, resolve_user

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the job sandbox needs root"),
]

# A C-level call from inside the job: prints "errno NAME" so the test sees which refusal it got.
SYSCALL = (
    "import ctypes, errno, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "args = [ctypes.c_long(int(a)) if a.lstrip('-').isdigit() else a.encode() for a in sys.argv[2:]]\n"
    "rc = libc.syscall(ctypes.c_long(int(sys.argv[1])), *args)\n"
    "print('ok' if rc >= 0 else 'errno ' + errno.errorcode[ctypes.get_errno()])\n"
)


class Jobs:
    """A strict engine, plus helpers that run one command and return what it printed."""

    def __init__(self, mgr: JobManager, secret_dir: Path, shared: Path) -> None:
        self.mgr = mgr
        self.secret_dir = secret_dir
        self.shared = shared

    async def run(self, command: str, *args: str) -> tuple[JobState, int | None, str, str]:
        status = await self.mgr.start(JobSpec(command, args))
        final = await self.mgr.wait(status.id)
        out: dict[Stream, bytes] = {Stream.STDOUT: b"", Stream.STDERR: b""}
        async for event in self.mgr.follow(status.id):
            if isinstance(event, OutputChunk):
                out[event.stream] += event.data
        return final.state, final.exit_code, out[Stream.STDOUT].decode(), out[Stream.STDERR].decode()

    async def sh(self, script: str) -> tuple[int | None, str]:
        _state, code, out, err = await self.run("sh", "-c", script)
        return code, out + err

    async def syscall(self, name: str, *args: str) -> str:
        numbers = {"mount": 165, "umount2": 166, "setns": 308, "init_module": 175, "finit_module": 313,
                   "kexec_load": 246, "bpf": 321, "perf_event_open": 298, "keyctl": 250, "add_key": 248,
                   "unshare": 272, "pivot_root": 155, "swapon": 167, "reboot": 169, "settimeofday": 164,
                   "open_by_handle_at": 304, "userfaultfd": 323, "io_uring_setup": 425, "ptrace": 101,
                   "clone3": 435, "chroot": 161}  # fmt: skip
        if os.uname().machine != "x86_64":
            pytest.skip("syscall numbers are x86_64's")
        _state, _code, out, err = await self.run("python3", "-c", SYSCALL, str(numbers[name]), *args)
        return (out + err).strip()


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[Jobs]:
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "server.key").write_text("PRIVATE KEY")
    # World-readable on purpose: masking must hide it whatever its mode.
    (secret_dir / "server.key").chmod(0o644)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = SandboxConfig(
        mounts=(JobMount(str(shared), "/shared", writable=True),),
        masked=(str(secret_dir / "server.key"),),
    )
    # The state dir lives beside the secrets, outside /tmp (which every job has its own of), so that the
    # mask, not the private /tmp, is what hides it.
    state = Path("/var/tmp") / f"jw-sandbox-test-{uuid.uuid4().hex[:12]}"
    mgr = JobManager(
        EngineConfig(state_dir=state, sandbox=config, cgroup_prefix=f"jwtest-{uuid.uuid4().hex[:12]}")
    )
    await mgr.open()
    try:
        yield Jobs(mgr, secret_dir, shared)
    finally:
        await mgr.close(grace_seconds=1)
        shutil.rmtree(state, ignore_errors=True)


# --- what the job is -------------------------------------------------------------------------------


async def test_command_runs_as_an_unprivileged_uid_with_no_capabilities(jobs: Jobs) -> None:
    code, out = await jobs.sh("id -u; id -G; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status")
    assert code == 0, out
    lines = out.splitlines()
    uid = int(lines[0])
    assert uid in range(1_200_000_000, 1_200_065_536)
    assert lines[1] == str(uid), "no supplementary groups, gid = uid"
    status = dict(line.split(":\t") for line in lines[2:])
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[cap] == "0000000000000000", (cap, status)
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


async def first_line(mgr: JobManager, job_id: str) -> str:
    """The first line the job printed on stdout."""
    async for event in mgr.follow(job_id):
        if isinstance(event, OutputChunk) and event.stream is Stream.STDOUT and b"\n" in event.data:
            return event.data.decode().split("\n")[0]
    raise AssertionError("the job printed no line")


async def test_concurrent_jobs_get_distinct_uids(jobs: Jobs) -> None:
    first = await jobs.mgr.start(JobSpec("sh", ("-c", "id -u; exec sleep 30")))
    try:
        first_uid = await first_line(jobs.mgr, first.id)
        _code, second_uid = await jobs.sh("id -u")
        assert first_uid != second_uid.strip()
    finally:
        await jobs.mgr.stop(first.id, grace_seconds=0)


async def test_command_starts_with_exactly_fds_0_1_2(jobs: Jobs) -> None:
    code, out = await jobs.sh("ls /proc/self/fd")
    assert code == 0
    # ls itself opens one descriptor for the directory it lists.
    assert sorted(int(fd) for fd in out.split()) in ([0, 1, 2], [0, 1, 2, 3])
    _state, _code, out, _err = await jobs.run(
        "python3", "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"
    )
    assert out.strip() == "['0', '1', '2', '3']"  # 3: the listing's own descriptor


# --- the host, the server and other jobs are out of reach ------------------------------------------


async def test_masked_secrets_and_state_dir_read_as_nothing(jobs: Jobs) -> None:
    code, out = await jobs.sh(f"cat {jobs.secret_dir}/server.key")
    assert "PRIVATE KEY" not in out
    code, out = await jobs.sh(f"ls -A {jobs.mgr.config.state_dir}; ls {jobs.mgr.config.state_dir}/jobs")
    assert code != 0
    assert "No such file" in out or "Permission denied" in out, out


async def test_another_jobs_output_cannot_be_read(jobs: Jobs) -> None:
    other = await jobs.mgr.start(JobSpec("sh", ("-c", "echo other-secret; sleep 30")))
    try:
        spool = jobs.mgr.config.state_dir / "jobs" / other.id / "output.spool"
        code, out = await jobs.sh(f"cat {spool}; ls {spool.parent}")
        assert code != 0
        assert "other-secret" not in out
        assert "Permission denied" in out, out  # the state dir is covered by an empty, mode-0 tmpfs
    finally:
        await jobs.mgr.stop(other.id, grace_seconds=0)


async def test_no_process_outside_the_job_is_visible(jobs: Jobs) -> None:
    _code, out = await jobs.sh("umount /proc; umount -l /proc; ls /proc | grep -cE '^[0-9]+$'; ps -e -o pid=")
    assert "must be superuser" in out or "Operation not permitted" in out, out
    pids = {int(p) for p in out.split() if p.isdigit()}
    assert max(pids) < 100, out
    assert str(os.getpid()) not in out.split()


async def test_host_namespaces_cannot_be_joined(jobs: Jobs) -> None:
    code, out = await jobs.sh(f"nsenter -t 1 -n -u true; nsenter -t {os.getpid()} -n true")
    assert code != 0
    assert "Permission denied" in out or "Operation not permitted" in out or "No such" in out, out
    assert await jobs.syscall("setns", "0", "0") == "errno EPERM"


@pytest.mark.parametrize(
    "name",
    ["mount", "umount2", "init_module", "finit_module", "kexec_load", "bpf", "perf_event_open", "keyctl",
     "add_key", "unshare", "pivot_root", "swapon", "reboot", "settimeofday", "open_by_handle_at",
     "userfaultfd", "io_uring_setup", "chroot"],
)  # fmt: skip
async def test_seccomp_denies_kernel_attack_surface(jobs: Jobs, name: str) -> None:
    assert await jobs.syscall(name, "0", "0", "0", "0") == "errno EPERM"


async def test_clone3_is_unavailable_so_namespaces_flags_stay_visible_to_the_filter(jobs: Jobs) -> None:
    assert await jobs.syscall("clone3", "0", "0") == "errno ENOSYS"


async def test_new_user_or_mount_namespaces_are_refused(jobs: Jobs) -> None:
    _code, out = await jobs.sh("unshare -U -r true; echo rc=$?; unshare -m true; echo rc=$?")
    assert out.count("rc=1") == 2, out
    # clone() with namespace flags, as a program could call it directly (CLONE_NEWUSER|SIGCHLD).
    _code, out = await jobs.sh(
        'python3 -c "import ctypes,errno; l=ctypes.CDLL(None,use_errno=True); '
        'r=l.syscall(56, 0x10000011, 0, 0, 0, 0); print(r, errno.errorcode.get(ctypes.get_errno()))"'
    )
    assert out.strip() == "-1 EPERM", out


async def test_mount_and_hostname_and_mknod_fail(jobs: Jobs) -> None:
    _code, out = await jobs.sh(
        "mount -t tmpfs none /job 2>&1; echo rc=$?; hostname evil 2>&1; echo rc=$?; "
        "mknod /job/sda b 8 0 2>&1; echo rc=$?; hostname"
    )
    assert out.count("rc=0") == 0, out
    assert out.strip().splitlines()[-1].startswith("job-"), out


async def test_proc_sys_and_sys_are_read_only(jobs: Jobs) -> None:
    _code, out = await jobs.sh(
        "echo '|/tmp/x' > /proc/sys/kernel/core_pattern; echo rc=$?; "
        "echo 1 > /proc/sysrq-trigger; echo rc=$?; echo x > /sys/kernel/uevent_helper; echo rc=$?"
    )
    assert "rc=0" not in out, out
    assert "Read-only file system" in out, out


async def test_no_cgroup_file_is_reachable(jobs: Jobs) -> None:
    _state, _code, out, err = await jobs.run(
        "sh",
        "-c",
        "echo $$ > /sys/fs/cgroup/memory/cgroup.procs; echo rc=$?; echo $$ > /sys/fs/cgroup/cgroup.procs; "
        "echo rc=$?; grep -c cgroup /proc/self/mounts",
    )
    assert out.split() == ["rc=2", "rc=2", "0"], (out, err)  # and no cgroupfs is mounted in the job


async def test_init_and_launcher_are_out_of_reach(jobs: Jobs) -> None:
    _code, out = await jobs.sh(
        "kill -TERM 1; echo kill=$?; kill -KILL 1; echo kill=$?; cat /proc/1/environ; echo env=$?; "
        "ls /proc/1/fd; echo fd=$?; cat /proc/1/mem; echo mem=$?; echo still-here"
    )
    assert "kill=0" not in out, out
    for refused in ("env=1", "fd=2", "mem=1"):
        assert refused in out, out
    assert "still-here" in out
    assert await jobs.syscall("ptrace", "16", "1", "0", "0") == "errno EPERM"  # PTRACE_ATTACH to init


async def test_setuid_binaries_do_not_elevate(jobs: Jobs) -> None:
    _code, out = await jobs.sh("su -c id root </dev/null; echo rc=$?; id -u")
    assert out.strip().splitlines()[-1] != "0"


async def test_dev_holds_only_harmless_nodes_and_host_nodes_are_dead(jobs: Jobs) -> None:
    # A device node on a host path the job can see (here its shared mount) must not open: nodev.
    os.mknod(jobs.shared / "mem", 0o666 | 0o020000, os.makedev(1, 1))
    os.chmod(jobs.shared / "mem", 0o666)
    _code, out = await jobs.sh("ls /dev; head -c1 /shared/mem; echo rc=$?")
    names = set(out.split("\n")[:-1][0:13])
    expected = {"fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
                "urandom", "zero"}  # fmt: skip
    assert names >= expected, out
    assert "Permission denied" in out, out
    assert "rc=1" in out


DEVICES_V1 = Path("/sys/fs/cgroup/devices")


@pytest.mark.skipif(not DEVICES_V1.is_dir(), reason="no v1 devices controller on this host")
async def test_devices_cgroup_allows_only_the_jobs_nodes(jobs: Jobs) -> None:
    root = DEVICES_V1
    job = await jobs.mgr.start(JobSpec("sleep", ("30",)))
    try:
        # The job's own devices cgroup, as the kernel names it for the job's first process (a walk of the
        # whole hierarchy would race other tests removing theirs).
        lines = (await asyncio.to_thread(Path(f"/proc/{job.pid}/cgroup").read_text)).splitlines()
        path = next(line.split(":", 2)[2] for line in lines if line.split(":")[1] == "devices")
        assert path.endswith(f"/{job.id}"), path
        listed = await asyncio.to_thread((root / path.lstrip("/") / "devices.list").read_text)
        rules = set(listed.split("\n")) - {""}
        assert rules == {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
                         "c 5:2 rwm", "c 136:* rwm"}  # fmt: skip
    finally:
        await jobs.mgr.stop(job.id, grace_seconds=0)


# --- normal work still works -----------------------------------------------------------------------


async def test_normal_work_works(jobs: Jobs) -> None:
    script = (
        "set -e; python3 -c 'print(6 * 7)'; echo abc | tr a-c x-z | cat; "
        "echo t > /tmp/t && cat /tmp/t; echo w > w && cat w; pwd; echo $HOME; "
        "grep -q '^ID=' /etc/os-release && echo os-release; echo s > /shared/s && cat /shared/s; "
        "ps -e -o pid= | wc -l; exit 3"
    )
    state, code, out, err = await jobs.run("sh", "-c", script)
    assert (state, code) == (JobState.EXITED, 3), err
    lines = out.split()
    assert lines[:9] == ["42", "xyz", "t", "w", "/job", "/job", "os-release", "s", lines[8]], (out, err)
    assert int(lines[8]) <= 4, "ps sees init, sh, ps (and wc)"
    assert (jobs.shared / "s").read_text() == "s\n"


async def test_scratch_space_is_private_and_gone_after_the_job(jobs: Jobs) -> None:
    code, _out = await jobs.sh("echo mine > /tmp/mark; echo mine > /job/mark")
    assert code == 0
    code, out = await jobs.sh("cat /tmp/mark /job/mark")
    assert code != 0
    assert "mine" not in out


async def test_missing_cwd_names_the_path(jobs: Jobs) -> None:
    from jobworker.engine import InvalidSpecError

    with pytest.raises(InvalidSpecError, match="/no/such/dir does not exist"):
        await jobs.mgr.start(JobSpec("true", cwd="/no/such/dir"))
    # The state dir exists on the host, but not in the job's view.
    with pytest.raises(InvalidSpecError, match="working directory"):
        await jobs.mgr.start(JobSpec("true", cwd=str(jobs.mgr.config.state_dir / "jobs")))


async def test_info_says_strict(jobs: Jobs) -> None:
    info = jobs.mgr.info
    assert info.isolation is Isolation.STRICT
    assert "no capabilities" in info.isolation_detail


# --- host-side pieces ------------------------------------------------------------------------------


def test_uid_pool_hands_out_distinct_uids_and_refuses_when_empty() -> None:
    from jobworker.engine import CapacityError

    pool = UidPool(range(10, 12))
    a, b = pool.allocate(), pool.allocate()
    assert a != b
    with pytest.raises(CapacityError, match="all 2 job uids are in use"):
        pool.allocate()
    pool.release(a)
    assert pool.allocate() == a


def test_job_user_must_not_be_root() -> None:
    with pytest.raises(SandboxUnavailableError, match="must not be root"):
        resolve_user("0")
    with pytest.raises(SandboxUnavailableError, match="must not be root"):
        resolve_user("root")
    assert resolve_user("4242:4343") == (4242, 4343)


def test_seccomp_program_compiles() -> None:
    program = compile_seccomp()
    assert len(program) % 8 == 0
    assert len(program) > 8 * 20


async def test_a_uid_range_holding_host_users_is_refused(tmp_path: Path) -> None:
    mgr = JobManager(
        EngineConfig(state_dir=tmp_path / "s", cgroups=False, sandbox=SandboxConfig(uid_range=range(0, 100)))
    )
    with pytest.raises(SandboxUnavailableError, match=r"exclude root|existing users"):
        await mgr.open()


async def test_a_job_user_runs_every_job(tmp_path: Path) -> None:
    mgr = JobManager(
        EngineConfig(state_dir=tmp_path / "s", cgroups=False, sandbox=SandboxConfig(job_user="65534:65534"))
    )
    await mgr.open()
    try:
        status = await mgr.start(JobSpec("id", ("-u",)))
        await mgr.wait(status.id)
        out = b"".join([e.data async for e in mgr.follow(status.id) if isinstance(e, OutputChunk)])
        assert out == b"65534\n"
    finally:
        await mgr.close(grace_seconds=1)


async def test_without_the_fork_server_jobs_are_as_confined(tmp_path: Path) -> None:
    """The direct launch path builds the whole root per job (no prepared template): same view, same rules."""
    secret = Path("/var/tmp") / f"jw-secret-{uuid.uuid4().hex[:12]}"
    secret.write_text("PRIVATE KEY")
    secret.chmod(0o644)
    state = Path("/var/tmp") / f"jw-direct-test-{uuid.uuid4().hex[:12]}"
    config = EngineConfig(
        state_dir=state,
        fork_server=False,
        cgroups=False,
        sandbox=SandboxConfig(masked=(str(secret),)),
    )
    mgr = JobManager(config)
    await mgr.open()
    try:
        script = f"id -u; grep CapEff /proc/self/status; cat {secret}; ls {state}; ls /tmp | wc -l; pwd"
        status = await mgr.start(JobSpec("sh", ("-c", script)))
        await mgr.wait(status.id)
        chunks = [e async for e in mgr.follow(status.id) if isinstance(e, OutputChunk)]
    finally:
        await mgr.close(grace_seconds=1)
        secret.unlink()
        shutil.rmtree(state, ignore_errors=True)
    out = b"".join(c.data for c in chunks).decode()
    # stdout alone for the order of lines: stderr's complaints may arrive between them.
    lines = b"".join(c.data for c in chunks if c.stream is Stream.STDOUT).decode().splitlines()
    assert int(lines[0]) >= 1_200_000_000, out
    assert "CapEff:\t0000000000000000" in out
    assert "PRIVATE KEY" not in out
    assert "Permission denied" in out, out
    assert lines[-2:] == ["0", "/job"], out


async def test_the_callers_environment_never_reaches_the_root_launcher(tmp_path: Path) -> None:
    """LD_PRELOAD and friends are the caller's: the command gets them, the root shim that launches it
    (direct path, which a large request also takes) must start with an empty environment."""
    mgr = JobManager(
        EngineConfig(state_dir=tmp_path / "s", fork_server=False, cgroups=False, default_limits=Limits())
    )
    await mgr.open()
    try:
        env = {"LD_PRELOAD": "/nonexistent/evil.so", "GREETING": "hi"}
        status = await mgr.start(JobSpec("sh", ("-c", "echo $GREETING; exec sleep 30"), env=env))
        assert await first_line(mgr, status.id) == "hi"
        launcher = mgr._table.get(status.id).supervisor._link.holder_pid  # type: ignore[union-attr]
        environ = await asyncio.to_thread(Path(f"/proc/{launcher}/environ").read_bytes)
        await mgr.stop(status.id, grace_seconds=0)
    finally:
        await mgr.close(grace_seconds=1)
    assert b"LD_PRELOAD" not in environ
    assert b"GREETING" not in environ


async def test_vsock_to_the_hypervisor_is_refused(jobs: Jobs) -> None:
    """AF_VSOCK crosses every network namespace to the VM's host: a job never gets such a socket."""
    code = (
        "import errno, socket\n"
        "try:\n    socket.socket(40, socket.SOCK_STREAM)\n    print('ok')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    _state, _code, out, err = await jobs.run("python3", "-c", code)
    assert out.strip() == "EPERM", err


async def test_closing_the_engine_leaves_no_directory_on_the_hosts_run(tmp_path: Path) -> None:
    mgr = JobManager(EngineConfig(state_dir=tmp_path / "s", cgroups=False))
    await mgr.open()
    status = await mgr.start(JobSpec("true"))
    await mgr.wait(status.id)
    template = mgr._sandbox.template  # type: ignore[union-attr]
    assert template is not None
    assert template.is_dir()
    await mgr.close(grace_seconds=1)
    assert not template.exists()
