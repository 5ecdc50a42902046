"""The PNG beside the JSON: start latency distributions against the unshare baselines, throughput bars.

matplotlib is optional (the `bench` extra): without it the chart is skipped with a reason, the bench still
succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import CaseResult
from _stream import FOLLOWER_TARGET, JW_CHUNK, PIPE_TARGET, size_label

# (pattern and series in the start case's samples_ms, label, colour, line style)
_START_SERIES = (
    ("back_to_back", "start", "jobworker Start RPC, back to back", "tab:blue", "-"),
    ("spaced", "start", "jobworker Start RPC, 100 ms apart", "tab:blue", "--"),
    ("back_to_back", "userns", "unshare -U (whole run), back to back", "tab:orange", "-"),
    ("spaced", "userns", "unshare -U (whole run), 100 ms apart", "tab:orange", "--"),
    ("back_to_back", "unshare", "unshare without -U, back to back", "tab:gray", ":"),
)
_JW, _BASE, _PIPE = "tab:blue", "tab:gray", "darkgray"
_PSS_ROLES = (("holder", "tab:blue"), ("init", "tab:cyan"), ("command", "tab:green"))


@dataclass
class _Bar:
    label: str
    mib_s: float
    colour: str
    # (MiB/s a target asks for, what it is relative to)
    targets: list[tuple[float, str]] = field(default_factory=list)


def _case(results: Sequence[CaseResult], name: str) -> dict[str, Any] | None:
    for result in results:
        if result.name == name and not result.error:
            return result.data
    return None


def _throughput_bars(results: Sequence[CaseResult]) -> list[_Bar]:
    """Each stream that ran, jobworker's in blue with its targets, the baselines in grey."""
    bars: list[_Bar] = []
    stream = _case(results, "stream")
    if stream is not None:
        rates, best = stream["mib_s_median"], stream["bare_best_chunk"]
        bare_best, pipe = rates[f"bare_{best}"], rates["pipe"]
        targets = [(bare_best * FOLLOWER_TARGET, "bare best"), (pipe * PIPE_TARGET, "pipe")]
        bars.append(_Bar("one follower", rates["jobworker"], _JW, targets))
        bars.append(_Bar(f"bare grpc.aio, best ({size_label(best)} msgs)", bare_best, _BASE))
        if best != JW_CHUNK:
            bars.append(_Bar(f"bare grpc.aio, {size_label(JW_CHUNK)} msgs", rates[f"bare_{JW_CHUNK}"], _BASE))
        bars.append(_Bar("head -c | cat (raw pipe)", pipe, _PIPE))
    fanout = _case(results, "fanout")
    if fanout is not None:
        n, best = fanout["followers"], fanout["bare_baseline_chunk"]
        ordered = sorted(fanout["bare"].items(), key=lambda item: item[1]["chunk_bytes"] != best)
        top = ordered[0][1]["aggregate_mib_s"]
        aggregate = fanout["jobworker_aggregate_mib_s"]
        bars.append(_Bar(f"{n} followers, aggregate", aggregate, _JW, [(top * FOLLOWER_TARGET, "bare best")]))
        for chunk, bare in ordered:
            mark = " (best)" if bare["chunk_bytes"] == best else ""
            bars.append(_Bar(f"{n} bare streams, {chunk} msgs{mark}", bare["aggregate_mib_s"], _BASE))
    return bars


_TICKS_MS = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 5000)


def _start_panel(ax: Any, start: dict[str, Any]) -> None:
    from matplotlib.ticker import NullFormatter

    everything: list[float] = []
    for pattern, series, label, colour, style in _START_SERIES:
        values = sorted(start["samples_ms"][pattern][series])
        everything += values
        if values:
            cdf = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, cdf, where="post", label=label, color=colour, linestyle=style)
    ax.set_xscale("log")
    if everything:
        # Plain numbers at round values: the range is often less than a decade, where log labels collide.
        low, high = min(everything), max(everything)
        ticks = [t for t in _TICKS_MS if low / 1.5 <= t <= high * 1.5]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_ylabel("fraction of starts at or below")
    ax.set_title("Start latency (CDF); target: p50 <= 1x, p99 <= 2x unshare -U")
    for level, text in ((0.5, "p50"), (0.99, "p99")):
        ax.axhline(level, color="black", linewidth=0.5, linestyle="-" if level == 0.5 else ":")
        ax.annotate(
            text, (0, level), xycoords=("axes fraction", "data"), xytext=(2, 2), textcoords="offset points"
        )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _throughput_panel(ax: Any, bars: list[_Bar]) -> None:
    positions = list(range(len(bars)))
    ax.barh(positions, [b.mib_s for b in bars], color=[b.colour for b in bars])
    ax.set_yticks(positions, [b.label for b in bars], fontsize=8)
    ax.invert_yaxis()
    for y, bar in zip(positions, bars, strict=True):
        ax.text(bar.mib_s, y, f" {bar.mib_s:,.0f}", va="center", fontsize=8)
        for value, what in bar.targets:
            ax.plot([value, value], [y - 0.4, y + 0.4], color="black", linestyle="--", linewidth=1)
            ax.text(value, y - 0.42, f"target ({what})", fontsize=6, ha="center")
    ax.set_xlabel("MiB/s (dashed: the target)")
    ax.set_title("Output streaming throughput")
    ax.set_xlim(0, max(b.mib_s for b in bars) * 1.15)
    ax.grid(True, axis="x", alpha=0.3)


def _memory_panel(ax: Any, memory: dict[str, Any], limit_kib: float) -> None:
    pss = memory["idle_jobs"]["pss_per_job_kib"]
    left = 0.0
    for role, colour in _PSS_ROLES:
        ax.barh([0], [pss[role]], left=left, color=colour, label=f"{role} {pss[role]:,.0f} KiB")
        left += pss[role]
    ax.axvline(limit_kib, color="black", linestyle="--", linewidth=1)
    ax.text(limit_kib, 0, f" target {limit_kib:,.0f} KiB", fontsize=8, va="center", color="white")
    ax.set_yticks([])
    ax.set_xlabel("KiB of PSS per idle job")
    ax.set_title(f"Host memory per idle job: {left:,.0f} KiB")
    ax.set_xlim(0, max(left, limit_kib) * 1.15)
    ax.legend(fontsize=8, loc="upper right")


def write_chart(path: Path, results: Sequence[CaseResult], title: str, pss_limit_kib: float) -> str | None:
    """Write the chart to `path`; returns why it was skipped, or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: a file only
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"{exc.name or 'matplotlib'} cannot be imported (the bench extra: pip install -e '.[bench]')"
    start, memory, bars = _case(results, "start"), _case(results, "memory"), _throughput_bars(results)
    if start is None and memory is None and not bars:
        return "none of the start, streaming and memory cases ran"
    fig = plt.figure(figsize=(15, 8))
    grid = fig.add_gridspec(2, 2, height_ratios=[4, 1], width_ratios=[1, 1.1])
    fig.suptitle(title, fontsize=9)
    panels = (
        (grid[0, 0], start, lambda ax: _start_panel(ax, start)),
        (grid[0, 1], bars or None, lambda ax: _throughput_panel(ax, bars)),
        (grid[1, :], memory, lambda ax: _memory_panel(ax, memory, pss_limit_kib)),
    )
    for spec, data, draw in panels:
        if data is not None:
            draw(fig.add_subplot(spec))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _redraw(results_file: Path) -> int:
    """Draw the chart again from a results file (e.g. after changing this module)."""
    import json

    from _memory import IDLE_JOB_PSS_LIMIT_KIB

    document = json.loads(results_file.read_text())
    results = [
        CaseResult(case["name"], case["title"], data=case["data"], error=case["error"])
        for case in document["cases"]
    ]
    machine, load = document["machine"], document["load_average"]
    title = (
        f"jobworker bench, {machine['date']}, {machine['cpus']} CPUs, commit {machine['commit']},"
        f" load average {load['before'][0]:.1f} -> {load['after'][0]:.1f}"
    )
    out = results_file.with_suffix(".png")
    skipped = write_chart(out, results, title, IDLE_JOB_PSS_LIMIT_KIB)
    print(f"chart skipped: {skipped}" if skipped else f"chart: {out}")
    return 1 if skipped else 0


if __name__ == "__main__":
    import sys

    sys.exit(_redraw(Path(sys.argv[1])))
