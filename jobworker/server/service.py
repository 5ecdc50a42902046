"""The JobWorker servicer: proto requests -> engine calls -> proto responses.

Authorization already happened in `auth`; handlers only apply the caller's scope, so that a job
outside it answers exactly like a job that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc

import jobworker
from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc
from jobworker.server import convert
from jobworker.server.auth import Caller
from jobworker.server.calls import current_caller, note_job_id
from jobworker.server.errors import ServiceError

_T = TypeVar("_T")

Context = grpc.aio.ServicerContext[Any, Any]


# How long a stream whose job was deleted under it waits for that job's final status (already set by then).
_FINAL_STATUS_WAIT_SECONDS = 5.0


async def _finish(task: asyncio.Future[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
        await task


def _keep_running(awaitable: Awaitable[_T]) -> asyncio.Future[_T]:
    # A stop the client gave up waiting for still completes: the grace period and SIGKILL must run.
    future = asyncio.ensure_future(awaitable)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


class JobWorkerService(pb_grpc.JobWorkerServicer):
    """Serves the JobWorker API from one JobManager."""

    def __init__(self, manager: engine.JobManager) -> None:
        self._manager = manager
        self._shutting_down = False
        # One future shared by every open stream, so waiting for shutdown costs no task per stream.
        self._shutdown: asyncio.Future[None] | None = None
        self._streams = 0
        self._streamed_bytes = 0

    @property
    def active_streams(self) -> int:
        """StreamOutput calls currently open."""
        return self._streams

    @property
    def streamed_bytes(self) -> int:
        """Output bytes handed to StreamOutput callers since the service started."""
        return self._streamed_bytes

    def begin_shutdown(self) -> None:
        """End every open stream with SERVER_SHUTDOWN; new streams end at once."""
        self._shutting_down = True
        if self._shutdown is not None and not self._shutdown.done():
            self._shutdown.set_result(None)

    def _shutdown_future(self) -> asyncio.Future[None]:
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_future()
            if self._shutting_down:
                self._shutdown.set_result(None)
        return self._shutdown

    def _resolve(self, caller: Caller, ref: str) -> str:
        """The id of the job `ref` (id, name or unique id prefix) names among those the caller may see.

        Another owner's job answers exactly like a missing one: it neither matches nor makes a match
        ambiguous.
        """
        job_id = self._manager.resolve(ref, caller.identity, caller.may_see)
        note_job_id(job_id)
        return job_id

    async def Start(self, request: pb.StartRequest, context: Context) -> pb.StartResponse:
        caller = current_caller()
        spec = convert.spec_from_request(request, owner=caller.identity)
        status = await self._manager.start(spec)
        note_job_id(status.id)
        return pb.StartResponse(job=convert.status_to_proto(status))

    async def Stop(self, request: pb.StopRequest, context: Context) -> pb.StopResponse:
        caller = current_caller()
        grace = convert.grace_seconds(request)
        job_id = self._resolve(caller, request.job_id)
        status = await asyncio.shield(_keep_running(self._manager.stop(job_id, grace)))
        return pb.StopResponse(job=convert.status_to_proto(status))

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.GetStatusResponse:
        caller = current_caller()
        job_id = self._resolve(caller, request.job_id)
        status = self._manager.status(job_id)
        return pb.GetStatusResponse(job=convert.status_to_proto(status))

    async def Wait(self, request: pb.WaitRequest, context: Context) -> pb.WaitResponse:
        caller = current_caller()
        job_id = self._resolve(caller, request.job_id)
        ended = asyncio.ensure_future(self._manager.wait(job_id))
        try:
            # A waiter must not hold up shutdown, nor be left hanging by it: it ends with UNAVAILABLE.
            await asyncio.wait((ended, self._shutdown_future()), return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE, f"the server is shutting down; job {job_id} has not ended"
                )
            status = ended.result()
        finally:
            await _finish(ended)
        return pb.WaitResponse(job=convert.status_to_proto(status))

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        caller = current_caller()
        job_id = self._resolve(caller, request.job_id)
        status = self._manager.delete(job_id)
        return pb.DeleteResponse(job=convert.status_to_proto(status))

    async def Prune(self, request: pb.PruneRequest, context: Context) -> pb.PruneResponse:
        caller = current_caller()
        cutoff = convert.ended_before(request)
        labels = dict(request.labels)
        deleted = self._manager.prune(cutoff, owner=caller.owner_filter(""), labels=labels)
        return pb.PruneResponse(jobs=[convert.status_to_proto(s) for s in deleted])

    async def Signal(self, request: pb.SignalRequest, context: Context) -> pb.SignalResponse:
        caller = current_caller()
        number = convert.signal_from_proto(request.signal)
        job_id = self._resolve(caller, request.job_id)
        status = self._manager.signal(job_id, number)
        return pb.SignalResponse(job=convert.status_to_proto(status))

    async def WriteInput(
        self, requests: AsyncIterator[pb.WriteInputRequest], context: Context
    ) -> pb.WriteInputResponse:
        caller = current_caller()
        first = await anext(requests, None)
        if first is None:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "WriteInput needs a first message naming the job"
            )
        job_id = self._resolve(caller, first.job_id)
        writer = await self._manager.open_input(job_id)
        written = 0
        try:
            message: pb.WriteInputRequest | None = first
            while message is not None:
                if message.HasField("resize"):
                    self._manager.resize_terminal(job_id, message.resize.rows, message.resize.cols)
                if message.data:
                    # Returns once the job's holder took it: a job that reads slowly slows this call.
                    await writer.write(message.data)
                    written += len(message.data)
                if message.eof:
                    await writer.end()
                    break
                message = await anext(requests, None)
        finally:
            writer.close()
        return pb.WriteInputResponse(bytes_written=written)

    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListResponse:
        caller = current_caller()
        states = convert.states_from_proto(request.states)
        owner = caller.owner_filter(convert.owner_filter(request.owner))
        jobs = self._manager.list(states=states, owner=owner, name=request.name, labels=dict(request.labels))
        return pb.ListResponse(jobs=[convert.status_to_proto(s) for s in jobs])

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> pb.ListNodesResponse:
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION, "this server is not in a fleet (jw-server --etcd)"
        )

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        caller = current_caller()
        info = self._manager.info
        config = self._manager.config
        return pb.GetServerInfoResponse(
            version=jobworker.__version__,
            cgroup_driver=info.cgroup_driver,
            cgroup_reason="" if info.limits_supported else info.cgroup_reason,
            limits_supported=info.limits_supported,
            namespaces=info.namespaces,
            default_limits=convert.limits_to_proto(info.default_limits),
            max_limits=convert.limits_to_proto(config.max_limits),
            identity=caller.identity,
            role=caller.role.value,
            quota=convert.quota_to_proto(config),
            usage=convert.owner_usage_to_proto(self._manager.usage_of(caller.identity)),
            isolation=info.isolation.value,
            isolation_detail=info.isolation_detail,
            default_grace_seconds=config.default_grace_seconds,
        )

    # The generated base class knows only messages; this server's registration takes bytes too.
    async def StreamOutput(  # type: ignore[override]
        self, request: pb.StreamOutputRequest, context: Context
    ) -> AsyncIterator[pb.StreamOutputResponse | bytes]:
        """The job's output as StreamOutput messages; chunks come encoded already (registration)."""
        caller = current_caller()
        selection = convert.selection_from_proto(request.streams)
        window = convert.window_from_request(request)
        job_id = self._resolve(caller, request.job_id)
        self._streams += 1
        try:
            stream = self._stream(job_id, selection, request.offset, request.follow, window)
            async with contextlib.aclosing(stream) as messages:
                async for message in messages:
                    yield message
        finally:
            self._streams -= 1

    async def _stream(
        self,
        job_id: str,
        selection: engine.StreamSelection,
        offset: int,
        follow: bool,
        window: engine.OutputWindow,
    ) -> AsyncGenerator[pb.StreamOutputResponse | bytes, None]:
        # The engine ends the events itself when shutdown begins while it waits for output; one that is
        # behind is stopped here, between chunks.
        events = self._manager.follow(
            job_id, selection, offset, follow=follow, window=window, stop=self._shutdown_future()
        )
        cut = False
        # The final status, kept for the end of the stream: retention may delete the job as soon as it ends,
        # and a stream that delivered every byte must still end with it, not with NOT_FOUND.
        final = asyncio.ensure_future(self._manager.wait(job_id))
        position = offset
        truncated = False
        try:
            # A stream opened once shutdown began ends at once.
            if not self._shutting_down:
                async for event in events:
                    if isinstance(event, engine.OutputChunk):
                        position = max(position, event.offset + len(event.data))
                        self._streamed_bytes += len(event.data)
                    elif isinstance(event, engine.OutputTruncated):
                        truncated = True
                    else:
                        cut = True
                    messages = convert.event_to_proto(event)
                    # Only the encoded message stays referenced while grpc sends it, not the chunk too.
                    del event
                    messages.reverse()
                    while messages:
                        yield messages.pop()
                    if self._shutting_down:
                        break
            # Decided now, before anything awaits: a stop that the shutdown sends its job may end it
            # meanwhile, and the stream was still cut by the shutdown, not by the job's end.
            interrupted = self._shutting_down and not self._ended(job_id)
        finally:
            await events.aclose()
        try:
            status = self._manager.status(job_id)
        except engine.JobNotFoundError:
            # Deleted means ended: its wait() has the final status (or is about to).
            status = await asyncio.wait_for(final, _FINAL_STATUS_WAIT_SECONDS)
        finally:
            await _finish(final)
        yield pb.StreamOutputResponse(
            end=pb.StreamEnd(
                reason=(
                    pb.STREAM_END_REASON_SERVER_SHUTDOWN
                    if interrupted
                    else self._end_reason(status, selection, position, follow, cut)
                ),
                truncated=truncated or status.output_truncated,
                job=convert.status_to_proto(status),
            )
        )

    def _ended(self, job_id: str) -> bool:
        """Whether the job has ended (a deleted one has)."""
        try:
            return self._manager.status(job_id).state.ended
        except engine.JobNotFoundError:
            return True

    def _end_reason(
        self,
        status: engine.JobStatus,
        selection: engine.StreamSelection,
        position: int,
        follow: bool,
        cut: bool = False,
    ) -> pb.StreamEndReason.ValueType:
        delivered_all = position >= convert.stored_bytes(status, selection)
        if status.state.ended and delivered_all:
            return pb.STREAM_END_REASON_JOB_ENDED
        if cut:
            return pb.STREAM_END_REASON_LIMIT_REACHED
        if self._shutting_down:
            return pb.STREAM_END_REASON_SERVER_SHUTDOWN
        if follow:
            # A following stream ends early only when the engine is closing under it.
            if status.state.ended:
                return pb.STREAM_END_REASON_JOB_ENDED
            return pb.STREAM_END_REASON_SERVER_SHUTDOWN
        return pb.STREAM_END_REASON_CAUGHT_UP
