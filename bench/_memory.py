"""Case 4, memory: server peak RSS under a writer with many followers, and the cost of an idle running job."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from _context import Context, RssSampler, Sizes
from _followers import Followed, Tally, follow_job
from _harness import (
    BenchError,
    ServerProcess,
    children_map,
    cpu_seconds,
    descendants,
    pss_bytes,
    reset_peak_rss,
)
from _report import CaseResult, Metric, MiB

from jobworker.client import AsyncClient, JobState

_T = TypeVar("_T")
PEAK_RSS_LIMIT_MIB = 100
IDLE_JOB_PSS_LIMIT_KIB = 1024
_START_CONCURRENCY = 4
_STOP_CONCURRENCY = 50


async def _bounded(limit: int, calls: list[Callable[[], Awaitable[_T]]]) -> list[_T]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[_T]]) -> _T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def _peak_under_followers(
    server: ServerProcess, client: AsyncClient, sizes: Sizes, result: CaseResult
) -> None:
    size, count, window = sizes.memory_bytes, sizes.memory_followers, sizes.memory_window_seconds
    reset_peak_rss(server.pid)
    before = server.sample()
    with RssSampler(server.pid) as sampler:
        t0 = time.perf_counter()
        job = await client.start("head", ["-c", str(size), "/dev/zero"])
        tally = Tally()
        tasks = [asyncio.create_task(follow_job(client, job.id, t0, tally)) for _ in range(count)]
        done, pending = await asyncio.wait(tasks, timeout=window)
        elapsed = time.perf_counter() - t0
        read = tally.nbytes
        status = await client.status(job.id)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not status.state.is_final:
            await client.stop(job.id, grace_seconds=1)
    peak = max(server.sample().peak_rss_bytes, sampler.peak[1])
    finished: list[Followed] = [task.result() for task in done]
    written = status.stdout_bytes + status.stderr_bytes
    result.data["followers_peak"] = {
        "job_bytes": size,
        "followers": count,
        "window_s": window,
        "elapsed_s": elapsed,
        "job_bytes_written_in_window": written,
        "job_ended_in_window": status.state.is_final,
        "followers_finished": len(finished),
        "bytes_read_by_followers": read,
        "followers_aggregate_mib_s": read / MiB / elapsed,
        "server_rss_before_mib": before.rss_bytes / MiB,
        "server_peak_rss_mib": peak / MiB,
        "peak_at_s": sampler.peak[0],
        "server_rss_series_mib": sampler.series(),
    }
    result.metrics.append(
        Metric(f"server peak RSS, {count} followers", peak / MiB, "MiB", limit=PEAK_RSS_LIMIT_MIB)
    )
    if len(finished) < count:
        result.notes.append(
            f"{count} followers of a {size // MiB} MiB job ran for a {window:g} s window: the job wrote"
            f" {written // MiB} MiB, the followers read {read // MiB} MiB between them; reading it all"
            f" ({count * size // MiB} MiB) would take longer than the whole bench budget; the peak came at"
            f" {sampler.peak[0]:.1f} s"
        )


def job_processes(server_pid: int) -> dict[str, list[int]]:
    """The server's processes by role: fork server, and per job its holder, init and command (with children).

    The tree is jw-server -> fork server -> holder -> init -> command (README, Process model); a holder the
    server launched directly, without the fork server, is its child.
    """
    children = children_map()
    roles: dict[str, list[int]] = {"fork server": [], "holder": [], "init": [], "command": []}
    for child in children.get(server_pid, []):
        try:
            fork_server = b"--fork-server" in Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        holders = children.get(child, []) if fork_server else [child]
        if fork_server:
            roles["fork server"].append(child)
        roles["holder"] += holders
        for holder in holders:
            for init in children.get(holder, []):
                roles["init"].append(init)
                roles["command"] += descendants(init, children)
    return roles


async def _idle_jobs(server: ServerProcess, client: AsyncClient, sizes: Sizes, result: CaseResult) -> None:
    count = sizes.idle_jobs
    before = server.sample()
    cgroups_before = server.cgroups.count()
    t0 = time.perf_counter()
    jobs = await _bounded(_START_CONCURRENCY, [lambda: client.start("sleep", ["3600"]) for _ in range(count)])
    start_seconds = time.perf_counter() - t0
    await asyncio.sleep(1)  # let the copy-on-write faults of the fresh forks settle before measuring
    after = server.sample()
    roles = job_processes(server.pid)
    pss_kib = {role: pss_bytes(pids) / count / 1024 for role, pids in roles.items()}
    job_kib = pss_kib["holder"] + pss_kib["init"] + pss_kib["command"]
    cgroups = server.cgroups.count() - cgroups_before
    stopped = await _bounded(
        _STOP_CONCURRENCY, [functools.partial(client.stop, job.id, grace_seconds=2) for job in jobs]
    )
    not_stopped = [j.id for j in stopped if j.state is not JobState.STOPPED]
    settled = server.sample()
    per_job_kib = (after.rss_bytes - before.rss_bytes) / count / 1024
    result.data["idle_jobs"] = {
        "jobs": count,
        "start_seconds": start_seconds,
        "server_rss_before_mib": before.rss_bytes / MiB,
        "server_rss_with_jobs_mib": after.rss_bytes / MiB,
        "server_rss_after_stop_mib": settled.rss_bytes / MiB,
        "server_rss_per_job_kib": per_job_kib,
        "server_fds_per_job": (after.fds - before.fds) / count,
        "server_threads_with_jobs": after.threads,
        "job_processes": {role: len(pids) for role, pids in roles.items()},
        "pss_per_job_kib": pss_kib,
        "fork_server_pss_kib": pss_kib["fork server"] * count,
        "job_cgroup_dirs": cgroups,
        "jobs_not_stopped": len(not_stopped),
    }
    result.metrics += [
        Metric(f"server RSS per idle job ({count} sleep jobs)", per_job_kib, "KiB"),
        Metric(
            "host memory per idle job (PSS: holder + init + sleep)",
            job_kib,
            "KiB",
            limit=IDLE_JOB_PSS_LIMIT_KIB,
        ),
        *(Metric(f"  of which {role}", pss_kib[role], "KiB") for role in ("holder", "init", "command")),
        Metric("server fds per idle job", (after.fds - before.fds) / count, "fds"),
    ]


async def run(ctx: Context) -> CaseResult:
    """Measure the per-job cost of idle running jobs, then peak RSS under followers, on a fresh server."""
    result = CaseResult("memory", "4. memory")
    workdir = ctx.workdir / "memory"
    workdir.mkdir()
    # A server of its own: the heap the other cases grew would hide what idle jobs and followers cost.
    server = ServerProcess(workdir, ctx.certs, max_jobs=ctx.sizes.idle_jobs + 100)
    try:
        async with AsyncClient(server.config()) as client:
            await _idle_jobs(server, client, ctx.sizes, result)
            await _peak_under_followers(server, client, ctx.sizes, result)
        result.data["cpu_seconds_own_server"] = cpu_seconds(server.pid)[0]
    finally:
        status = server.stop()
    result.data["server_exit_status"] = status
    if status != 0:
        raise BenchError(f"the memory case's jw-server exited with {status} on SIGTERM")
    return result
