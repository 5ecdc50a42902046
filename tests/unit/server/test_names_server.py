"""Names, labels and job references over gRPC: status codes, the wire fields, the audit line."""

from __future__ import annotations

import grpc
from server_helpers import Connect, LogCapture, rpc_code, rpc_error, start_job

from jobworker.api import jobworker_pb2 as pb
from jobworker.server import JobWorkerServer


async def test_name_and_labels_come_back_in_every_status(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/true", name="db", labels={"tier": "db"})
    assert (job.name, dict(job.labels)) == ("db", {"tier": "db"})
    await server.manager.wait(job.id)
    status = (await stub.GetStatus(pb.GetStatusRequest(job_id="db"))).job
    assert (status.id, status.name, dict(status.labels)) == (job.id, "db", {"tier": "db"})
    waited = (await stub.Wait(pb.WaitRequest(job_id=job.id[:8]))).job
    assert waited.id == job.id


async def test_a_duplicate_name_is_already_exists(connect: Connect) -> None:
    stub = connect("walt")
    first = await start_job(stub, "/bin/true", name="dup")
    error = await rpc_error(stub.Start(pb.StartRequest(command="/bin/true", name="dup")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == (
        f"a job named 'dup' already exists ({first.id}): remove it (jw rm) or choose another name"
    )
    # Per owner: another writer may take it.
    await start_job(connect("wendy"), "/bin/true", name="dup")


async def test_bad_names_and_labels_are_invalid_argument(connect: Connect) -> None:
    stub = connect("walt")
    for fields in ({"name": "-x"}, {"labels": {"bad key": "v"}}, {"labels": {"k": "v\n"}}):
        error = await rpc_error(stub.Start(pb.StartRequest(command="/bin/true", **fields)))  # type: ignore[arg-type]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await rpc_error(stub.List(pb.ListRequest(labels={"bad key": "v"})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_and_prune_select_by_labels_and_name(connect: Connect, server: JobWorkerServer) -> None:
    stub = connect("walt")
    web = await start_job(stub, "/bin/true", name="w", labels={"app": "web", "env": "prod"})
    other = await start_job(stub, "/bin/true", labels={"app": "web"})
    for job in (web, other):
        await server.manager.wait(job.id)
    listed = await stub.List(pb.ListRequest(labels={"app": "web", "env": "prod"}))
    assert [j.id for j in listed.jobs] == [web.id]
    assert [j.id for j in (await stub.List(pb.ListRequest(name="w"))).jobs] == [web.id]
    pruned = await stub.Prune(pb.PruneRequest(labels={"env": "prod"}))
    assert [j.id for j in pruned.jobs] == [web.id]
    assert [j.id for j in (await stub.List(pb.ListRequest())).jobs] == [other.id]


async def test_an_ambiguous_name_is_invalid_argument_for_an_admin(connect: Connect) -> None:
    walts = await start_job(connect("walt"), "/bin/true", name="same")
    wendys = await start_job(connect("wendy"), "/bin/true", name="same")
    error = await rpc_error(connect("ada").GetStatus(pb.GetStatusRequest(job_id="same")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{walts.id} (owner walt)" in (error.details() or "")
    assert f"{wendys.id} (owner wendy)" in (error.details() or "")
    # A writer's scope is its own jobs: the other writer's job of that name does not exist for it.
    found = await connect("walt").GetStatus(pb.GetStatusRequest(job_id="same"))
    assert found.job.id == walts.id


async def test_the_audit_line_names_the_resolved_job(connect: Connect, logs: LogCapture) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/true", name="audited")
    await stub.GetStatus(pb.GetStatusRequest(job_id="audited"))
    line = await logs.wait_for(
        "jobworker.audit", lambda x: x["method"].endswith("/GetStatus") and x["code"] == "OK"
    )
    assert line["job_id"] == job.id


async def test_every_rpc_that_takes_a_job_takes_its_name(connect: Connect, server: JobWorkerServer) -> None:
    # A guard for RPCs added later: each one with a job_id resolves it like the others.
    stub = connect("walt")
    job = await start_job(stub, "/bin/true", name="every")
    await server.manager.wait(job.id)
    service = pb.DESCRIPTOR.services_by_name["JobWorker"]
    methods = [m for m in service.methods if "job_id" in m.input_type.fields_by_name]
    assert {m.name for m in methods} >= {"GetStatus", "Stop", "Wait", "Delete", "Signal", "StreamOutput"}
    extras = {"Signal": {"signal": "TERM"}}
    # Delete last: it takes the job away. Stop and Signal of an ended job are FAILED_PRECONDITION, which
    # says the name was resolved.
    for method in sorted(methods, key=lambda m: m.name == "Delete"):
        request_type = getattr(pb, method.input_type.name)
        request = request_type(job_id="every", **extras.get(method.name, {}))
        call = getattr(stub, method.name)(iter([request]) if method.client_streaming else request)
        code = await rpc_code(call)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION), (method.name, code)
