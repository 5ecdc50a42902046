"""Helpers for the CLI tests: a PKI, a real jw-server subprocess and a CliRunner wrapper."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import pki
from jobworker.cli import jw

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# Settings the tests pass explicitly; never inherited from whoever runs the suite.
_JW_ENV = ("JW_SERVER", "JW_CA", "JW_CERT", "JW_KEY", "JW_PROFILE", "JW_TIMEOUT", "JW_CONFIG")
OUTPUT_CAP = 1 << 20
MAX_MEMORY = "1G"


# The keys of a job in `--json` output, in the order jw prints them (a contract for scripts).
JOB_JSON_KEYS = [
    "id",
    "owner",
    "command",
    "args",
    "state",
    "exit_code",
    "signal",
    "pid",
    "started_at",
    "ended_at",
    "limits",
    "usage",
    "stdout_bytes",
    "stderr_bytes",
    "output_truncated",
    "cwd",
    "truncation_reason",
    "output_dropped_bytes",
    "name",
    "labels",
    "stdin",
    "tty",
]


@dataclass(frozen=True)
class Pki:
    """Where the minted test credentials are."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def mint_pki(directory: Path) -> Pki:
    """CA and server; writers alice and bob, reader rita, admin adam; mallory from a foreign CA."""
    ca = pki.issue_ca("cli-tests CA")
    pki.write_issued(directory, "ca", ca)
    pki.write_issued(directory, "server", pki.issue_server(ca, "server"))
    for name, role in (
        ("alice", pki.Role.WRITER),
        ("bob", pki.Role.WRITER),
        ("rita", pki.Role.READER),
        ("adam", pki.Role.ADMIN),
    ):
        pki.write_issued(directory, name, pki.issue_client(ca, name, role))
    foreign = pki.issue_ca("foreign CA")
    pki.write_issued(directory, "foreign-ca", foreign)
    pki.write_issued(directory, "mallory", pki.issue_client(foreign, "mallory", pki.Role.ADMIN))
    return Pki(directory)


@dataclass
class ServerProcess:
    """A jw-server subprocess; `address` is known once it logged that it is listening."""

    process: subprocess.Popen[bytes]
    address: str = ""
    log: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    ready: threading.Event = field(default_factory=threading.Event)
    drainer: threading.Thread | None = None

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if not self.ready.is_set():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("msg") == "listening":
                    self.address = record["address"]
                    self.ready.set()
        self.ready.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.drainer is not None:
            self.drainer.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


def jw_server_command() -> list[str]:
    """How to run jw-server from this interpreter's environment."""
    script = Path(sys.executable).parent / "jw-server"
    if not script.exists():
        pytest.skip(f"{script} is not installed")
    return [str(script)]


def start_server(
    credentials: Pki, state_dir: Path, *extra: str, cgroups: bool = False, stop_jobs: bool = True
) -> ServerProcess:
    """Start jw-server on 127.0.0.1:0 and wait for its `listening` log line.

    stop_jobs: SIGTERM stops its jobs (no test leaves jobs behind for a next server unless it says so).

    Without cgroups unless asked; with them under a cgroup prefix of its own, so it neither clears
    the job cgroups of servers started by concurrent test runs nor has its jobs cleared by them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JW_", "GRPC_"))}
    process = subprocess.Popen(
        [
            *jw_server_command(),
            "--cgroup-prefix",
            f"jwtest-cli-{uuid.uuid4().hex[:12]}",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            str(credentials.cert("server")),
            "--key",
            str(credentials.key("server")),
            "--ca",
            str(credentials.ca),
            "--state-dir",
            str(state_dir),
            "--output-cap",
            str(OUTPUT_CAP),
            "--max-memory",
            MAX_MEMORY,
            "--grace",
            "5",
            "--cgroups" if cgroups else "--no-cgroups",
            *(["--stop-jobs-on-shutdown"] if stop_jobs else []),
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    server = ServerProcess(process)
    server.drainer = threading.Thread(target=server._drain, daemon=True)
    server.drainer.start()
    if not server.ready.wait(60) or not server.address:
        server.stop()
        logs = "\n".join(server.log)
        raise RuntimeError(f"jw-server did not start listening within 60 s; its log:\n{logs}")
    return server


@dataclass(frozen=True)
class Jw:
    """Runs `jw` through click's CliRunner as one of the test identities."""

    runner: CliRunner
    credentials: Pki
    server_process: ServerProcess
    config_home: Path

    @property
    def server(self) -> str:
        return self.server_process.address

    def server_log(self, lines: int = 20) -> str:
        """The tail of the server's log, for assertion messages."""
        return "\n".join(list(self.server_process.log)[-lines:])

    def env(self, user: str | None) -> dict[str, str | None]:
        env: dict[str, str | None] = dict.fromkeys(_JW_ENV)
        env["XDG_CONFIG_HOME"] = str(self.config_home)
        if user is not None:
            env.update(
                JW_SERVER=self.server,
                JW_CA=str(self.credentials.ca),
                JW_CERT=str(self.credentials.cert(user)),
                JW_KEY=str(self.credentials.key(user)),
            )
        return env

    def __call__(
        self, *args: str, user: str | None = "alice", env: dict[str, str | None] | None = None
    ) -> Result:
        merged = self.env(user)
        merged.update(env or {})
        result = self.runner.invoke(jw, list(args), env=merged, prog_name="jw")
        # Whatever happens, jw reports errors in words and exit codes, never as a traceback.
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"jw {' '.join(args)} raised") from result.exception
        assert "Traceback" not in result.stderr
        return result

    def start(self, *command: str, user: str = "alice") -> str:
        """Start `command` and return the job id."""
        result = self("start", "--", *command, user=user)
        assert result.exit_code == 0, f"{result.stderr}\nserver log:\n{self.server_log()}"
        return result.stdout.strip()
