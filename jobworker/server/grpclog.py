"""grpc's own log lines, which its C core writes to fd 2, as JSON lines; failed handshakes as audit lines.

A TLS handshake that fails (no client certificate, a foreign CA, a certificate expired at handshake
time, TLS 1.2, plain HTTP) never becomes a call, so no Python code of ours sees it. grpc only logs it,
in plain text, and names the peer only in its `handshaker` trace. So `jw-server` turns that tracer on
before grpc is imported (`trace_handshakes`, keeping any GRPC_TRACE the operator set), points fd 2 at a
pipe (`GrpcLogCapture`) and reads grpc's lines back: a failed handshake becomes one audit line with the
peer address and the reason, the tracer's other lines are dropped, and every other grpc line is
re-logged as JSON on the `grpc` logger. Only the jw-server process does this; the parsing follows
grpc's log format (grpcio 1.85) and falls back to passing lines through unchanged.

Stdlib only: imported by `jobworker.server` before grpc.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import select
import sys
import threading
from typing import TextIO

from jobworker.server.jsonlog import fields

TRACE_ENV = "GRPC_TRACE"
HANDSHAKE_TRACER = "handshaker"
_AUDIT_LOGGER = "jobworker.audit"  # jobworker.server.audit imports grpc, so the name is repeated here

# absl's prefix: severity, MMDD, time, thread id, file:line, then "] " and the message.
_HEADER = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\s:]+):\d+\] (.*)$")
_PEER = re.compile(r"grpc\.internal\.endpoint_peer_address=([^,}\s]+)")
_FAILED_STEP = "CallNextHandshakerLocked: error="
_OPENSSL = re.compile(r"OPENSSL_internal:(.*?)(?:: OK)?$", re.S)
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# Lines of the handshaker tracer itself, and grpc's peer-less twin of the audit line.
_TRACE_SOURCES = frozenset({"handshaker.cc", "channel_trace.h", "trace.cc"})
_SSL_FAILURE = ("ssl_transport_security.cc", "Handshake failed with error ")

_PIPE_BYTES = 1 << 20
_grpc_log = logging.getLogger("grpc")
# Whatever else reaches fd 2 (a child process's complaint, a C library's warning).
_stderr_log = logging.getLogger("jobworker.server.stderr")


def trace_handshakes() -> bool:
    """Turn on grpc's handshaker trace unless GRPC_TRACE is set; return whether it is on.

    Only in the jw-server process (its console script, or `python -m jobworker.server`, whose argv[0] is
    "-m" while the package is imported): there its stderr is read back and each trace line becomes an
    audit line; in any other process importing this package (tests, benchmarks, embedders) the trace
    would only be noise on stderr.
    """
    as_server = os.path.basename(sys.argv[0]) in ("jw-server", "-m") if sys.argv else False
    if "grpc" not in sys.modules and as_server:
        os.environ.setdefault(TRACE_ENV, HANDSHAKE_TRACER)
    tracers = {t.strip() for t in os.environ.get(TRACE_ENV, "").split(",")}
    return "grpc" not in sys.modules and bool(tracers & {HANDSHAKE_TRACER, "all"})


def handshake_reason(error: str) -> str:
    """The OpenSSL reason of a grpc handshake error, or the error itself on one line."""
    text = error.split("=== Source Location", 1)[0].strip()
    match = _OPENSSL.search(text)
    reason = match.group(1) if match else text.removesuffix(": OK")
    return " ".join(reason.split())[:300]


class GrpcLogParser:
    """Turns grpc's log records (a header line plus continuation lines) into log and audit lines."""

    def __init__(self, *, traced: bool) -> None:
        self._traced = traced
        self._record: list[str] = []

    def feed(self, line: str) -> None:
        """Take one line; a header line completes the record before it."""
        if _HEADER.match(line):
            self.flush()
        self._record.append(line)

    def flush(self) -> None:
        """Handle the record collected so far."""
        record, self._record = self._record, []
        if not record:
            return
        header = _HEADER.match(record[0])
        if header is None:
            for line in record:
                if line.strip():
                    _stderr_log.warning(line.rstrip())
            return
        severity, source, message = header.groups()
        text = "\n".join([message, *record[1:]])
        if source == "handshaker.cc" and message.startswith(_FAILED_STEP):
            error = text[len(_FAILED_STEP) :].split(" shutdown=", 1)[0].strip()
            if error != "OK":
                peer = _PEER.search(text)
                self._audit(peer.group(1) if peer else "", handshake_reason(error))
            return
        if source in _TRACE_SOURCES:
            return
        if (source, message[: len(_SSL_FAILURE[1])]) == _SSL_FAILURE:
            if not self._traced:
                # Without the tracer this is all grpc says: audit it, peer unknown.
                self._audit("", handshake_reason(message[len(_SSL_FAILURE[1]) :]))
            return
        _grpc_log.log(
            _LEVELS.get(severity, logging.INFO), " ".join(text.split()), extra=fields(source=source)
        )

    @staticmethod
    def _audit(peer: str, reason: str) -> None:
        logging.getLogger(_AUDIT_LOGGER).info(
            "handshake failed", extra=fields(peer=peer, reason=reason, code="UNAVAILABLE")
        )


class GrpcLogCapture:
    """fd 2 redirected to a pipe that a thread reads through a GrpcLogParser; `stream` is the real stderr."""

    def __init__(self, *, traced: bool) -> None:
        self._real_fd = os.dup(2)
        self.stream: TextIO = os.fdopen(
            os.dup(self._real_fd), "w", buffering=1, encoding="utf-8", errors="replace"
        )
        # Python's own stderr writers (tracebacks, logging's last resort) bypass the pipe: the reader
        # thread must never write into the pipe it drains.
        self._saved_stderr = sys.stderr
        sys.stderr = self.stream
        read_fd, write_fd = os.pipe()
        # grpc's threads block on a full pipe until the reader, which needs the GIL, drains it: give
        # bursts of handshakes room (Linux only; the default 64 KiB is kept elsewhere).
        with contextlib.suppress(AttributeError, OSError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._parser = GrpcLogParser(traced=traced)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), name="grpc-log", daemon=True)
        self._thread.start()

    def _pump(self, read_fd: int) -> None:
        pending = b""
        with contextlib.closing(os.fdopen(read_fd, "rb", buffering=0)) as pipe:
            while True:
                # A record's continuation lines arrive right after its header; a pause ends it.
                ready, _, _ = select.select([pipe], [], [], 0.2)
                if not ready:
                    self._safely(self._parser.flush)
                    continue
                data = pipe.read(65536)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    self._safely(lambda line=line: self._parser.feed(line))
        if pending:
            self._safely(lambda: self._parser.feed(pending.decode("utf-8", "replace")))
        self._safely(self._parser.flush)

    def _safely(self, step: object) -> None:
        # The reader must never stop: grpc would block writing to a full pipe.
        try:
            step()  # type: ignore[operator]
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.stream.write(f"grpc log line lost: {exc}\n")

    def close(self) -> None:
        """Give fd 2 back to the real stderr and let the reader drain what is left."""
        os.dup2(self._real_fd, 2)
        os.close(self._real_fd)
        # Child processes that inherited fd 2 may hold the pipe open; do not wait for them.
        self._thread.join(timeout=2)
        sys.stderr = self._saved_stderr
