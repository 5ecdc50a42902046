"""One description per kind of resource limit; every layer derives its plumbing for limits from KINDS.

A kind says what a limit is called (the `Limits` field, which is also its proto field, and its option
name), how it is typed (a value kind of jobworker.units), which values the kernel accepts and how a value
is held against its ceiling, its built-in default and ceiling, which cgroup controller enforces it, and
how each cgroup driver turns it into (controller, file, value) writes, in the spirit of containerd's
per-controller ``Values()``. The drivers only write what they are given. Adding a limit is one `Limits`
field, one proto field and one entry here (plus the client's mirror table, which a test keeps equal).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jobworker import units
from jobworker.engine.job import Limits

# What the kernel accepts, checked before any cgroup file is written, so that a bad value is named as
# the rule it breaks and not as a failed write under the host's cgroup path.
PID_MAX_LIMIT = 4_194_304  # include/linux/threads.h, 64-bit
# The job's init and its command are two processes in the cgroup before the command can fork.
MIN_PIDS = 2
# cpu.max / cpu.cfs_quota_us refuse quotas under 1 ms per 100 ms period.
MIN_CPUS = 0.01
MIN_MEMORY_BYTES = 1 << 20
MAX_BYTES = (1 << 63) - 1  # the kernel's counters are signed 64-bit
CPU_PERIOD_US = 100_000
# The kernel refuses CFS quotas under 1 ms, so a smaller fraction cannot be enforced as asked.
MIN_CPU_QUOTA_US = 1_000
_MiB = 1 << 20


class LimitError(ValueError):
    """A limit value breaks a rule; the message names the rule (and the accepted range)."""


@dataclass(frozen=True)
class Write:
    """One cgroupfs write: value into file of the job's directory in controller's hierarchy."""

    controller: str
    file: str
    value: str
    # Skipped when the file is absent (a kernel feature that is off, such as swap accounting).
    optional: bool = False


class WriteContext(Protocol):
    """What a driver tells a kind while it computes writes, before any directory is made."""

    def has_file(self, controller: str, name: str) -> bool:
        """Whether interface file name exists for jobs of controller (a kernel feature probe)."""
        ...

    def block_devices(self) -> list[str]:
        """MAJ:MIN of the whole disks io limits apply to; raises LimitError when there are none."""
        ...


WriteFn = Callable[[Any, Limits, WriteContext], list[Write]]


def host_cpus() -> frozenset[int]:
    """The CPUs this server may run on (its affinity): the widest cpuset a job can be given."""
    return frozenset(os.sched_getaffinity(0))


def host_cores() -> float:
    """The host's number of CPUs, the widest cpus limit."""
    return float(os.cpu_count() or 1)


def host_memory() -> int:
    """The host's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Rule(Protocol):
    """How the values of one kind are checked."""

    def check(self, kind: LimitKind, value: Any, ceiling: Any) -> Any:
        """value normalised, or LimitError naming the rule it breaks (kernel range, then ceiling)."""
        ...

    def sane(self, kind: LimitKind, value: Any) -> str | None:
        """Why no kernel could enforce value as asked (the drivers' last check), or None."""
        ...


def _shown(value: float, *, in_mib: bool = False) -> str:
    if value >= MAX_BYTES:
        return "2^63-1"
    if in_mib and value >= _MiB:
        return f"{value / _MiB:g} MiB"
    # Whole numbers in full (pids, bytes); fractions of a CPU as written.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Scalar:
    """A positive number between low() and high(), at most the ceiling."""

    low: Callable[[], float]
    high: Callable[[], float]
    integer: bool = True
    # Said after the upper bound, when the range depends on the host.
    why: str = ""
    # Messages show values of a MiB and more in MiB (memory), others in full.
    in_mib: bool = False

    def check(self, kind: LimitKind, value: Any, ceiling: Any) -> Any:
        name = kind.label
        if isinstance(value, float) and not math.isfinite(value):
            raise LimitError(f"{name} must be a finite number")
        if value <= 0:
            raise LimitError(f"{name} must be positive, got {value:g}")
        low, high = self.low(), self.high()
        if not low <= value <= high:
            why = f" ({self.why})" if self.why else ""
            raise LimitError(
                f"{name} must be between {_shown(low, in_mib=self.in_mib)} and "
                f"{_shown(high, in_mib=self.in_mib)}{why}, got {_shown(value)}"
            )
        if ceiling is not None and value > ceiling:
            raise LimitError(
                f"{name} {_shown(value, in_mib=self.in_mib)} exceeds the server ceiling of "
                f"{_shown(ceiling, in_mib=self.in_mib)}"
            )
        return value

    def sane(self, kind: LimitKind, value: Any) -> str | None:
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{kind.field} must be an integer, not {value!r}"
            if value <= 0:
                return f"{kind.field} must be positive, not {value}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{kind.field} must be a number, not {value!r}"
        if not math.isfinite(value) or value <= 0:
            return f"{kind.field} must be a positive fraction of one core, not {value!r}"
        if cpu_quota_us(value) < MIN_CPU_QUOTA_US:
            return (
                f"{kind.field}={value} is below the smallest enforceable share "
                f"({MIN_CPU_QUOTA_US / CPU_PERIOD_US} of one core)"
            )
        return None


@dataclass(frozen=True)
class CpuSubset:
    """A CPU list naming only CPUs of the host, and only CPUs of the ceiling's list."""

    def check(self, kind: LimitKind, value: Any, ceiling: Any) -> Any:
        name = kind.label
        host = units.cpu_list_text(host_cpus())
        try:
            cpus = units.parse_cpu_list(str(value))
        except ValueError as exc:
            raise LimitError(f"{name} must be a CPU list of this host's CPUs ({host}): {exc}") from None
        if not cpus <= host_cpus():
            raise LimitError(
                f"{name} must name only CPUs of this host ({host}), got {units.cpu_list_text(cpus)}"
            )
        if ceiling is not None and not cpus <= units.parse_cpu_list(str(ceiling)):
            raise LimitError(
                f"{name} {units.cpu_list_text(cpus)} is outside the server ceiling of "
                f"{units.canonical_cpu_list(str(ceiling))}"
            )
        return units.cpu_list_text(cpus)

    def sane(self, kind: LimitKind, value: Any) -> str | None:
        try:
            if not isinstance(value, str) or not units.parse_cpu_list(value):
                raise ValueError(value)
        except ValueError:
            return f"{kind.field} must be a CPU list such as 0-1,3, not {value!r}"
        return None


@dataclass(frozen=True)
class LimitKind:
    """Everything about one kind of limit."""

    # The `Limits` attribute, which is also the proto `Limits` field.
    field: str
    # jw run --<option>, jw-server --default-<option> / --max-<option>, JW_SERVER_MAX_<OPTION>.
    option: str
    # How messages name it ("io read bps").
    label: str
    value: units.ValueKind[Any]
    # Option help: "memory limit" -> "Job memory limit when ...", "Largest memory limit a job may ...".
    help: str
    rule: Rule
    # The cgroup controller that enforces it, per driver ("io" on v2 is "blkio" on v1).
    controllers: Mapping[str, str]
    # Per driver ("v2", "v1"): how a value becomes writes.
    writes: Mapping[str, WriteFn]
    # Built-in default and ceiling (None: none), and how help texts say them when they come from the host.
    default: Callable[[], Any] = lambda: None
    ceiling: Callable[[], Any] = lambda: None
    default_text: str | None = None
    ceiling_text: str | None = None

    def check(self, value: Any, ceiling: Any) -> Any:
        """value normalised, or LimitError naming the broken rule."""
        return self.rule.check(self, value, ceiling)


def cpu_quota_us(cpus: float) -> int:
    """CFS quota in microseconds per CPU_PERIOD_US for a fraction of one core."""
    return round(cpus * CPU_PERIOD_US)


def _cpu_v2(cpus: float, limits: Limits, ctx: WriteContext) -> list[Write]:
    return [Write("cpu", "cpu.max", f"{cpu_quota_us(cpus)} {CPU_PERIOD_US}")]


def _cpu_v1(cpus: float, limits: Limits, ctx: WriteContext) -> list[Write]:
    return [
        Write("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
        Write("cpu", "cpu.cfs_quota_us", str(cpu_quota_us(cpus))),
    ]


def _memory_v2(memory: int, limits: Limits, ctx: WriteContext) -> list[Write]:
    writes = [Write("memory", "memory.max", str(memory))]
    if limits.memory_swap_bytes is None:
        # Else the job could page out past memory.max; absent when swap accounting is off.
        writes.append(Write("memory", "memory.swap.max", "0", optional=True))
    return writes


def _memory_v1(memory: int, limits: Limits, ctx: WriteContext) -> list[Write]:
    # memsw (memory + swap) must never be below limit_in_bytes, so it is written second.
    writes = [Write("memory", "memory.limit_in_bytes", str(memory))]
    if not ctx.has_file("memory", "memory.memsw.limit_in_bytes"):
        # Without swap accounting, swappiness 0 is what keeps a v1 memcg from paging out.
        writes.append(Write("memory", "memory.swappiness", "0"))
    elif limits.memory_swap_bytes is None:
        writes.append(Write("memory", "memory.memsw.limit_in_bytes", str(memory)))
    return writes


def _no_swap_accounting(file: str) -> LimitError:
    return LimitError(f"memory_swap cannot be enforced: this host has no swap accounting ({file} is absent)")


def _swap_v2(swap: int, limits: Limits, ctx: WriteContext) -> list[Write]:
    if not ctx.has_file("memory", "memory.swap.max"):
        raise _no_swap_accounting("memory.swap.max")
    return [Write("memory", "memory.swap.max", str(swap))]


def _swap_v1(swap: int, limits: Limits, ctx: WriteContext) -> list[Write]:
    if not ctx.has_file("memory", "memory.memsw.limit_in_bytes"):
        raise _no_swap_accounting("memory.memsw.limit_in_bytes")
    if limits.memory_bytes is None:
        raise LimitError(
            "memory_swap needs a memory limit on cgroup v1 (memsw counts memory and swap together)"
        )
    # v1 counts memory and swap together; after memory.limit_in_bytes, so it is never below it.
    total = min(limits.memory_bytes + swap, MAX_BYTES)
    return [Write("memory", "memory.memsw.limit_in_bytes", str(total))]


def _io_v2(key: str) -> WriteFn:
    def writes(rate: int, limits: Limits, ctx: WriteContext) -> list[Write]:
        # The kernel updates only the keys a line names, so read and write limits go separately.
        return [Write("io", "io.max", f"{dev} {key}={rate}") for dev in ctx.block_devices()]

    return writes


def _io_v1(file: str) -> WriteFn:
    def writes(rate: int, limits: Limits, ctx: WriteContext) -> list[Write]:
        return [Write("blkio", file, f"{dev} {rate}") for dev in ctx.block_devices()]

    return writes


def _pids(pids: int, limits: Limits, ctx: WriteContext) -> list[Write]:
    return [Write("pids", "pids.max", str(pids))]


def _cpuset(cpus: str, limits: Limits, ctx: WriteContext) -> list[Write]:
    # On v1 the job's cpuset.mems was copied from its parent at mkdir (a cpuset takes no task without it).
    return [Write("cpuset", "cpuset.cpus", cpus)]


def _bytes(low: int = 1, *, in_mib: bool = False) -> Scalar:
    return Scalar(lambda: low, lambda: MAX_BYTES, in_mib=in_mib)


def _same(controller: str) -> dict[str, str]:
    return {"v2": controller, "v1": controller}


KINDS: tuple[LimitKind, ...] = (
    LimitKind(
        field="cpus",
        option="cpus",
        label="cpus",
        value=units.CORES,
        help="CPU limit (in cores, e.g. 0.5)",
        rule=Scalar(lambda: MIN_CPUS, host_cores, integer=False, why="the number of CPUs of this host"),
        controllers=_same("cpu"),
        writes={"v2": _cpu_v2, "v1": _cpu_v1},
        default=host_cores,
        ceiling=host_cores,
        default_text="the host's cores",
        ceiling_text="the host's cores",
    ),
    LimitKind(
        field="memory_bytes",
        option="memory",
        label="memory",
        value=units.SIZE,
        help="memory limit",
        rule=_bytes(MIN_MEMORY_BYTES, in_mib=True),
        controllers=_same("memory"),
        writes={"v2": _memory_v2, "v1": _memory_v1},
        default=lambda: 1024 * _MiB,
        ceiling=host_memory,
        ceiling_text="the host's memory",
    ),
    LimitKind(
        field="io_read_bps",
        option="io-read-bps",
        label="io read bps",
        value=units.SIZE,
        help="block device read limit (bytes/s)",
        rule=_bytes(),
        controllers={"v2": "io", "v1": "blkio"},
        writes={"v2": _io_v2("rbps"), "v1": _io_v1("blkio.throttle.read_bps_device")},
    ),
    LimitKind(
        field="io_write_bps",
        option="io-write-bps",
        label="io write bps",
        value=units.SIZE,
        help="block device write limit (bytes/s)",
        rule=_bytes(),
        controllers={"v2": "io", "v1": "blkio"},
        writes={"v2": _io_v2("wbps"), "v1": _io_v1("blkio.throttle.write_bps_device")},
    ),
    LimitKind(
        field="pids",
        option="pids",
        label="pids",
        value=units.COUNT,
        help="process count limit",
        rule=Scalar(lambda: MIN_PIDS, lambda: PID_MAX_LIMIT),
        controllers=_same("pids"),
        writes={"v2": _pids, "v1": _pids},
        default=lambda: 1024,
        ceiling=lambda: 32768,
    ),
    LimitKind(
        field="cpuset",
        option="cpuset",
        label="cpuset",
        value=units.CPU_LIST,
        help="set of CPUs (a CPU list, e.g. 0-1,3)",
        rule=CpuSubset(),
        controllers=_same("cpuset"),
        writes={"v2": _cpuset, "v1": _cpuset},
        ceiling=lambda: units.cpu_list_text(host_cpus()),
        ceiling_text="the host's CPUs",
    ),
    LimitKind(
        field="memory_swap_bytes",
        option="memory-swap",
        label="memory swap",
        value=units.SIZE,
        help="swap on top of the memory limit",
        rule=_bytes(in_mib=True),
        controllers=_same("memory"),
        writes={"v2": _swap_v2, "v1": _swap_v1},
    ),
)

BY_FIELD: Mapping[str, LimitKind] = {kind.field: kind for kind in KINDS}


def default_job_limits() -> Limits:
    """What a job gets when its request sets no limit: enough for real work, never the whole host."""
    return Limits(**{kind.field: kind.default() for kind in KINDS})


def default_max_limits() -> Limits:
    """The largest limits a request may ask for: the host itself (and a pids count no job needs more of)."""
    return Limits(**{kind.field: kind.ceiling() for kind in KINDS})


def values(limits: Limits) -> list[tuple[LimitKind, Any]]:
    """(kind, value) of every limit that limits sets, in KINDS order."""
    return [(kind, v) for kind in KINDS if (v := getattr(limits, kind.field)) is not None]


def check_sane(limits: Limits) -> None:
    """LimitError for the first value no kernel could enforce as asked (wrong type, not positive)."""
    for kind, value in values(limits):
        problem = kind.rule.sane(kind, value)
        if problem is not None:
            raise LimitError(problem)


def needed_controllers(limits: Limits, driver: str) -> list[str]:
    """The controllers driver ("v2", "v1") needs for limits, in KINDS order, each once."""
    return list(dict.fromkeys(kind.controllers[driver] for kind, _ in values(limits)))


def writes_for(limits: Limits, driver: str, ctx: WriteContext) -> list[Write]:
    """Every write driver ("v2", "v1") makes for limits, in KINDS order (memory before memory_swap)."""
    return [w for kind, value in values(limits) for w in kind.writes[driver](value, limits, ctx)]
