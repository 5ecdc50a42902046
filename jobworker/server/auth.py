"""Who is calling and what they may do: identity and role from the verified client certificate only.

`authenticate` reads the peer from a call's auth context (TLS 1.3, the certificate), `enforce` applies the
certificate policy, `authorize` looks the method up in `ACCESS` (the one table of permissions) and yields
the `Caller`. The call pipeline (`calls`) runs them for every RPC; handlers never check roles, they ask the
caller whether a job's owner is in scope.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from grpc_health.v1 import health_pb2

import pki
from jobworker.api import jobworker_pb2
from jobworker.server.errors import ServiceError
from jobworker.server.policy import PeerPolicy

_log = logging.getLogger(__name__)

TLS_VERSION = b"TLSv1.3"


class Scope(enum.Enum):
    """Which jobs a caller may see through a method."""

    OWN = "own"
    ALL = "all"


def _methods(service: Any) -> list[str]:
    return [f"/{service.full_name}/{m.name}" for m in service.methods]


_JOBWORKER = jobworker_pb2.DESCRIPTOR.services_by_name["JobWorker"]
_READ = {pki.Role.READER: Scope.ALL, pki.Role.WRITER: Scope.OWN, pki.Role.ADMIN: Scope.ALL}
_WRITE = {pki.Role.WRITER: Scope.OWN, pki.Role.ADMIN: Scope.ALL}
# Server facts, not jobs: every role may ask, the scope does not matter.
_ANY_ROLE = {pki.Role.READER: Scope.OWN, pki.Role.WRITER: Scope.OWN, pki.Role.ADMIN: Scope.OWN}

ACCESS: Mapping[str, Mapping[pki.Role, Scope]] = {
    "/jobworker.v1.JobWorker/Start": _WRITE,
    "/jobworker.v1.JobWorker/Stop": _WRITE,
    "/jobworker.v1.JobWorker/GetStatus": _READ,
    "/jobworker.v1.JobWorker/List": _READ,
    "/jobworker.v1.JobWorker/StreamOutput": _READ,
    "/jobworker.v1.JobWorker/GetServerInfo": _ANY_ROLE,
    # Waiting reveals no more than GetStatus does, so it has the same scope.
    "/jobworker.v1.JobWorker/Wait": _READ,
    # Changing a job is writing: writers their own, admins any, readers none.
    "/jobworker.v1.JobWorker/Delete": _WRITE,
    "/jobworker.v1.JobWorker/Prune": _WRITE,
    "/jobworker.v1.JobWorker/Signal": _WRITE,
    "/jobworker.v1.JobWorker/WriteInput": _WRITE,
}
"""Method -> the roles allowed to call it and the jobs each one sees. Absent roles are refused."""

ROLELESS: frozenset[str] = frozenset(_methods(health_pb2.DESCRIPTOR.services_by_name["Health"]))
"""Methods any verified client certificate may call, with or without a role (health checks)."""

assert set(ACCESS) == set(_methods(_JOBWORKER)), "every JobWorker RPC needs a row in ACCESS"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one RPC and the scope its role grants for that method."""

    identity: str
    role: pki.Role
    scope: Scope

    def may_see(self, owner: str) -> bool:
        """Whether a job owned by `owner` is visible to this caller."""
        return self.scope is Scope.ALL or owner == self.identity

    def owner_filter(self, requested: str) -> str | None:
        """The owner to list jobs for: the caller itself when scoped to its own jobs."""
        if self.scope is Scope.OWN:
            return self.identity
        return requested or None


@dataclass(frozen=True)
class PeerCertificate:
    """What a client certificate says about its holder; `problem` explains a missing part.

    `serial` and `fingerprint` (SHA-256) tell apart two certificates with the same CN in the audit.
    """

    identity: str | None
    role: pki.Role | None
    problem: str = ""
    cert: x509.Certificate | None = None
    serial: str = ""
    fingerprint: str = ""


@functools.lru_cache(maxsize=4096)
def peer_certificate(pem: bytes) -> PeerCertificate:
    """Parse identity (subject CN) and role (strict) from a PEM certificate; cached by its bytes."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return PeerCertificate(None, None, "client certificate cannot be parsed")
    serial, fingerprint = f"{cert.serial_number:x}", cert.fingerprint(hashes.SHA256()).hex()

    def peer(identity: str | None, role: pki.Role | None, problem: str = "") -> PeerCertificate:
        return PeerCertificate(identity, role, problem, cert, serial, fingerprint)

    try:
        identity = pki.identity_of(cert)
    except pki.IdentityError as exc:
        return peer(None, None, f"client certificate has no usable identity: {exc}")
    try:
        return peer(identity, pki.parse_role(cert))
    except pki.RoleError as exc:
        return peer(identity, None, f"client certificate role: {exc}")


def _single(auth_context: Mapping[str, Any], key: str) -> bytes | None:
    values = list(auth_context.get(key) or ())
    if len(values) != 1 or not isinstance(values[0], bytes):
        return None
    return values[0]


def authenticate(auth_context: Mapping[str, Any]) -> PeerCertificate:
    """Check the transport (TLS 1.3, client certificate) and return what the certificate says."""
    if _single(auth_context, "transport_security_type") != b"ssl":
        raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "a TLS connection is required")
    version = _single(auth_context, "ssl_tls_version")
    if version != TLS_VERSION:
        shown = version.decode("ascii", "replace") if version else "unknown"
        raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, f"TLS 1.3 is required, got {shown}")
    pem = _single(auth_context, "x509_pem_cert")
    if pem is None:
        raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    return peer_certificate(pem)


def enforce(peer: PeerCertificate, policy: PeerPolicy | None) -> None:
    """Refuse the call with UNAUTHENTICATED, naming every rule of the policy the certificate breaks."""
    if policy is None:
        return
    if peer.cert is None:
        raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, peer.problem)
    problems = policy.problems(peer.cert)
    if problems:
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED, "client certificate refused: " + "; ".join(problems)
        )


def authorize(method: str, peer: PeerCertificate) -> Caller | None:
    """Return the caller for `method`, None for role-free methods; raise PERMISSION_DENIED."""
    if method in ROLELESS:
        return None
    rule = ACCESS.get(method)
    if rule is None:
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, "method is not available")
    if peer.identity is None or peer.role is None:
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, peer.problem)
    scope = rule.get(peer.role)
    if scope is None:
        name = method.rsplit("/", 1)[-1]
        raise ServiceError(grpc.StatusCode.PERMISSION_DENIED, f"role {peer.role.value} may not call {name}")
    return Caller(peer.identity, peer.role, scope)
