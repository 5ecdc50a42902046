"""The process model: launch a job through the shim and follow its status pipe.

Start latency is dominated by the shim's interpreter start (``python -I -S``); the engine itself never runs
Python code between fork and exec, so launching is safe from the multi-threaded gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SHIM = Path(__file__).with_name("_shim.py")
# Large pipes mean fewer wake-ups of the drainer for chatty jobs; the kernel caps it at pipe-max-size.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the shim needs to start one command."""

    exe: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    procs_files: tuple[str, ...] = ()
    namespaces: bool = False
    hostname: str = "job"


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
    """The shim could not start the command; the message is one readable line."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class Launched:
    """A running shim: its process, its status, and the read ends of the job's stdout and stderr."""

    def __init__(self, spec: LaunchSpec) -> None:
        loop = asyncio.get_running_loop()
        status_r, status_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_r, err_r):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        cmd = [sys.executable, "-I", "-S", str(SHIM), "--status-fd", str(status_w)]
        for path in spec.procs_files:
            cmd += ["--cgroup-procs", path]
        if "LC_CTYPE" in spec.env:
            cmd.append("--keep-lc-ctype")
        if spec.namespaces:
            cmd += ["--namespaces", "--hostname", spec.hostname]
        cmd += ["--", spec.exe, *spec.argv]
        try:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(status_w,),
                env=spec.env,
                cwd=spec.cwd,
                start_new_session=True,
            )
        except BaseException:
            for fd in (status_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (status_w, out_w, err_w):
                os.close(fd)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        self.stdout_fd = out_r
        self.stderr_fd = err_r
        self.status = ShimStatus()
        self._status_fd = status_r
        self._buffer = b""
        self._failure: LaunchError | None = None
        loop.add_reader(status_r, self._on_status)

    @property
    def pgid(self) -> int:
        """The job's process group (the shim is its leader)."""
        return self.process.pid

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
        if word == "pid":
            st.pid = int(rest)
        elif word == "started" and not st.started.done():
            st.started.set_result(None)
        elif word == "failed" and not st.started.done():
            errno, _, message = rest.partition(" ")
            st.started.set_exception(LaunchError(int(errno or 0), message))
        elif word in ("exit", "signal") and st.exit_code is None and st.signal is None:
            if word == "exit":
                st.exit_code = int(rest)
            else:
                st.signal = int(rest)

    def _close_status(self) -> None:
        asyncio.get_running_loop().remove_reader(self._status_fd)
        os.close(self._status_fd)
        # Every shim process is gone, so the shim has exited: reap it now.
        code = self.process.wait()
        st = self.status
        if not st.started.done():
            st.started.set_exception(LaunchError(0, f"the job launcher exited with status {code}"))
        if st.exit_code is None and st.signal is None and code < 0:
            st.signal = -code
        if not st.closed.done():
            st.closed.set_result(None)
