#!/usr/bin/env python3
"""Open many idle SMTP sessions, read each greeting, and hold them.

usage: idle_rss.py HOST PORT COUNT [DEADLINE_SECONDS]

Opens COUNT connections (a few hundred connecting at a time), reads the
greeting on each, then prints one JSON object on stdout (requested, connected,
greeted, other_reply, failed, errors, seconds) and holds every connection open
until a line or EOF arrives on stdin, so that the caller can measure the
proxy's memory meanwhile.  Connections still without a greeting when the
deadline passes count as failed.  The caller must raise `ulimit -n` above COUNT.
"""
import asyncio
import json
import sys
import time

CONNECTING = 256        # connections in progress at once
GREETING_TIMEOUT = 10   # seconds per connection


async def open_one(host, port, sem, held, stats):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), GREETING_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            stats["failed"] += 1
            key = "connect: " + (type(e).__name__ if not isinstance(e, OSError)
                                 or not e.strerror else e.strerror)
            stats["errors"][key] = stats["errors"].get(key, 0) + 1
            return
        stats["connected"] += 1
        held.append(writer)
        try:
            line = await asyncio.wait_for(reader.readline(), GREETING_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            stats["failed"] += 1
            key = "greeting: " + type(e).__name__
            stats["errors"][key] = stats["errors"].get(key, 0) + 1
            return
        if line.startswith(b"220"):
            stats["greeted"] += 1
        else:
            stats["other_reply"] += 1
            key = "reply: " + line[:40].decode("latin-1").strip()
            stats["errors"][key] = stats["errors"].get(key, 0) + 1


async def main(host, port, count, deadline):
    stats = {"requested": count, "connected": 0, "greeted": 0,
             "other_reply": 0, "failed": 0, "errors": {}}
    held = []
    sem = asyncio.Semaphore(CONNECTING)
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(open_one(host, port, sem, held, stats))
             for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for t in pending:
        t.cancel()
    if pending:
        stats["failed"] += len(pending)
        stats["errors"]["deadline"] = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    stats["seconds"] = round(time.monotonic() - t0, 3)
    print(json.dumps(stats), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for w in held:
        w.close()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: idle_rss.py HOST PORT COUNT [DEADLINE_SECONDS]")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                     float(sys.argv[4]) if len(sys.argv) == 5 else 120.0))
