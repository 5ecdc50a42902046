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


def scripted(*calls: tuple[OutputEvent | Exception, ...]) -> tuple[object, list[object]]:
    """A Client.stream that plays one tuple of events per call (then refuses to connect), and the
    offsets it was called with."""
    offsets: list[object] = []

    def stream(self: Client, job_id: str, **kwargs: object) -> Iterator[OutputEvent]:
        offsets.append(kwargs["offset"])
        events = (
            calls[len(offsets) - 1] if len(offsets) <= len(calls) else (ConnectionFailedError("refused"),)
        )
        for event in events:
            if isinstance(event, Exception):
                raise event
            yield event

    return stream, offsets


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
    jw: Jw, monkeypatch: pytest.MonkeyPatch, events: tuple[OutputEvent | Exception, ...], message: str
) -> None:
    stream, offsets = scripted(events)
    monkeypatch.setattr(Client, "stream", stream)
    result = jw("--timeout", "1", "logs", "-f", "--stdout", "--offset", "10", JOB)
    assert result.exit_code == 3
    assert result.stdout_bytes == b"abc"
    # It tried again from where it was, for at most --timeout, then said how to resume.
    assert f"{message} while streaming job {JOB}; reconnecting for up to 3 s" in result.stderr
    assert set(offsets[1:]) == {13}
    assert len(offsets) >= 2
    assert f"resume with: jw logs -f --stdout --offset 13 {JOB}" in result.stderr


def test_a_follower_resumes_where_it_was_after_a_server_restart(
    jw: Jw, monkeypatch: pytest.MonkeyPatch
) -> None:
    rest = OutputChunk(OutputStream.STDOUT, 13, b"def")
    stream, offsets = scripted(
        (CHUNK, StreamEnd(StreamEndReason.SERVER_SHUTDOWN, False, None)),
        (ConnectionFailedError("connection refused"),),
        (rest, StreamEnd(StreamEndReason.JOB_ENDED, False, None)),
    )
    monkeypatch.setattr(Client, "stream", stream)
    result = jw("logs", "-f", "--stdout", "--offset", "10", JOB)
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == b"abcdef"
    assert offsets == [10, 13, 13]
    assert "reconnected" in result.stderr


def test_logs_without_follow_does_not_retry(jw: Jw, monkeypatch: pytest.MonkeyPatch) -> None:
    stream, offsets = scripted((CHUNK, StreamEnd(StreamEndReason.SERVER_SHUTDOWN, False, None)))
    monkeypatch.setattr(Client, "stream", stream)
    result = jw("logs", "--stdout", "--offset", "10", JOB)
    assert result.exit_code == 3
    assert offsets == [10]
