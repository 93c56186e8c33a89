"""The collector's port: WebSocket paths to websockets, every other request to
an HTTP responder that streams.

websockets answers plain HTTP only through `process_request`: a whole
`Response` built in memory and sent under the opening-handshake timeout. Fine
for a health check; not for a million readings, nor for a long download on a
slow link. So each connection starts as a :class:`SortingConnection`, the
`ServerConnection` that websockets' `serve()` builds through its
`create_connection` hook, which reads the request head first:

- a request for a WebSocket path (`/v1/stream`, `/v1/live`) carries on in
  websockets untouched: the bytes read so far are replayed into it, and its
  handshake, timeouts and limits apply as before;
- any other request moves, by switching the transport's protocol, to an
  :class:`HTTPExchange`, which sends the answer (a body, or chunks as they are
  produced) with backpressure and drops a client only when it stops reading.

One request per connection (`Connection: close`), as before.
"""

from __future__ import annotations

import asyncio
import fcntl
import http
import logging
import struct
import termios
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, \
    Iterator
from concurrent.futures import Executor
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Request, Response
from websockets.streams import StreamReader

log = logging.getLogger("sensor_edge.collector.http")

# Unsent bytes a response may have queued before it waits for the client.
WRITE_HIGH_WATER = 256 * 1024
# Chunks a producer thread may have ready ahead of the client.
CHUNKS_AHEAD = 4
# A producer thread's pause after each chunk. A thread that only computes keeps
# the GIL up to the switch interval (5 ms) each time the event loop wakes up,
# and an ack takes several wake-ups; pausing hands the GIL over at once.
# Measured (bench/bench_http.py): ack p99 40 ms instead of 220-300 ms while a
# million readings stream, at about the same download rate.
PAUSE_BETWEEN_CHUNKS = 0.0005


@dataclass
class StreamedResponse:
    """A response whose body is produced while it is sent (chunked transfer coding)."""

    status_code: int
    headers: Headers
    # With an aclose(), called once sent or as soon as the client is gone.
    chunks: AsyncIterator[bytes]


Answer = Callable[[Request, str], Awaitable["Response | StreamedResponse"]]


class HTTPFront:
    """What the port needs besides websockets: which paths are WebSocket ones, who
    answers the others, and the exchanges in progress (cut at shutdown)."""

    def __init__(self, websocket_paths: Collection[str], answer: Answer, timeout: float,
                 server_header: str):
        self.websocket_paths = websocket_paths
        self.answer = answer
        # How long a client may take to send its request head, or sit without
        # reading any of its answer, before it is dropped.
        self.timeout = timeout
        self.server_header = server_header
        # Connections still sending their request head, and answers under way.
        self.arriving: set[SortingConnection] = set()
        self.exchanges: set[HTTPExchange] = set()

    def connection(self, *args: Any, **kwargs: Any) -> SortingConnection:
        """websockets' `create_connection` hook."""
        return SortingConnection(self, *args, **kwargs)

    def abort_all(self) -> None:
        """At shutdown: websockets closes its own connections, these are ours."""
        for connection in list(self.arriving):
            connection.drop_unsorted()
        for exchange in list(self.exchanges):
            exchange.abort()


class SortingConnection(ServerConnection):
    """A connection on the collector's port, until its request head says what it is.

    Until then websockets has not seen it (its `connection_made` is held back),
    so no handshake has started and no handshake timeout runs; the front's own
    timeout covers the head.
    """

    def __init__(self, front: HTTPFront, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._front = front
        # For a WebSocket: where the handshake's judge (process_request) sent it.
        self.route: object | None = None
        self._websocket = False
        self._raw: bytearray | None = bytearray()
        self._reader = StreamReader()
        self._parser = Request.parse(self._reader.read_line)
        self._head_timer: asyncio.TimerHandle | None = None
        self._socket: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._socket = transport  # type: ignore[assignment]
        self._head_timer = asyncio.get_running_loop().call_later(self._front.timeout,
                                                                 self.drop_unsorted)
        self._front.arriving.add(self)
        next(self._parser)  # it now waits for the first line

    def drop_unsorted(self) -> None:
        """Cut a connection whose request head has not come (a name websockets lacks)."""
        self._socket.abort()

    def data_received(self, data: bytes) -> None:
        if self._websocket:
            super().data_received(data)
            return
        if self._raw is None:  # refused already; the transport is closing
            return
        self._raw += data
        self._reader.feed_data(data)
        try:
            next(self._parser)
        except StopIteration as parsed:
            self._sort(parsed.value)
        except RequestLineTooLong:
            self._refuse(414, "request line too long")
        except (HeaderLineTooLong, TooManyHeaders):
            self._refuse(431, "request header fields too large")
        except Exception as e:  # any malformed head: not HTTP/1.1, a bad line, a body
            self._refuse(400, f"not a valid HTTP request: {e}")

    def _sort(self, request: Request) -> None:
        try:
            path = request_path(request)
        except ValueError as e:
            self._refuse(400, str(e))
            return
        self._head_timer.cancel()
        self._front.arriving.discard(self)
        transport, raw = self._socket, bytes(self._raw)
        self._raw = None
        if path in self._front.websocket_paths:
            self._websocket = True
            super().connection_made(transport)
            super().data_received(raw)
            return
        exchange = HTTPExchange(self._front, transport, request)
        transport.set_protocol(exchange)
        exchange.start()

    def _refuse(self, status: int, detail: str) -> None:
        self._head_timer.cancel()
        self._front.arriving.discard(self)
        self._raw = None
        body = (detail + "\n").encode()
        headers = Headers([("Content-Type", "text/plain; charset=utf-8"),
                           ("Content-Length", str(len(body))), ("Connection", "close"),
                           ("Server", self._front.server_header)])
        self._socket.write(Response(status, http.HTTPStatus(status).phrase, headers,
                                    body).serialize())
        self._socket.close()

    # Until the head is read, the rest of asyncio's protocol interface is ours.

    def eof_received(self) -> bool | None:
        if self._websocket:
            return super().eof_received()
        return None  # the client gave up before a whole request: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._websocket:
            super().connection_lost(exc)
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._front.arriving.discard(self)

    def pause_writing(self) -> None:
        if self._websocket:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self._websocket:
            super().resume_writing()


def request_path(request: Request) -> str:
    """The path of a request's target (origin or absolute form); ValueError if unreadable."""
    try:
        return urlsplit(request.path).path
    except ValueError:
        raise ValueError(f"not a valid request target: {request.path[:100]!r}") from None


class ClientStalled(Exception):
    """The client read nothing of its answer for the front's timeout."""


class HTTPExchange(asyncio.Protocol):
    """One plain HTTP request and its answer, on a transport taken over from websockets."""

    def __init__(self, front: HTTPFront, transport: asyncio.Transport, request: Request):
        self._front = front
        self._transport = transport
        self._request = request
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else None

    def start(self) -> None:
        self._transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        self._front.exchanges.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def abort(self) -> None:
        self._transport.abort()

    # asyncio's side

    def data_received(self, data: bytes) -> None:
        pass  # one request per connection: anything more is ignored (and not left unread)

    def eof_received(self) -> bool:
        # A client may close its side once its request is sent: answer it anyway
        # (TLS cannot half-close, so asyncio then closes the connection itself).
        return self._transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.exchanges.discard(self)
        if not self._lost.done():
            self._lost.set_result(None)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # The answer

    async def _run(self) -> None:
        peer = self._transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else "?"
        try:
            response = await self._front.answer(self._request, address)
            if isinstance(response, StreamedResponse):
                await self._stream(response)
            else:
                self._write_head(response.status_code, response.headers)
                if self._request.method != "HEAD":
                    self._transport.write(response.body)
            self._transport.close()  # once what is queued has gone to the kernel
            await self._progressing(lambda: asyncio.shield(self._lost))
        except ClientStalled:
            log.info("dropped %s: it read nothing of its answer for %g s",
                     address, self._front.timeout)
            self._transport.abort()
        except Exception as e:
            # Cut short: the chunked body's missing end tells the client it is incomplete.
            log.error("answer to %s for %s failed: %s", address, self._request.path[:100], e)
            self._transport.abort()

    def _write_head(self, status: int, headers: Headers) -> None:
        headers["Server"] = self._front.server_header
        head = Response(status, http.HTTPStatus(status).phrase, headers, b"")
        self._transport.write(head.serialize())

    async def _stream(self, response: StreamedResponse) -> None:
        # HTTP/1.0 has no chunked coding: its body ends where the connection does.
        chunked = self._request.protocol != "HTTP/1.0"
        if chunked:
            response.headers["Transfer-Encoding"] = "chunked"
        self._write_head(response.status_code, response.headers)
        async with aclosing(response.chunks) as chunks:
            if self._request.method == "HEAD":
                return
            async for chunk in chunks:
                if not chunk:
                    continue
                if chunked:
                    self._transport.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
                else:
                    self._transport.write(chunk)
                await self._drain()
        if chunked:
            self._transport.write(b"0\r\n\r\n")

    async def _drain(self) -> None:
        """Wait while the client is behind; give up on it only when it reads nothing."""
        if not self._writable.is_set():
            await self._progressing(self._writable.wait)

    async def _progressing(self, waiting: Callable[[], Awaitable[Any]]) -> None:
        """Await ``waiting()`` as long as the client keeps taking bytes; ClientStalled
        once it has taken none for the front's timeout."""
        while True:
            unsent = self._unsent()
            try:
                await asyncio.wait_for(waiting(), self._front.timeout)
                return
            except TimeoutError:
                if self._unsent() >= unsent:
                    raise ClientStalled from None

    def _unsent(self) -> int:
        """Bytes the client has not acknowledged: ours, and (on Linux) the kernel's
        send queue, which can hold megabytes and drain for seconds before ours moves."""
        unsent = self._transport.get_write_buffer_size()
        if self._fd is not None and hasattr(termios, "TIOCOUTQ"):
            try:
                queued = fcntl.ioctl(self._fd, termios.TIOCOUTQ, b"\0\0\0\0")
                unsent += struct.unpack("i", queued)[0]
            except OSError:  # closed meanwhile, or not a TCP socket
                pass
        return unsent


async def chunks_from_thread(produce: Callable[[], Iterator[bytes]],
                             executor: Executor) -> AsyncGenerator[bytes, None]:
    """The chunks of the blocking generator ``produce()``, run on ``executor``.

    The generator runs wholly on one worker thread (a SQLite connection belongs
    to its thread), at most :data:`CHUNKS_AHEAD` chunks ahead of the consumer;
    it is closed on that thread when the consumer stops early. Its exception,
    if any, is raised here.
    """
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue[Any] = asyncio.Queue()
    slots = threading.Semaphore(CHUNKS_AHEAD)
    stop = threading.Event()
    done = object()

    def hand(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(handed.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is listening
            stop.set()

    def run() -> None:
        try:
            with closing(produce()) as chunks:
                for chunk in chunks:
                    slots.acquire()
                    if stop.is_set():
                        return
                    hand(chunk)
                    time.sleep(PAUSE_BETWEEN_CHUNKS)
            hand(done)
        except Exception as e:
            hand(e)

    loop.run_in_executor(executor, run)
    try:
        while (item := await handed.get()) is not done:
            if isinstance(item, Exception):
                raise item
            slots.release()
            yield item
    finally:
        stop.set()
        slots.release()  # wake the producer if it waits for room
