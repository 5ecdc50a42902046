"""Fleet placement: constraints first, then fit, then the least loaded node, counting recent placements."""

from __future__ import annotations

import collections

import grpc
import pytest

from jobworker.server.errors import ServiceError
from jobworker.server.fleet.etcd import endpoint_target
from jobworker.server.fleet.membership import Load, NodeInfo
from jobworker.server.fleet.placement import Placer, Request

GiB = 1 << 30


def node(name: str, *, alive: bool = True, running: int = 0, cores: float = 2, **labels: str) -> NodeInfo:
    load = Load(
        cores=cores,
        memory_bytes=8 * GiB,
        running_jobs=running,
        max_jobs=10,
        jobs=running,
        max_cpus=cores,
        max_memory_bytes=4 * GiB,
    )
    return NodeInfo(name=name, address=f"{name}:1", alive=alive, labels=labels, load=load, revision=1)


def refused(nodes: list[NodeInfo], request: Request) -> ServiceError:
    with pytest.raises(ServiceError) as error:
        Placer().choose(nodes, request)
    return error.value


def test_a_burst_spreads_over_equal_nodes_before_their_next_report() -> None:
    placer = Placer()
    nodes = [node("a"), node("b"), node("c")]
    counts = collections.Counter(placer.choose(nodes, Request()).name for _ in range(30))
    assert counts == {"a": 10, "b": 10, "c": 10}


def test_least_loaded_per_core_wins() -> None:
    assert Placer().choose([node("a", running=3), node("b", running=1)], Request()).name == "b"
    # Four jobs on four cores is lighter than two on one.
    nodes = [node("a", running=4, cores=4), node("b", running=2, cores=1)]
    assert Placer().choose(nodes, Request()).name == "a"


def test_a_new_report_replaces_the_placements_counted_since_the_last() -> None:
    placer = Placer()
    a, b = node("a"), node("b")
    assert [placer.choose([a, b], Request()).name for _ in range(2)] == ["a", "b"]
    # a reports again (new revision) without the job it got yet: its count restarts from the report,
    # while b keeps the one placed since its last report.
    reported_a = NodeInfo("a", "a:1", True, {}, a.load, revision=2)
    assert placer.choose([reported_a, b], Request()).name == "a"


def test_constraints_and_fit() -> None:
    nodes = [node("a", zone="east"), node("b", zone="west"), node("c", alive=False, zone="west")]
    assert Placer().choose(nodes, Request(node="b")).name == "b"
    assert Placer().choose(nodes, Request(labels={"zone": "west"})).name == "b"
    assert Placer().choose(nodes, Request(memory_bytes=2 * GiB, cpus=1.5)).name in {"a", "b"}
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    cases = [
        (Request(node="z"), grpc.StatusCode.INVALID_ARGUMENT, "no node named z in the fleet"),
        (Request(node="c"), grpc.StatusCode.UNAVAILABLE, "node c is unreachable"),
        (
            Request(labels={"zone": "north"}),
            grpc.StatusCode.FAILED_PRECONDITION,
            "no live node has the labels",
        ),
        (Request(memory_bytes=5 * GiB), exhausted, "no live node fits memory 5"),
        (Request(cpus=3), exhausted, "no live node fits cpus 3"),
    ]
    for request, code, reason in cases:
        error = refused(nodes, request)
        assert error.code is code, request
        assert reason in error.message, (request, error.message)


def test_no_live_node_and_full_nodes() -> None:
    assert refused([node("a", alive=False)], Request()).code is grpc.StatusCode.UNAVAILABLE
    assert refused([node("a", running=10)], Request()).code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_etcd_endpoints() -> None:
    assert endpoint_target("https://10.0.0.1:2379") == "10.0.0.1:2379"
    assert endpoint_target("etcd1:2379/") == "etcd1:2379"
    for bad in ("https://etcd1", "etcd1:port", ":2379"):
        with pytest.raises(ValueError, match="is not"):
            endpoint_target(bad)
