"""Server settings: what `jw-server` parses from flags and `JW_SERVER_*` variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobworker import engine
from jobworker.server.tls import CredentialFiles

DEFAULT_LISTEN = "127.0.0.1:50051"
# Requests above this are refused by the call wrapper (audited, with the caller's identity) ...
MAX_RECEIVE_MESSAGE_BYTES = 1 << 20
# ... and above this by grpc itself, before any Python code sees the call (so without an audit line).
GRPC_RECEIVE_LIMIT_BYTES = 4 * MAX_RECEIVE_MESSAGE_BYTES
# A connection outlives its certificate's revocation or rotation by at most this much (plus the grace).
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 3600.0
DEFAULT_CONNECTION_AGE_GRACE_SECONDS = 300.0


# A fleet node's lease: others see it gone this long after its last keepalive.
DEFAULT_LEASE_TTL_SECONDS = 5


@dataclass(frozen=True)
class FleetConfig:
    """How a server joins a fleet (jw-server --etcd)."""

    etcd: tuple[str, ...]
    node_name: str
    # The address other nodes and clients dial; empty: the address the server listens on.
    address: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    lease_ttl_seconds: int = DEFAULT_LEASE_TTL_SECONDS


# The engine's own defaults: the one place each is defined (jw-server's options show these too).
_ENGINE: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(engine.EngineConfig)}


@dataclass(frozen=True)
class ServerConfig:
    """Everything needed to run one server."""

    listen: str
    cert: Path
    key: Path
    ca: Path
    state_dir: Path
    grace_seconds: float = _ENGINE["default_grace_seconds"]
    # SIGTERM stops every job (the first release's behaviour) instead of leaving them to the next server.
    stop_jobs_on_shutdown: bool = False
    max_jobs: int = _ENGINE["max_running_jobs"]
    # Ended jobs kept with their output; the oldest beyond this are deleted.
    retain_jobs: int = _ENGINE["retained_jobs"]
    output_cap_bytes: int = _ENGINE["output_cap_bytes"]
    # Per-owner shares (None: no quota); see EngineConfig for what each one does.
    max_jobs_per_owner: int | None = _ENGINE["max_running_jobs_per_owner"]
    max_output_per_owner_bytes: int | None = _ENGINE["max_output_bytes_per_owner"]
    retain_jobs_per_owner: int | None = _ENGINE["retained_jobs_per_owner"]
    # Only the limits set here; the others keep the engine's defaults and ceilings.
    default_limits: engine.Limits = field(default_factory=engine.Limits)
    max_limits: engine.Limits = field(default_factory=engine.Limits)
    # False runs jobs without cgroups (and refuses limits), for hosts where cgroups misbehave.
    cgroups: bool = True
    # Names this server's cgroup subtree; servers sharing a host need distinct prefixes.
    cgroup_prefix: str = _ENGINE["cgroup_prefix"]
    # Keep the cgroup attach path warm after each Start (engine/cgroups/_warm.py).
    cgroup_attach_warmup: bool = _ENGINE["cgroup_attach_warmup"]
    isolation: engine.Isolation = _ENGINE["isolation"]
    job_user: str | None = None
    job_uids: range = engine.DEFAULT_UID_RANGE
    job_mounts: tuple[engine.JobMount, ...] = ()
    job_masks: tuple[str, ...] = ()
    job_scratch_bytes: int = engine.DEFAULT_SCRATCH_BYTES
    # A CRL of revoked client certificates (jw-pki revoke), re-read whenever it changes.
    revoked: Path | None = None
    # grpc closes connections this old (GOAWAY); calls in flight get the grace to finish.
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    connection_age_grace_seconds: float = DEFAULT_CONNECTION_AGE_GRACE_SECONDS
    # HOST:PORT of the Prometheus metrics listener (plain HTTP); None: no listener.
    metrics_listen: str | None = None
    # A non-loopback metrics_listen is refused unless this says anyone who reaches it may read it.
    metrics_allow_remote: bool = False
    # Set when the server is a node of a fleet.
    fleet: FleetConfig | None = None

    @property
    def credential_files(self) -> CredentialFiles:
        """The certificate, key and client CA paths."""
        return CredentialFiles(cert=self.cert, key=self.key, ca=self.ca)

    def secrets(self) -> tuple[str, ...]:
        """Paths jobs must never see: the server's credentials and every key beside them (the CA's key
        usually sits next to its certificate)."""
        paths = [self.cert, self.key, self.ca]
        for directory in {self.key.parent, self.ca.parent, self.cert.parent}:
            paths += sorted(directory.glob("*.key"))
        return tuple(str(p) for p in paths)

    def _default_limits(self) -> engine.Limits:
        """The engine's defaults with the ones set here; a built-in default above a lowered ceiling follows
        the ceiling (an operator who sets --max-pids 100 means jobs get at most 100)."""
        ceilings = _overlay(engine.default_max_limits(), self.max_limits)
        values: dict[str, object] = {}
        for f in dataclasses.fields(engine.Limits):
            value = getattr(self.default_limits, f.name)
            if value is None:
                value = getattr(engine.default_job_limits(), f.name)
                ceiling = getattr(ceilings, f.name)
                # Only numbers follow a ceiling down; no built-in default is a CPU list.
                if isinstance(value, int | float) and isinstance(ceiling, int | float) and value > ceiling:
                    value = ceiling
            values[f.name] = value
        return engine.Limits(**values)  # type: ignore[arg-type]

    def engine_config(self) -> engine.EngineConfig:
        """The engine settings these server settings imply."""
        return engine.EngineConfig(
            state_dir=self.state_dir,
            output_cap_bytes=self.output_cap_bytes,
            max_running_jobs=self.max_jobs,
            retained_jobs=self.retain_jobs,
            max_running_jobs_per_owner=self.max_jobs_per_owner,
            max_output_bytes_per_owner=self.max_output_per_owner_bytes,
            retained_jobs_per_owner=self.retain_jobs_per_owner,
            default_grace_seconds=self.grace_seconds,
            default_limits=self._default_limits(),
            max_limits=_overlay(engine.default_max_limits(), self.max_limits),
            cgroups=self.cgroups,
            cgroup_prefix=self.cgroup_prefix,
            cgroup_attach_warmup=self.cgroup_attach_warmup,
            isolation=self.isolation,
            sandbox=engine.SandboxConfig(
                uid_range=self.job_uids,
                job_user=self.job_user,
                mounts=self.job_mounts,
                masked=(*self.secrets(), *self.job_masks),
                scratch_bytes=self.job_scratch_bytes,
            ),
        )


def _overlay(base: engine.Limits, overrides: engine.Limits) -> engine.Limits:
    """base with every limit that overrides sets."""
    values = {f.name: getattr(overrides, f.name) for f in dataclasses.fields(overrides)}
    return dataclasses.replace(base, **{k: v for k, v in values.items() if v is not None})


def default(name: str) -> Any:
    """The default of one ServerConfig field (what jw-server's option of that name falls back to)."""
    return {f.name: f.default for f in dataclasses.fields(ServerConfig)}[name]
