"""The job's holder: the launcher process that owns a job's pipes for as long as the job lives.

Standard library only (it runs in the shim's ``python -I -S``). The holder sits outside the job's sandbox:
host root, in the host's PID namespace, outside the job's cgroup, in its own session. It

- reads the job's stdout and stderr pipes and writes the spool itself (``_spoolfile``), so a job's output
  reaches the disk whether or not a server runs, up to the cap; it never waits for a server;
- tells a connected server what happens over a stream socket (one text line per event):
  ``pid N`` (host pid of init, or of the command without namespaces), ``ns 0|1`` (whether the job has
  namespaces: signals for the whole job go to init, else to the command's process group), ``uid N``,
  ``started``, ``failed KIND ERRNO MESSAGE``, ``exit N`` / ``signal N``,
  ``out COMMITTED STDOUT STDERR DROPPED REASON`` (spool progress; REASON ``-`` while storing, else the
  ``_spoolfile.REASON_*`` code) and ``end`` once the exit file is written. A server sends ``k`` after
  each ``out`` (so at most one report is in flight and a slow server never makes the holder queue),
  ``stopping`` before it stops the job and ``winsize ROWS COLS`` for a job with a terminal;
- listens on a socket in the job's directory. A connection first names its role in one line: ``ctl``
  (a restarted server reattaches: it replaces the old connection and first gets the whole current state,
  as lines of the same protocol) or ``input`` (the job's stdin: the holder answers ``ok``, or ``busy``,
  ``no-stdin`` or ``closed``, then reads frames ``<I length>`` + data, where length 0 means end of input;
  a connection that closes without it leaves stdin open for the next one). At most one input frame is
  buffered: a job that reads slowly makes the writer wait, never the holder's memory grow;
- for a job with a terminal (``--tty``), gets the pty's master from the job's first process (opened inside
  the job's own devpts), copies it to the spool as stdout and the input to it;
- when the job has ended: waits (bounded) until its cgroup is empty, keeps the cgroup's usage files,
  removes the cgroup, and writes the exit file atomically (temp file, fsync, rename, fsync of the
  directory), then says ``end`` and exits.

The exit file is ``key value`` lines: ``version 1``, ``ended_at SECONDS``, ``exit N`` or ``signal N`` (or
neither: unknown), ``stop_requested 0|1``, ``stdout_bytes``, ``stderr_bytes``, ``dropped_bytes``,
``truncated CODE|-``, and per usage file ``stat HEX(PATH) HEX(CONTENT)``.
"""

# The C modules, not socket.py or signal.py: those import enum, which costs milliseconds per direct start
# and memory in every holder.
import _signal as signal  # type: ignore[import-not-found]
import _socket as socket
import fcntl
import os
import select
import struct
import time

try:
    import _spoolfile  # type: ignore[import-not-found]
except ImportError:  # imported by the engine for the protocol's constants, not run by the shim
    from jobworker.engine import _spoolfile

# After the job's main process is gone, output still in the pipes is drained; a process that escaped the
# job (only possible without namespaces and cgroups) could hold a pipe open forever: give up after this.
DRAIN_AFTER_EXIT_S = 2.0
# How long the holder waits for the job's cgroup to empty before removing what it can.
CGROUP_EMPTY_S = 2.0
_POLL_S = 0.01
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_TIOCSWINSZ = 0x5414
_IN = select.POLLIN | select.POLLHUP | select.POLLERR
_OUT = select.POLLOUT | select.POLLHUP | select.POLLERR
INPUT_FRAME = struct.Struct("<I")
# The largest input frame a writer may send (what the holder buffers at most).
MAX_INPUT_FRAME = 64 * 1024
# End of input on a terminal: the line discipline's EOF character (^D), as a keyboard would send it.
_TTY_EOF = b"\x04"


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size (the kernel sends SIGWINCH to its foreground process group)."""
    fcntl.ioctl(fd, _TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def parse_winsize(value: str) -> "tuple[int, int]":
    rows, _, cols = value.partition(":")
    return int(rows), int(cols)


def _report_line(sock: "socket.socket | None", line: str) -> bool:
    """Send one line without ever blocking; False when the server is gone or not keeping up."""
    if sock is None:
        return False
    try:
        sock.send((line.replace("\n", " ") + "\n").encode(), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except OSError:
        return False
    return True


class Holder:
    """One job's holder; built before the job's first process is forked."""

    def __init__(self, ctl_fd: int, flags: "dict[str, str]") -> None:
        self._ctl: socket.socket | None = socket.socket(fileno=ctl_fd)
        self._ctl.setblocking(False)
        self._ctl_buffer = b""
        self._credit = True
        self._reported: str | None = None  # the last "out" line sent
        self._flags = flags
        self.uid = flags.get("--uid", "")
        self.namespaces = "--namespaces" in flags
        self.pid = 0
        self.started = False
        self.exit_line = ""
        self.stop_requested = False
        self._stats_paths = [p for p in flags.get("--stats-file", "").split("\0") if p]
        self._procs_files = [p for p in flags.get("--cgroup-procs", "").split("\0") if p]
        self._dir_fd = -1
        self._listener: socket.socket | None = None
        spool = flags.get("--spool")
        spool_fd = index_fd = -1
        if spool is not None:
            directory = os.path.dirname(spool)
            self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            spool_fd = os.open(spool, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            if "--index" in flags:
                index_fd = os.open(
                    flags["--index"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
            if "--socket" in flags:
                self._listener = self._listen(os.path.basename(flags["--socket"]))
        self._spool_fd, self._index_fd = spool_fd, index_fd
        self.writer = (
            _spoolfile.SpoolWriter(spool_fd, int(flags.get("--cap", "0")), index_fd)
            if spool_fd >= 0
            else None
        )
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        # The job's first process reports (and hands over a terminal's master) on this socket.
        self.status_r, self.status_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.tty = "--tty" in flags
        self.stdin = self.tty or "--stdin" in flags
        # Where input goes: the pipe's write end, or the terminal's master once the job sent it.
        self._input_fd = -1
        self.in_r = -1
        if self.stdin and not self.tty:
            self.in_r, self._input_fd = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self._input_fd, False)
        self._input: socket.socket | None = None
        self._input_buffer = b""
        self._pending = b""
        self._input_ended = False
        self._input_closed = False
        for fd in (self.out_r, self.err_r):
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass

    def _listen(self, name: str) -> socket.socket:
        # Through the directory's descriptor: a state dir's path may be longer than a socket address.
        path = f"/proc/self/fd/{self._dir_fd}/{name}"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(path)
        listener.listen(4)
        listener.setblocking(False)
        return listener

    def into_child(self) -> int:
        """In the job's first process: stdin, stdout and stderr are the pipes; nothing of the holder stays
        open but the status socket, whose descriptor is returned."""
        stdin = self.in_r if self.in_r >= 0 else os.open("/dev/null", os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(self.out_w, 1)
        os.dup2(self.err_w, 2)
        keep = {0, 1, 2}
        for fd in (
            stdin,
            self._input_fd,
            self.out_r,
            self.out_w,
            self.err_r,
            self.err_w,
            self._spool_fd,
            self._index_fd,
            self._dir_fd,
        ):
            if fd not in keep and fd >= 0:
                os.close(fd)
        for sock in (self._ctl, self._listener, self.status_r):
            if sock is not None:
                sock.close()
        return self.status_w.detach()

    def report(self, line: str) -> None:
        _report_line(self._ctl, line)

    def forked(self, pid: int) -> None:
        """The job's first process exists (init, or the command without namespaces)."""
        os.close(self.out_w)
        os.close(self.err_w)
        self.status_w.close()
        if self.in_r >= 0:
            os.close(self.in_r)
        self.pid = pid
        self._hello()

    def _hello(self) -> None:
        """Who the job is: the first lines on every connection."""
        self.report(f"pid {self.pid}")
        self.report(f"ns {int(self.namespaces)}")
        if self.uid:
            self.report(f"uid {self.uid}")

    # The event loop ------------------------------------------------------------------------------------

    def run(self, *, namespaces: bool) -> int:
        """Hold the job until it has ended and is cleaned up; returns the holder's exit code."""
        self._namespaces = namespaces
        self._poller = select.poll()
        self._streams = {self.out_r: _spoolfile.STDOUT, self.err_r: _spoolfile.STDERR}
        for fd in self._streams:
            self._poller.register(fd, _IN)
        self._status_fd = self.status_r.fileno()
        self._status_buffer = b""
        self._poller.register(self._status_fd, _IN)
        pidfd = _pidfd(self.pid)
        if pidfd >= 0:
            self._poller.register(pidfd, _IN)
        self._register_ctl(self._poller)
        wait_status: int | None = None
        drain_deadline = None
        while self._streams or self._status_fd >= 0 or wait_status is None:
            timeout = None
            if pidfd < 0 and wait_status is None:
                timeout = 100
            if drain_deadline is not None:
                remaining = drain_deadline - time.monotonic()
                if remaining <= 0:
                    break
                timeout = int(remaining * 1000) + 1
            for fd, events in self._poller.poll(timeout):
                if fd == pidfd:
                    self._poller.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = -1
                else:
                    self._dispatch(fd, events)
            if wait_status is None:
                wait_status = _reap(self.pid)
                if wait_status is not None:
                    self._on_end(wait_status, namespaces=namespaces)
                    drain_deadline = time.monotonic() + DRAIN_AFTER_EXIT_S
            self._progress()
            self._update_interest()
        for fd in self._streams:
            os.close(fd)
        return self._finish()

    def _dispatch(self, fd: int, events: int) -> None:
        if fd == self._input_fd and fd not in self._streams:
            # The stdin pipe: room for input, or its reader gone (then the write fails and drops it).
            self._feed()
            return
        if fd == self._input_fd and events & select.POLLOUT:
            self._feed()
            if not events & _IN:
                return
        if fd in self._streams:
            if not self._drain(fd, self._streams[fd]):
                self._poller.unregister(fd)
                os.close(fd)
                del self._streams[fd]
                if fd == self._input_fd:
                    self._input_fd = -1
        elif fd == self._status_fd:
            self._on_status()
        elif self._listener is not None and fd == self._listener.fileno():
            self._accept(self._poller)
        elif self._ctl is not None and fd == self._ctl.fileno():
            self._on_ctl(self._poller)
        elif self._input is not None and fd == self._input.fileno():
            self._on_input()

    def _on_status(self) -> None:
        """What the job's first process reports, and a terminal's master it hands over."""
        try:
            data, ancdata, _flags, _addr = self.status_r.recvmsg(4096, socket.CMSG_SPACE(4))
        except OSError:
            data, ancdata = b"", []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(payload) >= 4:
                self._got_terminal(struct.unpack("i", payload[:4])[0])
        if not data:
            self._poller.unregister(self._status_fd)
            self.status_r.close()
            self._status_fd = -1
            if not self._namespaces:
                self._direct_started(self._status_buffer)
            return
        self._status_buffer += data
        if self._namespaces:
            *lines, self._status_buffer = self._status_buffer.split(b"\n")
            for line in lines:
                self._on_init_line(line.decode(errors="replace"))
        else:
            self._status_buffer = self._status_buffer.replace(b"pty\n", b"")

    def _got_terminal(self, master: int) -> None:
        os.set_inheritable(master, False)
        os.set_blocking(master, False)
        self._input_fd = master
        self._streams[master] = _spoolfile.STDOUT
        self._poller.register(master, _IN)

    def _drain(self, fd: int, stream: int) -> bool:
        try:
            data = os.read(fd, _spoolfile.MAX_RECORD)
        except BlockingIOError:
            return True
        except OSError:
            # EIO from a terminal's master once no process holds the job's side of it: its end.
            data = b""
        if not data:
            return False
        if self.writer is not None:
            self.writer.append(stream, data, time.time_ns())
        return True

    def _direct_started(self, failure: bytes) -> None:
        """Without namespaces the command's exec reports only failure (its pipe closes at exec)."""
        if failure:
            self.report(f"failed {failure.decode(errors='replace')}")
        else:
            self.started = True
            self.report("started")

    def _on_init_line(self, line: str) -> None:
        word = line.partition(" ")[0]
        if word == "started":
            self.started = True
        elif word in ("exit", "signal") and not self.exit_line:
            self.exit_line = line
        elif word in ("pid", "pty"):
            return  # init stands for the job; a terminal's master came with the "pty" line
        self.report(line)

    def _on_end(self, status: int, *, namespaces: bool) -> None:
        """The job's first process was reaped."""
        self.ended_at = time.time()
        if not namespaces:
            # Whatever the command left in its process group goes with it.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
        if not self.exit_line:
            if os.WIFSIGNALED(status):
                # init was killed (a stop after the grace period, OOM): the command went with it.
                self.exit_line = f"signal {os.WTERMSIG(status)}"
            elif not namespaces:
                self.exit_line = f"exit {os.waitstatus_to_exitcode(status)}"
            if self.exit_line and self.started:
                self.report(self.exit_line)

    # The server's connection ---------------------------------------------------------------------------

    def _register_ctl(self, poller: "select.poll") -> None:
        if self._listener is not None:
            poller.register(self._listener.fileno(), select.POLLIN)
        if self._ctl is not None:
            poller.register(self._ctl.fileno(), _IN)

    def _accept(self, poller: "select.poll") -> None:
        assert self._listener is not None
        try:
            conn = socket.socket(fileno=self._listener._accept()[0])  # type: ignore[attr-defined]
        except OSError:
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, peer_uid, _gid = struct.unpack("3i", creds)
        if peer_uid not in (0, os.geteuid()):
            conn.close()
            return
        conn.settimeout(1.0)
        try:
            role = _read_line(conn)
        except OSError:
            conn.close()
            return
        conn.setblocking(False)
        if role == "input":
            self._attach_input(conn)
            return
        if role != "ctl":
            conn.close()
            return
        self._drop_ctl(poller)
        self._ctl = conn
        poller.register(conn.fileno(), _IN)
        self._credit = True
        self._reported = None
        self._hello()
        if self.started:
            self.report("started")
        if self.exit_line:
            self.report(self.exit_line)

    def _drop_ctl(self, poller: "select.poll") -> None:
        if self._ctl is not None:
            try:
                poller.unregister(self._ctl.fileno())
            except KeyError:
                pass
            self._ctl.close()
            self._ctl = None

    def _on_ctl(self, poller: "select.poll") -> None:
        assert self._ctl is not None
        try:
            data = self._ctl.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_ctl(poller)
            return
        self._ctl_buffer += data
        *lines, self._ctl_buffer = self._ctl_buffer.split(b"\n")
        for line in lines:
            if line == b"k":
                self._credit = True
            elif line == b"stopping":
                self.stop_requested = True
            elif line.startswith(b"winsize ") and self.tty and self._input_fd >= 0:
                rows, _, cols = line[8:].decode().partition(" ")
                try:
                    set_winsize(self._input_fd, int(rows), int(cols))
                except (OSError, ValueError):
                    pass

    # The job's input -----------------------------------------------------------------------------------

    def _attach_input(self, conn: "socket.socket") -> None:
        if not self.stdin:
            answer = "no-stdin"
        elif self._input_closed or (self.tty and self._input_fd < 0 and self.exit_line):
            answer = "closed"
        elif self._input is not None:
            answer = "busy"
        else:
            answer = "ok"
        _report_line(conn, answer)
        if answer != "ok":
            conn.close()
            return
        self._input = conn
        self._input_buffer = b""
        self._poller.register(conn.fileno(), _IN)

    def _drop_input(self) -> None:
        if self._input is not None:
            self._poller.unregister(self._input.fileno())
            self._input.close()
            self._input = None

    def _on_input(self) -> None:
        """Take input frames, one frame's data at a time: nothing more is read until it reached the job."""
        assert self._input is not None
        if self._pending:
            return
        try:
            data = self._input.recv(MAX_INPUT_FRAME + INPUT_FRAME.size - len(self._input_buffer))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._input_buffer += data
        self._next_frame()
        if not data and self._input is not None:
            # Gone without the end-of-input frame: a writer that detached; stdin stays open for the next.
            self._drop_input()

    def _next_frame(self) -> None:
        """Move the next whole buffered frame to pending (and feed it), or note the end of input."""
        if self._pending or len(self._input_buffer) < INPUT_FRAME.size:
            return
        (length,) = INPUT_FRAME.unpack_from(self._input_buffer)
        if length > MAX_INPUT_FRAME:
            self._input_buffer = b""
            self._drop_input()
            return
        if length == 0:
            self._input_buffer = b""
            self._input_ended = True
            self._drop_input()
        elif len(self._input_buffer) < INPUT_FRAME.size + length:
            return
        else:
            self._pending = self._input_buffer[INPUT_FRAME.size : INPUT_FRAME.size + length]
            self._input_buffer = self._input_buffer[INPUT_FRAME.size + length :]
        self._feed()

    def _feed(self) -> None:
        """Write pending input to the job; at the end of input, close its stdin (or send ^D to a terminal)."""
        target = self._input_fd
        if target < 0:
            self._pending = b""
        while self._pending:
            try:
                written = os.write(target, self._pending)
            except BlockingIOError:
                return
            except OSError:
                # The job closed its stdin (EPIPE) or its terminal went away: what it does not read is lost.
                self._pending = b""
                break
            self._pending = self._pending[written:]
        if self._input_buffer:
            self._next_frame()
        elif self._input_ended and not self._input_closed:
            self._input_closed = True
            if self.tty and target >= 0:
                try:
                    os.write(target, _TTY_EOF)
                except OSError:
                    pass
            elif target >= 0:
                os.close(target)
                self._input_fd = -1

    def _update_interest(self) -> None:
        """Before each poll: read input only while nothing waits for the job, wait for room while it does."""
        pending = bool(self._pending)
        if self._input is not None:
            self._poller.modify(self._input.fileno(), 0 if pending else _IN)
        target = self._input_fd
        if target < 0:
            return
        if target in self._streams:  # a terminal's master: always read, and write when there is input
            self._poller.modify(target, _IN | _OUT if pending else _IN)
        elif pending:
            self._poller.register(target, _OUT)
        else:
            try:
                self._poller.unregister(target)
            except KeyError:
                pass

    def _out_line(self) -> str:
        w = self.writer
        if w is None:
            return "out 0 0 0 0 -"
        reason = "-" if w.truncated is None else str(w.truncated)
        return f"out {w.committed} {w.stdout_bytes} {w.stderr_bytes} {w.dropped_bytes} {reason}"

    def _progress(self) -> None:
        """Tell the server how far the spool got, when it has taken the previous report."""
        if not self._credit or self._ctl is None:
            return
        line = self._out_line()
        if line != self._reported and _report_line(self._ctl, line):
            self._reported = line
            self._credit = False

    # The end -----------------------------------------------------------------------------------------

    def _finish(self) -> int:
        stats = self._release_cgroup()
        self._write_exit_file(stats)
        if self._ctl is not None:
            self._ctl.setblocking(True)
            self._ctl.settimeout(1.0)
            try:
                self._ctl.sendall((self._out_line() + "\nend\n").encode())
            except OSError:
                pass
        if self._listener is not None:
            try:
                os.unlink(os.path.basename(self._flags["--socket"]), dir_fd=self._dir_fd)
            except OSError:
                pass
        return 0

    def _release_cgroup(self) -> "list[tuple[str, str]]":
        """Wait (bounded) for the job's cgroup to empty, keep its usage files, remove it."""
        deadline = time.monotonic() + CGROUP_EMPTY_S
        while self._procs_files and time.monotonic() < deadline:
            pids = [int(p) for f in self._procs_files for p in _read(f).split() if p.isdigit()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(_POLL_S)
        stats = [(path, _read(path)) for path in self._stats_paths]
        for path in dict.fromkeys(os.path.dirname(f) for f in self._procs_files):
            while True:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    break
                except OSError:
                    # EBUSY until the kernel has let go of the last task.
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(_POLL_S)
                    continue
                break
        return stats

    def _write_exit_file(self, stats: "list[tuple[str, str]]") -> None:
        if self._dir_fd < 0 or "--exit-file" not in self._flags:
            return
        w = self.writer
        lines = ["version 1", f"ended_at {getattr(self, 'ended_at', time.time()):.6f}"]
        if self.exit_line and self.started:
            lines.append(self.exit_line)
        lines.append(f"stop_requested {int(self.stop_requested)}")
        if w is not None:
            reason = "-" if w.truncated is None else str(w.truncated)
            lines += [
                f"stdout_bytes {w.stdout_bytes}",
                f"stderr_bytes {w.stderr_bytes}",
                f"dropped_bytes {w.dropped_bytes}",
                f"truncated {reason}",
            ]
        for path, content in stats:
            lines.append(f"stat {path.encode().hex()} {content.encode().hex()}")
        payload = ("\n".join(lines) + "\n").encode()
        name = os.path.basename(self._flags["--exit-file"])
        tmp = name + ".tmp"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=self._dir_fd
            )
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            os.fsync(self._dir_fd)
        except OSError:
            # A full disk: the server still learns the end over its connection, or reports the job LOST.
            pass


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return -1  # kernels before 5.3: the loop polls instead


def _reap(pid: int) -> "int | None":
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return status if reaped else None


def _read_line(conn: "socket.socket") -> str:
    """One short line from a new connection (its role), read byte by byte so nothing after it is taken."""
    line = b""
    while not line.endswith(b"\n") and len(line) < 64:
        byte = conn.recv(1)
        if not byte:
            break
        line += byte
    return line.decode(errors="replace").strip()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
