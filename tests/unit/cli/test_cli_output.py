"""`jw run` and `jw logs` copy output byte for byte and `jw run` exits with the job's code."""

from __future__ import annotations

import pytest
from cli_fixtures import OUTPUT_CAP, UUID, Jw

ALL_BYTES = bytes(range(256))
# A printf format producing every byte value 0..255 (as octal escapes, so `%` is harmless).
ALL_BYTES_FORMAT = "".join(f"\\{value:03o}" for value in ALL_BYTES)
BOTH_STREAMS = ["sh", "-c", 'printf "$1"; printf "$1" >&2', "sh", ALL_BYTES_FORMAT]


def test_run_copies_every_byte_value_to_the_right_stream(jw: Jw) -> None:
    result = jw("run", "--", *BOTH_STREAMS)
    assert result.exit_code == 0
    assert result.stdout_bytes == ALL_BYTES
    assert result.stderr_bytes == ALL_BYTES


def test_logs_copies_every_byte_value(jw: Jw) -> None:
    job_id = jw.start(*BOTH_STREAMS)
    jw("logs", "-f", job_id)  # returns once the job has ended
    result = jw("logs", job_id)
    assert result.exit_code == 0
    assert result.stdout_bytes == ALL_BYTES
    assert result.stderr_bytes == ALL_BYTES


def test_logs_selects_one_stream(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "printf out; printf err >&2")
    jw("logs", "-f", job_id)
    only_out = jw("logs", "--stdout", job_id)
    only_err = jw("logs", "--stderr", job_id)
    assert (only_out.stdout_bytes, only_out.stderr_bytes) == (b"out", b"")
    assert (only_err.stdout_bytes, only_err.stderr_bytes) == (b"", b"err")


def test_logs_offset_resumes_within_the_selected_view(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "printf 0123456789; printf abc >&2")
    jw("logs", "-f", job_id)
    assert jw("logs", "--stdout", "--offset", "4", job_id).stdout_bytes == b"456789"
    assert jw("logs", "--stderr", "--offset", "1", job_id).stderr_bytes == b"bc"
    assert jw("logs", "--offset", "13", job_id).stdout_bytes == b""


def test_logs_without_follow_prints_what_exists_and_exits(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "echo first; exec sleep 60")
    try:
        # Follow until the first line is there, then a plain `logs` must return at once.
        result = jw("logs", job_id)
        while result.stdout_bytes != b"first\n":
            result = jw("logs", job_id)
        assert result.exit_code == 0
    finally:
        jw("stop", "--grace", "0s", job_id)


def test_logs_follow_streams_until_the_job_ends(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "echo a; sleep 0.5; echo b >&2; sleep 0.5; echo c")
    result = jw("logs", "-f", job_id)
    assert result.exit_code == 0
    assert result.stdout_bytes == b"a\nc\n"
    assert result.stderr_bytes == b"b\n"


def test_truncated_output_is_noted_on_stderr(jw: Jw) -> None:
    result = jw("run", "--", "head", "-c", str(OUTPUT_CAP + 4096), "/dev/zero")
    assert result.exit_code == 0
    assert len(result.stdout_bytes) == OUTPUT_CAP
    assert result.stderr.count("was truncated") == 1
    assert "output cap" in result.stderr


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
        ("kill -SEGV $$", 139),
    ],
)
def test_run_exits_with_the_jobs_code(jw: Jw, script: str, code: int) -> None:
    assert jw("run", "--", "sh", "-c", script).exit_code == code


def test_run_passes_environment_and_cwd(jw: Jw) -> None:
    result = jw(
        "run",
        "--env",
        "GREETING=hello world",
        "-e",
        "EMPTY=",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        'printf "%s|%s|%s" "$GREETING" "${EMPTY-unset}" "$(pwd)"',
    )
    assert result.stdout == "hello world||/tmp"


def test_run_passes_a_variable_from_this_shell(jw: Jw) -> None:
    result = jw(
        "run",
        "--env",
        "JW_TEST_VALUE",
        "--",
        "sh",
        "-c",
        'printf "$JW_TEST_VALUE"',
        env={"JW_TEST_VALUE": "from the shell"},
    )
    assert result.stdout == "from the shell"


def test_run_options_stop_at_the_command(jw: Jw) -> None:
    # Without `--`, options after the command belong to the command, like docker run.
    result = jw("run", "echo", "-n", "--json")
    assert result.stdout == "--json"


@pytest.mark.root
def test_run_reports_an_oom_kill(jw_limits: Jw) -> None:
    result = jw_limits(
        "run",
        "--memory",
        "32M",
        "--",
        "python3",
        "-c",
        "x = bytearray(256 * 1024 * 1024); print(len(x))",
    )
    assert result.exit_code == 137
    assert "OOM-killed" in result.stderr


def test_start_prints_only_the_id(jw: Jw) -> None:
    result = jw("start", "--", "true")
    assert result.exit_code == 0
    assert UUID.fullmatch(result.stdout.rstrip("\n"))
    assert result.stdout.count("\n") == 1
