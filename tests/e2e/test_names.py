"""A job named and labelled through the image, then used by its name and by an id prefix."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer


def test_a_job_is_used_by_its_name_and_its_name_is_private(server: JobworkerServer) -> None:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    run = server.jw("run", "--name", name, "-l", "suite=e2e", "--", "sh", "-c", "echo named")
    assert (run.returncode, run.stdout) == (0, "named\n"), run.stderr

    status = json.loads(server.jw("status", "--json", name).stdout)
    assert (status["name"], status["labels"], status["state"]) == (name, {"suite": "e2e"}, "exited")
    job_id = status["id"]
    assert server.jw("logs", name).stdout == "named\n"
    assert server.jw("wait", job_id[:12]).returncode == 0
    listed = server.jw("list", "-q", "--name", name, "-l", "suite=e2e")
    assert listed.stdout.split() == [job_id]

    # Taken until deleted; another writer neither sees it nor is kept from the name.
    duplicate = server.jw("start", "--name", name, "--", "true")
    assert duplicate.returncode == 6
    assert "already exists" in duplicate.stderr
    hidden = server.jw("status", name, identity="writer2")
    assert hidden.returncode == 4
    assert hidden.stderr.strip() == f"Error: job {name} not found"
    assert server.jw("status", name, identity="reader").returncode == 0

    assert server.jw("rm", name).stdout.strip() == job_id
    again = server.jw("start", "--name", name, "--", "true")
    assert again.returncode == 0, again.stderr
