"""Where a Start runs: the live nodes that satisfy its constraints and fit it, then the least loaded.

Load is jobs running per core as each node last reported it, plus what this node placed there since that
report: reports come every TTL/3, and a burst of Starts must not all land on the node that looked idlest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from jobworker import units
from jobworker.server.errors import ServiceError
from jobworker.server.fleet.membership import NodeInfo


@dataclass(frozen=True)
class Request:
    """What placement needs of a Start: its constraints and the resources it asks for."""

    node: str = ""
    labels: Mapping[str, str] | None = None
    memory_bytes: int | None = None
    cpus: float | None = None


def _labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _fits(node: NodeInfo, request: Request, placed: int) -> bool:
    load = node.load
    if load is None:
        return False
    if load.running_jobs + placed >= load.max_jobs:
        return False
    memory, ceiling = request.memory_bytes, load.max_memory_bytes
    if memory is not None and ceiling is not None and memory > ceiling:
        return False
    return request.cpus is None or load.max_cpus is None or request.cpus <= load.max_cpus


class Placer:
    """Chooses a node for each Start, remembering its own recent placements."""

    def __init__(self) -> None:
        # node -> (report revision, Starts placed there since that report)
        self._placed: dict[str, tuple[int, int]] = {}

    def _pending(self, node: NodeInfo) -> int:
        revision, count = self._placed.get(node.name, (node.revision, 0))
        return count if revision == node.revision else 0

    def choose(self, nodes: Sequence[NodeInfo], request: Request) -> NodeInfo:
        """The node to run on; raises ServiceError with the status a client should see."""
        candidates = [n for n in nodes if n.alive]
        if request.node:
            named = [n for n in nodes if n.name == request.node]
            if not named:
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"no node named {request.node} in the fleet"
                )
            if not named[0].alive:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"node {request.node} is unreachable")
            candidates = named
        if request.labels:
            wanted = dict(request.labels)
            candidates = [n for n in candidates if all(n.labels.get(k) == v for k, v in wanted.items())]
            if not candidates:
                raise ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no live node has the labels {_labels_text(wanted)}",
                )
        if not candidates:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no live node in the fleet")
        fitting = [n for n in candidates if _fits(n, request, self._pending(n))]
        if not fitting:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, _no_fit(request, len(candidates)))

        def score(node: NodeInfo) -> tuple[float, str]:
            load = node.load
            assert load is not None
            return ((load.running_jobs + self._pending(node)) / max(load.cores, 1.0), node.name)

        chosen = min(fitting, key=score)
        self._placed[chosen.name] = (chosen.revision, self._pending(chosen) + 1)
        return chosen


def _no_fit(request: Request, candidates: int) -> str:
    asked = []
    if request.memory_bytes is not None:
        asked.append(f"memory {units.size_text(request.memory_bytes)}")
    if request.cpus is not None:
        asked.append(f"cpus {request.cpus:g}")
    what = " and ".join(asked) or "one more job"
    return f"no live node fits {what} ({candidates} considered: at their job limit or ceilings)"
