"""When an end misbehaves or goes away: nobody waits for a reply that won't come, no partial
message is delivered, and the session is recorded with how it ended."""

import socket
import time

import pytest

import harness
from harness import SmtpClient, SmtpServerScript, replies_from

PIPELINED = (b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
             b"RCPT TO:<c@example.net>\r\nDATA\r\n")


@pytest.mark.limit(20)
def test_upstream_down_gives_421_and_is_recorded(tap_factory):
    dead = harness.free_port()  # nothing listens there
    tap = tap_factory(dead)
    for _ in range(2):  # and the proxy keeps serving
        c = SmtpClient(tap.port)
        r = c.reply()
        assert len(r) == 1 and r[0].startswith(b"421 4.4.1 "), r
        assert b"Upstream unreachable" in r[0]
        assert c.read_until_eof(5) == b""
    evs = tap.wait_events(2)
    for ev in evs:
        assert ev["reason"] == "upstream_unreachable"
        assert ev["upstream"] == "127.0.0.1:%d" % dead
        assert ev["transactions"] == []
    ts = tap.wait_transcripts(2)
    for t in ts:
        assert any(p.startswith("421 4.4.1 ") for p in t.proxy_lines())
        assert any(e.startswith("upstream failed") for e in t.events())
        assert t.close_fields()["reason"] == "upstream_unreachable"
    assert tap.alive()


def _start_session(port, pipelined=False):
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    return c


@pytest.mark.limit(20)
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_vanishing_mid_data_delivers_nothing(tap, sink, how):
    c = _start_session(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: partial\r\n\r\nthis message must not be delivered\r\nlast line without end")
    time.sleep(0.2)
    if how == "rst":
        c.abort()
    else:
        c.shutdown_write()
        assert c.closed_within(5), "client not closed after it vanished mid-DATA"
        c.close()
    ev = tap.event()
    assert ev["reason"] == "client_closed"
    (tx,) = ev["transactions"]
    assert tx["code"] is None
    time.sleep(0.3)
    assert sink.count() == 0, "a partial message was delivered"


@pytest.mark.limit(20)
def test_client_vanishing_mid_data_sends_no_end_of_data(tap_factory, fake_server):
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    c = _start_session(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: partial\r\n\r\nbody\r\n")
    time.sleep(0.2)
    c.shutdown_write()
    conn = srv.wait_conn()
    assert conn.wait_eof(5) or conn.closed, "the upstream connection was not closed"
    srv.join()
    assert b"\r\n.\r\n" not in conn.received
    assert conn.messages == []
    c.close()


@pytest.mark.limit(20)
def test_idle_timeout(tap_factory, sink):
    tap = tap_factory(sink.port, "--idle-timeout", "2")
    c = _start_session(tap.port)
    t0 = time.monotonic()
    r = c.reply()
    elapsed = time.monotonic() - t0
    assert len(r) == 1 and r[0].startswith(b"421 4.4.2 "), r
    assert b"Idle timeout" in r[0]
    assert 1.5 <= elapsed <= 5, "idle timeout fired after %.1fs (expected ~2s)" % elapsed
    assert c.read_until_eof(3) == b""
    ev = tap.event()
    assert ev["reason"] == "idle_timeout"
    t = tap.transcript()
    assert any(p.startswith("421 4.4.2 ") for p in t.proxy_lines())


@pytest.mark.limit(30)
def test_idle_timeout_spares_a_slow_but_moving_message(tap_factory, sink):
    """A line every 0.7 s for 3.5 s under --idle-timeout 2: the transaction makes progress."""
    tap = tap_factory(sink.port, "--idle-timeout", "2")
    c = _start_session(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: slow\r\n\r\n")
    for i in range(5):
        time.sleep(0.7)
        c.send(b"line %d\r\n" % i)
    c.send(b".\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    (m,) = sink.wait_messages(1)
    assert m.content.endswith(b"line 4\n")


@pytest.mark.limit(30)
def test_idle_timeout_spares_a_client_waiting_for_the_server(tap_factory, fake_server):
    """The server takes 3 s to answer the final dot (RFC 5321 4.5.3.2 lets it take 10 min):
    the client is waiting, not idle, under --idle-timeout 2."""

    def data(conn, line):
        conn.send("354 go ahead\r\n")
        conn.read_until(b"\r\n.\r\n")
        time.sleep(3)
        conn.send("250 2.0.0 Ok: slow\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"DATA": data}))
    tap = tap_factory(srv.port, "--idle-timeout", "2")
    c = _start_session(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert c.reply() == [b"250 2.0.0 Ok: slow\r\n"]
    c.expect("QUIT", 221)


@pytest.mark.limit(20)
def test_unsolicited_421_answers_every_pending_command(tap_factory, fake_server):
    """The server sends 421 while MAIL, RCPT, RCPT, DATA are pending and keeps its socket
    open: each pending command gets that 421, then the client is closed."""
    text = b"421 4.3.0 fake.example Service going down\r\n"

    def mail(conn, line):
        time.sleep(0.3)  # let the pipelined commands arrive
        conn.send(text)
        time.sleep(5)  # and do not close
        conn.close()
        return True

    srv = fake_server(SmtpServerScript(hooks={"MAIL": mail}))
    tap = tap_factory(srv.port)
    c = _start_session(tap.port)
    c.send(PIPELINED)
    t0 = time.monotonic()
    rest = c.read_until_eof(4)
    assert time.monotonic() - t0 < 4
    assert replies_from(rest) == [[text]] * 4, rest
    ev = tap.event(timeout=8)
    assert ev["reason"] == "server_421"
    t = tap.transcript()
    assert t.server_lines().count(text.rstrip(b"\r\n").decode()) == 1
    assert t.proxy_lines().count(text.rstrip(b"\r\n").decode()) == 3


@pytest.mark.limit(20)
def test_unsolicited_421_while_idle(tap_factory, fake_server):
    """A 421 that answers nothing (the client sent no command) is relayed, then the client is
    closed; it is not taken as the reply to the client's next command."""
    text = b"421 4.3.2 fake.example Shutting down\r\n"

    def ehlo(conn, line):
        conn.send("250 fake.example\r\n")
        time.sleep(0.5)
        conn.send(text)
        conn.close()
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port)
    c = _start_session(tap.port)
    assert c.reply() == [text]
    assert c.read_until_eof(3) == b""
    ev = tap.event()
    assert ev["reason"] == "server_421"


@pytest.mark.limit(20)
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_server_vanishing_answers_every_pending_command(tap_factory, fake_server, how):
    def mail(conn, line):
        time.sleep(0.3)
        if how == "rst":
            conn.abort()
        else:
            conn.close()
        return True

    srv = fake_server(SmtpServerScript(hooks={"MAIL": mail}))
    tap = tap_factory(srv.port)
    c = _start_session(tap.port)
    c.send(PIPELINED)
    rest = c.read_until_eof(4)
    replies = replies_from(rest)
    assert len(replies) == 4, rest
    for r in replies:
        assert len(r) == 1 and r[0].startswith(b"421 4.4.2 "), rest
        assert b"Connection to upstream lost" in r[0]
    ev = tap.event()
    assert ev["reason"] == "server_closed"


@pytest.mark.limit(20)
def test_server_vanishing_mid_reply_leaves_no_client_waiting(tap_factory, fake_server):
    def mail(conn, line):
        time.sleep(0.2)
        conn.send(b"250-2.1.0 first line\r\n250-2.1.0 half a li")
        time.sleep(0.5)
        conn.close()
        return True

    srv = fake_server(SmtpServerScript(hooks={"MAIL": mail}))
    tap = tap_factory(srv.port)
    c = _start_session(tap.port)
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n")
    rest = c.read_until_eof(4)
    lines = rest.split(b"\r\n")
    assert lines[-1] == b"", "the client got a partial line: %r" % rest
    assert lines[-2].startswith(b"421 4.4.2 "), rest
    ev = tap.event()
    assert ev["reason"] == "server_closed"


@pytest.mark.limit(20)
def test_quit_then_shutdown_write_still_gets_221(tap, sink):
    c = _start_session(tap.port)
    c.send(b"QUIT\r\n")
    c.shutdown_write()
    assert c.read_until_eof(5) == b"221 Bye\r\n"
    ev = tap.event()
    assert ev["reason"] == "quit"


@pytest.mark.limit(20)
def test_pipelined_commands_then_shutdown_write_get_all_replies(tap_factory, fake_server):
    """The server is slow to answer; the client has shut its write side after QUIT."""

    def quit_(conn, line):
        time.sleep(1.0)
        conn.send("221 2.0.0 Bye after all\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"QUIT": quit_}))
    tap = tap_factory(srv.port)
    c = _start_session(tap.port)
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nQUIT\r\n")
    c.shutdown_write()
    rest = c.read_until_eof(5)
    assert replies_from(rest) == [[b"250 2.1.0 Ok\r\n"], [b"250 2.1.5 Ok\r\n"],
                                  [b"221 2.0.0 Bye after all\r\n"]], rest
    ev = tap.event()
    assert ev["reason"] == "quit"


def _never_answer(conn, line):
    return True  # read, never answered (a tarpit, a milter that takes its time)


@pytest.mark.limit(30)
def test_client_eof_reaches_the_server_and_ends_the_session(tap_factory, fake_server):
    """A client sends a line the server never answers and closes its write side (item 6): the
    server sees EOF at once (smtptap shuts the upstream's write side), closes, and the session
    ends and is recorded long before the idle timeout."""
    srv = fake_server(SmtpServerScript(hooks={"NOOP": _never_answer}))
    tap = tap_factory(srv.port, "--idle-timeout", "300")
    c = _start_session(tap.port)
    t0 = time.monotonic()
    c.send(b"NOOP\r\n")
    c.shutdown_write()
    conn = srv.wait_conn()
    harness.wait_until(lambda: conn.eof, 5, what="EOF at the server")
    rest = c.read_until_eof(10)
    assert time.monotonic() - t0 < 8
    assert all(r[-1][:3] == b"421" for r in replies_from(rest)), rest  # the NOOP's answer
    ev = tap.event(timeout=5)
    assert ev["reason"] in ("client_closed", "server_closed"), ev
    t = tap.transcript()
    assert any(e.startswith("client closed its side") for e in t.events()), t.events()


@pytest.mark.limit(40)
def test_client_eof_with_a_server_that_ignores_it_ends_after_the_linger(tap_factory, fake_server):
    """The server neither answers nor closes after the client's EOF: the session ends after a
    linger of 10 seconds, with a 421 for the unanswered command, not after the idle timeout."""

    def ignore_eof(conn, line):
        conn.timeout = 60
        while conn.readline():  # EOF comes; the server stays silent and open
            pass
        time.sleep(30)
        return True

    srv = fake_server(SmtpServerScript(hooks={"NOOP": ignore_eof}))
    tap = tap_factory(srv.port, "--idle-timeout", "300")
    c = _start_session(tap.port)
    t0 = time.monotonic()
    c.send(b"NOOP\r\n")
    c.shutdown_write()
    rest = c.read_until_eof(25)
    elapsed = time.monotonic() - t0
    assert 8 <= elapsed < 20, elapsed
    assert [r[-1][:10] for r in replies_from(rest)] == [b"421 4.4.2 "], rest
    ev = tap.event(timeout=5)
    assert ev["reason"] == "client_closed", ev
    assert srv.wait_conn().eof


@pytest.mark.limit(20)
def test_max_sessions(tap_factory, sink):
    tap = tap_factory(sink.port, "--max-sessions", "2")
    a = SmtpClient(tap.port)
    assert a.code() == 220
    b = SmtpClient(tap.port)
    assert b.code() == 220
    c = SmtpClient(tap.port)
    r = c.reply()
    assert len(r) == 1 and r[0].startswith(b"421 4.3.2 "), r
    assert b"Too many connections" in r[0]
    assert c.read_until_eof(3) == b""
    # The first two still work; once one ends there is room again.
    b.expect("HELO client.example", 250)
    a.expect("QUIT", 221)
    a.read_until_eof(3)
    harness.wait_until(lambda: any(e["reason"] == "quit" for e in tap.events()), 5,
                       what="the first session's event")
    d = SmtpClient(tap.port)
    assert d.code() == 220
    d.expect("QUIT", 221)
    b.expect("QUIT", 221)


@pytest.fixture
def black_hole():
    """A port whose accept queue is full: connecting there hangs (SYNs are dropped)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
        hangs = False
    except socket.timeout:
        hangs = True
    except OSError:
        hangs = False
    probe.close()
    if not hangs:
        pytest.skip("cannot make a connection hang on loopback here")
    yield port
    for s in fillers:
        s.close()
    lsock.close()


@pytest.mark.limit(20)
def test_connect_timeout(tap_factory, black_hole):
    tap = tap_factory(black_hole, "--connect-timeout", "1")
    c = SmtpClient(tap.port)
    t0 = time.monotonic()
    r = c.reply()
    elapsed = time.monotonic() - t0
    assert len(r) == 1 and r[0].startswith(b"421 4.4.1 "), r
    assert 0.7 <= elapsed <= 4, "connect timeout after %.1fs (expected ~1s)" % elapsed
    assert c.read_until_eof(3) == b""
    ev = tap.event()
    assert ev["reason"] == "connect_timeout"


@pytest.mark.limit(20)
def test_server_that_never_greets_does_not_hold_the_client(tap_factory, fake_server):
    def silent(conn, line):
        time.sleep(8)
        return True

    srv = fake_server(SmtpServerScript(hooks={"GREETING": silent}))
    tap = tap_factory(srv.port, "--idle-timeout", "2")
    c = SmtpClient(tap.port)
    t0 = time.monotonic()
    r = c.reply()
    assert r and r[-1].startswith(b"421 "), r
    assert time.monotonic() - t0 <= 5
    assert c.read_until_eof(3) == b""


@pytest.mark.limit(20)
def test_proxy_reply_takes_its_place_in_the_pipeline(tap_factory, fake_server):
    """The proxy's own 500 for an over-long line, pipelined between MAIL and RCPT, comes after
    the server's (slow) reply to MAIL and before its reply to RCPT (pitfall 1)."""

    def mail(conn, line):
        time.sleep(0.5)
        conn.send("250 2.1.0 slow Ok\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"MAIL": mail}))
    tap = tap_factory(srv.port, "--max-line", "1024")
    c = _start_session(tap.port)
    c.send(b"MAIL FROM:<a@example.com>\r\nNOOP " + b"n" * 2000 + b"\r\nRCPT TO:<b@example.net>\r\n")
    replies = [c.reply() for _ in range(3)]
    assert replies[0] == [b"250 2.1.0 slow Ok\r\n"], replies
    assert replies[1][0].startswith(b"500 5.5.2 "), replies
    assert replies[2] == [b"250 2.1.5 Ok\r\n"], replies
    c.expect("QUIT", 221)
