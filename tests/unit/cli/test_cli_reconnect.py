"""jw over connections the server retires (--max-connection-age): reconnecting is invisible to the user."""

from __future__ import annotations

import asyncio

from cli_fixtures import Jw, Pki, ServerProcess

from jobworker.client import AsyncClient, ClientConfig, OutputChunk

# About three seconds of output: longer than the server's connection age plus its grace.
SLOW = ["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done"]
SLOW_OUTPUT = "".join(f"{i}\n" for i in range(1, 7))


def test_run_streams_across_connection_retirement(jw_aging: Jw) -> None:
    result = jw_aging("run", "--", *SLOW)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == SLOW_OUTPUT
    assert result.stderr == ""


def test_logs_follow_and_later_calls_reconnect(jw_aging: Jw) -> None:
    job = jw_aging.start(*SLOW)
    result = jw_aging("logs", "-f", job)
    assert (result.exit_code, result.stdout, result.stderr) == (0, SLOW_OUTPUT, "")
    # A new call after the connection aged out simply gets a new one.
    assert jw_aging("status", job).exit_code == 0


def test_the_async_client_resumes_a_stream_too(aging_server: ServerProcess, credentials: Pki) -> None:
    config = ClientConfig(
        server=aging_server.address,
        ca=credentials.ca,
        cert=credentials.cert("alice"),
        key=credentials.key("alice"),
    )

    async def run() -> bytes:
        async with AsyncClient(config, timeout=10) as client:
            job = await client.start(SLOW[0], SLOW[1:])
            chunks = [event async for event in client.stream(job.id) if isinstance(event, OutputChunk)]
        ends = [0] + [chunk.end_offset for chunk in chunks[:-1]]
        assert [chunk.offset for chunk in chunks] == ends, "no byte twice, none skipped"
        return b"".join(chunk.data for chunk in chunks)

    assert asyncio.run(run()).decode() == SLOW_OUTPUT
