"""Exit codes of `jw`, and the one mapping from client errors to ClickExceptions carrying them."""

from __future__ import annotations

import enum
import textwrap
from typing import IO, Any

import click

from jobworker.client import (
    AlreadyExistsError,
    AuthenticationError,
    ClientError,
    ConfigError,
    ConnectionFailedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)


class ExitCode(enum.IntEnum):
    """Process exit statuses of `jw` (besides `jw run`, which returns the job's own)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    CONNECTION = 3
    NOT_FOUND = 4
    PERMISSION = 5
    PRECONDITION = 6
    # What a shell reports for a process ended by Ctrl-C (128 + SIGINT).
    INTERRUPTED = 130


EXIT_CODE_TABLE: tuple[tuple[ExitCode, str], ...] = (
    (ExitCode.OK, "success"),
    (ExitCode.ERROR, "other error (server error, server at capacity, jw health: not serving)"),
    (
        ExitCode.USAGE,
        "usage or configuration error (bad option, unusable cert/key/CA file, request rejected as invalid)",
    ),
    (ExitCode.CONNECTION, "connection or TLS error (unreachable, timed out, certificate refused)"),
    (ExitCode.NOT_FOUND, "job not found"),
    (ExitCode.PERMISSION, "permission denied (role not allowed, or identity not accepted)"),
    (
        ExitCode.PRECONDITION,
        "failed precondition (e.g. stopping a job that has already ended, a job name already in use)",
    ),
    (ExitCode.INTERRUPTED, "interrupted by Ctrl-C (jw run: detached, or the job stopped)"),
)
"""The one table of exit codes: `jw --help` prints it and the README's table must match it (a test)."""

JOB_EXIT_NOTE = (
    "jw run and jw wait exit with the job's own code instead: 128+N if signal N killed it "
    "(137 for an OOM kill); jw wait with several jobs, the first non-zero in the order given."
)


def exit_code_help(width: int = 78) -> str:
    """The exit-code table as `--help` text (click's no-rewrap block)."""
    lines = ["\b", "Exit codes:"]
    for code, text in EXIT_CODE_TABLE:
        wrapped = textwrap.wrap(text, width - 7)
        lines.append(f"  {int(code):<4} {wrapped[0]}")
        lines.extend(f"       {more}" for more in wrapped[1:])
    lines.extend(textwrap.wrap(JOB_EXIT_NOTE, width))
    return "\n".join(lines)


class JwError(click.ClickException):
    """A one-line error with its exit code; printed as `Error: ...` on stderr."""

    exit_code = ExitCode.ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)


class UsageExit(JwError):
    """Connection settings or credential files are unusable (a usage error, no usage text)."""

    exit_code = ExitCode.USAGE


class ConnectionExit(JwError):
    """The server is unreachable or the TLS handshake failed."""

    exit_code = ExitCode.CONNECTION


class NotFoundExit(JwError):
    """No such job (or not visible to us)."""

    exit_code = ExitCode.NOT_FOUND


class PermissionExit(JwError):
    """The server refused who we are or what our role may do."""

    exit_code = ExitCode.PERMISSION


class PreconditionExit(JwError):
    """The operation does not apply to the job's state (e.g. stop of a finished job)."""

    exit_code = ExitCode.PRECONDITION


_BY_ERROR: tuple[tuple[type[ClientError], type[JwError]], ...] = (
    (ConfigError, UsageExit),
    (InvalidArgumentError, UsageExit),
    (ConnectionFailedError, ConnectionExit),
    (NotFoundError, NotFoundExit),
    (PermissionDeniedError, PermissionExit),
    (AuthenticationError, PermissionExit),
    (FailedPreconditionError, PreconditionExit),
    (AlreadyExistsError, PreconditionExit),
)


def exit_for(error: ClientError) -> JwError:
    """Map a client error to the ClickException that reports it with the right exit code."""
    for client_type, exit_type in _BY_ERROR:
        if isinstance(error, client_type):
            return exit_type(error.message)
    return JwError(error.message)
