"""Copy a job's output events to our stdout/stderr as raw bytes, remembering where we are."""

from __future__ import annotations

import contextlib
import select
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import click

from jobworker.client import OutputChunk, OutputEvent, OutputStream, OutputTruncated, StreamEnd


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
    """Writes chunks unchanged (flushed per chunk) and notes truncation once on stderr."""

    job_id: str
    offset: int = 0
    truncation_noted: bool = False

    def pump(self, events: Iterable[OutputEvent]) -> StreamEnd | None:
        """Copy `events` until the stream's end event, which is returned (None if it never came)."""
        stdout = sys.stdout.buffer
        stderr = sys.stderr.buffer
        for event in events:
            if isinstance(event, OutputChunk):
                target = stdout if event.stream is OutputStream.STDOUT else stderr
                with _ctrl_c_deferred():
                    _write_all(target, event.data)
                    self.offset = event.end_offset
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
