"""A stand-in for jw-server under the supervisor: `fake_server.py MODE STATE_DIR`.

Every run prints `started PID` on stdout first (the tests' readiness event), with its signal handlers
already in place, then:
- serve:  run until a signal; SIGTERM/SIGINT print `got N` and exit 7; SIGHUP prints `got 1` and goes on.
- crash:  SIGKILL itself at once (a crash loop).
- exit3:  exit 3 at once (a configuration error).
- flaky:  the first run SIGKILLs itself, the second exits 3, the next ones serve.
- orphan: the first run forks a grandchild that outlives it (it waits for the file STATE_DIR/release,
          then exits 0), prints `orphan PID`, and SIGKILLs itself; the next runs wait until that orphan
          is gone from /proc (it is reaped, not a zombie) or 10 s have passed, print `orphan gone` or
          `orphan zombie`, then serve.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType


def _on_stop(signum: int, _frame: FrameType | None) -> None:
    print(f"got {signum}", flush=True)
    sys.exit(7)


def _on_hup(signum: int, _frame: FrameType | None) -> None:
    print(f"got {signum}", flush=True)


def _serve() -> None:
    while True:
        signal.pause()


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _flaky(state_dir: Path) -> None:
    runs = state_dir / "runs"
    run = len(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text("x" * run)
    if run == 1:
        _crash()
    if run == 2:
        sys.exit(3)
    _serve()


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _orphan(state_dir: Path) -> None:
    marker = state_dir / "orphan.pid"
    if not marker.exists():
        pid = os.fork()
        if pid == 0:
            release = state_dir / "release"
            deadline = time.monotonic() + 30
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            os._exit(0)
        marker.write_text(str(pid))
        print(f"orphan {pid}", flush=True)
        _crash()
    pid = int(marker.read_text())
    (state_dir / "release").touch()
    deadline = time.monotonic() + 10
    while _state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.02)
    # A zombie stays a zombie unless someone reaps it: give the supervisor its chance.
    while _state(pid) == "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    print("orphan gone" if _state(pid) is None else "orphan zombie", flush=True)
    _serve()


def main() -> None:
    mode, state_dir = sys.argv[1], Path(sys.argv[2])
    # Before the readiness line: a test may signal as soon as it reads it.
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    signal.signal(signal.SIGHUP, _on_hup)
    print(f"started {os.getpid()}", flush=True)
    if mode == "serve":
        _serve()
    elif mode == "crash":
        _crash()
    elif mode == "exit3":
        sys.exit(3)
    elif mode == "flaky":
        _flaky(state_dir)
    elif mode == "orphan":
        _orphan(state_dir)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
