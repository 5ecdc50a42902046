"""`jw wait` against a real server: exit codes as jw run's, several jobs, scope, server shutdown."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from cli_fixtures import Jw, ServerProcess, start_server
from test_cli_process import JwProcess


def _until_ended(jw: Jw, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if '"running"' not in jw("status", "--json", job_id).stdout:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running")


def test_wait_exit_zero(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "sleep 0.3")
    result = jw("wait", job_id)
    assert (result.exit_code, result.stdout) == (0, "0\n"), result.stderr


def test_wait_returns_the_jobs_code(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "sleep 0.3; exit 7")
    result = jw("wait", job_id)
    assert (result.exit_code, result.stdout) == (7, "7\n"), result.stderr


def test_wait_on_an_ended_job_answers_at_once(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "exit 3")
    _until_ended(jw, job_id)
    assert jw("wait", job_id).exit_code == 3


def test_wait_signal_is_128_plus_n(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "kill -USR2 $$")
    result = jw("wait", job_id)
    assert result.exit_code == 128 + signal.SIGUSR2, result.stderr


def test_wait_several_jobs_exits_with_the_first_non_zero(jw: Jw) -> None:
    ok = jw.start("true")
    five = jw.start("sh", "-c", "sleep 0.5; exit 5")
    nine = jw.start("sh", "-c", "exit 9")
    result = jw("wait", ok, five, nine)
    assert (result.exit_code, result.stdout) == (5, "0\n5\n9\n"), result.stderr


def test_wait_on_anothers_job_is_not_found(jw: Jw) -> None:
    job_id = jw.start("true", user="bob")
    result = jw("wait", job_id)
    assert result.exit_code == 4
    # A reader sees every job, as with status.
    assert jw("wait", job_id, user="rita").exit_code == 0


def _wait_for_call(server: ServerProcess, method: str, timeout: float = 30) -> None:
    """Until the server (at debug level) logged that a call of `method` started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any('"call started"' in line and f"/{method}" in line for line in list(server.log)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {method} call reached the server within {timeout:g} s")


def test_wait_gives_up_with_a_hint_when_the_server_stays_away(jw: Jw, tmp_path: Path) -> None:
    own: ServerProcess = start_server(jw.credentials, tmp_path / "state", "--log-level", "debug")
    try:
        mine = Jw(jw.runner, jw.credentials, own, jw.config_home)
        job_id = mine.start("sleep", "300")
        proc = JwProcess(mine, "--timeout", "2", "wait", job_id)
        try:
            _wait_for_call(own, "Wait")
            assert proc.process.poll() is None
            own.process.send_signal(signal.SIGTERM)
            code, _, err = proc.finish(timeout=30)
        finally:
            proc.kill()
        assert code == 3, err
        assert b"shutting down" in err
        assert b"reconnecting for up to 6 s" in err
        assert f"wait again with: jw wait {job_id}".encode() in err
    finally:
        own.stop()
