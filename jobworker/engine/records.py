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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jobworker.engine.job import JobState, JobStatus, Limits, TruncationReason, Usage

RECORD = "job.json"
SPOOL = "output.spool"
INDEX = "output.idx"
# Written by the job's holder when the job has ended (format in _holder.py), and its reattach socket.
EXIT = "exit"
SOCKET = "holder.sock"
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
    # Records written before jobs had names and labels have neither.
    data.setdefault("name", "")
    data.setdefault("labels", {})
    _expect(data, "name", str)
    labels = data["labels"]
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("labels is not an object of strings")
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


@dataclass(frozen=True)
class ExitFacts:
    """What a job's holder wrote when the job ended: the truth about its end, whoever was listening."""

    ended_at: float
    exit_code: int | None
    signal: int | None
    stop_requested: bool
    stdout_bytes: int
    stderr_bytes: int
    dropped_bytes: int
    # The _spoolfile.REASON_* code, None when nothing was dropped.
    truncated: int | None
    # The cgroup usage files the holder kept before removing the cgroup: path -> content.
    stats: dict[str, str]


_EXIT_INTS = ("exit", "signal", "stdout_bytes", "stderr_bytes", "dropped_bytes")


def load_exit(directory: Path) -> ExitFacts | None:
    """The holder's exit file, None when there is none; ValueError when it is malformed."""
    try:
        text = (directory / EXIT).read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ValueError("exit file is not ASCII") from None
    fields: dict[str, str] = {}
    stats: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "stat":
            path, _, content = value.partition(" ")
            stats[bytes.fromhex(path).decode()] = bytes.fromhex(content).decode(errors="replace")
        elif key in fields:
            raise ValueError(f"exit file repeats {key}")
        else:
            fields[key] = value
    if fields.get("version") != "1":
        raise ValueError("unknown exit file version")
    ints = {key: int(fields[key]) for key in _EXIT_INTS if key in fields}
    if any(value < 0 for key, value in ints.items() if key != "exit"):
        raise ValueError("negative count in exit file")
    truncated = fields.get("truncated", "-")
    ended_at = float(fields["ended_at"])
    if not math.isfinite(ended_at):
        raise ValueError("ended_at is not a time")
    return ExitFacts(
        ended_at=ended_at,
        exit_code=ints.get("exit"),
        signal=ints.get("signal"),
        stop_requested=fields.get("stop_requested") == "1",
        stdout_bytes=ints.get("stdout_bytes", 0),
        stderr_bytes=ints.get("stderr_bytes", 0),
        dropped_bytes=ints.get("dropped_bytes", 0),
        truncated=None if truncated == "-" else int(truncated),
        stats=stats,
    )
