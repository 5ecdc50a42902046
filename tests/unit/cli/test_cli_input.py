"""`jw run -i`, `jw run -it` on a real pty, `jw start -i` + `jw attach`: a job's stdin and terminal."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from cli_fixtures import Jw, start_server
from test_cli_process import LAUNCHER, REPO


def _env(jw: Jw, user: str = "alice") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JW_", "GRPC_"))}
    env.update({k: v for k, v in jw.env(user).items() if v is not None})
    return env


def _jw(jw: Jw, *args: str, stdin: bytes, user: str = "alice") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args],
        input=stdin,
        capture_output=True,
        env=_env(jw, user),
        cwd=REPO,
        timeout=60,
    )


def test_run_i_pipes_binary_stdin_and_its_end(jw: Jw) -> None:
    data = os.urandom(10 << 20)
    done = _jw(jw, "run", "-i", "--", "sh", "-c", "sha256sum; echo after-eof; exit 5", stdin=data)
    assert done.returncode == 5, done.stderr
    assert done.stdout == f"{hashlib.sha256(data).hexdigest()}  -\nafter-eof\n".encode()


def test_run_i_exits_when_the_job_ends_before_our_stdin_does(jw: Jw) -> None:
    with subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE) as endless:
        assert endless.stdout is not None
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, "run", "-i", "--", "sh", "-c", "exit 4"],
            stdin=endless.stdout,
            capture_output=True,
            env=_env(jw),
            cwd=REPO,
            timeout=60,
        )
        endless.kill()
    assert done.returncode == 4, done.stderr


@pytest.mark.parametrize("kind", ["file", "dev-null"])
def test_run_i_reads_a_file_or_dev_null_as_stdin(jw: Jw, tmp_path: Path, kind: str) -> None:
    """`< file` and `< /dev/null`: epoll refuses both (EPERM), and they are always readable."""
    data = os.urandom(300_000) if kind == "file" else b""
    path = tmp_path / "input" if kind == "file" else Path("/dev/null")
    if kind == "file":
        path.write_bytes(data)
    with path.open("rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, "run", "-i", "--", "sha256sum"],
            stdin=stdin,
            capture_output=True,
            env=_env(jw),
            cwd=REPO,
            timeout=60,
        )
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == f"{hashlib.sha256(data).hexdigest()}  -\n".encode()


def test_without_i_the_job_reads_nothing(jw: Jw) -> None:
    done = _jw(jw, "run", "--", "cat", stdin=b"hi\n")
    assert (done.returncode, done.stdout) == (0, b"")


def test_attach_writes_to_a_job_started_with_i(jw: Jw) -> None:
    job = jw("start", "-i", "--", "sh", "-c", "read line; echo got:$line; exit 3")
    assert job.exit_code == 0, job.stderr
    job_id = job.stdout.strip()
    assert jw("status", "--json", job_id).stdout.count('"stdin": true') == 1
    done = _jw(jw, "attach", job_id, stdin=b"hello\n")
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"got:hello\n"


def test_attach_refuses_a_job_without_stdin(jw: Jw) -> None:
    job_id = jw.start("sleep", "30")
    result = jw("attach", job_id)
    assert result.exit_code == 6
    assert "not started with its stdin open" in result.stderr
    jw("stop", job_id)


def test_a_reader_may_not_write_to_a_jobs_stdin(jw: Jw) -> None:
    job_id = jw("start", "-i", "--", "sleep", "30").stdout.strip()
    result = _jw(jw, "attach", job_id, stdin=b"", user="rita")
    assert result.returncode == 5, result.stderr
    assert b"role reader may not call WriteInput" in result.stderr
    jw("stop", job_id)


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyJw:
    """jw with a real terminal: its stdin, stdout and stderr are the slave of a pty we hold the master of."""

    def __init__(self, jw: Jw, *args: str, rows: int, cols: int) -> None:
        self.master, slave = pty.openpty()
        _set_size(slave, rows, cols)
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=_env(jw),
            cwd=REPO,
            start_new_session=True,
            # The terminal is jw's controlling terminal, as in a shell: SIGWINCH reaches it.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.output = b""

    def read_until(self, marker: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} in {self.output!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: every process closed the terminal
                    chunk = b""
                if not chunk:
                    break
                self.output += chunk
        return self.output

    def resize(self, rows: int, cols: int) -> None:
        _set_size(self.master, rows, cols)
        self.process.send_signal(signal.SIGWINCH)

    def close(self) -> int:
        code = self.process.wait(30)
        os.close(self.master)
        return code


@pytest.mark.skipif(not Path("/dev/ptmx").exists(), reason="no pseudo-terminals here")
def test_run_it_gives_the_job_a_terminal_of_our_size_in_raw_mode(jw: Jw) -> None:
    script = 'tty; stty size; while read line; do [ "$line" = q ] && exit 7; echo got:$line; stty size; done'
    term = PtyJw(jw, "run", "-it", "--", "sh", "-c", script, rows=33, cols=101)
    try:
        term.read_until(b"33 101")
        os.write(term.master, b"hello\r")
        term.read_until(b"got:hello")
        term.resize(40, 120)
        # The new size travels beside the input: ask again until the job's terminal has it (bounded).
        for _ in range(50):
            if b"40 120" in term.output:
                break
            os.write(term.master, b"\r")
            term.read_until(b"got:\r\n", timeout=10)
            term.output = term.output.replace(b"got:\r\n", b"got-empty\r\n", 1)
        os.write(term.master, b"q\r")
        out = term.read_until(b"\x00", timeout=30)
    finally:
        code = term.close()
    assert code == 7, out
    lines = out.decode(errors="replace").split("\r\n")
    assert any(line.startswith("/dev/pts/") for line in lines), out
    assert "40 120" in lines, out
    # Raw mode here: only the job's own terminal echoed "hello" (once), then the job printed it.
    assert out.count(b"hello") == 2, out


def test_jw_run_i_rides_out_a_server_restart_and_exits_with_the_jobs_code(jw: Jw, tmp_path: Path) -> None:
    first = start_server(jw.credentials, tmp_path / "state", stop_jobs=False)
    port = first.address.rsplit(":", 1)[1]
    second = None
    mine = Jw(jw.runner, jw.credentials, first, jw.config_home)
    script = "echo ready; sleep 2; echo after; exit 9"
    with subprocess.Popen(["sleep", "60"], stdout=subprocess.PIPE) as endless:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "run", "-i", "--", "sh", "-c", script],
            stdin=endless.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(mine),
            cwd=REPO,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            first.stop()  # SIGTERM: the job keeps running with its holder
            second = start_server(jw.credentials, tmp_path / "state", "--listen", f"127.0.0.1:{port}")
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            endless.kill()
            if second is not None:
                second.stop()
    assert proc.returncode == 9, err
    assert out == b"after\n"
    assert b"reconnecting" in err
    assert b"stdin of job" in err  # the input stopped with the old server, and jw said so
