"""Smoke tests of the image: it comes up healthy, has its tools, and runs a job for the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

HEALTHY_TIMEOUT = 90.0
# docker stop's grace before SIGKILL; the server's own default job grace period is 10 s.
STOP_TIMEOUT = 30


def test_container_becomes_healthy(server: JobworkerServer) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    health = server.state().get("Health") or {}
    # Docker runs the HEALTHCHECK on its own schedule; there is no event to wait on from here.
    while health.get("Status") != "healthy":
        last_check = (health.get("Log") or [{}])[-1]
        assert health.get("Status") != "unhealthy", f"unhealthy; last check: {last_check}"
        assert server.state()["Status"] == "running", f"container stopped:\n{server.logs()}"
        assert time.monotonic() < deadline, f"not healthy after {HEALTHY_TIMEOUT:.0f}s: {last_check}"
        time.sleep(0.5)
        health = server.state().get("Health") or {}


def test_the_supervisor_is_pid_1_and_runs_jw_server(server: JobworkerServer) -> None:
    result = server.exec(["cat", "/proc/1/cmdline"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split("\0")[:5] == ["python", "-m", "jobworker.pid1", "--", "jw-server"]
    parent = server.exec(["ps", "-o", "ppid=", "-p", str(server.jw_server_pid())])
    assert parent.exit_code == 0, parent.stderr
    assert int(parent.stdout) == 1


def test_orphans_are_reaped(server: JobworkerServer) -> None:
    # The subshell exits at once, orphaning `sleep`: the kernel hands it to PID 1, which must
    # reap it when it ends, or it lingers in /proc as a zombie.
    result = server.exec(["sh", "-c", "(sleep 0.2 & echo $!)"])
    assert result.exit_code == 0, result.stderr
    orphan = int(result.stdout)

    def reaped() -> bool:
        return server.exec(["test", "-e", f"/proc/{orphan}"]).exit_code != 0

    server.wait_for(reaped, timeout=10, what=f"orphan {orphan} to be reaped by PID 1")


def test_sigterm_stops_server_and_its_jobs_gracefully(
    server_factory: Callable[..., JobworkerServer],
) -> None:
    extra = server_factory()
    with extra.client("writer") as writer:
        writer.start("sleep", ["300"])
    started = time.monotonic()
    extra.container.get_wrapped_container().stop(timeout=STOP_TIMEOUT)
    took = time.monotonic() - started
    state = extra.state()
    # 137 would mean docker had to SIGKILL it after STOP_TIMEOUT.
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{extra.logs()}"
    assert took < STOP_TIMEOUT
    assert '"msg": "stopped"' in extra.logs()
    # PID 1 forwarded the SIGTERM and exited with jw-server's status; it did not restart it.
    assert "jw-pid1:" not in extra.logs()


def test_ip_lists_interfaces_inside(server: JobworkerServer) -> None:
    result = server.exec(["ip", "-brief", "link"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0] == "lo"


def test_cgroupfs_is_writable_inside(server: JobworkerServer) -> None:
    # The server creates a cgroup per job: its own cgroup namespace root must take new children.
    probe = (
        "set -e; "
        "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then d=/sys/fs/cgroup/jw-e2e-probe; "
        "else d=/sys/fs/cgroup/memory/jw-e2e-probe; fi; "
        'mkdir "$d"; rmdir "$d"'
    )
    result = server.exec(["sh", "-c", probe])
    assert result.exit_code == 0, result.stderr


def test_health_through_cli_as_reader(server: JobworkerServer) -> None:
    result = server.jw("health", identity="reader")
    assert result.returncode == 0, result.stderr


def test_run_prints_job_output_through_cli(server: JobworkerServer) -> None:
    result = server.jw("run", "--", "echo", "hello")
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stdout.splitlines()
