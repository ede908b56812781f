"""Relaying: what a client sends reaches the server unchanged, and the replies come back in order."""

import hashlib
import os
import random
import smtplib
import socket
import subprocess
import threading
import time

import pytest

import harness
from harness import SmtpClient, SmtpServerScript, dot_stuff, unescape

# Message content with the lines a careless relay breaks (CRLF line ends, not yet dot-stuffed).
TRICKY = (b"From: a@example.com\r\n"
          b"To: b@example.net\r\n"
          b"Subject: byte identity\r\n"
          b"\r\n"
          b".hidden line starting with a dot\r\n"
          b"..\r\n"
          b".\r\n"
          b" .space then dot\r\n"
          b"8-bit: \xc3\xa9t\xc3\xa9 \xe2\x82\xac and not UTF-8: \xff\xfe\x80\r\n"
          b"nul:\x00:end\r\n"
          b"tab\there\r\n"
          b"back\\slash\r\n"
          b"\r\n"
          b"last line\r\n")


def client_lines_between(t, first, last):
    """C: record texts after the record `first` and before the next record `last`."""
    recs = t.client_lines()
    i = [r.upper() for r in recs].index(first.upper())
    j = recs.index(last, i + 1)
    return recs[i + 1:j]


@pytest.mark.limit(20)
def test_message_arrives_byte_identical_smtplib(tap, sink):
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.example")
    refused = s.sendmail("a@example.com", ["b@example.net", "c@example.net"], TRICKY)
    assert refused == {}
    s.quit()

    (m,) = sink.wait_messages(1)
    assert m.content == TRICKY.replace(b"\r\n", b"\n"), "content changed on the way"
    assert m.mail_from.startswith("<a@example.com>")
    assert m.rcpts == ["<b@example.net>", "<c@example.net>"]

    t = tap.transcript()
    wire = dot_stuff(TRICKY)
    body_records = client_lines_between(t, "DATA", ".")
    assert [unescape(x) for x in body_records] == wire.split(b"\r\n")[:-1], \
        "transcript does not hold the message lines as they crossed the wire"
    assert "..hidden line starting with a dot" in body_records
    assert "nul:\\x00:end" in body_records

    ev = tap.event()
    (tx,) = ev["transactions"]
    assert tx["size"] == len(wire)
    assert tx["code"] == 250
    assert [r["code"] for r in tx["rcpt"]] == [250, 250]


def open_data(port, mail="a@example.com"):
    """Greeting, EHLO, MAIL, RCPT, DATA through the proxy; returns the client, at its 354."""
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<%s>" % mail, 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    return c


def send_message(port, content, mail="a@example.com"):
    """EHLO, MAIL, RCPT, DATA, content + '.', QUIT through the proxy; returns the final reply."""
    c = open_data(port, mail)
    c.send(content + b".\r\n")
    r = c.reply()
    c.expect("QUIT", 221)
    return r


@pytest.mark.limit(20)
def test_data_stream_octets_unchanged_raw(tap_factory, fake_server):
    """Every octet of DATA reaches the server as sent: NUL, invalid UTF-8, a 5000-octet line,
    lines that look like commands, stuffed dots."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    content = (b"Subject: raw\r\n\r\n"
               b"MAIL FROM:<looks-like-a-command@example.org>\r\n"
               b"QUIT\r\n"
               + b"L" * 5000 + b"\r\n"
               b"nul\x00 \xff\xfe\xc0\xaf \xc3\xa9\r\n"
               b"..stuffed\r\n"
               b"...\r\n"
               b"trailing spaces   \r\n")
    r = send_message(tap.port, content)
    assert r == [b"250 2.0.0 Ok: queued as FAKE1\r\n"]
    srv.join()
    srv.check()
    conn = srv.conns[0]
    assert len(conn.messages) == 1
    assert conn.messages[0]["data"] == content + b".\r\n", "DATA octets changed on the way"
    assert [x.rstrip(b"\r\n") for x in conn.commands] == [
        b"EHLO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>",
        b"DATA", b"QUIT"]
    ev = tap.event()
    assert len(ev["transactions"]) == 1
    assert ev["transactions"][0]["size"] == len(content)
    assert ev["reason"] == "quit"


def content_units(data):
    """The lines the proxy sees in DATA content by default (--bare-newline normalize): a unit
    ends at LF, or at a CR that no LF follows."""
    units, start = [], 0
    for i, b in enumerate(data):
        if b == 0x0A or (b == 0x0D and data[i + 1:i + 2] != b"\n"):
            units.append(data[start:i + 1])
            start = i + 1
    return units


@pytest.mark.limit(20)
def test_message_in_one_write_recorded_line_by_line_in_order(tap_factory, fake_server):
    """A whole message and the commands after it in one write: ordinary lines (taken a run
    at a time) and lines that need care (bare LF and CR, stuffed dots, NUL, 8-bit, a blank
    line) each get their record, in the order sent, and the server gets the content whole."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    content = (b"Subject: runs\r\nX-One: 1\r\n\r\n" + b"plain\r\n" * 5 +
               b"bare LF\nplain after\r\n..stuffed\r\nmid\rCR\r\n"
               b"nul\x00 \xff\xc3\xa9\r\n\r\n" +
               b"".join(b"line %03d\r\n" % i for i in range(200)))
    c = open_data(tap.port)
    c.send(content + b".\r\nNOOP\r\nQUIT\r\n")
    assert c.code() == 250
    assert c.code() == 250
    assert c.code() == 221
    srv.join()
    (msg,) = srv.conns[0].messages
    assert msg["data"] == content.replace(b"bare LF\n", b"bare LF\r\n").replace(
        b"mid\rCR", b"mid\r\nCR") + b".\r\n"
    want = [harness.escape(u[:-2] if u.endswith(b"\r\n") else u) for u in content_units(content)]
    got = tap.transcript().client_lines()
    i = got.index("DATA") + 1
    assert got[i:i + len(want)] == want
    assert got[i + len(want):] == [".", "NOOP", "QUIT"]
    assert tap.event()["transactions"][0]["size"] == len(content)


# Bare line ends hiding an end of data and a second transaction (SMTP smuggling).
SMUGGLE = (b"Subject: smuggling\r\n\r\n"
           b"bare\nLF and bare\rCR\r\n"
           b"not an end\n.\nMAIL FROM:<smuggled@evil.example>\r\n"
           b"nor this\r.\rRCPT TO:<x@evil.example>\r\n"
           b"nor this\r\n.\nDATA\r\n"
           b"end\r\n")


@pytest.mark.limit(20)
def test_bare_newline_pass_relays_octets_unchanged(tap_factory, fake_server):
    """--bare-newline pass: octets unchanged, and a bare-LF dot still doesn't end the data
    (the proxy counts one transaction)."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--bare-newline", "pass")
    assert send_message(tap.port, SMUGGLE)[0].startswith(b"250 ")
    srv.join()
    assert srv.conns[0].messages[0]["data"] == SMUGGLE + b".\r\n"
    ev = tap.event()
    assert len(ev["transactions"]) == 1, "a bare line end was taken for the end of data"
    assert ev["transactions"][0]["size"] == len(SMUGGLE)
    t = tap.transcript()
    recs = t.client_lines()
    assert "bare\\x0a" in recs and "not an end\\x0a" in recs


@pytest.mark.limit(20)
def test_bare_newline_default_normalizes(tap_factory, fake_server):
    """By default (normalize, as Postfix 3.9) bare CR and LF go upstream as CRLF and a lone
    '.' after them is stuffed: the server sees one message and no early end of data."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    assert send_message(tap.port, SMUGGLE)[0].startswith(b"250 ")
    srv.join()
    conn = srv.conns[0]
    assert len(conn.messages) == 1
    data = conn.messages[0]["data"]
    assert data.count(b"\r\n.\r\n") == 1 and data.endswith(b"\r\n.\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert data == (b"Subject: smuggling\r\n\r\nbare\r\nLF and bare\r\nCR\r\n"
                    b"not an end\r\n..\r\nMAIL FROM:<smuggled@evil.example>\r\n"
                    b"nor this\r\n..\r\nRCPT TO:<x@evil.example>\r\n"
                    b"nor this\r\n..\r\nDATA\r\nend\r\n.\r\n")
    assert [x.rstrip(b"\r\n") for x in conn.commands][-1] == b"QUIT"
    ev = tap.event()
    assert len(ev["transactions"]) == 1
    assert ev["warnings"] >= 1
    t = tap.transcript()
    assert "bare\\x0a" in t.client_lines(), "the transcript must show what the client sent"


@pytest.mark.limit(20)
def test_bare_newline_reject_delivers_nothing(tap, sink):
    tap.stop()
    tap.extra += ["--bare-newline", "reject"]
    tap.start()
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: x\r\n\r\nbare\nline\r\n.\r\n")
    r = c.reply()
    assert r and r[0].startswith(b"550 5.5.2"), r
    c.read_until_eof(5)
    time.sleep(0.3)
    assert sink.count() == 0


@pytest.mark.limit(20)
def test_empty_message_ends_at_first_dot(tap, sink):
    """'.' right after the 354 ends the message (the DATA line's CRLF opens it)."""
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("HELO client.example", 250)
    c.transaction("<a@example.com>", ["<b@example.net>"], b"")
    c.expect("QUIT", 221)
    ev = tap.event()
    assert ev["transactions"][0]["size"] == 0
    assert ev["transactions"][0]["code"] == 250


@pytest.mark.limit(60)
def test_ten_megabyte_message(tap, sink):
    rnd = random.Random(42)
    lines = [b"Subject: big\r\n", b"\r\n"]
    size = 0
    alphabet = bytes(range(0x21, 0x7F))
    while size < 10 * 1024 * 1024:
        n = rnd.randrange(0, 200)
        line = bytes(rnd.choice(alphabet) for _ in range(8)) * (n // 8 + 1)
        if rnd.random() < 0.05:
            line = b"." + line
        line = line[:n] + b"\r\n"
        lines.append(line)
        size += len(line)
    content = b"".join(lines)
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=30)
    s.ehlo("client.example")
    assert s.sendmail("a@example.com", ["b@example.net"], content) == {}
    s.quit()
    (m,) = sink.wait_messages(1, timeout=10)
    expected = content.replace(b"\r\n", b"\n")
    assert len(m.content) == len(expected)
    assert hashlib.sha256(m.content).hexdigest() == hashlib.sha256(expected).hexdigest()
    ev = tap.event(timeout=10)
    assert ev["transactions"][0]["size"] == len(dot_stuff(content))
    assert ev["transactions"][0]["code"] == 250


@pytest.mark.limit(20)
def test_pipelined_mail_rcpt_rcpt_data_in_one_write(tap, sink):
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert b"250-PIPELINING\r\n" in r
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
           b"RCPT TO:<c@example.net>\r\nDATA\r\n")
    replies = [c.reply() for _ in range(4)]
    assert [r[-1][:4] for r in replies] == [b"250 ", b"250 ", b"250 ", b"354 "], replies
    assert replies[0] == [b"250 2.1.0 Ok\r\n"]
    assert replies[1] == replies[2] == [b"250 2.1.5 Ok\r\n"]
    # The end of data and the next command in one write too.
    c.send(b"Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    assert c.reply() == [b"250 2.0.0 Ok\r\n"]
    assert c.reply() == [b"221 Bye\r\n"]
    assert c.read_until_eof(5) == b""
    (m,) = sink.wait_messages(1)
    assert m.rcpts == ["<b@example.net>", "<c@example.net>"]
    assert m.content == b"Subject: pipelined\n\nhello\n"
    ev = tap.event()
    (tx,) = ev["transactions"]
    assert tx["mail_from"] == "<a@example.com>"
    assert [(r["to"], r["code"]) for r in tx["rcpt"]] == [("<b@example.net>", 250), ("<c@example.net>", 250)]
    assert ev["reason"] == "quit"


@pytest.mark.limit(20)
def test_pipelined_replies_matched_to_their_commands(tap_factory, fake_server):
    """The second RCPT is refused: the event gives each RCPT its own reply code."""
    srv = fake_server(SmtpServerScript(rcpt_code=lambda a: 550 if "nobody" in a else 250))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
           b"RCPT TO:<nobody@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
    codes = [int(c.reply()[-1][:3]) for _ in range(5)]
    assert codes == [250, 250, 550, 250, 354]
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert c.code() == 250
    assert c.code() == 221
    ev = tap.event()
    (tx,) = ev["transactions"]
    assert tx["mail_code"] == 250
    assert [(r["to"], r["code"]) for r in tx["rcpt"]] == [
        ("<b@example.net>", 250), ("<nobody@example.net>", 550), ("<c@example.net>", 250)]
    assert tx["code"] == 250
    assert tx["text"] == "2.0.0 Ok: queued as FAKE1"


IDENTITY_KEYWORDS = (b"XCLIENT", b"XFORWARD")


def without_identity_caps(reply):
    """An EHLO reply as smtptap passes it on: XCLIENT and XFORWARD removed (they would let a
    client claim another identity), the new last line turned into 'NNN '."""
    kept = [l for l in reply if l[4:].split(b" ")[0].rstrip(b"\r\n").upper() not in IDENTITY_KEYWORDS]
    return [l[:3] + b"-" + l[4:] for l in kept[:-1]] + [kept[-1][:3] + b" " + kept[-1][4:]]


@pytest.mark.limit(20)
def test_multiline_ehlo_reply_intact(tap, sink):
    direct = SmtpClient(sink.port)
    greeting_direct = direct.reply()
    ehlo_direct = direct.cmd("EHLO client.example")
    direct.cmd("QUIT")
    via = SmtpClient(tap.port)
    assert via.reply() == greeting_direct
    ehlo_via = via.cmd("EHLO client.example")
    via.cmd("QUIT")
    assert ehlo_via == without_identity_caps(ehlo_direct)
    assert len(ehlo_via) > 5 and ehlo_via[-1] == b"250 \r\n"
    t = tap.transcript()
    server = t.server_lines()
    start = server.index(ehlo_direct[0].rstrip(b"\r\n").decode())
    assert server[start:start + len(ehlo_direct)] == [l.rstrip(b"\r\n").decode() for l in ehlo_direct]


@pytest.mark.limit(20)
def test_ehlo_edit_of_last_line_keeps_reply_well_formed(tap_factory, fake_server):
    """When the removed capability is the reply's last line, the line before becomes the last
    ('250 '): a reply is never left open or empty (pitfall 2)."""
    reply = b"250-fake.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 XFORWARD NAME ADDR\r\n"

    def ehlo(conn, line):
        conn.send(reply)
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    assert c.cmd("EHLO client.example") == [b"250-fake.example\r\n", b"250-PIPELINING\r\n",
                                            b"250 8BITMIME\r\n"]
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)


@pytest.mark.limit(20)
def test_client_xclient_never_reaches_server(tap_factory, fake_server):
    """A client's own XCLIENT/XFORWARD would let it claim another address (pitfall 10)."""
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "XCLIENT NAME ADDR", "XFORWARD ADDR")))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    for cmd in ("XCLIENT ADDR=192.0.2.66 NAME=spoofed.example", "XFORWARD ADDR=192.0.2.66"):
        r = c.cmd(cmd)
        assert r and r[-1][:1] == b"5", "%s: %r" % (cmd, r)
    c.expect("QUIT", 221)
    srv.join()
    assert b"192.0.2.66" not in srv.conns[0].received


@pytest.mark.limit(20)
def test_reply_split_across_writes_arrives_intact(tap_factory, fake_server):
    """A server that stalls mid-line and mid-reply: the client gets the reply whole and the
    transcript records each line once."""
    caps = [b"250-fake.example", b"250-PIPELINING", b"250-X-LONG " + b"x" * 3000, b"250-8BITMIME",
            b"250 ENHANCEDSTATUSCODES"]
    reply = b"".join(l + b"\r\n" for l in caps)

    def ehlo(conn, line):
        conn.send(reply[:20])
        time.sleep(0.6)
        conn.send(reply[20:40])
        time.sleep(0.6)
        conn.send(reply[40:-3])
        time.sleep(0.6)
        conn.send(reply[-3:])
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    assert c.cmd("EHLO client.example") == [l + b"\r\n" for l in caps]
    c.expect("QUIT", 221)
    t = tap.transcript()
    s_lines = t.server_lines()
    for l in caps:
        assert s_lines.count(l.decode()) == 1, "%r not recorded once, whole: %r" % (l[:30], s_lines)


@pytest.mark.limit(30)
def test_session_typed_by_hand_one_char_at_a_time(tap, sink):
    """As a person with telnet types it: every character its own segment."""
    c = SmtpClient(tap.port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def type_line(line):
        for ch in (line + "\r\n").encode():
            c.sock.send(bytes([ch]))
            time.sleep(0.003)

    assert c.code() == 220
    type_line("HELO me.example")
    assert c.code() == 250
    type_line("MAIL FROM:<a@example.com>")
    assert c.code() == 250
    type_line("RCPT TO:<b@example.net>")
    assert c.code() == 250
    type_line("DATA")
    assert c.code() == 354
    body = ["Subject: typed", "", "Hello, typed by hand.", ".."]
    for l in body:
        type_line(l)
    type_line(".")
    assert c.code() == 250
    type_line("QUIT")
    assert c.code() == 221

    (m,) = sink.wait_messages(1)
    assert m.content == b"Subject: typed\n\nHello, typed by hand.\n.\n"
    t = tap.transcript()
    assert t.client_lines() == ["HELO me.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>",
                                "DATA"] + body + [".", "QUIT"]
    assert not t.texts("C+"), "a typed line was recorded in pieces"
    ev = tap.event()
    assert ev["helo"] == "me.example"
    assert ev["transactions"][0]["code"] == 250
    assert ev["reason"] == "quit"


@pytest.mark.limit(30)
def test_curl_as_client(tap, sink, workdir):
    path = os.path.join(workdir, "mail.txt")
    content = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: curl\r\n\r\nSent by curl.\r\n.dot line\r\n"
    with open(path, "wb") as f:
        f.write(content)
    r = subprocess.run(["curl", "-sS", "--max-time", "15", "smtp://127.0.0.1:%d/client.example" % tap.port,
                        "--mail-from", "a@example.com", "--mail-rcpt", "b@example.net", "-T", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert r.returncode == 0, r.stderr.decode()
    (m,) = sink.wait_messages(1)
    assert m.content == content.replace(b"\r\n", b"\n")
    ev = tap.event()
    assert ev["helo"] == "client.example"
    assert ev["transactions"][0]["code"] == 250
    assert ev["reason"] == "quit"


@pytest.mark.limit(20)
def test_long_command_line_rejected_and_not_forwarded(tap_factory, fake_server):
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--max-line", "1024")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    long_line = b"MAIL FROM:<" + b"a" * 2000 + b"@example.com>"
    r = c.cmd(long_line)
    assert len(r) == 1 and r[0].startswith(b"500 5.5.2 "), r
    assert b"Line too long" in r[0]
    # The session goes on: the next commands work.
    c.expect("NOOP", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("QUIT", 221)
    srv.join()
    conn = srv.conns[0]
    assert b"a" * 100 not in conn.received, "the over-long line reached the server"
    assert [x.rstrip(b"\r\n") for x in conn.commands] == [
        b"EHLO client.example", b"NOOP", b"MAIL FROM:<a@example.com>", b"QUIT"]
    t = tap.transcript()
    assert any(p.startswith("500 5.5.2") for p in t.proxy_lines())


@pytest.mark.limit(20)
def test_2000_octet_rcpt_line_relayed(tap_factory, fake_server):
    """Longer than RFC 5321's 512 but under --max-line: relayed whole, not cut or refused."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    addr = "<" + "r" * 1980 + "@example.net>"
    line = "RCPT TO:" + addr
    assert len(line) >= 2000
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect(line, 250)
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].commands[2] == line.encode() + b"\r\n"
    ev = tap.event()
    assert ev["transactions"][0]["rcpt"] == [{"to": addr, "code": 250, "text": "2.1.5 Ok"}]


@pytest.mark.limit(20)
def test_message_line_longer_than_max_line_relayed_in_pieces(tap_factory, fake_server):
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--max-line", "1024")
    long_line = bytes((0x41 + i % 26) for i in range(5000))
    content = b"Subject: long\r\n\r\n" + long_line + b"\r\nafter\r\n"
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.transaction("<a@example.com>", ["<b@example.net>"], content)
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].messages[0]["data"] == content + b".\r\n"
    t = tap.transcript()
    # The long line: a "C:" record, then "C+" records, that together hold it.
    recs = [r for r in t.records if r.kind in ("C:", "C+")]
    i = next(k for k, r in enumerate(recs) if r.kind == "C:" and long_line[:100].decode() in r.text)
    pieces = [recs[i].text]
    for r in recs[i + 1:]:
        if r.kind != "C+":
            break
        pieces.append(r.text)
    assert len(pieces) >= 2, "a line over --max-line was not recorded in pieces"
    assert "".join(pieces) == long_line.decode()
    assert "after" in t.client_lines()
    assert srv.conns[0].messages[0]["data"].count(b"\r\n") == content.count(b"\r\n") + 1


# The default --max-line: a line of MAX_LINE - 1 octets has its CR last in the first piece and
# its LF first in the next.
MAX_LINE = 65536


@pytest.mark.limit(30)
@pytest.mark.parametrize("mode", ["normalize", "reject", "pass", "held"])
def test_crlf_across_max_line_pieces_is_one_line_end(tap_factory, fake_server, workdir, mode):
    """A CR that ends one --max-line piece and the LF that starts the next are one CRLF: the
    message arrives intact and its end of data is seen (by default the server used to get
    "...X\\r\\r\\n..\\r\\n" and the session hung until the idle timeout).  "held": a body
    rule makes the proxy hold the message."""
    srv = fake_server(SmtpServerScript())
    extra = [] if mode == "normalize" else ["--bare-newline", mode]
    if mode == "held":
        path = os.path.join(workdir, "held.rules")
        with open(path, "w") as f:
            f.write("body /never-in-this-message/ REJECT\n")
        extra = ["--rules", path]
    tap = tap_factory(srv.port, *extra)
    line = bytes((0x41 + i % 26) for i in range(MAX_LINE - 1))
    content = b"Subject: cut\r\n\r\n" + line + b"\r\nafter\r\n"
    c = open_data(tap.port)
    c.send(content + b".\r\n")
    r = c.reply()
    assert r and r[-1].startswith(b"250 "), r
    c.expect("QUIT", 221)
    srv.join()
    (msg,) = srv.conns[0].messages
    assert msg["data"] == content + b".\r\n"
    t = tap.transcript()
    assert not any("\\x0d" in x or "\\x0a" in x for x in t.texts("C:") + t.texts("C+"))
    assert not [e for e in t.events() if "bare CR or LF" in e], t.events()
    recs = [r for r in t.records if r.kind in ("C:", "C+")]
    i = next(k for k, r in enumerate(recs) if r.kind == "C:" and r.text.startswith("ABCDEF"))
    assert "".join(r.text for r in recs[i:i + 2]) == line.decode()
    assert recs[i + 1].kind == "C+" and recs[i + 2].text == "after"
    assert tap.event()["transactions"][0]["size"] == len(content)


@pytest.mark.limit(30)
def test_crlf_across_pieces_keeps_track_of_the_end_under_pass(tap_factory, fake_server):
    """--bare-newline pass: after a line whose CRLF spans two --max-line pieces, the end of
    data is still the end, so a pipelined XCLIENT is a command (refused), never content."""
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "XCLIENT ADDR NAME")))
    tap = tap_factory(srv.port, "--bare-newline", "pass")
    line = b"y" * (MAX_LINE - 1)
    content = b"Subject: cut\r\n\r\n" + line + b"\r\n"
    c = open_data(tap.port)
    c.send(content + b".\r\nXCLIENT ADDR=192.0.2.1\r\nNOOP\r\n")
    codes = [c.code() for _ in range(3)]
    assert codes == [250, 550, 250], codes
    c.expect("QUIT", 221)
    srv.join()
    conn = srv.conns[0]
    assert conn.messages[0]["data"] == content + b".\r\n"
    cmds = [x.rstrip(b"\r\n") for x in conn.commands]
    assert not [x for x in cmds if x.upper().startswith(b"XCLIENT")], cmds
    assert cmds[-2:] == [b"NOOP", b"QUIT"]
    assert len(tap.event()["transactions"]) == 1


@pytest.mark.limit(20)
def test_crlf_across_reads_is_one_line_end(tap_factory, fake_server):
    """A CR at the end of one read and its LF at the start of the next are one CRLF."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port)
    c = open_data(tap.port)
    for part in (b"Subject: reads\r\n\r\nfirst\r", b"\n.\r", b"\n"):
        c.send(part)
        time.sleep(0.2)
    r = c.reply()
    assert r and r[-1].startswith(b"250 "), r
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].messages[0]["data"] == b"Subject: reads\r\n\r\nfirst\r\n.\r\n"
    t = tap.transcript()
    got = t.client_lines()
    assert got[got.index("DATA") + 1:] == ["Subject: reads", "", "first", ".", "QUIT"]
    assert not [e for e in t.events() if "bare CR or LF" in e], t.events()


@pytest.mark.limit(20)
def test_server_line_longer_than_max_line_relayed(tap_factory, fake_server):
    long_cap = b"250-X-" + b"y" * 4000
    srv = fake_server(SmtpServerScript(caps=(long_cap[4:].decode(), "PIPELINING")))
    tap = tap_factory(srv.port, "--max-line", "1024")
    c = SmtpClient(tap.port)
    c.reply()
    r = c.cmd("EHLO client.example")
    assert long_cap + b"\r\n" in r
    c.expect("QUIT", 221)
    t = tap.transcript()
    assert t.texts("S+"), "a server line over --max-line was not recorded in pieces"


@pytest.mark.limit(20)
def test_early_talker_held_until_greeting(tap_factory, fake_server):
    seen = {}

    def greeting(conn, line):
        seen["pending_at_greeting"] = conn.pending()
        conn.send("220 fake.example ESMTP slow\r\n")
        return True

    srv = fake_server(SmtpServerScript(greeting_delay=1.0, hooks={"GREETING": greeting}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.send("EHLO early.example\r\n")  # before the greeting
    assert c.reply() == [b"220 fake.example ESMTP slow\r\n"]
    r = c.reply()
    assert r and r[-1].startswith(b"250 "), r
    c.expect("QUIT", 221)
    srv.join()
    assert seen["pending_at_greeting"] == 0, "the early line reached the server before its greeting"
    assert srv.conns[0].commands[0] == b"EHLO early.example\r\n"
    ev = tap.event()
    assert ev["early_talker"] is True
    assert ev["warnings"] >= 1
    t = tap.transcript()
    assert any(e.startswith("warning early talker") for e in t.events())


@pytest.mark.limit(30)
def test_backpressure_bounds_memory(tap_factory, fake_server):
    """A server that stops reading mid-DATA: the proxy stops reading the client instead of
    buffering the message (watermarks)."""
    size = 48 * 1024 * 1024

    def data(conn, line):
        conn.send("354 go ahead\r\n")
        time.sleep(3)  # not reading
        got = conn.read_until(b"\r\n.\r\n")
        conn.got = len(got)
        conn.send("250 2.0.0 Ok\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"DATA": data}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port, timeout=30)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    time.sleep(0.2)
    base = harness.rss_kib(tap.pid)
    c.send("DATA\r\n")
    assert c.code() == 354
    line = b"z" * 998 + b"\r\n"
    chunk = line * 1024
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], harness.rss_kib(tap.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        for _ in range(size // len(chunk)):
            c.send(chunk)
        c.send(b".\r\n")
        assert c.code() == 250
    finally:
        done.set()
        th.join()
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].got == (size // len(chunk)) * len(chunk) + 3
    growth = peak[0] - base
    assert growth < 16 * 1024, "proxy RSS grew by %d KiB while the server did not read" % growth


@pytest.mark.limit(20)
def test_listen_ipv6_and_two_listeners(tap_factory, sink):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    p6 = harness.free_port()
    p4 = harness.free_port()
    tap = tap_factory(sink.port, listen=["[::1]:%d" % p6, "127.0.0.1:%d" % p4], start=False)
    tap.port = p4
    tap.start()
    for host, port, fam in (("::1", p6, socket.AF_INET6), ("127.0.0.1", p4, socket.AF_INET)):
        c = SmtpClient(port, host=host, family=fam)
        assert c.code() == 220
        c.expect("HELO client.example", 250)
        c.expect("QUIT", 221)
    evs = tap.wait_events(2)
    listeners = sorted(e["listener"] for e in evs)
    assert listeners == sorted(["[::1]:%d" % p6, "127.0.0.1:%d" % p4])
    assert all(e["reason"] == "quit" for e in evs)


@pytest.mark.limit(20)
def test_upstream_given_by_name(tap_factory, sink):
    """--upstream localhost:PORT: the name is resolved (evdns reads /etc/hosts)."""
    tap = tap_factory(sink.port, upstream="localhost:%d" % sink.port)
    c = SmtpClient(tap.port)
    r = c.reply()
    assert r == [b"220 smtp-sink ESMTP\r\n"], r
    c.expect("QUIT", 221)
    ev = tap.event()
    assert ev["upstream"] == "localhost:%d" % sink.port
    assert ev["upstream_address"] == "127.0.0.1:%d" % sink.port


@pytest.mark.limit(30)
def test_starttls_passthrough(tap_factory, fake_server, tls_context):
    """Without a certificate the proxy relays STARTTLS and then bytes: a real TLS session
    goes through it end to end, and nothing after the handshake is recorded as lines."""
    import ssl
    srv = fake_server(SmtpServerScript(starttls=tls_context))
    tap = tap_factory(srv.port)
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.example")
    assert s.has_extn("starttls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    code, _ = s.starttls(context=ctx)
    assert code == 220
    s.ehlo("client.example")
    assert s.sendmail("secret-sender@example.com", ["b@example.net"], b"Subject: tls\r\n\r\nhidden\r\n") == {}
    s.quit()
    srv.join()
    assert srv.conns[0].messages[0]["mail"].upper() == b"MAIL FROM:<SECRET-SENDER@EXAMPLE.COM>"
    t = tap.transcript()
    assert "STARTTLS" in t.client_lines()
    assert any(e.startswith("starttls passthrough") for e in t.events())
    assert "secret-sender" not in t.text
    ev = tap.event()
    assert ev["tls"]["mode"] == "passthrough"
    assert ev["tls"]["client_octets"] > 0 and ev["tls"]["server_octets"] > 0
    # The transcript's close record carries the same counts.
    close = [e for e in t.events() if e.startswith("close ")][-1]
    assert "tls_client_octets=%d" % ev["tls"]["client_octets"] in close, close
    assert "tls_server_octets=%d" % ev["tls"]["server_octets"] in close, close
