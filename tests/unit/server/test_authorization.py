"""The role x RPC matrix, ownership, and identity taken only from the verified certificate."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import Connect, OpenChannel, Stub, rpc_code, start_job

from jobworker.api import jobworker_pb2 as pb
from jobworker.server import ACCESS, ROLELESS, JobWorkerServer

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
HIDDEN = grpc.StatusCode.NOT_FOUND
RPCS = (
    "Start",
    "GetStatus",
    "List",
    "StreamOutput",
    "GetServerInfo",
    "Stop",
    "Wait",
    "Delete",
    "Prune",
    "Signal",
    "WriteInput",
)
# An admitted call that does not answer OK on a running job: what it answers instead.
ADMITTED = {
    # Blocks until the job ends; the test gives up after a moment.
    "Wait": grpc.StatusCode.DEADLINE_EXCEEDED,
    # Only ended jobs can be deleted.
    "Delete": grpc.StatusCode.FAILED_PRECONDITION,
    # The job was started without its stdin open.
    "WriteInput": grpc.StatusCode.FAILED_PRECONDITION,
}

# What each caller gets from each RPC aimed at a running job owned by the writer walt.
MATRIX: dict[str, dict[str, grpc.StatusCode]] = {
    "rita": {
        "Start": DENIED,
        "GetStatus": OK,
        "List": OK,
        "StreamOutput": OK,
        "GetServerInfo": OK,
        "Stop": DENIED,
        "Wait": OK,
        "Delete": DENIED,
        "Prune": DENIED,
        "Signal": DENIED,
        "WriteInput": DENIED,
    },
    "walt": dict.fromkeys(RPCS, OK),
    "wendy": {
        "Start": OK,
        "GetStatus": HIDDEN,
        "List": OK,
        "StreamOutput": HIDDEN,
        "GetServerInfo": OK,
        "Stop": HIDDEN,
        "Wait": HIDDEN,
        "Delete": HIDDEN,
        "Prune": OK,
        "Signal": HIDDEN,
        "WriteInput": HIDDEN,
    },
    "ada": dict.fromkeys(RPCS, OK),
    "nora": dict.fromkeys(RPCS, DENIED),  # no role extension
    "mal": dict.fromkeys(RPCS, DENIED),  # malformed role extension
    "uma": dict.fromkeys(RPCS, DENIED),  # unknown role name
}


def call(stub: Stub, rpc: str, job_id: str) -> Any:
    """One RPC of each kind, aimed at job_id where it takes one."""
    if rpc == "Start":
        return stub.Start(pb.StartRequest(command="/bin/true"))
    if rpc == "GetStatus":
        return stub.GetStatus(pb.GetStatusRequest(job_id=job_id))
    if rpc == "List":
        return stub.List(pb.ListRequest())
    if rpc == "StreamOutput":
        return stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id, follow=False))
    if rpc == "GetServerInfo":
        return stub.GetServerInfo(pb.GetServerInfoRequest())
    if rpc == "Delete":
        return stub.Delete(pb.DeleteRequest(job_id=job_id))
    if rpc == "Prune":
        return stub.Prune(pb.PruneRequest())
    if rpc == "Signal":
        # SIGCONT changes nothing for a running sleep, so the job's state still tells what Stop did.
        return stub.Signal(pb.SignalRequest(job_id=job_id, signal="CONT"))
    if rpc == "Wait":
        return stub.Wait(pb.WaitRequest(job_id=job_id), timeout=0.5)
    if rpc == "WriteInput":
        return stub.WriteInput(iter([pb.WriteInputRequest(job_id=job_id, data=b"x", eof=True)]))
    return stub.Stop(pb.StopRequest(job_id=job_id, grace_seconds=0))


def test_every_jobworker_rpc_has_a_row() -> None:
    assert {name.rsplit("/", 1)[1] for name in ACCESS} == set(RPCS)
    assert all(name.startswith("/grpc.health.v1.Health/") for name in ROLELESS)


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("caller", sorted(MATRIX))
async def test_role_matrix(connect: Connect, caller: str, rpc: str) -> None:
    job = await start_job(connect("walt"), "/bin/sleep", "30")
    code = await rpc_code(call(connect(caller), rpc, job.id))
    expected = MATRIX[caller][rpc]
    assert code == (ADMITTED.get(rpc, OK) if expected is OK else expected)
    state = (await connect("ada").GetStatus(pb.GetStatusRequest(job_id=job.id))).job.state
    stopped = rpc == "Stop" and code == OK
    assert state == (pb.JOB_STATE_STOPPED if stopped else pb.JOB_STATE_RUNNING)


async def test_denial_says_why(connect: Connect) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as reader:
        await connect("rita").Start(pb.StartRequest(command="/bin/true"))
    assert reader.value.details() == "role reader may not call Start"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await connect("nora").List(pb.ListRequest())
    assert missing.value.details() == "client certificate role: certificate has no role extension"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await connect("uma").List(pb.ListRequest())
    assert "unknown role 'root'" in (unknown.value.details() or "")


async def test_other_owners_job_looks_like_a_missing_one(connect: Connect) -> None:
    job = await start_job(connect("walt"), "/bin/sleep", "30")
    wendy = connect("wendy")
    foreign = await _error(wendy.GetStatus(pb.GetStatusRequest(job_id=job.id)))
    absent_id = "00000000-0000-4000-8000-000000000000"
    absent = await _error(wendy.GetStatus(pb.GetStatusRequest(job_id=absent_id)))
    assert foreign.code() == absent.code() == HIDDEN
    assert foreign.details() == (absent.details() or "").replace(absent_id, job.id)


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_list_shows_writers_only_their_own_jobs(connect: Connect) -> None:
    walt_job = await start_job(connect("walt"), "/bin/true")
    wendy_job = await start_job(connect("wendy"), "/bin/true")
    ada_job = await start_job(connect("ada"), "/bin/true")

    async def listed(name: str, owner: str = "") -> set[str]:
        response = await connect(name).List(pb.ListRequest(owner=owner))
        return {job.id for job in response.jobs}

    everything = {walt_job.id, wendy_job.id, ada_job.id}
    assert await listed("walt") == {walt_job.id}
    assert await listed("wendy") == {wendy_job.id}
    # A writer's owner filter cannot widen its view.
    assert await listed("wendy", owner="walt") == {wendy_job.id}
    assert await listed("rita") == everything
    assert await listed("ada") == everything
    assert await listed("rita", owner="walt") == {walt_job.id}
    assert await listed("ada", owner="ada") == {ada_job.id}


async def test_owner_is_the_certificate_identity_not_metadata(connect: Connect) -> None:
    forged = [("x-jobworker-identity", "ada"), ("owner", "ada"), ("x-role", "admin")]
    walt = connect("walt")
    job = (await walt.Start(pb.StartRequest(command="/bin/true"), metadata=forged)).job
    assert job.owner == "walt"
    wendy = connect("wendy")
    pretend = [("x-jobworker-identity", "walt"), ("owner", "walt")]
    code = await rpc_code(wendy.GetStatus(pb.GetStatusRequest(job_id=job.id), metadata=pretend))
    assert code == HIDDEN
    rita = connect("rita")
    code = await rpc_code(rita.Start(pb.StartRequest(command="/bin/true"), metadata=forged))
    assert code == DENIED


@pytest.mark.parametrize("caller", ["rita", "nora", "mal"])
async def test_health_needs_a_certificate_but_no_role(channel: OpenChannel, caller: str) -> None:
    health = health_pb2_grpc.HealthStub(channel(caller))
    for service in ("", "jobworker.v1.JobWorker"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_without_certificate_is_refused(channel: OpenChannel) -> None:
    health = health_pb2_grpc.HealthStub(channel(None))
    code = await rpc_code(health.Check(health_pb2.HealthCheckRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_health_reports_not_serving_during_shutdown(
    server: JobWorkerServer, channel: OpenChannel
) -> None:
    health = health_pb2_grpc.HealthStub(channel("rita"))
    watch = health.Watch(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.ensure_future(server.shutdown(1.0))
    second = await watch.read()
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    await stopping


async def test_server_info_says_what_is_enforced_and_who_asks(connect: Connect) -> None:
    info = await connect("rita").GetServerInfo(pb.GetServerInfoRequest())
    assert (info.identity, info.role) == ("rita", "reader")
    assert info.version
    assert info.cgroup_driver in {"v1", "v2", "none"}
    assert info.limits_supported == (info.cgroup_driver != "none")
    if not info.limits_supported:
        assert info.cgroup_reason  # a server that cannot enforce limits says why
