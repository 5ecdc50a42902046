"""The PNG beside the JSON: start latency distributions against the unshare baselines, throughput bars.

matplotlib is optional (the `bench` extra): without it the chart is skipped with a reason, the bench still
succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _report import CaseResult
from _stream import JW_CHUNK, size_label

# (pattern and series in the start case's samples_ms, label, colour, line style)
_START_SERIES = (
    ("back_to_back", "start", "jobworker Start RPC, back to back", "tab:blue", "-"),
    ("spaced", "start", "jobworker Start RPC, 100 ms apart", "tab:blue", "--"),
    ("back_to_back", "userns", "unshare -U (whole run), back to back", "tab:orange", "-"),
    ("spaced", "userns", "unshare -U (whole run), 100 ms apart", "tab:orange", "--"),
    ("back_to_back", "unshare", "unshare without -U, back to back", "tab:gray", ":"),
)


def _case(results: Sequence[CaseResult], name: str) -> dict[str, Any] | None:
    for result in results:
        if result.name == name and not result.error:
            return result.data
    return None


def _throughput_bars(results: Sequence[CaseResult]) -> list[tuple[str, float, str]]:
    """(label, MiB/s, colour) of each stream that ran, jobworker's in blue and the baselines in grey."""
    bars: list[tuple[str, float, str]] = []
    stream = _case(results, "stream")
    if stream is not None:
        rates, best = stream["mib_s_median"], stream["bare_best_chunk"]
        bars.append(("one follower", rates["jobworker"], "tab:blue"))
        bars.append((f"bare grpc.aio, best ({size_label(best)} msgs)", rates[f"bare_{best}"], "tab:gray"))
        if best != JW_CHUNK:
            bars.append(
                (f"bare grpc.aio, {size_label(JW_CHUNK)} msgs", rates[f"bare_{JW_CHUNK}"], "tab:gray")
            )
        bars.append(("head -c | cat (raw pipe)", rates["pipe"], "darkgray"))
    fanout = _case(results, "fanout")
    if fanout is not None:
        n = fanout["followers"]
        bars.append((f"{n} followers, aggregate", fanout["jobworker_aggregate_mib_s"], "tab:blue"))
        best = fanout["bare_baseline_chunk"]
        for chunk, bare in sorted(fanout["bare"].items(), key=lambda item: item[1]["chunk_bytes"] != best):
            mark = " (best)" if bare["chunk_bytes"] == best else ""
            bars.append((f"{n} bare streams, {chunk} msgs{mark}", bare["aggregate_mib_s"], "tab:gray"))
    return bars


def write_chart(path: Path, results: Sequence[CaseResult], title: str) -> str | None:
    """Write the chart to `path`; returns why it was skipped, or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: a file only
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"{exc.name or 'matplotlib'} cannot be imported (the bench extra: pip install -e '.[bench]')"
    start = _case(results, "start")
    bars = _throughput_bars(results)
    if start is None and not bars:
        return "neither the start nor a streaming case ran"
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 1.1]})
    fig.suptitle(title, fontsize=10)
    if start is not None:
        for pattern, series, label, colour, style in _START_SERIES:
            values = sorted(start["samples_ms"][pattern][series])
            if values:
                cdf = [(i + 1) / len(values) for i in range(len(values))]
                left.step(values, cdf, where="post", label=label, color=colour, linestyle=style)
        left.set_xscale("log")
        left.set_xlabel("latency, ms (log scale)")
        left.set_ylabel("fraction of starts at or below")
        left.set_title("Start latency (CDF)")
        left.axhline(0.5, color="black", linewidth=0.5)
        left.axhline(0.99, color="black", linewidth=0.5, linestyle=":")
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=8, loc="lower right")
    else:
        left.set_axis_off()
    if bars:
        labels = [label for label, _, _ in bars]
        rates = [rate for _, rate, _ in bars]
        positions = range(len(bars))
        right.barh(positions, rates, color=[colour for _, _, colour in bars])
        right.set_yticks(list(positions), labels, fontsize=8)
        right.invert_yaxis()
        for y, rate in zip(positions, rates, strict=True):
            right.text(rate, y, f" {rate:,.0f}", va="center", fontsize=8)
        right.set_xlabel("MiB/s")
        right.set_title("Output streaming throughput")
        right.set_xlim(0, max(rates) * 1.15)
        right.grid(True, axis="x", alpha=0.3)
    else:
        right.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
