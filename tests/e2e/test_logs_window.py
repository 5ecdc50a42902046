"""`jw logs --tail` and `--since` against the image: a job with a pause, so its lines have known times."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

STAMP = re.compile(r"(\S+Z) (.*)")


def test_logs_tail_and_since(server: JobworkerServer) -> None:
    started = server.jw("start", "--", "sh", "-c", "seq 1 5; sleep 1.5; echo late")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    assert server.jw("wait", job_id).returncode == 0
    tail = server.jw("logs", "--tail", "2", job_id)
    assert (tail.returncode, tail.stdout) == (0, "5\nlate\n"), tail.stderr
    stamped = server.jw("logs", "--timestamps", job_id)
    lines = [STAMP.fullmatch(line) for line in stamped.stdout.splitlines()]
    assert all(lines), stamped.stdout
    times = {m.group(2): m.group(1) for m in lines if m}
    since = server.jw("logs", "--since", times["late"], job_id)
    assert (since.returncode, since.stdout) == (0, "late\n"), since.stderr
    # Everything arrived within the last hour; nothing before the first line.
    assert server.jw("logs", "--since", "1h", job_id).stdout == "1\n2\n3\n4\n5\nlate\n"
