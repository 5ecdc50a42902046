"""The process model: launch a job through the shim, and talk to its holder (started now or earlier).

Start latency is dominated by the shim's interpreter start (``python -I -S``); the engine itself never runs
Python code between fork and exec, so launching is safe from the multi-threaded gRPC server.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jobworker.engine._holder import INPUT_FRAME, MAX_INPUT_FRAME
from jobworker.engine.errors import InputUnavailableError, JobNotRunningError

log = logging.getLogger("jobworker.engine")

SHIM = Path(__file__).with_name("_shim.py")
# Bigger requests (huge argv or environments) take the direct path.
_FORK_SERVER_MAX_REQUEST = 1 << 16
# A fork server that keeps dying is restarted at most this often (seconds); starts in between go direct.
_RESTART_INTERVAL = 1.0


@dataclass(frozen=True)
class HolderFiles:
    """Where a job's holder writes: the spool and its index, the exit file, the socket it listens on."""

    spool: Path
    index: Path
    exit_file: Path
    socket: Path
    cap_bytes: int

    def args(self) -> list[str]:
        return [
            "--spool", str(self.spool),
            "--index", str(self.index),
            "--exit-file", str(self.exit_file),
            "--socket", str(self.socket),
            "--cap", str(self.cap_bytes),
        ]  # fmt: skip


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the shim needs to start one command.

    argv[0] is looked up in the job's PATH, and cwd resolved, by the shim inside the job's view.
    """

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    procs_files: tuple[str, ...] = ()
    namespaces: bool = False
    hostname: str = "job"
    # Shim flags of strict isolation (jobworker.engine.sandbox); empty for none.
    sandbox_args: tuple[str, ...] = ()
    # None: the holder drains the output and stores nothing (the start-up probe).
    files: HolderFiles | None = None
    # The cgroup files whose contents the holder keeps as the job's final usage.
    stats_files: tuple[str, ...] = ()
    # Keep the job's stdin open for input (else /dev/null); a terminal of (rows, cols) implies it.
    stdin: bool = False
    terminal: tuple[int, int] | None = None


@dataclass(frozen=True)
class SpoolProgress:
    """How far the holder got writing the spool (an ``out`` report)."""

    committed: int = 0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    dropped_bytes: int = 0
    # None while storing; else the _spoolfile.REASON_* code.
    truncated: int | None = None


@dataclass
class ShimStatus:
    """What the holder reported so far."""

    pid: int = 0
    # Whether the job has namespaces (signals for the whole job go to init; else to the process group).
    namespaces: bool = False
    uid: int | None = None
    started: asyncio.Future[None] = field(default_factory=lambda: _new_future())
    exit_code: int | None = None
    signal: int | None = None
    stop_requested: bool = False
    # The holder wrote the exit file and said so.
    ended: bool = False
    # Set once the holder closed its socket: it has exited, or another server took the job over.
    closed: asyncio.Future[None] = field(default_factory=lambda: _new_future())


def _new_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


class LaunchError(Exception):
    """The shim could not start the command; the message is one readable line.

    kind says which step failed: "setup" (namespaces, sandbox, cgroup), "cwd" or "exec".
    """

    def __init__(self, errno: int, message: str, kind: str = "setup") -> None:
        super().__init__(message)
        self.errno = errno
        self.kind = kind


class ForkServer:
    """A warm launcher process (``_shim.py --fork-server``) that forks one launcher per job.

    Forking a running interpreter takes about a millisecond where starting one takes tens, and the fork
    happens in that separate single-threaded process, never in the threaded server.
    """

    def __init__(self) -> None:
        self._sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SHIM), "--fork-server", str(child.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=(child.fileno(),),
                env={},
                cwd="/",
                # Its own session: a Ctrl-C meant for a foreground jw-server must not kill it.
                start_new_session=True,
            )
        finally:
            child.close()
        self._sock.setblocking(False)
        self._lock = asyncio.Lock()
        self.alive = True

    @property
    def pid(self) -> int:
        return self._process.pid

    def running(self) -> bool:
        """Whether it can take requests: not closed, not failed, and its process has not exited."""
        if self.alive and self._process.poll() is not None:
            self.alive = False
        return self.alive

    async def fork(self, spec: LaunchSpec, shim_args: list[str], ctl_fd: int) -> int:
        """Start a holder for spec; returns its pid. Raises OSError when the fork server is unusable."""
        env = [f"{k}={v}" for k, v in spec.env.items()]
        fields = [spec.cwd, str(len(env)), *env, *shim_args]
        payload = b"\0".join(os.fsencode(f) for f in fields)
        if len(payload) > _FORK_SERVER_MAX_REQUEST:
            raise OSError("request too large for the fork server")
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not self.alive:
                raise OSError("the fork server has exited")
            try:
                self._sock.sendmsg(
                    [payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ctl_fd]))]
                )
                reply = await loop.sock_recv(self._sock, 32)
            except OSError:
                self.alive = False
                raise
        pid = int(reply or b"0")
        if pid <= 0:
            self.alive = reply != b""
            raise OSError("the fork server refused the request")
        return pid

    def close(self) -> None:
        """EOF tells the fork server to exit; wait for it."""
        self.alive = False
        self._sock.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _setenv_args(env: dict[str, str]) -> list[str]:
    return [word for key, value in env.items() for word in ("--setenv", f"{key}={value}")]


class ForkServerKeeper:
    """Keeps a fork server running: one that died is replaced at the next start, at most once a second."""

    def __init__(self) -> None:
        self._current: ForkServer | None = None
        self._started = False
        self._last_restart = float("-inf")
        self._closed = False

    @property
    def current(self) -> ForkServer | None:
        return self._current

    def get(self) -> ForkServer | None:
        """The running fork server, started or restarted if need be; None means: launch directly."""
        current = self._current
        if self._closed or (current is not None and current.running()):
            return current
        if self._started:
            now = time.monotonic()
            if now - self._last_restart < _RESTART_INTERVAL:
                return None
            self._last_restart = now
        self._started = True
        if current is not None:
            current.close()
            log.warning("fork server died, restarting it", extra={"pid": current.pid})
        try:
            self._current = ForkServer()
        except OSError as e:
            self._current = None
            log.warning("no fork server, launching jobs directly", extra={"error": str(e)})
        return self._current

    def close(self) -> None:
        self._closed = True
        if self._current is not None:
            self._current.close()
            self._current = None


def _shim_args(spec: LaunchSpec) -> list[str]:
    args: list[str] = []
    for path in spec.procs_files:
        args += ["--cgroup-procs", path]
    for path in spec.stats_files:
        args += ["--stats-file", path]
    if spec.files is not None:
        args += spec.files.args()
    if spec.terminal is not None:
        args += ["--tty", f"{spec.terminal[0]}:{spec.terminal[1]}"]
    elif spec.stdin:
        args += ["--stdin"]
    if spec.namespaces:
        args += ["--namespaces", "--hostname", spec.hostname]
    return [*args, *spec.sandbox_args, "--", *spec.argv]


class HolderLink:
    """The engine's connection to one job's holder: its reports, and the job's signals.

    Made by launching a job (start) or by connecting to the holder of a job started by an earlier server
    (attach); either way the holder first tells the whole state so far.
    """

    def __init__(
        self, sock: socket.socket, process: subprocess.Popen[bytes] | None = None, holder_pid: int = 0
    ) -> None:
        self._sock = sock
        self._process = process
        # Known when this engine launched the holder; its process group holds init too.
        self.holder_pid = holder_pid
        self.status = ShimStatus()
        self.progress = SpoolProgress()
        # Called with each spool report (followers wake, counters move).
        self.on_progress: Callable[[SpoolProgress], None] | None = None
        self._buffer = b""
        self._exec_seen = False
        self._pidfd = -1
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def start(cls, spec: LaunchSpec, fork_server: ForkServer | None = None) -> HolderLink:
        """Launch spec through the fork server when it is usable, else through a fresh shim process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        shim_args = _shim_args(spec)
        process: subprocess.Popen[bytes] | None = None
        try:
            pid = 0
            if fork_server is not None and fork_server.running():
                try:
                    pid = await fork_server.fork(spec, shim_args, theirs.fileno())
                except OSError as e:
                    log.warning("fork server unusable, launching directly", extra={"error": str(e)})
            if not pid:
                # Popen returns once the child has exec'd: fast enough not to need a thread.
                command = [sys.executable, "-I", "-S", str(SHIM), "--ctl-fd", str(theirs.fileno())]
                command += ["--cwd", spec.cwd, *_setenv_args(spec.env), *shim_args]
                process = subprocess.Popen(  # noqa: ASYNC220
                    command,
                    # The holder outlives the server: none of the server's stdio may stay open in it.
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                    # The shim runs as root: the caller's variables (LD_PRELOAD, ...) go to the command only.
                    env={},
                    cwd="/",
                    start_new_session=True,
                )
                pid = process.pid
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(ours, process, pid)

    @classmethod
    async def attach(cls, path: Path, limit_seconds: float) -> HolderLink:
        """Connect to the holder listening at path and take its state; OSError when none does (it exited).

        Returns once the holder told its state (or closed the connection: the job has just ended)."""
        link = cls(await connect_holder(path, "ctl"))
        told = asyncio.get_running_loop().create_future()

        def on_progress(_progress: SpoolProgress) -> None:
            if not told.done():
                told.set_result(None)

        link.on_progress = on_progress
        try:
            await asyncio.wait_for(
                asyncio.wait([told, link.status.closed], return_when=asyncio.FIRST_COMPLETED), limit_seconds
            )
        except TimeoutError:
            link.close()
            raise OSError(f"the job's holder did not answer within {limit_seconds:g} s") from None
        finally:
            link.on_progress = None
        return link

    @property
    def pid(self) -> int:
        """Host pid of init (of the command without namespaces); 0 until the holder said."""
        return self.status.pid

    async def wait_started(self, limit_seconds: float) -> None:
        """Return once the command runs; raise LaunchError when it could not be started."""
        try:
            await asyncio.wait_for(asyncio.shield(self.status.started), limit_seconds)
        except TimeoutError:
            raise LaunchError(0, f"the job did not start within {limit_seconds:g} s") from None

    def send_signal(self, sig: int, *, group: bool) -> None:
        """Send sig to init (group: to the command's process group, without namespaces)."""
        st = self.status
        if not st.pid or (group and (st.exit_code is not None or st.signal is not None)):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.status.pid, sig)
            elif self._pidfd >= 0:
                # Through a pidfd: the pid of a process that has just been reaped may be reused.
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.status.pid, sig)

    def tell(self, line: str) -> None:
        """Send one line to the holder (``stopping``); lost when it is gone."""
        with contextlib.suppress(OSError):
            self._sock.send(line.encode() + b"\n")

    def close(self) -> None:
        """Stop listening (the holder keeps the job; a later server reattaches)."""
        if self._sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_closed()
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        progressed = False
        for line in lines:
            progressed = self._handle(line.decode(errors="replace")) or progressed
        if progressed:
            self.tell("k")
            if self.on_progress is not None:
                self.on_progress(self.progress)

    def _handle(self, line: str) -> bool:
        """Take one report; True when it was spool progress."""
        word, _, rest = line.partition(" ")
        st = self.status
        # init's "started" can come before the holder's "pid" was read: the job counts as started once
        # both are known, so a stop right after Start can always address init.
        if word == "pid":
            st.pid = int(rest)
            if self._pidfd < 0:
                with contextlib.suppress(OSError):
                    self._pidfd = os.pidfd_open(st.pid)
            if self._exec_seen and not st.started.done():
                st.started.set_result(None)
        elif word == "uid":
            st.uid = int(rest)
        elif word == "ns":
            st.namespaces = rest == "1"
        elif word == "started" and not st.started.done():
            self._exec_seen = True
            if st.pid:
                st.started.set_result(None)
        elif word == "failed" and not st.started.done():
            kind, _, rest = rest.partition(" ")
            errno, _, message = rest.partition(" ")
            st.started.set_exception(LaunchError(int(errno) if errno.isdigit() else 0, message, kind))
        elif word in ("exit", "signal") and st.exit_code is None and st.signal is None:
            if word == "exit":
                st.exit_code = int(rest)
            else:
                st.signal = int(rest)
        elif word == "out":
            self.progress = _parse_progress(rest)
            return True
        elif word == "end":
            st.ended = True
        return False

    def _on_closed(self) -> None:
        self.close()
        # A directly spawned holder is our child: reap it (the fork server reaps its own).
        code = self._process.wait() if self._process is not None else 0
        st = self.status
        if not st.started.done():
            # Killed before it could say why: in practice a limit (memory, pids) too small to start at all.
            message = "the job was killed while starting (are its memory or pids limits too small?)"
            st.started.set_exception(LaunchError(0, message))
        if st.exit_code is None and st.signal is None and code < 0 and st.ended:
            st.signal = -code
        if not st.closed.done():
            st.closed.set_result(None)


def _parse_progress(rest: str) -> SpoolProgress:
    committed, out, err, dropped, reason = rest.split(" ")
    return SpoolProgress(
        int(committed), int(out), int(err), int(dropped), None if reason == "-" else int(reason)
    )


_INPUT_REFUSALS = {
    "busy": "another client is writing to the job's stdin",
    "no-stdin": "the job was not started with its stdin open (start it with -i)",
    "closed": "the job's stdin is closed",
}


async def connect_holder(path: Path, role: str) -> socket.socket:
    """A non-blocking connection to the holder listening at path, its role (_holder.py) said;
    OSError when no holder listens (it has exited)."""
    loop = asyncio.get_running_loop()
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        # Through the directory's descriptor: a state dir's path may be longer than a socket address.
        await loop.sock_connect(sock, f"/proc/self/fd/{dir_fd}/{path.name}")
        await loop.sock_sendall(sock, role.encode() + b"\n")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dir_fd)
    return sock


class JobInput:
    """A connection to a job's holder that writes to the job's stdin (at most one at a time per job).

    Writes wait while the job does not read: the holder buffers one frame, the socket a little more.
    """

    def __init__(self, sock: socket.socket, job_id: str) -> None:
        self._sock, self._job_id = sock, job_id

    @classmethod
    async def open(cls, path: Path, job_id: str) -> JobInput:
        """Connect to the holder listening at path; InputUnavailableError when it refuses input."""
        loop = asyncio.get_running_loop()
        sock = await connect_holder(path, "input")
        try:
            answer = b""
            while not answer.endswith(b"\n") and len(answer) < 64:
                more = await asyncio.wait_for(loop.sock_recv(sock, 64 - len(answer)), 5)
                if not more:
                    break
                answer += more
        except BaseException:
            sock.close()
            raise
        word = answer.decode(errors="replace").strip()
        if word != "ok":
            sock.close()
            raise InputUnavailableError(_INPUT_REFUSALS.get(word, "the job's holder refused input"))
        return cls(sock, job_id)

    async def write(self, data: bytes) -> None:
        """Send data to the job's stdin; returns once the holder took it (it may wait for the job).

        JobNotRunningError when the job ended meanwhile (its holder let go of the connection).
        """
        view = memoryview(data)
        for start in range(0, len(view), MAX_INPUT_FRAME):
            piece = view[start : start + MAX_INPUT_FRAME]
            await self._send(INPUT_FRAME.pack(len(piece)) + piece)

    async def end(self) -> None:
        """End of input: the job reads EOF (a terminal gets ^D) once it has read what came before."""
        try:
            await self._send(INPUT_FRAME.pack(0))
        finally:
            self.close()

    async def _send(self, frame: bytes) -> None:
        try:
            await asyncio.get_running_loop().sock_sendall(self._sock, frame)
        except (BrokenPipeError, ConnectionResetError):
            # The job ended before it read this (a closed pipe, as a shell's `echo | cmd` sees it).
            raise JobNotRunningError(f"job {self._job_id} has ended") from None

    def close(self) -> None:
        """Stop writing without ending the input: the job's stdin stays open for another writer."""
        self._sock.close()
