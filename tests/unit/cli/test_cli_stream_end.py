"""When a followed stream ends without the job ending, jw says so and how to resume (exit 3)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_fixtures import Jw

from jobworker.client import (
    Client,
    ConnectionFailedError,
    OutputChunk,
    OutputEvent,
    OutputStream,
    StreamEnd,
    StreamEndReason,
)

JOB = "5b0f7f4e-8f0a-4b7e-9f43-2f6f1e0c2a11"


def scripted(*events: OutputEvent | Exception) -> object:
    def stream(self: Client, job_id: str, **kwargs: object) -> Iterator[OutputEvent]:
        for event in events:
            if isinstance(event, Exception):
                raise event
            yield event

    return stream


CHUNK = OutputChunk(OutputStream.STDOUT, 10, b"abc")


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ((CHUNK, StreamEnd(StreamEndReason.SERVER_SHUTDOWN, False, None)), "server shut down"),
        ((CHUNK,), "output stream broke off"),
        ((CHUNK, ConnectionFailedError("connection lost")), "connection lost"),
    ],
)
def test_interrupted_stream_gives_a_resume_command(
    jw: Jw, monkeypatch: pytest.MonkeyPatch, events: tuple[object, ...], message: str
) -> None:
    monkeypatch.setattr(Client, "stream", scripted(*events))  # type: ignore[arg-type]
    result = jw("logs", "-f", "--stdout", "--offset", "10", JOB)
    assert result.exit_code == 3
    assert result.stdout_bytes == b"abc"
    assert message in result.stderr
    assert f"resume with: jw logs -f --stdout --offset 13 {JOB}" in result.stderr
