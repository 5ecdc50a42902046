"""What jw prints for a fleet: the NODE column, unreachable nodes, jw nodes, the Fleet line of jw info."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobworker.cli._render import job_details, job_table, node_table, server_info_details
from jobworker.client import FleetInfo, JobInfo, JobState, Limits, NodeInfo, ServerInfo

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def job(job_id: str, node: str = "", *, unreachable: bool = False) -> JobInfo:
    state = JobState.UNKNOWN if unreachable else JobState.RUNNING
    return JobInfo(
        id=job_id,
        owner="alice",
        command="sleep",
        args=("9",),
        state=state,
        started_at=NOW - timedelta(seconds=5),
        node=node,
        node_unreachable=unreachable,
    )


def test_a_single_servers_table_has_no_node_column() -> None:
    assert job_table([job("j1")], NOW).splitlines()[0].split() == [
        "ID",
        "NAME",
        "OWNER",
        "STATE",
        "EXIT",
        "STARTED",
        "DURATION",
        "COMMAND",
    ]


def test_a_fleets_table_names_each_jobs_node_and_the_unreachable_ones() -> None:
    lines = job_table([job("j1", "a"), job("j2", "c", unreachable=True)], NOW).splitlines()
    assert lines[0].split()[:4] == ["ID", "NODE", "NAME", "OWNER"]
    assert lines[1].split()[:5] == ["j1", "a", "-", "alice", "running"]
    assert lines[2].split()[:6] == ["j2", "c", "(unreachable)", "-", "alice", "unknown"]
    assert "Node:" in job_details(job("j2", "c", unreachable=True), NOW)
    assert "unreachable: state unknown" in job_details(job("j2", "c", unreachable=True), NOW)


def test_nodes_table() -> None:
    nodes = [
        NodeInfo("a", "10.0.0.1:50051", True, {"zone": "east"}, cores=2, running_jobs=3, jobs=7),
        NodeInfo("c", "10.0.0.3:50051", False, {}),
    ]
    lines = node_table(nodes).splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "ALIVE", "LOAD", "JOBS", "LABELS"]
    assert lines[1].split() == ["a", "10.0.0.1:50051", "yes", "3/2", "cores", "7", "zone=east"]
    assert lines[2].split() == ["c", "10.0.0.3:50051", "NO", "-", "-", "-"]


def test_info_has_a_fleet_line_that_says_when_etcd_is_unreachable() -> None:
    fleet = FleetInfo("b", "10.0.0.2:50051", {"zone": "west"}, False, "no etcd endpoint answers", 3, 3, 5)
    info = ServerInfo(
        version="x",
        cgroup_driver="v2",
        cgroup_reason="",
        limits_supported=True,
        namespaces=True,
        default_limits=Limits(),
        max_limits=Limits(),
        identity="rita",
        role="reader",
        fleet=fleet,
    )
    line = server_info_details(info, "10.0.0.2:50051").splitlines()[-1]
    assert line.startswith("Fleet:")
    assert "node b at 10.0.0.2:50051 (labels zone=west); etcd UNREACHABLE (no etcd endpoint answers)" in line
    assert "placement is refused" in line
