"""A client-streaming call made from asyncio that reports the server's own status when it ends the call early.

grpc.aio (1.85 and earlier, grpc/grpc#36066) replaces the status of a client-streaming call with
``INTERNAL: Internal error from Core`` when the server ends the call (a refusal, or a job that ended) while
the client still writes: the failed write overwrites the status the server sent. grpc's synchronous stack
reports the server's status. So the call is made on a synchronous channel, from a worker thread, while the
requests still come from the caller's event loop. Shared by the client library and the fleet's relay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import grpc

Request = TypeVar("Request")
Response = TypeVar("Response")


async def stream_unary(
    method: grpc.StreamUnaryMultiCallable[Request, Response],
    requests: AsyncIterator[Request],
    *,
    metadata: tuple[tuple[str, str | bytes], ...] | None = None,
) -> Response:
    """Call `method` (of a synchronous channel) with `requests`; its response, or its grpc.RpcError, or
    the exception `requests` raised (the call then ended as if they had ended there).

    No deadline: a job's stdin may stay open for days. Cancelling the awaiting task cancels the call.
    """
    loop = asyncio.get_running_loop()
    # The task awaiting the next request for grpc's thread. Touched only on the loop's thread: once the
    # call is over it is cancelled and awaited, and no new one starts, so that nothing of ours still
    # iterates `requests` when the caller closes it.
    current: asyncio.Task[tuple[bool, Request | None]] | None = None
    over = False
    source_failure: list[Exception] = []

    def fetch(handoff: concurrent.futures.Future[tuple[bool, Request | None]]) -> None:
        nonlocal current
        if over:
            handoff.set_result((False, None))
            return
        current = loop.create_task(_next(requests))
        current.add_done_callback(lambda task: _hand_over(task, handoff))

    def from_loop() -> Iterator[Request]:
        # Runs in grpc's request-consuming thread.
        while True:
            handoff: concurrent.futures.Future[tuple[bool, Request | None]] = concurrent.futures.Future()
            loop.call_soon_threadsafe(fetch, handoff)
            try:
                more, item = handoff.result()
            except concurrent.futures.CancelledError:
                return  # the call is over
            except Exception as exc:
                source_failure.append(exc)  # raised to the caller once the call is over
                return
            if not more:
                return
            yield item  # type: ignore[misc]

    call = method.future(from_loop(), metadata=metadata)
    done: asyncio.Future[None] = loop.create_future()

    def on_done(_: object) -> None:
        loop.call_soon_threadsafe(_settle, done)

    call.add_done_callback(on_done)
    try:
        await done
    except asyncio.CancelledError:
        call.cancel()
        raise
    finally:
        over = True
        if current is not None and not current.done():
            current.cancel()
            with contextlib.suppress(BaseException):
                await current
    response = call.result()
    if source_failure:
        raise source_failure[0]
    return response


async def _next(requests: AsyncIterator[Request]) -> tuple[bool, Request | None]:
    try:
        return True, await anext(requests)
    except StopAsyncIteration:
        return False, None


def _hand_over(
    task: asyncio.Task[tuple[bool, Request | None]],
    handoff: concurrent.futures.Future[tuple[bool, Request | None]],
) -> None:
    if task.cancelled():
        handoff.cancel()
    elif (error := task.exception()) is not None:
        handoff.set_exception(error)
    else:
        handoff.set_result(task.result())


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
