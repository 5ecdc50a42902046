"""The one exception tree of the client, and the one place gRPC errors are translated into it.

ClientError                  root; `.code` names the gRPC status code (or CONFIG)
├── ConfigError              no server address, missing/unreadable/invalid cert, key or CA file
├── ConnectionFailedError    unreachable, timed out, TLS handshake failed (UNAVAILABLE, DEADLINE)
├── AuthenticationError      the server did not accept who we are (UNAUTHENTICATED)
├── PermissionDeniedError    our role may not do this (PERMISSION_DENIED)
├── NotFoundError            no such job, or not visible to us (NOT_FOUND)
├── InvalidArgumentError     the request was malformed or over a ceiling (INVALID_ARGUMENT)
├── FailedPreconditionError  stop of a finished job, limits unsupported (FAILED_PRECONDITION)
├── AlreadyExistsError       we already have a job of that name (ALREADY_EXISTS)
├── ResourceExhaustedError   the server is at capacity (RESOURCE_EXHAUSTED)
└── ServerError              anything else (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)
"""

from __future__ import annotations

import re

import grpc
import grpc.aio


class ClientError(Exception):
    """Root of every error the client raises on purpose."""

    default_code = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class ConfigError(ClientError):
    """The connection settings are incomplete or a certificate/key file is unusable."""

    default_code = "CONFIG"


class ConnectionFailedError(ClientError):
    """The server could not be reached or the TLS handshake failed."""

    default_code = "UNAVAILABLE"

    def __init__(self, message: str, *, code: str | None = None, server_sent: bool = False) -> None:
        super().__init__(message, code=code)
        # The server itself answered UNAVAILABLE (it is shutting down): it was reached.
        self.server_sent = server_sent


class AuthenticationError(ClientError):
    """The server did not accept our identity."""

    default_code = "UNAUTHENTICATED"


class PermissionDeniedError(ClientError):
    """Our role does not allow this operation."""

    default_code = "PERMISSION_DENIED"


class NotFoundError(ClientError):
    """No such job, or the job belongs to someone we may not see."""

    default_code = "NOT_FOUND"


class InvalidArgumentError(ClientError):
    """The server rejected the request's arguments."""

    default_code = "INVALID_ARGUMENT"


class FailedPreconditionError(ClientError):
    """The operation does not apply to the job's current state or this host."""

    default_code = "FAILED_PRECONDITION"


class AlreadyExistsError(ClientError):
    """We already have a stored job of the name asked for."""

    default_code = "ALREADY_EXISTS"


class ResourceExhaustedError(ClientError):
    """The server is at capacity."""

    default_code = "RESOURCE_EXHAUSTED"


class ServerError(ClientError):
    """The server failed in a way the client cannot attribute to the request."""

    default_code = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.UNAVAILABLE: ConnectionFailedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ConnectionFailedError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}

# grpc prefixes every channel-level connect failure with this; a server-sent UNAVAILABLE lacks it.
_CONNECT_FAILURE = "failed to connect to all addresses"
_LAST_ERROR = re.compile(r"last error: (?:[A-Z_]+: )?(?:ipv[46]:\S+: |unix:\S+: )?(.*)", re.S)
_VERIFY_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED: ([^:]+)")
_ALERT = re.compile(r"ALERT_([A-Z0-9_]+)")
# TLS alerts a server sends when it refuses the certificate we presented.
_CLIENT_CERT_ALERTS = frozenset(
    {
        "BAD_CERTIFICATE",
        "UNSUPPORTED_CERTIFICATE",
        "CERTIFICATE_REVOKED",
        "CERTIFICATE_EXPIRED",
        "CERTIFICATE_UNKNOWN",
        "UNKNOWN_CA",
        "ACCESS_DENIED",
        "CERTIFICATE_REQUIRED",
    }
)
_VERSION_ALERTS = frozenset({"HANDSHAKE_FAILURE", "PROTOCOL_VERSION", "INSUFFICIENT_SECURITY"})


def describe_connect_failure(text: str, *, target: str, timeout: float) -> str:
    """Turn grpc's connect-failure text into one line saying what went wrong and which side."""
    match = _LAST_ERROR.search(text)
    last = (match.group(1) if match else text).strip().removesuffix(": OK").strip()
    verify = _VERIFY_FAILED.search(last)
    if verify:
        return (
            f"TLS handshake with {target} failed: server certificate not trusted by --ca "
            f"({verify.group(1).strip()})"
        )
    if "Hostname Verification Check failed" in last:
        return (
            f"TLS handshake with {target} failed: the server certificate is not valid for that "
            "name (connect with a host name or IP address listed in its SANs)"
        )
    alert = _ALERT.search(last)
    if alert and alert.group(1) in _CLIENT_CERT_ALERTS:
        reason = alert.group(1).lower().replace("_", " ")
        return f"TLS handshake with {target} failed: server rejected our client certificate ({reason})"
    if (alert and alert.group(1) in _VERSION_ALERTS) or "UNSUPPORTED_PROTOCOL" in last:
        return f"TLS handshake with {target} failed: the server refused TLS 1.3, the only version jw speaks"
    if "WRONG_VERSION_NUMBER" in last or "HTTP_REQUEST" in last:
        return f"{target} did not answer with TLS; is it a jw-server and is the port right?"
    if "Connection refused" in last:
        return f"cannot connect to {target}: connection refused (is jw-server running there?)"
    if "DNS resolution failed" in last or "name not found" in last.lower():
        return f"cannot resolve the host name of {target}"
    if "Socket closed" in last or "Connection reset by peer" in last or "Broken pipe" in last:
        # TLS 1.3 finishes the client side of the handshake before the server checks our
        # certificate, so a refusal shows up only as a closed connection.
        return (
            f"{target} closed the connection during the TLS handshake: the server most likely "
            "rejected our client certificate (--cert not issued by its CA, expired or revoked)"
        )
    if "Handshake read failed" in last or "Timeout occurred" in last or "Deadline" in last:
        return f"no answer from {target} within {timeout:g}s"
    return f"cannot connect to {target}: {last}"


def error_from_status(
    code: grpc.StatusCode | None, details: str, *, target: str, timeout: float
) -> ClientError:
    """Build the ClientError for a failed call with status `code` and `details`."""
    details = details or ""
    name = code.name if code is not None else "UNKNOWN"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return ConnectionFailedError(
            f"no answer from {target} within {timeout:g}s (use --timeout to wait longer)",
            code=name,
        )
    if code is grpc.StatusCode.UNAVAILABLE:
        if _CONNECT_FAILURE in details:
            return ConnectionFailedError(
                describe_connect_failure(details, target=target, timeout=timeout), code=name
            )
        return ConnectionFailedError(f"server unavailable: {details}", code=name, server_sent=True)
    cls = _BY_CODE.get(code, ServerError) if code is not None else ServerError
    if cls is ServerError:
        return ServerError(f"server error ({name}): {details}", code=name)
    return cls(details or name.lower().replace("_", " "), code=name)


def translate_rpc_error(exc: grpc.RpcError, *, target: str, timeout: float) -> ClientError:
    """Translate a grpc (sync or aio) RpcError into the client's error tree."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return error_from_status(exc.code(), exc.details() or "", target=target, timeout=timeout)
    if isinstance(exc, grpc.Call):
        return error_from_status(exc.code(), exc.details() or "", target=target, timeout=timeout)
    return ServerError(f"unexpected gRPC failure: {exc}")
