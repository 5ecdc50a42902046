"""Smoke tests of the image: it comes up healthy, has its tools, and runs a job for the CLI."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

HEALTHY_TIMEOUT = 90.0


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


def test_jw_server_is_pid_1(server: JobworkerServer) -> None:
    result = server.exec(["ps", "-o", "comm=", "-p", "1"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "jw-server"


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
