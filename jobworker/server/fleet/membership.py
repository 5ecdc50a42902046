"""Fleet membership in etcd: this node's lease and load report, the view of every node, job -> node records.

Keys (JSON values) under `/jobworker/v1/`:

    nodes/<name>    live registration, attached to the node's lease (TTL default 5 s, renewed every TTL/3):
                    address, labels, capacity and load. It vanishes when the lease expires.
    members/<name>  the node as it last registered, without a lease: a node whose `nodes/` key is gone is
                    known but unreachable (its jobs answer UNAVAILABLE), not forgotten.
    jobs/<id>       which node holds a job, with what Start knew of it (owner, command, args, start time),
                    written by the owning node before Start answers; deleted with the job.

One task renews the lease, rewrites the report when the load changed and re-reads the view; a node whose lease
expired while etcd was out of reach registers again under a new lease once etcd answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from jobworker.server.config import DEFAULT_LEASE_TTL_SECONDS
from jobworker.server.fleet.etcd import EtcdClient, EtcdError
from jobworker.server.jsonlog import fields

_log = logging.getLogger("jobworker.fleet")

PREFIX = "/jobworker/v1/"
NODES = PREFIX + "nodes/"
MEMBERS = PREFIX + "members/"
JOBS = PREFIX + "jobs/"
# Job -> node records kept in memory.
_CACHED_RECORDS = 100_000
# How often this node drops the records of its jobs that retention deleted.
_SWEEP_SECONDS = 60.0
# How often the view of the fleet is re-read: a node whose lease expired is seen gone this soon after.
_REFRESH_SECONDS = 0.5


class NameTakenError(EtcdError):
    """Another live node is registered under this node's name."""


@dataclass(frozen=True)
class Load:
    """What a node reports of itself besides its address and labels."""

    cores: float
    memory_bytes: int
    running_jobs: int
    max_jobs: int
    jobs: int
    max_cpus: float | None = None
    max_memory_bytes: int | None = None


@dataclass(frozen=True)
class NodeInfo:
    """One node as the fleet sees it."""

    name: str
    address: str
    alive: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    load: Load | None = None
    # etcd's revision of the report: a new one means the node re-counted its jobs.
    revision: int = 0


@dataclass(frozen=True)
class JobRecord:
    """Where a job lives and what its Start said, kept in etcd for every node to find it."""

    node: str
    owner: str
    command: str
    args: tuple[str, ...]
    started_at: float
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _load(value: Mapping[str, Any]) -> Load | None:
    try:
        return Load(**value["load"])
    except (KeyError, TypeError):
        return None


def _labels(value: Mapping[str, Any]) -> dict[str, str]:
    labels = value.get("labels")
    if not isinstance(labels, dict):
        return {}
    return {str(k): str(v) for k, v in labels.items()}


class Membership:
    """This node's place in the fleet, kept alive in etcd, and its view of the others."""

    def __init__(
        self,
        etcd: EtcdClient,
        *,
        name: str,
        address: str,
        labels: Mapping[str, str],
        load: Callable[[], Load],
        holds: Callable[[str], bool] = lambda job_id: True,
        ttl_seconds: int = DEFAULT_LEASE_TTL_SECONDS,
    ) -> None:
        self._etcd = etcd
        self.name = name
        self.address = address
        self.labels = dict(labels)
        self._report = load
        self._holds = holds
        self.ttl_seconds = ttl_seconds
        self._lease = 0
        self._reported: Load | None = None
        self._nodes: dict[str, NodeInfo] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._unrecorded: dict[str, JobRecord] = {}
        self._error = ""
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._dirty = False

    # -- state ---------------------------------------------------------------------------------------

    @property
    def etcd_error(self) -> str:
        """Why etcd is out of reach, empty while it answers."""
        return self._error

    @property
    def etcd_reachable(self) -> bool:
        """Whether etcd answered this node's last request."""
        return not self._error

    def nodes(self) -> list[NodeInfo]:
        """Every node known to the fleet (this one first), as of the last refresh."""
        return sorted(self._nodes.values(), key=lambda n: (n.name != self.name, n.name))

    def node(self, name: str) -> NodeInfo | None:
        """One node by name, None when the fleet never saw it."""
        return self._nodes.get(name)

    def _failed(self, exc: Exception) -> None:
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if message != self._error:
            _log.warning("etcd unreachable", extra=fields(error=message))
        self._error = message

    def _answered(self) -> None:
        if self._error:
            _log.info("etcd reachable again")
        self._error = ""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register and keep the registration alive; raises NameTakenError.

        An etcd out of reach is no reason not to serve: the node registers as soon as etcd answers.
        """
        try:
            await self._register()
            await self._refresh()
            await self._sweep()
        except NameTakenError:
            raise
        except EtcdError as exc:
            self._failed(exc)
        self._task = asyncio.create_task(self._run(), name="fleet-membership")

    async def stop(self) -> None:
        """Leave the fleet now: revoke the lease, so the others see this node go at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease:
            with contextlib.suppress(EtcdError):
                await self._etcd.revoke(self._lease)
            self._lease = 0

    def _registration(self, load: Load) -> bytes:
        return json.dumps(
            {"address": self.address, "labels": self.labels, "load": asdict(load), "at": time.time()}
        ).encode()

    async def _register(self) -> None:
        existing = await self._etcd.get(NODES + self.name)
        if existing is not None:
            value = _decode(existing.value) or {}
            if value.get("address") != self.address:
                raise NameTakenError(
                    f"node name {self.name} is already registered by a live node at {value.get('address')}"
                )
        self._lease = await self._etcd.grant(self.ttl_seconds)
        load = self._report()
        await self._etcd.put(NODES + self.name, self._registration(load), lease=self._lease)
        await self._etcd.put(
            MEMBERS + self.name, json.dumps({"address": self.address, "labels": self.labels}).encode()
        )
        self._reported = load
        _log.info(
            "joined the fleet",
            extra=fields(
                node=self.name, address=self.address, labels=self.labels, ttl_seconds=self.ttl_seconds
            ),
        )

    async def _run(self) -> None:
        keepalive_every = max(self.ttl_seconds / 3, 0.2)
        renewed = time.monotonic()
        swept = time.monotonic()
        while True:
            # A Start wakes the loop early so the report (and so placement by others) follows quickly.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), _REFRESH_SECONDS)
            self._changed.clear()
            try:
                renew = not self._lease or time.monotonic() - renewed >= keepalive_every
                await self._tick(renew)
                if renew:
                    renewed = time.monotonic()
                if time.monotonic() - swept >= _SWEEP_SECONDS:
                    swept = time.monotonic()
                    await self._sweep()
            except EtcdError as exc:
                self._failed(exc)
            except Exception:
                _log.exception("fleet membership update failed")

    async def _tick(self, renew: bool) -> None:
        if renew and (not self._lease or await self._etcd.keepalive(self._lease) <= 0):
            if self._lease:
                # The lease ran out while etcd was away: this node's keys went with it.
                _log.warning("fleet lease expired: registering again", extra=fields(node=self.name))
            self._lease = 0
            await self._register()
        if renew or self._dirty:
            # Counting jobs is a walk of the job table: at keepalives, and after this node's own Starts.
            self._dirty = False
            load = self._report()
            if load != self._reported:
                await self._etcd.put(NODES + self.name, self._registration(load), lease=self._lease)
                self._reported = load
        for job_id, record in list(self._unrecorded.items()):
            await self._write_record(job_id, record)
            self._unrecorded.pop(job_id, None)
        await self._refresh()

    async def _sweep(self) -> None:
        # Retention deletes ended jobs inside the engine, which knows nothing of etcd: drop their records,
        # so no node keeps showing them (as unreachable) while this node is down.
        for job_id, record in (await self.job_records()).items():
            if record.node == self.name and job_id not in self._unrecorded and not self._holds(job_id):
                await self._etcd.delete(JOBS + job_id)
                self._jobs.pop(job_id, None)

    def poke(self) -> None:
        """Report the load soon (after a Start or an end)."""
        self._dirty = True
        self._changed.set()

    async def _refresh(self) -> None:
        live = {kv.key[len(NODES) :]: kv for kv in await self._etcd.get_prefix(NODES)}
        known = {kv.key[len(MEMBERS) :]: kv for kv in await self._etcd.get_prefix(MEMBERS)}
        nodes: dict[str, NodeInfo] = {}
        for name in {*live, *known}:
            kv = live.get(name) or known[name]
            value = _decode(kv.value) or {}
            nodes[name] = NodeInfo(
                name=name,
                address=str(value.get("address", "")),
                alive=name in live,
                labels=_labels(value),
                load=_load(value) if name in live else None,
                revision=kv.mod_revision,
            )
        self._nodes = nodes
        self._answered()

    async def refresh(self) -> None:
        """Re-read the fleet now; raises EtcdError (and remembers why) when etcd cannot be reached."""
        try:
            await self._refresh()
        except EtcdError as exc:
            self._failed(exc)
            raise

    # -- job records ---------------------------------------------------------------------------------

    async def _write_record(self, job_id: str, record: JobRecord) -> None:
        await self._etcd.put(JOBS + job_id, json.dumps(asdict(record)).encode())
        self._cache(job_id, record)

    async def record_job(self, job_id: str, record: JobRecord) -> None:
        """Say in etcd that this node holds the job; retried by the loop when etcd is away."""
        self._cache(job_id, record)
        try:
            await self._write_record(job_id, record)
        except EtcdError as exc:
            self._failed(exc)
            self._unrecorded[job_id] = record
        self.poke()

    def remember_job(self, job_id: str, record: JobRecord) -> None:
        """Keep another node's job in the cache (its node wrote the record)."""
        self._cache(job_id, record)

    def _cache(self, job_id: str, record: JobRecord) -> None:
        self._jobs[job_id] = record
        # Bounded: the oldest entries go first (dicts keep insertion order); a miss is one etcd read.
        while len(self._jobs) > _CACHED_RECORDS:
            self._jobs.pop(next(iter(self._jobs)))

    async def forget_job(self, job_id: str) -> None:
        """Remove a deleted job's record (best effort: a stale record only ever leads to NOT_FOUND)."""
        self._jobs.pop(job_id, None)
        self._unrecorded.pop(job_id, None)
        try:
            await self._etcd.delete(JOBS + job_id)
        except EtcdError as exc:
            self._failed(exc)
        self.poke()

    async def lookup_job(self, job_id: str) -> JobRecord | None:
        """The node holding a job; None when no node recorded it. Raises EtcdError when etcd is away."""
        cached = self._jobs.get(job_id)
        if cached is not None:
            return cached
        try:
            kv = await self._etcd.get(JOBS + job_id)
        except EtcdError as exc:
            self._failed(exc)
            raise
        if kv is None:
            return None
        record = _job_record(kv.value)
        if record is not None:
            # Records never move: a job stays on the node that started it.
            self._cache(job_id, record)
        return record

    async def job_records(self) -> dict[str, JobRecord]:
        """Every job record of the fleet (for jobs of unreachable nodes). Raises EtcdError."""
        try:
            kvs = await self._etcd.get_prefix(JOBS)
        except EtcdError as exc:
            self._failed(exc)
            raise
        records = {}
        for kv in kvs:
            record = _job_record(kv.value)
            if record is not None:
                records[kv.key[len(JOBS) :]] = record
        return records


def _job_record(raw: bytes) -> JobRecord | None:
    value = _decode(raw)
    if value is None:
        return None
    try:
        return JobRecord(
            node=str(value["node"]),
            owner=str(value["owner"]),
            command=str(value["command"]),
            args=tuple(str(a) for a in value["args"]),
            started_at=float(value["started_at"]),
            name=str(value.get("name", "")),
            labels=_labels(value),
        )
    except (KeyError, TypeError, ValueError):
        return None
