"""Hostile peers (issue 5, "Hostile peers, in integration tests"): each case says what the
client, the server (smtp-sink or the scripted FakeServer), the transcript and the events file
see, and ends by checking that the proxy still serves a normal session.

Cases already covered elsewhere are not repeated here: the plain early talker
(test_relay.py::test_early_talker_held_until_greeting), an upstream that refuses at once
(test_failures.py::test_upstream_down_gives_421_and_is_recorded), QUIT then a half-close
(test_failures.py::test_quit_then_shutdown_write_still_gets_221), --max-sessions 2
(test_failures.py::test_max_sessions), NUL and invalid UTF-8 inside DATA
(test_relay.py::test_data_stream_octets_unchanged_raw) and their escaping
(test_recording.py::test_transcript_escaping).

Measured figures (RSS, CPU time, rates) are printed: run pytest with -s to see them.
"""

import os
import resource
import socket
import subprocess
import threading
import time

import pytest

import harness
import hostile_peers as hp
from harness import SmtpClient, SmtpServerScript, escape, replies_from, unescape
from tls_peers import certs, client_context  # noqa: F401  (certs: a fixture)

MIB = 1024 * 1024


def greet_ehlo(port, helo="client.example"):
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO " + helo, 250)
    return c


def wire_of(records):
    """The octets a list of C:/S: record texts stand for: a record of a line that ended in a
    bare LF ends in \\x0a; the others ended in CRLF."""
    out = b""
    for r in records:
        b = unescape(r)
        out += b if b.endswith(b"\n") else b + b"\r\n"
    return out


def stripped(lines):
    return [l.rstrip(b"\r\n") for l in lines]


# --------------------------------------------------------------------------------------------
# NUL and invalid UTF-8 in commands


@pytest.mark.limit(30)
def test_nul_and_invalid_utf8_in_commands(tap_factory, fake_server):
    """Commands holding invalid UTF-8 (lone continuation octets, overlong and surrogate
    encodings, 0xff), commands holding NUL (a line of NULs only among them), and a message
    whose lines start with NUL or hold '.' followed by NUL (not an end of data).

    client: a reply to every command, in order; 500 5.5.2 from the proxy for each command with
    a NUL (a server cuts it at the NUL, the rules would read it whole).  server: every other
    command octet for octet, none with a NUL, the message unchanged, NULs included.
    transcript: each line escaped (\\x00, \\xff ...), valid UTF-8 and safe to print.  event:
    helo, mail_from and rcpt escaped the same way."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    helo = b"inv\xffhost.example"
    mail = b"<inv\xfea@example.com>"
    rcpt = b"<b\xc0\xaf\xed\xa0\x80@example.net>"
    nul = [b"EHLO nul\x00host.example", b"MAIL FROM:<nul\x00a@example.com>", b"NOOP \x00\x00",
           b"\x00\x00\x00"]
    relayed = [b"EHLO " + helo, b"MAIL FROM:" + mail, b"RCPT TO:" + rcpt,
               b"NOOP \x80\x9f \xf8\x88\x80\x80\x80", b"\xff\xfe\xfd", b"DATA"]
    cmds = [nul[0], relayed[0], nul[1], relayed[1], relayed[2], nul[2], relayed[3], nul[3],
            relayed[4], relayed[5]]
    content = (b"Subject: nul\r\n\r\n"
               b"\x00 line starting with NUL\r\n"
               b"\x00\r\n"
               b".\x00 dot then NUL: not an end of data\r\n"
               b"..\x00 stuffed\r\n"
               b"\xff\xfe invalid \xc3\x28 UTF-8\r\n")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    codes = []
    for cmd in cmds:
        r = c.cmd(cmd)
        assert r, "no reply to %r" % cmd
        codes.append(int(r[-1][:3]))
    assert codes == [500, 250, 500, 250, 250, 500, 250, 500, 502, 354], codes
    c.send(content + b".\r\n")
    assert c.reply() == [b"250 2.0.0 Ok: queued as FAKE1\r\n"]
    c.expect("QUIT", 221)
    assert c.read_until_eof(5) == b""

    srv.join()
    srv.check()
    conn = srv.conns[0]
    assert stripped(conn.commands) == relayed + [b"QUIT"], "commands changed on the way"
    assert len(conn.messages) == 1
    assert conn.messages[0]["data"] == content + b".\r\n", "message octets changed on the way"

    t = tap.transcript()  # checks: valid UTF-8, no raw control characters
    recs = t.client_lines()
    for cmd in cmds + [b"QUIT"]:
        assert escape(cmd) in recs, "%r not recorded as %r" % (cmd, escape(cmd))
    for line in content.split(b"\r\n")[:-1]:
        assert escape(line) in recs, "content line %r not recorded" % line
    assert "\\x00\\x00\\x00" in recs
    assert [unescape(r) for r in recs].count(b".") == 1, "'.\\x00' taken for an end of data"
    ev = tap.event()
    assert ev["reason"] == "quit"
    assert ev["transactions"][0]["code"] == 250
    assert ev["transactions"][0]["size"] == len(content)
    hp.normal_session(tap, server=srv)
    assert ev["helo"] == escape(helo), ev["helo"]
    assert ev["transactions"][0]["mail_from"] == escape(mail), ev["transactions"][0]
    assert ev["transactions"][0]["rcpt"][0]["to"] == escape(rcpt), ev["transactions"][0]


# --------------------------------------------------------------------------------------------
# Peer text inside "*" event records: escaped like any other record (issue 13)


def raw_records(tap):
    """The raw octets of the tap's one transcript once closed, split into lines (no parsing,
    no checks)."""
    def closed():
        paths = tap.transcript_paths()
        if len(paths) != 1:
            return None
        with open(paths[0], "rb") as f:
            raw = f.read()
        return raw if b" * close reason=" in raw else None

    return harness.wait_until(closed, 5.0, what="a closed transcript").split(b"\n")


def assert_safe_octets(lines):
    """Every line is a header or a record, none holds a raw control octet or a bidirectional
    override: nothing a peer sent can forge a record or reorder what a terminal shows."""
    for line in lines:
        assert not any(b < 0x20 and b != 0x09 for b in line), "raw control octet in %r" % line
        assert b"\xe2\x80\xae" not in line and b"\xe2\x81\xa6" not in line, "raw bidi in %r" % line
        assert line == b"" or line.startswith(b"# ") or harness.RECORD_RE.match(line.decode("utf-8")), \
            "not a record: %r" % line


@pytest.mark.limit(30)
def test_hostile_sni_escaped_in_tls_event(tap_factory, fake_server, certs):
    """A client's TLS server name holding ESC, CR and a LF followed by a forged "C:" record:
    the "tls client started" event writes it escaped, on one line, and the session goes on.
    The JSON event holds the name escaped the same way."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, *certs.proxy_args("proxy"))
    sni = "evil\x1b[2J\rhost\n2026-01-01T00:00:00.000000Z C: MAIL FROM:<forged@example>"
    c = greet_ehlo(tap.port)
    c.expect("STARTTLS", 220)
    c.sock = client_context(verify=False, check_hostname=False).wrap_socket(c.sock, server_hostname=sni)
    c.expect("EHLO client.example", 250)
    c.expect("QUIT", 221)
    ev = tap.event()
    lines = raw_records(tap)
    assert_safe_octets(lines)
    started = [l for l in lines if b" * tls client started " in l]
    assert len(started) == 1 and started[0].endswith(b" sni=" + escape(sni.encode()).encode()), started
    t = tap.transcript()
    assert "MAIL FROM:<forged@example>" not in t.client_lines()
    assert ev["tls"]["client"]["sni"] == escape(sni.encode()), ev["tls"]


@pytest.mark.limit(30)
def test_hostile_ehlo_capabilities_escaped_when_removed(tap_factory, fake_server):
    """A hostile upstream's XCLIENT and XFORWARD lines, holding ESC, a bare CR, VT, a
    backslash and bidirectional overrides, are removed from the EHLO reply: the "ehlo reply
    edited" events that name them write them escaped, as the S: records do."""
    xclient = b"XCLIENT NAME\x1b[31m\rADDR \x0bHELO \\x41 \xe2\x80\xae\xe2\x81\xa6gpj.exe"
    xforward = b"XFORWARD \xe2\x80\xaaNAME\x1b]0;owned\x07"

    def ehlo(conn, line):
        conn.send(b"250-fake.example\r\n250-" + xclient + b"\r\n250-" + xforward + b"\r\n250 PIPELINING\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert r == [b"250-fake.example\r\n", b"250 PIPELINING\r\n"], r
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    tap.event()
    assert_safe_octets(raw_records(tap))
    t = tap.transcript()
    edited = [e for e in t.events() if e.startswith("ehlo reply edited: ")]
    assert edited == ["ehlo reply edited: removed " + escape(xclient),
                      "ehlo reply edited: removed " + escape(xforward)], edited
    assert "250-" + escape(xclient) in t.server_lines()


@pytest.mark.limit(30)
def test_bidi_overrides_escaped_in_records(tap_factory, fake_server):
    """Bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) in a client's
    command and in a server's reply are recorded octet by octet as \\xHH: printed raw they
    would reorder what a terminal shows after them.  Other UTF-8 stays as it is."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    helo = "bidi.example \u202egpj.exe \u2066x\u2069 \u202a\u202b\u202c\u202d \u2067\u2068 caf\u00e9"
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("HELO " + helo, 250)
    c.expect("QUIT", 221)
    tap.event()
    assert_safe_octets(raw_records(tap))
    t = tap.transcript()
    want = "HELO " + escape(helo.encode())
    assert want in t.client_lines(), t.client_lines()
    assert "\\xe2\\x80\\xae" in want and "\\xe2\\x81\\xa9" in want and "caf\u00e9" in want


# --------------------------------------------------------------------------------------------
# Talking before the greeting


@pytest.mark.limit(30)
def test_whole_pipeline_before_the_greeting(tap_factory, fake_server):
    """An early talker that sends EHLO, MAIL, RCPT and half a NOOP line before a slow server
    (1.5 s) greets.

    server: nothing before its greeting has gone out; then the three commands in order, and
    the NOOP once the client completes it.  client: the 220 first, then the three replies in
    order.  transcript: the early-talker warning with the number of octets, before the 220;
    the client's lines after the 220 (the order in which they reached the server).  event:
    early_talker true, warnings >= 1."""
    seen = {}

    def greeting(conn, line):
        seen["pending_at_greeting"] = conn.pending()
        conn.send("220 fake.example ESMTP slow\r\n")
        return True

    srv = fake_server(SmtpServerScript(greeting_delay=1.5, hooks={"GREETING": greeting}))
    tap = tap_factory(srv.port)
    early = b"EHLO early.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nNOOP half"
    c = SmtpClient(tap.port)
    c.send(early)
    assert c.reply() == [b"220 fake.example ESMTP slow\r\n"]
    assert c.reply()[-1].startswith(b"250 ")
    assert c.reply() == [b"250 2.1.0 Ok\r\n"]
    assert c.reply() == [b"250 2.1.5 Ok\r\n"]
    c.send(b" line\r\n")
    assert c.reply() == [b"250 2.0.0 Ok\r\n"]
    c.expect("QUIT", 221)
    assert c.read_until_eof(5) == b""
    srv.join()
    assert seen["pending_at_greeting"] == 0, "early octets reached the server before its greeting"
    assert stripped(srv.conns[0].commands) == [b"EHLO early.example", b"MAIL FROM:<a@example.com>",
                                               b"RCPT TO:<b@example.net>", b"NOOP half line", b"QUIT"]
    ev = tap.event()
    assert ev["early_talker"] is True
    assert ev["warnings"] >= 1
    assert ev["helo"] == "early.example"
    t = tap.transcript()
    kinds = hp.record_kinds(t)
    warn = "warning early talker: client sent %d octets before the greeting" % len(early)
    assert ("*", warn) in kinds, hp.excerpt(t)
    assert kinds.index(("*", warn)) < kinds.index(("S:", "220 fake.example ESMTP slow"))
    assert kinds.index(("S:", "220 fake.example ESMTP slow")) < kinds.index(("C:", "EHLO early.example"))
    hp.normal_session(tap, server=srv)


# --------------------------------------------------------------------------------------------
# Other protocols on the SMTP port


@pytest.mark.limit(30)
def test_tls_client_hello_on_plaintext_port(tap_factory, fake_server):
    """A TLS client (Python's ssl, OpenSSL 3) that speaks TLS at once on the plaintext port,
    to a server that greets after 0.5 s.

    client: the server's 220, then for every LF-terminated piece of the ClientHello in turn
    the proxy's 500 5.5.2 where it holds a NUL (nearly all do), else the server's 502; its
    TLS layer fails with "wrong version number".  server: the pieces without a NUL as sent,
    nothing else.  transcript: the early-talker warning with the
    ClientHello's length, then the pieces as escaped C: records.  event: early_talker true,
    no helo, no transaction, reason client_closed."""
    srv = fake_server(SmtpServerScript(greeting_delay=0.5))
    tap = tap_factory(srv.port)
    hello, tls, incoming, _out = hp.client_hello()
    cut = hello.rfind(b"\n") + 1  # the complete "lines" in it (random octets may hold LFs)
    nlines = hello.count(b"\n")
    c = SmtpClient(tap.port)
    c.send(hello)
    got = bytearray()
    deadline = time.monotonic() + 5
    while len(replies_from(bytes(got))) < 1 + nlines and time.monotonic() < deadline:
        c.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            d = c.sock.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        got += d
    replies = replies_from(bytes(got))
    pieces = [p + b"\n" for p in hello[:cut].split(b"\n")[:-1]]  # LF ends a piece, not CR
    assert replies[0] == [b"220 fake.example ESMTP fake\r\n"], got
    assert replies[1:] == [[b"500 5.5.2 Error: NUL in command\r\n"] if b"\x00" in p else
                           [b"502 5.5.2 Error: command not recognized\r\n"] for p in pieces], got
    verdict = hp.tls_verdict_on(tls, incoming, bytes(got))
    assert verdict is not None and "WRONG_VERSION_NUMBER" in verdict, verdict
    c.close()  # the TLS client gives up

    ev = tap.event()
    assert ev["early_talker"] is True
    assert ev["helo"] is None and ev["transactions"] == []
    assert ev["reason"] == "client_closed"
    srv.join()
    assert bytes(srv.conns[0].received) == b"".join(p for p in pieces if b"\x00" not in p), \
        "the server did not get the pieces without a NUL as sent"
    t = tap.transcript()
    assert "warning early talker: client sent %d octets before the greeting" % len(hello) in t.events()
    assert wire_of(t.client_lines()[:nlines]) == hello[:cut], t.client_lines()
    hp.normal_session(tap, server=srv)


@pytest.mark.limit(30)
def test_http_request_on_smtp_port(tap, sink):
    """An HTTP client on the SMTP port, against smtp-sink: it sends its request without
    waiting for a greeting.

    client: the sink's 220, then a reply per request line (the sink's 5xx for "GET ..." and
    "Host: x", its reply to the empty line), then the client gives up.  server: three command
    lines it doesn't know.  transcript: the three lines as C: records, each answered.  event:
    no helo, no transaction, early_talker as the transcript says."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    c = SmtpClient(tap.port)
    c.send(request)
    replies = [c.reply() for _ in range(4)]
    assert replies[0][-1].startswith(b"220 "), replies
    for r in replies[1:]:
        assert r and r[-1][:1] == b"5", replies
    c.close()
    ev = tap.event()
    assert ev["helo"] is None and ev["transactions"] == []
    assert ev["reason"] == "client_closed"
    t = tap.transcript()
    assert t.client_lines() == ["GET / HTTP/1.1", "Host: x", ""], t.client_lines()
    s = t.server_lines()
    assert len(s) == 4 and s[0].startswith("220 ") and all(x[:1] == "5" for x in s[1:]), s
    early = any(e.startswith("warning early talker") for e in t.events())
    assert ev["early_talker"] is early

    # A real HTTP client, curl: it sees no HTTP response and fails.
    r = subprocess.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:%d/" % tap.port],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
    assert r.returncode != 0, "curl took the SMTP greeting for an HTTP response: %r" % r.stdout
    evs = tap.wait_events(2)
    assert evs[1]["helo"] is None and evs[1]["transactions"] == []
    hp.normal_session(tap, sink=sink)


# --------------------------------------------------------------------------------------------
# Unbounded input


GIB = 1024 * MIB


@pytest.mark.limit(90)
def test_gigabyte_without_line_end(tap_factory, fake_server):
    """1 GiB of 'A' with no line end as a command line, in 1 MiB writes (loopback runs at
    about 1 GiB/s here, so the whole gigabyte fits well inside the time limit).

    client: "500 5.5.2 Line too long" once, while it is still sending; after its CRLF the
    session goes on (NOOP 250).  server: none of it.  transcript: the warning and the
    P: 500 once, "discarded over-long line octets=1073741826" (the line with its CRLF), no
    'A' records.  event: client_octets counts the gigabyte.  proxy RSS: grows by less than
    8 MiB (sampled every 10 ms)."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    c = greet_ehlo(tap.port)
    c.sock.settimeout(60)
    chunk = b"A" * MIB
    first = []

    def reader():
        first.append((time.monotonic(), c.reply()))

    th = threading.Thread(target=reader, daemon=True)
    time.sleep(0.2)
    with hp.RssSampler(tap.pid) as rss:
        th.start()
        t0 = time.monotonic()
        for _ in range(GIB // MIB):
            c.sock.sendall(chunk)
        t1 = time.monotonic()
        c.send(b"\r\n")
        th.join(10)
    hp.figure("gigabyte without a line end: %d MiB in %.2f s (%.0f MiB/s); %s" % (
        GIB // MIB, t1 - t0, (GIB // MIB) / (t1 - t0), rss.report("smtptap")))
    assert first, "no reply to the over-long line"
    when, r = first[0]
    assert r == [b"500 5.5.2 Line too long\r\n"], r
    assert when < t1, "the 500 came only after the whole line"
    assert rss.growth < 8 * 1024, rss.report("smtptap")
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    assert c.read_until_eof(5) == b"", "more than one reply to the over-long line"
    srv.join()
    conn = srv.conns[0]
    assert b"AAAA" not in conn.received, "part of the over-long line reached the server"
    assert stripped(conn.commands) == [b"EHLO client.example", b"NOOP", b"QUIT"]
    t = tap.transcript()
    assert t.proxy_lines() == ["500 5.5.2 Line too long"], t.proxy_lines()
    assert "discarded over-long line octets=%d" % (GIB + 2) in t.events(), hp.excerpt(t)
    assert not any("AAAA" in r.text for r in t.records if r.kind != "*")
    assert os.path.getsize(t.path) < 64 * 1024
    ev = tap.event()
    assert ev["client_octets"] == len(c.sent) + GIB
    assert ev["warnings"] >= 1 and ev["reason"] == "quit"
    hp.normal_session(tap, server=srv)


@pytest.mark.limit(120)
def test_gigabyte_message_line_without_line_end(tap_factory, fake_server):
    """1 GiB of 'B' with no line end inside a message (--record headers, so the transcript
    does not grow by a gigabyte): relayed in pieces, as the README says of long message lines.

    server: the whole gigabyte, then the end of data; it accepts.  client: 250.  transcript:
    the header, "message body not recorded" with the octets.  event: size counts the
    gigabyte.  proxy RSS: grows by less than 8 MiB."""
    counted = {}

    def data(conn, line):
        if len(conn.server.conns) > 1:
            return False  # later sessions: served normally
        conn.send("354 go ahead\r\n")
        n = 0
        tail = b""
        while True:
            conn.sock.settimeout(30)
            d = conn.sock.recv(1 << 20)
            if not d:
                return True
            n += len(d)
            tail = (tail + d)[-16:]
            if tail.endswith(b"\r\n.\r\n"):
                break
        counted["octets"] = n
        counted["tail"] = tail
        conn.send("250 2.0.0 Ok: counted\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"DATA": data}))
    # --max-message (default 50 MiB) would end it: this test is about a line, not a size.
    tap = tap_factory(srv.port, "--record", "headers", "--max-message", "2147483648")
    c = greet_ehlo(tap.port)
    c.sock.settimeout(60)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    head = b"Subject: huge line\r\n\r\n"
    chunk = b"B" * MIB
    time.sleep(0.2)
    with hp.RssSampler(tap.pid) as rss:
        t0 = time.monotonic()
        c.send(head)
        for _ in range(GIB // MIB):
            c.sock.sendall(chunk)
        c.send(b"\r\n.\r\n")
        r = c.reply()
        t1 = time.monotonic()
    hp.figure("gigabyte message line: %.2f s through the proxy to the server; %s" % (
        t1 - t0, rss.report("smtptap")))
    assert r == [b"250 2.0.0 Ok: counted\r\n"], r
    assert rss.growth < 8 * 1024, rss.report("smtptap")
    assert counted["octets"] == len(head) + GIB + 5
    c.expect("QUIT", 221)
    ev = tap.event()
    assert ev["transactions"][0]["size"] == len(head) + GIB + 2
    assert ev["transactions"][0]["code"] == 250
    t = tap.transcript()
    assert os.path.getsize(t.path) < 64 * 1024
    assert any(e.startswith("message body not recorded") for e in t.events()), hp.excerpt(t)
    hp.normal_session(tap, server=srv)


@pytest.mark.limit(60)
@pytest.mark.parametrize("upstream", ["fake", "sink"])
def test_ten_thousand_pipelined_commands(tap_factory, fake_server, sink, upstream):
    """10,000 NOOPs in one write (sent from a thread, the client reading meanwhile, as
    RFC 2920 asks of a pipelining client).

    fake: each NOOP carries its number and the server echoes it, so order is checked reply by
    reply.  sink: smtp-sink answers each.  client: 10,000 replies, in order.  server (fake):
    the 10,000 commands in order.  transcript: 10,000 C: and 10,000 matching S: records.
    event: client_octets = the write plus EHLO and QUIT."""
    n = 10000

    def noop(conn, line):
        conn.send(b"250 2.0.0 Ok " + line[5:].rstrip(b"\r\n") + b"\r\n")
        return True

    if upstream == "fake":
        srv = fake_server(SmtpServerScript(hooks={"NOOP": noop}))
        port = srv.port
        batch = b"".join(b"NOOP %d\r\n" % i for i in range(n))
        want = [[b"250 2.0.0 Ok %d\r\n" % i] for i in range(n)]
    else:
        srv = None
        port = sink.port
        batch = b"NOOP\r\n" * n
        want = None
    tap = tap_factory(port)
    c = greet_ehlo(tap.port)
    c.sock.settimeout(30)
    c.sent += batch
    sender = threading.Thread(target=c.sock.sendall, args=(batch,), daemon=True)
    t0 = time.monotonic()
    sender.start()
    replies = [c.reply() for _ in range(n)]
    elapsed = time.monotonic() - t0
    sender.join(5)
    hp.figure("10,000 pipelined NOOPs (%s): all replies in %.2f s" % (upstream, elapsed))
    if want is not None:
        bad = [(i, r) for i, r in enumerate(replies) if r != want[i]]
        assert not bad, "replies out of order or changed, first: %r" % bad[:3]
    else:
        assert all(len(r) == 1 and r[0].startswith(b"250 ") for r in replies), \
            [r for r in replies if not r or not r[0].startswith(b"250 ")][:3]
    c.expect("QUIT", 221)
    assert c.read_until_eof(5) == b""
    if srv is not None:
        srv.join()
        assert stripped(srv.conns[0].commands[1:-1]) == [b"NOOP %d" % i for i in range(n)]
    t = tap.transcript(timeout=10)
    cl = t.client_lines()
    sl = t.server_lines()
    assert cl[1:-1] == [l.decode() for l in batch.split(b"\r\n")[:-1]]
    noop_replies = [l for l in sl if l.startswith("250 2.0.0 Ok")]
    assert len(noop_replies) == n
    if want is not None:
        assert noop_replies == ["250 2.0.0 Ok %d" % i for i in range(n)]
    ev = tap.event()
    assert ev["client_octets"] == len(c.sent)
    assert ev["reason"] == "quit"
    hp.normal_session(tap, sink=sink if upstream == "sink" else None, server=srv)


@pytest.mark.limit(60)
def test_one_megabyte_multiline_reply(tap_factory, fake_server):
    """The server answers EHLO with 1 MB of "250-..." lines (9,000 of ~117 octets) in one
    write.

    client: all of it, octet for octet, ending in the server's last line.  server: the
    client's commands as sent.  transcript: every line of the reply once, as an S: record.
    event: server_octets counts it.  proxy RSS: grows by less than 8 MiB."""
    lines = [b"250-fake.example"]
    i = 0
    while sum(len(l) + 2 for l in lines) < 1000000:
        lines.append(b"250-X-FILL-%06d " % i + b"f" * 100)
        i += 1
    lines.append(b"250 PIPELINING")
    reply = b"".join(l + b"\r\n" for l in lines)
    assert len(reply) >= 1000000

    def ehlo(conn, line):
        conn.send(reply)
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    time.sleep(0.2)
    with hp.RssSampler(tap.pid) as rss:
        r = c.cmd("EHLO client.example")
    hp.figure("1 MB EHLO reply (%d lines, %d octets): %s" % (len(lines), len(reply),
                                                             rss.report("smtptap")))
    assert b"".join(r) == reply, "the reply changed on the way (%d lines received of %d)" % (
        len(r), len(lines))
    assert rss.growth < 8 * 1024, rss.report("smtptap")
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    srv.join()
    assert stripped(srv.conns[0].commands) == [b"EHLO client.example", b"NOOP", b"QUIT"]
    t = tap.transcript()
    assert t.server_lines()[1:1 + len(lines)] == [l.decode() for l in lines]
    ev = tap.event()
    assert ev["server_octets"] >= len(reply)
    hp.normal_session(tap, server=srv)


@pytest.mark.limit(90)
@pytest.mark.parametrize("held", ["421_reply", "greeting_upstream_starttls", "250_reply"])
def test_endless_server_reply_memory_bounded(tap_factory, fake_server, workdir, request, held):
    """A server that sends a multi-line reply that goes on and on (32 MiB of 1 KiB
    continuation lines, then its last line):
      421_reply: "421-..." in answer to MAIL (the proxy holds a 421 to answer every pending
      command with it);
      greeting_upstream_starttls: a "220-..." greeting while the proxy has a certificate and
      sets up the upstream leg first (--upstream-tls starttls, the default), holding the
      greeting until the client may see it;
      250_reply: "250-..." in answer to MAIL, which the proxy streams (the control case).
    A hostile or broken server must not be able to make the proxy hold an unbounded reply.

    proxy RSS: grows by less than 8 MiB (the bound for a client's endless line).  client: the
    reply (or a 421), then it goes on or is closed.  Then a normal session."""
    total = 32 * MIB  # enough to tell held from streamed; the transcript records it all
    code = {"421_reply": b"421", "greeting_upstream_starttls": b"220", "250_reply": b"250"}[held]
    line = code + b"-4.3.0 " + b"z" * 1012 + b"\r\n"
    block = line * 1024
    last = code + b" 4.3.0 fake.example last line\r\n"

    def endless(conn):
        try:
            for _ in range(total // len(block)):
                conn.sock.sendall(block)
            conn.sock.sendall(last)
        except OSError:
            pass

    def mail(conn, l):
        if len(conn.server.conns) > 1:
            return False  # later sessions: served normally
        endless(conn)
        if held == "421_reply":
            time.sleep(1)
            conn.close()
        return True

    def greeting(conn, l):
        if len(conn.server.conns) > 1:
            return False
        endless(conn)
        return True

    extra = []
    if held == "greeting_upstream_starttls":
        request.getfixturevalue("tls_context")  # writes crt.pem and key.pem into workdir
        extra = ["--tls-cert", os.path.join(workdir, "crt.pem"),
                 "--tls-key", os.path.join(workdir, "key.pem")]
        srv = fake_server(SmtpServerScript(hooks={"GREETING": greeting}))
    else:
        srv = fake_server(SmtpServerScript(hooks={"MAIL": mail}))
    tap = tap_factory(srv.port, *extra)
    time.sleep(0.2)
    with hp.RssSampler(tap.pid) as rss:
        c = SmtpClient(tap.port, timeout=60)
        if held == "greeting_upstream_starttls":
            r = c.reply()
        else:
            assert c.code() == 220
            c.expect("EHLO client.example", 250)
            c.send(b"MAIL FROM:<a@example.com>\r\n")
            r = c.reply()
    got = sum(len(x) for x in r)
    hp.figure("endless %s (%d MiB sent by the server): client got a %d-line reply of %d octets "
              "ending %r; %s" % (held, total // MIB, len(r), got, r[-1][:60] if r else None,
                                 rss.report("smtptap")))
    assert r and r[-1][:3] in (code, b"421"), r[-1:] if r else r
    if held == "421_reply":
        assert c.read_until_eof(5) == b""
    else:
        assert r[-1] == last and got == total + len(last), (len(r), got)
        c.expect("QUIT", 221)
    c.close()
    assert tap.alive()
    hp.normal_session(tap, server=srv)
    assert rss.growth < 8 * 1024, "the proxy held a server's endless %s in memory: %s" % (
        held, rss.report("smtptap"))


# --------------------------------------------------------------------------------------------
# Servers that stall, close, refuse


@pytest.mark.limit(30)
@pytest.mark.parametrize("verb", ["EHLO", "MAIL"])
def test_server_stalls_mid_reply(tap_factory, fake_server, verb):
    """The server sends "250-first line" and then nothing (it keeps the connection open);
    --idle-timeout 2.

    client: within 2-4 s a "421 4.4.2 ... Idle timeout" as the last line it gets, then the
    connection closes.  server: its connection closed by the proxy.  transcript: the S: first
    line, the idle-timeout event, the P: 421.  event: reason idle_timeout."""

    def stall(conn, line):
        if len(conn.server.conns) > 1:
            return False  # later sessions: served normally
        conn.send(b"250-first line\r\n")
        conn.stalled = conn.wait_eof(10)
        return True

    srv = fake_server(SmtpServerScript(hooks={verb: stall}))
    tap = tap_factory(srv.port, "--idle-timeout", "2")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    if verb == "MAIL":
        c.expect("EHLO client.example", 250)
    t0 = time.monotonic()
    c.send(b"EHLO client.example\r\n" if verb == "EHLO" else b"MAIL FROM:<a@example.com>\r\n")
    rest = c.read_until_eof(8)
    elapsed = time.monotonic() - t0
    lines = rest.split(b"\r\n")
    assert lines[-1] == b"", "partial line: %r" % rest
    assert lines[-2].startswith(b"421 4.4.2 ") and b"Idle timeout" in lines[-2], rest
    assert 1.5 <= elapsed <= 4.5, "ended after %.1f s" % elapsed
    if verb == "EHLO":
        # An EHLO reply is held whole for editing: the client sees one well-formed reply.
        assert rest.count(b"\r\n") == 1, rest
    conn = srv.wait_conn(0)
    harness.wait_until(lambda: getattr(conn, "stalled", None) is not None, 5,
                       what="the server's connection to close")
    assert conn.stalled, "the proxy left the stalled server's connection open"
    ev = tap.event()
    assert ev["reason"] == "idle_timeout"
    t = tap.transcript()
    assert "250-first line" in t.server_lines()
    assert any(p.startswith("421 4.4.2 ") for p in t.proxy_lines())
    assert any(e.startswith("idle timeout") for e in t.events()), hp.excerpt(t)
    hp.normal_session(tap, server=srv)


@pytest.mark.limit(30)
@pytest.mark.parametrize("when", ["during_content", "before_final_reply"])
def test_server_closes_mid_data(tap_factory, fake_server, when):
    """The server closes its connection after its 354: while the client is still sending
    content, or after the end of data, before its final reply.

    client: a 421 4.4.2 (upstream lost) and the connection closed; never a 250.  server:
    (before_final_reply) the whole message.  transcript: the content lines, P: 421.  event:
    the transaction with its recipients and code null, reason server_closed."""

    def data(conn, line):
        if len(conn.server.conns) > 1:
            return False
        conn.send("354 go ahead\r\n")
        if when == "during_content":
            conn.read_until(b"half way\r\n")
        else:
            conn.got = conn.read_until(b"\r\n.\r\n")
        conn.close()
        return True

    srv = fake_server(SmtpServerScript(hooks={"DATA": data}))
    tap = tap_factory(srv.port)
    c = greet_ehlo(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: cut\r\n\r\nhalf way\r\n")
    if when == "during_content":
        time.sleep(0.5)
        try:
            c.send(b"more content\r\n")
        except OSError:
            pass
        rest = c.read_until_eof(5)
    else:
        c.send(b"rest\r\n.\r\n")
        rest = c.read_until_eof(5)
    replies = replies_from(rest)
    assert replies and replies[-1][-1].startswith(b"421 4.4.2 "), rest
    assert not any(r[-1].startswith(b"250") for r in replies), rest
    if when == "before_final_reply":
        assert srv.conns[0].got.endswith(b"rest\r\n.\r\n")
    ev = tap.event()
    assert ev["reason"] == "server_closed"
    (tx,) = ev["transactions"]
    assert tx["rcpt"] == [{"to": "<b@example.net>", "code": 250, "text": "2.1.5 Ok"}]
    assert tx["code"] is None and tx["text"] is None, tx
    t = tap.transcript()
    assert "half way" in t.client_lines()
    assert any(p.startswith("421 4.4.2 ") for p in t.proxy_lines()), hp.excerpt(t)
    hp.normal_session(tap, server=srv)


@pytest.mark.limit(30)
@pytest.mark.parametrize("how", ["refused_then_up", "rst_before_greeting", "fin_before_greeting"])
def test_server_refuses_the_connection(tap_factory, fake_server, workdir, how):
    """refused_then_up: nothing listens upstream (smtp-sink not started yet): the client gets
    "421 4.4.1 ... Upstream unreachable", reason upstream_unreachable; once the sink is up,
    sessions go through (the proxy keeps no memory of the failure).
    rst_before_greeting / fin_before_greeting: the server accepts, then resets or closes
    before greeting: the client gets a 421 4.4.x and is closed, reason server_closed."""
    if how == "refused_then_up":
        s = harness.SmtpSink(workdir)
        tap = tap_factory(s.port)
        c = SmtpClient(tap.port)
        r = c.reply()
        assert len(r) == 1 and r[0].startswith(b"421 4.4.1 ") and b"Upstream unreachable" in r[0], r
        assert c.read_until_eof(5) == b""
        ev = tap.event()
        assert ev["reason"] == "upstream_unreachable" and ev["transactions"] == []
        t = tap.transcript()
        assert any(e.startswith("upstream failed") for e in t.events())
        s.start()
        try:
            hp.normal_session(tap, sink=s)
        finally:
            s.stop()
        return

    def greeting(conn, line):
        if len(conn.server.conns) > 1:
            return False
        if how == "rst_before_greeting":
            conn.abort()
        else:
            conn.close()
        return True

    srv = fake_server(SmtpServerScript(hooks={"GREETING": greeting}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    t0 = time.monotonic()
    rest = c.read_until_eof(5)
    assert time.monotonic() - t0 < 3
    replies = replies_from(rest)
    assert len(replies) == 1 and replies[0][0].startswith(b"421 4.4."), rest
    ev = tap.event()
    assert ev["reason"] == "server_closed", ev
    t = tap.transcript()
    assert any(p.startswith("421 4.4.") for p in t.proxy_lines())
    hp.normal_session(tap, server=srv)


# --------------------------------------------------------------------------------------------
# Clients that half-close


@pytest.mark.limit(30)
def test_half_close_with_command_pending(tap_factory, fake_server):
    """The client sends MAIL (no QUIT) and shuts its write side while the server takes 1 s
    to answer.

    client: the 250 all the same, then the connection closes.  server: MAIL, then its
    connection closed (no QUIT invented).  transcript: C: MAIL, S: 250.  event: the
    transaction with mail_code 250, reason client_closed."""

    def mail(conn, line):
        if len(conn.server.conns) > 1:
            return False  # later sessions: served normally
        time.sleep(1.0)
        conn.send("250 2.1.0 Ok, slowly\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"MAIL": mail}))
    tap = tap_factory(srv.port)
    c = greet_ehlo(tap.port)
    c.send(b"MAIL FROM:<a@example.com>\r\n")
    c.shutdown_write()
    assert c.read_until_eof(5) == b"250 2.1.0 Ok, slowly\r\n"
    srv.join()
    assert stripped(srv.conns[0].commands) == [b"EHLO client.example", b"MAIL FROM:<a@example.com>"]
    ev = tap.event()
    assert ev["reason"] == "client_closed"
    assert ev["transactions"][0]["mail_code"] == 250
    t = tap.transcript()
    assert "250 2.1.0 Ok, slowly" in t.server_lines()
    hp.normal_session(tap, server=srv)


@pytest.mark.limit(30)
@pytest.mark.parametrize("tail", [b"NOOP partial", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                         ids=["text", "tls-record"])
def test_unterminated_tail_at_client_close_is_recorded(tap_factory, fake_server, tail):
    """A client that sends a last line without its line end and then half-closes (a
    hand-typed command cut short, or the rest of a TLS ClientHello).

    client: nothing more, then the connection closes.  server: not the partial line (a
    server would discard it anyway).  transcript: the octets the client sent, recorded (the
    transcript is the record of what each side said, octet for octet).  event and close
    record: client_octets counts every octet received from the client."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    c = greet_ehlo(tap.port)
    c.send(tail)
    c.shutdown_write()
    assert c.read_until_eof(5) == b""
    ev = tap.event()
    assert ev["reason"] == "client_closed"
    srv.join()
    assert tail not in bytes(srv.conns[0].received)
    t = tap.transcript()
    hp.normal_session(tap, server=srv)
    # As a C: record or inside an event: either way the transcript must hold the octets.
    assert escape(tail) in t.text, ("the unterminated tail %r is not in the transcript:\n%s"
                                    % (tail, hp.excerpt(t)))
    assert ev["client_octets"] == len(c.sent), (
        "client_octets %d, but the client sent %d octets" % (ev["client_octets"], len(c.sent)))
    assert int(t.close_fields()["client_octets"]) == len(c.sent)


# --------------------------------------------------------------------------------------------
# Slow clients beyond --max-sessions; running out of descriptors


@pytest.mark.limit(60)
def test_slow_clients_beyond_max_sessions(tap_factory, sink):
    """--max-sessions 20; 25 clients, then 100 more connection attempts, while the 20 admitted
    ones each send "NOOP\\r\\n" one octet a second (6 s).

    admitted clients: the 220, then 250 to their NOOP.  the 5 + 100 others: "421 4.3.2
    <host> Too many connections" and closed.  server: 20 sessions.  transcripts/events: one
    per admitted session (the refused ones are logged: "refused client=... reason=max-sessions").
    proxy RSS: bounded (less than 8 MiB over the idle proxy)."""
    n = 20
    tap = tap_factory(sink.port, "--max-sessions", str(n))
    time.sleep(0.2)
    with hp.RssSampler(tap.pid, interval=0.05) as rss:
        admitted = []
        for _ in range(n):
            c = SmtpClient(tap.port)
            r = c.reply()
            assert r and r[-1].startswith(b"220 "), r
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            admitted.append(c)
        refused = 0
        for _ in range(5 + 100):
            x = SmtpClient(tap.port)
            r = x.reply()
            assert len(r) == 1 and r[0].startswith(b"421 4.3.2 ") and b"Too many connections" in r[0], r
            assert x.read_until_eof(3) == b""
            x.close()
            refused += 1
        for ch in b"NOOP\r\n":
            t_next = time.monotonic() + 1.0
            for c in admitted:
                c.sock.send(bytes([ch]))
            hp.sleep_until(t_next)
        for c in admitted:
            assert c.reply() == [b"250 2.0.0 Ok\r\n"]
    hp.figure("%d slow clients + %d refused beyond --max-sessions %d: %s" % (
        n, refused, n, rss.report("smtptap")))
    assert rss.growth < 8 * 1024, rss.report("smtptap")
    assert hp.stderr_count(tap, "reason=max-sessions") == refused
    for c in admitted:
        c.expect("QUIT", 221)
        c.close()
    evs = tap.wait_events(n)
    assert len(evs) == n and all(e["reason"] == "quit" for e in evs)
    assert len(tap.transcript_paths()) == n
    hp.normal_session(tap, sink=sink)


@pytest.mark.limit(60)
def test_descriptor_exhaustion_pauses_accepts(tap_factory, sink):
    """The proxy's RLIMIT_NOFILE is lowered to 64 once it runs (prlimit on its PID: started
    as root it would raise its own limit for --max-sessions), then 80 clients connect and
    stay.

    proxy: logs "pausing accepts" (EMFILE), does not spin (utime+stime over a 3 s window while
    the clients wait stays under 0.3 s) and does not die.  clients: those admitted get a 220
    or, when no descriptor was left for the upstream connection, a 421 4.4.1; the rest wait in
    the listen queue.  After they all go away: a normal session, recorded."""
    tap = tap_factory(sink.port)
    resource.prlimit(tap.pid, resource.RLIMIT_NOFILE, (64, 64))
    assert hp.nofile_limit(tap.pid) == (64, 64)
    base_fds = hp.fd_count(tap.pid)
    socks = hp.connect_many(tap.port, 80)
    # Let the proxy take what it can.
    time.sleep(1.5)
    first = []
    for s in socks:
        first.append(hp.recv_line(s, timeout=0.05))
    stderr = tap.stderr()
    assert "pausing accepts" in stderr, "no 'pausing accepts' in the proxy's log:\n" + stderr[-3000:]
    cpu0 = hp.cpu_seconds(tap.pid)
    pauses0 = tap.stderr().count("pausing accepts")
    t0 = time.monotonic()
    time.sleep(3)
    cpu = hp.cpu_seconds(tap.pid) - cpu0
    window = time.monotonic() - t0
    window_pauses = tap.stderr().count("pausing accepts") - pauses0
    greeted = sum(1 for l in first if l.startswith(b"220"))
    unreachable = sum(1 for l in first if l.startswith(b"421 4.4.1"))
    other = [l for l in first if l and not l.startswith((b"220", b"421 4.4.1"))]
    waiting = sum(1 for l in first if not l)
    pauses = tap.stderr().count("pausing accepts")
    hp.figure("descriptor exhaustion (RLIMIT_NOFILE 64, %d descriptors in use at start, %d while "
              "full): 80 clients -> %d greeted, %d got 421 4.4.1, %d waiting, other %r; "
              "%d 'pausing accepts' lines (%d in the window); proxy CPU %.3f s over a %.2f s window" % (
                  base_fds, hp.fd_count(tap.pid), greeted, unreachable, waiting, other[:3],
                  pauses, window_pauses, cpu, window))
    assert tap.alive(), "the proxy died when it ran out of descriptors"
    assert cpu < 0.3, "the proxy spins: %.3f s of CPU in %.2f s" % (cpu, window)
    # One pause of 500 ms after another: about 6 in the window, not a retry per event loop.
    assert 3 <= window_pauses <= 9, "%d 'pausing accepts' in %.2f s" % (window_pauses, window)
    assert greeted > 0 and waiting > 0
    assert not other, other
    for s in socks:
        s.close()
    # Every session ends; the queued connections are accepted, found closed, and end too:
    # one event line each.
    evs = tap.wait_events(len(socks), timeout=20)
    assert len(evs) == len(socks), "%d events for %d clients" % (len(evs), len(socks))
    harness.wait_until(lambda: hp.fd_count(tap.pid) <= base_fds + 1, 10,
                       what="the proxy's descriptors to come back")
    assert tap.alive()
    hp.normal_session(tap, sink=sink)
