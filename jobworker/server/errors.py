"""The one translation of failures into gRPC status codes.

Handlers raise engine errors (`jobworker.engine.JobError`) or `ServiceError` for problems found
before the engine is involved; only the call wrapper in `auth` turns them into a status, through
`status_for`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from jobworker.engine import (
    AmbiguousJobError,
    CapacityError,
    EngineClosedError,
    InputUnavailableError,
    InvalidSpecError,
    JobError,
    JobNotFoundError,
    JobNotRunningError,
    JobRunningError,
    JobStuckError,
    LimitsUnsupportedError,
    NameInUseError,
    OutputUntimedError,
    QuotaError,
    StartError,
    StorageFullError,
)

INTERNAL_MESSAGE = "internal server error"

ENGINE_ERROR_CODES: Mapping[type[BaseException], grpc.StatusCode] = {
    InvalidSpecError: grpc.StatusCode.INVALID_ARGUMENT,
    # Executable missing or not executable, cwd missing: the request names what is not there.
    StartError: grpc.StatusCode.INVALID_ARGUMENT,
    JobNotFoundError: grpc.StatusCode.NOT_FOUND,
    # The reference, not the jobs' state, is what the caller must fix (docker: invalid parameter).
    AmbiguousJobError: grpc.StatusCode.INVALID_ARGUMENT,
    NameInUseError: grpc.StatusCode.ALREADY_EXISTS,
    JobNotRunningError: grpc.StatusCode.FAILED_PRECONDITION,
    JobRunningError: grpc.StatusCode.FAILED_PRECONDITION,
    # Not started with stdin, stdin closed, or another writer: the job's state refuses the write.
    InputUnavailableError: grpc.StatusCode.FAILED_PRECONDITION,
    CapacityError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QuotaError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # The state disk has no room for another job: capacity, like the job limit, not a server fault.
    StorageFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    LimitsUnsupportedError: grpc.StatusCode.FAILED_PRECONDITION,
    OutputUntimedError: grpc.StatusCode.FAILED_PRECONDITION,
    EngineClosedError: grpc.StatusCode.UNAVAILABLE,
    # SIGKILL sent, processes not gone yet: the stop did not complete in time, the server is fine.
    JobStuckError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ServiceError(Exception):
    """A request refused by the server itself, with the status code to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(message: str) -> ServiceError:
    """Return a ServiceError for malformed input."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def one_line(text: str, limit: int = 300) -> str:
    """Collapse `text` to a single line of at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """Return (code, one-line message) for an expected error, None for anything unexpected."""
    if isinstance(exc, ServiceError):
        return exc.code, one_line(exc.message)
    if isinstance(exc, JobError):
        for cls in type(exc).__mro__:
            code = ENGINE_ERROR_CODES.get(cls)
            if code is not None:
                return code, one_line(str(exc) or cls.__name__)
    return None
