"""A TCP proxy between agents and a collector that breaks the network on demand.

It runs its own asyncio loop on a thread, listens on 127.0.0.1, and forwards
both ways. It can stall (stop forwarding, connections stay up), cut (abort
every connection, both sides see a reset), refuse new connections, cut in
the middle of the next `readings` frame, or swallow the next `ack` and then
cut. It reads WebSocket frames (after the HTTP upgrade) to find those, and
counts what a test waits on: connections accepted and refused, agents'
frames held by a stall, the last seq forwarded to the collector.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from concurrent.futures import Future


class Frames:
    """Splits one direction of a WebSocket stream into its HTTP head and whole frames."""

    def __init__(self) -> None:
        self.buffer = b""
        self.upgraded = False
        self.raw = False  # not a WebSocket after all (a 401, plain HTTP): pass bytes through

    def feed(self, data: bytes) -> list[bytes]:
        """Whole units ready to forward: the HTTP head, then one frame at a time."""
        self.buffer += data
        units = []
        while True:
            if self.raw:
                units.append(self.buffer)
                self.buffer = b""
                return units
            if not self.upgraded:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return units
                head = self.buffer[:end + 4]
                units.append(head)
                self.buffer = self.buffer[end + 4:]
                self.upgraded = True
                self.raw = head.startswith(b"HTTP/") and not head.startswith(b"HTTP/1.1 101")
                continue
            size = frame_size(self.buffer)
            if size is None or len(self.buffer) < size:
                return units
            units.append(self.buffer[:size])
            self.buffer = self.buffer[size:]


def frame_size(data: bytes) -> int | None:
    if len(data) < 2:
        return None
    length, offset = data[1] & 0x7F, 2
    if length == 126:
        if len(data) < 4:
            return None
        length, offset = struct.unpack("!H", data[2:4])[0], 4
    elif length == 127:
        if len(data) < 10:
            return None
        length, offset = struct.unpack("!Q", data[2:10])[0], 10
    masked = data[1] & 0x80
    return offset + (4 if masked else 0) + length


def frame_text_start(frame: bytes, count: int | None = 24) -> bytes:
    """The first ``count`` bytes of a frame's payload (all with None), unmasked
    (client frames are masked)."""
    length, offset = frame[1] & 0x7F, 2
    offset += {126: 2, 127: 8}.get(length, 0)
    if frame[1] & 0x80:
        mask = frame[offset:offset + 4]
        payload = frame[offset + 4:None if count is None else offset + 4 + count]
        return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return frame[offset:None if count is None else offset + count]


class FaultProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.host = host
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._flowing = asyncio.Event()
        self._refusing = False
        self._cut_mid_batch: Future | None = None
        self._lose_ack: Future | None = None
        self.cuts = 0
        self.accepted = 0  # connections forwarded to the collector
        self.refused = 0  # connections closed at once while refusing
        self.held = 0  # links with a frame from the agent waiting for a stall to end
        self.forwarded_seq = 0  # the last seq of the last `readings` frame forwarded

    # --- control, from the test's thread -------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start()).result(10)
        return self

    def stop(self) -> None:
        self._call(self._stop()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/stream"

    def stall(self) -> None:
        """Stop forwarding either way; connections stay open (a black hole).

        Returns once no more bytes go through (what is already on the way still lands).
        """
        self._call(self._flow(False)).result(10)

    def resume(self) -> None:
        self._call(self._flow(True)).result(10)

    def cut(self) -> int:
        """Abort every connection now (both sides see a reset); how many there were."""
        return self._call(self._cut()).result(10)

    def refuse(self, refusing: bool) -> None:
        """Close new connections as soon as they are accepted (the network is down)."""
        self._refusing = refusing

    def cut_mid_batch(self) -> Future:
        """Arm: forward half of the next `readings` frame from an agent, then cut."""
        self._cut_mid_batch = Future()
        return self._cut_mid_batch

    def lose_next_ack(self) -> Future:
        """Arm: swallow the next `ack` from the collector (it has stored it), then cut."""
        self._lose_ack = Future()
        return self._lose_ack

    def _call(self, coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    # --- the proxy itself, on its loop ----------------------------------------

    async def _flow(self, flowing: bool) -> None:
        self._flowing.set() if flowing else self._flowing.clear()

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self._cut()
        self._server.close()
        await self._server.wait_closed()

    async def _cut(self) -> int:
        links = list(self._links)
        for agent_side, collector_side in links:
            for writer in (agent_side, collector_side):
                writer.transport.abort()
        self._links.clear()
        if links:
            self.cuts += 1
        return len(links)

    async def _accept(self, agent_reader: asyncio.StreamReader,
                      agent_writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            agent_writer.transport.abort()
            return
        try:
            collector_reader, collector_writer = await asyncio.open_connection(
                self.host, self.target_port)
        except OSError:
            agent_writer.transport.abort()
            return
        link = (agent_writer, collector_writer)
        self._links.add(link)
        self.accepted += 1
        await asyncio.gather(
            self._pump(agent_reader, collector_writer, link, upstream=True),
            self._pump(collector_reader, agent_writer, link, upstream=False),
            return_exceptions=True)
        self._links.discard(link)
        for writer in link:
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: tuple, upstream: bool) -> None:
        frames = Frames()
        while True:
            data = await reader.read(65536)
            if not data:
                writer.transport.abort()
                return
            for unit in frames.feed(data):
                websocket = frames.upgraded and not frames.raw and len(unit) >= 2
                start = frame_text_start(unit) if websocket else b""
                readings = upstream and start.startswith(b'{"type":"readings"')
                ack = not upstream and start.startswith(b'{"type":"ack"')
                if upstream and not self._flowing.is_set():
                    self.held += 1
                    await self._flowing.wait()
                    self.held -= 1
                await self._flowing.wait()
                if link not in self._links:
                    return
                if readings and self._cut_mid_batch is not None:
                    writer.write(unit[:len(unit) // 2])
                    await writer.drain()
                    await self._cut()
                    self._cut_mid_batch.set_result(len(unit))
                    self._cut_mid_batch = None
                    return
                if ack and self._lose_ack is not None:
                    await self._cut()
                    self._lose_ack.set_result(frame_text_start(unit, 64).decode())
                    self._lose_ack = None
                    return
                if readings:
                    self.forwarded_seq = json.loads(frame_text_start(unit, None))[
                        "readings"][-1]["seq"]
                writer.write(unit)
                await writer.drain()
