"""Prometheus metrics: scraped over HTTP from real servers, each metric checked against what was done."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from server_helpers import (
    Clients,
    LogCapture,
    MakeServer,
    Pki,
    collect,
    next_message,
    output_of,
    read_rest,
    server_config,
    spawn_server,
    start_job,
)

from jobworker import engine
from jobworker.api import jobworker_pb2 as pb
from jobworker.server import (
    JobWorkerServer,
    ServerConfig,
    ServerStartError,
    build_server,
    main,
    metrics,
    metrics_http,
)
from jobworker.server.metrics_http import MetricsAddress, MetricsAddressError

JOBWORKER = "jobworker.v1.JobWorker"
METRICS = {"metrics_listen": "127.0.0.1:0"}


@dataclass(frozen=True)
class Scrape:
    """One scrape's samples."""

    samples: list[Sample]
    content_type: str

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample `name` whose labels include `labels`."""
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {[s.name for s in self.samples]}"
        return found[0]

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


async def scrape(server: JobWorkerServer, path: str = "/metrics") -> Scrape:
    """GET the metrics endpoint over HTTP (in a thread: the scrape reads the job table on this loop)."""
    assert server.metrics_address is not None
    status, content_type, body = await asyncio.to_thread(_get, f"http://{server.metrics_address}{path}")
    assert status == 200, body
    samples = [s for family in text_string_to_metric_families(body) for s in family.samples]
    return Scrape(samples, content_type)


def rpcs(scraped: Scrape, method: str, code: str = "OK", service: str = JOBWORKER) -> float:
    return scraped.value("jobworker_rpcs_total", grpc_service=service, grpc_method=method, grpc_code=code)


def rpc_count(scraped: Scrape, method: str) -> float:
    return scraped.value("jobworker_rpc_duration_seconds_count", grpc_service=JOBWORKER, grpc_method=method)


def _listening_ports() -> set[int]:
    """TCP ports this process listens on (from its own socket fds and /proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_metrics_are_off_by_default(make_server: MakeServer) -> None:
    before = _listening_ports()
    server = await make_server()
    assert server.metrics_address is None
    # The gRPC port is the only one the server opened.
    assert _listening_ports() - before == {server.port}


async def test_jobs_started_ended_running_and_start_latency(
    make_server: MakeServer, clients: Clients
) -> None:
    server = await make_server(**METRICS)
    stub = clients.stub(server.port, "walt")
    fresh = await scrape(server)
    assert fresh.value("jobworker_jobs_started_total") == 0
    # Every final state is there from the first scrape, at zero.
    for state in ("exited", "signaled", "stopped", "oom_killed", "lost"):
        assert fresh.value("jobworker_jobs_ended_total", state=state) == 0
    assert fresh.value("jobworker_jobs_running") == 0
    assert fresh.value("jobworker_job_start_duration_seconds_count") == 0

    failing = await start_job(stub, "python3", "-c", "raise SystemExit(3)")
    await server.manager.wait(failing.id)
    sleeper = await start_job(stub, "python3", "-c", "import time; time.sleep(300)")
    running = await scrape(server)
    assert running.value("jobworker_jobs_started_total") == 2
    assert running.value("jobworker_jobs_ended_total", state="exited") == 1
    assert running.value("jobworker_jobs_running") == 1
    assert running.value("jobworker_job_start_duration_seconds_count") == 2
    # Real durations, in seconds: above zero, below the 1 s bucket.
    assert 0 < running.value("jobworker_job_start_duration_seconds_sum") < 2
    assert running.value("jobworker_job_start_duration_seconds_bucket", le="1.0") == 2
    assert running.value("jobworker_job_start_duration_seconds_bucket", le="+Inf") == 2

    await stub.Stop(pb.StopRequest(job_id=sleeper.id, grace_seconds=1.0))
    ended = await scrape(server)
    assert ended.value("jobworker_jobs_ended_total", state="stopped") == 1
    assert ended.value("jobworker_jobs_ended_total", state="exited") == 1
    assert ended.value("jobworker_jobs_running") == 0
    assert ended.value("jobworker_jobs_started_total") == 2


async def test_a_failed_start_is_no_started_job(make_server: MakeServer, clients: Clients) -> None:
    server = await make_server(**METRICS)
    stub = clients.stub(server.port, "walt")
    with pytest.raises(grpc.aio.AioRpcError):
        await start_job(stub, "/nonexistent/command")
    scraped = await scrape(server)
    assert scraped.value("jobworker_jobs_started_total") == 0
    assert scraped.value("jobworker_job_start_duration_seconds_count") == 0
    assert scraped.value("jobworker_jobs_running") == 0


async def test_spooled_and_streamed_bytes_and_followers(make_server: MakeServer, clients: Clients) -> None:
    server = await make_server(**METRICS)
    stub = clients.stub(server.port, "walt")
    done = await start_job(
        stub, "python3", "-c", "import sys; sys.stdout.write('a' * 1000); sys.stderr.write('b' * 24)"
    )
    await server.manager.wait(done.id)
    stored = await scrape(server)
    assert stored.value("jobworker_output_spooled_bytes_total") == 1024
    assert stored.value("jobworker_output_streamed_bytes_total") == 0
    assert stored.value("jobworker_followers") == 0

    # A running job's output counts while it runs, and not again when it ends.
    live = await start_job(
        stub,
        "python3",
        "-c",
        "import sys, time; sys.stdout.write('x' * 100); sys.stdout.flush(); time.sleep(300)",
    )
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=live.id, follow=True))
    first = await next_message(call)
    assert first.chunk.data == b"x" * 100
    following = await scrape(server)
    assert following.value("jobworker_followers") == 1
    assert following.value("jobworker_output_spooled_bytes_total") == 1124
    assert following.value("jobworker_output_streamed_bytes_total") == 100

    await stub.Stop(pb.StopRequest(job_id=live.id, grace_seconds=1.0))
    rest = await read_rest(call)
    assert rest[-1].HasField("end")
    messages, _ = await collect(stub, done.id)
    assert output_of(messages) == b"a" * 1000 + b"b" * 24
    after = await scrape(server)
    assert after.value("jobworker_followers") == 0
    assert after.value("jobworker_output_spooled_bytes_total") == 1124
    assert after.value("jobworker_output_streamed_bytes_total") == 1124


async def test_rpcs_by_method_and_code_with_latency(make_server: MakeServer, clients: Clients) -> None:
    server = await make_server(**METRICS)
    walt = clients.stub(server.port, "walt")
    rita = clients.stub(server.port, "rita")
    job = await start_job(walt, "python3", "-c", "pass")
    await server.manager.wait(job.id)
    await walt.GetStatus(pb.GetStatusRequest(job_id=job.id))
    await walt.GetStatus(pb.GetStatusRequest(job_id=job.id))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await walt.GetStatus(pb.GetStatusRequest(job_id="00000000-0000-4000-8000-000000000000"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    # Refused by the auth pipeline: measured all the same.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await start_job(rita, "python3", "-c", "pass")
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await collect(walt, job.id)

    scraped = await scrape(server)
    assert rpcs(scraped, "Start") == 1
    assert rpcs(scraped, "Start", "PERMISSION_DENIED") == 1
    assert rpcs(scraped, "GetStatus") == 2
    assert rpcs(scraped, "GetStatus", "NOT_FOUND") == 1
    assert rpcs(scraped, "StreamOutput") == 1
    assert rpc_count(scraped, "Start") == 2
    assert rpc_count(scraped, "GetStatus") == 3
    assert rpc_count(scraped, "StreamOutput") == 1
    assert 0 < scraped.value("jobworker_rpc_duration_seconds_sum", grpc_method="GetStatus") < 10
    # Only what happened has a series: no code nobody got.
    assert {labels["grpc_code"] for labels in scraped.labels("jobworker_rpcs_total")} == {
        "OK",
        "NOT_FOUND",
        "PERMISSION_DENIED",
    }


async def test_a_stream_is_measured_to_its_end_and_a_cancelled_one_as_cancelled(
    make_server: MakeServer, clients: Clients
) -> None:
    server = await make_server(**METRICS)
    stub = clients.stub(server.port, "walt")
    job = await start_job(stub, "python3", "-c", "import time; print('up', flush=True); time.sleep(300)")
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job.id, follow=True))
    await next_message(call)
    call.cancel()
    scraped = await _scrape_until(server, lambda s: _has(s, "StreamOutput", "CANCELLED"))
    assert rpcs(scraped, "StreamOutput", "CANCELLED") == 1
    await stub.Stop(pb.StopRequest(job_id=job.id, grace_seconds=1.0))


def _has(scraped: Scrape, method: str, code: str) -> bool:
    return any(
        s.name == "jobworker_rpcs_total"
        and s.labels.get("grpc_method") == method
        and s.labels.get("grpc_code") == code
        for s in scraped.samples
    )


async def _scrape_until(
    server: JobWorkerServer, ready: Callable[[Scrape], bool], attempts: int = 50
) -> Scrape:
    """Scrape until `ready(scrape)`: a cancelled call ends on the server after the client let go."""
    for _ in range(attempts):
        scraped = await scrape(server)
        if ready(scraped):
            return scraped
        await asyncio.sleep(0.1)
    raise AssertionError("the server never recorded the call")


async def test_the_endpoint_is_prometheus_text_at_metrics_only(make_server: MakeServer) -> None:
    server = await make_server(**METRICS)
    scraped = await scrape(server)
    assert scraped.content_type.startswith("text/plain")
    assert scraped.value("jobworker_build_info", version="0.1.0") == 1
    # The process's own figures, as every Prometheus exporter has them.
    assert scraped.value("process_resident_memory_bytes") > 0
    assert server.metrics_address is not None
    status, _, body = await asyncio.to_thread(_get, f"http://{server.metrics_address}/")
    assert status == 404
    assert "/metrics" in body


async def test_two_servers_in_one_process_keep_their_own_metrics(
    make_server: MakeServer, clients: Clients
) -> None:
    first = await make_server(**METRICS)
    second = await make_server(**METRICS)
    job = await start_job(clients.stub(first.port, "walt"), "python3", "-c", "pass")
    await first.manager.wait(job.id)
    assert (await scrape(first)).value("jobworker_jobs_started_total") == 1
    assert (await scrape(second)).value("jobworker_jobs_started_total") == 0


async def test_shutdown_closes_the_metrics_port(make_server: MakeServer) -> None:
    server = await make_server(**METRICS)
    assert server.metrics_address is not None
    port = MetricsAddress.parse(server.metrics_address).port
    assert port in _listening_ports()
    await server.shutdown(1.0)
    assert port not in _listening_ports()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


async def test_a_metrics_port_in_use_is_a_clean_startup_error(certs: Pki, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = server_config(certs, tmp_path / "state", metrics_listen=f"127.0.0.1:{port}")
        with pytest.raises(ServerStartError, match=rf"cannot listen for metrics on 127\.0\.0\.1:{port}: "):
            await build_server(config)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1:9464", True),
        ("127.1.2.3:9464", True),
        ("localhost:9464", True),
        ("[::1]:9464", True),
        ("0.0.0.0:9464", False),
        ("[::]:9464", False),
        ("192.0.2.1:9464", False),
        ("metrics.example.com:9464", False),
    ],
)
def test_only_loopback_is_allowed_without_the_acknowledgement(address: str, allowed: bool) -> None:
    parsed = MetricsAddress.parse(address)
    parsed.check_exposure(allow_remote=True)
    if allowed:
        parsed.check_exposure(allow_remote=False)
    else:
        with pytest.raises(MetricsAddressError, match=r"not loopback.*--metrics-allow-remote"):
            parsed.check_exposure(allow_remote=False)


@pytest.mark.parametrize("bad", ["9464", ":9464", "127.0.0.1:", "127.0.0.1:port", "127.0.0.1:70000"])
def test_malformed_addresses_are_refused(bad: str) -> None:
    with pytest.raises(MetricsAddressError, match="metrics address"):
        MetricsAddress.parse(bad)


async def test_a_non_loopback_address_is_refused_before_anything_starts(certs: Pki, tmp_path: Path) -> None:
    config = server_config(certs, tmp_path / "state", metrics_listen="0.0.0.0:0")
    with pytest.raises(ServerStartError, match="not loopback"):
        await build_server(config)
    # Nothing was set up: the state directory was never created.
    assert not (tmp_path / "state").exists()


def _jw_server(certs: Pki, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JW_")}
    command = [sys.executable, "-m", "jobworker.server", "--cert", str(certs.cert("server"))]
    command += ["--key", str(certs.key("server")), "--ca", str(certs.ca_path), "--state-dir", str(state_dir)]
    command += ["--no-cgroups", "--isolation", "none", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_jw_server_refuses_a_non_loopback_metrics_address(certs: Pki, tmp_path: Path) -> None:
    done = _jw_server(certs, tmp_path / "state", "--metrics-listen", "0.0.0.0:0")
    assert done.returncode == 2
    assert "--metrics-allow-remote" in done.stderr
    assert "plain HTTP without authentication" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()


def test_jw_server_names_a_metrics_port_in_use_in_one_line(certs: Pki, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _jw_server(certs, tmp_path / "state", "--metrics-listen", f"127.0.0.1:{port}")
    # The same exit code and line as a gRPC port in use.
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, done.stderr
    assert '"msg": "cannot start"' in errors[0]
    assert f"cannot listen for metrics on 127.0.0.1:{port}: Address already in use" in errors[0]
    assert "Traceback" not in done.stderr


def test_jw_server_serves_metrics_until_sigterm(certs: Pki, tmp_path: Path) -> None:
    process = spawn_server(certs, tmp_path / "state", "--metrics-listen", "127.0.0.1:0")
    try:
        listening = process.wait_for_log("listening")
        address = str(listening["metrics"])
        assert address.startswith("127.0.0.1:")
        assert not address.endswith(":0")
        status, _, body = _get(f"http://{address}/metrics")
        assert status == 200
        assert "jobworker_jobs_running 0.0" in body
        assert process.terminate() == 0
    finally:
        process.kill()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", int(address.rsplit(":")[1])), timeout=5),
    ):
        pass


def test_the_metrics_flags_and_variables_reach_the_config(
    certs: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[ServerConfig] = []

    async def fake_run_server(config: ServerConfig) -> None:
        configs.append(config)

    monkeypatch.setattr(main, "run_server", fake_run_server)
    base = [
        "--cert",
        str(certs.cert("server")),
        "--key",
        str(certs.key("server")),
        "--ca",
        str(certs.ca_path),
    ]
    base += ["--state-dir", str(tmp_path)]
    runner = CliRunner()
    assert runner.invoke(main.main, base, env={"JW_SERVER_METRICS_LISTEN": None}).exit_code == 0
    assert configs[-1].metrics_listen is None
    assert configs[-1].metrics_allow_remote is False
    env = {"JW_SERVER_METRICS_LISTEN": "0.0.0.0:9464", "JW_SERVER_METRICS_ALLOW_REMOTE": "true"}
    result = runner.invoke(main.main, base, env=env)
    assert result.exit_code == 0, result.output
    assert (configs[-1].metrics_listen, configs[-1].metrics_allow_remote) == ("0.0.0.0:9464", True)
    result = runner.invoke(main.main, [*base, "--metrics-listen", "[::1]:9464"])
    assert result.exit_code == 0, result.output
    assert configs[-1].metrics_listen == "[::1]:9464"


def _closed_by_server(connections: list[socket.socket], count: int, within: float) -> list[socket.socket]:
    """Wait (at most `within` seconds) until the server has closed `count` of `connections`; those closed."""
    closed: list[socket.socket] = []
    waiting = list(connections)
    deadline = time.monotonic() + within
    while len(closed) < count and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(waiting, [], [], left)
        for conn in readable:
            assert conn.recv(1) == b"", "the server sent data unasked"
            closed.append(conn)
            waiting.remove(conn)
    return closed


def _request(conn: socket.socket) -> bytes:
    """Send a scrape on an open connection; the status line of the answer."""
    conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    return conn.makefile("rb").readline()


async def test_connections_beyond_eight_are_closed_at_once(make_server: MakeServer) -> None:
    server = await make_server(**METRICS)
    assert server.metrics_address is not None
    port = MetricsAddress.parse(server.metrics_address).port
    with contextlib.ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10)) for _ in range(20)
        ]
        # Eight idle connections hold the eight request threads; the other twelve are closed unserved ...
        refused = await asyncio.to_thread(_closed_by_server, idle, 12, 10.0)
        assert len(refused) == 12
        # ... and the eight held are being served.
        held = [conn for conn in idle if conn not in refused]
        for conn in held:
            assert await asyncio.to_thread(_request, conn) == b"HTTP/1.0 200 OK\r\n"
    assert (await scrape(server)).value("jobworker_jobs_running") == 0


async def test_an_idle_connection_is_dropped(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_http._Handler, "timeout", 0.5)
    server = await make_server(**METRICS)
    assert server.metrics_address is not None
    port = MetricsAddress.parse(server.metrics_address).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        assert await asyncio.to_thread(_closed_by_server, [conn], 1, 10.0) == [conn]


def _stall(seconds: float) -> None:
    """Keep the calling thread (the event loop's, here) busy: nothing else runs on that loop meanwhile."""
    time.sleep(seconds)


async def test_a_scrape_the_event_loop_cannot_answer_fails_in_one_log_line(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    monkeypatch.setattr(metrics, "_READ_TIMEOUT_SECONDS", 0.2)
    server = await make_server(**METRICS)
    url = f"http://{server.metrics_address}/metrics"
    pending = asyncio.get_running_loop().run_in_executor(None, _get, url)
    _stall(2.0)
    status, _, body = await pending
    assert status == 500
    assert "see the server's log" in body
    assert [line["msg"] for line in logs.lines("jobworker.server") if line["msg"].startswith("metrics")] == [
        "metrics scrape failed"
    ]
    # The loop answers again: so does the endpoint.
    assert (await scrape(server)).value("jobworker_jobs_running") == 0


async def test_a_reattached_job_counts_its_end_and_only_the_output_after_the_restart(
    certs: Pki, tmp_path: Path
) -> None:
    config = server_config(certs, tmp_path / "state", isolation=engine.Isolation.NONE, **METRICS)
    engine_config = dataclasses.replace(config.engine_config(), namespaces=False)
    go = tmp_path / "go"
    os.mkfifo(go)
    script = f"import sys; print('a' * 99, flush=True); open({str(go)!r}).read(); print('b' * 49)"
    first = engine.JobManager(engine_config)
    await first.open()
    job = await first.start(engine.JobSpec("python3", ("-c", script)))
    events = first.follow(job.id)
    try:
        async with asyncio.timeout(10):
            assert isinstance(await anext(events), engine.OutputChunk)
    finally:
        await events.aclose()
    await first.close(stop_jobs=False)

    second = engine.JobManager(engine_config)
    await second.open()
    server = await build_server(config, manager=second)
    await server.start()
    try:
        reattached = await scrape(server)
        assert reattached.value("jobworker_jobs_running") == 1
        # Its first 100 bytes were stored before this server ran.
        assert reattached.value("jobworker_output_spooled_bytes_total") == 0
        assert reattached.value("jobworker_jobs_started_total") == 0
        await asyncio.to_thread(go.write_text, "go")
        await second.wait(job.id)
        ended = await scrape(server)
        assert ended.value("jobworker_jobs_ended_total", state="exited") == 1
        assert ended.value("jobworker_output_spooled_bytes_total") == 50
        assert ended.value("jobworker_jobs_running") == 0
    finally:
        await server.shutdown(1.0)
