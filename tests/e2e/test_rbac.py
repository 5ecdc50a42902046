"""Roles and ownership as the client library and `jw` see them.

reader: status/list/stream on every job, never start or stop. writer: everything, but only on its
own jobs; someone else's job does not exist for it (NOT_FOUND, absent from list). admin: all jobs.
A certificate of our CA without a role may do nothing but ask for health.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from jobworker.client import (
    Client,
    JobState,
    NotFoundError,
    OutputChunk,
    PermissionDeniedError,
    StreamEnd,
)

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

NO_ROLE = "norole"
# `jw` exit statuses (see `jw --help`).
EXIT_NOT_FOUND = 4
EXIT_PERMISSION = 5


@dataclass(frozen=True)
class Jobs:
    """Jobs of the module: `running` and `finished` belong to writer, `other` to writer2."""

    running: str
    finished: str
    other: str


@pytest.fixture(scope="module")
def jobs(server: JobworkerServer) -> Iterator[Jobs]:
    """A running and a finished job of writer, and a running job of writer2."""
    finished = server.run_job("echo", ["hello from writer"])
    assert finished.info.state is JobState.EXITED
    with server.client("writer") as writer, server.client("writer2") as writer2:
        running = writer.start("sleep", ["300"])
        other = writer2.start("sleep", ["300"])
    yield Jobs(running=running.id, finished=finished.info.id, other=other.id)
    with server.client("admin") as admin:
        for job_id in (running.id, other.id):
            if not admin.status(job_id).state.is_final:
                admin.stop(job_id, grace_seconds=0)


@pytest.fixture(scope="module")
def no_role(server: JobworkerServer) -> str:
    """A client certificate of our CA that carries no role extension."""
    server.certs.issue_client(NO_ROLE, None)
    return NO_ROLE


def _output(client: Client, job_id: str) -> bytes:
    data = b""
    for event in client.stream(job_id, follow=False):
        if isinstance(event, OutputChunk):
            data += event.data
        elif isinstance(event, StreamEnd):
            break
    return data


def test_reader_cannot_start(server: JobworkerServer) -> None:
    with server.client("reader") as reader, pytest.raises(PermissionDeniedError):
        reader.start("echo", ["no"])
    result = server.jw("start", "--", "echo", "no", identity="reader")
    assert result.returncode == EXIT_PERMISSION, result.stderr


def test_reader_cannot_stop(server: JobworkerServer, jobs: Jobs) -> None:
    with server.client("reader") as reader, pytest.raises(PermissionDeniedError):
        reader.stop(jobs.running, grace_seconds=0)
    result = server.jw("stop", jobs.running, identity="reader")
    assert result.returncode == EXIT_PERMISSION, result.stderr
    with server.client("admin") as admin:
        assert admin.status(jobs.running).state is JobState.RUNNING


def test_reader_sees_every_job(server: JobworkerServer, jobs: Jobs) -> None:
    with server.client("reader") as reader:
        assert reader.status(jobs.running).owner == "writer"
        assert reader.status(jobs.other).owner == "writer2"
        listed = {job.id for job in reader.list()}
        assert {jobs.running, jobs.finished, jobs.other} <= listed
        assert _output(reader, jobs.finished) == b"hello from writer\n"
    result = server.jw("logs", jobs.finished, identity="reader")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from writer\n"


def test_writer_does_not_see_another_writers_job(server: JobworkerServer, jobs: Jobs) -> None:
    with server.client("writer2") as writer2:
        for job_id in (jobs.running, jobs.finished):
            with pytest.raises(NotFoundError):
                writer2.status(job_id)
            with pytest.raises(NotFoundError):
                writer2.stop(job_id, grace_seconds=0)
            with pytest.raises(NotFoundError):
                _output(writer2, job_id)
        listed = writer2.list()
        # Asking for writer's jobs by name does not widen a writer's view either.
        listed_by_owner = writer2.list(owner="writer")
    assert jobs.other in {job.id for job in listed}
    assert {job.owner for job in listed} == {"writer2"}
    assert {job.owner for job in listed_by_owner} <= {"writer2"}

    for command in (("status", jobs.running), ("stop", jobs.running), ("logs", jobs.finished)):
        result = server.jw(*command, identity="writer2")
        assert result.returncode == EXIT_NOT_FOUND, (command, result.stderr)
    with server.client("writer") as writer:
        assert writer.status(jobs.running).state is JobState.RUNNING


def test_writer_manages_its_own_jobs(server: JobworkerServer) -> None:
    with server.client("writer") as writer:
        job = writer.start("sleep", ["300"])
        assert writer.status(job.id).owner == "writer"
        assert job.id in {j.id for j in writer.list()}
        stopped = writer.stop(job.id, grace_seconds=0)
    assert stopped.state is JobState.STOPPED


def test_admin_may_do_everything(server: JobworkerServer, jobs: Jobs) -> None:
    with server.client("admin") as admin:
        listed = {job.id for job in admin.list()}
        assert {jobs.running, jobs.finished, jobs.other} <= listed
        assert {job.id for job in admin.list(owner="writer2")} >= {jobs.other}
        assert jobs.running not in {job.id for job in admin.list(owner="writer2")}
        assert admin.status(jobs.other).owner == "writer2"
        assert _output(admin, jobs.finished) == b"hello from writer\n"
        own = admin.start("echo", ["admin"])
        assert own.owner == "admin"
        stopped = admin.stop(jobs.other, grace_seconds=0)
    assert stopped.state is JobState.STOPPED
    assert stopped.owner == "writer2"


def test_certificate_without_role_may_only_ask_for_health(
    server: JobworkerServer, jobs: Jobs, no_role: str
) -> None:
    with server.client(no_role) as client:
        assert client.health()
        with pytest.raises(PermissionDeniedError):
            client.start("echo", ["no"])
        with pytest.raises(PermissionDeniedError):
            client.status(jobs.finished)
        with pytest.raises(PermissionDeniedError):
            client.list()
        with pytest.raises(PermissionDeniedError):
            _output(client, jobs.finished)
        with pytest.raises(PermissionDeniedError):
            client.stop(jobs.running, grace_seconds=0)
    result = server.jw("list", identity=no_role)
    assert result.returncode == EXIT_PERMISSION, result.stderr
