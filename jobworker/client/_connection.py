"""What the sync and async clients share: settings checked up front, channel options, deadlines."""

from __future__ import annotations

import grpc

from jobworker.client._config import ClientConfig
from jobworker.client._errors import ClientError, translate_rpc_error
from jobworker.client._tls import load_tls_material

DEFAULT_TIMEOUT = 10.0
# The server's grace period when a Stop does not name one (see StopRequest.grace_seconds).
SERVER_DEFAULT_GRACE = 10.0
# After the grace period the server SIGKILLs and waits for the job to go; allow for that.
_STOP_SLACK = 10.0
# grpc's status details when the server closed a connection that reached its maximum age (plus the
# grace) under a call still running: the job's output is all still there, so a stream resumes.
_CONNECTION_AGED = "max connection age"


def connection_aged(exc: grpc.RpcError) -> bool:
    """Whether a call failed only because the server retired its connection (--max-connection-age)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if not callable(code) or not callable(details):
        return False
    return bool(code() is grpc.StatusCode.UNAVAILABLE and details() == _CONNECTION_AGED)


class Connection:
    """Validated settings plus the derived channel credentials and options."""

    def __init__(self, config: ClientConfig, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.config = config
        self.timeout = timeout
        self.credentials = load_tls_material(config).channel_credentials()
        # The minimum reconnect backoff doubles as grpc's per-attempt connect (TCP + TLS)
        # timeout; bounding it makes a black-holed address fail in `timeout`, with details,
        # instead of grpc's 20 s default.
        backoff_ms = max(int(timeout * 1000), 100)
        self.options: list[tuple[str, int | str]] = [
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        ]

    @property
    def target(self) -> str:
        """The server address."""
        return self.config.server

    def stop_deadline(self, grace_seconds: float | None) -> float:
        """Seconds to allow a Stop call, which only returns once the job is gone."""
        grace = SERVER_DEFAULT_GRACE if grace_seconds is None else grace_seconds
        return self.timeout + grace + _STOP_SLACK

    def error(self, exc: grpc.RpcError) -> ClientError:
        """Translate a grpc failure of a call on this connection."""
        return translate_rpc_error(exc, target=self.target, timeout=self.timeout)
