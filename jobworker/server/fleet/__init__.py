"""A fleet of jw-servers coordinated through etcd: membership, placement, forwarding (`jw-server --etcd`).

`Fleet` assembles one node: an etcd client with the node's certificate, its membership (lease, load report,
view of the others, job records), the channels to its peers, and the servicer that routes every call. A
server started without --etcd never imports any of it beyond this module.
"""

from __future__ import annotations

import os

import grpc

from jobworker import engine
from jobworker.server.config import FleetConfig
from jobworker.server.fleet.etcd import EtcdClient, EtcdError
from jobworker.server.fleet.forward import Peers
from jobworker.server.fleet.membership import Load, Membership
from jobworker.server.fleet.service import FleetService
from jobworker.server.registration import rpc_handler
from jobworker.server.service import JobWorkerService
from jobworker.server.tls import CredentialFiles

__all__ = ["EtcdError", "Fleet", "FleetConfig"]


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _load_of(manager: engine.JobManager) -> Load:
    config = manager.config
    jobs = manager.list()
    return Load(
        cores=float(os.cpu_count() or 1),
        memory_bytes=_host_memory(),
        running_jobs=sum(1 for j in jobs if j.state is engine.JobState.RUNNING),
        max_jobs=config.max_running_jobs,
        jobs=len(jobs),
        max_cpus=config.max_limits.cpus,
        max_memory_bytes=config.max_limits.memory_bytes,
    )


def _holds(manager: engine.JobManager, job_id: str) -> bool:
    try:
        manager.status(job_id)
    except engine.JobNotFoundError:
        return False
    return True


class Fleet:
    """One node's fleet machinery, started after the server is listening and closed before it stops."""

    def __init__(
        self, config: FleetConfig, files: CredentialFiles, manager: engine.JobManager, listen_address: str
    ) -> None:
        self.etcd = EtcdClient(
            config.etcd, ca=files.ca.read_bytes(), cert=files.cert.read_bytes(), key=files.key.read_bytes()
        )
        self.membership = Membership(
            self.etcd,
            name=config.node_name,
            address=config.address or listen_address,
            labels=config.labels,
            load=lambda: _load_of(manager),
            holds=lambda job_id: _holds(manager, job_id),
            ttl_seconds=config.lease_ttl_seconds,
        )
        self.peers = Peers(cert=files.cert, key=files.key, ca=files.ca)
        self._manager = manager

    def handler(self, local: JobWorkerService) -> grpc.GenericRpcHandler:
        """The JobWorker service of this node, wrapping the single-host servicer."""
        return rpc_handler(FleetService(local, self._manager, self.membership, self.peers))

    async def start(self) -> None:
        """Join the fleet (raises EtcdError when the name is taken or etcd is unreachable)."""
        await self.membership.start()

    async def close(self) -> None:
        """Leave the fleet and close every connection."""
        await self.membership.stop()
        await self.peers.close()
        await self.etcd.close()
