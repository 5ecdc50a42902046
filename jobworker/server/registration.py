"""The JobWorker service's gRPC registration: as the generated code builds it, except that StreamOutput
answers with messages that may come encoded already (bytes): chunks of output, encoded by hand
(convert.encode_chunk), and a fleet node's relayed messages, passed on as the owner encoded them."""

from __future__ import annotations

from typing import Any

import grpc

from jobworker.api import jobworker_pb2 as pb


def serialize_output(message: pb.StreamOutputResponse | bytes) -> bytes:
    """A StreamOutput message for the wire: bytes are encoded already."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def rpc_handler(servicer: Any) -> grpc.GenericRpcHandler:
    """The generic handler serving `servicer`'s methods (one per RPC of the JobWorker service)."""
    service = pb.DESCRIPTOR.services_by_name["JobWorker"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        behavior = getattr(servicer, method.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                behavior,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
        elif method.server_streaming:
            serialize = serialize_output if method.name == "StreamOutput" else response.SerializeToString
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behavior, request_deserializer=request.FromString, response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behavior,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
