"""What a benchmark case gets: the sizes to run at, the servers, the client and the Docker baseline image."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from _harness import BENCH_DIR, BenchError, Certs, Docker, ServerProcess, sample_process
from _report import GiB, MiB

from jobworker.client import AsyncClient, Limits

# What "namespaces and limits" means in the start and churn cases: every limit the v1 and v2 drivers can
# set without knowing the block device.
JOB_LIMITS = Limits(cpus=1.0, memory_bytes=64 * MiB, pids=64)


@dataclass(frozen=True)
class Sizes:
    """How much work each case does; the defaults are the issue's, QUICK is for trying the harness."""

    starts: int = 200
    spaced_starts: int = 50
    docker_starts: int = 20
    stream_bytes: int = GiB
    stream_rounds: int = 3
    docker_stream_bytes: int = 128 * MiB
    fanout_followers: int = 100
    fanout_bytes: int = 256 * MiB
    memory_bytes: int = GiB
    memory_followers: int = 100
    memory_window_seconds: float = 30.0
    idle_jobs: int = 1000
    churn_jobs: int = 1000
    restart_jobs: int = 200
    logs_seek_bytes: int = 10 * GiB


QUICK = Sizes(
    starts=40,
    spaced_starts=10,
    docker_starts=3,
    stream_bytes=128 * MiB,
    stream_rounds=1,
    docker_stream_bytes=32 * MiB,
    fanout_followers=100,
    fanout_bytes=4 * MiB,
    memory_bytes=256 * MiB,
    memory_followers=100,
    memory_window_seconds=5.0,
    idle_jobs=100,
    churn_jobs=200,
    restart_jobs=40,
    logs_seek_bytes=512 * MiB,
)


class BareServer:
    """The `_bare_server.py` subprocess: grpc.aio + mTLS 1.3 with nothing behind the stream."""

    def __init__(self, certs: Certs) -> None:
        self.certs = certs
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "_bare_server.py"),
                str(certs.server_cert),
                str(certs.server_key),
                str(certs.ca),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise BenchError(f"the bare grpc server did not start (said {line!r})")
        self.address = f"127.0.0.1:{line}"
        self.pid = self.process.pid

    def channel(self) -> grpc.aio.Channel:
        """A new grpc.aio channel to it with the bench's client certificate (call inside the loop)."""
        return self.certs.channel(self.address)

    def stop(self) -> None:
        """SIGTERM and reap."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RssSampler:
    """Samples a process's RSS from a thread (the event loop is busy streaming) every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = sample_process(self.pid).rss_bytes
            except (OSError, KeyError):
                return
            self.samples.append((time.perf_counter() - self._t0, rss))
            self._stop.wait(self.interval)

    @property
    def peak(self) -> tuple[float, int]:
        """(seconds since start, bytes) of the highest sample."""
        return max(self.samples, key=lambda s: s[1], default=(0.0, 0))

    def series(self, points: int = 200) -> list[tuple[float, float]]:
        """At most `points` (seconds, MiB) samples, evenly thinned, for the JSON file."""
        step = max(1, len(self.samples) // points)
        return [(round(t, 2), round(rss / MiB, 1)) for t, rss in self.samples[::step]]


@dataclass
class Context:
    """Everything a case needs; built once by run.py inside the event loop."""

    sizes: Sizes
    workdir: Path
    certs: Certs
    server: ServerProcess
    bare: BareServer
    client: AsyncClient
    docker: Docker
    # The bare stream's fastest message size, once the one-follower case (or fan-out's own sweep) found it.
    bare_best_chunk: int | None = None
