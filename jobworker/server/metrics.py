"""What one server measures for Prometheus: jobs, output, followers and RPCs, in a registry of its own.

Events are counted as they happen: job starts and ends through the engine's observer hook
(`engine.EngineObserver`), RPCs by `RpcMetricsInterceptor`. Levels (running jobs, followers) and byte totals
are read from the job table and the service at scrape time, on the event loop that owns them, so nothing is
counted twice or kept by hand. No label carries a job id, an owner or anything a caller chose: series stay
few, and the endpoint tells nobody who runs what. `metrics_http` serves `registry`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import jobworker
from jobworker import engine
from jobworker.server.wrapping import WrappingInterceptor

# The `_created` series prometheus_client adds beside every counter double the series for no use here.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# A start takes milliseconds (the fork server, cgroups, the sandbox); seconds mean trouble.
START_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
# Unary calls take milliseconds; Wait and StreamOutput (the whole call is measured) last as long as a job.
RPC_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip
# A scrape waits this long for the event loop to read the job table; a blocked loop fails the scrape.
_READ_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class _Levels:
    """What the scrape-time collector reads, in one pass on the event loop."""

    running_jobs: int
    followers: int
    spooled_bytes: int
    streamed_bytes: int


class ServerMetrics:
    """Every metric of one server, registered in `registry` (never prometheus_client's global one, so
    several servers in one process, as in tests, keep apart). It subscribes itself to the engine's events
    when created; `close()` unsubscribes it."""

    def __init__(
        self,
        manager: engine.JobManager,
        *,
        followers: Callable[[], int],
        streamed_bytes: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._manager = manager
        self._followers = followers
        self._streamed_bytes = streamed_bytes
        # Output of the jobs that ended while this server ran; the running jobs' share is read at scrape.
        self._ended_output_bytes = 0
        self._loop = asyncio.get_running_loop()
        # Jobs reattached at start-up stored output before this server ran: counted from here on only.
        # Taken in the same step as subscribing, so no end falls between the two.
        self._output_before = manager.events.counts().running_output_bytes
        manager.events.subscribe(self)
        self._started = Counter(
            "jobworker_jobs_started", "Jobs whose command started running.", registry=self.registry
        )
        self._ended = Counter(
            "jobworker_jobs_ended",
            "Jobs that ended, by final state.",
            ["state"],
            registry=self.registry,
        )
        for state in engine.JobState:
            if state.ended:
                # Every state from the first scrape on, so rate() and absent() see zeroes, not gaps.
                self._ended.labels(state.value)
        self._start_seconds = Histogram(
            "jobworker_job_start_duration_seconds",
            "Time to start a job, from the quota check until its command runs.",
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self._rpcs = Counter(
            "jobworker_rpcs",
            "RPCs handled, by service, method and gRPC status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self._rpc_seconds = Histogram(
            "jobworker_rpc_duration_seconds",
            "Time from an RPC's arrival to its status (the whole call, for streams).",
            ["grpc_service", "grpc_method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        Info("jobworker_build", "The jobworker version serving.", registry=self.registry).info(
            {"version": jobworker.__version__}
        )
        self.registry.register(_LevelsCollector(self._read_levels_on_loop))
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        self.interceptor = RpcMetricsInterceptor(self._rpc_done)

    def close(self) -> None:
        """Stop listening to the engine."""
        self._manager.events.unsubscribe(self)

    # engine.EngineObserver
    def job_started(self, seconds: float) -> None:
        self._started.inc()
        self._start_seconds.observe(seconds)

    def job_ended(self, status: engine.JobStatus) -> None:
        self._ended.labels(status.state.value).inc()
        self._ended_output_bytes += status.stdout_bytes + status.stderr_bytes

    def _rpc_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        service, name = _split_method(method)
        self._rpcs.labels(service, name, code.name).inc()
        self._rpc_seconds.labels(service, name).observe(seconds)

    def _read_levels(self) -> _Levels:
        counts = self._manager.events.counts()
        return _Levels(
            running_jobs=counts.running_jobs,
            followers=self._followers(),
            # Monotonic: a running job's stored output only grows, and when it ends its final count
            # moves into _ended_output_bytes in the same step (job_ended) as it leaves the running set.
            # Every job running at the start is still running or ended, so each holds at least what it
            # held then: the difference never goes below zero.
            spooled_bytes=self._ended_output_bytes + counts.running_output_bytes - self._output_before,
            streamed_bytes=self._streamed_bytes(),
        )

    def _read_levels_on_loop(self) -> _Levels:
        """_read_levels() on the event loop that owns the job table (scrapes come from HTTP threads)."""
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is self._loop:
            return self._read_levels()

        async def read() -> _Levels:
            return self._read_levels()

        future = asyncio.run_coroutine_threadsafe(read(), self._loop)
        try:
            return future.result(_READ_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


class _LevelsCollector(Collector):
    """Levels and totals read at scrape time."""

    def __init__(self, read: Callable[[], _Levels]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering checks for clashes without reading the job table.
        return iter(_families(None))

    def collect(self) -> Iterator[Metric]:
        return iter(_families(self._read()))


def _families(levels: _Levels | None) -> list[Metric]:
    def value(field: str) -> float | None:
        return None if levels is None else float(getattr(levels, field))

    return [
        GaugeMetricFamily(
            "jobworker_jobs_running",
            "Jobs whose command runs now.",
            value=value("running_jobs"),
        ),
        GaugeMetricFamily(
            "jobworker_followers",
            "StreamOutput calls open now (clients reading a job's output).",
            value=value("followers"),
        ),
        CounterMetricFamily(
            "jobworker_output_spooled_bytes",
            "Job output stored in spools since the server started (stdout and stderr, up to each job's cap).",
            value=value("spooled_bytes"),
        ),
        CounterMetricFamily(
            "jobworker_output_streamed_bytes",
            "Job output sent to StreamOutput callers since the server started.",
            value=value("streamed_bytes"),
        ),
    ]


def _split_method(method: str) -> tuple[str, str]:
    """'/jobworker.v1.JobWorker/Start' -> ('jobworker.v1.JobWorker', 'Start')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


RpcDone = Callable[[str, grpc.StatusCode, float], None]
_Context = grpc.aio.ServicerContext[Any, Any]
_UnaryBehavior = Callable[[Any, _Context], Awaitable[Any]]
_StreamBehavior = Callable[[Any, _Context], AsyncGenerator[Any, None]]


class RpcMetricsInterceptor(WrappingInterceptor):
    """Measures every call of a method the server has (first in the chain, so refusals count too).

    Calls of unknown methods are not measured: their names come from the caller and would let anyone
    add series.
    """

    def __init__(self, done: RpcDone) -> None:
        super().__init__()
        self._done = done

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        # The stubs type behaviours as synchronous; on a grpc.aio server they are coroutine functions.
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            unary = self._unary(method, cast(_UnaryBehavior, handler.unary_unary))
            return grpc.unary_unary_rpc_method_handler(unary, **serializers)
        if handler.unary_stream is not None:
            behavior = handler.unary_stream
            # Async generators, or coroutines that stream with context.write() (the health Watch).
            streaming = (
                self._stream(method, cast(_StreamBehavior, behavior))
                if inspect.isasyncgenfunction(behavior)
                else self._unary(method, cast(_UnaryBehavior, behavior))
            )
            return grpc.unary_stream_rpc_method_handler(streaming, **serializers)
        if handler.stream_unary is not None:
            unary = self._unary(method, cast(_UnaryBehavior, handler.stream_unary))
            return grpc.stream_unary_rpc_method_handler(unary, **serializers)
        return handler

    def _unary(self, method: str, behavior: _UnaryBehavior) -> _UnaryBehavior:
        done = self._done

        async def measured(request: Any, context: _Context) -> Any:
            started = time.monotonic()
            failure: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                done(method, _code(context, failure), time.monotonic() - started)

        return measured

    def _stream(self, method: str, behavior: _StreamBehavior) -> _StreamBehavior:
        done = self._done

        async def measured(request: Any, context: _Context) -> AsyncGenerator[Any, None]:
            started = time.monotonic()
            failure: BaseException | None = None
            try:
                async with contextlib.aclosing(behavior(request, context)) as messages:
                    async for message in messages:
                        yield message
            except BaseException as exc:
                failure = exc
                raise
            finally:
                done(method, _code(context, failure), time.monotonic() - started)

        return measured


def _code(context: _Context, failure: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with."""
    if failure is not None and not isinstance(failure, Exception):
        # CancelledError (the client went away or its deadline passed), GeneratorExit (stream closed).
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if failure is None else grpc.StatusCode.UNKNOWN
