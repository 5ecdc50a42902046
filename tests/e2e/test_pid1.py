"""The kit's PID 1 (jobworker.pid1): `kill -9` of jw-server inside the container ends neither the
container nor (with the per-job holder) the jobs; jw-server comes back on its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobworker.client import ClientError, JobState

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

BACK_TIMEOUT = 15.0
COUNT = 150
# Prints 1..COUNT, one line every 20 ms (3 s in all): long enough to span a server restart.
COUNTER = f"import time\nfor i in range(1, {COUNT + 1}):\n    print(i, flush=True)\n    time.sleep(0.02)\n"


def _container_attrs(server: JobworkerServer) -> dict[str, Any]:
    wrapped = server.container.get_wrapped_container()
    wrapped.reload()
    attrs: dict[str, Any] = wrapped.attrs
    return attrs


def _jw_server_pids(server: JobworkerServer) -> list[int]:
    """Pids of the jw-server processes PID 1 runs (found by name and parent, never PID 1 itself)."""
    result = server.exec(["ps", "-o", "pid=,ppid=", "-C", "jw-server"])
    rows = [line.split() for line in result.stdout.splitlines()]
    return [int(pid) for pid, ppid in rows if ppid == "1"]


def _healthy(server: JobworkerServer) -> bool:
    try:
        with server.client("reader", timeout=1.0) as reader:
            return reader.health()
    except ClientError:
        return False


def _kill_jw_server(server: JobworkerServer) -> tuple[int, float]:
    """`kill -9` jw-server inside the container; return its pid and the time jw-server answered again."""
    (pid,) = _jw_server_pids(server)
    killed = server.exec(["kill", "-9", str(pid)])
    assert killed.exit_code == 0, killed.stderr
    started = time.monotonic()

    def restarted() -> bool:
        return [p for p in _jw_server_pids(server) if p != pid] != []

    # Nothing inside the container to subscribe to from here: poll ps, then health.
    server.wait_for(restarted, timeout=BACK_TIMEOUT, what="a new jw-server process")
    server.wait_for(lambda: _healthy(server), timeout=BACK_TIMEOUT, what="jw-server to answer health again")
    return pid, time.monotonic() - started


def test_kill_9_of_jw_server_restarts_it_inside_the_same_container(
    server: JobworkerServer, figure: Callable[[str], None]
) -> None:
    before = _container_attrs(server)
    assert _healthy(server)

    pid, took = _kill_jw_server(server)

    after = _container_attrs(server)
    assert after["State"]["Status"] == "running"
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"], "the container restarted"
    assert after["RestartCount"] == 0
    assert _jw_server_pids(server) != [pid]
    assert "jw-pid1: jw-server killed by SIGKILL" in server.logs()
    ran = server.run_job("echo", ["after the restart"])
    assert ran.info.state is JobState.EXITED
    assert ran.stdout == b"after the restart\n"
    figure(f"kill -9 of jw-server: answering health again after {took:.2f}s, same container")


def test_a_job_printing_a_counter_survives_kill_9_of_jw_server(
    server: JobworkerServer, figure: Callable[[str], None]
) -> None:
    with server.client("writer") as writer:
        job = writer.start("python3", ["-c", COUNTER])
    server.wait_for_output(job.id, b"\n10\n")

    _, took = _kill_jw_server(server)

    logs = server.jw("logs", "-f", job.id, timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "".join(f"{i}\n" for i in range(1, COUNT + 1))
    with server.client("writer") as writer:
        info = writer.status(job.id)
    assert info.state is JobState.EXITED, info
    assert info.exit_code == 0
    figure(f"kill -9 of jw-server with a job running: back after {took:.2f}s, {COUNT} lines kept")
