"""`jw` as a real process: Ctrl-C handling, and nothing but jw's own line on stderr.

Ctrl-C during `jw run` detaches by default and stops the job with --stop-on-interrupt; only a
real process gets a SIGINT, and only a real process shows what grpc itself prints on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_fixtures import UUID, Jw

import jobworker.cli

# Whoever started us may have ignored SIGINT (background jobs of a shell); jw must see it.
LAUNCHER = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'jw'; from jobworker.cli import main; main()"
)
REPO = Path(jobworker.cli.__file__).resolve().parents[2]
READY_JOB = ["sh", "-c", "echo ready; exec sleep 300"]


class JwProcess:
    """A `jw` subprocess whose first stdout line we can wait for."""

    def __init__(self, jw: Jw, *args: str, user: str = "alice") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JW_", "GRPC_"))}
        env.update({k: v for k, v in jw.env(user).items() if v is not None})
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def wait_for_line(self, timeout: float = 30) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        assert box, "jw printed nothing in time"
        return box[0]

    def interrupt(self, timeout: float = 30) -> tuple[int, bytes, bytes]:
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def finish(self, timeout: float = 60) -> tuple[int, bytes, bytes]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


Spawn = Callable[..., JwProcess]


@pytest.fixture
def spawn(jw: Jw) -> Iterator[Spawn]:
    """Start `jw ARGS...` as alice; every process is killed at teardown."""
    started: list[JwProcess] = []

    def make(*args: str, user: str = "alice") -> JwProcess:
        proc = JwProcess(jw, *args, user=user)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()


def job_of(stderr: str) -> str:
    match = UUID.search(stderr)
    assert match, stderr
    return match.group(0)


def test_ctrl_c_detaches_and_the_job_keeps_running(jw: Jw, spawn: Spawn) -> None:
    proc = spawn("run", "--", *READY_JOB)
    assert proc.wait_for_line() == b"ready\n"
    code, _, err = proc.interrupt()
    stderr = err.decode()
    job_id = job_of(stderr)
    try:
        assert code == 130
        assert "detached" in stderr
        assert f"jw logs -f --offset 6 {job_id}" in stderr
        assert "Traceback" not in stderr
        assert json.loads(jw("status", "--json", job_id).stdout)["state"] == "running"
    finally:
        jw("stop", "--grace", "0s", job_id)


def test_stop_on_interrupt_stops_the_job(jw: Jw, spawn: Spawn) -> None:
    proc = spawn("run", "--stop-on-interrupt", "--", *READY_JOB)
    assert proc.wait_for_line() == b"ready\n"
    code, _, err = proc.interrupt()
    stderr = err.decode()
    job_id = job_of(stderr)
    # Interrupted, as the exit-code table says, not the SIGTERM the stop delivered.
    assert code == 130
    assert "stopping job" in stderr
    assert "Traceback" not in stderr
    data = json.loads(jw("status", "--json", job_id).stdout)
    assert (data["state"], data["signal"]) == ("stopped", signal.SIGTERM)


def test_a_second_ctrl_c_while_stopping_exits_130_quietly(jw: Jw, spawn: Spawn) -> None:
    # Shrugs off SIGTERM, so the stop lasts the server's grace period: time for the second Ctrl-C.
    script = "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.1; done"
    proc = spawn("run", "--stop-on-interrupt", "--", "sh", "-c", script)
    assert proc.wait_for_line() == b"ready\n"
    proc.process.send_signal(signal.SIGINT)
    stderr = proc.process.stderr
    assert stderr is not None
    first = stderr.readline().decode()
    assert "stopping job" in first
    job_id = job_of(first)
    # The second Ctrl-C once the server has begun the stop (it finishes it on its own).
    deadline = time.monotonic() + 20
    while "got TERM" not in jw("logs", job_id).stdout:
        assert time.monotonic() < deadline, "the stop never reached the job"
        time.sleep(0.1)
    code, _, err = proc.interrupt()
    assert code == 130
    assert b"Aborted" not in err
    assert b"Traceback" not in err
    assert jw("wait", job_id).exit_code == 128 + signal.SIGKILL
    assert json.loads(jw("status", "--json", job_id).stdout)["state"] == "stopped"


def test_ctrl_c_ends_logs_follow_quietly(jw: Jw, spawn: Spawn) -> None:
    job_id = jw.start(*READY_JOB)
    try:
        proc = spawn("logs", "-f", job_id)
        assert proc.wait_for_line() == b"ready\n"
        code, _, err = proc.interrupt()
        assert code == 130
        assert err == b""
    finally:
        jw("stop", "--grace", "0s", job_id)


@pytest.mark.parametrize(
    ("args", "user", "message"),
    [
        (["list"], "mallory", "rejected our client certificate"),
        (["--ca", "{foreign_ca}", "list"], "alice", "server certificate not trusted by --ca"),
    ],
)
def test_tls_failure_is_one_line_without_grpc_noise(
    jw: Jw, spawn: Spawn, args: list[str], user: str, message: str
) -> None:
    foreign_ca = str(jw.credentials.directory / "foreign-ca.crt")
    proc = spawn(*(a.format(foreign_ca=foreign_ca) for a in args), user=user)
    code, out, err = proc.finish()
    assert code == 3
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]


def test_python_m_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobworker.cli", "--version"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith(b"jw, version ")
