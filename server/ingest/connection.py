"""One agent's WebSocket connection: frames -> protocol -> batcher -> acks.

The handler reads as fast as the agent sends; each batch's commit is awaited
by a separate ack task, in order, so a window of batches can be in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sensor_edge.contract import protocol
from sensor_edge.server.ingest.limits import ReadingRate
from sensor_edge.contract.protocol import Ack, AgentSession, Bye, Hello, ProtocolError, Readings, Status, Welcome
from sensor_edge.server.storage import Batch

if TYPE_CHECKING:
    from sensor_edge.server.collector import Collector

log = logging.getLogger("sensor_edge.collector.connection")

# Batches of one connection awaiting their commit before we stop reading more.
MAX_PENDING_BATCHES = 64


async def serve_agent(collector: Collector, ws: ServerConnection, agent_id: str) -> None:
    limits = collector.config.limits
    session = AgentSession(agent_id, max_frame_bytes=limits.max_frame_bytes,
                           max_batch_readings=limits.max_batch_readings)
    pending: asyncio.Queue[tuple[asyncio.Future[int], int] | None] = asyncio.Queue(
        MAX_PENDING_BATCHES)
    acker = asyncio.create_task(_send_acks(collector, ws, pending))
    loop = asyncio.get_running_loop()
    # A burst of two full batches: a reconnecting agent's first window goes through at once.
    rate = ReadingRate(limits.max_readings_per_second,
                       max(limits.max_readings_per_second, 2 * limits.max_batch_readings),
                       loop.time())
    peer = _peer(ws)
    registered = False
    future: asyncio.Future[int] | None = None  # the last batch handed to the batcher
    try:
        async for frame in ws:
            try:
                message = session.receive(frame)
            except ProtocolError as e:
                collector.metrics.protocol_errors.labels(e.code).inc()
                log.warning("agent %s (%s): %s; closing with %d", agent_id, peer, e,
                            e.close_code)
                await ws.send(protocol.error_frame(e))
                await ws.close(e.close_code, e.code)
                break
            if isinstance(message, Readings):
                if not message.readings:
                    continue
                if _failed(future):
                    # A commit of ours failed (the ack task is closing with 1011): a later
                    # batch must not be stored without it; the agent resends both.
                    await ws.close(1011, "storage failure")
                    break
                collector.metrics.batches.inc()
                collector.metrics.readings_received.inc(len(message.readings))
                future = collector.batcher.submit(Batch(agent_id, session.epoch, message.readings))
                await pending.put((future, message.last_seq))
                pause = rate.take(len(message.readings), loop.time())
                if pause > 0:
                    # Stop reading this agent for a while: TCP backpressure slows it down.
                    collector.metrics.rate_limited_seconds.inc(pause)
                    await asyncio.sleep(pause)
            elif isinstance(message, Hello):
                try:
                    acked = await collector.read(collector.storage.acked, agent_id,
                                                 message.epoch)
                except Exception as e:  # the database is down or restarting: the agent retries
                    log.error("agent %s: cannot look up what is stored: %s", agent_id, e)
                    await ws.close(1011, "storage unavailable")
                    break
                now = time.time()
                state = collector.agents.connected(message, now)
                registered = True
                await ws.send(protocol.encode(Welcome(acked=acked, time=now)))
                offset = state.clock_offset
                log.info("agent %s connected from %s (epoch %s, version %s, resumes after "
                         "seq %d%s)", agent_id, peer, message.epoch, message.version or "?",
                         acked, "" if offset is None else f", clock offset {offset:+.3f} s")
                if offset is not None and abs(offset) > 2.0:
                    log.warning("agent %s: its clock is %.1f s off the collector's", agent_id,
                                -offset)
            elif isinstance(message, Status):
                collector.agents.status_received(agent_id, message.fields, time.time())
            elif isinstance(message, Bye):
                # Ack what is in flight, then close normally.
                await pending.put(None)
                await acker
                await ws.close(protocol.CloseCode.NORMAL, "bye")
                break
    except ConnectionClosed:
        pass
    finally:
        if not acker.done():
            # Let batches already handed over finish committing; their acks may not arrive.
            acker.cancel()
        if registered:
            collector.agents.disconnected(agent_id)
            log.info("agent %s disconnected (%s)", agent_id, peer)


async def _send_acks(collector: Collector, ws: ServerConnection,
                     pending: asyncio.Queue[tuple[asyncio.Future[int], int] | None]) -> None:
    while True:
        item = await pending.get()
        if item is None:
            return
        future, seq = item
        try:
            await future
        except Exception:
            # The commit failed (logged by the batcher): no ack; the agent will resend.
            await ws.close(1011, "storage failure")
            return
        try:
            await ws.send(protocol.encode(Ack(seq)))
        except ConnectionClosed:
            return
        collector.metrics.acks.inc()


def _failed(future: asyncio.Future[int] | None) -> bool:
    return (future is not None and future.done()
            and (future.cancelled() or future.exception() is not None))


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
