"""The transport ceiling: frames parsed and acknowledged, nothing stored.

A WebSocket server on the collector's settings (no compression, the same
frame limit) that runs every frame through the product's protocol module
and acks each batch at once. The benchmarks point the load generator at it
to learn what the transport alone allows on this machine:

    python bench/null_collector.py --port 8766
"""

from __future__ import annotations

import argparse
import asyncio
import time

from websockets.asyncio.server import ServerConnection, serve

from sensor_edge.config.model import Limits
from sensor_edge.contract import protocol
from sensor_edge.contract.protocol import Ack, Hello, Readings, Welcome


async def handler(ws: ServerConnection) -> None:
    limits = Limits()
    async for frame in ws:
        message = protocol.parse_agent_message(frame, max_frame_bytes=limits.max_frame_bytes,
                                               max_batch_readings=limits.max_batch_readings)
        if isinstance(message, Readings):
            await ws.send(protocol.encode(Ack(message.last_seq)))
        elif isinstance(message, Hello):
            await ws.send(protocol.encode(Welcome(acked=0, time=time.time())))


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port, compression=None, max_size=Limits().max_frame_bytes,
                     ping_interval=20, ping_timeout=20, backlog=1024) as server:
        print("ready", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    try:
        asyncio.run(main(args.host, args.port))
    except KeyboardInterrupt:
        pass
