"""One agent's WebSocket connection: frames -> protocol -> batcher -> acks.

The handler reads as fast as the agent sends; each batch's commit is awaited
by a separate ack task, in order, so a window of batches can be in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from sensor_edge.contract import protocol
from sensor_edge.server.ingest.limits import ReadingRate
from sensor_edge.contract.protocol import Ack, Bye, Hello, ProtocolError, Readings, Status, Welcome
from sensor_edge.contract.session import CollectorSession
from sensor_edge.server.storage import Batch

if TYPE_CHECKING:
    from prometheus_client import Counter

    from sensor_edge.config.model import Limits
    from sensor_edge.server.ingest.agents import AgentRegistry
    from sensor_edge.server.ingest.batcher import Batcher

log = logging.getLogger("sensor_edge.collector.connection")

# Batches of one connection awaiting their commit before we stop reading more.
MAX_PENDING_BATCHES = 64


@dataclass(frozen=True)
class IngestCounters:
    """The counters an agent's connection moves (the collector's /metrics owns them)."""

    protocol_errors: Counter  # labelled by error code
    batches: Counter
    readings_received: Counter
    rate_limited_seconds: Counter
    status_fields_dropped: Counter
    acks: Counter


@dataclass(frozen=True)
class Ingest:
    """What serving an agent's connection takes, and nothing else of the collector."""

    limits: Limits
    batcher: Batcher
    agents: AgentRegistry
    # (agent, epoch) -> the highest seq stored: a storage read, off the event loop.
    acked: Callable[[str, str], Awaitable[int]]
    counters: IngestCounters


async def serve_agent(ingest: Ingest, ws: ServerConnection, agent_id: str) -> None:
    limits = ingest.limits
    session = CollectorSession(agent_id, max_frame_bytes=limits.max_frame_bytes,
                           max_batch_readings=limits.max_batch_readings)
    pending: asyncio.Queue[tuple[asyncio.Future[int], int] | None] = asyncio.Queue(
        MAX_PENDING_BATCHES)
    acker = asyncio.create_task(_send_acks(ingest, ws, pending))
    loop = asyncio.get_running_loop()
    # A burst of two full batches: a reconnecting agent's first window goes through at once.
    rate = ReadingRate(limits.max_readings_per_second,
                       max(limits.max_readings_per_second, 2 * limits.max_batch_readings),
                       loop.time())
    peer = _peer(ws)
    registered = False
    warned_status = False
    future: asyncio.Future[int] | None = None  # the last batch handed to the batcher
    try:
        async for frame in ws:
            try:
                message = session.receive(frame)
            except ProtocolError as e:
                ingest.counters.protocol_errors.labels(e.code).inc()
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
                ingest.counters.batches.inc()
                ingest.counters.readings_received.inc(len(message.readings))
                future = ingest.batcher.submit(Batch(agent_id, session.epoch, message.readings))
                await pending.put((future, message.last_seq))
                pause = rate.take(len(message.readings), loop.time())
                if pause > 0:
                    # Stop reading this agent for a while: TCP backpressure slows it down.
                    ingest.counters.rate_limited_seconds.inc(pause)
                    await asyncio.sleep(pause)
            elif isinstance(message, Hello):
                try:
                    acked = await ingest.acked(agent_id, message.epoch)
                except Exception as e:  # the database is down or restarting: the agent retries
                    log.error("agent %s: cannot look up what is stored: %s", agent_id, e)
                    await ws.close(1011, "storage unavailable")
                    break
                now = time.time()
                state = ingest.agents.connected(message, now)
                registered = True
                await ws.send(protocol.encode(Welcome(acked=acked, time=now)))
                offset = state.clock_offset
                log.info("agent %s connected from %s (epoch %s, version %s, resumes after "
                         "seq %d%s)", agent_id, peer, message.epoch, message.version or "?",
                         acked, "" if offset is None else f", clock offset {offset:+.3f} s")
                if state.sessions[message.epoch] > 1:
                    log.warning("agent %s: a second session opened on epoch %s while another "
                                "is live: either that connection is dead and not yet noticed, "
                                "or two machines send with one buffer (a cloned SD card); "
                                "resent readings that differ from the stored ones are counted "
                                "(sensor_edge_readings_conflicting_total)", agent_id,
                                message.epoch)
                if offset is not None and abs(offset) > 2.0:
                    log.warning("agent %s: its clock is %.1f s off the collector's", agent_id,
                                -offset)
            elif isinstance(message, Status):
                if message.dropped:
                    ingest.counters.status_fields_dropped.inc(len(message.dropped))
                    if not warned_status:  # once per connection: an agent sends one every 10 s
                        warned_status = True
                        log.warning("agent %s: status fields of the wrong type or out of range "
                                    "ignored: %s", agent_id, ", ".join(message.dropped[:10]))
                ingest.agents.status_received(agent_id, message, time.time())
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
            ingest.agents.disconnected(agent_id, session.epoch)
            log.info("agent %s disconnected (%s)", agent_id, peer)


async def _send_acks(ingest: Ingest, ws: ServerConnection,
                     pending: asyncio.Queue[tuple[asyncio.Future[int], int] | None]) -> None:
    item = await pending.get()
    while item is not None:
        future, seq = item
        try:
            await future
        except Exception:
            # The commit failed (logged by the batcher): no ack; the agent will resend.
            # Whatever the reader hands over from now on is taken unacked, so it never
            # waits on a full queue for an acker that is gone (its agent would look
            # connected, a stop would wait for it): what is queued at once, then the
            # rest until the reader is done (None, after a bye) or cancels us.
            done = _discard_queued(pending)
            await ws.close(1011, "storage failure")
            while not done:
                done = await pending.get() is None
            return
        # Later batches already stored (by the same commit, mostly): one ack for the
        # highest seq covers them all, one frame and one send() instead of several.
        batches, item = 1, _NOTHING
        while not pending.empty():
            following = pending.get_nowait()
            if following is None or not _stored(following[0]):
                item = following  # the next round's, or the reader's end
                break
            seq, batches = following[1], batches + 1
        try:
            await ws.send(protocol.encode(Ack(seq)))
        except ConnectionClosed:
            return
        ingest.counters.acks.inc(batches)
        if item is _NOTHING:
            item = await pending.get()


# What _send_acks holds when it took nothing from the queue that is still to be acked.
_NOTHING: Any = object()


def _discard_queued(pending: asyncio.Queue[tuple[asyncio.Future[int], int] | None]) -> bool:
    """Empty the queue without waiting; whether it held the reader's end (None)."""
    ended = False
    while not pending.empty():
        ended = pending.get_nowait() is None or ended
    return ended


def _stored(future: asyncio.Future[int]) -> bool:
    """Whether a batch's commit is done and succeeded."""
    return future.done() and not future.cancelled() and future.exception() is None


def _failed(future: asyncio.Future[int] | None) -> bool:
    return (future is not None and future.done()
            and (future.cancelled() or future.exception() is not None))


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
