"""grpc's plain-text log lines read back: failed handshakes become audit lines, the rest JSON lines."""

from __future__ import annotations

from server_helpers import LogCapture

from jobworker.server.grpclog import GrpcLogParser, handshake_reason

ARGS = (
    "args={endpoint=0x7f9380001c20, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50963, "
    "grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:42646, grpc.so_reuseport=0}, read_buffer.Length()=0}"
)
# What grpcio 1.85 writes for a client certificate of a foreign CA, with the handshaker tracer on.
VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
FAILED = [
    "I1201 08:51:56.784348   12772 ssl_transport_security.cc:2563] Handshake failed with error "
    f"SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:{VERIFY_FAILED}",
    "I1201 08:51:56.784383   12772 handshaker.cc:155] CallNextHandshakerLocked: error=UNKNOWN: Ssl handshake "
    "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
    f"OPENSSL_internal:{VERIFY_FAILED}: OK",
    "=== Source Location Trace: === ",
    "src/core/util/status_helper.cc:68",
    f" shutdown=false index=2, {ARGS}",
    "I1201 08:51:56.784415   12772 channel_trace.h:396] handshake manager 0x7f93800020c0: Failed with error: "
    "UNKNOWN: Ssl handshake failed",
]
SUCCEEDED = [
    "I1201 08:51:56.782963   12774 handshaker.cc:80] handshake_manager 0x7f93800020c0: adding handshaker "
    "security",
    "I1201 08:51:56.783228   12774 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false "
    f"index=1, {ARGS}",
]


def _feed(parser: GrpcLogParser, lines: list[str]) -> None:
    for line in lines:
        parser.feed(line)
    parser.flush()


def test_a_failed_handshake_is_one_audit_line_with_peer_and_reason(logs: LogCapture) -> None:
    _feed(GrpcLogParser(traced=True), FAILED)
    assert [{k: v for k, v in line.items() if k != "msg"} for line in logs.lines("jobworker.audit")] == [
        {
            "peer": "ipv4:127.0.0.1:42646",
            "reason": VERIFY_FAILED,
            "code": "UNAVAILABLE",
        }
    ]
    assert logs.lines("grpc") == [], "the tracer's own lines are dropped"


def test_a_successful_handshake_leaves_no_line(logs: LogCapture) -> None:
    _feed(GrpcLogParser(traced=True), SUCCEEDED)
    assert logs.lines("jobworker.audit") == []
    assert logs.lines("grpc") == []


def test_without_the_tracer_grpcs_own_line_is_audited_without_peer(logs: LogCapture) -> None:
    _feed(GrpcLogParser(traced=False), FAILED[:1])
    [line] = logs.lines("jobworker.audit")
    assert (line["peer"], line["reason"]) == (
        "",
        "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate",
    )


def test_other_lines_are_relogged_as_json(logs: LogCapture) -> None:
    parser = GrpcLogParser(traced=True)
    _feed(
        parser, ["W1201 08:51:54.835932   12760 log.cc:102] Log level INFO is not suitable for production."]
    )
    _feed(parser, ["something a child process printed"])
    [grpc_line] = logs.lines("grpc")
    assert (grpc_line["msg"], grpc_line["source"]) == (
        "Log level INFO is not suitable for production.",
        "log.cc",
    )
    assert [line["msg"] for line in logs.lines("jobworker.server.stderr")] == [
        "something a child process printed"
    ]


def test_reasons_are_one_line() -> None:
    assert handshake_reason("UNAVAILABLE: Handshake read failed (Socket closed)\n=== Source Location") == (
        "UNAVAILABLE: Handshake read failed (Socket closed)"
    )
