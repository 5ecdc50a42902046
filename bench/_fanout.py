"""Case 3, fan-out: many concurrent followers of one job (aggregate MiB/s) vs as many bare grpc streams."""

from __future__ import annotations

import asyncio
import time

from _context import Context, RssSampler
from _followers import bare_streams, follow_job
from _harness import BenchError, reset_peak_rss, sample_process
from _report import CaseResult, Metric, MiB


async def run(ctx: Context) -> CaseResult:
    """Measure fan-out throughput, the slowest follower, and the server's peak RSS meanwhile."""
    size, count = ctx.sizes.fanout_bytes, ctx.sizes.fanout_followers
    result = CaseResult("fanout", f"3. fan-out ({count} followers of one {size // MiB} MiB job)")
    reset_peak_rss(ctx.server.pid)
    before = ctx.server.sample()
    with RssSampler(ctx.server.pid) as sampler:
        t0 = time.perf_counter()
        job = await ctx.client.start("head", ["-c", str(size), "/dev/zero"])
        followed = await asyncio.gather(*(follow_job(ctx.client, job.id, t0) for _ in range(count)))
    peak = max(ctx.server.sample().peak_rss_bytes, sampler.peak[1])
    short = [f.nbytes for f in followed if f.nbytes != size]
    if short:
        raise BenchError(f"{len(short)} followers got fewer than {size} bytes (e.g. {short[0]})")
    slowest = max(f.seconds for f in followed)
    aggregate = size * count / MiB / slowest

    reset_peak_rss(ctx.bare.pid)
    channel = ctx.bare.channel()
    try:
        with RssSampler(ctx.bare.pid) as bare_sampler:
            bare = await bare_streams(channel, size, count)
    finally:
        await channel.close()
    bare_peak = max(sample_process(ctx.bare.pid).peak_rss_bytes, bare_sampler.peak[1])
    bare_slowest = max(f.seconds for f in bare)
    bare_aggregate = size * count / MiB / bare_slowest
    result.data.update(
        bytes_per_follower=size,
        followers=count,
        jobworker_aggregate_mib_s=aggregate,
        jobworker_slowest_s=slowest,
        jobworker_fastest_s=min(f.seconds for f in followed),
        bare_aggregate_mib_s=bare_aggregate,
        bare_slowest_s=bare_slowest,
        server_rss_before_mib=before.rss_bytes / MiB,
        server_peak_rss_mib=peak / MiB,
        bare_server_peak_rss_mib=bare_peak / MiB,
        server_rss_series_mib=sampler.series(),
    )
    result.metrics += [
        Metric(
            "aggregate MiB/s",
            aggregate,
            "MiB/s",
            "bare grpc.aio",
            bare_aggregate,
            higher_is_better=True,
            target_ratio=0.5,
        ),
        Metric("slowest follower", slowest, "s", "bare grpc.aio", bare_slowest),
        Metric("server peak RSS", peak / MiB, "MiB", "bare grpc.aio", bare_peak / MiB),
    ]
    result.notes.append(
        f"all {count} followers share one AsyncClient (one HTTP/2 connection), as do the bare streams"
    )
    return result
