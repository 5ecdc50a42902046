"""Parameter types of `jw`: sizes, durations, KEY=VALUE environment entries."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
    _FloatParam = click.ParamType[float]
    _EnvParam = click.ParamType[tuple[str, str]]
else:
    # click made ParamType generic only in 8.4; subscripting it at runtime would break older ones.
    _IntParam = _FloatParam = _EnvParam = click.ParamType

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ENV_NAME = re.compile(r"[^=\x00]+")


def parse_size(text: str) -> int:
    """Parse `512`, `512k`, `256M`, `1.5G`, `2GiB` into bytes; units are binary (k = 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (use e.g. 512k, 256M, 1G; units are binary)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _SIZE_UNITS[unit.lower()])


def parse_duration(text: str) -> float:
    """Parse `10s`, `500ms`, `1m`, `1m30s`, `2h` or plain seconds into seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration (use e.g. 500ms, 10s, 1m30s)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


class SizeType(_IntParam):
    """A byte count with optional binary unit suffix."""

    name = "size"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size < self.minimum:
            self.fail(f"{value!r} is below the minimum of {self.minimum} byte(s)", param, ctx)
        return size


class DurationType(_FloatParam):
    """A duration such as 10s, 500ms or 1m, converted to seconds."""

    name = "duration"

    def __init__(self, *, allow_zero: bool = True) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float | int):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if seconds < 0 or (seconds == 0 and not self.allow_zero):
            self.fail(f"{value!r} must be {'>= 0' if self.allow_zero else '> 0'}", param, ctx)
        return seconds


class EnvEntryType(_EnvParam):
    """`KEY=VALUE`, or `KEY` alone to pass this shell's value of KEY."""

    name = "KEY=VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        name, sep, content = text.partition("=")
        if not _ENV_NAME.fullmatch(name):
            self.fail(f"{text!r} is not KEY=VALUE", param, ctx)
        if not sep:
            if name not in os.environ:
                self.fail(f"{name!r} has no '=VALUE' and is not set in this shell", param, ctx)
            content = os.environ[name]
        if "\x00" in content:
            self.fail(f"the value of {name!r} contains a NUL byte", param, ctx)
        return name, content


SIZE = SizeType()
DURATION = DurationType()
POSITIVE_DURATION = DurationType(allow_zero=False)
ENV_ENTRY = EnvEntryType()
