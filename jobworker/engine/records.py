"""Job records on disk: ``<state_dir>/jobs/<id>/job.json`` beside the output spool, written atomically.

A record is rewritten when the job starts and when it ends, so a restarted server can list past jobs with
their final status and serve their output; a job that was still running when the server died reloads as LOST.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jobworker.engine.job import JobState, JobStatus, Limits, Usage

RECORD = "job.json"
SPOOL = "output.spool"
_VERSION = 1


def job_dir(state_dir: Path, job_id: str) -> Path:
    return state_dir / "jobs" / job_id


def save(directory: Path, status: JobStatus) -> None:
    """Write the record atomically (temp file, rename).

    No fsync: it cost milliseconds on the event loop per start and end. A process crash cannot tear a
    record; a power loss can lose the newest status, and such a job reloads as LOST.
    """
    data = asdict(status)
    data["state"] = status.state.value
    data["version"] = _VERSION
    tmp = directory / (RECORD + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f)
    tmp.replace(directory / RECORD)


def load(directory: Path) -> JobStatus:
    """Read a record; raises ValueError (or OSError) when it is missing or malformed."""
    data: dict[str, Any] = json.loads((directory / RECORD).read_text())
    if data.pop("version", None) != _VERSION:
        raise ValueError(f"unknown record version in {directory}")
    data["state"] = JobState(data["state"])
    data["args"] = tuple(data["args"])
    data["limits"] = Limits(**data["limits"])
    data["usage"] = Usage(**data["usage"])
    return JobStatus(**data)
