"""Case 6, restart: jobs outlive kill -9 of jw-server; how fast the next one reattaches, what is lost."""

from __future__ import annotations

import asyncio
import time

from _context import Context
from _harness import BenchError, ServerProcess
from _report import CaseResult, Metric, MiB

from jobworker.client import AsyncClient, JobState, OutputChunk, OutputStream, StreamEnd

# Each writer job writes this much at this rate, and reports its longest write() on stderr at the end.
_WRITER_BYTES = 60 * MiB
_WRITER_RATE = 10 * MiB
_WRITER = f"""
import os, sys, time
block, total, rate = 64 * 1024, {_WRITER_BYTES}, {_WRITER_RATE}
start, longest, done = time.monotonic(), 0.0, 0
while done < total:
    data = (b"%015d\\n" % done) * (block // 16)
    t = time.monotonic()
    os.write(1, data)
    longest = max(longest, time.monotonic() - t)
    done += len(data)
    ahead = done / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
sys.stderr.write(f"longest write {{longest:.6f}}\\n")
"""


def _expected(size: int) -> bytes:
    block = 64 * 1024
    return b"".join((b"%015d\n" % done) * (block // 16) for done in range(0, size, block))


async def _read_all(client: AsyncClient, job_id: str) -> tuple[bytes, bytes, StreamEnd | None]:
    out, err, end = bytearray(), bytearray(), None
    async for event in client.stream(job_id):
        if isinstance(event, OutputChunk):
            (out if event.stream is OutputStream.STDOUT else err).extend(event.data)
        elif isinstance(event, StreamEnd):
            end = event
    return bytes(out), bytes(err), end


async def _reattach(ctx: Context, workdir_name: str, jobs: int) -> tuple[float, float]:
    """Start `jobs` idle jobs, kill -9 the server, start the next: (reattach s, start to listening s)."""
    workdir = ctx.workdir / workdir_name
    first = ServerProcess(workdir, ctx.certs, max_jobs=jobs + 50)
    try:
        async with AsyncClient(first.config()) as client:
            for _ in range(jobs):
                await client.start("sleep", ["600"])
    finally:
        first.kill()
    t0 = time.perf_counter()
    second = first.restarted()
    listening = time.perf_counter() - t0
    try:
        line = next(e for e in second.log_entries() if e.get("msg") == "reattached jobs")
        if line.get("running") != jobs:
            raise BenchError(f"reattached {line.get('running')} of {jobs} running jobs")
        async with AsyncClient(second.config()) as client:
            running = [j for j in await client.list() if j.state is JobState.RUNNING]
            if len(running) != jobs:
                raise BenchError(f"{len(running)} of {jobs} jobs RUNNING after the restart")
    finally:
        if second.stop() != 0:
            raise BenchError("the restarted jw-server did not stop cleanly")
    return float(line["seconds"]), listening


async def _writers(ctx: Context, writers: int) -> tuple[int, float, float]:
    """`writers` jobs at 10 MiB/s each across a kill -9: (bytes lost, longest write stall s, outage s)."""
    workdir = ctx.workdir / "restart-writers"
    first = ServerProcess(workdir, ctx.certs, max_jobs=writers + 10)
    ids: list[str] = []
    try:
        async with AsyncClient(first.config()) as client:
            for _ in range(writers):
                ids.append((await client.start("python3", ["-c", _WRITER])).id)
        await asyncio.sleep(1.5)
    finally:
        first.kill()
    outage_t0 = time.perf_counter()
    await asyncio.sleep(1.0)  # the outage: nobody reads the jobs' pipes but their holders
    second = first.restarted()
    outage = time.perf_counter() - outage_t0
    lost, stall = 0, 0.0
    expected = _expected(_WRITER_BYTES)
    try:
        async with AsyncClient(second.config()) as client:
            for job_id in ids:
                out, err, end = await _read_all(client, job_id)
                if end is None or end.job is None or end.job.state is not JobState.EXITED:
                    raise BenchError(f"writer {job_id} did not exit: {end}")
                lost += len(expected) - len(out) if out == expected[: len(out)] else len(expected)
                stall = max(stall, float(err.decode().rsplit(" ", 1)[1]))
    finally:
        second.stop()
    return lost, stall, outage


async def run(ctx: Context) -> CaseResult:
    """Reattach time for many running jobs; bytes lost and write stalls of busy jobs across kill -9."""
    result = CaseResult("restart", "6. restart (kill -9 of jw-server, then a new one on the same state dir)")
    jobs = ctx.sizes.restart_jobs
    writers = 10
    reattach_s, listening_s = await _reattach(ctx, "restart-idle", jobs)
    lost, stall, outage = await _writers(ctx, writers)
    result.data.update(
        running_jobs=jobs,
        reattach_seconds=reattach_s,
        start_to_listening_seconds=listening_s,
        writers=writers,
        writer_bytes=_WRITER_BYTES,
        bytes_lost=lost,
        longest_write_stall_seconds=stall,
        outage_seconds=outage,
    )
    result.metrics += [
        Metric(f"reattach {jobs} running jobs", reattach_s, "s", limit=1.0),
        Metric("restart to listening", listening_s, "s"),
        Metric(f"bytes lost, {writers} jobs at 10 MiB/s", lost, "bytes", limit=0),
        Metric("longest write() stall during the outage", stall * 1000, "ms"),
    ]
    result.notes.append(
        f"outage {outage:.1f} s (server killed, next one started); each writer wrote "
        f"{_WRITER_BYTES // MiB} MiB at {_WRITER_RATE // MiB} MiB/s and checked its own write() times"
    )
    return result
