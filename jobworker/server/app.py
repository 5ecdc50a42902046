"""Assembling and running a server: engine, JobWorker and health services, mTLS port, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import jobworker.server
from jobworker import engine
from jobworker.server import registration
from jobworker.server.calls import AuthInterceptor
from jobworker.server.config import GRPC_RECEIVE_LIMIT_BYTES, ServerConfig
from jobworker.server.jsonlog import fields
from jobworker.server.metrics_http import MetricsAddress, MetricsAddressError, MetricsListener
from jobworker.server.policy import PeerPolicy
from jobworker.server.revocation import RevocationError, RevocationList
from jobworker.server.service import JobWorkerService
from jobworker.server.tls import CredentialReloader

if TYPE_CHECKING:
    from jobworker.server.fleet import Fleet
    from jobworker.server.metrics import ServerMetrics

_log = logging.getLogger("jobworker.server")

SERVICE_NAME = "jobworker.v1.JobWorker"
# Streams and in-flight calls get this long beyond the jobs' grace period before being cancelled.
_STOP_MARGIN_SECONDS = 2.0


def _grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        # Above the real limit, so that the call wrapper sees (and audits) most oversized requests.
        ("grpc.max_receive_message_length", GRPC_RECEIVE_LIMIT_BYTES),
        # grpc defaults to SO_REUSEPORT, which would let a second server silently share our port.
        ("grpc.so_reuseport", 0),
        # Notice clients that vanished without closing their connection, so their streams are freed.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Bounded connection lifetime: the handshake (chain, client CAs) is redone at least this often.
        ("grpc.max_connection_age_ms", max(int(config.max_connection_age_seconds * 1000), 1)),
        ("grpc.max_connection_age_grace_ms", int(config.connection_age_grace_seconds * 1000)),
    ]


class ServerStartError(Exception):
    """The server could not be set up (credentials, port, engine)."""


def _bound_address(listen: str, port: int) -> str:
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    return f"{host}:{port}"


class JobWorkerServer:
    """One server: a grpc.aio server with the JobWorker and health services over one engine."""

    def __init__(
        self,
        *,
        server: grpc.aio.Server,
        service: JobWorkerService,
        health_servicer: health.aio.HealthServicer,
        manager: engine.JobManager,
        reloader: CredentialReloader,
        revocation: RevocationList | None,
        address: str,
        grace_seconds: float,
        stop_jobs: bool = False,
        metrics: tuple[ServerMetrics, MetricsListener] | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self._server = server
        self._service = service
        self._health = health_servicer
        self._manager = manager
        self._reloader = reloader
        self._revocation = revocation
        self._address = address
        self._grace = grace_seconds
        # On shutdown: stop every job, or leave them running with their holders (live restore).
        self._stop_jobs = stop_jobs
        self._metrics = metrics
        self._fleet = fleet
        self._started = False
        self._closing: asyncio.Future[None] | None = None

    @property
    def address(self) -> str:
        """host:port the server listens on, with the real port when 0 was asked for."""
        return self._address

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._address.rsplit(":", 1)[1])

    @property
    def metrics_address(self) -> str | None:
        """host:port of the metrics listener (the real port when 0 was asked for); None when off."""
        return None if self._metrics is None else self._metrics[1].address

    @property
    def service(self) -> JobWorkerService:
        """The JobWorker servicer."""
        return self._service

    @property
    def manager(self) -> engine.JobManager:
        """The engine the server runs jobs with."""
        return self._manager

    async def start(self) -> None:
        """Start serving and log the bound address with the engine's isolation capabilities."""
        await self._server.start()
        self._started = True
        if self._metrics is not None:
            self._metrics[1].start()
        if self._fleet is not None:
            try:
                await self._fleet.start()
            except Exception as exc:
                await self.shutdown(0)
                raise ServerStartError(f"fleet: {exc}") from exc
        info = self._manager.info
        _log.info(
            "listening",
            extra=fields(
                address=self._address,
                cgroup_driver=info.cgroup_driver,
                cgroup_reason=info.cgroup_reason,
                namespaces=info.namespaces,
                limits_supported=info.limits_supported,
                tls13_handshake_pinned=jobworker.server.PINNED,
                handshakes_audited=jobworker.server.HANDSHAKES_TRACED,
                server_certificate=self._reloader.material.subject,
                client_cas=list(self._reloader.material.client_cas),
                revoked=None if self._revocation is None else self._revocation.size,
                metrics=self.metrics_address,
            ),
        )

    def reload_credentials(self) -> bool:
        """Re-read certificate, key, client CAs and revocation list now; return whether all were accepted."""
        accepted = self._reloader.request_reload()
        if self._revocation is not None:
            accepted = self._revocation.request_reload() and accepted
        return accepted

    async def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop: health NOT_SERVING, no new calls, streams end, jobs left running (or stopped). Idempotent."""
        if self._closing is None:
            grace = self._grace if grace_seconds is None else grace_seconds
            self._closing = asyncio.ensure_future(self._shutdown(grace))
        await asyncio.shield(self._closing)

    async def _shutdown(self, grace: float) -> None:
        _log.info("shutting down", extra=fields(grace_seconds=grace))
        await self._health.enter_graceful_shutdown()
        if self._fleet is not None:
            # Leave first: the others stop routing here at once instead of at the lease's expiry.
            await self._fleet.close()
        stopping = asyncio.ensure_future(self._server.stop(grace + _STOP_MARGIN_SECONDS))
        self._service.begin_shutdown()
        try:
            await self._manager.close(grace, stop_jobs=self._stop_jobs)
        finally:
            await stopping
            await self._stop_metrics()
        _log.info("stopped")

    async def _stop_metrics(self) -> None:
        # Last, so a scrape during shutdown still sees the jobs being stopped.
        if self._metrics is not None:
            metrics, listener = self._metrics
            metrics.close()
            await listener.stop()

    async def wait_for_termination(self) -> None:
        """Wait until the grpc server has stopped."""
        await self._server.wait_for_termination()


async def build_server(config: ServerConfig, *, manager: engine.JobManager | None = None) -> JobWorkerServer:
    """Set up a server bound to config.listen (port 0 picks one) without starting it.

    Without `manager`, a JobManager is created from the config and opened; a given manager must be
    open already. Either way the server owns it and closes it on shutdown. Raises ServerStartError.
    """
    try:
        reloader = CredentialReloader(config.credential_files)
    except Exception as exc:
        raise ServerStartError(str(exc)) from exc
    revocation: RevocationList | None = None
    if config.revoked is not None:
        try:
            revocation = RevocationList(config.revoked, reloader.client_cas)
        except RevocationError as exc:
            raise ServerStartError(str(exc)) from exc
    policy = PeerPolicy(reloader.client_cas, revocation)
    metrics_address = _metrics_address(config)
    if manager is None:
        manager = engine.JobManager(config.engine_config())
        try:
            await manager.open()
        except Exception as exc:
            raise ServerStartError(f"engine: {exc}") from exc
    service = JobWorkerService(manager)
    interceptors: list[grpc.aio.ServerInterceptor] = [AuthInterceptor(policy)]
    metrics: ServerMetrics | None = None
    if metrics_address is not None:
        # Only when metrics are on: importing prometheus_client takes a tenth of a second.
        from jobworker.server.metrics import ServerMetrics

        metrics = ServerMetrics(
            manager,
            followers=lambda: service.active_streams,
            streamed_bytes=lambda: service.streamed_bytes,
        )
        # First, so that calls the auth pipeline refuses are measured too.
        interceptors.insert(0, metrics.interceptor)
    server = grpc.aio.server(interceptors=interceptors, options=_grpc_options(config))
    fleet: Fleet | None = None
    if config.fleet is None:
        server.add_generic_rpc_handlers((registration.rpc_handler(service),))
    else:
        # Imported only for a fleet node, so a single-host server carries none of it.
        from jobworker.server.fleet import Fleet

        try:
            fleet = Fleet(config.fleet, config.credential_files, manager, config.listen)
        except (OSError, ValueError) as exc:
            if metrics is not None:
                metrics.close()
            await manager.close(0, stop_jobs=False)
            raise ServerStartError(f"fleet: {exc}") from exc
        server.add_generic_rpc_handlers((fleet.handler(service),))
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_secure_port(config.listen, reloader.credentials())
    except Exception as exc:
        port = 0
        reason = str(exc)
    else:
        reason = "the address is in use or invalid"
    if port == 0:
        # Jobs an earlier server left (reattached by open) keep running for the next attempt.
        await manager.close(0, stop_jobs=False)
        raise ServerStartError(f"cannot listen on {config.listen}: {reason}")
    served: tuple[ServerMetrics, MetricsListener] | None = None
    if metrics is not None and metrics_address is not None:
        try:
            listener = MetricsListener(metrics_address, metrics.registry)
        except OSError as exc:
            metrics.close()
            # As for the gRPC port: jobs an earlier server left keep running for the next attempt.
            await manager.close(0, stop_jobs=False)
            raise ServerStartError(
                f"cannot listen for metrics on {metrics_address}: {exc.strerror or exc}"
            ) from None
        served = (metrics, listener)
        if not metrics_address.loopback:
            _log.warning(
                "metrics listener reachable beyond this host (plain HTTP, no authentication)",
                extra=fields(address=listener.address),
            )
    if fleet is not None and config.fleet is not None and not config.fleet.address:
        fleet.membership.address = _bound_address(config.listen, port)
    return JobWorkerServer(
        server=server,
        service=service,
        health_servicer=health_servicer,
        manager=manager,
        reloader=reloader,
        revocation=revocation,
        address=_bound_address(config.listen, port),
        grace_seconds=config.grace_seconds,
        stop_jobs=config.stop_jobs_on_shutdown,
        metrics=served,
        fleet=fleet,
    )


def _metrics_address(config: ServerConfig) -> MetricsAddress | None:
    """The metrics listener's address, checked before anything is set up; None when metrics are off."""
    if config.metrics_listen is None:
        return None
    try:
        address = MetricsAddress.parse(config.metrics_listen)
        address.check_exposure(config.metrics_allow_remote)
    except MetricsAddressError as exc:
        raise ServerStartError(str(exc)) from None
    return address


async def run_server(
    config: ServerConfig, *, on_ready: Callable[[JobWorkerServer], None] | None = None
) -> None:
    """Run until SIGTERM or SIGINT, reloading credentials on SIGHUP; then shut down gracefully."""
    server = await build_server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def on_stop_signal(signum: signal.Signals) -> None:
        _log.info("signal received", extra=fields(signal=signum.name))
        stop.set()

    def on_reload_signal() -> None:
        _log.info("signal received", extra=fields(signal="SIGHUP"))
        server.reload_credentials()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    try:
        await server.start()
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        await server.shutdown()
        for signum in handled:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
