"""The job engine: starts, stops, queries, lists and streams the output of Linux processes.

No gRPC and no CLI code lives here; the server adapts this surface to the wire.
"""

from jobworker.engine.errors import (
    CapacityError,
    EngineClosedError,
    InvalidSpecError,
    JobError,
    JobNotFoundError,
    JobNotRunningError,
    LimitsUnsupportedError,
    QuotaError,
    StartError,
)
from jobworker.engine.job import (
    JobSpec,
    JobState,
    JobStatus,
    Limits,
    OutputChunk,
    OutputEvent,
    OutputTruncated,
    OwnerUsage,
    Stream,
    StreamSelection,
    Usage,
)
from jobworker.engine.manager import EngineConfig, EngineInfo, JobManager

__all__ = [
    "CapacityError",
    "EngineClosedError",
    "EngineConfig",
    "EngineInfo",
    "InvalidSpecError",
    "JobError",
    "JobManager",
    "JobNotFoundError",
    "JobNotRunningError",
    "JobSpec",
    "JobState",
    "JobStatus",
    "Limits",
    "LimitsUnsupportedError",
    "OutputChunk",
    "OutputEvent",
    "OutputTruncated",
    "OwnerUsage",
    "QuotaError",
    "StartError",
    "Stream",
    "StreamSelection",
    "Usage",
]
