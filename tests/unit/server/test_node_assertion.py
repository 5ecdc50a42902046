"""A node's assertion of the caller it forwards for: believed from a node certificate only.

Every rule has its negative: a client asserting anyone is refused whatever its role, a node must assert
exactly one valid caller of a caller role, and the asserted caller gets exactly that caller's rights.
"""

from __future__ import annotations

import grpc
import pytest
from server_helpers import Connect, LogCapture, rpc_error, start_job

from jobworker.api import jobworker_pb2 as pb
from jobworker.server.auth import ASSERTED_IDENTITY, ASSERTED_ROLE

AS_WALT = ((ASSERTED_IDENTITY, "walt"), (ASSERTED_ROLE, "writer"))
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("client", ["walt", "ada", "rita"])
@pytest.mark.parametrize(
    "metadata",
    [AS_WALT, ((ASSERTED_IDENTITY, "ada"), (ASSERTED_ROLE, "admin")), ((ASSERTED_ROLE, "admin"),)],
)
async def test_a_client_may_not_assert_any_identity(
    connect: Connect, client: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    error = await rpc_error(connect(client).List(pb.ListRequest(), metadata=metadata))
    assert error.code() == DENIED
    assert error.details() == "only a fleet node may assert another caller's identity"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "a node certificate must assert the caller it forwards for"),
        (((ASSERTED_IDENTITY, "walt"),), "a node must assert exactly one caller identity and role"),
        ((*AS_WALT, (ASSERTED_IDENTITY, "ada")), "a node must assert exactly one caller identity and role"),
        (((ASSERTED_IDENTITY, "walt"), (ASSERTED_ROLE, "node")), "the asserted caller role is not valid"),
        (((ASSERTED_IDENTITY, "walt"), (ASSERTED_ROLE, "root")), "the asserted caller role is not valid"),
        (
            ((ASSERTED_IDENTITY, "-walt"), (ASSERTED_ROLE, "writer")),
            "the asserted caller identity is not valid",
        ),
        (((ASSERTED_IDENTITY, "rita"), (ASSERTED_ROLE, "reader")), "role reader may not call Start"),
    ],
)
async def test_a_node_must_assert_one_valid_caller(
    connect: Connect, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    error = await rpc_error(connect("nico").Start(pb.StartRequest(command="/bin/true"), metadata=metadata))
    assert error.code() == DENIED
    assert error.details() == reason


async def test_an_asserted_writer_has_that_writers_rights_and_is_audited_as_such(
    connect: Connect, logs: LogCapture
) -> None:
    node = connect("nico")
    started = await node.Start(pb.StartRequest(command="/bin/sleep", args=["30"]), metadata=AS_WALT)
    assert started.job.owner == "walt"
    # Another writer's job looks missing to the asserted writer, as it would to walt himself.
    other = await start_job(connect("wendy"), "/bin/sleep", "30")
    hidden = await rpc_error(node.GetStatus(pb.GetStatusRequest(job_id=other.id), metadata=AS_WALT))
    assert hidden.code() == grpc.StatusCode.NOT_FOUND
    listed = await node.List(pb.ListRequest(), metadata=AS_WALT)
    assert {j.id for j in listed.jobs} == {started.job.id}
    line = await logs.wait_for(
        "jobworker.audit", lambda r: r.get("method", "").endswith("/Start") and r.get("via") == "nico"
    )
    assert line["identity"] == "walt"
    assert line["role"] == "writer"
    for job_id in (started.job.id, other.id):
        await connect("ada").Stop(pb.StopRequest(job_id=job_id, grace_seconds=0))
