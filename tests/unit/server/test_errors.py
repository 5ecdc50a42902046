"""Status codes for bad input and engine failures; messages are one line, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from server_helpers import Clients, Connect, LogCapture, MakeServer, rpc_error, start_job

from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import JobWorkerServer, convert

BAD = grpc.StatusCode.INVALID_ARGUMENT
MISSING_ID = "00000000-0000-4000-8000-000000000000"


def start(**fields: Any) -> pb.StartRequest:
    fields.setdefault("command", "/bin/true")
    return pb.StartRequest(**fields)


# Bad Start -> the start of the message naming the rule that refused it.
BAD_STARTS = {
    "empty command": (start(command=""), "command must not be empty"),
    "NUL in command": (start(command="/bin/tr\0ue"), "command and args must not contain NUL bytes"),
    "NUL in an argument": (start(args=["a\0b"]), "command and args must not contain NUL bytes"),
    "NUL in an env value": (start(env={"A": "x\0y"}), "environment variable A must not contain NUL bytes"),
    "NUL in an env name": (start(env={"A\0B": "x"}), "invalid environment variable name 'A\\0B': a name is"),
    "= in an env name": (start(env={"A=B": "x"}), "invalid environment variable name 'A=B'"),
    "relative cwd": (start(cwd="tmp"), "cwd must be an absolute path, got 'tmp'"),
    "missing executable": (
        start(command="/nonexistent/program"),
        "executable '/nonexistent/program' not found",
    ),
    "executable not in PATH": (
        start(command="no-such-program-anywhere"),
        "executable 'no-such-program-anywhere' not found in PATH",
    ),
    "not executable": (start(command="/etc/os-release"), "'/etc/os-release' is not executable"),
    "missing cwd": (start(cwd="/nonexistent/dir"), "working directory /nonexistent/dir does not exist"),
    "negative cpus": (start(limits=pb.Limits(cpus=-1)), "cpus must be positive, got -1"),
    "NaN cpus": (start(limits=pb.Limits(cpus=float("nan"))), "cpus must be a finite number"),
    "zero memory": (start(limits=pb.Limits(memory_bytes=0)), "memory must be positive, got 0"),
    "too many arguments": (
        start(args=["x"] * (convert.MAX_ARGS + 1)),
        "4097 arguments, at most 4096 allowed",
    ),
    "arguments too large": (start(args=["x" * 65536] * 5), "arguments exceed 262144 bytes in total"),
    "too many env entries": (
        start(env={f"V{i}": "" for i in range(convert.MAX_ENV_ENTRIES + 1)}),
        "1025 environment variables, at most 1024 allowed",
    ),
    "env too large": (
        start(env={f"V{i}": "x" * 65536 for i in range(5)}),
        "environment exceeds 262144 bytes in total",
    ),
    "command too long": (
        start(command="/" + "x" * convert.MAX_COMMAND_BYTES),
        f"command is longer than {convert.MAX_COMMAND_BYTES} bytes",
    ),
    "cwd too long": (
        start(cwd="/" + "x" * convert.MAX_CWD_BYTES),
        f"cwd is longer than {convert.MAX_CWD_BYTES} bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STARTS))
async def test_bad_start_is_invalid_argument_naming_the_rule(connect: Connect, case: str) -> None:
    request, rule = BAD_STARTS[case]
    error = await rpc_error(connect("walt").Start(request))
    assert error.code() == BAD
    details = error.details() or ""
    assert details.startswith(rule), details
    assert "\n" not in details
    assert "Traceback" not in details
    assert "\\x00" not in details  # never a Python repr


# Bad input -> the rule its message must name (never a Python repr, never a host path).
RULES = {
    "pids=1": (start(limits=pb.Limits(pids=1)), "pids must be between 2 and 4194304, got 1"),
    "huge pids": (start(limits=pb.Limits(pids=1 << 40)), "pids must be between 2 and 4194304"),
    "huge cpus": (start(limits=pb.Limits(cpus=1e6)), "cpus must be between 0.01 and"),
    "memory=1": (start(limits=pb.Limits(memory_bytes=1)), "memory must be between 1 MiB and 2^63-1, got 1"),
    "cwd is a file": (start(cwd="/etc/hostname"), "working directory /etc/hostname is not a directory"),
}


@pytest.mark.parametrize("case", list(RULES))
async def test_bad_input_names_the_rule(connect: Connect, case: str) -> None:
    request, rule = RULES[case]
    error = await rpc_error(connect("walt").Start(request))
    assert error.code() == BAD
    details = error.details() or ""
    assert details.startswith(rule), details
    assert "Error(" not in details
    assert "/sys/fs/cgroup" not in details


async def test_requests_over_the_message_limit_are_refused_and_audited(
    connect: Connect, logs: LogCapture
) -> None:
    error = await rpc_error(connect("walt").Start(start(args=["x" * (2 << 20)])))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "request of 2097168 bytes exceeds the limit of 1048576 bytes"
    line = await logs.wait_for("jobworker.audit", lambda x: x["code"] == "RESOURCE_EXHAUSTED")
    assert (line["identity"], line["reason"]) == ("walt", error.details())
    assert line["fingerprint"]


async def test_requests_far_over_the_limit_are_refused_by_grpc_itself(
    connect: Connect, logs: LogCapture
) -> None:
    # grpc refuses these before any Python code sees the call: no identity, hence no audit line.
    error = await rpc_error(connect("walt").Start(start(args=["x" * (5 << 20)])))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")
    assert logs.lines("jobworker.audit") == []


# Neither an id, an id prefix nor a name: refused before any job is looked at.
MALFORMED_IDS = ["", "../etc", "-rf", "a b", "a\nb", "x" * 129, "{" + MISSING_ID + "}", "é"]
# Well-formed references that fit no job.
UNKNOWN_REFS = ["abc", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", MISSING_ID + "0", MISSING_ID[:8]]


@pytest.mark.parametrize("job_id", MALFORMED_IDS)
@pytest.mark.parametrize("rpc", ["GetStatus", "Stop", "StreamOutput"])
async def test_malformed_job_id_is_invalid_argument(connect: Connect, rpc: str, job_id: str) -> None:
    stub = connect("ada")
    calls: dict[str, Callable[[], Any]] = {
        "GetStatus": lambda: stub.GetStatus(pb.GetStatusRequest(job_id=job_id)),
        "Stop": lambda: stub.Stop(pb.StopRequest(job_id=job_id)),
        "StreamOutput": lambda: stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id)),
    }
    error = await rpc_error(calls[rpc]())
    assert error.code() == BAD
    details = error.details() or ""
    assert "job" in details
    assert "\n" not in details
    assert len(details) < 200


@pytest.mark.parametrize("job_id", UNKNOWN_REFS)
async def test_a_reference_to_no_job_is_not_found(connect: Connect, job_id: str) -> None:
    error = await rpc_error(connect("ada").GetStatus(pb.GetStatusRequest(job_id=job_id)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"job {job_id} not found"


async def test_unknown_job_is_not_found_and_ids_are_case_insensitive(connect: Connect) -> None:
    stub = connect("ada")
    error = await rpc_error(stub.GetStatus(pb.GetStatusRequest(job_id=MISSING_ID)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    job = await start_job(stub, "/bin/true")
    found = await stub.GetStatus(pb.GetStatusRequest(job_id=job.id.upper()))
    assert found.job.id == job.id


async def test_stop_of_a_finished_job_is_failed_precondition(
    connect: Connect, server: JobWorkerServer
) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/true")
    await server.manager.wait(job.id)
    error = await rpc_error(stub.Stop(pb.StopRequest(job_id=job.id)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("grace", [-1.0, float("nan"), float("inf"), 1e9])
async def test_bad_grace_is_invalid_argument(connect: Connect, grace: float) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/sleep", "30")
    error = await rpc_error(stub.Stop(pb.StopRequest(job_id=job.id, grace_seconds=grace)))
    assert error.code() == BAD


@pytest.mark.parametrize("state", [pb.JOB_STATE_UNSPECIFIED, 99])
async def test_unknown_state_filter_is_invalid_argument(connect: Connect, state: int) -> None:
    request = pb.ListRequest(states=[state])  # type: ignore[list-item]
    error = await rpc_error(connect("rita").List(request))
    assert error.code() == BAD


async def test_unknown_stream_selection_is_invalid_argument(connect: Connect) -> None:
    stub = connect("walt")
    job = await start_job(stub, "/bin/true")
    request = pb.StreamOutputRequest(job_id=job.id, streams=7)  # type: ignore[arg-type]
    error = await rpc_error(stub.StreamOutput(request))
    assert error.code() == BAD


async def test_limit_over_the_server_ceiling_is_invalid_argument(
    make_server: MakeServer, clients: Clients
) -> None:
    server = await make_server(max_limits=engine.Limits(memory_bytes=1 << 30))
    request = start(limits=pb.Limits(memory_bytes=2 << 30))
    error = await rpc_error(clients.stub(server.port, "walt").Start(request))
    assert error.code() == BAD
    assert "exceeds the server ceiling" in (error.details() or "")


async def test_a_cpuset_outside_the_ceiling_is_invalid_argument_naming_it(
    make_server: MakeServer, clients: Clients
) -> None:
    server = await make_server(max_limits=engine.Limits(cpuset="0"))
    error = await rpc_error(clients.stub(server.port, "walt").Start(start(limits=pb.Limits(cpuset="0-4000"))))
    assert error.code() == BAD
    assert "cpuset must name only CPUs of this host" in (error.details() or "")
    error = await rpc_error(clients.stub(server.port, "walt").Start(start(limits=pb.Limits(cpuset="zero"))))
    assert error.code() == BAD
    assert "'zero' is not a CPU list" in (error.details() or "")


async def test_limits_without_cgroups_are_failed_precondition(connect: Connect) -> None:
    # The test servers run without cgroups, as a host without usable cgroups would.
    error = await rpc_error(connect("walt").Start(start(limits=pb.Limits(memory_bytes=1 << 26))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_job_limit_is_resource_exhausted(make_server: MakeServer, clients: Clients) -> None:
    server = await make_server(max_jobs=1)
    stub = clients.stub(server.port, "walt")
    await start_job(stub, "/bin/sleep", "30")
    error = await rpc_error(stub.Start(start()))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_closed_engine_is_unavailable(connect: Connect, server: JobWorkerServer) -> None:
    await server.manager.close(0)
    error = await rpc_error(connect("walt").Start(start()))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_unexpected_failure_is_internal_and_leaks_nothing(
    connect: Connect, server: JobWorkerServer, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    def explode(**_: object) -> list[engine.JobStatus]:
        raise RuntimeError("secret detail /var/lib/jobworker/key")

    monkeypatch.setattr(server.manager, "list", explode)
    error = await rpc_error(connect("ada").List(pb.ListRequest()))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal server error"
    logged = [r for r in logs.records if r.exc_info and "secret detail" in str(r.exc_info[1])]
    assert logged, "the traceback is logged on the server side"
    # The server keeps serving.
    monkeypatch.undo()
    assert (await connect("ada").List(pb.ListRequest())).jobs == []


async def test_every_call_gets_one_audit_line(connect: Connect, logs: LogCapture) -> None:
    walt = connect("walt")
    job = await start_job(walt, "/bin/true")
    await rpc_error(connect("rita").Stop(pb.StopRequest(job_id=job.id)))
    await rpc_error(connect("wendy").GetStatus(pb.GetStatusRequest(job_id=job.id)))
    lines = logs.lines("jobworker.audit")
    assert [(x["identity"], x["role"], x["method"], x["job_id"], x["code"]) for x in lines] == [
        ("walt", "writer", "/jobworker.v1.JobWorker/Start", job.id, "OK"),
        ("rita", "reader", "/jobworker.v1.JobWorker/Stop", job.id, "PERMISSION_DENIED"),
        ("wendy", "writer", "/jobworker.v1.JobWorker/GetStatus", job.id, "NOT_FOUND"),
    ]
    assert all(isinstance(x["duration_ms"], float) and x["msg"] == "call" for x in lines)


async def test_wait_delete_prune_signal_are_audited(connect: Connect, logs: LogCapture) -> None:
    walt = connect("walt")
    job = await start_job(walt, "/bin/true")
    await walt.Wait(pb.WaitRequest(job_id=job.id))
    await rpc_error(walt.Signal(pb.SignalRequest(job_id=job.id, signal="USR1")))
    await walt.Delete(pb.DeleteRequest(job_id=job.id))
    await walt.Prune(pb.PruneRequest())
    await rpc_error(connect("rita").Delete(pb.DeleteRequest(job_id=job.id)))
    lines = logs.lines("jobworker.audit")[1:]
    assert [(x["method"].rsplit("/", 1)[1], x["job_id"], x["code"]) for x in lines] == [
        ("Wait", job.id, "OK"),
        ("Signal", job.id, "FAILED_PRECONDITION"),
        ("Delete", job.id, "OK"),
        ("Prune", "", "OK"),
        ("Delete", job.id, "PERMISSION_DENIED"),
    ]
    assert "already ended" in lines[1]["reason"]
