"""`jw rm`, `jw prune` and `jw kill` against a real server: roles, running jobs, signals delivered."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest
from cli_fixtures import Jw


def _ended(jw: Jw, *command: str, user: str = "alice") -> str:
    job_id = jw.start(*command, user=user)
    assert jw("wait", job_id, user=user).exit_code in (0, 1, 7), jw.server_log()
    return job_id


def _status_code(jw: Jw, job_id: str) -> int:
    return jw("status", job_id, user="adam").exit_code


def test_rm_deletes_an_ended_job_and_its_output(jw: Jw) -> None:
    job_id = _ended(jw, "echo", "hello")
    assert jw("logs", job_id).stdout == "hello\n"
    result = jw("rm", job_id)
    assert (result.exit_code, result.stdout) == (0, f"{job_id}\n"), result.stderr
    assert _status_code(jw, job_id) == 4
    assert jw("logs", job_id).exit_code == 4


def test_rm_of_a_running_job_is_refused_naming_it(jw: Jw) -> None:
    job_id = jw.start("sleep", "300")
    try:
        result = jw("rm", job_id)
        assert result.exit_code == 6
        assert job_id in result.stderr
        assert "running" in result.stderr
        assert _status_code(jw, job_id) == 0
    finally:
        jw("stop", "--grace", "0s", job_id)


def test_rm_several_goes_on_past_a_failure(jw: Jw) -> None:
    first, second = _ended(jw, "true"), _ended(jw, "true")
    running = jw.start("sleep", "300")
    try:
        result = jw("rm", first, running, second)
        assert result.exit_code == 6
        assert result.stdout.split() == [first, second]
        assert result.stderr.count("Error:") == 1
    finally:
        jw("stop", "--grace", "0s", running)


@pytest.mark.parametrize(("user", "code"), [("bob", 4), ("rita", 5), ("adam", 0), ("alice", 0)])
def test_rm_permissions(jw: Jw, user: str, code: int) -> None:
    job_id = _ended(jw, "true")
    result = jw("rm", job_id, user=user)
    assert result.exit_code == code, result.stderr
    if code == 4:
        assert "not found" in result.stderr.lower()
    if code == 5:
        assert "may not call Delete" in result.stderr
    assert _status_code(jw, job_id) == (4 if code == 0 else 0)


def test_prune_deletes_only_the_callers_ended_jobs(jw: Jw) -> None:
    mine = _ended(jw, "true")
    bobs = _ended(jw, "true", user="bob")
    running = jw.start("sleep", "300")
    try:
        result = jw("prune")
        assert result.exit_code == 0, result.stderr
        assert mine in result.stdout.split()
        assert bobs not in result.stdout
        assert running not in result.stdout
        assert _status_code(jw, mine) == 4
        assert _status_code(jw, bobs) == 0
        assert _status_code(jw, running) == 0
    finally:
        jw("stop", "--grace", "0s", running)


def test_prune_until_keeps_newer_jobs(jw: Jw) -> None:
    old = _ended(jw, "true")
    time.sleep(1.5)
    cutoff = datetime.now(UTC) - timedelta(seconds=0.5)
    new = _ended(jw, "true")
    result = jw("prune", "--until", cutoff.isoformat())
    assert result.exit_code == 0, result.stderr
    assert old in result.stdout.split()
    assert new not in result.stdout
    # A duration ago: nothing ended an hour ago.
    assert new not in jw("prune", "--until", "1h").stdout
    assert _status_code(jw, new) == 0


def test_prune_as_admin_covers_every_owner_and_reader_may_not(jw: Jw) -> None:
    bobs = _ended(jw, "true", user="bob")
    assert jw("prune", user="rita").exit_code == 5
    result = jw("prune", "--json", user="adam")
    assert result.exit_code == 0, result.stderr
    assert bobs in [job["id"] for job in json.loads(result.stdout)]


@pytest.mark.parametrize("until", ["yesterday", "2026-12-01T10:00:00"])
def test_prune_until_must_be_a_time(jw: Jw, until: str) -> None:
    result = jw("prune", "--until", until)
    assert result.exit_code == 2
    assert "--until" in result.stderr


TRAP_USR1 = ["sh", "-c", "trap 'echo got USR1' USR1; echo ready; while :; do sleep 0.1; done"]


def _wait_for_output(jw: Jw, job_id: str, text: str) -> str:
    deadline = time.monotonic() + 20
    out = ""
    while time.monotonic() < deadline:
        out = jw("logs", job_id).stdout
        if text in out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {out!r}; server log:\n{jw.server_log()}")


def test_kill_delivers_the_signal_without_stopping_the_job(jw: Jw) -> None:
    job_id = jw.start(*TRAP_USR1)
    try:
        _wait_for_output(jw, job_id, "ready")
        result = jw("kill", "-s", "USR1", job_id)
        assert (result.exit_code, result.stdout) == (0, f"{job_id}\n"), result.stderr
        _wait_for_output(jw, job_id, "got USR1")
        assert jw("kill", "-s", "SIGUSR1", job_id).exit_code == 0
        out = _wait_for_output(jw, job_id, "got USR1\ngot USR1")
        # The command alone gets it, not its `sleep` child (which would die of it).
        assert "User defined signal" not in out
        assert json.loads(jw("status", "--json", job_id).stdout)["state"] == "running"
    finally:
        jw("stop", "--grace", "0s", job_id)


def test_kill_term_by_default_and_the_job_reports_it(jw: Jw) -> None:
    job_id = jw.start("sleep", "300")
    assert jw("kill", job_id).exit_code == 0
    result = jw("wait", job_id)
    assert result.exit_code == 128 + signal.SIGTERM
    assert json.loads(jw("status", "--json", job_id).stdout)["state"] == "signaled"


@pytest.mark.parametrize("name", ["STOP", "SEGV", "bogus", "9"])
def test_kill_refuses_signals_outside_the_set(jw: Jw, name: str) -> None:
    job_id = jw.start("sleep", "300")
    try:
        result = jw("kill", "-s", name, job_id)
        assert result.exit_code == 2
        assert "allowed: HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, WINCH" in result.stderr
    finally:
        jw("stop", "--grace", "0s", job_id)


@pytest.mark.parametrize(("user", "code"), [("bob", 4), ("rita", 5)])
def test_kill_permissions(jw: Jw, user: str, code: int) -> None:
    job_id = jw.start("sleep", "300")
    try:
        assert jw("kill", "-s", "USR1", job_id, user=user).exit_code == code
    finally:
        jw("stop", "--grace", "0s", job_id)


def test_kill_of_an_ended_job_is_a_precondition_failure(jw: Jw) -> None:
    job_id = _ended(jw, "true")
    result = jw("kill", job_id)
    assert result.exit_code == 6
    assert "already ended" in result.stderr
