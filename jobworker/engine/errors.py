"""Typed errors of the job engine; the server maps each class to one gRPC status code.

JobError
├── InvalidSpecError        bad input: empty command, NUL bytes, negative limits, over a ceiling
├── StartError              the command could not be started (not found, not executable, bad cwd)
├── JobNotFoundError        no job with that id (or prefix, or name) that the caller may see
├── AmbiguousJobError       a name or id prefix that fits several jobs the caller may see
├── NameInUseError          the owner already has a stored job of that name
├── JobNotRunningError      the operation needs a running job (stop of a finished job)
├── InputUnavailableError   the job's stdin cannot be written now (not open, closed, another writer)
├── CapacityError           the server's job limit is reached
│   ├── QuotaError          the caller's own share (running jobs, stored output) is used up
│   └── StorageFullError    the state disk has no room for another job's record
├── LimitsUnsupportedError  limits were asked for but this host cannot enforce them
├── OutputUntimedError      times were asked of output stored without them (a first-release spool)
├── EngineClosedError       the engine is shutting down
└── JobStuckError           a killed job's processes did not go away (the kernel holds them)
"""

from __future__ import annotations


class JobError(Exception):
    """Root of every error the engine raises on purpose."""


class InvalidSpecError(JobError):
    """The job specification is malformed or exceeds a configured ceiling."""


class StartError(JobError):
    """The command could not be started; no job record is kept."""


class JobNotFoundError(JobError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class AmbiguousJobError(JobError):
    """A job reference (an id prefix, or a name an admin sees in several owners' jobs) fits several jobs."""


class NameInUseError(JobError):
    """The owner already has a stored job of that name (ended jobs too, until they are deleted)."""


class JobNotRunningError(JobError):
    """The job has already ended."""


class InputUnavailableError(JobError):
    """The job's stdin was not opened at start, is closed, or has a writer already."""


class JobRunningError(JobError):
    """The job is still running, and the operation needs it ended (e.g. deleting it)."""


class CapacityError(JobError):
    """The engine runs as many jobs as it is configured to allow."""


class QuotaError(CapacityError):
    """The owner already uses its whole share of the server; the message names the quota and its value."""


class StorageFullError(CapacityError):
    """The state directory's disk is full: a new job could not even store its record."""


class LimitsUnsupportedError(JobError):
    """Resource limits were requested but cgroups cannot be managed on this host."""


class OutputUntimedError(JobError):
    """A time window was asked of output stored without arrival times (a spool of the first release)."""


class EngineClosedError(JobError):
    """The engine is shutting down and accepts no new work."""


class JobStuckError(JobError):
    """SIGKILL was sent but the job's processes did not exit in time (e.g. stuck in uninterruptible IO)."""
