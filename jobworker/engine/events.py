"""What the engine tells an observer (metrics, for one): events as they happen, counts read at any time.

The engine calls `EngineEvents` at two points, a job started (with how long starting it took) and a job
ended (with its final status); everything else an observer needs is read from the job table when asked
(`counts()`), so nothing is counted twice or kept by hand. Observers run on the engine's event loop and
must be quick; one that raises is logged and never fails a start or an end.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from jobworker.engine.job import JobState, JobStatus
from jobworker.engine.table import JobTable, stored_bytes

log = logging.getLogger("jobworker.engine")


class EngineObserver(Protocol):
    """Receives the engine's events (on its event loop)."""

    def job_started(self, seconds: float) -> None:
        """A job's command runs; starting it took `seconds` (from the quota check to the running command)."""

    def job_ended(self, status: JobStatus) -> None:
        """A job ended; `status` is final (state, exit code, output counters)."""


@dataclass(frozen=True)
class EngineCounts:
    """What the job table holds now."""

    running_jobs: int
    # Output stored so far by the running jobs (ended jobs' output is in their final status).
    running_output_bytes: int


class EngineEvents:
    """The engine's hook points and its observers."""

    def __init__(self, table: JobTable) -> None:
        self._table = table
        self._observers: list[EngineObserver] = []

    def subscribe(self, observer: EngineObserver) -> None:
        """Call `observer` from now on."""
        self._observers.append(observer)

    def unsubscribe(self, observer: EngineObserver) -> None:
        """Stop calling `observer` (nothing happens when it was not subscribed)."""
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Wraps a job's launch: when the block completes, the job started, and observers hear how long
        it took; a launch that raises is no start."""
        began = time.monotonic()
        yield
        seconds = time.monotonic() - began
        for observer in list(self._observers):
            try:
                observer.job_started(seconds)
            except Exception:
                log.exception("engine observer failed on a job start")

    def job_ended(self, status: JobStatus) -> None:
        """Tell observers that a job ended, with its final status."""
        for observer in list(self._observers):
            try:
                observer.job_ended(status)
            except Exception:
                log.exception("engine observer failed on a job end")

    def counts(self) -> EngineCounts:
        """Running jobs and the output they stored so far, read from the job table (cheap: no cgroup
        or disk reads)."""
        running = output = 0
        for job in self._table:
            if job.status.state is JobState.RUNNING:
                running += 1
                output += stored_bytes(job)
        return EngineCounts(running_jobs=running, running_output_bytes=output)
