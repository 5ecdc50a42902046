"""`jw-server`: flags and JW_SERVER_* variables, JSON logs, startup failures, SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from server_helpers import (
    Pki,
    ServerProcess,
    Stub,
    channel_credentials,
    next_message,
    open_channel,
    read_rest,
    spawn_server,
)

import pki
from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import ServerConfig, main


def credential_args(certs: Pki) -> list[str]:
    """The three options every jw-server needs."""
    cert, key = str(certs.cert("server")), str(certs.key("server"))
    return ["--cert", cert, "--key", key, "--ca", str(certs.ca_path)]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """Configs main() would run, without running a server."""
    configs: list[ServerConfig] = []

    async def fake_run_server(config: ServerConfig) -> None:
        configs.append(config)

    monkeypatch.setattr(main, "run_server", fake_run_server)
    return configs


def test_help_names_every_environment_variable() -> None:
    result = CliRunner().invoke(main.main, ["--help"])
    assert result.exit_code == 0
    for name in ("LISTEN", "CERT", "KEY", "CA", "STATE_DIR", "GRACE", "MAX_JOBS", "OUTPUT_CAP"):
        assert f"JW_SERVER_{name}" in result.output
    assert "JW_SERVER_MAX_MEMORY" in result.output
    for name in ("REVOKED", "MAX_CONNECTION_AGE", "MAX_JOBS_PER_OWNER", "MAX_OUTPUT_PER_OWNER"):
        assert f"JW_SERVER_{name}" in result.output


def test_flags_map_to_the_engine_config(certs: Pki, tmp_path: Path, captured: list[ServerConfig]) -> None:
    args = [
        "--cert", str(certs.cert("server")), "--key", str(certs.key("server")),
        "--ca", str(certs.ca_path), "--state-dir", str(tmp_path),
        "--max-jobs", "7", "--output-cap", "64M", "--grace", "3.5",
        "--default-memory", "256M", "--max-memory", "1G", "--max-cpus", "2",
        "--default-pids", "100", "--max-io-read-bps", "10M",
    ]  # fmt: skip
    result = CliRunner().invoke(main.main, args)
    assert result.exit_code == 0, result.output
    config = captured[0].engine_config()
    assert (config.max_running_jobs, config.output_cap_bytes) == (7, 64 << 20)
    assert config.default_grace_seconds == 3.5
    # What a flag sets replaces the engine's default; the rest stays.
    defaults, ceilings = engine.default_job_limits(), engine.default_max_limits()
    assert config.default_limits == dataclasses.replace(defaults, memory_bytes=256 << 20, pids=100)
    assert config.max_limits == dataclasses.replace(
        ceilings, cpus=2.0, memory_bytes=1 << 30, io_read_bps=10 << 20
    )
    assert captured[0].listen == "127.0.0.1:50051"


def test_without_flags_jobs_are_strictly_isolated_and_limited(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    args = credential_args(certs)
    result = CliRunner().invoke(main.main, [*args, "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    config = captured[0].engine_config()
    assert config.isolation is engine.Isolation.STRICT
    assert config.default_limits == engine.Limits(
        cpus=float(os.cpu_count() or 1), memory_bytes=1 << 30, pids=1024
    )
    assert config.max_limits.pids == 32768
    # The server's key, certificate, CA and any key beside them are hidden from jobs.
    masked = set(config.sandbox.masked)
    assert {str(certs.key("server")), str(certs.cert("server")), str(certs.ca_path)} <= masked
    assert config.sandbox.uid_range == engine.DEFAULT_UID_RANGE


def test_sandbox_flags_map_to_the_engine_config(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    args = [
        "--cert", str(certs.cert("server")), "--key", str(certs.key("server")),
        "--ca", str(certs.ca_path), "--state-dir", str(tmp_path),
        "--job-uids", "3000-3009", "--job-mount", f"{tmp_path}:/data:rw", "--job-mount", "/usr/share:/share",
        "--job-mask", "/etc/secret", "--job-scratch-size", "64M",
    ]  # fmt: skip
    result = CliRunner().invoke(main.main, args)
    assert result.exit_code == 0, result.output
    sandbox = captured[0].engine_config().sandbox
    assert sandbox.uid_range == range(3000, 3010)
    assert sandbox.mounts == (
        engine.JobMount(str(tmp_path), "/data", writable=True),
        engine.JobMount("/usr/share", "/share", writable=False),
    )
    assert "/etc/secret" in sandbox.masked
    assert sandbox.scratch_bytes == 64 << 20


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--job-uids", "10-1", "is not FIRST-LAST"),
        ("--job-mount", "relative:/x", "must be absolute"),
        ("--job-mount", "/a:/b:rx", "is not HOST:PATH"),
        ("--job-mount", "/a:/proc/x", "cannot replace /proc/x"),
        ("--isolation", "loose", "'loose' is not one of"),
    ],
)
def test_bad_sandbox_flags_are_usage_errors(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig], flag: str, value: str, message: str
) -> None:
    args = credential_args(certs)
    result = CliRunner().invoke(main.main, [*args, "--state-dir", str(tmp_path), flag, value])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert captured == []


def test_environment_variables_configure_the_server(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    env = {
        "JW_SERVER_LISTEN": "0.0.0.0:6000",
        "JW_SERVER_CERT": str(certs.cert("server")),
        "JW_SERVER_KEY": str(certs.key("server")),
        "JW_SERVER_CA": str(certs.ca_path),
        "JW_SERVER_STATE_DIR": str(tmp_path),
        "JW_SERVER_MAX_JOBS": "3",
        "JW_SERVER_MAX_MEMORY": "2G",
    }
    result = CliRunner().invoke(main.main, [], env=env)
    assert result.exit_code == 0, result.output
    config = captured[0]
    assert (config.listen, config.cert, config.state_dir) == (
        "0.0.0.0:6000", certs.cert("server"), tmp_path,
    )  # fmt: skip
    assert config.max_jobs == 3
    assert config.max_limits.memory_bytes == 2 << 30


@pytest.mark.parametrize("bad", ["lots", "-5M", "0"])
def test_sizes_are_validated(certs: Pki, captured: list[ServerConfig], bad: str) -> None:
    args = [*credential_args(certs), "--output-cap", bad]
    result = CliRunner().invoke(main.main, args)
    assert result.exit_code == 2
    assert captured == []


def run_to_exit(certs: Pki, *args: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JW_")}
    command = [sys.executable, "-m", "jobworker.server", "--cert", str(certs.cert("server"))]
    command += ["--ca", str(certs.ca_path), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    return done.returncode, done.stderr.splitlines()


def test_a_key_that_does_not_match_is_a_clean_startup_error(certs: Pki, tmp_path: Path) -> None:
    code, lines = run_to_exit(
        certs, "--key", str(certs.key("walt")), "--state-dir", str(tmp_path), "--no-cgroups"
    )
    assert code == 1
    assert len(lines) == 1, lines
    assert '"msg": "cannot start"' in lines[0]
    assert "does not match certificate" in lines[0]
    assert "Traceback" not in lines[0]


def test_a_port_in_use_is_a_clean_startup_error(certs: Pki, tmp_path: Path) -> None:
    first = spawn_server(certs, tmp_path / "one")
    try:
        code, lines = run_to_exit(
            certs, "--key", str(certs.key("server")), "--state-dir", str(tmp_path / "two"),
            "--listen", first.address, "--no-cgroups",
        )  # fmt: skip
    finally:
        first.terminate()
    assert code == 1
    # grpc's own complaint arrives through the log capture, possibly after ours.
    assert any('"msg": "cannot start"' in line and "cannot listen on" in line for line in lines), lines


def test_sigterm_ends_streams_stops_jobs_and_exits_zero(certs: Pki, tmp_path: Path) -> None:
    process = spawn_server(certs, tmp_path / "state")
    try:
        listening = process.wait_for_log("listening")
        for key in ("cgroup_driver", "cgroup_reason", "namespaces", "limits_supported"):
            assert key in listening
        end, pid = asyncio.run(_follow_while_terminating(process, certs))
        assert end.reason == pb.STREAM_END_REASON_SERVER_SHUTDOWN
        assert process.process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert not Path(f"/proc/{pid}").exists(), "the job must not outlive the server"
    messages = [line["msg"] for line in process.lines]
    assert "<not json>" not in messages
    assert messages.index("shutting down") < messages.index("stopped")
    audit = [line for line in process.lines if line.get("logger") == "jobworker.audit"]
    assert {(line["identity"], line["method"].rsplit("/", 1)[1]) for line in audit} == {
        ("walt", "Start"),
        ("walt", "StreamOutput"),
    }


async def _follow_while_terminating(process: ServerProcess, certs: Pki) -> tuple[Any, int]:
    channel = open_channel(process.port, channel_credentials(certs, "walt"))
    try:
        stub = Stub(channel)
        request = pb.StartRequest(command="/bin/sh", args=["-c", "echo up; exec sleep 60"])
        job = (await stub.Start(request)).job
        call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
        assert (await next_message(call)).chunk.data == b"up\n"
        process.process.terminate()
        rest = await read_rest(call)
        assert rest, "the stream must end with StreamEnd"
        late = stub.List(pb.ListRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await late
        return rest[-1].end, job.pid
    finally:
        await channel.close()


def test_policy_and_quota_flags_map_to_the_config(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    crl = pki.write_crl(tmp_path, pki.revoke(certs.ca, []))
    args = [
        "--cert", str(certs.cert("server")), "--key", str(certs.key("server")),
        "--ca", str(certs.ca_path), "--state-dir", str(tmp_path),
        "--max-connection-age", "600", "--connection-age-grace", "5",
        "--max-jobs-per-owner", "0", "--max-output-per-owner", "1G", "--retain-jobs-per-owner", "3",
    ]  # fmt: skip
    result = CliRunner().invoke(main.main, args, env={"JW_SERVER_REVOKED": str(crl)})
    assert result.exit_code == 0, result.output
    config = captured[0]
    assert config.revoked == crl
    assert (config.max_connection_age_seconds, config.connection_age_grace_seconds) == (600, 5)
    engine_config = config.engine_config()
    assert engine_config.max_running_jobs_per_owner is None, "0 switches a quota off"
    assert engine_config.max_output_bytes_per_owner == 1 << 30
    assert engine_config.retained_jobs_per_owner == 3


def test_quota_and_age_defaults_stop_one_owner_taking_everything(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    result = CliRunner().invoke(main.main, credential_args(certs))
    assert result.exit_code == 0, result.output
    config = captured[0]
    assert config.revoked is None
    assert config.max_connection_age_seconds <= 3600
    engine_config = config.engine_config()
    assert engine_config.max_running_jobs_per_owner is not None
    assert engine_config.max_running_jobs_per_owner < engine_config.max_running_jobs
    assert engine_config.retained_jobs_per_owner is not None
    assert engine_config.retained_jobs is not None
    assert engine_config.retained_jobs_per_owner < engine_config.retained_jobs


def test_a_revocation_list_of_another_ca_is_a_clean_startup_error(certs: Pki, tmp_path: Path) -> None:
    foreign = pki.Issued(certs.issued["foreign-ca"].cert, certs.issued["foreign-ca"].key)
    crl = pki.write_crl(tmp_path, pki.revoke(foreign, []))
    code, lines = run_to_exit(
        certs, "--key", str(certs.key("server")), "--state-dir", str(tmp_path / "state"),
        "--no-cgroups", "--revoked", str(crl),
    )  # fmt: skip
    assert code == 1
    assert '"msg": "cannot start"' in lines[-1]
    assert "is issued by CN=foreign CA, not a client CA" in lines[-1]


def test_sighup_reloads_the_revocation_list(certs: Pki, tmp_path: Path) -> None:
    crl_dir = tmp_path / "crl"
    crl = pki.write_crl(crl_dir, pki.revoke(certs.ca, []))
    process = spawn_server(certs, tmp_path / "state", "--revoked", str(crl))
    try:
        assert process.wait_for_log("listening")["revoked"] == 0
        seen = len(process.lines)
        pki.write_crl(crl_dir, pki.revoke(certs.ca, [certs.issued["wendy"].cert]))
        process.process.send_signal(signal.SIGHUP)
        # No call was made since the file changed, so this reload is SIGHUP's doing.
        assert process.wait_for_log("revocation list reloaded", start=seen)["revoked"] == 1
    finally:
        assert process.terminate() == 0


def test_a_default_limit_the_kernel_refuses_is_a_clean_startup_error(certs: Pki, tmp_path: Path) -> None:
    code, lines = run_to_exit(
        certs, "--key", str(certs.key("server")), "--state-dir", str(tmp_path / "state"),
        "--no-cgroups", "--default-pids", "1",
    )  # fmt: skip
    assert code == 1
    assert any("default limits: pids must be between 2 and 4194304, got 1" in line for line in lines), lines


def test_a_lowered_ceiling_caps_the_built_in_default(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    args = [*credential_args(certs), "--state-dir", str(tmp_path), "--max-pids", "100"]
    result = CliRunner().invoke(main.main, args)
    assert result.exit_code == 0, result.output
    config = captured[0].engine_config()
    assert config.default_limits.pids == 100
    assert config.max_limits.pids == 100


def test_durations_and_the_new_limits_take_the_shared_grammar(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    args = [
        "--cert", str(certs.cert("server")), "--key", str(certs.key("server")),
        "--ca", str(certs.ca_path), "--state-dir", str(tmp_path),
        "--grace", "1m30s", "--max-connection-age", "1h", "--output-cap", "1.5G",
        "--max-cpuset", "1,0", "--max-memory-swap", "512M",
    ]  # fmt: skip
    result = CliRunner().invoke(main.main, args)
    assert result.exit_code == 0, result.output
    config = captured[0]
    assert (config.grace_seconds, config.max_connection_age_seconds) == (90.0, 3600.0)
    assert config.output_cap_bytes == 3 << 29
    assert (config.max_limits.cpuset, config.max_limits.memory_swap_bytes) == ("0-1", 512 << 20)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--grace", "soon", "is not a duration"), ("--max-cpuset", "2-1", "is not a CPU list")],
)
def test_bad_values_name_the_grammar(
    certs: Pki, captured: list[ServerConfig], flag: str, value: str, message: str
) -> None:
    args = credential_args(certs)
    result = CliRunner().invoke(main.main, [*args, flag, value])
    assert result.exit_code == 2
    assert message in result.output
    assert captured == []


def test_every_default_has_one_source() -> None:
    """jw-server's options, ServerConfig and EngineConfig agree because the first two read the last."""
    pairs = {
        "grace": ("grace_seconds", "default_grace_seconds"),
        "max_jobs": ("max_jobs", "max_running_jobs"),
        "retain_jobs": ("retain_jobs", "retained_jobs"),
        "output_cap": ("output_cap_bytes", "output_cap_bytes"),
        "max_jobs_per_owner": ("max_jobs_per_owner", "max_running_jobs_per_owner"),
        "max_output_per_owner": ("max_output_per_owner_bytes", "max_output_bytes_per_owner"),
        "retain_jobs_per_owner": ("retain_jobs_per_owner", "retained_jobs_per_owner"),
    }
    options = {p.name: p.default for p in main.main.params}
    server_defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
    engine_defaults = {f.name: f.default for f in dataclasses.fields(engine.EngineConfig)}
    for option, (server_field, engine_field) in pairs.items():
        assert options[option] == server_defaults[server_field] == engine_defaults[engine_field], option


def test_fleet_flags_map_to_the_fleet_config(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig]
) -> None:
    node_cert, node_key = str(certs.cert("nico")), str(certs.key("nico"))
    args = ["--cert", node_cert, "--key", node_key, "--ca", str(certs.ca_path), "--state-dir", str(tmp_path)]
    fleet = ["--etcd", "https://10.0.0.1:2379, https://10.0.0.2:2379", "--node-label", "zone=east"]
    result = CliRunner().invoke(main.main, [*args, *fleet, "--node-label", "gpu=", "--lease-ttl", "3"])
    assert result.exit_code == 0, result.output
    (config,) = captured
    assert config.fleet is not None
    # The node's name defaults to its certificate's CN.
    assert config.fleet.node_name == "nico"
    assert config.fleet.etcd == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert dict(config.fleet.labels) == {"zone": "east", "gpu": ""}
    assert config.fleet.lease_ttl_seconds == 3
    assert config.fleet.address == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--node-label", "zone=east"], "--node-label needs --etcd"),
        (["--node-name", "a"], "--node-name needs --etcd"),
        (["--etcd", "https://e:2379", "--node-label", "zone"], "is not KEY=VALUE"),
        (["--etcd", "https://e:2379", "--node-name", "-a"], "node name '-a' is not valid"),
        (["--etcd", "https://e:2379", "--listen", "0.0.0.0:50051"], "give --node-address"),
    ],
)
def test_bad_fleet_flags_are_usage_errors(
    certs: Pki, tmp_path: Path, captured: list[ServerConfig], extra: list[str], message: str
) -> None:
    args = [*credential_args(certs), "--state-dir", str(tmp_path), *extra]
    result = CliRunner().invoke(main.main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert captured == []
