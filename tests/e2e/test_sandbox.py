"""The job sandbox in the image: what a writer's job tries, from inside, against the real server container."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobworker.client import JobState

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

# Each line prints "<name>=<exit status>" so one job checks many attacks; every one must fail (non-zero).
ATTACKS = {
    "server_key": "cat /certs/server.key | grep -q PRIVATE",
    "ca_key": "cat /certs/ca.key | grep -q PRIVATE",
    "writer2_key": "cat /certs/writer2.key | grep -q PRIVATE",
    "state_dir": "ls /var/lib/jobworker/jobs",
    "umount_proc": "umount /proc",
    "host_processes": "ps -e -o args= | grep -q -E 'jobworker[.]pid1|jw-serve[r]'",
    "nsenter": "nsenter -t 1 -n -u true",
    "mount": "mount -t tmpfs none /job",
    "unshare_user": "unshare -U -r true",
    "cgroup_procs": "echo $$ > /sys/fs/cgroup/cgroup.procs",
    "hostname": "hostname evil",
    "proc_sys": "echo 1 > /proc/sys/kernel/sysrq",
    "mknod": "mknod /job/sda b 8 0",
    # finit_module: exits 1 when seccomp answered EPERM, 0 if the call reached the kernel's own checks.
    "module": "python3 -c 'import ctypes,errno,sys; l=ctypes.CDLL(None,use_errno=True); "
    'l.syscall(313,-1,b"",0); sys.exit(ctypes.get_errno()==errno.EPERM)\'',
    "kill_init": "kill -TERM 1",
    "init_environ": "cat /proc/1/environ",
    # ls holds one descriptor of its own (the listing): 0, 1, 2 and that one.
    "extra_fd": "[ $(ls /proc/self/fd | wc -l) -gt 4 ]",
    "root": "[ $(id -u) = 0 ]",
}


def test_every_attack_from_inside_a_writers_job_fails(server: JobworkerServer) -> None:
    script = "; ".join(f"( {command} ) >/dev/null 2>&1; echo {name}=$?" for name, command in ATTACKS.items())
    job = server.run_job("sh", ["-c", script], identity="writer")
    assert job.info.state is JobState.EXITED, (job.info, job.stderr)
    results = dict(line.split("=") for line in job.stdout.decode().split())
    assert set(results) == set(ATTACKS), job.stdout
    succeeded = [name for name, status in results.items() if status == "0"]
    assert succeeded == [], f"attacks that worked: {succeeded}"


def test_another_writers_output_is_out_of_reach(server: JobworkerServer) -> None:
    other = server.run_job("sh", ["-c", "echo writer2-secret"], identity="writer2")
    assert other.stdout == b"writer2-secret\n"
    state = "/var/lib/jobworker"
    probe = f"grep -r writer2-secret {state} 2>&1; ls {state}/jobs/{other.info.id}; echo end"
    job = server.run_job("sh", ["-c", probe], identity="writer")
    assert b"writer2-secret" not in job.stdout + job.stderr
    assert job.stdout.endswith(b"end\n")


def test_normal_work_still_works(server: JobworkerServer) -> None:
    script = (
        "set -e; python3 -c 'print(6 * 7)'; echo abc | tr a-c x-z; echo t > /tmp/t; cat /tmp/t; "
        "echo w > w; cat w; pwd; grep -q '^ID=' /etc/os-release && echo os-release; "
        "ps -e -o pid= | wc -l; exit 5"
    )
    job = server.run_job("sh", ["-c", script])
    assert job.info.state is JobState.EXITED
    assert job.info.exit_code == 5, job.stderr
    lines = job.stdout.decode().split()
    assert lines[:6] == ["42", "xyz", "t", "w", "/job", "os-release"], (job.stdout, job.stderr)
    assert int(lines[6]) <= 4, "ps sees only the job's own processes"


def test_info_reports_strict_isolation(server: JobworkerServer) -> None:
    with server.client("reader") as client:
        info = client.server_info()
    assert info.isolation == "strict"
    assert info.default_limits.memory_bytes == 1 << 30
