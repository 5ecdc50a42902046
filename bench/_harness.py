"""What every benchmark stands on: certificates, the jw-server subprocess, /proc probes, machine facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

import pki
from jobworker.client import ClientConfig

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 60.0


class BenchError(Exception):
    """A benchmark could not run (the server did not start, a baseline tool failed)."""


@dataclass(frozen=True)
class Certs:
    """Paths of the CA, the server pair and an admin client pair minted for this run."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_config(self, address: str) -> ClientConfig:
        """Client settings for a server at `address` with the admin identity."""
        return ClientConfig(server=address, ca=self.ca, cert=self.client_cert, key=self.client_key)

    def channel(self, address: str) -> grpc.aio.Channel:
        """A bare grpc.aio channel to `address` with the admin identity (call inside the event loop)."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.client_key.read_bytes(),
            certificate_chain=self.client_cert.read_bytes(),
        )
        return grpc.aio.secure_channel(address, credentials)


def mint_certs(directory: Path) -> Certs:
    """Issue a P-256 CA, a server certificate for 127.0.0.1 and an admin client certificate."""
    ca = pki.issue_ca()
    server_cert, server_key = pki.write_issued(directory, "server", pki.issue_server(ca, "server"))
    client_cert, client_key = pki.write_issued(
        directory, "bench", pki.issue_client(ca, "bench", pki.Role.ADMIN)
    )
    ca_cert, _ = pki.write_issued(directory, "ca", ca)
    return Certs(ca_cert, server_cert, server_key, client_cert, client_key)


@dataclass(frozen=True)
class ProcSample:
    """One look at a process in /proc."""

    rss_bytes: int
    peak_rss_bytes: int
    threads: int
    fds: int


def sample_process(pid: int) -> ProcSample:
    """RSS, peak RSS (VmHWM), thread and fd counts of `pid`."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            number = int(rest.split()[0])
            values[key] = number * 1024 if key != "Threads" else number
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(values["VmRSS"], values["VmHWM"], values["Threads"], fds)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of `pid` itself, CPU seconds of its reaped children) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    return os.getloadavg()


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its reaped descendants (servers, jobs, baselines) so far."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM of `pid` to its current RSS (clear_refs 5, Linux >= 4.0, needs privilege)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def children_map() -> dict[int, list[int]]:
    """Every process's children, from /proc (a snapshot)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...)."""
    children = children_map() if children is None else children
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def pss_bytes(pids: list[int]) -> int:
    """Sum of the proportional set sizes of `pids` (shared pages split between their users)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class CgroupCounter:
    """Counts the job cgroups under one prefix in every mounted hierarchy (v1 and v2)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._dirs: list[Path] | None = None

    def _prefix_dirs(self) -> list[Path]:
        if self._dirs is None:
            found: list[Path] = []
            # The server's own cgroup path sits between the mount and the prefix (e.g. memory/a/b/PREFIX).
            for top, dirs, _files in os.walk(CGROUP_ROOT):
                depth = len(Path(top).relative_to(CGROUP_ROOT).parts)
                if Path(top).name == self.prefix:
                    found.append(Path(top))
                    dirs.clear()
                elif depth >= 5:
                    dirs.clear()
            self._dirs = found
        return self._dirs

    def count(self) -> int:
        """Job cgroup directories, summed over hierarchies (a v1 job has one per controller)."""
        total = 0
        for directory in self._prefix_dirs():
            with contextlib.suppress(FileNotFoundError):
                total += sum(1 for entry in directory.iterdir() if entry.is_dir())
        return total


class ServerProcess:
    """A jw-server subprocess on 127.0.0.1:0 with a temp state dir and its own cgroup prefix."""

    def __init__(
        self,
        workdir: Path,
        certs: Certs,
        *,
        max_jobs: int,
        extra_args: Sequence[str] = (),
        cgroup_prefix: str | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.max_jobs, self.extra_args = max_jobs, tuple(extra_args)
        self.cgroup_prefix = cgroup_prefix or f"jwbench-{uuid.uuid4().hex[:10]}"
        self.log_path = workdir / "server.log"
        self.state_dir = workdir / "state"
        # A prefix of our own: on the default one the server would remove, as stale, the job cgroups of any
        # other jw-server on this host. The output cap leaves room above the 1 GiB jobs.
        self.command = [
            str(VENV_BIN / "jw-server"),
            f"--cgroup-prefix={self.cgroup_prefix}",
            "--listen=127.0.0.1:0",
            f"--cert={certs.server_cert}",
            f"--key={certs.server_key}",
            f"--ca={certs.ca}",
            f"--state-dir={self.state_dir}",
            f"--max-jobs={max_jobs}",
            "--output-cap=2G",
            "--grace=2",
            # One client (owner "bench") runs every case, idle-job memory's 1,000 jobs included: no quotas.
            "--max-jobs-per-owner=0",
            "--max-output-per-owner=0",
            # The bench leaves nothing behind (live restore would keep jobs for a next server).
            "--stop-jobs-on-shutdown",
            *extra_args,
        ]
        self.cgroups = CgroupCounter(self.cgroup_prefix)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        self.pid = self.process.pid
        self.listening: dict[str, Any] = {}
        try:
            self.listening = self._wait_ready()
        except BaseException:
            self.kill()
            raise
        self.address = str(self.listening["address"])

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            for entry in self.log_entries():
                if entry.get("msg") == "listening":
                    return entry
            if self.process.poll() is not None:
                raise BenchError(f"jw-server exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.02)
        raise BenchError(f"jw-server did not log 'listening' within {_READY_TIMEOUT:g} s:\n{self.log_tail()}")

    def log_entries(self) -> Iterator[dict[str, Any]]:
        """The server's JSON log lines so far (other lines are skipped)."""
        with self.log_path.open("rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict):
                        yield entry

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def sample(self) -> ProcSample:
        """The server's RSS, peak RSS, threads and fds now."""
        return sample_process(self.pid)

    def config(self) -> ClientConfig:
        """Client settings for this server with the admin identity."""
        return self.certs.client_config(self.address)

    def stop(self) -> int:
        """SIGTERM, wait for exit; returns the exit status (SIGKILL and BenchError when it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise BenchError(f"jw-server ignored SIGTERM for {_STOP_TIMEOUT:g} s") from None
        self._log.close()
        return self.process.returncode

    def restarted(self) -> ServerProcess:
        """The next jw-server after this one died: the same state dir, cgroup prefix and options, as a real
        restart has (a new prefix would leave this one's directories behind for good)."""
        return ServerProcess(
            self.workdir,
            self.certs,
            max_jobs=self.max_jobs,
            extra_args=self.extra_args,
            cgroup_prefix=self.cgroup_prefix,
        )

    def kill(self) -> None:
        """SIGKILL the server (only after a failure) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass(frozen=True)
class Docker:
    """The Docker engine for the baselines: an image to run, or why the Docker baselines are skipped."""

    image: str | None
    version: str = ""
    log_driver: str = ""
    skip_reason: str = ""


def find_docker() -> Docker:
    """Detect a running engine (docker info, 5 s) and the image (JW_BENCH_IMAGE, default jobworker:dev)."""
    if shutil.which("docker") is None:
        return Docker(None, skip_reason="docker CLI not installed")
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}} {{.LoggingDriver}}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Docker(None, skip_reason="docker info timed out (5 s)")
    if info.returncode != 0:
        return Docker(None, skip_reason="no Docker engine reachable (docker info failed)")
    version, _, log_driver = info.stdout.strip().partition(" ")
    image = os.environ.get("JW_BENCH_IMAGE", "jobworker:dev")
    found = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, text=True, timeout=30, check=False
    )
    if found.returncode != 0:
        reason = f"image {image} not present (build it with `make image` or set JW_BENCH_IMAGE)"
        return Docker(None, version, log_driver, reason)
    return Docker(image, version, log_driver)


def _first(path: str, prefix: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _command_output(*argv: str) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


@dataclass(frozen=True)
class MachineInfo:
    """Where and when the numbers were taken."""

    date: str
    hostname: str
    kernel: str
    cpu_model: str
    cpus: int
    memory_total_mib: int
    python: str
    grpcio: str
    protobuf: str
    commit: str
    dirty: bool
    docker: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def machine_info(docker_version: str) -> MachineInfo:
    """Collect the facts that make two runs comparable."""
    import grpc
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    status = _command_output("git", "-C", str(REPO_DIR), "status", "--porcelain")
    return MachineInfo(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        hostname=platform.node(),
        kernel=platform.release(),
        cpu_model=_first("/proc/cpuinfo", "model name"),
        cpus=os.cpu_count() or 0,
        memory_total_mib=int(mem_kib) // 1024 if mem_kib.isdigit() else 0,
        python=platform.python_version(),
        grpcio=grpc.__version__,
        protobuf=f"{protobuf_version} ({api_implementation.Type()})",
        commit=_command_output("git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD") or "unknown",
        dirty=bool(status),
        docker=docker_version,
    )
