"""Tenant fairness over the wire: quotas answer RESOURCE_EXHAUSTED by name; GetServerInfo shows them."""

from __future__ import annotations

import grpc
from server_helpers import Clients, LogCapture, MakeServer, collect, rpc_error, start_job

from jobworker.api import jobworker_pb2 as pb


async def test_one_writer_at_its_quota_does_not_block_another(
    make_server: MakeServer, clients: Clients, logs: LogCapture
) -> None:
    server = await make_server(max_jobs_per_owner=1)
    walt, wendy = clients.stub(server.port, "walt"), clients.stub(server.port, "wendy")
    await start_job(walt, "/bin/sleep", "30")
    error = await rpc_error(walt.Start(pb.StartRequest(command="/bin/true"), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "quota reached: walt runs 1 jobs, max-jobs-per-owner is 1"
    await start_job(wendy, "/bin/sleep", "30")
    line = await logs.wait_for("jobworker.audit", lambda x: x["code"] == "RESOURCE_EXHAUSTED")
    assert (line["identity"], line["reason"]) == ("walt", error.details())


async def test_one_writers_churn_keeps_the_other_writers_history(
    make_server: MakeServer, clients: Clients
) -> None:
    server = await make_server(retain_jobs=3)
    walt, wendy = clients.stub(server.port, "walt"), clients.stub(server.port, "wendy")
    kept = await start_job(wendy, "/bin/echo", "mine")
    await collect(wendy, kept.id, follow=True)
    for _ in range(3):
        job = await start_job(walt, "/bin/true")
        await collect(walt, job.id, follow=True)
    messages, end = await collect(wendy, kept.id)
    assert b"".join(m.chunk.data for m in messages) == b"mine\n"
    assert end.job.id == kept.id


async def test_server_info_shows_the_callers_quota_and_use(make_server: MakeServer, clients: Clients) -> None:
    server = await make_server(
        max_jobs_per_owner=5, max_output_per_owner_bytes=1 << 20, retain_jobs_per_owner=7
    )
    walt = clients.stub(server.port, "walt")
    job = await start_job(walt, "/bin/echo", "hello")
    await collect(walt, job.id, follow=True)
    await start_job(walt, "/bin/sleep", "30")
    info = await walt.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert (info.quota.max_running_jobs, info.quota.max_output_bytes, info.quota.retained_jobs) == (
        5,
        1 << 20,
        7,
    )
    assert (info.usage.running_jobs, info.usage.output_bytes, info.usage.retained_jobs) == (1, 6, 1)
    other = await clients.stub(server.port, "wendy").GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert (other.usage.running_jobs, other.usage.output_bytes) == (0, 0)


async def test_quotas_switched_off_are_unset(make_server: MakeServer, clients: Clients) -> None:
    server = await make_server(
        max_jobs_per_owner=None, max_output_per_owner_bytes=None, retain_jobs_per_owner=None
    )
    info = await clients.stub(server.port, "rita").GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
    assert not info.quota.HasField("max_running_jobs")
    assert not info.quota.HasField("max_output_bytes")
    assert not info.quota.HasField("retained_jobs")
