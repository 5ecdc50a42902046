"""The pipeline every RPC goes through: `AuthInterceptor` wraps each handler.

It bounds the request size, authenticates and authorizes the caller (`auth`), makes the `Caller` available
to the handler, turns failures into status codes (`errors.status_for`, the one table) and writes one audit
line per call (`audit`), however the call ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import grpc
from cryptography import x509

from jobworker.server.audit import CallRecord, log_call
from jobworker.server.auth import (
    Caller,
    PeerCertificate,
    authenticate,
    authorize,
    enforce,
)
from jobworker.server.config import MAX_RECEIVE_MESSAGE_BYTES
from jobworker.server.errors import INTERNAL_MESSAGE, ServiceError, status_for
from jobworker.server.policy import PeerPolicy
from jobworker.server.wrapping import WrappingInterceptor

_log = logging.getLogger(__name__)

# How often an open stream re-applies the certificate policy (at its next message).
STREAM_RECHECK_SECONDS = 1.0


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


class AuthInterceptor(WrappingInterceptor):
    """Wrap every handler with authentication, the ACCESS table, error mapping and auditing."""

    def __init__(self, policy: PeerPolicy | None = None) -> None:
        super().__init__()
        self._policy = policy

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        return _wrap(method, handler, self._policy)


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
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_client_stream(method, cast(UnaryBehavior, handler.stream_unary), policy),
            request_deserializer=_bounded(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    # No bidirectional RPCs exist; refusing them keeps the wrapper the only way in.
    return grpc.stream_stream_rpc_method_handler(
        _refuse_bidi_streaming,
        request_deserializer=_bounded(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


async def _refuse_bidi_streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "bidirectional streaming is not supported")


async def _checked(
    requests: Any, peer: PeerCertificate, policy: PeerPolicy | None
) -> AsyncGenerator[Any, None]:
    """A client stream's messages, each within the size bound; the policy re-applied as in _wrap_stream."""
    recheck = _Recheck(peer, policy)
    async for request in requests:
        _check_size(request)
        recheck()
        yield request


class _Recheck:
    """A long stream outlives its admission: at most every STREAM_RECHECK_SECONDS, at its next message,
    the certificate policy is applied again, so expiry and revocation end it too."""

    def __init__(self, peer: PeerCertificate, policy: PeerPolicy | None) -> None:
        self._peer, self._policy = peer, policy
        self._at = time.monotonic() + STREAM_RECHECK_SECONDS

    def __call__(self) -> None:
        if time.monotonic() >= self._at:
            enforce(self._peer, self._policy)
            self._at = time.monotonic() + STREAM_RECHECK_SECONDS


def _wrap_client_stream(method: str, behavior: UnaryBehavior, policy: PeerPolicy | None) -> UnaryBehavior:
    async def wrapped(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # The job is named in the first message: the handler notes it (note_job_id) for the audit line.
        call = _begin(method, None, context)
        try:
            peer = _admit(call, context, policy)
            async with contextlib.aclosing(_checked(requests, peer, policy)) as checked:
                return await behavior(checked, context)
        except BaseException as exc:
            await _fail(call, context, exc)
        finally:
            call.audit()

    return wrapped


def _begin(method: str, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> _Call:
    call = _Call(CallRecord(method=method, peer=context.peer(), job_id=_job_id_hint(request)))
    # The audit line comes when a call ends; at debug level its start shows too (a long Wait, a stream).
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("call started", extra={"method": method, "peer": call.record.peer})
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
    metadata = cast(Sequence[tuple[str, str | bytes]], context.invocation_metadata() or ())
    call.caller = authorize(record.method, peer, metadata)
    if call.caller is not None and call.caller.via:
        # The audit names the caller the node forwarded for, and the node.
        record.identity, record.role, record.via = (
            call.caller.identity,
            call.caller.role.value,
            call.caller.via,
        )
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
            recheck = _Recheck(peer, policy)
            # Close the handler now, not at garbage collection, so a vanished client frees everything
            # the stream held.
            async with contextlib.aclosing(behavior(request, context)) as messages:
                async for message in messages:
                    recheck()
                    yield message
        except BaseException as exc:
            await _fail(call, context, exc)
        finally:
            call.audit()

    return wrapped
