"""Case 3, fan-out: many concurrent followers of one job (aggregate MiB/s) vs as many bare grpc streams."""

from __future__ import annotations

import asyncio
import time

from _context import Context, RssSampler
from _followers import bare_streams, follow_job
from _harness import BenchError, cpu_seconds, reset_peak_rss, sample_process
from _report import CaseResult, GiB, Metric, MiB
from _stream import CPU_TARGET, FOLLOWER_TARGET, JW_CHUNK, best_bare_chunk, size_label

PEAK_RSS_LIMIT_MIB = 100


async def _bare(ctx: Context, size: int, count: int, chunk: int) -> dict[str, float]:
    """Aggregate MiB/s, slowest stream, peak RSS and CPU of the bare server for `count` streams."""
    reset_peak_rss(ctx.bare.pid)
    cpu0 = cpu_seconds(ctx.bare.pid)[0]
    channel = ctx.bare.channel()
    try:
        with RssSampler(ctx.bare.pid) as sampler:
            followed = await bare_streams(channel, size, count, chunk)
    finally:
        await channel.close()
    if any(f.nbytes != size for f in followed):
        raise BenchError(f"a bare stream got fewer than {size} bytes")
    slowest = max(f.seconds for f in followed)
    return {
        "chunk_bytes": chunk,
        "aggregate_mib_s": size * count / MiB / slowest,
        "slowest_s": slowest,
        "peak_rss_mib": max(sample_process(ctx.bare.pid).peak_rss_bytes, sampler.peak[1]) / MiB,
        "cpu_s_per_gib": (cpu_seconds(ctx.bare.pid)[0] - cpu0) / (size * count / GiB),
    }


async def run(ctx: Context) -> CaseResult:
    """Measure fan-out throughput, the slowest follower, and the server's peak RSS and CPU meanwhile."""
    size, count = ctx.sizes.fanout_bytes, ctx.sizes.fanout_followers
    result = CaseResult("fanout", f"3. fan-out ({count} followers of one {size // MiB} MiB job)")
    best = await best_bare_chunk(ctx)
    reset_peak_rss(ctx.server.pid)
    before = ctx.server.sample()
    cpu0 = cpu_seconds(ctx.server.pid)[0]
    with RssSampler(ctx.server.pid) as sampler:
        t0 = time.perf_counter()
        job = await ctx.client.start("head", ["-c", str(size), "/dev/zero"])
        followed = await asyncio.gather(*(follow_job(ctx.client, job.id, t0) for _ in range(count)))
    cpu_per_gib = (cpu_seconds(ctx.server.pid)[0] - cpu0) / (size * count / GiB)
    peak = max(ctx.server.sample().peak_rss_bytes, sampler.peak[1])
    short = [f.nbytes for f in followed if f.nbytes != size]
    if short:
        raise BenchError(f"{len(short)} followers got fewer than {size} bytes (e.g. {short[0]})")
    slowest = max(f.seconds for f in followed)
    aggregate = size * count / MiB / slowest

    bare = {JW_CHUNK: await _bare(ctx, size, count, JW_CHUNK)}
    if best != JW_CHUNK:
        bare[best] = await _bare(ctx, size, count, best)
    # The target's baseline: the faster of the two message sizes for this many streams.
    top = max(bare.values(), key=lambda b: b["aggregate_mib_s"])
    top_label = f"{count} bare streams, best ({size_label(int(top['chunk_bytes']))})"
    result.data.update(
        bytes_per_follower=size,
        followers=count,
        jobworker_aggregate_mib_s=aggregate,
        jobworker_slowest_s=slowest,
        jobworker_fastest_s=min(f.seconds for f in followed),
        jobworker_server_cpu_s_per_gib=cpu_per_gib,
        bare={size_label(chunk): values for chunk, values in bare.items()},
        bare_baseline_chunk=int(top["chunk_bytes"]),
        server_rss_before_mib=before.rss_bytes / MiB,
        server_peak_rss_mib=peak / MiB,
        server_rss_series_mib=sampler.series(),
    )
    result.metrics += [
        Metric(
            "aggregate MiB/s",
            aggregate,
            "MiB/s",
            top_label,
            top["aggregate_mib_s"],
            higher_is_better=True,
            target_ratio=FOLLOWER_TARGET,
        ),
    ]
    if top is not bare[JW_CHUNK]:
        result.metrics.append(
            Metric(
                "aggregate MiB/s",
                aggregate,
                "MiB/s",
                f"{count} bare streams, {size_label(JW_CHUNK)}",
                bare[JW_CHUNK]["aggregate_mib_s"],
                higher_is_better=True,
            )
        )
    result.metrics += [
        Metric("slowest follower", slowest, "s", top_label, top["slowest_s"]),
        Metric(
            "server peak RSS",
            peak / MiB,
            "MiB",
            top_label,
            top["peak_rss_mib"],
            limit=PEAK_RSS_LIMIT_MIB,
        ),
        Metric(
            "server CPU per GiB streamed",
            cpu_per_gib,
            "CPU-s",
            top_label,
            top["cpu_s_per_gib"],
            target_ratio=CPU_TARGET,
        ),
    ]
    bare_rates = ", ".join(f"{size_label(c)} {b['aggregate_mib_s']:.0f} MiB/s" for c, b in bare.items())
    result.notes += [
        f"all {count} followers share one AsyncClient (one HTTP/2 connection), as do the bare streams",
        f"{count} bare streams by message size: {bare_rates} (the one-follower case's best size, and"
        f" jw-server's {size_label(JW_CHUNK)}); the faster is the baseline",
        "this server has run the cases before (its heap has grown); the memory case measures peak RSS on a"
        " fresh one",
    ]
    return result
