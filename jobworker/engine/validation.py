"""Checks on a JobSpec before anything is started: input sanity, limits against ceilings, the executable."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from jobworker.engine.errors import InvalidSpecError
from jobworker.engine.job import JobSpec, Limits

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LIMIT_NAMES = {
    "cpus": "cpus",
    "memory_bytes": "memory",
    "io_read_bps": "io read bps",
    "io_write_bps": "io write bps",
    "pids": "pids",
}
# What the kernel accepts, checked before any cgroup file is written, so that a bad value is named as
# the rule it breaks and not as a failed write under the host's cgroup path.
PID_MAX_LIMIT = 4_194_304  # include/linux/threads.h, 64-bit
# The job's init and its command are two processes in the cgroup before the command can fork.
MIN_PIDS = 2
# cpu.max / cpu.cfs_quota_us refuse quotas under 1 ms per 100 ms period.
MIN_CPUS = 0.01
MIN_MEMORY_BYTES = 1 << 20
_MAX_BYTES = (1 << 63) - 1  # the kernel's counters are signed 64-bit


def _kernel_range(name: str) -> tuple[float, float]:
    """(lowest, highest) value of limit field `name` the kernel accepts on this host."""
    if name == "pids":
        return MIN_PIDS, PID_MAX_LIMIT
    if name == "cpus":
        return MIN_CPUS, float(os.cpu_count() or 1)
    if name == "memory_bytes":
        return MIN_MEMORY_BYTES, _MAX_BYTES
    return 1, _MAX_BYTES


def check_spec(spec: JobSpec) -> None:
    """Reject specs the kernel would refuse or misread (empty command, NUL bytes, bad env names)."""
    if not spec.command:
        raise InvalidSpecError("command must not be empty")
    if "\0" in spec.command or any("\0" in a for a in spec.args):
        raise InvalidSpecError("command and args must not contain NUL bytes")
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key:
            raise InvalidSpecError(f"invalid environment variable name {key!r}")
        if "\0" in value:
            raise InvalidSpecError(f"environment variable {key} must not contain NUL bytes")
    if spec.cwd is not None and "\0" in spec.cwd:
        raise InvalidSpecError("cwd must not contain NUL bytes")


def _shown(name: str, value: float) -> str:
    if value >= _MAX_BYTES:
        return "2^63-1"
    if name == "memory_bytes" and value >= 1 << 20:
        return f"{value / (1 << 20):g} MiB"
    # Whole numbers in full (pids, bytes); fractions of a CPU as written.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def effective_limits(requested: Limits, defaults: Limits, ceilings: Limits) -> Limits:
    """Fill unset limits from defaults; refuse values outside what the kernel accepts or above a ceiling."""
    values: dict[str, Any] = {}
    for f in fields(Limits):
        value = getattr(requested, f.name)
        if value is None:
            value = getattr(defaults, f.name)
        name = _LIMIT_NAMES[f.name]
        if value is not None:
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidSpecError(f"{name} must be a finite number")
            if value <= 0:
                raise InvalidSpecError(f"{name} must be positive, got {value:g}")
            low, high = _kernel_range(f.name)
            if not low <= value <= high:
                why = " (the number of CPUs of this host)" if f.name == "cpus" else ""
                raise InvalidSpecError(
                    f"{name} must be between {_shown(f.name, low)} and {_shown(f.name, high)}{why}, "
                    f"got {_shown('', value)}"
                )
            ceiling = getattr(ceilings, f.name)
            if ceiling is not None and value > ceiling:
                raise InvalidSpecError(
                    f"{name} {_shown(f.name, value)} exceeds the server ceiling of {_shown(f.name, ceiling)}"
                )
        values[f.name] = value
    return Limits(**values)


def check_limit_settings(defaults: Limits, ceilings: Limits) -> None:
    """Refuse server defaults the kernel would not accept or above their ceiling, before any job asks."""
    try:
        effective_limits(Limits(), defaults, ceilings)
    except InvalidSpecError as exc:
        # Otherwise every Start without that limit would fail with a message about a limit it never set.
        raise InvalidSpecError(f"default limits: {exc}") from None


def job_environment(extra: Mapping[str, str], *, home: str | None = None) -> dict[str, str]:
    """The job's whole environment: a sane PATH (and HOME) plus what the caller passed, never the server's."""
    base = {"PATH": DEFAULT_PATH}
    if home is not None:
        base["HOME"] = home
    return {**base, **extra}


def check_cwd(path: str) -> str:
    """Refuse a relative working directory; whether it exists is decided inside the job's view."""
    if not os.path.isabs(path):
        raise InvalidSpecError(f"cwd must be an absolute path, got {path!r}")
    return path
