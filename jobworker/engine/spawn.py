"""The process model: launch a job through the shim and follow its status pipe.

Start latency is dominated by the shim's interpreter start (``python -I -S``); the engine itself never runs
Python code between fork and exec, so launching is safe from the multi-threaded gRPC server.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("jobworker.engine")

SHIM = Path(__file__).with_name("_shim.py")
# Bigger requests (huge argv or environments) take the direct path.
_FORK_SERVER_MAX_REQUEST = 1 << 16
# Large pipes mean fewer wake-ups of the drainer for chatty jobs; the kernel caps it at pipe-max-size.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
# A fork server that keeps dying is restarted at most this often (seconds); starts in between go direct.
_RESTART_INTERVAL = 1.0


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


@dataclass
class ShimStatus:
    """What the shim reported over the status pipe so far."""

    pid: int = 0
    started: asyncio.Future[None] = field(default_factory=lambda: _new_future())
    exit_code: int | None = None
    signal: int | None = None
    # Set once every shim process has closed the pipe: the job's processes are gone.
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

    async def fork(self, spec: LaunchSpec, shim_args: list[str], fds: tuple[int, int, int]) -> int:
        """Start a launcher for spec; returns its pid. Raises OSError when the fork server is unusable."""
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
                self._sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
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


class Launched:
    """A running launcher: its status, and the read ends of the job's stdout and stderr."""

    def __init__(
        self, pid: int, process: subprocess.Popen[bytes] | None, status_fd: int, out_fd: int, err_fd: int
    ) -> None:
        self._pid = pid
        self._process = process
        self.stdout_fd = out_fd
        self.stderr_fd = err_fd
        self.status = ShimStatus()
        self._status_fd = status_fd
        self._buffer = b""
        self._exec_seen = False
        asyncio.get_running_loop().add_reader(status_fd, self._on_status)

    @classmethod
    async def start(cls, spec: LaunchSpec, fork_server: ForkServer | None = None) -> Launched:
        """Launch spec through the fork server when it is usable, else through a fresh shim process."""
        status_r, status_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        shim_args: list[str] = []
        for path in spec.procs_files:
            shim_args += ["--cgroup-procs", path]
        if spec.namespaces:
            shim_args += ["--namespaces", "--hostname", spec.hostname]
        shim_args += [*spec.sandbox_args, "--", *spec.argv]
        process: subprocess.Popen[bytes] | None = None
        try:
            pid = 0
            if fork_server is not None and fork_server.running():
                try:
                    pid = await fork_server.fork(spec, shim_args, (out_w, err_w, status_w))
                except OSError as e:
                    log.warning("fork server unusable, launching directly", extra={"error": str(e)})
            if not pid:
                # Popen returns once the child has exec'd: fast enough not to need a thread.
                process = subprocess.Popen(  # noqa: ASYNC220
                    [
                        sys.executable,
                        "-I",
                        "-S",
                        str(SHIM),
                        "--status-fd",
                        str(status_w),
                        "--cwd",
                        spec.cwd,
                        *_setenv_args(spec.env),
                        *shim_args,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    pass_fds=(status_w,),
                    # The shim runs as root: the caller's variables (LD_PRELOAD, ...) go to the command only.
                    env={},
                    cwd="/",
                    start_new_session=True,
                )
                pid = process.pid
        except BaseException:
            for fd in (status_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (status_w, out_w, err_w):
                os.close(fd)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        return cls(pid, process, status_r, out_r, err_r)

    @property
    def pgid(self) -> int:
        """The job's process group (the launcher is its leader)."""
        return self._pid

    async def wait_started(self, limit_seconds: float) -> None:
        """Return once the command runs; raise LaunchError when it could not be started."""
        try:
            await asyncio.wait_for(asyncio.shield(self.status.started), limit_seconds)
        except TimeoutError:
            raise LaunchError(0, f"the job did not start within {limit_seconds:g} s") from None

    def _on_status(self) -> None:
        try:
            data = os.read(self._status_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self._close_status()
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._handle(line.decode(errors="replace"))

    def _handle(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        st = self.status
        # With namespaces, init's "started" can overtake the launcher's "pid": the job counts as
        # started once both are known, so a stop right after Start can always address init.
        if word == "pid":
            st.pid = int(rest)
            if self._exec_seen and not st.started.done():
                st.started.set_result(None)
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

    def _close_status(self) -> None:
        asyncio.get_running_loop().remove_reader(self._status_fd)
        os.close(self._status_fd)
        # Every launcher process is gone. A directly spawned one is our child: reap it now (the fork
        # server reaps its own).
        code = self._process.wait() if self._process is not None else 0
        st = self.status
        if not st.started.done():
            # Killed before it could say why: in practice a limit (memory, pids) too small to start at all.
            message = "the job was killed while starting (are its memory or pids limits too small?)"
            st.started.set_exception(LaunchError(0, message))
        if st.exit_code is None and st.signal is None and code < 0:
            st.signal = -code
        if not st.closed.done():
            st.closed.set_result(None)
