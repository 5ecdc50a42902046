"""A small init for the jobworker container: runs jw-server, restarts it when it dies, reaps orphans.

`python -m jobworker.pid1 [OPTIONS] -- COMMAND [ARGS...]` (the image's entrypoint is
`python -m jobworker.pid1 -- jw-server`). What it does, in order of importance:

- It runs COMMAND and, when COMMAND ends without having been asked to (a crash, `kill -9`, or a
  SIGTERM sent to it directly rather than to the container), starts it again after a bounded,
  doubling delay (reset once COMMAND ran long enough), logging one line per restart to stderr. A
  container whose server crashed therefore keeps running, and so do jobs that outlive the server.
  One exception: a first run that exits by itself (a status, not a signal) before `reset_after`
  is final, and the supervisor exits with its status: `--help`, a usage error or a configuration
  jw-server refuses at start-up would fail again on every restart.
- SIGTERM, SIGINT and SIGQUIT (what `docker stop` and Ctrl-C send) are forwarded to COMMAND, and once
  it has exited the supervisor exits with COMMAND's status (128+N when signal N ended it). SIGHUP,
  SIGUSR1 and SIGUSR2 are forwarded too but do not end anything (jw-server reloads credentials on
  SIGHUP), so a crash after one of them is still restarted.
- As PID 1 (or, elsewhere, as a child subreaper) it inherits every process orphaned by COMMAND's
  death, e.g. the per-job holders, and reaps each one when it exits: no zombies pile up. Only the
  pid it started counts as COMMAND; an orphan's status never does.

Standard library only, and deliberately outside `jobworker.server`, whose package import pulls in
grpc: PID 1 stays a few MiB and starts in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PROG = "jw-pid1"

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
"""Forwarded, then the supervisor exits with COMMAND's status once COMMAND has exited."""

PASS_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2})
"""Forwarded only: COMMAND is expected to keep running (jw-server reloads credentials on SIGHUP)."""

# Everything the supervisor handles, as blocked signals taken synchronously with sigtimedwait: no
# handler can interrupt the bookkeeping, and no SIGCHLD is lost between a check and a wait.
WAITED_SIGNALS = STOP_SIGNALS | PASS_SIGNALS | {signal.SIGCHLD}

# COMMAND starts with default dispositions for these: Python ignores SIGPIPE and SIGXFSZ, and an
# ignored signal survives execve.
DEFAULT_IN_CHILD = WAITED_SIGNALS | {signal.SIGPIPE, signal.SIGXFSZ}

PR_SET_CHILD_SUBREAPER = 36
EXIT_CANNOT_RUN = 127
"""Exit status when COMMAND cannot be started at all (not found, not executable), as in shells."""


@dataclass(frozen=True)
class Backoff:
    """The delay before restarting COMMAND: `initial` doubling up to `maximum`, reset after `reset_after`."""

    initial: float = 0.1
    maximum: float = 5.0
    reset_after: float = 30.0

    def next_delay(self, previous: float | None, ran_for: float) -> float:
        """The delay after a run of `ran_for` seconds, given the delay before that run (None: none yet)."""
        if previous is None or ran_for >= self.reset_after:
            return self.initial
        return min(previous * 2, self.maximum)


def describe_status(status: int) -> str:
    """`exited with code N` or `killed by SIGNAME` for a waitpid status."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def exit_code_of(status: int) -> int:
    """The exit status a shell would report for a waitpid status: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _become_subreaper() -> bool:
    """Adopt orphaned descendants, as PID 1 does anyway; return whether the kernel agreed."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class Supervisor:
    """Runs one COMMAND, restarts it, forwards signals and reaps every child; see the module doc."""

    def __init__(
        self,
        argv: Sequence[str],
        backoff: Backoff,
        *,
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._argv = list(argv)
        self._backoff = backoff
        self._log = log
        self._clock = clock
        self._pid: int | None = None
        self._started_at = 0.0
        self._delay: float | None = None
        self._restart_at: float | None = None
        self._stop_signal: signal.Signals | None = None
        self._runs = 0

    def run(self) -> int:
        """Supervise until COMMAND's end is final (a stop signal, a failed first run); return the status."""
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED_SIGNALS)
        if os.getpid() != 1:
            _become_subreaper()
        try:
            self._spawn()
        except OSError as exc:
            self._log(f"cannot run {self._argv[0]}: {exc.strerror or exc}")
            return EXIT_CANNOT_RUN
        while True:
            timeout = None
            if self._restart_at is not None:
                timeout = max(0.0, self._restart_at - self._clock())
            if timeout is None:
                info: signal.struct_siginfo | None = signal.sigwaitinfo(WAITED_SIGNALS)
            else:
                info = signal.sigtimedwait(WAITED_SIGNALS, timeout) if timeout > 0 else None
            if info is not None and info.si_signo != signal.SIGCHLD:
                outcome = self._on_signal(signal.Signals(info.si_signo))
                if outcome is not None:
                    return outcome
            outcome = self._reap()
            if outcome is not None:
                return outcome
            if self._restart_at is not None and self._clock() >= self._restart_at:
                self._restart_at = None
                try:
                    self._spawn()
                except OSError as exc:
                    # It ran before, so this is likely passing (e.g. an upgrade in progress): retry.
                    self._log(f"cannot run {self._argv[0]}: {exc.strerror or exc}")
                    self._schedule_restart(ran_for=0.0)

    def _spawn(self) -> None:
        # Its own process group: a terminal's Ctrl-C reaches COMMAND once, through us, not twice.
        self._pid = os.posix_spawnp(
            self._argv[0],
            self._argv,
            os.environ,
            setpgroup=0,
            setsigmask=(),
            setsigdef=DEFAULT_IN_CHILD,
        )
        self._started_at = self._clock()
        self._runs += 1

    def _on_signal(self, signum: signal.Signals) -> int | None:
        if signum in STOP_SIGNALS:
            self._stop_signal = signum
            if self._pid is None:
                # Between two runs: nothing to stop, so stop now, as if COMMAND had died of it.
                return 128 + signum
        if self._pid is not None:
            # ProcessLookupError: it has just exited, and _reap collects it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signum)
        return None

    def _reap(self) -> int | None:
        """Collect every exited child; return the exit status when COMMAND's end is final."""
        outcome: int | None = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return outcome
            if pid == 0:
                return outcome
            if pid != self._pid:
                continue  # an orphan we adopted: reaping it is all it needs
            self._pid = None
            ran_for = self._clock() - self._started_at
            if self._stop_signal is not None:
                outcome = exit_code_of(status)
                continue
            if self._runs == 1 and os.WIFEXITED(status) and ran_for < self._backoff.reset_after:
                code = exit_code_of(status)
                if code != 0:
                    self._log(f"{self._argv[0]} {describe_status(status)} at start-up; not restarting it")
                outcome = code
                continue
            self._schedule_restart(ran_for, status)

    def _schedule_restart(self, ran_for: float, status: int | None = None) -> None:
        self._delay = self._backoff.next_delay(self._delay, ran_for)
        self._restart_at = self._clock() + self._delay
        if status is not None:
            self._log(
                f"{self._argv[0]} {describe_status(status)} after {ran_for:.1f}s; "
                f"restarting in {self._delay:.3g}s"
            )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    defaults = Backoff()
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="python -m jobworker.pid1 [OPTIONS] -- COMMAND [ARGS...]",
        description=(
            "Run COMMAND as the container's init: restart it when it dies unless it was asked to stop, "
            "forward SIGTERM/SIGINT/SIGQUIT (then exit with its status) and SIGHUP/SIGUSR1/SIGUSR2, "
            "and reap every orphaned process. A first run that exits with a status within "
            "--reset-after seconds (--help, a usage or configuration error) is not restarted: "
            "its status is the supervisor's."
        ),
    )
    parser.add_argument(
        "--restart-delay",
        type=_positive,
        default=defaults.initial,
        metavar="SECONDS",
        help=f"delay before the first restart; doubles on each further one (default {defaults.initial})",
    )
    parser.add_argument(
        "--max-restart-delay",
        type=_positive,
        default=defaults.maximum,
        metavar="SECONDS",
        help=f"longest delay between restarts (default {defaults.maximum})",
    )
    parser.add_argument(
        "--reset-after",
        type=_positive,
        default=defaults.reset_after,
        metavar="SECONDS",
        help=f"a run this long resets the delay to --restart-delay (default {defaults.reset_after})",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and supervise; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    command: list[str] = args.command
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no COMMAND given (python -m jobworker.pid1 -- jw-server ...)")
    if args.max_restart_delay < args.restart_delay:
        parser.error("--max-restart-delay must not be shorter than --restart-delay")

    def log(line: str) -> None:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)

    backoff = Backoff(args.restart_delay, args.max_restart_delay, args.reset_after)
    return Supervisor(command, backoff, log=log).run()


if __name__ == "__main__":
    sys.exit(main())
