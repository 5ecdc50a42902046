"""The image's metrics listener: started with --metrics-listen inside the container, scraped from the host."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from tests.e2e.conftest import JobworkerServer

METRICS_PORT = 9464


def scrape(server: JobworkerServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one scrape of the published metrics port, by (name, labels)."""
    url = f"http://{server.host}:{server.published_port(METRICS_PORT)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_metrics_scraped_through_the_published_port(
    server_factory: Callable[..., JobworkerServer],
) -> None:
    # Inside a container loopback cannot be reached from the host: bind every interface of the container
    # (acknowledged), and publish the port on the host's loopback only.
    server = server_factory(
        env={
            "JW_SERVER_METRICS_LISTEN": f"0.0.0.0:{METRICS_PORT}",
            "JW_SERVER_METRICS_ALLOW_REMOTE": "true",
        },
        ports=[METRICS_PORT],
    )
    before = scrape(server)
    assert before[("jobworker_jobs_started_total", frozenset())] == 0

    finished = server.run_job("sh", ["-c", "printf hello; exit 3"])
    assert finished.info.exit_code == 3
    assert finished.stdout == b"hello"

    after = scrape(server)
    assert after[("jobworker_jobs_started_total", frozenset())] == 1
    assert after[("jobworker_jobs_ended_total", frozenset({("state", "exited")}))] == 1
    assert after[("jobworker_jobs_running", frozenset())] == 0
    assert after[("jobworker_output_spooled_bytes_total", frozenset())] == 5
    assert after[("jobworker_output_streamed_bytes_total", frozenset())] == 5
    assert after[("jobworker_job_start_duration_seconds_count", frozenset())] == 1
    start = frozenset(
        {("grpc_service", "jobworker.v1.JobWorker"), ("grpc_method", "Start"), ("grpc_code", "OK")}
    )
    assert after[("jobworker_rpcs_total", start)] == 1
    assert "non-loopback" not in server.logs()
    assert "metrics listener reachable beyond this host" in server.logs()


def test_a_non_loopback_metrics_address_without_the_acknowledgement_stops_the_container(
    server_factory: Callable[..., JobworkerServer],
) -> None:
    # The readiness wait fails with the container's exit code and logs (ServerNotReadyError).
    with pytest.raises(RuntimeError, match=r"exited with code 2(.|\n)*--metrics-allow-remote"):
        server_factory(env={"JW_SERVER_METRICS_LISTEN": f"0.0.0.0:{METRICS_PORT}"}, ports=[METRICS_PORT])
