"""`jw-server`: run the jobworker gRPC server; every flag can also be set as `JW_SERVER_*`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509

import jobworker
import jobworker.server
import pki
from jobworker import engine, units
from jobworker.server.app import ServerStartError, run_server
from jobworker.server.config import (
    DEFAULT_CONNECTION_AGE_GRACE_SECONDS,
    DEFAULT_LEASE_TTL_SECONDS,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    FleetConfig,
    ServerConfig,
    default,
)
from jobworker.server.grpclog import GrpcLogCapture
from jobworker.server.jsonlog import configure_logging, fields
from jobworker.server.metrics_http import MetricsAddress, MetricsAddressError

_log = logging.getLogger("jobworker.server")


class ByteSize(click.ParamType[int, Any]):
    """A byte count such as 4096, 64M, 1.5GiB (the grammar of jobworker.units: binary units)."""

    name = "size"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self._minimum = 0 if allow_zero else 1

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = units.parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size < self._minimum:
            self.fail("size must be at least 1 byte", param, ctx)
        return size


_EXISTING_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
_POSITIVE = click.IntRange(min=1)


_F = TypeVar("_F", bound=Callable[..., Any])


def _option(name: str, env: str, **kwargs: Any) -> Callable[[_F], _F]:
    return click.option(name, envvar=f"JW_SERVER_{env}", show_envvar=True, **kwargs)


class Duration(click.ParamType[float, Any]):
    """Seconds, typed as jobworker.units reads durations: 10, 2.5, 500ms, 1m30s."""

    name = "duration"

    def __init__(self, *, minimum: float = 0.0) -> None:
        self._minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            seconds = units.parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds < self._minimum:
            self.fail(f"{value!r} is shorter than {self._minimum:g}s", param, ctx)
        return seconds


class LimitValue(click.ParamType[Any, Any]):
    """A value of one limit kind, typed as jobworker.units reads it (sizes, cores, counts, CPU lists)."""

    def __init__(self, kind: engine.LimitKind) -> None:
        self._kind = kind
        self.name = kind.value.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            parsed = self._kind.value.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if isinstance(parsed, int | float) and parsed <= 0:
            # The engine checks the kernel's range at start-up; a non-positive value is a typo.
            self.fail(f"{self._kind.option} must be positive, got {value!r}", param, ctx)
        return parsed


def _limit_options(func: _F) -> _F:
    """--default-<kind> and --max-<kind> for every limit kind."""
    for kind in reversed(engine.LIMIT_KINDS):
        env = kind.option.upper().replace("-", "_")
        ceiling = kind.ceiling_text or _limit_text(kind, kind.ceiling())
        default = kind.default_text or _limit_text(kind, kind.default())
        func = _option(
            f"--max-{kind.option}",
            f"MAX_{env}",
            type=LimitValue(kind),
            help=f"Largest {kind.help} a job may ask for [default: {ceiling}].",
            show_default=False,
        )(func)
        func = _option(
            f"--default-{kind.option}",
            f"DEFAULT_{env}",
            type=LimitValue(kind),
            help=f"Job {kind.help} when the request sets none [default: {default}].",
            show_default=False,
        )(func)
    return func


def _limit_text(kind: engine.LimitKind, value: Any) -> str:
    """The value as a user would type it (1G, 2), or none."""
    return "none" if value is None else kind.value.text(value)


def _limits(options: dict[str, Any], prefix: str) -> engine.Limits:
    """The limits set by --<prefix>-<kind> options."""
    return engine.Limits(
        **{kind.field: options[f"{prefix}_{kind.option.replace('-', '_')}"] for kind in engine.LIMIT_KINDS}
    )


def _uid_range(text: str) -> range:
    first, sep, last = text.partition("-")
    if not sep or not first.isdigit() or not last.isdigit() or int(last) < int(first):
        raise ValueError(f"job uid range {text!r} is not FIRST-LAST")
    return range(int(first), int(last) + 1)


def _raise_open_file_limit() -> None:
    """Lift the soft open-file limit to the hard one, as a service manager's LimitNOFILE= would.

    Every running job holds four descriptors in the server, so the common soft limit of 1024 would cap
    the server at about 250 jobs whatever --max-jobs says.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _labels(items: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"node label {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def _fleet_config(options: dict[str, Any]) -> FleetConfig | None:
    """The fleet settings, None without --etcd; a node's name defaults to its certificate's CN."""
    if not options["etcd"]:
        for name in ("node_name", "node_address", "node_label"):
            if options[name]:
                raise ValueError(f"--{name.replace('_', '-')} needs --etcd")
        return None
    endpoints = tuple(e.strip() for e in options["etcd"].split(",") if e.strip())
    name = options["node_name"]
    if name is None:
        cert = x509.load_pem_x509_certificate(Path(options["cert"]).read_bytes())
        name = pki.identity_of(cert)
    if not pki.valid_name(name):
        raise ValueError(f"node name {name!r} is not valid: 1-64 of A-Z a-z 0-9 . _ -")
    host = options["listen"].rpartition(":")[0].strip("[]")
    if not options["node_address"] and host in ("", "0.0.0.0", "::"):
        # Other nodes cannot dial a wildcard: they need the address this node is reached at.
        raise ValueError(f"--listen {options['listen']} is a wildcard: give --node-address HOST:PORT")
    return FleetConfig(
        etcd=endpoints,
        node_name=name,
        address=options["node_address"] or "",
        labels=_labels(options["node_label"]),
        lease_ttl_seconds=options["lease_ttl"],
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@_option("--listen", "LISTEN", default=DEFAULT_LISTEN, help="host:port to listen on (port 0: any).")
@_option("--cert", "CERT", type=_EXISTING_FILE, required=True, help="Server certificate (PEM).")
@_option("--key", "KEY", type=_EXISTING_FILE, required=True, help="Server private key (PEM).")
@_option("--ca", "CA", type=_EXISTING_FILE, required=True, help="CA bundle for client certs.")
@_option(
    "--revoked",
    "REVOKED",
    type=_EXISTING_FILE,
    default=None,
    help="CRL of revoked client certificates (jw-pki revoke); re-read whenever it changes.",
)
@_option(
    "--max-connection-age",
    "MAX_CONNECTION_AGE",
    type=Duration(minimum=1),
    default=DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    help="Duration (1h, or seconds) after which a connection is closed (the client reconnects with a new "
    "handshake).",
)
@_option(
    "--connection-age-grace",
    "CONNECTION_AGE_GRACE",
    type=Duration(),
    default=DEFAULT_CONNECTION_AGE_GRACE_SECONDS,
    help="Seconds calls in flight may still run on a connection past its maximum age.",
)
@_option(
    "--state-dir",
    "STATE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/jobworker"),
    help="Where job output and records are kept.",
)
@_option(
    "--grace",
    "GRACE",
    type=Duration(),
    default=default("grace_seconds"),
    help="Seconds between SIGTERM and SIGKILL when stopping jobs.",
)
@_option(
    "--stop-jobs-on-shutdown",
    "STOP_JOBS_ON_SHUTDOWN",
    is_flag=True,
    default=False,
    help="On SIGTERM stop every job (SIGTERM, SIGKILL after --grace). By default jobs keep running and "
    "the next jw-server on this state dir reattaches them.",
)
@_option("--max-jobs", "MAX_JOBS", type=_POSITIVE, default=default("max_jobs"), help="Running jobs allowed.")
@_option(
    "--retain-jobs",
    "RETAIN_JOBS",
    type=click.IntRange(min=0),
    default=default("retain_jobs"),
    help="Ended jobs kept with their status and output; the oldest beyond this are deleted.",
)
@_option(
    "--output-cap",
    "OUTPUT_CAP",
    type=ByteSize(),
    default=default("output_cap_bytes"),
    show_default=units.size_text(default("output_cap_bytes")),
    help="Output kept per job.",
)
@_option(
    "--max-jobs-per-owner",
    "MAX_JOBS_PER_OWNER",
    type=click.IntRange(min=0),
    default=default("max_jobs_per_owner"),
    help="Running jobs one owner (certificate CN) may have; 0: no quota.",
)
@_option(
    "--max-output-per-owner",
    "MAX_OUTPUT_PER_OWNER",
    type=ByteSize(allow_zero=True),
    default=default("max_output_per_owner_bytes"),
    show_default=units.size_text(default("max_output_per_owner_bytes")),
    help="Output one owner's jobs may store; at the quota a Start deletes the owner's oldest ended "
    "jobs first. 0: no quota.",
)
@_option(
    "--retain-jobs-per-owner",
    "RETAIN_JOBS_PER_OWNER",
    type=click.IntRange(min=0),
    default=default("retain_jobs_per_owner"),
    help="Ended jobs kept per owner (the newest); older ones are deleted with their output. "
    "0: no per-owner limit.",
)
@_limit_options
@_option(
    "--cgroups/--no-cgroups",
    "CGROUPS",
    default=True,
    help="Put jobs in cgroups (needed for limits and usage).",
)
@_option(
    "--cgroup-prefix",
    "CGROUP_PREFIX",
    default="jobworker",
    show_default=True,
    help="Name of this server's cgroup subtree. Stale job cgroups under it are removed at start-up, "
    "so servers sharing a host need distinct prefixes.",
)
@_option(
    "--cgroup-attach-warmup/--no-cgroup-attach-warmup",
    "CGROUP_ATTACH_WARMUP",
    default=True,
    show_default=True,
    help="For 2 s after each Start, keep the kernel's cgroup attach path warm (a thread of the server moves "
    "itself into its own cgroup every 10 ms), so a job joining its cgroup skips most of an RCU grace period "
    "(6-15 ms measured on cgroup v1). Costs about 1.6% of a core while active; a host whose cgroups are "
    "mounted with favordynmods does not need it.",
)
@_option(
    "--isolation",
    "ISOLATION",
    type=click.Choice(["strict", "none"]),
    default="strict",
    help="strict: every job runs in the sandbox (an unprivileged uid of its own, no capabilities, seccomp, "
    "a read-only view of the host with private /tmp and /job). none: jobs run with the server's privileges "
    "(trusted single-user hosts only; logged as a warning).",
)
@_option(
    "--job-user",
    "JOB_USER",
    help="Run every job as this host user (NAME, UID or UID:GID) instead of one uid per job.",
)
@_option(
    "--job-uids",
    "JOB_UIDS",
    default=f"{engine.DEFAULT_UID_RANGE.start}-{engine.DEFAULT_UID_RANGE.stop - 1}",
    help="Range of host uids allocated one per running job (no host user may own one of them).",
)
@_option(
    "--job-mount",
    "JOB_MOUNT",
    multiple=True,
    help="Expose a host path to every job: HOST:PATH[:ro|rw] (read-only unless :rw). Repeatable.",
)
@_option(
    "--job-mask",
    "JOB_MASK",
    multiple=True,
    help="Hide a host path from jobs (the state dir and the server's keys are always hidden). Repeatable.",
)
@_option(
    "--job-scratch-size",
    "JOB_SCRATCH_SIZE",
    type=ByteSize(),
    default="512M",
    help="Size of each job's private /tmp and /job (memory, charged to the job's memory limit).",
)
@_option(
    "--metrics-listen",
    "METRICS_LISTEN",
    default=None,
    metavar="HOST:PORT",
    help="HOST:PORT to serve Prometheus metrics on, at /metrics [default: off]. Plain HTTP without "
    "authentication: bind loopback (127.0.0.1:9464); other addresses need --metrics-allow-remote.",
    show_default=False,
)
@_option(
    "--metrics-allow-remote",
    "METRICS_ALLOW_REMOTE",
    is_flag=True,
    default=False,
    help="Allow a non-loopback --metrics-listen (e.g. 0.0.0.0 in a container whose published port stays on "
    "the host's loopback): anyone who reaches it reads the metrics.",
)
@_option(
    "--etcd",
    "ETCD",
    default=None,
    metavar="URL[,URL...]",
    help="Join a fleet coordinated by this etcd cluster (https://HOST:PORT, comma-separated). The server "
    "presents its --cert (a jw-pki issue-node certificate) to etcd and to the other nodes.",
)
@_option(
    "--node-name",
    "NODE_NAME",
    default=None,
    help="This node's name in the fleet (default: the CN of --cert).",
)
@_option(
    "--node-address",
    "NODE_ADDRESS",
    default=None,
    help="host:port other nodes dial to reach this one [default: --listen]; must match a SAN of --cert.",
)
@_option(
    "--node-label",
    "NODE_LABEL",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label of this node, for jw start --node-label. Repeatable.",
)
@_option(
    "--lease-ttl",
    "LEASE_TTL",
    type=click.IntRange(min=2, max=300),
    default=DEFAULT_LEASE_TTL_SECONDS,
    help="Seconds after its last keepalive at which a node is taken for unreachable.",
)
@_option(
    "--log-level",
    "LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    help="Lowest level logged.",
)
@click.version_option(jobworker.__version__, prog_name="jw-server")
@click.pass_context
def main(ctx: click.Context, /, **options: Any) -> None:
    """Run the jobworker gRPC server (mTLS 1.3 only). SIGHUP reloads certificates; SIGTERM stops."""
    stream = None
    if jobworker.server.HANDSHAKES_TRACED:
        # grpc's C core logs to fd 2 in plain text; read it back, so every line is JSON and failed
        # handshakes are audited. Only where the tracer took effect (not when grpc came first).
        capture = GrpcLogCapture(traced=True)
        ctx.call_on_close(capture.close)
        stream = capture.stream
    configure_logging(options["log_level"].upper(), stream)

    try:
        uids = _uid_range(options["job_uids"])
        mounts = tuple(engine.JobMount.parse(m) for m in options["job_mount"])
        fleet = _fleet_config(options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if options["metrics_listen"] is not None:
        try:
            MetricsAddress.parse(options["metrics_listen"]).check_exposure(options["metrics_allow_remote"])
        except MetricsAddressError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics-listen") from None
    config = ServerConfig(
        listen=options["listen"],
        cert=options["cert"],
        key=options["key"],
        ca=options["ca"],
        revoked=options["revoked"],
        max_connection_age_seconds=options["max_connection_age"],
        connection_age_grace_seconds=options["connection_age_grace"],
        state_dir=options["state_dir"],
        grace_seconds=options["grace"],
        stop_jobs_on_shutdown=options["stop_jobs_on_shutdown"],
        max_jobs=options["max_jobs"],
        retain_jobs=options["retain_jobs"],
        output_cap_bytes=options["output_cap"],
        max_jobs_per_owner=options["max_jobs_per_owner"] or None,
        max_output_per_owner_bytes=options["max_output_per_owner"] or None,
        retain_jobs_per_owner=options["retain_jobs_per_owner"] or None,
        default_limits=_limits(options, "default"),
        max_limits=_limits(options, "max"),
        cgroups=options["cgroups"],
        cgroup_prefix=options["cgroup_prefix"],
        cgroup_attach_warmup=options["cgroup_attach_warmup"],
        isolation=engine.Isolation(options["isolation"]),
        job_user=options["job_user"],
        job_uids=uids,
        job_mounts=mounts,
        job_masks=tuple(options["job_mask"]),
        job_scratch_bytes=options["job_scratch_size"],
        metrics_listen=options["metrics_listen"],
        metrics_allow_remote=options["metrics_allow_remote"],
        fleet=fleet,
    )
    _raise_open_file_limit()
    try:
        asyncio.run(run_server(config))
    except ServerStartError as exc:
        _log.error("cannot start", extra=fields(error=str(exc)))
        ctx.exit(1)
