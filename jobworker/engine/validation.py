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


def effective_limits(requested: Limits, defaults: Limits, ceilings: Limits) -> Limits:
    """Fill unset limits from defaults and refuse anything non-positive or above a ceiling."""
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
            ceiling = getattr(ceilings, f.name)
            if ceiling is not None and value > ceiling:
                raise InvalidSpecError(f"{name} {value:g} exceeds the server ceiling of {ceiling:g}")
        values[f.name] = value
    return Limits(**values)


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
