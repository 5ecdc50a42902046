"""The metrics listener (`jw-server --metrics-listen`): plain HTTP, no authentication, loopback by default.

Prometheus scrapes `GET /metrics` here, apart from the gRPC port: no client certificate is asked for, so
anyone who reaches the address reads the server's activity (job counts and states, RPC rates and codes,
process figures; never a job id, an owner or output). A non-loopback address is refused unless
`--metrics-allow-remote` says that is meant (a container, where loopback cannot be reached from outside and
the published port decides who can). prometheus_client's WSGI app renders the registry; the stdlib's
threading HTTP server carries it, with a bound on concurrent requests and a per-connection timeout, so a
client that opens many connections or sends slowly cannot pile up threads in the job server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from jobworker.server.jsonlog import fields

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_log = logging.getLogger("jobworker.server")

METRICS_PATH = "/metrics"
# Scrapes served at once; more connections are closed at once (Prometheus scrapes one at a time).
_MAX_CONCURRENT_REQUESTS = 8
# A connection that sends nothing for this long is dropped.
_REQUEST_TIMEOUT_SECONDS = 10.0


class MetricsAddressError(ValueError):
    """--metrics-listen is malformed, or names a non-loopback address that was not allowed."""


@dataclass(frozen=True)
class MetricsAddress:
    """HOST:PORT to serve metrics on."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> MetricsAddress:
        """HOST:PORT or [IPv6]:PORT; port 0 picks a free one."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise MetricsAddressError(f"metrics address {text!r} is not HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            # ":9464" means every interface to many tools: say so rather than guess.
            raise MetricsAddressError(
                f"metrics address {text!r} has no host (use 127.0.0.1:{port}, or 0.0.0.0:{port} for every "
                "interface)"
            )
        return cls(host, int(port))

    @property
    def loopback(self) -> bool:
        """Whether only this host can reach the address (localhost, 127.0.0.0/8, ::1)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            # A host name other than localhost may resolve anywhere.
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def check_exposure(self, allow_remote: bool) -> None:
        """Refuse a non-loopback address unless allow_remote (MetricsAddressError)."""
        if not self.loopback and not allow_remote:
            raise MetricsAddressError(
                f"metrics address {self} is not loopback: metrics are plain HTTP without authentication; "
                "bind 127.0.0.1, or add --metrics-allow-remote if everyone who can reach it may read them"
            )


class _Handler(WSGIRequestHandler):
    # Socket timeout: a client that stops sending mid-request is dropped, its thread freed.
    timeout = _REQUEST_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one every few seconds would drown the server's log."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int]) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(_MAX_CONCURRENT_REQUESTS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang where DNS is unreachable.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "jobworker"
        self.server_port = self.server_address[1]
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away is nothing to report (and stderr carries JSON logs only)."""

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


_StartResponse = Callable[..., Any]
_TEXT = ("Content-Type", "text/plain; charset=utf-8")


def _only_metrics_path(app: Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]) -> Any:
    def serve(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [_TEXT])
            return [f"not found: metrics are at {METRICS_PATH}\n".encode()]
        try:
            # prometheus_client renders the whole page before it starts the response.
            return app(environ, start_response)
        except Exception as exc:
            # Prometheus records a failed scrape (up == 0); wsgiref would print a traceback on stderr.
            _log.warning("metrics scrape failed", extra=fields(error=str(exc) or type(exc).__name__))
            start_response("500 Internal Server Error", [_TEXT])
            return [b"metrics could not be read; see the server's log\n"]

    return serve


class MetricsListener:
    """An HTTP listener that serves one registry at /metrics; bound when created, serving once started."""

    def __init__(self, address: MetricsAddress, registry: CollectorRegistry) -> None:
        """Bind `address` (OSError when it cannot be bound)."""
        # Here, not at the top: jw-server without metrics never pays for importing prometheus_client.
        from prometheus_client import make_wsgi_app

        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, sockaddr = infos[0]
        self._server = _Server(family, (str(sockaddr[0]), int(sockaddr[1])))
        self._server.set_app(_only_metrics_path(make_wsgi_app(registry)))
        self._address = MetricsAddress(address.host, self._server.server_address[1])
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        """HOST:PORT served, with the real port when 0 was asked for."""
        return str(self._address)

    @property
    def port(self) -> int:
        return self._address.port

    def start(self) -> None:
        """Serve in a thread of its own."""
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._server.serve_forever, name="jw-metrics", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Stop serving and close the port; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            # shutdown() waits for serve_forever's next poll (up to half a second): not on the event loop.
            await asyncio.to_thread(self._server.shutdown)
            await asyncio.to_thread(self._thread.join)
        self._server.server_close()
