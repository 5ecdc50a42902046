"""The transport ceiling: a bare grpc.aio mTLS 1.3 server that streams zeros from memory.

Run as `python _bare_server.py CERT KEY CA`; prints the bound port on stdout, serves until SIGTERM.
StreamOutput(job_id="SIZE") answers SIZE bytes in OutputChunk messages of jw-server's small chunk size, then
a StreamEnd: the same messages jw-server sends, with no job, spool, auth or engine behind them.
job_id="SIZE:CHUNK" sends CHUNK-byte messages instead, to find the message size grpc.aio streams best at.
"""

from __future__ import annotations

# Pins TLS 1.3 before grpc is imported, exactly as in jw-server.
import jobworker.server  # noqa: F401  (pins TLS 1.3 before grpc is imported)

# isort: split

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from jobworker.api import jobworker_pb2 as pb

# jw-server's message size for a follower that keeps up (one that is behind may get up to 1 MiB).
CHUNK_BYTES = 64 * 1024
# Larger than this and the client's default 4 MiB receive limit would refuse a message.
MAX_BARE_CHUNK_BYTES = 2 << 20
_ZEROS = bytes(MAX_BARE_CHUNK_BYTES)


async def stream_output(
    request: pb.StreamOutputRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[pb.StreamOutputResponse]:
    """StreamOutput straight from memory: job_id is the number of bytes to send[:message size]."""
    size_text, _, chunk_text = request.job_id.partition(":")
    size, chunk = int(size_text), min(int(chunk_text or CHUNK_BYTES), MAX_BARE_CHUNK_BYTES)
    # One bytes object per message size, made once: the stream copies nothing on our side.
    block = _ZEROS[:chunk]
    offset = 0
    while offset < size:
        data = block if size - offset >= chunk else block[: size - offset]
        yield pb.StreamOutputResponse(
            chunk=pb.OutputChunk(stream=pb.OUTPUT_STREAM_STDOUT, offset=offset, data=data)
        )
        offset += len(data)
    yield pb.StreamOutputResponse(end=pb.StreamEnd(reason=pb.STREAM_END_REASON_JOB_ENDED))


# Only StreamOutput, under the real service and method names, so the client side is the stock stub.
_HANDLER = grpc.method_handlers_generic_handler(
    "jobworker.v1.JobWorker",
    {
        "StreamOutput": grpc.unary_stream_rpc_method_handler(
            stream_output,
            request_deserializer=pb.StreamOutputRequest.FromString,
            response_serializer=pb.StreamOutputResponse.SerializeToString,
        )
    },
)


def _credentials(cert: Path, key: Path, ca: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())], root_certificates=ca.read_bytes(), require_client_auth=True
    )


async def serve(credentials: grpc.ServerCredentials) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_HANDLER,))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    cert, key, ca = (Path(arg) for arg in sys.argv[1:4])
    asyncio.run(serve(_credentials(cert, key, ca)))
