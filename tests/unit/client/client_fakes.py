"""Test doubles for the client tests: PKI paths and an mTLS fake JobWorker server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import jobworker.client
from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Credentials:
    """Paths of a minted test PKI."""

    directory: Path
    ca: Path

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def config(self, server: str, name: str = "alice") -> jobworker.client.ClientConfig:
        return jobworker.client.ClientConfig(
            server=server, ca=self.ca, cert=self.cert(name), key=self.key(name)
        )


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass
class FakeJobWorker(pb_grpc.JobWorkerServicer):
    """Records every request; answers from a job table or fails with a configured status."""

    requests: list[tuple[str, Any]] = field(default_factory=list)
    failures: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    jobs: dict[str, pb.JobStatus] = field(default_factory=dict)
    script: list[pb.StreamOutputResponse] = field(default_factory=list)
    # When set, StreamOutput blocks after the script until the client goes away.
    hold_stream: bool = False
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    # The default grace period GetServerInfo reports, and the time left of each Stop call.
    server_grace: float = 45.0
    stop_time_left: list[float] = field(default_factory=list)
    # The time left of each Wait call (None: no deadline).
    wait_time_left: list[float | None] = field(default_factory=list)

    def reset(self) -> None:
        self.requests.clear()
        self.failures.clear()
        self.jobs.clear()
        self.script.clear()
        self.hold_stream = False
        self.stream_cancelled = threading.Event()
        self.server_grace = 45.0
        self.stop_time_left.clear()
        self.wait_time_left.clear()

    def _enter(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        self.requests.append((method, request))
        failure = self.failures.get(method)
        if failure is not None:
            context.abort(*failure)

    def _job(self, job_id: str, context: grpc.ServicerContext) -> pb.JobStatus:
        job = self.jobs.get(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} not found")
        return job

    def Start(self, request: pb.StartRequest, context: grpc.ServicerContext) -> pb.StartResponse:
        self._enter("Start", request, context)
        owner = context.auth_context().get("x509_common_name", [b"?"])[0].decode()
        job = pb.JobStatus(
            id=str(uuid.uuid4()),
            owner=owner,
            command=request.command,
            args=request.args,
            state=pb.JOB_STATE_RUNNING,
            pid=4242,
            started_at=_now(),
            limits=request.limits,
            cwd=request.cwd,
        )
        self.jobs[job.id] = job
        return pb.StartResponse(job=job)

    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetServerInfoResponse:
        self._enter("GetServerInfo", request, context)
        return pb.GetServerInfoResponse(version="fake", default_grace_seconds=self.server_grace)

    def Stop(self, request: pb.StopRequest, context: grpc.ServicerContext) -> pb.StopResponse:
        self._enter("Stop", request, context)
        self.stop_time_left.append(context.time_remaining() or 0.0)
        job = self._job(request.job_id, context)
        if job.state != pb.JOB_STATE_RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job has already ended")
        job.state = pb.JOB_STATE_STOPPED
        job.signal = 15
        job.ended_at.CopyFrom(_now())
        return pb.StopResponse(job=job)

    def Wait(self, request: pb.WaitRequest, context: grpc.ServicerContext) -> pb.WaitResponse:
        self._enter("Wait", request, context)
        self.wait_time_left.append(context.time_remaining())
        return pb.WaitResponse(job=self._job(request.job_id, context))

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        self._enter("Delete", request, context)
        job = self._job(request.job_id, context)
        del self.jobs[request.job_id]
        return pb.DeleteResponse(job=job)

    def Prune(self, request: pb.PruneRequest, context: grpc.ServicerContext) -> pb.PruneResponse:
        self._enter("Prune", request, context)
        return pb.PruneResponse(jobs=list(self.jobs.values()))

    def Signal(self, request: pb.SignalRequest, context: grpc.ServicerContext) -> pb.SignalResponse:
        self._enter("Signal", request, context)
        return pb.SignalResponse(job=self._job(request.job_id, context))

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.GetStatusResponse:
        self._enter("GetStatus", request, context)
        return pb.GetStatusResponse(job=self._job(request.job_id, context))

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        self._enter("List", request, context)
        jobs = [
            job
            for job in self.jobs.values()
            if (not request.states or job.state in request.states)
            and (not request.owner or job.owner == request.owner)
        ]
        return pb.ListResponse(jobs=jobs)

    def StreamOutput(
        self, request: pb.StreamOutputRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamOutputResponse]:
        self._enter("StreamOutput", request, context)
        context.add_callback(self.stream_cancelled.set)
        yield from self.script
        if self.hold_stream:
            self.stream_cancelled.wait(30)

    def WriteInput(
        self, request_iterator: Iterator[pb.WriteInputRequest], context: grpc.ServicerContext
    ) -> pb.WriteInputResponse:
        # A failure answers before reading anything, as the real server's authorization does.
        self._enter("WriteInput", None, context)
        written = sum(len(request.data) for request in request_iterator)
        return pb.WriteInputResponse(bytes_written=written)


@dataclass(frozen=True)
class FakeServer:
    """A running fake server and the knobs tests turn."""

    address: str
    servicer: FakeJobWorker
    health: health.HealthServicer


def serve(
    creds: Credentials, servicer: pb_grpc.JobWorkerServicer, name: str = "server"
) -> tuple[grpc.Server, str, health.HealthServicer]:
    """Start an mTLS server for `servicer` on 127.0.0.1:0 with certificate `name`."""
    credentials = grpc.ssl_server_credentials(
        [(creds.key(name).read_bytes(), creds.cert(name).read_bytes())],
        root_certificates=creds.ca.read_bytes(),
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_JobWorkerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}", health_servicer
