"""Copy a job's output events to our stdout/stderr as raw bytes, remembering where we are."""

from __future__ import annotations

import contextlib
import dataclasses
import select
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import click

from jobworker.client import OutputChunk, OutputEvent, OutputStream, OutputTruncated, OutputWindow, StreamEnd
from jobworker.units import rfc3339_text


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    # A Ctrl-C between writing a chunk and counting it would make the printed resume offset
    # replay bytes the user already has; hold it until both are done.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)
    elif caught and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def _write_all(stream: BinaryIO, data: bytes) -> None:
    # With PYTHONUNBUFFERED the binary streams are raw files, whose write() may be partial.
    view = memoryview(data)
    while view:
        written = stream.write(view)
        if written is None:  # non-blocking descriptor that is full: wait until writable
            select.select([], [stream], [])
            continue
        view = view[written:]
    stream.flush()


@dataclass
class OutputPump:
    """Writes chunks unchanged (flushed per chunk) and notes truncation once on stderr.

    With a window, a new stream after a reconnect starts at the offset reached: its tail and since are
    spent once output came, and its byte limit counts down. With timestamps, each line gets its first
    byte's arrival time in front (RFC 3339, nanoseconds, UTC; `-` when the server does not know it).
    """

    job_id: str
    offset: int = 0
    truncation_noted: bool = False
    window: OutputWindow = field(default_factory=OutputWindow)
    _line_start: dict[OutputStream, bool] = field(default_factory=dict)
    _started: bool = False

    @property
    def remaining_window(self) -> OutputWindow | None:
        """The window for the next stream from self.offset; None when its byte limit is used up."""
        window = self.window
        if not self._started:
            return window
        limit = window.limit_bytes
        if limit is not None and limit <= 0:
            return None
        return dataclasses.replace(window, tail_lines=None, since=None)

    def _stamped(self, event: OutputChunk) -> bytes:
        stamp = (b"-" if event.time_ns is None else rfc3339_text(event.time_ns).encode()) + b" "
        pieces: list[bytes] = []
        at_start = self._line_start.get(event.stream, True)
        data, start = event.data, 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline + 1
            if at_start:
                pieces.append(stamp)
            pieces.append(data[start:end])
            at_start, start = newline >= 0, end
        self._line_start[event.stream] = at_start
        return b"".join(pieces)

    def pump(self, events: Iterable[OutputEvent]) -> StreamEnd | None:
        """Copy `events` until the stream's end event, which is returned (None if it never came)."""
        stdout = sys.stdout.buffer
        stderr = sys.stderr.buffer
        for event in events:
            if isinstance(event, OutputChunk):
                target = stdout if event.stream is OutputStream.STDOUT else stderr
                data = self._stamped(event) if self.window.timestamps else event.data
                with _ctrl_c_deferred():
                    _write_all(target, data)
                    self.offset = event.end_offset
                    self._started = True
                    if self.window.limit_bytes is not None:
                        limit = self.window.limit_bytes - len(event.data)
                        self.window = dataclasses.replace(self.window, limit_bytes=limit)
            elif isinstance(event, OutputTruncated):
                self.note_truncation(event.offset, event.reason)
            else:
                if event.truncated:
                    self.note_truncation(None, event.job.truncation_reason if event.job else "")
                return event
        return None

    def note_truncation(self, offset: int | None, reason: str) -> None:
        """Tell the user (once) that the server dropped part of the output, and why."""
        if self.truncation_noted:
            return
        self.truncation_noted = True
        where = f" at byte {offset}" if offset is not None else ""
        # Servers before the reason field only truncated at the cap.
        why = f"on the server: {reason}" if reason else "by the server's output cap"
        click.echo(
            f"jw: output of job {self.job_id} was truncated{where} {why}; later output was discarded",
            err=True,
        )
