"""A writer's job against a real server: the server's credentials are out of its reach (root only)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from server_helpers import Clients, Pki, collect, mint_pki, output_of, server_config, start_job

from jobworker.api import jobworker_pb2 as pb
from jobworker.server import JobWorkerServer, build_server

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the job sandbox needs root"),
]


@pytest.fixture
def host_pki() -> Iterator[Pki]:
    """A PKI outside /tmp (jobs have a /tmp of their own) with every file world-readable: only the
    sandbox's masks can keep a job from the keys."""
    directory = Path("/var/tmp") / f"jw-pki-{uuid.uuid4().hex[:12]}"
    directory.mkdir(mode=0o755)
    certs = mint_pki(directory)
    for path in directory.iterdir():
        path.chmod(0o644)
    yield certs
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def strict_server(host_pki: Pki, tmp_path: Path) -> AsyncIterator[JobWorkerServer]:
    server = await build_server(server_config(host_pki, tmp_path / "state"))
    await server.start()
    yield server
    await server.shutdown(1.0)


async def test_writer_job_cannot_read_server_or_ca_keys(
    strict_server: JobWorkerServer, host_pki: Pki
) -> None:
    clients = Clients(host_pki)
    try:
        stub = clients.stub(strict_server.port, "walt")
        paths = [host_pki.key("server"), host_pki.key("ca"), host_pki.key("ada"), host_pki.cert("server")]
        script = "; ".join(f"cat {p}" for p in paths) + f"; ls -la {host_pki.directory}; echo done"
        job = await start_job(stub, "sh", "-c", script)
        messages, end = await collect(stub, job.id, follow=True)
    finally:
        await clients.close()
    out = output_of(messages)
    assert b"PRIVATE KEY" not in out
    assert b"CERTIFICATE" not in out
    # stdout alone: the cat errors on stderr arrive on a pipe of their own and may be stored after it.
    assert output_of(messages, pb.OUTPUT_STREAM_STDOUT).endswith(b"done\n"), (out, end)
    assert end.job.state == pb.JOB_STATE_EXITED


async def test_server_info_reports_strict_isolation(strict_server: JobWorkerServer, host_pki: Pki) -> None:
    clients = Clients(host_pki)
    try:
        info = await clients.stub(strict_server.port, "rita").GetServerInfo(pb.GetServerInfoRequest())
    finally:
        await clients.close()
    assert info.isolation == "strict"
    assert "no capabilities" in info.isolation_detail
    assert info.default_limits.HasField("memory_bytes") or not info.limits_supported
