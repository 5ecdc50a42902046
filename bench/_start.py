"""Case 1, start latency: Start RPC round trip and time to a final status, vs unshare and docker run."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass, field

from _context import JOB_LIMITS, Context
from _followers import docker_run_seconds
from _harness import BenchError, ServerProcess
from _report import CaseResult, Metric, summary_ms

from jobworker.client import AsyncClient, JobState, StreamEnd
from jobworker.engine.cgroups._warm import WINDOW_S as WARMUP_WINDOW_S

_WARMUP = 5
UNSHARE = ("unshare", "-p", "-f", "--mount-proc", "-n", "true")
# Issue 17's baseline: every namespace a strict job gets (mount with its own /proc, PID, net, UTS, IPC) plus
# the user namespace the issue asks for. A strict job has no user namespace (its uid is a host uid), so this
# baseline does a little more kernel work than the job's own namespaces need; it joins no cgroup, builds no
# root, loads no seccomp filter.
UNSHARE_USERNS = ("unshare", "-U", "-r", "-m", "-u", "-i", "-n", "-p", "-f", "--mount-proc", "true")
SPACED_GAP_SECONDS = 0.1
# Back-to-back starts run in this many rounds, each contender in turn, so a burst of other work on this
# shared machine falls on all of them alike.
_ROUNDS = 10
_P50_TARGET = 1.0
_P99_TARGET = 2.0


async def _jobworker_once(ctx: Context) -> tuple[float, float, str]:
    """(Start round trip, time from Start to the final status, job id) of one job of /bin/true."""
    t0 = time.perf_counter()
    job = await ctx.client.start("/bin/true", limits=JOB_LIMITS)
    t1 = time.perf_counter()
    final = None
    # The stream's end carries the final status and comes as soon as the job has ended: no polling.
    async for event in ctx.client.stream(job.id):
        if isinstance(event, StreamEnd):
            final = event.job
    t2 = time.perf_counter()
    if final is None or final.state is not JobState.EXITED or final.exit_code != 0:
        raise BenchError(f"/bin/true did not exit 0: {final}")
    return t1 - t0, t2 - t0, job.id


def _unshare_once(command: tuple[str, ...]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, timeout=30)
    return time.perf_counter() - t0


@dataclass
class _Samples:
    """Start round trips of jobworker, its final-status times, and whole unshare runs, in seconds."""

    start: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    userns: list[float] = field(default_factory=list)
    unshare: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)

    def summaries(self) -> dict[str, dict[str, float]]:
        """n and percentiles of each series, in ms."""
        return {name: summary_ms(getattr(self, name)) for name in _SERIES}

    def as_ms(self) -> dict[str, list[float]]:
        """The raw samples in ms, in the order taken, for the JSON file and the chart."""
        return {name: [round(s * 1000, 3) for s in getattr(self, name)] for name in _SERIES}


_SERIES = ("start", "final", "userns", "unshare")


async def _rounds(ctx: Context, count: int, gap: float) -> _Samples:
    """`count` runs of each contender with `gap` seconds before each run, in rounds.

    In each round every contender runs a burst of its own (so jobworker's starts are back to back, or `gap`
    apart, among themselves) and the contenders take turns, so a burst of other work on this shared machine
    falls on all of them alike.
    """
    samples = _Samples()
    per_round = max(count // _ROUNDS, 1)
    for _ in range(_ROUNDS):
        for _ in range(per_round):
            await asyncio.sleep(gap)
            start, final, job_id = await _jobworker_once(ctx)
            samples.job_ids.append(job_id)
            samples.start.append(start)
            samples.final.append(final)
        for series, command in ((samples.userns, UNSHARE_USERNS), (samples.unshare, UNSHARE)):
            for _ in range(per_round):
                await asyncio.sleep(gap)
                series.append(_unshare_once(command))
    return samples


_USERNS_NOTE = (
    "the baseline makes every namespace a strict job gets (mount + own /proc, PID, net, UTS, IPC) plus a user"
    " namespace; it joins no cgroup, builds no root, loads no seccomp filter"
)


def _latency_rows(label: str, jw: dict[str, float], base: dict[str, float], note: str = "") -> list[Metric]:
    return [
        Metric(
            f"Start RPC p50, {label}",
            jw["p50_ms"],
            "ms",
            "unshare -U",
            base["p50_ms"],
            target_ratio=_P50_TARGET,
            note=note,
        ),
        Metric(
            f"Start RPC p99, {label}",
            jw["p99_ms"],
            "ms",
            "unshare -U",
            base["p99_ms"],
            target_ratio=_P99_TARGET,
        ),
    ]


async def _against(
    ctx: Context, name: str, extra_args: list[str], per_round: int, *, gap: float = 0.0, pause: float = 0.0
) -> tuple[list[float], list[float]]:
    """Start round trips of a second server started with extra_args, and of ctx's, taking turns in rounds of
    per_round starts each (the second server first; gap seconds before each start, pause before each round),
    so load from elsewhere on the machine falls on both alike."""
    server = ServerProcess(ctx.workdir / name, ctx.certs, max_jobs=100, extra_args=extra_args)
    theirs: list[float] = []
    ours: list[float] = []
    try:
        async with AsyncClient(server.config()) as client:
            other = Context(ctx.sizes, ctx.workdir, ctx.certs, server, ctx.bare, client, ctx.docker)
            for _ in range(_WARMUP):
                await _jobworker_once(other)
                await _jobworker_once(ctx)
            for _ in range(_ROUNDS):
                await asyncio.sleep(pause)
                for series, contender in ((theirs, other), (ours, ctx)):
                    for _ in range(per_round):
                        await asyncio.sleep(gap)
                        series.append((await _jobworker_once(contender))[0])
    finally:
        server.stop()
    return ours, theirs


async def _sandbox_cost(ctx: Context, result: CaseResult) -> None:
    """What strict isolation (the default) adds: the same starts on a server with --isolation none."""
    n = max(ctx.sizes.starts // _ROUNDS, 1)
    strict_starts, none_starts = await _against(ctx, "isolation-none", ["--isolation=none"], n)
    strict, none = summary_ms(strict_starts), summary_ms(none_starts)
    result.data.update(jobworker_start_strict_rounds=strict, jobworker_start_isolation_none=none)
    result.metrics.append(
        Metric(
            "Start RPC p50, strict vs --isolation none (rounds)",
            strict["p50_ms"],
            "ms",
            "none",
            none["p50_ms"],
        )
    )
    result.notes.append(
        f"the sandbox adds {strict['p50_ms'] - none['p50_ms']:+.2f} ms to the Start RPC p50 "
        f"(budget: +1.5 ms), {_ROUNDS} alternating rounds of {n} starts each"
    )


async def _warmup_gain(ctx: Context, result: CaseResult) -> None:
    """What the cgroup attach warm-up saves when jobs arrive apart: the same spaced starts on a server with
    --no-cgroup-attach-warmup.

    The kernel state it keeps warm is the host's, so each round waits out the warm server's window first:
    the cold server's starts must not ride on it.
    """
    per_round, gap = max(ctx.sizes.spaced_starts // _ROUNDS, 1), SPACED_GAP_SECONDS
    warm, cold = await _against(
        ctx, "no-warmup", ["--no-cgroup-attach-warmup"], per_round, gap=gap, pause=WARMUP_WINDOW_S + 0.2
    )
    on, off = summary_ms(warm), summary_ms(cold)
    result.data.update(jobworker_start_spaced_warmup=on, jobworker_start_spaced_no_warmup=off)
    label = f"{gap * 1000:.0f} ms apart, warm-up vs --no-cgroup-attach-warmup (rounds)"
    result.metrics += [
        Metric(f"Start RPC p50, {label}", on["p50_ms"], "ms", "no warm-up", off["p50_ms"]),
        Metric(f"Start RPC p99, {label}", on["p99_ms"], "ms", "no warm-up", off["p99_ms"]),
    ]
    result.notes.append(
        f"the cgroup attach warm-up changes the spaced Start p50 by {on['p50_ms'] - off['p50_ms']:+.2f} ms,"
        f" {_ROUNDS} rounds of {per_round} starts per server, each round after the warm-up window"
        f" ({WARMUP_WINDOW_S:g} s) lapsed"
    )


async def run(ctx: Context) -> CaseResult:
    """Measure start latency of jobworker and its baselines, back to back and spaced, side by side."""
    n, spaced, gap = ctx.sizes.starts, ctx.sizes.spaced_starts, SPACED_GAP_SECONDS
    result = CaseResult("start", f"1. start latency ({n} x /bin/true, namespaces + limits)")
    for _ in range(_WARMUP):
        await _jobworker_once(ctx)
        _unshare_once(UNSHARE_USERNS)
        _unshare_once(UNSHARE)
    b2b = await _rounds(ctx, n, 0.0)
    # Back to back, each cgroup v1 migration finds the kernel's RCU sync from the previous one still active;
    # jobs that arrive apart pay a full grace period each. Both patterns are real.
    apart = await _rounds(ctx, spaced, gap)
    summaries = {"back_to_back": b2b.summaries(), "spaced": apart.summaries()}
    result.data.update(
        gap_s=gap,
        unshare_userns_command=" ".join(UNSHARE_USERNS),
        unshare_command=" ".join(UNSHARE),
        summaries=summaries,
        samples_ms={"back_to_back": b2b.as_ms(), "spaced": apart.as_ms()},
    )
    now, later = summaries["back_to_back"], summaries["spaced"]
    spaced_label = f"{spaced} jobs {gap * 1000:.0f} ms apart"
    result.metrics += [
        *_latency_rows(f"{len(b2b.start)} back to back", now["start"], now["userns"], _USERNS_NOTE),
        *_latency_rows(spaced_label, later["start"], later["userns"]),
        Metric(
            "Start RPC p50, back to back", now["start"]["p50_ms"], "ms", "unshare", now["unshare"]["p50_ms"]
        ),
        Metric(
            f"Start RPC p50, {spaced_label}",
            later["start"]["p50_ms"],
            "ms",
            "unshare",
            later["unshare"]["p50_ms"],
        ),
        Metric(
            "start to final status p50", now["final"]["p50_ms"], "ms", "unshare -U", now["userns"]["p50_ms"]
        ),
        Metric(
            "start to final status p99", now["final"]["p99_ms"], "ms", "unshare -U", now["userns"]["p99_ms"]
        ),
    ]
    # The part of a Start that is only the RPC: a GetStatus round trip on the same warm channel.
    rpc: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await ctx.client.status(b2b.job_ids[-1])
        rpc.append(time.perf_counter() - t0)
    jw_rpc = summary_ms(rpc)
    result.data["jobworker_status_rpc"] = jw_rpc
    result.metrics.append(Metric("GetStatus RPC p50 (the RPC floor)", jw_rpc["p50_ms"], "ms"))
    # The server's own view of the same Start calls (its audit line's duration), to split client and
    # transport time from the server's.
    ids = set(b2b.job_ids)
    inside = [
        float(entry["duration_ms"]) / 1000
        for entry in ctx.server.log_entries()
        if str(entry.get("method", "")).endswith("/Start") and entry.get("job_id") in ids
    ]
    if inside:
        server_side = summary_ms(inside)
        result.data["jobworker_start_server_side"] = server_side
        result.metrics.append(
            Metric("Start p50 inside the server (audit duration), back to back", server_side["p50_ms"], "ms")
        )
    result.notes += [
        f"unshare -U is `{' '.join(UNSHARE_USERNS)}` (a strict job itself has no user namespace: its uid is a"
        f" host uid); unshare is the older baseline `{' '.join(UNSHARE)}`",
        "each unshare sample is a whole run (spawn to exit), so it bounds both the start and the final rows;"
        f" {_ROUNDS} rounds in which each contender runs a burst of {max(n // _ROUNDS, 1)} (back to back) or"
        f" {max(spaced // _ROUNDS, 1)} ({gap * 1000:.0f} ms before each run) in turn",
    ]
    await _sandbox_cost(ctx, result)
    await _warmup_gain(ctx, result)
    image = ctx.docker.image
    if image is None:
        result.notes.append(f"docker run baseline skipped: {ctx.docker.skip_reason}")
        return result
    try:
        # The first run is a warm-up (image layers, cgroup set-up), like the warm-ups above.
        docker = [docker_run_seconds(image) for _ in range(ctx.sizes.docker_starts + 1)][1:]
    except (subprocess.SubprocessError, OSError) as exc:
        result.notes.append(f"docker run baseline failed: {exc}")
        return result
    dock = summary_ms(docker)
    result.data["docker_run"] = dock
    result.metrics += [
        Metric("Start RPC p50", now["start"]["p50_ms"], "ms", "docker run", dock["p50_ms"]),
        Metric("start to final status p50", now["final"]["p50_ms"], "ms", "docker run", dock["p50_ms"]),
    ]
    result.notes.append(
        f"docker run: {ctx.sizes.docker_starts} runs of {image} (--rm --memory 64m, entrypoint true),"
        f" Docker {ctx.docker.version}"
    )
    return result
