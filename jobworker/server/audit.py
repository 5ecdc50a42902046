"""The audit trail: one JSON line per RPC on the `jobworker.audit` logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from jobworker.server.jsonlog import fields

AUDIT_LOGGER = "jobworker.audit"

_log = logging.getLogger(AUDIT_LOGGER)


@dataclass
class CallRecord:
    """What the audit line of one call says; handlers fill in `job_id` once they know it."""

    method: str
    peer: str
    identity: str = ""
    role: str = ""
    # Two certificates with the same CN are told apart by serial and SHA-256 fingerprint.
    serial: str = ""
    fingerprint: str = ""
    job_id: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    # Why the call was refused or failed: the status message the client got.
    reason: str = ""
    # The fleet node that forwarded the call for `identity`; empty for a direct call.
    via: str = ""


_HEALTH_PREFIX = "/grpc.health.v1.Health/"


def log_call(record: CallRecord, duration_s: float) -> None:
    """Write the audit line of a finished call."""
    # A container healthcheck probes every few seconds; successful probes would drown the real calls.
    quiet = record.method.startswith(_HEALTH_PREFIX) and record.code is grpc.StatusCode.OK
    _log.log(
        logging.DEBUG if quiet else logging.INFO,
        "call",
        extra=fields(
            identity=record.identity,
            role=record.role,
            serial=record.serial,
            fingerprint=record.fingerprint,
            method=record.method,
            job_id=record.job_id,
            code=record.code.name,
            reason=record.reason,
            duration_ms=round(duration_s * 1000, 3),
            peer=record.peer,
            **({"via": record.via} if record.via else {}),
        ),
    )
