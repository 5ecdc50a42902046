"""start, status, list/ps, stop and health against a real server, in text and JSON."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
from cli_fixtures import JOB_JSON_KEYS, UUID, Jw

from jobworker.units import cpu_list_text


@pytest.fixture
def sleeper(jw: Jw) -> Iterator[str]:
    """A running job of alice's, stopped afterwards."""
    job_id = jw.start("sleep", "300")
    yield job_id
    jw("stop", "--grace", "0s", job_id)


def test_start_json(jw: Jw) -> None:
    result = jw("start", "--json", "--", "echo", "hi")
    data = json.loads(result.stdout)
    assert set(data) == set(JOB_JSON_KEYS)
    assert UUID.fullmatch(data["id"])
    assert (data["owner"], data["command"], data["args"]) == ("alice", "echo", ["hi"])
    assert data["started_at"].endswith("Z")


@pytest.mark.root
def test_start_with_limits(jw_limits: Jw) -> None:
    result = jw_limits(
        "start",
        "--json",
        "--cpus",
        "0.5",
        "--memory",
        "256M",
        "--pids",
        "100",
        "--io-read-bps",
        "10M",
        "--io-write-bps",
        "10M",
        "--",
        "true",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["limits"] == {
        "cpus": 0.5,
        "memory_bytes": 256 << 20,
        "io_read_bps": 10 << 20,
        "io_write_bps": 10 << 20,
        "pids": 100,
        "cpuset": None,
        "memory_swap_bytes": None,
    }


def test_status_text_and_json(jw: Jw, sleeper: str) -> None:
    text = jw("status", sleeper)
    assert text.exit_code == 0
    assert f"ID:       {sleeper}" in text.stdout
    assert "State:    running" in text.stdout
    assert "Command:  sleep 300" in text.stdout
    data = json.loads(jw("status", "--json", sleeper).stdout)
    assert set(data) == set(JOB_JSON_KEYS)
    assert data["state"] == "running"
    assert data["pid"] > 0
    assert data["ended_at"] is None


def test_status_of_finished_job(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "exit 7")
    jw("logs", "-f", job_id)
    data = json.loads(jw("status", "--json", job_id).stdout)
    assert (data["state"], data["exit_code"], data["signal"]) == ("exited", 7, None)
    assert "State:    exited (code 7)" in jw("status", job_id).stdout


def test_list_table_and_alias(jw: Jw, sleeper: str) -> None:
    table = jw("list")
    assert table.exit_code == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "OWNER", "STATE", "EXIT", "STARTED", "DURATION", "COMMAND"]
    row = next(r for r in rows if r.startswith(sleeper))
    assert row.split()[1:5] == ["-", "alice", "running", "-"]
    assert row.endswith("sleep 300")
    assert jw("ps").stdout.splitlines()[0] == header


def test_list_filters_by_state(jw: Jw, sleeper: str) -> None:
    done = jw.start("true")
    jw("logs", "-f", done)
    running = jw("list", "-q", "--state", "running").stdout.split()
    exited = jw("ps", "-q", "--state", "exited").stdout.split()
    both = jw("list", "-q", "--state", "exited", "--state", "running").stdout.split()
    assert sleeper in running
    assert done not in running
    assert done in exited
    assert {sleeper, done} <= set(both)


def test_list_json(jw: Jw, sleeper: str) -> None:
    data = json.loads(jw("list", "--json").stdout)
    assert isinstance(data, list)
    assert all(set(item) == set(JOB_JSON_KEYS) for item in data)
    assert sleeper in {item["id"] for item in data}


def test_list_owner_filter_for_readers(jw: Jw, sleeper: str) -> None:
    bobs = jw.start("true", user="bob")
    alices = jw("list", "-q", "--owner", "alice", user="rita").stdout.split()
    assert sleeper in alices
    assert bobs not in alices


def test_writers_see_only_their_own_jobs(jw: Jw, sleeper: str) -> None:
    assert sleeper not in jw("list", "-q", user="bob").stdout.split()
    assert sleeper in jw("list", "-q", user="adam").stdout.split()


def test_stop_prints_the_id_and_the_job_is_stopped(jw: Jw) -> None:
    job_id = jw.start("sleep", "300")
    result = jw("stop", "--grace", "500ms", job_id)
    assert result.exit_code == 0
    assert result.stdout == f"{job_id}\n"
    data = json.loads(jw("status", "--json", job_id).stdout)
    assert data["state"] == "stopped"
    assert data["signal"] == 15


def test_stop_takes_several_ids_and_goes_on_past_a_failure(jw: Jw) -> None:
    first, second = jw.start("sleep", "300"), jw.start("sleep", "300")
    ended = jw.start("true")
    jw("wait", ended)
    result = jw("stop", "--grace", "0s", first, ended, second)
    assert result.exit_code == 6
    assert result.stdout.split() == [first, second]
    assert "already ended" in result.stderr
    for job_id in (first, second):
        assert json.loads(jw("status", "--json", job_id).stdout)["state"] == "stopped"


def test_stop_json(jw: Jw) -> None:
    job_id = jw.start("sleep", "300")
    data = json.loads(jw("stop", "--json", "--grace", "0s", job_id).stdout)
    assert (data["id"], data["state"]) == (job_id, "stopped")


def test_stop_of_a_finished_job_is_a_failed_precondition(jw: Jw) -> None:
    job_id = jw.start("true")
    jw("logs", "-f", job_id)
    result = jw("stop", job_id)
    assert result.exit_code == 6
    assert "already ended" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["status", "stop", "logs"])
def test_unknown_job_is_not_found(jw: Jw, command: str) -> None:
    result = jw(command, str(uuid.uuid4()))
    assert result.exit_code == 4
    assert result.stderr.startswith("Error: ")
    assert "not found" in result.stderr


def test_other_writers_jobs_are_not_found(jw: Jw, sleeper: str) -> None:
    for command in ("status", "stop", "logs"):
        result = jw(command, sleeper, user="bob")
        assert result.exit_code == 4, command


def test_reader_may_not_start_or_stop(jw: Jw, sleeper: str) -> None:
    started = jw("start", "--", "true", user="rita")
    assert started.exit_code == 5
    assert "Error: " in started.stderr
    assert jw("stop", sleeper, user="rita").exit_code == 5
    # ... but may look.
    assert jw("status", sleeper, user="rita").exit_code == 0


def test_invalid_job_id_is_a_usage_error(jw: Jw) -> None:
    assert jw("status", "not a job id").exit_code == 2
    # Shaped like a name (or an id prefix): looked up, and not found.
    assert jw("status", "not-a-job-id").exit_code == 4


@pytest.mark.root
def test_limit_above_the_server_ceiling_is_a_usage_error(jw_limits: Jw) -> None:
    result = jw_limits("start", "--memory", "2G", "--", "true")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")


@pytest.mark.root
def test_a_job_pinned_to_cpu_0_runs_only_there(jw_limits: Jw) -> None:
    result = jw_limits("run", "--cpuset", "0", "--", "grep", "Cpus_allowed_list", "/proc/self/status")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["Cpus_allowed_list:", "0"]


@pytest.mark.root
def test_a_cpuset_outside_the_host_names_the_rule_and_the_range(jw_limits: Jw) -> None:
    host_cpus = cpu_list_text(os.sched_getaffinity(0))
    result = jw_limits("start", "--cpuset", "4000-4001", "--", "true")
    assert result.exit_code == 2
    assert f"cpuset must name only CPUs of this host ({host_cpus}), got 4000-4001" in result.stderr


def test_a_malformed_cpuset_is_a_usage_error_before_any_call(jw: Jw) -> None:
    result = jw("start", "--cpuset", "1-0", "--", "true")
    assert result.exit_code == 2
    assert "is not a CPU list: 1-0 runs backwards" in result.stderr


def test_limits_on_a_server_without_cgroups_are_a_failed_precondition(jw: Jw) -> None:
    result = jw("start", "--memory", "256M", "--", "true")
    assert result.exit_code == 6
    assert result.stderr.startswith("Error: ")


def test_unknown_executable_is_reported(jw: Jw) -> None:
    result = jw("run", "--", "/nonexistent/program")
    assert result.exit_code == 2
    assert "not found" in result.stderr


def test_health(jw: Jw) -> None:
    for user in ("rita", "alice", "adam"):
        result = jw("health", user=user)
        assert (result.exit_code, result.stdout) == (0, "SERVING\n")


def test_info_says_limits_are_not_enforced_and_why(jw: Jw) -> None:
    result = jw("info", user="rita")
    assert result.exit_code == 0, result.stderr
    assert "You:        rita (reader)" in result.stdout
    assert "Limits:     NOT enforced: cgroups disabled by configuration" in result.stdout
    assert "Your quota: running jobs 0 of 100, output 0B of 10GiB, ended jobs kept 0 of 100" in result.stdout
    as_json = json.loads(jw("info", "--json").stdout)
    assert as_json["quota"] == {"max_running_jobs": 100, "max_output_bytes": 10 << 30, "retained_jobs": 100}
    assert set(as_json["usage"]) == {"running_jobs", "output_bytes", "retained_jobs"}
    assert as_json["limits_supported"] is False
    assert as_json["cgroup_driver"] == "none"
    assert (as_json["identity"], as_json["role"]) == ("alice", "writer")


def test_info_shows_enforced_limits_and_ceilings(jw_limits: Jw) -> None:
    result = jw_limits("info", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["limits_supported"] is True
    assert info["cgroup_driver"] in {"v1", "v2"}
    assert info["namespaces"] is True
    assert info["max_limits"]["memory_bytes"] == 1 << 30
    assert info["isolation"] == "strict"
    host_cpus = cpu_list_text(os.sched_getaffinity(0))
    assert info["max_limits"]["cpuset"] == host_cpus
    assert info["max_limits"]["memory_swap_bytes"] is None
    text = jw_limits("info").stdout
    assert "Ceilings:   cpus=" in text
    assert " memory=1GiB " in text.split("Ceilings:")[1]
    assert f" cpuset={host_cpus}" in text.split("Ceilings:")[1].splitlines()[0]
    assert "Isolation:  strict: jobs run as one uid per job" in text
