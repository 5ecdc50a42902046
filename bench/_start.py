"""Case 1, start latency: Start RPC round trip and time to a final status, vs unshare and docker run."""

from __future__ import annotations

import asyncio
import subprocess
import time

from _context import JOB_LIMITS, Context
from _followers import docker_run_seconds
from _harness import BenchError, ServerProcess
from _report import CaseResult, Metric, summary_ms

from jobworker.client import AsyncClient, JobState, StreamEnd

_WARMUP = 5
UNSHARE = ("unshare", "-p", "-f", "--mount-proc", "-n", "true")
# The same with a user namespace, the closer match to a sandboxed job (issue 17's baseline).
UNSHARE_USERNS = ("unshare", "-U", "-r", "-p", "-f", "--mount-proc", "-n", "true")
SPACED_GAP_SECONDS = 0.1


async def _jobworker(ctx: Context, count: int, gap: float = 0.0) -> tuple[list[float], list[float], str]:
    """(Start round trips, times from Start to the final status, a job id) for `count` jobs of /bin/true."""
    starts: list[float] = []
    finals: list[float] = []
    job_id = ""
    for i in range(_WARMUP + count):
        await asyncio.sleep(gap)
        t0 = time.perf_counter()
        job = await ctx.client.start("/bin/true", limits=JOB_LIMITS)
        t1 = time.perf_counter()
        job_id = job.id
        final = None
        # The stream's end carries the final status and comes as soon as the job has ended: no polling.
        async for event in ctx.client.stream(job.id):
            if isinstance(event, StreamEnd):
                final = event.job
        t2 = time.perf_counter()
        if final is None or final.state is not JobState.EXITED or final.exit_code != 0:
            raise BenchError(f"/bin/true did not exit 0: {final}")
        if i >= _WARMUP:
            starts.append(t1 - t0)
            finals.append(t2 - t0)
    return starts, finals, job_id


def _unshare(count: int, gap: float = 0.0, command: tuple[str, ...] = UNSHARE) -> list[float]:
    times: list[float] = []
    for i in range(_WARMUP + count):
        time.sleep(gap)
        t0 = time.perf_counter()
        subprocess.run(command, check=True, timeout=30)
        if i >= _WARMUP:
            times.append(time.perf_counter() - t0)
    return times


_ROUNDS = 10


async def _sandbox_cost(ctx: Context, result: CaseResult) -> None:
    """What strict isolation (the default) adds: the same starts on a server with --isolation none.

    The two servers take turns in rounds, so load from elsewhere on the machine falls on both alike.
    """
    n = max(ctx.sizes.starts // _ROUNDS, 1)
    server = ServerProcess(
        ctx.workdir / "isolation-none", ctx.certs, max_jobs=100, extra_args=["--isolation=none"]
    )
    strict_starts: list[float] = []
    none_starts: list[float] = []
    try:
        async with AsyncClient(server.config()) as client:
            plain = Context(ctx.sizes, ctx.workdir, ctx.certs, server, ctx.bare, client, ctx.docker)
            for _ in range(_ROUNDS):
                strict_starts += (await _jobworker(ctx, n))[0]
                none_starts += (await _jobworker(plain, n))[0]
    finally:
        server.stop()
    strict, none = summary_ms(strict_starts), summary_ms(none_starts)
    userns = summary_ms(_unshare(ctx.sizes.starts, command=UNSHARE_USERNS))
    result.data.update(
        jobworker_start_strict_rounds=strict, jobworker_start_isolation_none=none, unshare_userns=userns
    )
    result.metrics += [
        Metric(
            "Start RPC p50, strict vs --isolation none (rounds)",
            strict["p50_ms"],
            "ms",
            "none",
            none["p50_ms"],
        ),
        Metric("Start RPC p50 vs unshare -U -r", strict["p50_ms"], "ms", "unshare -U", userns["p50_ms"]),
    ]
    result.notes.append(
        f"the sandbox adds {strict['p50_ms'] - none['p50_ms']:+.2f} ms to the Start RPC p50 "
        f"(budget: +1.5 ms), {_ROUNDS} alternating rounds of {n} starts each"
    )


async def run(ctx: Context) -> CaseResult:
    """Measure start latency of jobworker and its baselines."""
    n = ctx.sizes.starts
    result = CaseResult("start", f"1. start latency ({n} x /bin/true, namespaces + limits)")
    starts, finals, job_id = await _jobworker(ctx, n)
    unshare = _unshare(n)
    jw_start, jw_final, bare = summary_ms(starts), summary_ms(finals), summary_ms(unshare)
    result.data.update(jobworker_start=jw_start, jobworker_final=jw_final, unshare=bare)
    base = "unshare"
    result.metrics += [
        Metric("Start RPC p50", jw_start["p50_ms"], "ms", base, bare["p50_ms"], target_ratio=2.0),
        Metric("Start RPC p99", jw_start["p99_ms"], "ms", base, bare["p99_ms"]),
        Metric("start to final status p50", jw_final["p50_ms"], "ms", base, bare["p50_ms"]),
        Metric("start to final status p99", jw_final["p99_ms"], "ms", base, bare["p99_ms"]),
    ]
    # The part of a Start that is only the RPC: a GetStatus round trip on the same warm channel.
    rpc: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await ctx.client.status(job_id)
        rpc.append(time.perf_counter() - t0)
    jw_rpc = summary_ms(rpc)
    result.data["jobworker_status_rpc"] = jw_rpc
    result.metrics.append(Metric("GetStatus RPC p50 (the RPC floor)", jw_rpc["p50_ms"], "ms"))
    # Back to back, each cgroup v1 migration finds the kernel's RCU sync from the previous one still active;
    # jobs that arrive apart pay a full grace period each. Both patterns are real.
    spaced, gap = ctx.sizes.spaced_starts, SPACED_GAP_SECONDS
    spaced_starts, _, _ = await _jobworker(ctx, spaced, gap)
    spaced_unshare = _unshare(spaced, gap)
    jw_spaced, bare_spaced = summary_ms(spaced_starts), summary_ms(spaced_unshare)
    result.data.update(gap_s=gap, jobworker_start_spaced=jw_spaced, unshare_spaced=bare_spaced)
    result.metrics.append(
        Metric(
            f"Start RPC p50, {spaced} jobs {gap * 1000:.0f} ms apart",
            jw_spaced["p50_ms"],
            "ms",
            base,
            bare_spaced["p50_ms"],
            target_ratio=2.0,
        )
    )
    result.notes.append(
        "the unshare baseline is a whole run (spawn to exit), so it bounds both the start and the final rows"
    )
    await _sandbox_cost(ctx, result)
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
        Metric("Start RPC p50", jw_start["p50_ms"], "ms", "docker run", dock["p50_ms"]),
        Metric("start to final status p50", jw_final["p50_ms"], "ms", "docker run", dock["p50_ms"]),
    ]
    result.notes.append(
        f"docker run: {ctx.sizes.docker_starts} runs of {image} (--rm --memory 64m, entrypoint true),"
        f" Docker {ctx.docker.version}"
    )
    return result
