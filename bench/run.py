"""jobworker benchmarks, side by side with the baselines users compare it to: `make bench` (as root).

Starts its own jw-server (127.0.0.1:0, temp state dir, fresh P-256 certificates, its own cgroup prefix) and a
bare grpc.aio server, runs the cases, prints a table and writes bench/results/bench-<UTC time>.json, .md and
.png (the chart needs matplotlib, the `bench` extra; without it the chart is skipped).

    .venv/bin/python bench/run.py [--quick] [--profile]
        [--only start|stream|fanout|memory|churn|restart|logs|fleet ...]
"""

from __future__ import annotations

# The client pins TLS 1.3 through an environment variable that grpc reads once, when it is first imported.
import jobworker.client  # noqa: F401

# isort: split

import argparse
import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _chart
import _churn
import _fanout
import _fleet
import _logs_seek
import _memory
import _restart
import _start
import _stream
from _context import QUICK, BareServer, Context, Sizes
from _harness import (
    BENCH_DIR,
    VENV_BIN,
    BenchError,
    Certs,
    Docker,
    ServerProcess,
    cpu_seconds,
    find_docker,
    load_average,
    machine_busy_seconds,
    machine_info,
    mint_certs,
    own_cpu_seconds,
)
from _report import CaseResult, render_markdown, render_table, write_json

from jobworker.client import AsyncClient

Case = Callable[[Context], Awaitable[CaseResult]]
# Run order; churn goes early so its RSS comparison is not blurred by the large streaming cases.
CASES: dict[str, Case] = {
    "start": _start.run,
    "churn": _churn.run,
    "stream": _stream.run,
    "fanout": _fanout.run,
    "memory": _memory.run,
    "restart": _restart.run,
    "logs": _logs_seek.run,
    "fleet": _fleet.run,
}
# Fan-out moves 25 GiB three times (jobworker and two bare sizes): minutes on a busy 2-core machine.
_CASE_TIMEOUT = 600.0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="jobworker benchmarks against their baselines"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the harness in a minute")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(CASES),
        metavar="NAME",
        help=f"run only this case (repeatable): {', '.join(CASES)}",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results file (default bench/results/bench-<time>.json)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy record server and bench during each case"
    )
    return parser.parse_args(argv)


class Profiler:
    """py-spy recording the server and this process during one case (collapsed stacks)."""

    def __init__(self, directory: Path, case: str, pids: dict[str, int]) -> None:
        py_spy = VENV_BIN / "py-spy"
        if not py_spy.exists():
            raise BenchError("--profile needs py-spy in the venv: .venv/bin/pip install py-spy")
        directory.mkdir(parents=True, exist_ok=True)
        self.outputs = [directory / f"{case}-{role}.txt" for role in pids]
        self._procs = [
            subprocess.Popen(
                [
                    str(py_spy),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, out in zip(pids.values(), self.outputs, strict=True)
        ]

    def stop(self) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _run_cases(args: argparse.Namespace, ctx: Context, results_dir: Path) -> list[CaseResult]:
    results: list[CaseResult] = []
    names = [name for name in CASES if not args.only or name in args.only]
    for name in names:
        print(f"[{name}] running ...", file=sys.stderr, flush=True)
        profiler = None
        if args.profile:
            profiler = Profiler(
                results_dir / "profile", name, {"server": ctx.server.pid, "bench": os.getpid()}
            )
        t0 = time.perf_counter()
        server_cpu = cpu_seconds(ctx.server.pid)[0]
        bench_cpu = time.process_time()
        try:
            result = await asyncio.wait_for(CASES[name](ctx), _CASE_TIMEOUT)
        except Exception as exc:
            result = CaseResult(name, name, error=f"{type(exc).__name__}: {exc}")
            result.data["traceback"] = traceback.format_exc()
            print(result.data["traceback"], file=sys.stderr)
        finally:
            if profiler is not None:
                profiler.stop()
        result.seconds = time.perf_counter() - t0
        if ctx.server.process.poll() is None:
            # Where the CPU went: tells a slow server from a slow client on a machine with few cores.
            result.data["cpu_seconds"] = {
                "server": round(cpu_seconds(ctx.server.pid)[0] - server_cpu, 2),
                "bench_client": round(time.process_time() - bench_cpu, 2),
            }
        result.data["load_average_after"] = load_average()
        print(f"[{name}] {'failed' if result.error else 'done'} in {result.seconds:.1f} s", file=sys.stderr)
        results.append(result)
        if ctx.server.process.poll() is not None:
            raise BenchError(
                f"jw-server died (status {ctx.server.process.returncode}):\n{ctx.server.log_tail()}"
            )
    return results


async def _bench(
    args: argparse.Namespace,
    sizes: Sizes,
    workdir: Path,
    certs: Certs,
    servers: tuple[ServerProcess, BareServer],
    docker: Docker,
    results_dir: Path,
) -> list[CaseResult]:
    # The client's channel belongs to the event loop: create it here, inside asyncio.run.
    client = AsyncClient(servers[0].config())
    try:
        ctx = Context(sizes, workdir, certs, servers[0], servers[1], client, docker)
        return await _run_cases(args, ctx, results_dir)
    finally:
        await client.close()


def _leftover_processes(cgroup_prefix: str) -> int:
    """Processes whose command line names our cgroup prefix (shims of jobs that outlived the server)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += cgroup_prefix.encode() in Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
    return count


def _publish(document: dict[str, Any], results: list[CaseResult], out: Path) -> None:
    """Print the table with the machine and shutdown lines; write the JSON and Markdown files."""
    ordered = sorted(results, key=lambda r: r.title)
    machine, shutdown, load = document["machine"], document["server"]["shutdown"], document["load_average"]
    cpu = document["cpu_seconds"]
    headline = (
        f"jobworker bench, {machine['date']}, {machine['cpu_model']} x{machine['cpus']}, Linux"
        f" {machine['kernel']}, commit {machine['commit']}{' (dirty)' if machine['dirty'] else ''},"
        f" {document['total_seconds']:.0f} s, load average {load['before'][0]:.1f} -> {load['after'][0]:.1f},"
        f" other work took {cpu['other_work'] / max(cpu['available'], 1e-9):.0%} of the CPUs"
    )
    print(f"\n{headline}")
    print(render_table(ordered))
    print(
        f"\nserver: SIGTERM -> exit {shutdown.get('exit_status')} in {shutdown.get('seconds')} s,"
        f" {shutdown.get('cgroups_left')} job cgroups and {shutdown.get('processes_left')} job processes left"
    )
    write_json(out, document)
    out.with_suffix(".md").write_text(render_markdown(ordered) + "\n")
    chart = out.with_suffix(".png")
    try:
        skipped = _chart.write_chart(chart, ordered, headline, _memory.IDLE_JOB_PSS_LIMIT_KIB)
    except (KeyError, ValueError, OSError) as exc:
        # The numbers are written already; a chart that cannot be drawn must not lose them.
        skipped = f"the chart could not be drawn ({type(exc).__name__}: {exc})"
    print(f"results: {out} (+ .md{'' if skipped else ', .png'})")
    if skipped:
        print(f"chart skipped: {skipped}")


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if os.geteuid() != 0:
        print("bench: needs root (jobs run in namespaces and cgroups, like in production)", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else Sizes()
    started = datetime.now(UTC)
    results_dir = BENCH_DIR / "results"
    out = args.out or results_dir / f"bench-{started:%Y%m%dT%H%M%SZ}{'-quick' if args.quick else ''}.json"
    nofile_soft, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Each running job holds 4 server fds: 1,000 idle jobs need more than the usual soft limit of 1,024,
    # as a service manager's LimitNOFILE= would grant. The server inherits this.
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_hard, nofile_hard))
    docker = find_docker()
    workdir = Path(tempfile.mkdtemp(prefix="jwbench-"))
    server: ServerProcess | None = None
    bare: BareServer | None = None
    shutdown: dict[str, Any] = {}
    load_before = load_average()
    if load_before[0] > 1.0:
        print(
            f"bench: warning: load average {load_before[0]:.1f} before the start; other work on this machine"
            " will skew the numbers",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    try:
        certs = mint_certs(workdir / "certs")
        server = ServerProcess(workdir, certs, max_jobs=max(2000, sizes.idle_jobs + 100))
        bare = BareServer(certs)
        results = asyncio.run(_bench(args, sizes, workdir, certs, (server, bare), docker, results_dir))
    finally:
        if bare is not None:
            bare.stop()
        if server is not None:
            stop_t0 = time.perf_counter()
            shutdown["exit_status"] = server.stop()
            shutdown["seconds"] = round(time.perf_counter() - stop_t0, 2)
            shutdown["cgroups_left"] = server.cgroups.count()
            shutdown["processes_left"] = _leftover_processes(server.cgroup_prefix)
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - t0
    # What the rest of the machine did meanwhile: the bench's numbers are only as good as the CPUs it had.
    busy, own = machine_busy_seconds() - busy0, own_cpu_seconds() - own0
    cpus = os.cpu_count() or 1
    document = {
        "machine": machine_info(docker.version).as_dict(),
        "server": {
            **{k: server.listening.get(k) for k in ("cgroup_driver", "namespaces", "limits_supported")},
            "nofile_limit": nofile_hard,
            "nofile_soft_limit_before": nofile_soft,
            "shutdown": shutdown,
        },
        "sizes": sizes.__dict__,
        "quick": args.quick,
        "total_seconds": round(total, 1),
        "load_average": {"before": load_before, "after": load_average()},
        "cpu_seconds": {
            "available": round(total * cpus, 1),
            "machine_busy": round(busy, 1),
            "this_bench": round(own, 1),
            # Includes the Docker daemon's work for the docker baselines (it is no child of ours).
            "other_work": round(max(busy - own, 0.0), 1),
        },
        "cases": [r.as_dict() for r in results],
    }
    _publish(document, results, out)
    failed = [r.name for r in results if r.error]
    clean = (
        shutdown.get("exit_status") == 0
        and not shutdown.get("cgroups_left")
        and not shutdown.get("processes_left")
    )
    return 0 if not failed and clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
