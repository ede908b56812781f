"""Many sessions: every message delivered, every session recorded."""

import asyncio
import os
import subprocess

import pytest

import harness


@pytest.mark.limit(120)
def test_smtp_source_1000_sessions(tap, sink):
    """smtp-source: 1,000 sessions, 100 at a time, one 1000-octet message each."""
    if not os.access(harness.SMTP_SOURCE, os.X_OK):
        pytest.skip("smtp-source not installed (package postfix)")
    r = subprocess.run([harness.SMTP_SOURCE, "-s", "100", "-m", "1000", "-l", "1000",
                        "-f", "a@example.com", "-t", "b@example.net", "127.0.0.1:%d" % tap.port],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=100)
    assert r.returncode == 0, r.stdout.decode()[-2000:]
    sink.wait_messages(1000, timeout=20)
    assert sink.count() == 1000
    evs = tap.wait_events(1000, timeout=20)
    assert len(evs) == 1000
    assert len({e["session"] for e in evs}) == 1000
    assert all(e["reason"] == "quit" for e in evs), {e["reason"] for e in evs}
    assert all(len(e["transactions"]) == 1 and e["transactions"][0]["code"] == 250 for e in evs)
    assert len(tap.transcript_paths()) == 1000


@pytest.fixture
def counter(request):
    srv = harness.CountingServer()
    request.node._diagnostics = getattr(request.node, "_diagnostics", []) + [("counting server", srv)]
    yield srv
    srv.stop()


@pytest.mark.limit(120)
def test_1000_sessions_open_at_once(tap_factory, counter):
    """1,000 clients connect and are all greeted before any of them sends a message: 1,000
    concurrent sessions (the default --max-sessions), each then delivers one message.
    (A counting server upstream: smtp-sink serves at most 256 sessions at once.)"""
    n = 1000
    tap = tap_factory(counter.port)

    async def main():
        greeted = 0
        all_greeted = asyncio.Event()
        errors = []

        async def reply(reader):
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("closed while waiting for a reply")
                if line[3:4] != b"-":
                    return int(line[:3])

        async def one(i):
            counted = False

            def count():
                nonlocal greeted, counted
                if not counted:
                    counted = True
                    greeted += 1
                    if greeted == n:
                        all_greeted.set()

            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", tap.port)
            except OSError as e:
                errors.append("connect %d: %r" % (i, e))
                count()
                return
            try:
                code = await reply(reader)
                assert code == 220, "session %d greeted with %d" % (i, code)
                count()
                await all_greeted.wait()
                writer.write(b"EHLO c%d.example\r\nMAIL FROM:<a%d@example.com>\r\n"
                             b"RCPT TO:<b@example.net>\r\nDATA\r\n" % (i, i))
                codes = [await reply(reader) for _ in range(4)]
                assert codes == [250, 250, 250, 354], "session %d: %r" % (i, codes)
                writer.write(b"Subject: %d\r\n\r\nmessage %d\r\n.\r\nQUIT\r\n" % (i, i))
                codes = [await reply(reader) for _ in range(2)]
                assert codes == [250, 221], "session %d: %r" % (i, codes)
            except Exception as e:
                errors.append("session %d: %r" % (i, e))
                count()
            finally:
                writer.close()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 90)
        return errors

    errors = asyncio.run(main())
    assert not errors, "%d failures, first: %s" % (len(errors), errors[:5])
    assert counter.peak == n, "the upstream saw at most %d sessions at once" % counter.peak
    harness.wait_until(lambda: counter.messages >= n, 20, what="%d messages upstream" % n)
    assert counter.messages == n
    evs = tap.wait_events(n, timeout=20)
    assert len(evs) == n
    assert all(e["reason"] == "quit" for e in evs), {e["reason"] for e in evs}
