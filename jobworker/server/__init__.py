"""The jobworker gRPC server: the engine behind mTLS 1.3, roles, ownership and an audit trail."""
# ruff: noqa: E402

# Must run before anything in this process imports grpc; see jobworker.tls13 for why.
from jobworker import tls13

PINNED = tls13.pin_tls13()
"""Whether TLS 1.2 handshakes are refused in this process (and not only TLS 1.2 calls)."""

from jobworker.server import grpclog

HANDSHAKES_TRACED = grpclog.trace_handshakes()
"""Whether grpc traces handshakes in this process, so a failed one can be audited with its peer."""

from jobworker.server.app import JobWorkerServer, ServerStartError, build_server, run_server
from jobworker.server.auth import ACCESS, ROLELESS, Caller, Scope
from jobworker.server.config import ServerConfig
from jobworker.server.errors import ENGINE_ERROR_CODES, ServiceError
from jobworker.server.jsonlog import JsonFormatter, configure_logging
from jobworker.server.service import JobWorkerService
from jobworker.server.tls import CredentialError, CredentialFiles, CredentialReloader

__all__ = [
    "ACCESS",
    "ENGINE_ERROR_CODES",
    "HANDSHAKES_TRACED",
    "PINNED",
    "ROLELESS",
    "Caller",
    "CredentialError",
    "CredentialFiles",
    "CredentialReloader",
    "JobWorkerServer",
    "JobWorkerService",
    "JsonFormatter",
    "Scope",
    "ServerConfig",
    "ServerStartError",
    "ServiceError",
    "build_server",
    "configure_logging",
    "run_server",
    "tls13",
]
