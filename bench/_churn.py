"""Case 5, churn: jobs run back to back; jobs/s, and no growth of fds, threads, cgroups or RSS."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from _context import JOB_LIMITS, Context
from _harness import BenchError, ProcSample, cpu_seconds
from _report import CaseResult, Metric, MiB

from jobworker.client import JobState, StreamEnd

_BATCH = 100
JOBS_PER_S_TARGET = 300


async def _run_one(ctx: Context) -> None:
    job = await ctx.client.start("/bin/true", limits=JOB_LIMITS)
    final = None
    async for event in ctx.client.stream(job.id):
        if isinstance(event, StreamEnd):
            final = event.job
    if final is None or final.state is not JobState.EXITED:
        raise BenchError(f"churn job {job.id} did not exit: {final}")


async def _settled_sample(ctx: Context) -> ProcSample:
    """The server's sample, its fd count the least of a few taken 5 ms apart: a descriptor open only for a
    moment (the last job's record being replaced, a retention deletion) is not one that stays."""
    samples = []
    for _ in range(5):
        samples.append(ctx.server.sample())
        await asyncio.sleep(0.005)
    return dataclasses.replace(samples[-1], fds=min(sample.fds for sample in samples))


async def run(ctx: Context) -> CaseResult:
    """Run the churn and compare the server after the first and the last hundred jobs."""
    count = ctx.sizes.churn_jobs
    result = CaseResult("churn", f"5. churn ({count} jobs of /bin/true, back to back)")
    samples: list[tuple[int, ProcSample, int]] = []
    cpu0 = cpu_seconds(ctx.server.pid)[0]
    t0 = time.perf_counter()
    for i in range(1, count + 1):
        await _run_one(ctx)
        if i % _BATCH == 0:
            samples.append((i, await _settled_sample(ctx), ctx.server.cgroups.count()))
    seconds = time.perf_counter() - t0
    # On 2 cores, 300 jobs/s leaves 6.7 ms of CPU per job for everything: this is the server's share.
    server_ms = (cpu_seconds(ctx.server.pid)[0] - cpu0) * 1000 / count
    (first_n, first, first_cg), (last_n, last, last_cg) = samples[0], samples[-1]
    rss_growth = (last.rss_bytes - first.rss_bytes) / MiB
    result.data.update(
        jobs=count,
        seconds=seconds,
        jobs_per_s=count / seconds,
        server_cpu_ms_per_job=server_ms,
        samples=[
            {"after_jobs": n, "rss_mib": s.rss_bytes / MiB, "fds": s.fds, "threads": s.threads, "cgroups": cg}
            for n, s, cg in samples
        ],
        rss_growth_per_job_kib=rss_growth * 1024 / max(1, last_n - first_n),
    )
    between = f"job {first_n} -> {last_n}"
    result.metrics += [
        Metric("jobs/s", count / seconds, "jobs/s", higher_is_better=True, limit=JOBS_PER_S_TARGET),
        Metric("server CPU per job (Start, stream to the end)", server_ms, "ms"),
        Metric(f"fd growth ({between})", last.fds - first.fds, "fds", limit=0),
        Metric(f"thread growth ({between})", last.threads - first.threads, "threads", limit=0),
        Metric(f"cgroup growth ({between})", last_cg - first_cg, "dirs", limit=0),
        Metric(f"RSS growth ({between})", rss_growth, "MiB", limit=0),
    ]
    result.notes.append(
        f"RSS grew {rss_growth * 1024 / max(1, last_n - first_n):.1f} KiB per job between job {first_n} and"
        f" job {last_n}; {last_cg} job cgroup directories and {last.fds} server fds after the last job"
    )
    return result
