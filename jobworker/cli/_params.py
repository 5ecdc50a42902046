"""Parameter types of `jw`: sizes, durations, KEY=VALUE environment entries (grammar: jobworker.units)."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from jobworker.client import LimitField
from jobworker.units import parse_duration, parse_point_in_time, parse_size

if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
    _FloatParam = click.ParamType[float]
    _EnvParam = click.ParamType[tuple[str, str]]
    _AnyParam = click.ParamType[Any]
    _TimeParam = click.ParamType[datetime]
    _StrParam = click.ParamType[str]
else:
    # click made ParamType generic only in 8.4; subscripting it at runtime would break older ones.
    _IntParam = _FloatParam = _EnvParam = _AnyParam = _TimeParam = _StrParam = click.ParamType

_ENV_NAME = re.compile(r"[^=\x00]+")


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


class LimitType(_AnyParam):
    """A value of one limit kind (a size, cores, a count, a CPU list), read with jobworker.units."""

    def __init__(self, limit: LimitField) -> None:
        self.limit = limit
        self.name = limit.value.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            parsed = self.limit.value.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if isinstance(parsed, int | float) and parsed <= 0:
            self.fail(f"{value!r} must be > 0", param, ctx)
        return parsed


class PointInTimeType(_TimeParam):
    """An RFC 3339 time (2026-12-01T10:00:00Z) or a duration ago (10m, 1h30m: jobworker.units)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment_ns = parse_point_in_time(str(value), time.time_ns())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return datetime.fromtimestamp(moment_ns / 1e9, UTC)


class TimeTextType(_StrParam):
    """A point in time as PointInTimeType reads it, passed on as typed: the server reads it on its clock."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        try:
            parse_point_in_time(text, time.time_ns())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return text


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


class LabelType(_EnvParam):
    """`KEY=VALUE` of a label or a label selector; the server checks the key and value rules."""

    name = "KEY=VALUE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, content = str(value).partition("=")
        if not key or not sep:
            self.fail(f"{str(value)[:64]!r} is not KEY=VALUE", param, ctx)
        return key, content


def label_map(pairs: tuple[tuple[str, str], ...], param: str) -> dict[str, str]:
    """The labels of repeated `param` options; a key given twice with two values is a usage error."""
    labels: dict[str, str] = {}
    for key, value in pairs:
        if labels.get(key, value) != value:
            raise click.UsageError(f"{param} {key} is given twice, with different values")
        labels[key] = value
    return labels


SIZE = SizeType()
DURATION = DurationType()
POSITIVE_DURATION = DurationType(allow_zero=False)
ENV_ENTRY = EnvEntryType()
LABEL = LabelType()
POINT_IN_TIME = PointInTimeType()
TIME_TEXT = TimeTextType()

__all__ = [
    "DURATION",
    "ENV_ENTRY",
    "LABEL",
    "POINT_IN_TIME",
    "POSITIVE_DURATION",
    "SIZE",
    "TIME_TEXT",
    "DurationType",
    "EnvEntryType",
    "LabelType",
    "LimitType",
    "PointInTimeType",
    "SizeType",
    "TimeTextType",
    "label_map",
    "parse_duration",
    "parse_size",
]
