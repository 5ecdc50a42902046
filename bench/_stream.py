"""Case 2, one follower: MiB/s of a job's output followed live from byte 0, vs pipe, bare gRPC, docker."""

from __future__ import annotations

import statistics
import subprocess
import time

import grpc.aio
from _context import Context
from _followers import bare_streams, docker_logs_seconds, follow_job, follow_stub, pipe_seconds
from _harness import BenchError, cpu_seconds
from _report import CaseResult, GiB, Metric, MiB

# Message sizes of the bare stream: jw-server's small one (64 KiB, for a follower that keeps up) first,
# then larger ones, up to the 1 MiB it sends a follower that is behind, near where grpc's Python streaming
# is known to peak on loopback.
BARE_CHUNKS = (64 * 1024, 256 * 1024, 1 << 20)
JW_CHUNK = BARE_CHUNKS[0]
_SWEEP_BYTES = 256 * MiB
FOLLOWER_TARGET = 0.9
PIPE_TARGET = 0.5
CPU_TARGET = 1.3


def size_label(nbytes: int) -> str:
    """1 GiB, 256 MiB, 64 KiB."""
    if nbytes >= GiB:
        return f"{nbytes // GiB} GiB"
    return f"{nbytes // MiB} MiB" if nbytes >= MiB else f"{nbytes // 1024} KiB"


async def _jobworker_once(ctx: Context, size: int) -> tuple[float, float]:
    """(MiB/s, server CPU seconds) of one job of `size` bytes followed from its start to its end."""
    cpu0 = cpu_seconds(ctx.server.pid)[0]
    t0 = time.perf_counter()
    job = await ctx.client.start("head", ["-c", str(size), "/dev/zero"])
    followed = await follow_job(ctx.client, job.id, t0)
    if followed.nbytes != size:
        raise BenchError(f"the follower got {followed.nbytes} bytes, expected {size}")
    return size / MiB / followed.seconds, cpu_seconds(ctx.server.pid)[0] - cpu0


async def _stub_once(ctx: Context, channel: grpc.aio.Channel, size: int) -> tuple[float, float]:
    """_jobworker_once with the generated stub as the follower: what the server gives, no client library."""
    cpu0 = cpu_seconds(ctx.server.pid)[0]
    t0 = time.perf_counter()
    job = await ctx.client.start("head", ["-c", str(size), "/dev/zero"])
    followed = await follow_stub(channel, job.id, t0)
    if followed.nbytes != size:
        raise BenchError(f"the stub follower got {followed.nbytes} bytes, expected {size}")
    return size / MiB / followed.seconds, cpu_seconds(ctx.server.pid)[0] - cpu0


async def bare_once(ctx: Context, size: int, chunk: int, count: int = 1) -> tuple[float, float]:
    """(aggregate MiB/s, server CPU s) of `count` bare streams of `size` bytes in `chunk`-byte messages."""
    cpu0 = cpu_seconds(ctx.bare.pid)[0]
    channel = ctx.bare.channel()
    try:
        followed = await bare_streams(channel, size, count, chunk)
    finally:
        await channel.close()
    short = [f.nbytes for f in followed if f.nbytes != size]
    if short:
        raise BenchError(f"{len(short)} bare streams got fewer than {size} bytes (e.g. {short[0]})")
    return size * count / MiB / max(f.seconds for f in followed), cpu_seconds(ctx.bare.pid)[0] - cpu0


async def best_bare_chunk(ctx: Context) -> int:
    """The bare stream's fastest message size: the one-follower case's finding, or a short sweep."""
    if ctx.bare_best_chunk is None:
        rates = {chunk: (await bare_once(ctx, _SWEEP_BYTES, chunk))[0] for chunk in BARE_CHUNKS}
        ctx.bare_best_chunk = max(rates, key=rates.__getitem__)
    return ctx.bare_best_chunk


async def run(ctx: Context) -> CaseResult:
    """Measure single-follower throughput and its baselines, interleaved, median of a few rounds."""
    size, rounds = ctx.sizes.stream_bytes, ctx.sizes.stream_rounds
    result = CaseResult("stream", f"2. one follower ({size_label(size)} of head -c /dev/zero)")
    contenders = ["jobworker", "jobworker_stub", *(f"bare_{chunk}" for chunk in BARE_CHUNKS), "pipe"]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    stub_channel = ctx.certs.channel(ctx.server.address)
    try:
        # Interleaved rounds, so that a burst of other work on the machine hits every contender alike.
        for _ in range(rounds):
            runs["jobworker"].append(await _jobworker_once(ctx, size))
            runs["jobworker_stub"].append(await _stub_once(ctx, stub_channel, size))
            for chunk in BARE_CHUNKS:
                runs[f"bare_{chunk}"].append(await bare_once(ctx, size, chunk))
            runs["pipe"].append((size / MiB / pipe_seconds(size), 0.0))
    finally:
        await stub_channel.close()
    rate = {name: statistics.median(r for r, _ in runs[name]) for name in contenders}
    gib = size / GiB
    cpu = {name: statistics.median(c for _, c in runs[name]) / gib for name in contenders[:-1]}
    best = max(BARE_CHUNKS, key=lambda chunk: rate[f"bare_{chunk}"])
    ctx.bare_best_chunk = best
    jw = rate["jobworker"]
    result.data.update(
        bytes=size,
        rounds=rounds,
        bare_chunks=list(BARE_CHUNKS),
        bare_best_chunk=best,
        mib_s_median=rate,
        mib_s={name: [round(r, 1) for r, _ in values] for name, values in runs.items()},
        server_cpu_s_per_gib=cpu,
    )
    best_label = f"bare grpc.aio best ({size_label(best)})"
    jw_label = f"bare grpc.aio {size_label(JW_CHUNK)}"
    result.metrics += [
        Metric(
            "follower MiB/s",
            jw,
            "MiB/s",
            best_label,
            rate[f"bare_{best}"],
            higher_is_better=True,
            target_ratio=FOLLOWER_TARGET,
        ),
        Metric(
            "follower MiB/s",
            jw,
            "MiB/s",
            "head | cat",
            rate["pipe"],
            higher_is_better=True,
            target_ratio=PIPE_TARGET,
        ),
        Metric(
            "server CPU per GiB streamed",
            cpu["jobworker"],
            "CPU-s",
            best_label,
            cpu[f"bare_{best}"],
            target_ratio=CPU_TARGET,
        ),
    ]
    # Which side of the wire a shortfall is on: the same server followed by the bare stub.
    result.metrics.append(
        Metric(
            "follower MiB/s, stub (no client library)",
            rate["jobworker_stub"],
            "MiB/s",
            best_label,
            rate[f"bare_{best}"],
            higher_is_better=True,
        )
    )
    if best != JW_CHUNK:
        # jw-server's own message size: what the follower would reach with nothing but the spool removed.
        result.metrics += [
            Metric("follower MiB/s", jw, "MiB/s", jw_label, rate[f"bare_{JW_CHUNK}"], higher_is_better=True),
            Metric(
                "server CPU per GiB streamed", cpu["jobworker"], "CPU-s", jw_label, cpu[f"bare_{JW_CHUNK}"]
            ),
        ]
    sweep = ", ".join(f"{size_label(c)} {rate[f'bare_{c}']:.0f}" for c in BARE_CHUNKS)
    result.notes += [
        f"median of {rounds} interleaved rounds; the jobworker time runs from the Start call to the"
        " StreamEnd",
        f"bare grpc.aio message sizes (MiB/s): {sweep}; the best, {size_label(best)}, is the target's"
        f" baseline; jw-server sends {size_label(JW_CHUNK)} messages to a follower that keeps up, up to"
        " 1 MiB to one that is behind (while its budget of large reads allows)",
        "the stub row follows the job with the generated stub, as the bare streams are read: the gap"
        " between it and the follower row is the client library's",
        "server CPU is jw-server's own (user + system, all threads); the job's holder writes the spool in a"
        " process of its own, not counted",
    ]
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
        f"docker logs -f reads {size_label(docker_size)} through the {ctx.docker.log_driver} log driver,"
        " timed from docker run -d (a larger size only makes it take longer)"
    )
    return result
