"""Results: metrics with their baselines and targets, percentiles, the stdout table and the JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, min and max of durations, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "min_ms": min(ms, default=math.nan),
        "max_ms": max(ms, default=math.nan),
    }


@dataclass
class Metric:
    """One number, optionally set against a baseline and a target.

    A ratio target compares value / baseline_value (<= target for lower-is-better metrics, >= for
    higher-is-better ones); a limit target compares the value itself against `limit` the same way.
    """

    name: str
    value: float | None
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    higher_is_better: bool = False
    target_ratio: float | None = None
    limit: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / baseline_value, when both are known."""
        if self.value is None or not self.baseline_value:
            return None
        return self.value / self.baseline_value

    @property
    def target(self) -> str:
        """The target as shown in the table ("" when there is none)."""
        sign = ">=" if self.higher_is_better else "<="
        if self.target_ratio is not None:
            return f"{sign} {self.target_ratio:g}x"
        if self.limit is not None:
            return f"{sign} {self.limit:g} {self.unit}"
        return ""

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None without a target or without the numbers to judge."""
        if self.target_ratio is not None:
            compared, bound = self.ratio, self.target_ratio
        elif self.limit is not None:
            compared, bound = self.value, self.limit
        else:
            return None
        if compared is None:
            return None
        return compared >= bound if self.higher_is_better else compared <= bound

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, derived ones included."""
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline or None,
            "baseline_value": self.baseline_value,
            "ratio": self.ratio,
            "higher_is_better": self.higher_is_better,
            "target": self.target or None,
            "met": self.met,
            "note": self.note or None,
        }


@dataclass
class CaseResult:
    """What one benchmark measured: table rows, raw data for the JSON file, and notes."""

    name: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "name": self.name,
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "error": self.error,
            "metrics": [m.as_dict() for m in self.metrics],
            "notes": self.notes,
            "data": self.data,
        }


def _number(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100 or value == int(value):
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[met]


def _cells(m: Metric) -> tuple[str, str, str, str, str]:
    """value, baseline, ratio, target and verdict of one metric, as shown."""
    base = f"{m.baseline} {_number(m.baseline_value, m.unit)}" if m.baseline else ""
    ratio = f"{m.ratio:.2f}x" if m.ratio is not None else ""
    return _number(m.value, m.unit), base, ratio, m.target, _verdict(m.met)


def render_table(results: Sequence[CaseResult]) -> str:
    """A plain-text table: one row per metric, grouped by case, then each case's notes."""
    header = ("metric", "jobworker", "baseline", "ratio", "target", "met")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for result in results:
        rows.append((f"[{result.title}]", "", "", "", "", ""))
        if result.error:
            rows.append(("  failed: " + result.error.splitlines()[0], "", "", "", "", ""))
        rows += [(f"  {m.name}", *_cells(m)) for m in result.metrics]
        notes += [f"{result.name}: {note}" for note in result.notes]
        notes += [
            f"{result.name}, {m.name} vs {m.baseline or 'target'}: {m.note}" for m in result.metrics if m.note
        ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if notes:
        lines += ["", "notes:", *(f"  - {note}" for note in notes)]
    return "\n".join(lines)


def render_markdown(results: Sequence[CaseResult]) -> str:
    """The same table as Markdown, for the README's performance section."""
    lines = ["| benchmark | jobworker | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for result in results:
        for m in result.metrics:
            cells = (f"{result.title}: {m.name}", *_cells(m))
            # A "|" inside a cell (the `head | cat` baseline) would end the cell.
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the results file (creating bench/results/ when needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
