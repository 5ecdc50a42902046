"""EngineEvents: what an observer hears of job starts and ends, and the counts it reads from the table."""

from __future__ import annotations

import asyncio
import logging

import pytest

from jobworker.engine import EngineCounts, JobManager, JobSpec, JobState, JobStatus, StartError

PYTHON = "python3"


class Recorder:
    """An observer that keeps what it heard."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[JobStatus] = []

    def job_started(self, seconds: float) -> None:
        self.starts.append(seconds)

    def job_ended(self, status: JobStatus) -> None:
        self.ends.append(status)


class Broken:
    """An observer that fails on every event."""

    def job_started(self, seconds: float) -> None:
        raise RuntimeError("observer bug")

    def job_ended(self, status: JobStatus) -> None:
        raise RuntimeError("observer bug")


async def test_an_observer_hears_each_start_and_the_final_status_of_an_end(
    plain_manager: JobManager,
) -> None:
    recorder = Recorder()
    plain_manager.events.subscribe(recorder)
    status = await plain_manager.start(JobSpec(PYTHON, ("-c", "print('x' * 9); raise SystemExit(3)")))
    assert len(recorder.starts) == 1
    assert 0 < recorder.starts[0] < 10
    await plain_manager.wait(status.id)
    assert len(recorder.ends) == 1
    ended = recorder.ends[0]
    assert (ended.id, ended.state, ended.exit_code) == (status.id, JobState.EXITED, 3)
    # The output counters are final: ten bytes with the newline.
    assert ended.stdout_bytes + ended.stderr_bytes == 10


async def test_a_launch_that_fails_is_no_start(plain_manager: JobManager) -> None:
    recorder = Recorder()
    plain_manager.events.subscribe(recorder)
    with pytest.raises(StartError):
        await plain_manager.start(JobSpec("/nonexistent/command"))
    assert recorder.starts == []
    assert recorder.ends == []


async def test_a_failing_observer_never_fails_a_job(
    plain_manager: JobManager, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    plain_manager.events.subscribe(Broken())
    plain_manager.events.subscribe(recorder)
    with caplog.at_level(logging.ERROR, logger="jobworker.engine"):
        status = await plain_manager.start(JobSpec(PYTHON, ("-c", "pass")))
        final = await plain_manager.wait(status.id)
    assert final.state is JobState.EXITED
    # The observers after the broken one still hear everything.
    assert len(recorder.starts) == len(recorder.ends) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "jobworker.engine"] == [
        "engine observer failed on a job start",
        "engine observer failed on a job end",
    ]


async def test_counts_are_the_running_jobs_and_their_stored_output(plain_manager: JobManager) -> None:
    assert plain_manager.events.counts() == EngineCounts(running_jobs=0, running_output_bytes=0)
    done = await plain_manager.start(JobSpec(PYTHON, ("-c", "print('ended')")))
    await plain_manager.wait(done.id)
    script = "import sys, time; sys.stdout.write('y' * 50); sys.stdout.flush(); time.sleep(300)"
    live = await plain_manager.start(JobSpec(PYTHON, ("-c", script)))
    follower = plain_manager.follow(live.id)
    try:
        async with asyncio.timeout(10):
            await anext(follower)
    finally:
        await follower.aclose()
    # The ended job's output is no longer "running"; the live one's 50 bytes are.
    assert plain_manager.events.counts() == EngineCounts(running_jobs=1, running_output_bytes=50)
    await plain_manager.stop(live.id, grace_seconds=1)
    assert plain_manager.events.counts() == EngineCounts(running_jobs=0, running_output_bytes=0)


async def test_an_unsubscribed_observer_hears_nothing_more(plain_manager: JobManager) -> None:
    recorder = Recorder()
    plain_manager.events.subscribe(recorder)
    plain_manager.events.unsubscribe(recorder)
    plain_manager.events.unsubscribe(recorder)
    status = await plain_manager.start(JobSpec(PYTHON, ("-c", "pass")))
    await plain_manager.wait(status.id)
    assert recorder.starts == recorder.ends == []
