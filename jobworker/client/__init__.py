"""Typed client library for jobworker: the `jw` CLI, the e2e tests and the benchmarks use it.

TLS 1.3 only: grpcio has no TLS-version knob, so before grpc is first imported we restrict the
TLS <= 1.2 cipher list to a PSK suite that no certificate-based server can negotiate. TLS 1.3
suites are not governed by that list, so TLS 1.3 keeps working (ECDSA and RSA keys alike) while a
server offering only TLS 1.2 fails the handshake. grpc reads the variable once, at import: a
process that imports grpc before this package (and without the variable set) is not restricted.
"""
# ruff: noqa: E402

from jobworker import tls13

tls13.pin_tls13(override=False)

from jobworker.client._async_client import AsyncClient
from jobworker.client._client import Client
from jobworker.client._config import ClientConfig, default_config_path, load_config
from jobworker.client._connection import DEFAULT_TIMEOUT
from jobworker.client._errors import (
    AlreadyExistsError,
    AuthenticationError,
    ClientError,
    ConfigError,
    ConnectionFailedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServerError,
)
from jobworker.client._limits import LIMIT_FIELDS, LimitField
from jobworker.client._types import (
    EndOfInput,
    JobInfo,
    JobState,
    Limits,
    OutputChunk,
    OutputEvent,
    OutputStream,
    OutputTruncated,
    OutputWindow,
    Quota,
    ServerInfo,
    StreamEnd,
    StreamEndReason,
    StreamSelection,
    TerminalSize,
    Usage,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "LIMIT_FIELDS",
    "AlreadyExistsError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ClientConfig",
    "ClientError",
    "ConfigError",
    "ConnectionFailedError",
    "EndOfInput",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "JobInfo",
    "JobState",
    "LimitField",
    "Limits",
    "NotFoundError",
    "OutputChunk",
    "OutputEvent",
    "OutputStream",
    "OutputTruncated",
    "OutputWindow",
    "PermissionDeniedError",
    "Quota",
    "ResourceExhaustedError",
    "ServerError",
    "ServerInfo",
    "StreamEnd",
    "StreamEndReason",
    "StreamSelection",
    "TerminalSize",
    "Usage",
    "default_config_path",
    "load_config",
]
