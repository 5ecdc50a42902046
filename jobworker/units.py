"""The one grammar of values a person types: sizes, durations, points in time, cores, counts and CPU lists.

Every layer parses with these functions (jw's options, jw-server's options, the engine's limit kinds), so
`1.5G` means the same thing everywhere. Stdlib only, like tls13.py: the engine may depend on it.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, TypeVar

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}
# RFC 3339 (section 5.6): a date, T (or t, or a space as the RFC allows), a time with optional fraction, and
# a zone; the fraction is kept to the nanosecond.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CPU_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
# The kernel's own ceiling on CPU ids (NR_CPUS is at most 8192 on x86-64); a bound that keeps "0-10**9"
# from becoming a set of a billion numbers before any range check runs.
MAX_CPU_ID = 8191

SIZE_HINT = "use e.g. 512k, 256M, 1.5G; units are binary, k = 1024"
DURATION_HINT = "use e.g. 500ms, 10s, 1m30s"
TIME_HINT = "use an RFC 3339 time like 2026-12-01T10:00:00Z or a duration ago like 10m"
_NS = 1_000_000_000


def parse_size(text: str) -> int:
    """`512`, `512k`, `256M`, `1.5G`, `2GiB` in bytes (binary units, whole bytes, fractions rounded down)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size ({SIZE_HINT})")
    number, unit, _ = match.groups()
    # Fraction, not float: 9223372036854775807 must stay exact.
    return int(Fraction(number) * 1024 ** _SIZE_UNITS[unit.lower()])


def size_text(size: int) -> str:
    """The shortest exact way to type size: `1G`, `512M`, `1536`."""
    for unit, power in (("P", 5), ("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        factor = 1024**power
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_duration(text: str) -> float:
    """`10s`, `500ms`, `1m`, `1m30s`, `2h` or plain seconds (`2.5`) in seconds."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration ({DURATION_HINT})")
    return float(sum(Fraction(number) * _DURATION_UNITS[unit] for number, unit in parts))


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 time (`2026-12-01T10:00:00Z`, `...:00.5+01:00`) in nanoseconds since the epoch."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time (use e.g. 2026-12-01T10:00:00Z)")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, zone_h, zone_m = match.groups()[6:]
    # 60 is a leap second (RFC 3339 allows it): it counts as the next second's start, like POSIX time.
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        raise ValueError(f"{text!r} is not an RFC 3339 time: no such date")
    if hour > 23 or minute > 59 or second > 60 or (not zulu and (int(zone_h) > 23 or int(zone_m) > 59)):
        raise ValueError(f"{text!r} is not an RFC 3339 time: no such time of day")
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    if not zulu:
        shift = int(zone_h) * 3600 + int(zone_m) * 60
        seconds -= shift if sign == "+" else -shift
    return seconds * _NS + int((fraction or "0").ljust(9, "0"))


def rfc3339_text(time_ns: int) -> str:
    """time_ns in UTC with nine fraction digits, fixed width (`2026-12-01T10:00:00.000000000Z`), as docker."""
    seconds, nanos = divmod(time_ns, _NS)
    moment = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{nanos:09d}Z"


def parse_point_in_time(text: str, now_ns: int) -> int:
    """An RFC 3339 time, or a duration (`10m`, `1h30m`) meaning that long before now_ns, in ns."""
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        return now_ns - int(Fraction(ago) * _NS)
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        if _RFC3339.fullmatch(text.strip()):
            raise
        raise ValueError(f"{text!r} is not a point in time ({TIME_HINT})") from exc


def parse_cores(text: str) -> float:
    """A CPU share in cores: `0.5`, `2`."""
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a number of cores (use e.g. 0.5 or 2)")
    return float(text)


def cores_text(cores: float) -> str:
    """`0.5`, `2`."""
    return f"{cores:g}"


def parse_count(text: str) -> int:
    """A whole number: `100`."""
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def parse_cpu_list(text: str) -> frozenset[int]:
    """A kernel CPU list (`0`, `0-1,3`, as in cpuset.cpus and Cpus_allowed_list) as a set of CPU ids."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        match = _CPU_RANGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a CPU list (use e.g. 0, 0-1 or 0-1,3)")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if last < first:
            raise ValueError(f"{text!r} is not a CPU list: {part.strip()} runs backwards")
        if last > MAX_CPU_ID:
            raise ValueError(f"{text!r} is not a CPU list: CPU ids stop at {MAX_CPU_ID}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def cpu_list_text(cpus: Iterable[int]) -> str:
    """The canonical CPU list of cpus: sorted, runs joined (`0-1,3`)."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def canonical_cpu_list(text: str) -> str:
    """text as the kernel would print it back (`1,0-0` -> `0-1`); ValueError when it is not a CPU list."""
    return cpu_list_text(parse_cpu_list(text))


T = TypeVar("T", int, float, str)


@dataclass(frozen=True)
class ValueKind(Generic[T]):
    """One kind of value: how it is typed (parse), and how to type it back exactly (text)."""

    name: str
    parse: Callable[[str], T]
    text: Callable[[T], str]


SIZE: ValueKind[int] = ValueKind("size", parse_size, size_text)
CORES: ValueKind[float] = ValueKind("cores", parse_cores, cores_text)
COUNT: ValueKind[int] = ValueKind("count", parse_count, str)
CPU_LIST: ValueKind[str] = ValueKind("cpu-list", canonical_cpu_list, str)
