"""The job engine: starts, stops, queries, lists and streams the output of Linux processes.

No gRPC and no CLI code lives here; the server adapts this surface to the wire.
"""

from jobworker.engine.errors import (
    AmbiguousJobError,
    CapacityError,
    EngineClosedError,
    InputUnavailableError,
    InvalidSpecError,
    JobError,
    JobNotFoundError,
    JobNotRunningError,
    JobRunningError,
    JobStuckError,
    LimitsUnsupportedError,
    NameInUseError,
    OutputUntimedError,
    QuotaError,
    StartError,
    StorageFullError,
)
from jobworker.engine.events import EngineCounts, EngineEvents, EngineObserver
from jobworker.engine.job import (
    JobSpec,
    JobState,
    JobStatus,
    Limits,
    OutputChunk,
    OutputEvent,
    OutputTruncated,
    OutputWindow,
    OutputWindowEnd,
    OwnerUsage,
    Stream,
    StreamSelection,
    TruncationReason,
    Usage,
)
from jobworker.engine.limits import KINDS as LIMIT_KINDS
from jobworker.engine.limits import LimitKind, default_job_limits, default_max_limits
from jobworker.engine.manager import EngineConfig, EngineInfo, JobManager
from jobworker.engine.sandbox import (
    DEFAULT_SCRATCH_BYTES,
    DEFAULT_UID_RANGE,
    Isolation,
    JobMount,
    SandboxConfig,
    SandboxUnavailableError,
)
from jobworker.engine.spawn import JobInput
from jobworker.engine.table import choose_job, is_id_prefix
from jobworker.engine.validation import SIGNALS

__all__ = [
    "DEFAULT_SCRATCH_BYTES",
    "DEFAULT_UID_RANGE",
    "LIMIT_KINDS",
    "SIGNALS",
    "AmbiguousJobError",
    "CapacityError",
    "EngineClosedError",
    "EngineConfig",
    "EngineCounts",
    "EngineEvents",
    "EngineInfo",
    "EngineObserver",
    "InputUnavailableError",
    "InvalidSpecError",
    "Isolation",
    "JobError",
    "JobInput",
    "JobManager",
    "JobMount",
    "JobNotFoundError",
    "JobNotRunningError",
    "JobRunningError",
    "JobSpec",
    "JobState",
    "JobStatus",
    "JobStuckError",
    "LimitKind",
    "Limits",
    "LimitsUnsupportedError",
    "NameInUseError",
    "OutputChunk",
    "OutputEvent",
    "OutputTruncated",
    "OutputUntimedError",
    "OutputWindow",
    "OutputWindowEnd",
    "OwnerUsage",
    "QuotaError",
    "SandboxConfig",
    "SandboxUnavailableError",
    "StartError",
    "StorageFullError",
    "Stream",
    "StreamSelection",
    "TruncationReason",
    "Usage",
    "choose_job",
    "default_job_limits",
    "default_max_limits",
    "is_id_prefix",
]
