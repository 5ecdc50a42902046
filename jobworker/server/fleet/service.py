"""The JobWorker API of a fleet node: each call served here or forwarded to the node that owns its job.

It wraps the single-host servicer (`service.JobWorkerService`) and never changes how that one serves the jobs
held here. A call forwarded by another node (the caller has `via`) is always served here: placement and
routing happened on the first node, so a call crosses at most one hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import cast

import grpc
from google.protobuf import timestamp_pb2

from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import convert
from jobworker.server.auth import Caller
from jobworker.server.calls import current_caller, note_job_id
from jobworker.server.errors import ServiceError
from jobworker.server.fleet.etcd import EtcdError
from jobworker.server.fleet.forward import Peers, PeerUnreachableError
from jobworker.server.fleet.membership import JobRecord, Membership, NodeInfo
from jobworker.server.fleet.placement import Placer, Request
from jobworker.server.service import Context, JobWorkerService

_Messages = AsyncGenerator[pb.StreamOutputResponse, None]
_FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# How long a List or Prune waits for each other node before showing its jobs as on an unreachable node.
_FAN_OUT_TIMEOUT_SECONDS = 5.0


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class FleetService:
    """Serves the JobWorker API for the whole fleet from any node."""

    def __init__(
        self, local: JobWorkerService, manager: engine.JobManager, membership: Membership, peers: Peers
    ) -> None:
        self._local = local
        self._manager = manager
        self._membership = membership
        self._peers = peers
        self._placer = Placer()
        self.name = membership.name

    # -- routing -------------------------------------------------------------------------------------

    def _stamp(self, jobs: Iterable[pb.JobStatus]) -> None:
        for job in jobs:
            job.node = self.name

    async def _owner(self, ref: str) -> NodeInfo | None:
        """The other node that holds the job, None to serve the call here (which may be NOT_FOUND).

        A reference to a job here is served here; otherwise a full id is looked up in etcd, and a name or
        id prefix is resolved among the other nodes' job records by the same rule as a node's own.
        """
        caller = current_caller()
        if caller.via:
            return None
        try:
            self._manager.resolve(ref, caller.identity, caller.may_see)
        except engine.JobNotFoundError:
            pass
        except engine.JobError:
            # Ambiguous or malformed: the local answer says why.
            return None
        else:
            return None
        job_id = ref.lower()
        try:
            if _FULL_ID.fullmatch(job_id):
                record = await self._membership.lookup_job(job_id)
            else:
                job_id, record = await self._elsewhere(ref, caller)
        except EtcdError:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                f"job {ref} is not on node {self.name}, and the fleet's etcd cannot be reached to find it",
            ) from None
        # Another owner's job answers exactly like a missing one, wherever it is.
        if record is None or record.node == self.name or not caller.may_see(record.owner):
            return None
        node = self._membership.node(record.node)
        if node is None or not node.alive:
            with contextlib.suppress(EtcdError):
                await self._membership.refresh()
            node = self._membership.node(record.node)
        if node is None or not node.alive:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, f"job {job_id} is on node {record.node}, which is unreachable"
            )
        note_job_id(job_id)
        return node

    async def _elsewhere(self, ref: str, caller: Caller) -> tuple[str, JobRecord | None]:
        """The job of another node a name or id prefix means (its id and record), or ("", None)."""
        visible = {
            job_id: record
            for job_id, record in (await self._membership.job_records()).items()
            if record.node != self.name and caller.may_see(record.owner)
        }
        named: dict[str, str] = {}
        for job_id, record in visible.items():
            if record.name and record.name == ref:
                if record.owner in named:
                    # Names are unique per owner on each node, not across the fleet.
                    raise engine.AmbiguousJobError(
                        f"job name '{ref}' of {record.owner} is used on several nodes: "
                        f"{', '.join(sorted((named[record.owner], job_id)))}; use the job id"
                    )
                named[record.owner] = job_id
        prefix = ref.lower()
        prefixed = (
            [j for j in visible if j.startswith(prefix)] if not named and engine.is_id_prefix(ref) else []
        )
        try:
            job_id = engine.choose_job(ref, caller.identity, named, prefixed)
        except engine.JobNotFoundError:
            return "", None
        return job_id, visible[job_id]

    # -- Start ---------------------------------------------------------------------------------------

    async def Start(self, request: pb.StartRequest, context: Context) -> pb.StartResponse:
        caller = current_caller()
        if caller.via:
            return await self._start_here(request, context)
        if not self._membership.etcd_reachable:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                f"placement refused: the fleet's etcd cannot be reached ({self._membership.etcd_error}); "
                "jobs already running are still served",
            )
        limits = request.limits
        wanted = Request(
            node=request.node,
            labels=dict(request.node_labels),
            memory_bytes=limits.memory_bytes if limits.HasField("memory_bytes") else None,
            cpus=limits.cpus if limits.HasField("cpus") else None,
        )
        excluded: set[str] = set()
        while True:
            nodes = [n for n in self._membership.nodes() if n.name not in excluded]
            node = self._placer.choose(nodes, wanted)
            if node.name == self.name:
                return await self._start_here(request, context)
            try:
                response: pb.StartResponse = await self._peers.unary(node, "Start", request, caller)
            except PeerUnreachableError:
                # It never got the request (its lease may not have expired yet): place it elsewhere,
                # unless the caller asked for that node.
                if request.node:
                    raise
                excluded.add(node.name)
                continue
            break
        job = response.job
        note_job_id(job.id)
        # Known here from now on, even while etcd cannot be asked.
        self._membership.remember_job(job.id, _record_of(job))
        return response

    async def _start_here(self, request: pb.StartRequest, context: Context) -> pb.StartResponse:
        response = await self._local.Start(request, context)
        job = response.job
        job.node = self.name
        # Recorded before Start answers, so any node can find the job as soon as its id is known.
        await self._membership.record_job(job.id, _record_of(job))
        return response

    # -- calls about one job -------------------------------------------------------------------------

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.GetStatusResponse:
        node = await self._owner(request.job_id)
        if node is not None:
            forwarded: pb.GetStatusResponse = await self._peers.unary(
                node, "GetStatus", request, current_caller()
            )
            return forwarded
        response = await self._local.GetStatus(request, context)
        response.job.node = self.name
        return response

    async def Stop(self, request: pb.StopRequest, context: Context) -> pb.StopResponse:
        node = await self._owner(request.job_id)
        if node is not None:
            forwarded: pb.StopResponse = await self._peers.unary(
                node, "Stop", request, current_caller(), deadline=None
            )
            return forwarded
        response = await self._local.Stop(request, context)
        response.job.node = self.name
        self._membership.poke()
        return response

    async def Wait(self, request: pb.WaitRequest, context: Context) -> pb.WaitResponse:
        node = await self._owner(request.job_id)
        if node is not None:
            forwarded: pb.WaitResponse = await self._peers.unary(
                node, "Wait", request, current_caller(), deadline=None
            )
            return forwarded
        response = await self._local.Wait(request, context)
        response.job.node = self.name
        return response

    async def Signal(self, request: pb.SignalRequest, context: Context) -> pb.SignalResponse:
        node = await self._owner(request.job_id)
        if node is not None:
            caller = current_caller()
            forwarded: pb.SignalResponse = await self._peers.unary(node, "Signal", request, caller)
            return forwarded
        response = await self._local.Signal(request, context)
        response.job.node = self.name
        return response

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.DeleteResponse:
        node = await self._owner(request.job_id)
        if node is not None:
            caller = current_caller()
            forwarded: pb.DeleteResponse = await self._peers.unary(node, "Delete", request, caller)
            return forwarded
        response = await self._local.Delete(request, context)
        response.job.node = self.name
        await self._membership.forget_job(response.job.id)
        return response

    async def StreamOutput(
        self, request: pb.StreamOutputRequest, context: Context
    ) -> AsyncIterator[pb.StreamOutputResponse | bytes]:
        node = await self._owner(request.job_id)
        if node is not None:
            relay = self._peers.stream_output(node, request, current_caller())
            async with contextlib.aclosing(relay) as encoded:
                async for raw in encoded:
                    yield raw
            return
        local = cast(
            AsyncGenerator[pb.StreamOutputResponse | bytes, None], self._local.StreamOutput(request, context)
        )
        async with contextlib.aclosing(local) as messages:
            async for message in messages:
                # Chunks come encoded (bytes); the end is a message.
                if not isinstance(message, bytes) and message.HasField("end"):
                    message.end.job.node = self.name
                yield message

    async def WriteInput(
        self, requests: AsyncIterator[pb.WriteInputRequest], context: Context
    ) -> pb.WriteInputResponse:
        first = await anext(requests, None)
        node = None if first is None else await self._owner(first.job_id)

        async def replay() -> AsyncIterator[pb.WriteInputRequest]:
            if first is not None:
                yield first
            async for request in requests:
                yield request

        if node is None:
            return await self._local.WriteInput(replay(), context)
        forwarded: pb.WriteInputResponse = await self._peers.write_input(node, replay(), current_caller())
        return forwarded

    # -- calls about many jobs -----------------------------------------------------------------------

    def _others(self) -> tuple[list[NodeInfo], set[str]]:
        others = [n for n in self._membership.nodes() if n.name != self.name]
        return [n for n in others if n.alive], {n.name for n in others if not n.alive}

    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListResponse:
        caller = current_caller()
        response = await self._local.List(request, context)
        self._stamp(response.jobs)
        if caller.via:
            return response
        jobs = list(response.jobs)
        live, unreachable = self._others()
        results = await asyncio.gather(
            *(self._peers.unary(n, "List", request, caller, deadline=_FAN_OUT_TIMEOUT_SECONDS) for n in live),
            return_exceptions=True,
        )
        for node, result in zip(live, results, strict=True):
            if isinstance(result, ServiceError) and result.code is grpc.StatusCode.UNAVAILABLE:
                unreachable.add(node.name)
            elif isinstance(result, BaseException):
                raise result
            else:
                jobs.extend(result.jobs)
        # A job on an unreachable node has no known state, so a List filtered by state leaves it out.
        if unreachable and not request.states:
            owner = caller.owner_filter(convert.owner_filter(request.owner))
            jobs.extend(await self._unreachable_jobs(unreachable, caller, owner, request))
        jobs.sort(key=lambda j: (j.started_at.seconds, j.started_at.nanos, j.id))
        return pb.ListResponse(jobs=jobs)

    async def _unreachable_jobs(
        self, nodes: set[str], caller: Caller, owner: str | None, request: pb.ListRequest
    ) -> list[pb.JobStatus]:
        try:
            records = await self._membership.job_records()
        except EtcdError:
            return []
        return [
            pb.JobStatus(
                id=job_id,
                owner=record.owner,
                command=record.command,
                args=list(record.args),
                started_at=_timestamp(record.started_at),
                node=record.node,
                node_unreachable=True,
                name=record.name,
                labels=dict(record.labels),
            )
            for job_id, record in records.items()
            if record.node in nodes
            and caller.may_see(record.owner)
            and owner in (None, record.owner)
            and request.name in ("", record.name)
            and all(record.labels.get(k) == v for k, v in request.labels.items())
        ]

    async def Prune(self, request: pb.PruneRequest, context: Context) -> pb.PruneResponse:
        caller = current_caller()
        response = await self._local.Prune(request, context)
        self._stamp(response.jobs)
        for job in response.jobs:
            await self._membership.forget_job(job.id)
        if caller.via:
            return response
        jobs = list(response.jobs)
        live, _ = self._others()
        results = await asyncio.gather(
            *(
                self._peers.unary(n, "Prune", request, caller, deadline=_FAN_OUT_TIMEOUT_SECONDS)
                for n in live
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, ServiceError) and result.code is grpc.StatusCode.UNAVAILABLE:
                continue
            if isinstance(result, BaseException):
                raise result
            jobs.extend(result.jobs)
        return pb.PruneResponse(jobs=jobs)

    # -- the fleet itself ----------------------------------------------------------------------------

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: Context
    ) -> pb.GetServerInfoResponse:
        response = await self._local.GetServerInfo(request, context)
        nodes = self._membership.nodes()
        response.fleet.CopyFrom(
            pb.FleetInfo(
                node=self.name,
                address=self._membership.address,
                labels=self._membership.labels,
                etcd_reachable=self._membership.etcd_reachable,
                etcd_error=self._membership.etcd_error,
                nodes_alive=sum(n.alive for n in nodes),
                nodes_known=len(nodes),
                lease_ttl_seconds=self._membership.ttl_seconds,
            )
        )
        return response

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(
            nodes=[_node_to_proto(n) for n in self._membership.nodes()], node=self.name
        )


def _record_of(job: pb.JobStatus) -> JobRecord:
    return JobRecord(
        node=job.node,
        owner=job.owner,
        command=job.command,
        args=tuple(job.args),
        started_at=job.started_at.ToNanoseconds() / 1e9,
        name=job.name,
        labels=dict(job.labels),
    )


def _node_to_proto(node: NodeInfo) -> pb.Node:
    message = pb.Node(name=node.name, address=node.address, alive=node.alive, labels=dict(node.labels))
    load = node.load
    if load is not None:
        message.cores = load.cores
        message.memory_bytes = load.memory_bytes
        message.running_jobs = load.running_jobs
        message.max_jobs = load.max_jobs
        message.jobs = load.jobs
        if load.max_cpus is not None:
            message.max_cpus = load.max_cpus
        if load.max_memory_bytes is not None:
            message.max_memory_bytes = load.max_memory_bytes
    return message
