"""Our stdin as a job's input: chunks as they come, the window size of our terminal as it changes."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator

import click

from jobworker.client import (
    Client,
    ClientError,
    FailedPreconditionError,
    NotFoundError,
    TerminalSize,
)

_CHUNK = 64 * 1024
# What a terminal is when ours has no size (not a terminal): what terminal emulators start with.
_DEFAULT_SIZE = TerminalSize(24, 80)


class Detached(Exception):
    """Ends the input without end of file: the job's stdin stays open for the next writer."""


def terminal_size() -> TerminalSize:
    """Our terminal's window size (stdin's, else stdout's), or 24x80 when neither is a terminal."""
    for stream in (sys.stdin, sys.stdout):
        with contextlib.suppress(OSError, ValueError):
            size = os.get_terminal_size(stream.fileno())
            if size.lines and size.columns:
                return TerminalSize(size.lines, size.columns)
    return _DEFAULT_SIZE


class StdinSource:
    """An iterator over our stdin for Client.write_input: data until end of file, resizes in between.

    A SIGWINCH handler (installed by follow_resizes) wakes it through a pipe, so a resize reaches the job
    while it waits for input; stop() ends it without end of file.
    """

    def __init__(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._resized = False
        self._stopped = False

    def __iter__(self) -> Iterator[bytes | TerminalSize]:
        fd = sys.stdin.fileno()
        while True:
            ready, _, _ = select.select([fd, self._wake_r], [], [])
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
            if self._stopped:
                raise Detached
            if self._resized:
                self._resized = False
                yield terminal_size()
            if fd in ready:
                data = os.read(fd, _CHUNK)
                if not data:
                    return
                yield data

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


def pump_stdin(client: Client, job_id: str, source: StdinSource) -> threading.Thread:
    """Copy our stdin to the job in a thread (the main thread prints its output)."""

    def pump() -> None:
        try:
            client.write_input(job_id, source)
        except (FailedPreconditionError, NotFoundError):
            pass  # the job ended (or closed its stdin) before it read everything: like a closed pipe
        except ClientError as exc:
            if not source.stopped:
                click.echo(f"jw: stdin of job {job_id}: {exc.message}", err=True)

    thread = threading.Thread(target=pump, name="jw-stdin", daemon=True)
    thread.start()
    return thread


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
