"""Job records on disk: ``<state_dir>/jobs/<id>/job.json`` beside the output spool, written atomically.

A record is rewritten when the job starts and when it ends, so a restarted server can list past jobs with
their final status and serve their output; a job that was still running when the server died reloads as LOST.

Writes are atomic and durable (temp file, fsync, rename, fsync of the directory) and block, so callers on the
event loop run them in a thread. Beside the record of a running job lies a preallocated reserve that its final
record is written into: the end of a job that filled the disk with output is still recorded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobworker.engine.job import JobState, JobStatus, Limits, TruncationReason, Usage

RECORD = "job.json"
SPOOL = "output.spool"
_TEMP = RECORD + ".tmp"
_RESERVE = RECORD + ".reserve"
_VERSION = 1
# A reserve holds twice the start record, so that the end record (usage, exit code) fits.
_MIN_RESERVE = 4096


def job_dir(state_dir: Path, job_id: str) -> Path:
    return state_dir / "jobs" / job_id


def save(directory: Path, status: JobStatus) -> None:
    """Write the record atomically and durably; raises OSError (ENOSPC when the disk is full)."""
    data = asdict(status)
    data["state"] = status.state.value
    data["truncation_reason"] = status.truncation_reason.value if status.truncation_reason else None
    data["version"] = _VERSION
    payload = json.dumps(data).encode()
    tmp = directory / _TEMP
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if status.state.ended:
        # The final record goes into the reserve: its blocks are already allocated, so overwriting them
        # needs no free space (unless the record outgrew it). Earlier records may fail on a full disk.
        with contextlib.suppress(FileNotFoundError):
            (directory / _RESERVE).replace(tmp)
            flags = os.O_WRONLY
    fd = os.open(tmp, flags | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            written = os.pwrite(fd, view, len(payload) - len(view))
            if written <= 0:  # never loop on a disk that takes nothing
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
        os.ftruncate(fd, len(payload))
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(directory / RECORD)
    _fsync_dir(directory)
    if not status.state.ended and not (directory / _RESERVE).exists():
        _reserve(directory / _RESERVE, max(_MIN_RESERVE, 2 * len(payload)))


def _reserve(path: Path, size: int) -> None:
    """Preallocate the next write's room; a full disk leaves none, and the next write takes its chances."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(directory: Path) -> JobStatus:
    """Read and validate a record; raises ValueError (or OSError) when it is missing or malformed."""
    data: Any = json.loads((directory / RECORD).read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.pop("version", None) != _VERSION:
        raise ValueError("unknown record version")
    if data.get("id") != directory.name:
        raise ValueError("the record names another job")
    for key in ("owner", "command", "cwd"):
        _expect(data, key, str)
    for key in ("started_at", "ended_at"):
        _expect(data, key, float, optional=key == "ended_at")
    for key in ("pid", "stdout_bytes", "stderr_bytes", "output_dropped_bytes", "exit_code", "signal"):
        _expect(data, key, int, optional=key in ("exit_code", "signal", "output_dropped_bytes"))
    if not isinstance(data.get("args"), list) or not all(isinstance(a, str) for a in data["args"]):
        raise ValueError("args is not a list of strings")
    data["state"] = JobState(data["state"])
    reason = data.get("truncation_reason")
    data["truncation_reason"] = TruncationReason(reason) if reason is not None else None
    data["args"] = tuple(data["args"])
    data["limits"] = Limits(**data["limits"])
    data["usage"] = Usage(**data["usage"])
    return JobStatus(**data)


def _expect(data: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> None:
    """Raise ValueError unless data[key] is of kind (ints count as floats; None only when optional)."""
    value = data.get(key)
    if value is None and optional:
        return
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        raise ValueError(f"{key} is not a valid {kind.__name__}")
