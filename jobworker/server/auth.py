"""Who is calling and what they may do: identity and role from the verified client certificate only.

Every RPC passes through `AuthInterceptor`, which wraps the handler: it checks TLS 1.3, reads the
peer certificate from the call's auth context, applies the certificate policy (`policy`), looks the
method up in `ACCESS` (the one table of permissions), makes the `Caller` available to the handler,
maps errors to status codes and writes the audit line. Handlers never check roles; they ask the
caller whether a job's owner is in scope.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from grpc_health.v1 import health_pb2

import pki
from jobworker.api import jobworker_pb2
from jobworker.server.audit import CallRecord, log_call
from jobworker.server.config import MAX_RECEIVE_MESSAGE_BYTES
from jobworker.server.errors import INTERNAL_MESSAGE, ServiceError, status_for
from jobworker.server.policy import PeerPolicy

_log = logging.getLogger(__name__)

TLS_VERSION = b"TLSv1.3"
# How often an open stream re-applies the certificate policy (at its next message).
STREAM_RECHECK_SECONDS = 1.0


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


@dataclass
class _Call:
    record: CallRecord
    caller: Caller | None = None
    started: float = field(default_factory=time.monotonic)
    audited: bool = False

    def audit(self) -> None:
        """Write the call's audit line, once, however the call ends."""
        if not self.audited:
            self.audited = True
            log_call(self.record, time.monotonic() - self.started)


_CURRENT: contextvars.ContextVar[_Call] = contextvars.ContextVar("jobworker_call")


def current_caller() -> Caller:
    """The caller of the RPC being handled; only valid inside a handler of a role-checked method."""
    caller = _CURRENT.get().caller
    if caller is None:
        raise RuntimeError("current_caller() outside a role-checked RPC")
    return caller


def note_job_id(job_id: str) -> None:
    """Record the job an RPC is about in its audit line."""
    call = _CURRENT.get(None)
    if call is not None:
        call.record.job_id = job_id


def _job_id_hint(request: object) -> str:
    # Audit what the client asked for even when it is malformed, but never unbounded.
    job_id = getattr(request, "job_id", "")
    return job_id[:64] if isinstance(job_id, str) else ""


UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncGenerator[Any, None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wrap every handler with authentication, the ACCESS table, error mapping and auditing."""

    def __init__(self, policy: PeerPolicy | None = None) -> None:
        self._policy = policy
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(method, handler, self._policy)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


@dataclass(frozen=True)
class _Oversized:
    """Stands in for a request too large to decode, so the wrapper refuses it with an audit line."""

    size: int


def _bounded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if len(data) > MAX_RECEIVE_MESSAGE_BYTES:
            return _Oversized(len(data))
        return deserializer(data) if deserializer is not None else data

    return deserialize


def _check_size(request: object) -> None:
    if isinstance(request, _Oversized):
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request of {request.size} bytes exceeds the limit of {MAX_RECEIVE_MESSAGE_BYTES} bytes",
        )


def _wrap(
    method: str, handler: grpc.RpcMethodHandler[Any, Any], policy: PeerPolicy | None
) -> grpc.RpcMethodHandler[Any, Any]:
    # The stubs type behaviours as synchronous; on a grpc.aio server they are coroutine functions.
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method, cast(UnaryBehavior, handler.unary_unary), policy),
            request_deserializer=_bounded(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        behavior = handler.unary_stream
        # Streaming handlers are async generators, or coroutines that stream with context.write()
        # (the health servicer's Watch); the wrapper must be of the same kind.
        wrapped = (
            _wrap_stream(method, cast(StreamBehavior, behavior), policy)
            if inspect.isasyncgenfunction(behavior)
            else _wrap_unary(method, cast(UnaryBehavior, behavior), policy)
        )
        return grpc.unary_stream_rpc_method_handler(
            wrapped,
            request_deserializer=_bounded(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    # No client-streaming RPCs exist; refusing them keeps the wrapper the only way in.
    return grpc.stream_unary_rpc_method_handler(
        _refuse_client_streaming,
        request_deserializer=_bounded(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


async def _refuse_client_streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "client streaming is not supported")


def _begin(method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> _Call:
    call = _Call(CallRecord(method=method, peer=context.peer(), job_id=_job_id_hint(request)))
    # Each RPC runs in its own task with its own context copy, so this never leaks between calls.
    _CURRENT.set(call)
    return call


def _admit(
    call: _Call, context: grpc.aio.ServicerContext[Any, Any], policy: PeerPolicy | None
) -> PeerCertificate:
    peer = authenticate(context.auth_context())
    record = call.record
    # The CN as the certificate states it, even when it is not a usable identity (a refusal says why).
    record.identity = peer.identity or _raw_common_name(peer.cert)
    record.role = peer.role.value if peer.role is not None else ""
    record.serial, record.fingerprint = peer.serial, peer.fingerprint
    enforce(peer, policy)
    call.caller = authorize(record.method, peer)
    return peer


def _raw_common_name(cert: x509.Certificate | None) -> str:
    if cert is None:
        return ""
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return ",".join(str(n.value) for n in names)[:128]


async def _fail(call: _Call, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    record = call.record
    if not isinstance(exc, Exception):
        # CancelledError (the client went away), GeneratorExit (the stream was closed) and the like.
        record.code = grpc.StatusCode.CANCELLED
        raise exc
    if isinstance(exc, grpc.aio.AbortError):
        record.code = context.code() or grpc.StatusCode.UNKNOWN
        record.reason = str(context.details() or "")
        raise exc
    status = status_for(exc)
    if status is None:
        _log.error("unexpected error in %s", record.method, exc_info=exc)
        status = (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    record.code, record.reason = status
    # abort() sends the status at once: audit first, so the line exists before the client sees the error.
    call.audit()
    await context.abort(*status)


def _wrap_unary(method: str, behavior: UnaryBehavior, policy: PeerPolicy | None) -> UnaryBehavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _begin(method, request, context)
        try:
            _admit(call, context, policy)
            _check_size(request)
            return await behavior(request, context)
        except BaseException as exc:
            await _fail(call, context, exc)
        finally:
            call.audit()

    return wrapped


def _wrap_stream(method: str, behavior: StreamBehavior, policy: PeerPolicy | None) -> StreamBehavior:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncGenerator[Any, None]:
        call = _begin(method, request, context)
        try:
            peer = _admit(call, context, policy)
            _check_size(request)
            recheck_at = time.monotonic() + STREAM_RECHECK_SECONDS
            # Close the handler now, not at garbage collection, so a vanished client frees everything
            # the stream held.
            async with contextlib.aclosing(behavior(request, context)) as messages:
                async for message in messages:
                    # A long stream outlives its admission: expiry and revocation end it too.
                    if time.monotonic() >= recheck_at:
                        enforce(peer, policy)
                        recheck_at = time.monotonic() + STREAM_RECHECK_SECONDS
                    yield message
        except BaseException as exc:
            await _fail(call, context, exc)
        finally:
            call.audit()

    return wrapped
