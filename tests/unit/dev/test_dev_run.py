"""`make run` (dev/run.py): mint once, reuse after; a jw profile; a server plain `jw` reaches; clean stop."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import pki

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "dev" / "run.py"
JW = Path(sys.executable).parent / "jw"
PKI_FILES = [
    f"{name}.{ext}" for name in ("ca", "server", "admin", "writer", "reader") for ext in ("crt", "key")
]
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Sandbox:
    """A temporary home for one user of `make run`: certs, state, config; a port of its own."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def config(self) -> Path:
        return self.root / "config" / "jw" / "config.toml"

    @property
    def env(self) -> dict[str, str]:
        # Nothing of the real user's jw settings, config or sudo leaks into the run.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JW_", "GRPC_", "SUDO_"))}
        env.update(HOME=str(self.root / "home"), XDG_CONFIG_HOME=str(self.root / "config"))
        return env

    def args(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(SCRIPT),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--certs",
            str(self.certs),
            "--state-dir",
            str(self.root / "state"),
            *extra,
            "--",
            # Its own cgroup subtree: a server clears stale cgroups under its prefix at start-up.
            "--cgroup-prefix",
            f"jwtest-run-{uuid.uuid4().hex[:12]}",
        ]

    def jw(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Plain `jw ARGS` as the user would type it, from outside the repository."""
        return subprocess.run(
            [str(JW), *args],
            env=env or self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


class Run:
    """One `make run` in the background; its output is drained so the server never blocks on a pipe."""

    def __init__(self, sandbox: Sandbox, *extra: str) -> None:
        self.sandbox = sandbox
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            sandbox.args(*extra),
            env=sandbox.env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _check_running(self, deadline: float, waiting_for: str) -> None:
        if self.process.poll() is not None:
            self._drainer.join(10)
            pytest.fail(f"make run exited {self.process.returncode}:\n{self.output}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {waiting_for} within {START_TIMEOUT} s:\n{self.output}")

    def wait_line(self, prefix: str) -> str:
        """The first output line starting with `prefix`, once the run has printed it."""
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := [line for line in list(self.lines) if line.startswith(prefix)]):
            self._check_running(deadline, f"line {prefix!r}")
            time.sleep(0.05)
        return found[0]

    def wait_serving(self, env: dict[str, str] | None = None) -> None:
        """Poll `jw health` (plain: through the profile) until it answers, the run exits, or the deadline."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.sandbox.jw("health", env=env).returncode != 0:
            self._check_running(deadline, "answer to jw health")
            time.sleep(0.1)

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it; returns the exit code."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(30)
        self._drainer.join(10)
        return code

    def close(self) -> None:
        """Kill the run if a test left it running; release its pipe."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._drainer.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Every Run a test starts; whatever the test did, each is stopped by its PID afterwards."""
    started: list[Run] = []
    yield started
    for run in started:
        run.close()


def serve(sandbox: Sandbox, runs: list[Run], *extra: str) -> Run:
    run = Run(sandbox, *extra)
    runs.append(run)
    run.wait_serving()
    return run


def stop(run: Run) -> None:
    assert run.interrupt() == 0, run.output
    assert "Traceback" not in run.output


def pki_contents(certs: Path) -> dict[str, bytes]:
    return {name: (certs / name).read_bytes() for name in PKI_FILES}


def test_mints_once_writes_profile_serves_and_reuses(sandbox: Sandbox, runs: list[Run]) -> None:
    run = serve(sandbox, runs)
    hello = sandbox.jw("run", "--", "echo", "hello")
    assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
    stop(run)
    assert "minted ca" in run.output
    first = pki_contents(sandbox.certs)
    assert all(
        (sandbox.certs / name).stat().st_mode & 0o077 == 0 for name in PKI_FILES if name.endswith(".key")
    )
    profile = tomllib.loads(sandbox.config.read_text())
    assert profile["default_profile"] == "dev"
    assert profile["profiles"]["dev"] == {
        "server": f"127.0.0.1:{sandbox.port}",
        "ca": str(sandbox.certs / "ca.crt"),
        "cert": str(sandbox.certs / "writer.crt"),
        "key": str(sandbox.certs / "writer.key"),
    }
    config = sandbox.config.read_bytes()

    again = serve(sandbox, runs)
    assert sandbox.jw("health").stdout == "SERVING\n"
    stop(again)
    assert "reusing CA, server, admin, writer, reader" in again.output
    assert "minted" not in again.output
    assert pki_contents(sandbox.certs) == first
    assert sandbox.config.read_bytes() == config


def test_existing_config_is_left_alone_and_the_export_line_works(sandbox: Sandbox, runs: list[Run]) -> None:
    theirs = '# mine\ndefault_profile = "prod"\n\n[profiles.prod]\nserver = "jobs.example.com:443"\n'
    sandbox.config.parent.mkdir(parents=True)
    sandbox.config.write_text(theirs)
    run = Run(sandbox)
    runs.append(run)
    # The export line comes before the server starts; pasted into a shell it is all jw needs.
    export = run.wait_line("export ")
    env = sandbox.env | dict(word.split("=", 1) for word in shlex.split(export)[1:])
    run.wait_serving(env)
    hello = sandbox.jw("run", "--", "echo", "hello", env=env)
    assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
    stop(run)
    assert sandbox.config.read_text() == theirs
    [why] = [line for line in run.lines if str(sandbox.config) in line]
    assert "left unchanged" in why


def test_without_root_privileges_says_what_needs_root_and_still_runs_jobs(
    sandbox: Sandbox, runs: list[Run]
) -> None:
    run = serve(sandbox, runs, "--unprivileged")
    hello = sandbox.jw("run", "--", "echo", "hello")
    assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
    info = json.loads(sandbox.jw("info", "--json").stdout)
    stop(run)
    assert info["limits_supported"] is False
    if os.geteuid() != 0:
        assert info["namespaces"] is False
    [line] = [line for line in run.lines if "so jw-server runs with" in line]
    assert "--no-cgroups" in line
    if os.geteuid() != 0:
        assert "need root" in line


def run_to_port_check(
    sandbox: Sandbox, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A run that mints and writes the profile, then stops at the port check: the port is taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", sandbox.port))
        taken.listen()
        return subprocess.run(
            sandbox.args(), env=env or sandbox.env, capture_output=True, text=True, timeout=60, check=False
        )


def test_port_in_use_is_one_line_not_a_traceback(sandbox: Sandbox) -> None:
    result = run_to_port_check(sandbox)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"127.0.0.1:{sandbox.port} is in use" in result.stderr


@pytest.mark.root
def test_under_sudo_the_certificates_and_profile_belong_to_the_user(sandbox: Sandbox) -> None:
    if os.geteuid() != 0:
        pytest.skip("sudo hand-over needs root")
    nobody = 65534
    env = sandbox.env | {"SUDO_UID": str(nobody), "SUDO_GID": str(nobody)}
    # The port is taken so that the run stops after minting and writing the profile, before any server.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", sandbox.port))
        taken.listen()
        result = subprocess.run(
            sandbox.args(), env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 1, result.stderr
    owners = {name: (sandbox.certs / name).stat().st_uid for name in PKI_FILES}
    assert set(owners.values()) == {nobody}
    assert sandbox.config.stat().st_uid == nobody


def test_a_certificate_about_to_expire_is_reissued_and_the_rest_kept(sandbox: Sandbox) -> None:
    run_to_port_check(sandbox)
    before = pki_contents(sandbox.certs)
    ca = pki.load_ca(sandbox.certs)
    soon = datetime.now(UTC) + timedelta(hours=1)
    expiring = pki.issue_client(
        ca, "writer", pki.Role.WRITER, not_before=ca.cert.not_valid_before_utc, not_after=soon
    )
    pki.write_issued(sandbox.certs, "writer", expiring, force=True)

    result = run_to_port_check(sandbox)
    assert f"minted writer (expires {soon:%Y-%m-%d %H:%M}Z)" in result.stdout
    after = pki_contents(sandbox.certs)
    assert {name for name in PKI_FILES if after[name] != before[name]} == {"writer.crt", "writer.key"}
    assert pki.load_issued(sandbox.certs, "writer").cert.not_valid_after_utc > soon + timedelta(days=30)
