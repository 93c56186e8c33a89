"""Delivers the buffer to the collector over a WebSocket, forever.

hello -> welcome (skip what the collector has) -> stream batches from the
buffer with a window of unacknowledged batches -> each ack deletes from the
buffer. When the link is idle a new reading goes out at once; with a backlog,
batches fill up. Any failure: reconnect with capped exponential backoff and
jitter. On stop: send what can be sent in the time left, wait for its acks,
say bye. While connected, a `status` message (the agent's health) goes out
right after welcome and every STATUS_EVERY seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from sensor_edge.agent.buffer import Buffer
from sensor_edge.contract import protocol
from sensor_edge.contract.protocol import ProtocolError
from sensor_edge.contract.status import AgentStatus
from sensor_edge.contract.session import Acked, AgentSession, Refused, Welcomed

log = logging.getLogger("sensor_edge.agent.uplink")

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
WELCOME_TIMEOUT = 10.0
# Seconds between two status messages; well under the collector's default stale_after (60).
STATUS_EVERY = 10.0
_JITTER = random.Random()


def backoff_delay(failures: int, rng: random.Random = _JITTER) -> float:
    """Capped exponential backoff with jitter, so a restarted collector isn't stampeded."""
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(failures, 16))
    return rng.uniform(ceiling / 2, ceiling)


class Uplink:
    def __init__(self, *, agent_id: str, urls: tuple[str, ...], token: str, version: str,
                 buffer: Buffer, on_buffer: Callable[..., Awaitable[Any]],
                 batch_size: int, window: int,
                 status: Callable[[], Awaitable[AgentStatus]] | None = None,
                 status_every: float = STATUS_EVERY,
                 tls: ssl.SSLContext | None = None):
        self.agent_id = agent_id
        self.urls = urls
        self.token = token
        self.version = version
        self.buffer = buffer
        self._on_buffer = on_buffer  # runs a Buffer method on the buffer's thread
        self.batch_size = batch_size
        self.window = window
        self._status = status  # builds the fields of a `status` message
        self._status_every = status_every
        self._tls = tls  # for wss:// URLs: the collector's CA, our client certificate
        self.connected = False
        self.sent = 0
        self.acked_seq = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._flush_deadline = 0.0
        self._welcomed = False  # the current session got as far as welcome
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """New readings are in the buffer."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="uplink")

    async def stop(self, flush_seconds: float) -> None:
        """Flush for up to ``flush_seconds``, say bye, close."""
        if self._task is None:
            return
        self._stopping = True
        self._flush_deadline = time.monotonic() + flush_seconds
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), flush_seconds + 1.0)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        except Exception:
            log.exception("uplink failed while stopping")

    async def _run(self) -> None:
        failures = 0
        index = 0
        while not self._stopping:
            url = self.urls[index % len(self.urls)]
            self._welcomed = False
            try:
                await self._session(url)
                failures = 0
            except InvalidStatus as e:
                status = e.response.status_code
                if status == 401:
                    log.error("collector %s refused this agent's token (HTTP 401): check "
                              "collector.token here and the agent's entry there", url)
                else:
                    log.warning("collector %s answered HTTP %d to the handshake", url, status)
                failures += 1
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, ProtocolError) as e:
                level = logging.WARNING if failures == 0 or self._welcomed else logging.DEBUG
                log.log(level, "cannot reach collector %s: %s", url, _describe(e))
                failures += 1
            except Exception:
                # A bug of ours must not end delivery for good: log it whole, retry.
                log.exception("uplink to %s failed unexpectedly; retrying", url)
                failures += 1
            finally:
                self.connected = False
            if self._stopping:
                break
            if self._welcomed:
                # That link worked: losing it is a first failure, not one more in a row
                # (else each collector restart would lengthen the wait after the next).
                failures = min(failures, 1)
            index += 1
            delay = backoff_delay(failures)
            if failures and failures % 10 == 0:
                log.warning("still cannot reach the collector after %d tries; readings wait "
                            "in the buffer (%d)", failures, self.buffer.last_seq - self.acked_seq)
            try:
                await asyncio.wait_for(self._stop_requested(), delay)
            except TimeoutError:
                pass

    async def _stop_requested(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def _session(self, url: str) -> None:
        async with connect(
            url,
            # websockets refuses an ssl context for a ws:// URL.
            **({"ssl": self._tls} if url.startswith("wss://") and self._tls else {}),
            additional_headers={"Authorization": f"Bearer {self.token}"},
            open_timeout=10,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
            compression=None,
            max_size=protocol.MAX_FRAME_LIMIT,
            user_agent_header=f"sensor-agent/{self.version}",
        ) as ws:
            session = AgentSession(self.agent_id, self.buffer.epoch, self.version,
                                   window=self.window)
            await ws.send(session.hello(time=time.time()))
            welcome = session.receive(await asyncio.wait_for(ws.recv(), WELCOME_TIMEOUT))
            assert isinstance(welcome, Welcomed)  # the session raises on anything else
            await self._on_buffer(self.buffer.reconcile, welcome.acked)
            self.acked_seq = welcome.acked
            self.connected = self._welcomed = True
            log.info("connected to %s; it holds up to seq %d, %d to send", url, welcome.acked,
                     max(0, self.buffer.last_seq - welcome.acked))
            receiver = asyncio.create_task(self._receive(ws, session))
            reporter = asyncio.create_task(self._report(ws, session))
            try:
                await self._send(ws, session, receiver)
                if self._stopping:
                    await self._say_bye(ws, session, receiver)
            finally:
                for task in (reporter, receiver):
                    task.cancel()
                await asyncio.gather(reporter, receiver, return_exceptions=True)

    async def _send(self, ws: ClientConnection, session: AgentSession,
                    receiver: asyncio.Task[None]) -> None:
        while not receiver.done():
            if self._stopping and time.monotonic() >= self._flush_deadline:
                return
            self._wake.clear()
            if not session.window_open:
                await self._wait(receiver)
                continue
            rows = await self._on_buffer(self.buffer.after, session.sent_upto, self.batch_size)
            if not rows:
                if self._stopping:
                    return
                await self._wait(receiver)
                continue
            await ws.send(session.readings(rows))
            self.sent += len(rows)
        # The receiver ended: the connection is gone; say why.
        receiver.result()

    async def _wait(self, receiver: asyncio.Task[None]) -> None:
        waiter = asyncio.ensure_future(self._wake.wait())
        timeout = None
        if self._stopping:
            timeout = max(0.0, self._flush_deadline - time.monotonic())
        await asyncio.wait({waiter, receiver}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def _receive(self, ws: ClientConnection, session: AgentSession) -> None:
        async for frame in ws:
            event = session.receive(frame)
            if isinstance(event, Acked):
                await self._on_buffer(self.buffer.acknowledged, event.seq)
                self.acked_seq = session.acked
                self._wake.set()
            elif isinstance(event, Refused):
                log.error("collector refused our data: %s: %s", event.error, event.detail)
        state = ws.protocol
        raise ConnectionClosed(state.close_rcvd, state.close_sent, state.close_rcvd_then_sent)

    async def _report(self, ws: ClientConnection, session: AgentSession) -> None:
        """Send a status now and every `status_every` seconds while connected."""
        if self._status is None:
            return
        while not self._stopping:
            try:
                status = await self._status()
                if self._stopping:
                    return  # bye may be on its way: nothing may follow it
                await ws.send(session.status(status))
            except ConnectionClosed:
                return  # the receiver notices and the session ends
            except Exception as e:  # a status must never take the link down
                log.warning("could not send a status: %s", e)
            await asyncio.sleep(self._status_every)

    async def _say_bye(self, ws: ClientConnection, session: AgentSession,
                       receiver: asyncio.Task[None]) -> None:
        while session.in_flight and not receiver.done() and time.monotonic() < self._flush_deadline:
            self._wake.clear()
            await self._wait(receiver)
        if receiver.done():
            return
        await ws.send(session.bye())
        try:
            await asyncio.wait_for(ws.wait_closed(),
                                   max(0.2, self._flush_deadline - time.monotonic()))
        except TimeoutError:
            pass


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionClosed):
        rcvd = error.rcvd
        if rcvd is not None:
            return f"connection closed by the collector ({rcvd.code} {rcvd.reason})".strip()
        return "connection lost"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
