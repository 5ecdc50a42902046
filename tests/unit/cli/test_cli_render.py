"""Human output is humanised; JSON output has the stable documented keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cli_fixtures import JOB_JSON_KEYS

from jobworker.cli._render import (
    format_ago,
    format_duration,
    format_size,
    job_details,
    job_json,
    job_table,
    newest_first,
)
from jobworker.client import JobInfo, JobState, Limits, Usage

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def job(**fields: object) -> JobInfo:
    values: dict[str, object] = {
        "id": "0b7d2a4e-5f0c-4c1e-9a51-3f3f0c1b2a10",
        "owner": "alice",
        "command": "sh",
        "args": ("-c", "echo 'hi there'"),
        "state": JobState.EXITED,
        "exit_code": 0,
        "started_at": NOW - timedelta(minutes=3),
        "ended_at": NOW - timedelta(minutes=1),
    }
    values.update(fields)
    return JobInfo(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0B"), (1023, "1023B"), (1024, "1KiB"), (1536, "1.5KiB"), (256 << 20, "256MiB"), (5 << 30, "5GiB")],
)
def test_format_size(count: int, text: str) -> None:
    assert format_size(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.35, "350ms"),
        (4.25, "4.2s"),
        (42, "42s"),
        (192, "3m12s"),
        (7500, "2h05m"),
        (3 * 86400 + 4 * 3600, "3d04h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "just now"), (12, "12s ago"), (180, "3m ago"), (7200, "2h ago"), (4 * 86400, "4d ago")],
)
def test_format_ago(seconds: int, text: str) -> None:
    assert format_ago(NOW - timedelta(seconds=seconds), NOW) == text


def test_json_keys_are_stable_and_timestamps_rfc3339() -> None:
    data = job_json(job(limits=Limits(cpus=0.5), usage=Usage(cpu_seconds=1.0)))
    assert list(data) == JOB_JSON_KEYS
    assert data["started_at"] == "2024-05-01T11:57:00Z"
    assert data["limits"] == {
        "cpus": 0.5,
        "memory_bytes": None,
        "io_read_bps": None,
        "io_write_bps": None,
        "pids": None,
        "cpuset": None,
        "memory_swap_bytes": None,
    }
    assert data["usage"] == {"cpu_seconds": 1.0, "memory_peak_bytes": None, "oom_kills": 0}
    json.dumps(data)


def test_table_shows_full_ids_newest_first_and_humanised_times() -> None:
    older = job(id="11111111-1111-4111-8111-111111111111", started_at=NOW - timedelta(hours=2))
    running = job(state=JobState.RUNNING, exit_code=None, ended_at=None, command="sleep", args=("100",))
    killed = job(
        id="22222222-2222-4222-8222-222222222222",
        state=JobState.SIGNALED,
        exit_code=None,
        signal=9,
        started_at=NOW - timedelta(minutes=5),
        command="x" * 80,
        args=(),
    )
    lines = job_table(newest_first([older, killed, running]), NOW).splitlines()
    assert lines[0].split() == ["ID", "NAME", "OWNER", "STATE", "EXIT", "STARTED", "DURATION", "COMMAND"]
    assert lines[1].split()[:7] == [running.id, "-", "alice", "running", "-", "3m", "ago"]
    assert lines[1].split()[7:] == ["3m00s", "sleep", "100"]
    assert "SIGKILL" in lines[2]
    assert lines[2].endswith("...")
    assert older.id in lines[3]
    assert "2h ago" in lines[3]
    assert "sh -c 'echo '\"'\"'hi there'\"'\"''" in lines[3]


def test_details_block() -> None:
    text = job_details(
        job(
            state=JobState.OOM_KILLED,
            exit_code=None,
            signal=9,
            limits=Limits(memory_bytes=256 << 20, cpus=0.5),
            usage=Usage(memory_peak_bytes=256 << 20),
            output_truncated=True,
        ),
        NOW,
    )
    assert "State:    oom_killed (SIGKILL)" in text
    assert "Limits:   cpus=0.5 memory=256MiB" in text
    assert "peak memory 256MiB" in text
    assert "Duration: 2m00s" in text
    assert "truncated" in text


def test_details_name_why_output_was_truncated() -> None:
    text = job_details(
        job(
            stdout_bytes=2 << 20,
            output_truncated=True,
            truncation_reason="state disk full",
            output_dropped_bytes=98 << 20,
        ),
        NOW,
    )
    assert "stdout 2MiB, stderr 0B (truncated: state disk full), 98MiB dropped" in text


def test_status_names_processes_killed_for_memory() -> None:
    from jobworker.cli._render import job_details
    from jobworker.client import Usage

    text = job_details(job(usage=Usage(cpu_seconds=0.5, oom_kills=2)), NOW)
    assert "2 process(es) killed for memory (OOM)" in text
