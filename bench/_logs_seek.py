"""Case 7, logs by position and time: the first byte of `--tail 100` and `--since` on a 10 GiB spool.

The spool is built directly with the holder's writer (_spoolfile.SpoolWriter, the same records and index a
job's holder writes), under a job record of an ended job, and a jw-server started on that state directory
serves it: 10 GiB through a real job would take minutes. Records are 256 KiB of 64-byte lines, one every
100 ms of (made-up) arrival time. The file's pages are dropped from the page cache (posix_fadvise, this file
only) before the first call of each kind, so the first figure is a cold read. The baseline is the first
byte of the same stream from byte 0, which needs no seek at all, and (once, cold) the tail without its index,
which reads the whole spool.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
import uuid
from pathlib import Path

from _context import Context
from _harness import BenchError, ServerProcess
from _report import CaseResult, GiB, Metric, MiB

from jobworker.client import AsyncClient, OutputChunk, OutputWindow
from jobworker.engine import JobState, JobStatus, records
from jobworker.engine import _spoolfile as fmt

_RECORD = 256 * 1024
_LINE = 64
_STEP_NS = 100_000_000
_T0_NS = 1_796_119_200 * 1_000_000_000  # 2026-12-01T10:00:00Z
_ROUNDS = 20
_SCAN_MAX = GiB


def _body() -> bytes:
    return (b"x" * (_LINE - 1) + b"\n") * (_RECORD // _LINE - 1)


def _build(job_dir: Path, size: int) -> tuple[int, int]:
    """Write the spool, its index and an ended job's record; (records, seconds it took)."""
    job_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    spool_fd = os.open(job_dir / records.SPOOL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    index_fd = os.open(job_dir / records.INDEX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    count = size // _RECORD
    try:
        writer = fmt.SpoolWriter(spool_fd, size + 1, index_fd)
        body = _body()
        for i in range(count):
            head = (b"record %010d " % i).ljust(_LINE - 1, b".") + b"\n"
            writer.append(fmt.STDOUT, head + body, _T0_NS + i * _STEP_NS)
        stored = writer.stdout_bytes
    finally:
        os.close(spool_fd)
        os.close(index_fd)
    started = _T0_NS / 1e9
    status = JobStatus(
        id=job_dir.name,
        owner="bench",
        command="bench-spool",
        args=(),
        cwd="/",
        state=JobState.EXITED,
        pid=1,
        started_at=started,
        ended_at=started + count * _STEP_NS / 1e9,
        exit_code=0,
        stdout_bytes=stored,
    )
    records.save(job_dir, status)
    return count, int(time.perf_counter() - t0)


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def _first_byte(
    client: AsyncClient, job_id: str, window: OutputWindow | None
) -> tuple[float, OutputChunk]:
    t0 = time.perf_counter()
    events = client.stream(job_id, follow=False, window=window)
    try:
        async for event in events:
            if isinstance(event, OutputChunk):
                return time.perf_counter() - t0, event
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    raise BenchError(f"no output for window {window}")


async def run(ctx: Context) -> CaseResult:
    """First-byte latency of tail and since against the first byte from offset 0, on one big spool."""
    size = ctx.sizes.logs_seek_bytes
    label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
    result = CaseResult("logs", f"7. jw logs --tail 100 / --since on a {label} spool (first byte)")
    workdir = ctx.workdir / "logs-seek"
    job_id = str(uuid.uuid4())
    job_dir = records.job_dir(workdir / "state", job_id)
    try:
        count, build_s = _build(job_dir, size)
        spool = job_dir / records.SPOOL
        server = ServerProcess(workdir, ctx.certs, max_jobs=10)
        try:
            async with AsyncClient(server.config()) as client:
                middle = (_T0_NS + count * _STEP_NS // 2) / 1e9
                since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(middle)) + "Z"
                cases = {
                    "from byte 0": None,
                    "tail 100": OutputWindow(tail_lines=100),
                    "since (middle)": OutputWindow(since=since),
                }
                seconds: dict[str, list[float]] = {}
                for name, window in cases.items():
                    _drop_cache(spool)
                    seconds[name] = []
                    for _ in range(_ROUNDS):
                        took, chunk = await _first_byte(client, job_id, window)
                        seconds[name].append(took)
                    _check(name, chunk, count)
                # The same reader without the index: what a scan of the whole spool costs (cold, at disk
                # speed: minutes for 10 GiB, so only at the --quick size).
                scan = None
                if size <= _SCAN_MAX:
                    index = job_dir / records.INDEX
                    index.rename(index.with_suffix(".off"))
                    _drop_cache(spool)
                    scan, chunk = await _first_byte(client, job_id, cases["tail 100"])
                    _check("tail 100", chunk, count)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(seconds["from byte 0"]) * 1000
    for name in ("tail 100", "since (middle)"):
        cold, warm = seconds[name][0] * 1000, statistics.median(seconds[name][1:]) * 1000
        result.metrics.append(
            Metric(f"first byte, {name}, cold", cold, "ms", "from byte 0", base, limit=50.0)
        )
        result.metrics.append(
            Metric(f"first byte, {name}, warm p50", warm, "ms", "from byte 0", base, limit=50.0)
        )
    if scan is not None:
        result.metrics.append(
            Metric(
                "first byte, tail 100, cold",
                seconds["tail 100"][0] * 1000,
                "ms",
                "the same without the index (a scan)",
                scan * 1000,
            )
        )
    else:
        result.notes.append("the scan without the index runs at the --quick size only (it reads the spool)")
    result.data.update(
        scan_without_index_ms=None if scan is None else round(scan * 1000, 1),
        spool_bytes=size,
        records=count,
        build_seconds=build_s,
        first_byte_ms={k: [round(s * 1000, 2) for s in v] for k, v in seconds.items()},
    )
    result.notes.append(
        f"spool built with the holder's SpoolWriter in {build_s} s ({count} records of 256 KiB, one per"
        " 100 ms of arrival time), served by a jw-server from its state dir; cold = first call after"
        f" dropping the file's cached pages, warm = median of the next {_ROUNDS - 1}"
    )
    return result


def _check(name: str, chunk: OutputChunk, count: int) -> None:
    """The first chunk is where the window starts, not just fast."""
    if name == "tail 100" and chunk.offset != count * _RECORD - 100 * _LINE:
        raise BenchError(f"tail 100 started at {chunk.offset}, expected {count * _RECORD - 100 * _LINE}")
    if name == "since (middle)":
        middle = _T0_NS + count * _STEP_NS // 2
        if chunk.time_ns is None or not middle - 1_000_000_000 <= chunk.time_ns <= middle + _STEP_NS:
            raise BenchError(f"since started at a record of time {chunk.time_ns}, expected about {middle}")
