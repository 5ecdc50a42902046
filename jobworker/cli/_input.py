"""Our stdin as a job's input: chunks as they come, the window size of our terminal as it changes."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import os
import signal
import stat
import sys
import termios
import threading
import tty
from collections.abc import AsyncIterator, Iterator

from jobworker.client import (
    AsyncClient,
    ClientConfig,
    ClientError,
    ConnectionFailedError,
    EndOfInput,
    FailedPreconditionError,
    NotFoundError,
    TerminalSize,
)

_CHUNK = 64 * 1024
# What a terminal is when ours has no size (not a terminal): what terminal emulators start with.
_DEFAULT_SIZE = TerminalSize(24, 80)


def terminal_size() -> TerminalSize:
    """Our terminal's window size (stdin's, else stdout's), or 24x80 when neither is a terminal."""
    for stream in (sys.stdin, sys.stdout):
        with contextlib.suppress(OSError, ValueError):
            size = os.get_terminal_size(stream.fileno())
            if size.lines and size.columns:
                return TerminalSize(size.lines, size.columns)
    return _DEFAULT_SIZE


class StdinSource:
    """Our stdin as an async source for AsyncClient.write_input: data until end of file, resizes between.

    A SIGWINCH handler (installed by follow_resizes) wakes it through a pipe, so a resize reaches the job
    while it waits for input; stop() ends it without end of file (the job's stdin stays open).
    """

    def __init__(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._resized = False
        self._stopped = False

    async def items(self) -> AsyncIterator[bytes | TerminalSize | EndOfInput]:
        """What to send, as it comes (run in the pump's own event loop)."""
        loop = asyncio.get_running_loop()
        fd = sys.stdin.fileno()
        waits = _pollable(fd)
        while True:
            if waits:
                which = await self._ready(loop, fd)
            else:
                # Always readable: a stop or a resize is seen between chunks.
                await asyncio.sleep(0)
                which = fd
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)
            if self._stopped:
                return  # without end of file: the job's stdin stays open for the next writer
            if self._resized:
                self._resized = False
                yield terminal_size()
            if which == fd:
                data = os.read(fd, _CHUNK)
                if not data:
                    yield EndOfInput()
                    return
                yield data

    async def _ready(self, loop: asyncio.AbstractEventLoop, fd: int) -> int:
        """Wait until stdin or the wake-up pipe can be read; which one."""
        ready: asyncio.Future[int] = loop.create_future()
        for source in (fd, self._wake_r):
            loop.add_reader(source, _resolve, ready, source)
        try:
            return await ready
        finally:
            for source in (fd, self._wake_r):
                loop.remove_reader(source)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def resize(self) -> None:
        """Our terminal changed size (from a signal handler: only a flag and a wake-up)."""
        self._resized = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"r")

    def stop(self) -> None:
        """End the input without end of file."""
        self._stopped = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"s")


def _pollable(fd: int) -> bool:
    """Whether waiting for fd to be readable means anything: a file or /dev/null always is, and epoll
    refuses them (EPERM); a pipe, socket or terminal may have nothing yet."""
    mode = os.fstat(fd).st_mode
    return not (stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not os.isatty(fd)))


def _resolve(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)


class StdinPump:
    """Copies our stdin to the job in a thread of its own (with its own event loop and connection) while
    the main thread prints its output; the call is over once join() returns.

    A refusal (our role may not write, the job has no open stdin, another writer) interrupts the main
    thread (a KeyboardInterrupt there), which then reports `failure` instead of a Ctrl-C; a job that
    ended before it read everything is like a closed pipe: nothing to say.
    """

    def __init__(self, config: ClientConfig, timeout: float, job_id: str, source: StdinSource) -> None:
        self.failure: ClientError | None = None
        self._config, self._timeout, self._job_id, self._source = config, timeout, job_id, source
        self._thread = threading.Thread(target=self._pump, name="jw-stdin", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            asyncio.run(self._write())
        except NotFoundError:
            pass  # deleted meanwhile: nothing left to write to
        except FailedPreconditionError as exc:
            if "ended" not in exc.message:
                self._fail(exc)
        except ConnectionFailedError as exc:
            # The server went away (a restart): the output side reconnects; the input does not resume.
            if not self._source.stopped:
                sys.stderr.write(
                    f"jw: stdin of job {self._job_id} stopped: {exc.message}; jw attach {self._job_id} "
                    "writes to it again\n"
                )
        except ClientError as exc:
            if not self._source.stopped:
                self._fail(exc)
        except OSError as exc:
            # Our own stdin failed (not the server): the job's stdin stays open for jw attach.
            sys.stderr.write(
                f"jw: cannot read stdin: {exc.strerror or exc}; job {self._job_id} keeps running\n"
            )

    async def _write(self) -> None:
        async with AsyncClient(self._config, timeout=self._timeout) as client:
            await client.write_input(self._job_id, self._source.items(), eof=False)

    def join(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for the copy to end once its source was stopped."""
        self._thread.join(timeout)

    def _fail(self, exc: ClientError) -> None:
        self.failure = exc
        _thread.interrupt_main()


@contextlib.contextmanager
def follow_resizes(source: StdinSource) -> Iterator[None]:
    """Pass our terminal's new size to the job on every SIGWINCH while inside."""
    previous = signal.signal(signal.SIGWINCH, lambda _signum, _frame: source.resize())
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Our terminal in raw mode while inside (keys go to the job's terminal as they are), then restored."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
