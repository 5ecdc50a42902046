"""Case 2, one follower: MiB/s of a job's output followed live from byte 0, vs pipe, bare gRPC, docker."""

from __future__ import annotations

import statistics
import subprocess
import time

from _context import Context
from _followers import bare_streams, docker_logs_seconds, follow_job, pipe_seconds
from _harness import BenchError, cpu_seconds
from _report import CaseResult, Metric, MiB


def _size_label(nbytes: int) -> str:
    return f"{nbytes // (1 << 30)} GiB" if nbytes >= 1 << 30 else f"{nbytes // MiB} MiB"


async def _jobworker_once(ctx: Context, size: int) -> tuple[float, float]:
    """(MiB/s, server CPU seconds) of one job of `size` bytes followed from its start to its end."""
    cpu0 = cpu_seconds(ctx.server.pid)[0]
    t0 = time.perf_counter()
    job = await ctx.client.start("head", ["-c", str(size), "/dev/zero"])
    followed = await follow_job(ctx.client, job.id, t0)
    if followed.nbytes != size:
        raise BenchError(f"the follower got {followed.nbytes} bytes, expected {size}")
    return size / MiB / followed.seconds, cpu_seconds(ctx.server.pid)[0] - cpu0


async def _bare_once(ctx: Context, size: int) -> tuple[float, float]:
    """(MiB/s, server CPU seconds) of one bare stream of `size` bytes."""
    cpu0 = cpu_seconds(ctx.bare.pid)[0]
    channel = ctx.bare.channel()
    try:
        (followed,) = await bare_streams(channel, size, 1)
    finally:
        await channel.close()
    return size / MiB / followed.seconds, cpu_seconds(ctx.bare.pid)[0] - cpu0


async def run(ctx: Context) -> CaseResult:
    """Measure single-follower throughput and its baselines, interleaved, median of a few rounds."""
    size, rounds = ctx.sizes.stream_bytes, ctx.sizes.stream_rounds
    result = CaseResult("stream", f"2. one follower ({_size_label(size)} of head -c /dev/zero)")
    runs: dict[str, list[tuple[float, float]]] = {"jobworker": [], "bare": [], "pipe": []}
    # Interleaved rounds, so that a burst of other work on the machine hits every contender alike.
    for _ in range(rounds):
        runs["jobworker"].append(await _jobworker_once(ctx, size))
        runs["bare"].append(await _bare_once(ctx, size))
        runs["pipe"].append((size / MiB / pipe_seconds(size), 0.0))
    jw, bare, pipe = (
        statistics.median(rate for rate, _ in runs[name]) for name in ("jobworker", "bare", "pipe")
    )
    gib = size / (1 << 30)
    result.data.update(
        bytes=size,
        rounds=rounds,
        mib_s={name: [round(rate, 1) for rate, _ in values] for name, values in runs.items()},
        server_cpu_s_per_gib={
            "jobworker": statistics.median(cpu for _, cpu in runs["jobworker"]) / gib,
            "bare": statistics.median(cpu for _, cpu in runs["bare"]) / gib,
        },
    )
    result.metrics += [
        Metric("follower MiB/s", jw, "MiB/s", "bare grpc.aio", bare, higher_is_better=True, target_ratio=0.5),
        Metric("follower MiB/s", jw, "MiB/s", "head | cat", pipe, higher_is_better=True),
    ]
    result.notes.append(
        f"median of {rounds} interleaved rounds; the jobworker time runs from the Start call to the StreamEnd"
    )
    if ctx.docker.image is None:
        result.notes.append(f"docker logs -f baseline skipped: {ctx.docker.skip_reason}")
        return result
    docker_size = min(size, ctx.sizes.docker_stream_bytes)
    try:
        seconds, got = docker_logs_seconds(ctx.docker.image, docker_size)
    except (subprocess.SubprocessError, OSError, BenchError) as exc:
        result.notes.append(f"docker logs -f baseline failed: {exc}")
        return result
    docker = docker_size / MiB / seconds
    result.data.update(docker_bytes=docker_size, docker_logs_mib_s=docker, docker_logs_bytes_out=got)
    result.metrics.append(
        Metric("follower MiB/s", jw, "MiB/s", "docker logs -f", docker, higher_is_better=True)
    )
    result.notes.append(
        f"docker logs -f reads {_size_label(docker_size)} through the {ctx.docker.log_driver} log driver,"
        " timed from docker run -d (a larger size only makes it take longer)"
    )
    return result
