"""The limit kinds as a client sees them: name, proto field, value grammar, how jw shows and asks for one.

The engine's description of each kind (jobworker.engine.limits) also holds kernel ranges, controllers and
cgroup writes, and the client library must not import the engine; so this table mirrors the part of it a
client needs, and a unit test keeps the two (and the proto's Limits message) equal field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobworker import units


@dataclass(frozen=True)
class LimitField:
    """One kind of limit on the client side."""

    # The `Limits` attribute, which is also its proto field.
    field: str
    # jw run --<option>.
    option: str
    value: units.ValueKind[Any]
    # jw's option help.
    help: str
    # How jw shows it: "memory=256MiB", "io-read=1MiB/s".
    label: str
    per_second: bool = False


LIMIT_FIELDS: tuple[LimitField, ...] = (
    LimitField(
        "cpus",
        "cpus",
        units.CORES,
        "CPU limit as a fraction of one core (0.5 = half a core, 2 = two cores).",
        "cpus",
    ),
    LimitField("memory_bytes", "memory", units.SIZE, "Memory limit, e.g. 256M or 1G.", "memory"),
    LimitField(
        "io_read_bps",
        "io-read-bps",
        units.SIZE,
        "Disk read limit in bytes/s, e.g. 10M.",
        "io-read",
        per_second=True,
    ),
    LimitField(
        "io_write_bps",
        "io-write-bps",
        units.SIZE,
        "Disk write limit in bytes/s, e.g. 10M.",
        "io-write",
        per_second=True,
    ),
    LimitField("pids", "pids", units.COUNT, "Maximum number of processes.", "pids"),
    LimitField("cpuset", "cpuset", units.CPU_LIST, "CPUs the job may run on, e.g. 0-1,3.", "cpuset"),
    LimitField(
        "memory_swap_bytes",
        "memory-swap",
        units.SIZE,
        "Swap the job may use on top of its memory limit, e.g. 512M (default: none).",
        "swap",
    ),
)
