#!/usr/bin/env python3
"""A TCP relay that makes a store far away: every request pays a fixed delay.

    delay_relay.py --listen-port 0 --to 127.0.0.1:PORT --delay-ms 20

Prints "listening on 127.0.0.1:N" once it accepts connections. Each connection is relayed to the target on a
connection of its own; what the client sends reaches the target DELAY ms after it arrived (a delay line: the
order is kept and bytes in flight overlap, so a client with many requests outstanding on many connections pays
the delay once per request, not once per byte or in a queue), and answers come back at once. For HTTP/1.1,
where a request goes out whole before its answer comes back, that is a round trip longer by DELAY, as a store
in another region is.

Everything stays on 127.0.0.1.
"""

import argparse
import asyncio
import time


async def delayed_pump(reader, writer, delay):
    """Copies reader to writer, each piece sent `delay` seconds after it arrived, in order."""
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.create_task(forward())
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            queue.put_nowait((time.monotonic() + delay, data))
    finally:
        queue.put_nowait((0, None))
        await sender


async def pump(reader, writer):
    while True:
        data = await reader.read(1 << 18)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


# Every connection's task, held here: asyncio keeps only weak references to tasks, and a relay waiting on a
# quiet connection would otherwise be collected mid-flight.
LIVE = set()


async def relay(client_r, client_w, host, port, delay):
    LIVE.add(asyncio.current_task())
    try:
        await relay_connection(client_r, client_w, host, port, delay)
    finally:
        LIVE.discard(asyncio.current_task())


async def relay_connection(client_r, client_w, host, port, delay):
    try:
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(delayed_pump(client_r, server_w, delay), pump(server_r, client_w))
    except (ConnectionError, OSError):
        pass
    finally:
        for w in (server_w, client_w):
            w.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--to", required=True, help="HOST:PORT of the store")
    ap.add_argument("--delay-ms", type=float, required=True)
    a = ap.parse_args()
    host, port = a.to.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("delay_relay: the target must be on 127.0.0.1")
    server = await asyncio.start_server(
        lambda r, w: relay(r, w, host, int(port), a.delay_ms / 1000), "127.0.0.1", a.listen_port)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
