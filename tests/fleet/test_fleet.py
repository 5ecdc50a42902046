"""The fleet as users see it: placement, calls through any node, roles across nodes, failures.

The tests share one fleet (module fixture) and run in file order: the destructive ones (kill -9 of a node,
of an etcd member) come last.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import grpc
import pytest
from conftest import LEASE_TTL, NODES, Fleet, wait_until

from jobworker.api import jobworker_pb2 as pb
from jobworker.api import jobworker_pb2_grpc as pb_grpc
from jobworker.client import (
    Client,
    ClientError,
    ConnectionFailedError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobState,
    Limits,
    NotFoundError,
    OutputChunk,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from jobworker.server.auth import ASSERTED_IDENTITY, ASSERTED_ROLE

SLEEP = ("python3", ["-c", "import time; time.sleep(300)"])


def _sleeper(client: Client, **kwargs: object) -> str:
    return client.start(SLEEP[0], SLEEP[1], **kwargs).id  # type: ignore[arg-type]


def test_thirty_jobs_started_through_one_node_spread_over_all_three(fleet: Fleet) -> None:
    a = fleet.client("a")
    jobs = [a.start(*SLEEP) for _ in range(30)]
    per_node = collections.Counter(job.node for job in jobs)
    assert set(per_node) == set(NODES), per_node
    # Least loaded first: no node takes more than half of a burst.
    assert max(per_node.values()) <= 15, per_node
    listed = {job.id: job.node for job in fleet.client("b").list(states=[JobState.RUNNING])}
    assert {job.id: job.node for job in jobs}.items() <= listed.items()
    for job in jobs:
        a.stop(job.id, grace_seconds=0)


def _line(stream: IO[bytes], limit_s: float) -> bytes:
    """One line of a pipe, failing (not hanging) when none comes within limit_s."""
    ready, _, _ = select.select([stream], [], [], limit_s)
    assert ready, f"no output within {limit_s:g}s"
    return stream.readline()


def test_status_logs_follow_and_stop_through_a_node_that_does_not_hold_the_job(fleet: Fleet) -> None:
    a, b = fleet.client("a"), fleet.client("b")
    job = a.start(
        "python3",
        ["-u", "-c", "import time\nfor i in range(3): print(i); time.sleep(0.2)\ntime.sleep(300)"],
        node="c",
    )
    assert job.node == "c"
    assert b.status(job.id).state is JobState.RUNNING
    env = {**os.environ, "JW_SERVER": fleet.address("b"), "JW_CA": str(fleet.certs.ca)}
    cert, key = fleet.certs.pair("alice")
    env.update(JW_CERT=str(cert), JW_KEY=str(key))
    with subprocess.Popen(
        # Unbuffered: a line read must never sit in a Python buffer that select() cannot see.
        [sys.executable, "-m", "jobworker.cli", "logs", "-f", job.id],
        env=env,
        stdout=subprocess.PIPE,
        bufsize=0,
    ) as follow:
        try:
            assert follow.stdout is not None
            assert [_line(follow.stdout, 20) for _ in range(3)] == [b"0\n", b"1\n", b"2\n"]
            stopped = b.stop(job.id, grace_seconds=0)
            assert stopped.state is JobState.STOPPED
            assert stopped.node == "c"
            # The relayed stream ends with the job, as a local one does.
            assert follow.wait(timeout=20) == 0
        finally:
            if follow.poll() is None:
                follow.kill()
    assert a.status(job.id).state is JobState.STOPPED


def test_input_and_names_through_a_node_that_does_not_hold_the_job(fleet: Fleet) -> None:
    a, b = fleet.client("a"), fleet.client("b")
    upper = "import sys; sys.stdout.write(sys.stdin.read().upper())"
    job = a.start("python3", ["-c", upper], node="c", stdin=True, name="shout", labels={"team": "fleet"})
    assert (job.node, job.name) == ("c", "shout")
    assert b.write_input(job.id, [b"hello ", b"fleet"]) == len(b"hello fleet")
    ended = b.wait(job.id)
    assert ended.exit_code == 0
    output = b"".join(e.data for e in b.stream(job.id) if isinstance(e, OutputChunk))
    assert output == b"HELLO FLEET"
    # Refused by the node holding the job while we still write: its answer comes through, never INTERNAL.
    for _ in range(5):
        with pytest.raises(FailedPreconditionError, match="has already ended"):
            b.write_input(job.id, (b"x" * 65536 for _ in range(2000)))
    # The job's name and labels travel with it; a name or an id prefix resolves on any node.
    assert [j.id for j in b.list(labels={"team": "fleet"})] == [job.id]
    assert fleet.client("c").status("shout").id == job.id
    assert b.status("shout").id == job.id
    assert b.status(job.id[:8]).id == job.id
    assert b.wait("shout").exit_code == 0
    # Another writer's name is not ours, through any node; nor is a prefix of their id.
    bob = fleet.client("b", "bob")
    with pytest.raises(NotFoundError):
        bob.status("shout")
    with pytest.raises(NotFoundError):
        bob.status(job.id[:8])
    b.delete("shout")
    with pytest.raises(NotFoundError):
        b.status("shout")


def test_a_name_used_on_two_nodes_is_ambiguous_elsewhere(fleet: Fleet) -> None:
    a = fleet.client("a")
    on_b = a.start(*SLEEP, node="b", name="twice")
    on_c = a.start(*SLEEP, node="c", name="twice")
    try:
        # Names are unique per owner on a node; a third node cannot tell which one is meant.
        with pytest.raises(InvalidArgumentError, match="used on several nodes"):
            a.status("twice")
        assert fleet.client("b").status("twice").id == on_b.id
        assert a.status(on_c.id[:12]).id == on_c.id
    finally:
        for job in (on_b, on_c):
            a.stop(job.id, grace_seconds=0)
            a.delete(job.id)


def test_start_constraints(fleet: Fleet) -> None:
    a = fleet.client("a")
    on_b = a.start(*SLEEP, node="b")
    west = [a.start(*SLEEP, node_labels={"zone": "west"}) for _ in range(4)]
    try:
        assert on_b.node == "b"
        assert {j.node for j in west} <= {"b", "c"}
        with pytest.raises(FailedPreconditionError, match="no live node has the labels zone=north"):
            a.start(*SLEEP, node_labels={"zone": "north"})
        with pytest.raises(InvalidArgumentError, match="no node named z"):
            a.start(*SLEEP, node="z")
        with pytest.raises(ResourceExhaustedError, match="no live node fits"):
            a.start(*SLEEP, limits=Limits(cpus=10_000))
    finally:
        for job in (on_b, *west):
            a.stop(job.id, grace_seconds=0)


def test_roles_and_ownership_through_a_non_owner_node(fleet: Fleet) -> None:
    alice_a = fleet.client("a", "alice")
    job = alice_a.start(*SLEEP, node="c")
    try:
        # bob (another writer) through b: alice's job on c is invisible, exactly like a missing one.
        bob_b = fleet.client("b", "bob")
        with pytest.raises(NotFoundError):
            bob_b.status(job.id)
        with pytest.raises(NotFoundError):
            bob_b.stop(job.id, grace_seconds=0)
        assert job.id not in {j.id for j in bob_b.list()}
        # a reader sees it through b but may not stop it.
        rita_b = fleet.client("b", "rita")
        assert rita_b.status(job.id).owner == "alice"
        with pytest.raises(PermissionDeniedError):
            rita_b.stop(job.id)
        with pytest.raises(PermissionDeniedError):
            rita_b.start(*SLEEP)
        # an admin through b may stop it.
        assert fleet.client("b", "root").stop(job.id, grace_seconds=0).state is JobState.STOPPED
    finally:
        with contextlib.suppress(ClientError):
            alice_a.stop(job.id, grace_seconds=0)


def _raw_stub(fleet: Fleet, node: str, who: str) -> tuple[grpc.Channel, pb_grpc.JobWorkerStub]:
    cert, key = fleet.certs.pair(who)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=fleet.certs.ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )
    channel = grpc.secure_channel(fleet.address(node), credentials)
    return channel, pb_grpc.JobWorkerStub(channel)


def test_a_client_asserting_another_identity_is_refused(fleet: Fleet) -> None:
    channel, stub = _raw_stub(fleet, "a", "bob")
    with channel:
        for metadata in (
            ((ASSERTED_IDENTITY, "alice"), (ASSERTED_ROLE, "writer")),
            ((ASSERTED_IDENTITY, "root"), (ASSERTED_ROLE, "admin")),
            ((ASSERTED_ROLE, "admin"),),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.List(pb.ListRequest(), metadata=metadata, timeout=10)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "only a fleet node may assert" in refused.value.details()


def test_a_node_must_assert_a_valid_caller(fleet: Fleet) -> None:
    channel, stub = _raw_stub(fleet, "b", "a")
    with channel:
        cases = {
            (): "must assert the caller",
            ((ASSERTED_IDENTITY, "alice"),): "exactly one caller identity and role",
            ((ASSERTED_IDENTITY, "alice"), (ASSERTED_ROLE, "node")): "asserted caller role is not valid",
            ((ASSERTED_IDENTITY, "al ice"), (ASSERTED_ROLE, "writer")): "identity is not valid",
            ((ASSERTED_IDENTITY, "rita"), (ASSERTED_ROLE, "reader")): "role reader may not call Start",
        }
        for metadata, reason in cases.items():
            with pytest.raises(grpc.RpcError) as refused:
                stub.Start(pb.StartRequest(command="true"), metadata=metadata, timeout=10)
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, metadata
            assert reason in refused.value.details(), (metadata, refused.value.details())
        # A node asserting a writer gets that writer's scope, not more: bob cannot see alice's job.
        job = fleet.client("a", "alice").start(*SLEEP, node="b")
        try:
            with pytest.raises(grpc.RpcError) as hidden:
                stub.GetStatus(
                    pb.GetStatusRequest(job_id=job.id),
                    metadata=((ASSERTED_IDENTITY, "bob"), (ASSERTED_ROLE, "writer")),
                    timeout=10,
                )
            assert hidden.value.code() is grpc.StatusCode.NOT_FOUND
        finally:
            fleet.client("a", "alice").stop(job.id, grace_seconds=0)


def _jw(fleet: Fleet, node: str, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    cert, key = fleet.certs.pair(who)
    env = {
        **os.environ,
        "JW_SERVER": fleet.address(node),
        "JW_CA": str(fleet.certs.ca),
        "JW_CERT": str(cert),
        "JW_KEY": str(key),
    }
    return subprocess.run(
        [sys.executable, "-m", "jobworker.cli", *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_jw_nodes_info_and_list_show_the_fleet(fleet: Fleet) -> None:
    job = fleet.client("a").start(*SLEEP, node="c")
    try:
        nodes = _jw(fleet, "b", "rita", "nodes")
        assert nodes.returncode == 0, nodes.stderr
        lines = nodes.stdout.splitlines()
        assert lines[0].split() == ["NAME", "ADDRESS", "ALIVE", "LOAD", "JOBS", "LABELS"]
        assert [line.split()[0] for line in lines[1:]] == ["b", "a", "c"]
        info = _jw(fleet, "b", "rita", "info")
        assert f"node b at {fleet.address('b')} (labels zone=west); 3 of 3 nodes alive" in info.stdout
        listed = _jw(fleet, "b", "alice", "list")
        assert listed.stdout.splitlines()[0].split()[:4] == ["ID", "NODE", "NAME", "OWNER"]
        assert any(line.split()[:2] == [job.id, "c"] for line in listed.stdout.splitlines())
    finally:
        fleet.client("a").stop(job.id, grace_seconds=0)


def test_nodes_and_info_show_the_fleet(fleet: Fleet) -> None:
    client = fleet.client("b", "rita")
    nodes = {n.name: n for n in client.nodes()}
    assert set(nodes) == set(NODES)
    assert all(n.alive for n in nodes.values())
    assert nodes["a"].labels == {"zone": "east"}
    assert nodes["a"].address == fleet.address("a")
    info = client.server_info()
    assert info.fleet is not None
    assert info.fleet.node == "b"
    assert info.fleet.etcd_reachable
    assert info.fleet.nodes_alive == 3
    assert info.fleet.lease_ttl_seconds == LEASE_TTL


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_slow_client_never_makes_the_forwarding_node_buffer_the_output(fleet: Fleet) -> None:
    size = 96 << 20
    writer = f"import sys; sys.stdout.buffer.write(b'x' * {size})"
    job = fleet.client("a").start("python3", ["-c", writer], node="c")
    fleet.client("b").wait(job.id)
    forwarding = fleet.nodes["a"].popen.pid
    before = _rss_bytes(forwarding)
    channel, stub = _raw_stub(fleet, "a", "alice")
    with channel:
        messages = iter(stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True), timeout=60))
        received = len(next(messages).chunk.data)
        # The client stops reading: whatever the owner may push now, flow control must stop it at a
        # window, and the forwarding node must not read ahead into its own memory.
        time.sleep(1.5)
        grown = _rss_bytes(forwarding) - before
        for message in messages:
            received += len(message.chunk.data)
    assert received == size
    assert grown < 24 << 20, f"the forwarding node grew by {grown >> 20} MiB while the client read nothing"


def test_killed_node_answers_unavailable_then_comes_back(fleet: Fleet) -> None:
    a, b = fleet.client("a"), fleet.client("b")
    on_c = [_sleeper(a, node="c") for _ in range(3)]
    on_a = _sleeper(a, node="a")
    try:
        fleet.nodes["c"].kill9()
        killed = time.monotonic()
        for job_id in on_c:
            with pytest.raises(ConnectionFailedError, match="node c"):
                b.status(job_id)
        assert time.monotonic() - killed < 6
        # a and b keep serving; a Start that finds c unreachable before its lease expired goes elsewhere.
        assert a.status(on_a).state is JobState.RUNNING
        early = [a.start(*SLEEP) for _ in range(4)]
        assert {j.node for j in early} <= {"a", "b"}
        for job in early:
            a.stop(job.id, grace_seconds=0)
        wait_until(
            "c's lease to expire", lambda: not {n.name: n for n in b.nodes()}["c"].alive, LEASE_TTL + 3
        )
        listed = {j.id: j for j in b.list()}
        assert all(listed[j].node == "c" and listed[j].node_unreachable for j in on_c)
        started = [a.start(*SLEEP) for _ in range(4)]
        assert {j.node for j in started} <= {"a", "b"}
        for job in started:
            a.stop(job.id, grace_seconds=0)
        fleet.start_node("c")
        fleet.wait_fleet(alive=3, via=("a", "b"))
        # Restarted, c reattaches the jobs its holders kept running through the outage.
        back = wait_until("c's jobs to answer again", lambda: [b.status(j) for j in on_c], 15)
        assert {job.node for job in back} == {"c"}
        assert {job.state for job in back} == {JobState.RUNNING}
        for job_id in on_c:
            b.stop(job_id, grace_seconds=0)
    finally:
        a.stop(on_a, grace_seconds=0)


def test_one_etcd_member_down_the_fleet_keeps_working(fleet: Fleet) -> None:
    fleet.etcd["c"].kill9()
    a, b = fleet.client("a"), fleet.client("b")
    # Several lease periods: every node must keep its lease through the surviving members.
    deadline = time.monotonic() + LEASE_TTL + 2
    jobs = []
    while time.monotonic() < deadline:
        jobs.append(a.start(*SLEEP))
        time.sleep(0.5)
    assert {n.name for n in b.nodes() if n.alive} == set(NODES)
    for job in jobs:
        assert b.status(job.id).state is JobState.RUNNING
        b.stop(job.id, grace_seconds=0)
    info = a.server_info()
    assert info.fleet is not None
    assert info.fleet.etcd_reachable


def test_etcd_down_local_jobs_served_placement_refused_until_it_is_back(fleet: Fleet) -> None:
    a = fleet.client("a")
    local = _sleeper(a, node="a")
    remote = _sleeper(a, node="b")
    for member in fleet.etcd.values():
        member.kill9()
    info = wait_until(
        "a to notice etcd is gone",
        lambda: (i := a.server_info()).fleet is not None and not i.fleet.etcd_reachable and i,
        LEASE_TTL + 5,
    )
    assert info.fleet is not None
    assert info.fleet.etcd_error
    assert a.status(local).state is JobState.RUNNING
    assert a.stop(local, grace_seconds=0).state is JobState.STOPPED
    with pytest.raises(ConnectionFailedError, match="placement refused"):
        a.start(*SLEEP)
    # b's job was looked up before and is still forwarded from the cached record.
    assert a.status(remote).node == "b"
    a.stop(remote, grace_seconds=0)
    # etcd back (same data): every node renews or replaces its lease, and placement works again.
    for member in fleet.etcd:
        fleet.start_etcd(member)
    fleet.wait_fleet(alive=3, timeout=30)
    again = a.start(*SLEEP)
    assert again.node in NODES
    a.stop(again.id, grace_seconds=0)
