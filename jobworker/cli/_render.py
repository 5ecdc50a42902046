"""What `jw` prints: humanised sizes, durations and tables, and the stable JSON form of a job."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from jobworker import units
from jobworker.client import LIMIT_FIELDS, JobInfo, JobState, Limits, Quota, ServerInfo

_COMMAND_WIDTH = 48
_SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(count: int) -> str:
    """`512B`, `1.5KiB`, `256MiB`: binary units, three significant digits at most."""
    if count < 1024:
        return f"{count}B"
    value = float(count)
    for unit in _SIZE_UNITS:
        value /= 1024
        if value < 1024 or unit == _SIZE_UNITS[-1]:
            text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
            return f"{text.removesuffix('.0')}{unit}"
    raise AssertionError("unreachable")


def format_duration(span: timedelta) -> str:
    """`350ms`, `4.2s`, `42s`, `3m12s`, `2h05m`, `3d04h`."""
    seconds = span.total_seconds()
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_ago(moment: datetime, now: datetime) -> str:
    """`just now`, `12s ago`, `3m ago`, `2h ago`, `4d ago`."""
    seconds = int((now - moment).total_seconds())
    if seconds < 1:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def signal_name(number: int) -> str:
    """`SIGKILL` for 9; `signal 64` for numbers without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def command_line(job: JobInfo) -> str:
    """The job's command as a shell would quote it."""
    return shlex.join([job.command, *job.args])


def outcome(job: JobInfo) -> str:
    """`0`, `3`, `SIGKILL` or `-` while running: the EXIT column."""
    if job.exit_code is not None:
        return str(job.exit_code)
    if job.signal is not None:
        return signal_name(job.signal)
    return "-"


def describe_state(job: JobInfo) -> str:
    """`running`, `exited (code 3)`, `stopped (SIGTERM)`, `oom_killed (SIGKILL)`."""
    if job.exit_code is not None:
        return f"{job.state.value} (code {job.exit_code})"
    if job.signal is not None and job.state is not JobState.RUNNING:
        return f"{job.state.value} ({signal_name(job.signal)})"
    return job.state.value


def _timestamp(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def limits_json(limits: Limits) -> dict[str, Any]:
    """Limits as JSON, unset ones as null."""
    return {limit.field: getattr(limits, limit.field) for limit in LIMIT_FIELDS}


def job_json(job: JobInfo) -> dict[str, Any]:
    """The stable JSON object of a job printed by `--json`."""
    return {
        "id": job.id,
        "owner": job.owner,
        "command": job.command,
        "args": list(job.args),
        "state": job.state.value,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "pid": job.pid,
        "started_at": _timestamp(job.started_at),
        "ended_at": _timestamp(job.ended_at),
        "limits": limits_json(job.limits),
        "usage": {
            "cpu_seconds": job.usage.cpu_seconds,
            "memory_peak_bytes": job.usage.memory_peak_bytes,
            "oom_kills": job.usage.oom_kills,
        },
        "stdout_bytes": job.stdout_bytes,
        "stderr_bytes": job.stderr_bytes,
        "output_truncated": job.output_truncated,
        "cwd": job.cwd,
        "truncation_reason": job.truncation_reason or None,
        "output_dropped_bytes": job.output_dropped_bytes,
        "name": job.name or None,
        "labels": dict(sorted(job.labels.items())),
        "stdin": job.stdin,
        "tty": job.tty,
    }


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def newest_first(jobs: Sequence[JobInfo]) -> list[JobInfo]:
    """Jobs ordered by start time, the most recent first (every listing uses this order)."""
    return sorted(jobs, key=lambda j: j.started_at or datetime.min.replace(tzinfo=UTC), reverse=True)


def job_table(jobs: Sequence[JobInfo], now: datetime) -> str:
    """The `jw list` table, in the order given (the caller sorts: newest_first)."""
    header = ("ID", "NAME", "OWNER", "STATE", "EXIT", "STARTED", "DURATION", "COMMAND")
    rows = [header]
    for job in jobs:
        duration = job.duration(now)
        rows.append(
            (
                job.id,
                job.name or "-",
                job.owner,
                job.state.value,
                outcome(job),
                format_ago(job.started_at, now) if job.started_at else "-",
                format_duration(duration) if duration is not None else "-",
                _truncate(command_line(job), _COMMAND_WIDTH),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _limits_text(limits: Limits, empty: str = "server defaults") -> str:
    parts = []
    for limit in LIMIT_FIELDS:
        value = getattr(limits, limit.field)
        if value is not None:
            shown = format_size(value) if limit.value is units.SIZE else limit.value.text(value)
            parts.append(f"{limit.label}={shown}{'/s' if limit.per_second else ''}")
    return " ".join(parts) or empty


def job_details(job: JobInfo, now: datetime) -> str:
    """The `jw status` block: one `Field: value` line per aspect of the job."""
    duration = job.duration(now)
    usage = []
    if job.usage.cpu_seconds is not None:
        usage.append(f"cpu {job.usage.cpu_seconds:.2f}s")
    if job.usage.memory_peak_bytes is not None:
        usage.append(f"peak memory {format_size(job.usage.memory_peak_bytes)}")
    if job.usage.oom_kills:
        usage.append(f"{job.usage.oom_kills} process(es) killed for memory (OOM)")
    output = f"stdout {format_size(job.stdout_bytes)}, stderr {format_size(job.stderr_bytes)}"
    if job.output_truncated:
        output += (
            f" (truncated: {job.truncation_reason})"
            if job.truncation_reason
            else " (truncated at the server's cap)"
        )
        if job.output_dropped_bytes:
            output += f", {format_size(job.output_dropped_bytes)} dropped"
    fields = [
        ("ID", job.id),
        ("Name", job.name or "-"),
        ("Labels", " ".join(f"{k}={v}" for k, v in sorted(job.labels.items())) or "-"),
        ("Owner", job.owner),
        ("Command", command_line(job)),
        ("State", describe_state(job)),
        ("PID", str(job.pid) if job.pid else "-"),
        (
            "Started",
            f"{_timestamp(job.started_at)} ({format_ago(job.started_at, now)})" if job.started_at else "-",
        ),
        ("Ended", _timestamp(job.ended_at) or "-"),
        ("Duration", format_duration(duration) if duration is not None else "-"),
        ("Limits", _limits_text(job.limits)),
        ("Usage", ", ".join(usage) or "not measured"),
        ("Output", output),
        ("Input", "terminal" if job.tty else "stdin open (jw attach)" if job.stdin else "none (/dev/null)"),
        ("Cwd", job.cwd or "-"),
    ]
    width = max(len(name) for name, _ in fields) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in fields)


def server_info_json(info: ServerInfo) -> dict[str, Any]:
    """The `jw info --json` object."""
    return {
        "version": info.version,
        "cgroup_driver": info.cgroup_driver,
        "cgroup_reason": info.cgroup_reason,
        "limits_supported": info.limits_supported,
        "namespaces": info.namespaces,
        "default_limits": limits_json(info.default_limits),
        "max_limits": limits_json(info.max_limits),
        "identity": info.identity,
        "role": info.role,
        "isolation": info.isolation,
        "isolation_detail": info.isolation_detail,
        "quota": {
            "max_running_jobs": info.quota.max_running_jobs,
            "max_output_bytes": info.quota.max_output_bytes,
            "retained_jobs": info.quota.retained_jobs,
        },
        "usage": {
            "running_jobs": info.quota.running_jobs,
            "output_bytes": info.quota.output_bytes,
            "retained_jobs": info.quota.kept_jobs,
        },
    }


def _quota_text(quota: Quota) -> str:
    def of(used: str, limit: str | None) -> str:
        return f"{used} of {limit}" if limit is not None else f"{used} (no quota)"

    output_limit = format_size(quota.max_output_bytes) if quota.max_output_bytes is not None else None
    parts = [
        f"running jobs {of(str(quota.running_jobs), _str(quota.max_running_jobs))}",
        f"output {of(format_size(quota.output_bytes), output_limit)}",
        f"ended jobs kept {of(str(quota.kept_jobs), _str(quota.retained_jobs))}",
    ]
    return ", ".join(parts)


def _str(value: int | None) -> str | None:
    return None if value is None else str(value)


def server_info_details(info: ServerInfo, server: str) -> str:
    """The `jw info` block: what the server enforces and who we are to it."""
    if info.limits_supported:
        limits = f"enforced (cgroup {info.cgroup_driver})"
    else:
        limits = f"NOT enforced: {info.cgroup_reason}; requests with limits are refused"
    if info.isolation == "strict":
        isolation = f"strict: {info.isolation_detail}"
    elif info.isolation == "none":
        isolation = "NONE: jobs run with the server's own privileges (trusted hosts only)"
    else:
        isolation = "unknown (server predates the job sandbox)"
    fields = [
        ("Server", f"{server} (jobworker {info.version})"),
        ("You", f"{info.identity} ({info.role})"),
        ("Isolation", isolation),
        ("Limits", limits),
        (
            "Namespaces",
            "pid, mount, network, uts, ipc" if info.namespaces else "none (jobs share the host's)",
        ),
        ("Defaults", _limits_text(info.default_limits, "none")),
        ("Ceilings", _limits_text(info.max_limits, "none")),
        ("Your quota", _quota_text(info.quota)),
    ]
    width = max(len(name) for name, _ in fields) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in fields)
