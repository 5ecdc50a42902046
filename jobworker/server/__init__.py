"""The jobworker gRPC server: the engine behind mTLS 1.3, roles, ownership and an audit trail."""

# Must run before anything in this process imports grpc; see tls13 for why.
from jobworker.server import tls13  # noqa: I001

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
