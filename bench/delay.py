"""A TCP proxy on loopback that holds every chunk for a fixed delay in each direction.

``python -m bench.delay LISTEN_PORT TARGET_PORT DELAY_MS`` stands for a network between the
server and PostgreSQL (``python -m bench --pg-delay-ms``): each direction keeps its order, and
a round trip costs twice the delay (asyncio's timers round it up to whole milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

HOST = "127.0.0.1"


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it arrived."""
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            at, data = await due.get()
            if not data:
                break
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(65536):
            due.put_nowait((time.monotonic() + delay, data))
    finally:
        due.put_nowait((0.0, b""))
        await sender


async def serve(listen: int, target: int, delay: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(HOST, target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _forward(client_r, server_w, delay),
            _forward(server_r, client_w, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, HOST, listen)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m bench.delay LISTEN_PORT TARGET_PORT DELAY_MS")
    listen, target, delay_ms = int(argv[0]), int(argv[1]), float(argv[2])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listen, target, delay_ms / 1000))


if __name__ == "__main__":
    main(sys.argv[1:])
