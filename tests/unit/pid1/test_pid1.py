"""jobworker.pid1, the container's init, run as a real process over a fake server (fake_server.py)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobworker.pid1 import Backoff, describe_status, exit_code_of

FAKE_SERVER = Path(__file__).with_name("fake_server.py")
LINE_TIMEOUT = 15.0


class RunningSupervisor:
    """`python -m jobworker.pid1 OPTIONS -- fake_server.py MODE DIR`; its stdout is read line by line."""

    def __init__(
        self, tmp_path: Path, mode: str, options: Sequence[str] = (), prefix: Sequence[str] = ()
    ) -> None:
        self.stderr_path = tmp_path / "supervisor.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "jobworker.pid1",
                *options,
                "--",
                sys.executable,
                str(FAKE_SERVER),
                mode,
                str(tmp_path),
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        assert self.proc.stdout is not None
        self._stdout = self.proc.stdout
        self._buffer = b""
        self.pids: list[int] = []
        """Fake servers and orphans it reported: ended by close() if still there."""

    def line(self, timeout: float = LINE_TIMEOUT) -> str:
        """The next line the fake server printed; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._stdout], [], [], left)[0]:
                pytest.fail(f"no line within {timeout:g}s; stderr: {self.stderr()!r}")
            chunk = os.read(self._stdout.fileno(), 4096)
            if not chunk:
                pytest.fail(f"supervisor's stdout closed; stderr: {self.stderr()!r}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line = raw.decode()
        if match := re.fullmatch(r"(?:started|orphan) (\d+)", line):
            self.pids.append(int(match[1]))
        return line

    def started(self) -> int:
        """Wait for the next `started PID` line and return that pid."""
        line = self.line()
        match = re.fullmatch(r"started (\d+)", line)
        assert match, line
        return int(match[1])

    def rest(self) -> str:
        """Everything left on stdout until every writer closed it (use once the supervisor exited)."""
        return (self._buffer + self._stdout.read()).decode()

    def stderr(self) -> str:
        """What the supervisor logged so far."""
        return self.stderr_path.read_text()

    def wait(self, timeout: float = LINE_TIMEOUT) -> int:
        """The supervisor's exit status."""
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Stop the supervisor if it still runs, then any fake server or orphan it left behind."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(LINE_TIMEOUT)
        for pid in self.pids:
            # Only ours: the pid may have been reused since (or be a PID-namespace pid).
            with contextlib.suppress(OSError):
                if str(FAKE_SERVER).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self._stdout.close()
        self._stderr.close()


@pytest.fixture
def supervise() -> Iterator[type[RunningSupervisor]]:
    """Start supervisors with `supervise(tmp_path, mode, ...)`; each is ended at the test's end."""
    started: list[RunningSupervisor] = []

    class Tracked(RunningSupervisor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    yield Tracked
    for supervisor in started:
        supervisor.close()


def test_restarts_the_command_after_kill_9_and_logs_one_line(
    tmp_path: Path, supervise: type[RunningSupervisor]
) -> None:
    supervisor = supervise(tmp_path, "serve")
    first = supervisor.started()
    os.kill(first, signal.SIGKILL)
    second = supervisor.started()
    assert second != first
    assert supervisor.proc.poll() is None
    log = supervisor.stderr().splitlines()
    assert len(log) == 1, log
    assert re.fullmatch(r"jw-pid1: .*python\S* killed by SIGKILL after [\d.]+s; restarting in 0\.1s", log[0])
    supervisor.proc.send_signal(signal.SIGTERM)
    assert supervisor.line() == "got 15"
    assert supervisor.wait() == 7


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_forwards_a_stop_signal_and_exits_with_the_commands_code(
    tmp_path: Path, supervise: type[RunningSupervisor], signum: signal.Signals
) -> None:
    supervisor = supervise(tmp_path, "serve")
    supervisor.started()
    supervisor.proc.send_signal(signum)
    assert supervisor.line() == f"got {int(signum)}"
    assert supervisor.wait() == 7
    assert supervisor.stderr() == ""


def test_exits_128_plus_n_when_the_forwarded_signal_kills_the_command(
    tmp_path: Path, supervise: type[RunningSupervisor]
) -> None:
    # SIGQUIT is forwarded and stops, and the fake server has no handler for it: it dies of it.
    supervisor = supervise(tmp_path, "serve")
    supervisor.started()
    supervisor.proc.send_signal(signal.SIGQUIT)
    assert supervisor.wait() == 128 + signal.SIGQUIT


def test_sighup_is_forwarded_and_a_later_crash_is_still_restarted(
    tmp_path: Path, supervise: type[RunningSupervisor]
) -> None:
    supervisor = supervise(tmp_path, "serve")
    first = supervisor.started()
    supervisor.proc.send_signal(signal.SIGHUP)
    assert supervisor.line() == "got 1"
    os.kill(first, signal.SIGKILL)
    assert supervisor.started() != first
    assert supervisor.proc.poll() is None


def _reaps_orphans(supervisor: RunningSupervisor, *, stop: bool) -> None:
    supervisor.started()
    orphan = supervisor.line()
    assert re.fullmatch(r"orphan \d+", orphan), orphan
    # The fake server died leaving its child behind; the supervisor restarted it and adopted the
    # orphan. The new run releases the orphan and watches /proc: it must vanish, not stay a zombie.
    supervisor.started()
    assert supervisor.line() == "orphan gone"
    # Reaping the orphan did not pass for the server's death: one restart, and the server still runs.
    log = supervisor.stderr().splitlines()
    assert len(log) == 1, log
    assert "killed by SIGKILL" in log[0]
    assert supervisor.proc.poll() is None
    if stop:
        supervisor.proc.send_signal(signal.SIGTERM)
        assert supervisor.line() == "got 15"
        assert supervisor.wait() == 7


def test_reaps_an_adopted_orphan_as_a_subreaper(tmp_path: Path, supervise: type[RunningSupervisor]) -> None:
    _reaps_orphans(supervise(tmp_path, "orphan"), stop=True)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="a PID namespace needs root")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_reaps_an_orphan_as_real_pid_1(tmp_path: Path, supervise: type[RunningSupervisor]) -> None:
    # unshare -f forks the supervisor as PID 1 of a new PID namespace with its own /proc; signals
    # reach unshare, not it, so the namespace ends when unshare is killed (--kill-child).
    prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    _reaps_orphans(supervise(tmp_path, "orphan", prefix=prefix), stop=False)


def test_backoff_doubles_up_to_its_bound(tmp_path: Path, supervise: type[RunningSupervisor]) -> None:
    options = ["--restart-delay", "0.05", "--max-restart-delay", "0.4", "--reset-after", "30"]
    supervisor = supervise(tmp_path, "crash", options)
    starts = []
    for _ in range(8):
        supervisor.started()
        starts.append(time.monotonic())
    supervisor.proc.send_signal(signal.SIGTERM)
    # Between two runs (128+15), forwarded to a run (its handler exits 7), or just after a run
    # had killed itself.
    assert supervisor.wait() in (7, 128 + signal.SIGTERM, 128 + signal.SIGKILL)
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+)s", supervisor.stderr())]
    assert delays[:7] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each restart waited at least its delay (python's start-up only adds to the gap); 0.9 leaves room
    # for sigtimedwait's rounding of its timeout.
    for gap, delay in zip(gaps, delays, strict=False):
        assert gap >= delay * 0.9, (gaps, delays)


def test_a_first_run_that_exits_at_once_is_final(tmp_path: Path, supervise: type[RunningSupervisor]) -> None:
    # What `jw-server --help` or a configuration error looks like: restarting would loop for nothing.
    supervisor = supervise(tmp_path, "exit3")
    supervisor.started()
    assert supervisor.wait() == 3
    assert supervisor.stderr().endswith("exited with code 3 at start-up; not restarting it\n")
    assert supervisor.rest() == "", "it was started again"


def test_later_runs_are_restarted_whatever_their_status(
    tmp_path: Path, supervise: type[RunningSupervisor]
) -> None:
    supervisor = supervise(tmp_path, "flaky")
    supervisor.started()
    supervisor.started()
    supervisor.started()
    log = supervisor.stderr().splitlines()
    assert len(log) == 2, log
    assert "killed by SIGKILL" in log[0]
    assert "exited with code 3" in log[1]
    assert "restarting in 0.2s" in log[1]
    assert supervisor.proc.poll() is None


def test_a_long_run_resets_the_backoff() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0, reset_after=30.0)
    delay = None
    seen = []
    for _ in range(8):
        delay = backoff.next_delay(delay, ran_for=1.0)
        seen.append(delay)
    assert seen == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.next_delay(5.0, ran_for=30.0) == 0.1
    assert backoff.next_delay(5.0, ran_for=29.9) == 5.0


def test_status_descriptions() -> None:
    exited = 3 << 8
    killed = signal.SIGKILL
    assert describe_status(exited) == "exited with code 3"
    assert describe_status(killed) == "killed by SIGKILL"
    assert exit_code_of(exited) == 3
    assert exit_code_of(killed) == 137


def test_a_command_that_cannot_run_exits_127_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobworker.pid1", "--", "/nonexistent/jw-server"],
        capture_output=True,
        text=True,
        timeout=LINE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 127
    assert result.stderr == "jw-pid1: cannot run /nonexistent/jw-server: No such file or directory\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no COMMAND given"),
        (["--restart-delay", "0", "--", "true"], "must be a positive number"),
        (["--restart-delay", "2", "--max-restart-delay", "1", "--", "true"], "must not be shorter"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobworker.pid1", *args],
        capture_output=True,
        text=True,
        timeout=LINE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
