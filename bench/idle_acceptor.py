#!/usr/bin/env python3
"""An upstream that holds many idle SMTP sessions (smtp-sink caps its connections).

usage: idle_acceptor.py HOST PORT

Each connection gets "220 idle-acceptor ESMTP" and is then held open; any line
gets "250 2.0.0 Ok", QUIT gets 221 and a close.  Prints "ready" once listening.
"""
import asyncio
import sys


async def serve(reader, writer):
    try:
        writer.write(b"220 idle-acceptor ESMTP\r\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                break
            if line[:4].upper() == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                break
            writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(host, port):
    server = await asyncio.start_server(serve, host, port, backlog=4096,
                                        reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: idle_acceptor.py HOST PORT")
    try:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    except KeyboardInterrupt:
        pass
