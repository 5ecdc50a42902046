"""`jw logs --tail/--since/--until/--timestamps/--limit-bytes` against a real server."""

from __future__ import annotations

import re
import time

from cli_fixtures import Jw

from jobworker.units import parse_rfc3339

STAMP = re.compile(rb"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z) (.*)\n")
# Two lines, a pause, two more: the second pair arrives over a second after the first.
PAUSED = ["sh", "-c", "echo a; echo b; sleep 1.2; echo c; echo d"]


def _ended(jw: Jw, *command: str) -> str:
    job_id = jw.start(*command)
    assert jw("wait", job_id).exit_code == 0
    return job_id


def test_tail_prints_the_last_lines(jw: Jw) -> None:
    job_id = _ended(jw, "sh", "-c", "seq 1 1000")
    result = jw("logs", "--tail", "3", job_id)
    assert (result.exit_code, result.stdout) == (0, "998\n999\n1000\n")
    assert jw("logs", "-n", "0", job_id).stdout == ""
    assert jw("logs", "--tail", "5000", job_id).stdout == "".join(f"{i}\n" for i in range(1, 1001))


def test_tail_of_one_stream(jw: Jw) -> None:
    job_id = _ended(jw, "sh", "-c", "echo o1; echo e1 >&2; echo o2; echo e2 >&2")
    result = jw("logs", "--stderr", "--tail", "1", job_id)
    assert (result.stdout, result.stderr) == ("", "e2\n")


def test_timestamps_prefix_every_line_and_since_picks_the_later_ones(jw: Jw) -> None:
    job_id = _ended(jw, *PAUSED)
    stamped = jw("logs", "--timestamps", job_id)
    assert stamped.exit_code == 0
    lines = STAMP.findall(stamped.stdout_bytes)
    assert [text for _, text in lines] == [b"a", b"b", b"c", b"d"]
    times = [parse_rfc3339(stamp.decode()) for stamp, _ in lines]
    assert times == sorted(times)
    assert times[2] - times[1] > 1_000_000_000
    since = jw("logs", "--since", lines[2][0].decode(), job_id)
    assert since.stdout == "c\nd\n"
    until = jw("logs", "--until", lines[1][0].decode(), job_id)
    assert until.stdout == "a\nb\n"
    # A duration ago: everything arrived in the last hour, nothing in the future.
    assert jw("logs", "--since", "1h", job_id).stdout == "a\nb\nc\nd\n"


def test_limit_bytes_stops_early(jw: Jw) -> None:
    job_id = _ended(jw, "sh", "-c", "seq 1 100")
    result = jw("logs", "--limit-bytes", "5", job_id)
    assert (result.exit_code, result.stdout) == (0, "1\n2\n3")
    assert jw("logs", "--tail", "2", "--limit-bytes", "3", job_id).stdout == "99\n"


def test_follow_from_a_tail_then_live(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "seq 1 50; sleep 1; echo live")
    # The tail is taken when the call starts: wait until the first lines are stored.
    deadline = time.monotonic() + 10
    while not jw("logs", job_id).stdout.endswith("50\n"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = jw("logs", "-f", "--tail", "2", job_id)
    assert (result.exit_code, result.stdout) == (0, "49\n50\nlive\n")


def test_follow_with_until_stops_at_that_time(jw: Jw) -> None:
    job_id = jw.start("sh", "-c", "echo first; sleep 30; echo never")
    t0 = time.monotonic()
    result = jw("logs", "-f", "--until", "0s", job_id)
    assert (result.exit_code, result.stdout) == (0, "first\n") or result.stdout == ""
    assert time.monotonic() - t0 < 10
    assert jw("stop", job_id).exit_code == 0


def test_bad_windows_are_usage_errors(jw: Jw) -> None:
    job_id = _ended(jw, "true")
    for args in (
        ("--tail", "-1"),
        ("--since", "yesterday"),
        ("--until", "2026-13-01T00:00:00Z"),
        ("--limit-bytes", "0"),
    ):
        result = jw("logs", *args, job_id)
        assert result.exit_code == 2, args
        assert "Traceback" not in result.stderr
    # Since after until reaches the server, which refuses it as invalid: exit 2, one line.
    result = jw("logs", "--since", "1m", "--until", "2m", job_id)
    assert result.exit_code == 2
    assert "since" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_tail_followed_across_connection_retirement_loses_and_repeats_nothing(jw_aging: Jw) -> None:
    # The server retires connections after about a second: the client resumes by offset, not by tail.
    job_id = jw_aging.start("sh", "-c", "for i in $(seq 1 30); do echo $i; sleep 0.1; done")
    deadline = time.monotonic() + 10
    while "3\n" not in jw_aging("logs", job_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = jw_aging("logs", "-f", "--tail", "1", job_id)
    assert result.exit_code == 0, result.stderr
    numbers = [int(line) for line in result.stdout.split()]
    assert numbers == list(range(numbers[0], 31))
    assert numbers[0] >= 3
