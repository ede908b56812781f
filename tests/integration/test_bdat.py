"""BDAT (RFC 3030): a chunk is exactly N octets, relayed raw, never parsed as lines.

A real Postfix smtpd offers CHUNKING (smtp-sink does not); it hands each message to an
smtp-sink whose dump shows what arrived.  The scripted server checks the exact octets.
"""

import os
import subprocess
import time

import pytest

from harness import SmtpClient, SmtpServerScript

# Content that would mean something if it were parsed as lines: an end-of-data sequence,
# commands, a dot line.  With CRLF line ends (Postfix reads BDAT content as lines).
CHUNK1 = (b"Subject: bdat through smtptap\r\n"
          b"\r\n"
          b".hidden\r\n"
          b"..\r\n"
          b".\r\n"
          b"QUIT\r\n"
          b"RSET\r\n"
          b"MAIL FROM:<smuggled@evil.example>\r\n")
CHUNK2 = (b"nul\x00 and 8-bit \xc3\xa9 \xff\r\n"
          b"BDAT 5 LAST\r\n"
          b"last line\r\n")


@pytest.mark.limit(40)
def test_bdat_session_relayed_to_postfix(tap_factory, postfix):
    pf, psink = postfix
    tap = tap_factory(pf.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert b"250-CHUNKING\r\n" in r or b"250 CHUNKING\r\n" in r, "CHUNKING not relayed: %r" % r
    # Pipelined, as RFC 3030 allows: MAIL, RCPT and both chunks in one write.
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
           b"BDAT %d\r\n" % len(CHUNK1) + CHUNK1 +
           b"BDAT %d LAST\r\n" % len(CHUNK2) + CHUNK2)
    replies = [c.reply() for _ in range(4)]
    assert [x[-1][:3] for x in replies] == [b"250"] * 4, replies
    c.expect("NOOP", 250)  # the chunks' "QUIT" did not end anything
    c.expect("QUIT", 221)

    (m,) = psink.wait_messages(1, timeout=10)
    assert m.mail_from.startswith("<a@example.com>")
    assert m.rcpts[0].startswith("<b@example.net>")
    # Postfix puts its own Received: header first.
    expected = (CHUNK1 + CHUNK2).replace(b"\r\n", b"\n")
    assert m.content.startswith(b"Received: ")
    assert m.content.endswith(expected), m.content[-400:]

    t = tap.transcript()
    bdat = [e for e in t.events() if e.startswith("bdat chunk")]
    assert bdat == ["bdat chunk octets=%d last=no" % len(CHUNK1),
                    "bdat chunk octets=%d last=yes" % len(CHUNK2)], t.events()
    assert "smuggled@evil.example" in t.text, "chunk content not recorded under --record body"
    cmds = t.client_lines()
    assert "BDAT %d" % len(CHUNK1) in cmds and "BDAT %d LAST" % len(CHUNK2) in cmds
    ev = tap.event()
    (tx,) = ev["transactions"]
    assert tx["mail_from"] == "<a@example.com>"
    assert tx["size"] == len(CHUNK1) + len(CHUNK2)
    assert tx["code"] == 250
    assert ev["reason"] == "quit"


@pytest.mark.limit(30)
def test_bdat_octets_exact_with_scripted_server(tap_factory, fake_server):
    """Chunk boundaries inside a CRLF, bare LF and CR, '\\r\\n.\\r\\n', a 1 MiB chunk, BDAT 0 LAST:
    the server receives exactly the chunks sent."""
    srv = fake_server(SmtpServerScript(chunking=True))
    tap = tap_factory(srv.port)
    big = bytes(range(256)) * 4096
    chunks = [b"Subject: x\r", b"\n\r\n.\r\nbare\nLF bare\rCR\r\n.\r\n", big, b""]
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    for i, ch in enumerate(chunks):
        last = i == len(chunks) - 1
        c.send(b"BDAT %d%s\r\n" % (len(ch), b" LAST" if last else b"") + ch)
        r = c.reply()
        assert r and r[-1].startswith(b"250 "), r
    c.expect("QUIT", 221)
    srv.join()
    srv.check()
    (msg,) = srv.conns[0].messages
    assert msg["chunks"] == chunks
    assert [x.rstrip(b"\r\n") for x in srv.conns[0].commands] == [
        b"EHLO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>",
        b"BDAT 11", b"BDAT %d" % len(chunks[1]), b"BDAT %d" % len(big), b"BDAT 0 LAST", b"QUIT"]
    ev = tap.event()
    assert ev["transactions"][0]["size"] == sum(len(x) for x in chunks)
    assert ev["transactions"][0]["code"] == 250
    t = tap.transcript()
    assert len([e for e in t.events() if e.startswith("bdat chunk")]) == 4


@pytest.mark.limit(20)
def test_bdat_chunk_after_refused_command_still_relayed_raw(tap_factory, fake_server):
    """The server refuses MAIL; the pipelined BDAT's chunk must still be relayed as octets (the
    server reads and discards it), never read by the proxy as commands."""
    def mail(conn, line):
        conn.send("550 5.7.1 Sender refused\r\n")
        return True

    srv = fake_server(SmtpServerScript(chunking=True, hooks={"MAIL": mail}))
    tap = tap_factory(srv.port)
    chunk = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.org>\r\n"
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT %d LAST\r\n" % len(chunk) + chunk)
    codes = [int(c.reply()[-1][:3]) for _ in range(3)]
    assert codes[0] == 550 and codes[2] == 503, codes
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert b"MAIL FROM:<evil@example.org>" not in cmds
    assert cmds[-1] == b"QUIT"
    ev = tap.event()
    assert all("evil" not in (tx.get("mail_from") or "") for tx in ev["transactions"])
    assert ev["reason"] == "quit"


def write_rules(workdir, text):
    path = os.path.join(workdir, "bdat.rules")
    with open(path, "w") as f:
        f.write(text)
    return path


# A transaction hidden in a "chunk": commands to a server that offers no CHUNKING.
HIDDEN = (b"MAIL FROM:<evil@example.org>\r\n"
          b"RCPT TO:<b@example.net>\r\n"
          b"DATA\r\n")


@pytest.mark.limit(30)
def test_bdat_refused_where_server_offers_no_chunking(tap_factory, sink, workdir):
    """smtp-sink offers no CHUNKING: it answers BDAT 500 and reads the "chunk" as commands.
    smtptap answers BDAT itself (502, in its turn among the pipelined replies), relays none of
    it and reads on as commands, so the hidden MAIL meets the mail rule and never reaches the
    server."""
    # The body rule (CHUNKING would be hidden for it anyway) must not change the outcome.
    rules = write_rules(workdir, "mail /evil@/ REJECT 550 5.7.1 Sender refused\n"
                                 "body /never-in-these-messages/ REJECT\n")
    tap = tap_factory(sink.port, "--rules", rules)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.example", 250)
    assert not [x for x in r if b"CHUNKING" in x.upper()], r
    c.send(b"NOOP\r\nBDAT %d LAST\r\n" % len(HIDDEN) + HIDDEN)
    replies = [c.reply() for _ in range(5)]
    codes = [int(x[-1][:3]) for x in replies]
    # NOOP (server), BDAT (ours), the hidden MAIL (the rule), RCPT and DATA (server: no MAIL).
    assert codes == [250, 502, 550, 503, 503], replies
    assert replies[1] == [b"502 5.5.1 BDAT not available: CHUNKING not offered\r\n"]
    # The session goes on as commands: an ordinary message still goes through.
    c.transaction("<a@example.com>", ["<b@example.net>"], b"Subject: ok\r\n\r\nok\r\n")
    c.expect("QUIT", 221)

    msgs = sink.wait_messages(1)
    assert len(msgs) == 1 and msgs[0].mail_from.startswith("<a@example.com>"), msgs
    t = tap.transcript()
    cmds = t.client_lines()
    assert "BDAT %d LAST" % len(HIDDEN) in cmds
    assert cmds[cmds.index("BDAT %d LAST" % len(HIDDEN)) + 1:][:3] == [
        "MAIL FROM:<evil@example.org>", "RCPT TO:<b@example.net>", "DATA"]
    assert "502 5.5.1 BDAT not available: CHUNKING not offered" in t.proxy_lines()
    assert not [e for e in t.events() if e.startswith("bdat chunk")], t.events()
    assert [e for e in t.events() if "did not offer CHUNKING" in e], t.events()
    ev = tap.event()
    evil, ok = ev["transactions"]
    assert (evil["mail_from"], evil["mail_code"], evil["code"]) == ("<evil@example.org>", 550, None)
    assert ok["mail_from"] == "<a@example.com>" and ok["code"] == 250
    assert [r["hits"] for r in ev["rules"] if r["scope"] == "mail"] == [1]


@pytest.mark.limit(30)
def test_bdat_refused_in_helo_session_and_after_helo(tap_factory, fake_server):
    """A HELO session never has CHUNKING, even after an EHLO that offered it: BDAT is answered
    by smtptap, the server never sees it, and the octets after it are commands."""
    srv = fake_server(SmtpServerScript(chunking=True))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("HELO client.example", 250)
    c.send(b"BDAT 6 LAST\r\nNOOP\r\n")
    assert c.reply() == [b"502 5.5.1 BDAT not available: CHUNKING not offered\r\n"]
    assert c.code() == 250
    r = c.expect("EHLO client.example", 250)
    assert b"250 CHUNKING\r\n" in r, r
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.send(b"BDAT 6\r\nRSET\r\n")
    assert c.code() == 250, "BDAT refused although the server offered CHUNKING"
    c.expect("HELO client.example", 250)
    c.send(b"BDAT 6 LAST\r\nNOOP\r\n")
    assert c.reply() == [b"502 5.5.1 BDAT not available: CHUNKING not offered\r\n"]
    assert c.code() == 250
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert cmds == [b"HELO client.example", b"NOOP", b"EHLO client.example",
                    b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>", b"BDAT 6",
                    b"HELO client.example", b"NOOP", b"QUIT"], cmds
    assert srv.conns[0].messages == [] or srv.conns[0].messages[0]["chunks"] == [b"RSET\r\n"]


@pytest.mark.limit(30)
def test_bdat_content_split_mid_line_recorded_as_pieces(tap_factory, fake_server):
    """Chunks and reads that end mid-line: the rest of the line is a further piece ("C+"), a
    CR at the end of a read goes with its LF (a CRLF recorded whole), and content that ends
    without a line end says so, so the transcript tells exactly which octets crossed."""
    srv = fake_server(SmtpServerScript(chunking=True))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    chunk1, chunk2 = b"Subject: split he", b"re\r\nbody li"
    chunk3 = b"ne\r\nCR across reads\r\nno line end"
    c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
    assert c.code() == 250
    c.send(b"BDAT %d\r\n" % len(chunk2) + chunk2)
    assert c.code() == 250
    cut = chunk3.index(b"\r\nno") + 1
    c.send(b"BDAT %d LAST\r\n" % len(chunk3) + chunk3[:cut])
    time.sleep(0.3)
    c.send(chunk3[cut:])
    assert c.code() == 250
    # A chunk that ends mid-line, then a command: the content ended there too.
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.send(b"BDAT 3\r\nxyz")
    assert c.code() == 250
    c.expect("RSET", 250)
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].messages[0]["chunks"] == [chunk1, chunk2, chunk3]

    t = tap.transcript()
    ended = "bdat content ends without a line end"
    recs = [(r.kind, r.text) for r in t.records
            if r.kind in ("C:", "C+") or (r.kind == "*" and r.text == ended)]
    i = recs.index(("C:", "BDAT %d" % len(chunk1)))
    assert recs[i:i + 17] == [
        ("C:", "BDAT %d" % len(chunk1)),
        ("C:", "Subject: split he"),
        ("C:", "BDAT %d" % len(chunk2)),
        ("C+", "re"),
        ("C:", "body li"),
        ("C:", "BDAT %d LAST" % len(chunk3)),
        ("C+", "ne"),
        ("C:", "CR across reads"),
        ("C+", ""),  # its CRLF: the CR waited for the LF of the next read
        ("C:", "no line end"),
        ("*", ended),
        ("C:", "MAIL FROM:<a@example.com>"),
        ("C:", "RCPT TO:<b@example.net>"),
        ("C:", "BDAT 3"),
        ("C:", "xyz"),
        ("*", ended),
        ("C:", "RSET"),
    ], recs[i:]


@pytest.mark.limit(60)
def test_replay_of_bdat_needs_chunking(tap_factory, postfix, sink, smtptap_bin):
    """A session recorded with BDAT (through Postfix, which offers CHUNKING) replays against
    Postfix with every code as recorded; against smtp-sink, which offers no CHUNKING, replay
    stops before BDAT (the chunk would be read as commands) and exits 1, sending no chunk."""
    pf, psink = postfix
    tap = tap_factory(pf.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
           b"BDAT %d LAST\r\n" % len(CHUNK1) + CHUNK1)
    assert [c.reply()[-1][:3] for _ in range(3)] == [b"250"] * 3
    c.expect("QUIT", 221)
    c.close()
    psink.wait_messages(1, timeout=10)
    sid = tap.wait_events(1)[-1]["session"]

    def replay(port):
        p = subprocess.run([smtptap_bin, "replay", "--log-dir", tap.log_dir, "--events",
                            tap.events_path, sid, "--to", "127.0.0.1:%d" % port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        return p.returncode, p.stdout.decode() + p.stderr.decode()

    rc, out = replay(pf.port)
    assert rc == 0, out
    psink.wait_messages(2, timeout=10)
    before = sink.count()
    rc, out = replay(sink.port)
    assert rc == 1, out
    assert "does not offer CHUNKING" in out, out
    assert "smuggled@evil.example" not in out.split("does not offer CHUNKING")[1]
    time.sleep(0.5)
    assert sink.count() == before


RULE_EVIL = "recipient /^evil@example\\.net$/ REJECT 550 5.7.1 evil refused\n"
# A transaction a "chunk" would carry past the rules were it read as commands by one side only.
HIDDEN_BODY = b"Subject: smuggled\r\n\r\nhi\r\n"
HIDDEN_TX = (b"MAIL FROM:<a@example.com>\r\nRCPT TO:<evil@example.net>\r\n"
             b"BDAT %d LAST\r\n" % len(HIDDEN_BODY) + HIDDEN_BODY)


@pytest.mark.limit(60)
def test_bdat_white_space_after_arguments_read_as_postfix_reads_it(tap_factory, postfix,
                                                                    workdir):
    """Postfix splits BDAT's words at any white space (space, tab, VT, FF, CR) and takes white
    space after them: "BDAT 9 LAST " is a 9-octet chunk to it, and so it must be to smtptap.
    Each chunk here is a "BDAT n" line whose n octets are a MAIL, a RCPT to a recipient the
    rules refuse and a whole message: had smtptap read the chunk as a command, Postfix would
    have run that hidden transaction as commands while smtptap took them for a chunk."""
    pf, psink = postfix
    tap = tap_factory(pf.port, "--rules", write_rules(workdir, RULE_EVIL))
    inner = b"BDAT %d\r\n" % len(HIDDEN_TX)
    tails = [b" LAST ", b"\tLAST\x0b", b" last\x0c", b"\x0bLAST\r", b" LAST \t\x0b\x0c"]
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    for tail in tails:
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<ok@example.net>\r\n"
               b"BDAT %d%s\r\n" % (len(inner), tail) + inner + HIDDEN_TX)
        replies = [c.reply() for _ in range(6)]
        codes = [int(r[-1][:3]) for r in replies]
        # MAIL, RCPT, the chunk (a message to ok@), then the octets after it as commands:
        # MAIL, RCPT evil (the rule), BDAT LAST (Postfix: no valid recipients).
        assert codes == [250, 250, 250, 250, 550, 554], (tail, replies)
        assert replies[4] == [b"550 5.7.1 evil refused\r\n"], replies
        c.expect("RSET", 250)
    c.expect("QUIT", 221)

    msgs = psink.wait_messages(len(tails), timeout=10)
    time.sleep(0.5)
    assert psink.count() == len(tails), "a hidden transaction reached the server"
    for m in msgs:
        assert m.rcpts[0].startswith("<ok@example.net>"), m.rcpts
        assert m.content.endswith(inner.replace(b"\r\n", b"\n")), m.content[-200:]
    t = tap.transcript()
    # Each round: the chunk, then the hidden BDAT (relayed: Postfix skips its chunk).
    assert [e for e in t.events() if e.startswith("bdat chunk")] == [
        "bdat chunk octets=%d last=yes" % len(inner),
        "bdat chunk octets=%d last=yes" % len(HIDDEN_BODY)] * len(tails), t.events()
    assert t.client_lines().count("RCPT TO:<evil@example.net>") == len(tails)
    assert t.proxy_lines().count("550 5.7.1 evil refused") == len(tails)
    assert tap.event()["reason"] == "quit"


# BDAT lines Postfix answers "521 5.5.4 Syntax: BDAT count [LAST]" before it hangs up.
MALFORMED_BDAT = [b"BDAT 5 X", b"BDAT 5 LAST LAST", b"BDAT +5", b"BDAT",
                  b"BDAT 9223372036854775808", b"BDAT 18446744073709551615 LAST"]


@pytest.mark.limit(60)
def test_bdat_malformed_answered_521_and_session_ended(tap_factory, postfix, workdir):
    """A BDAT whose size smtptap can't read (one Postfix can't either, or a size past an
    off_t) leaves no way to tell where its chunk ends.  smtptap never forwards it and never
    guesses: it answers as Postfix does, 521 in its turn after the pipelined replies, and
    ends the session, so nothing the client sent after it reaches the server, as a command
    or as a chunk."""
    pf, psink = postfix
    tap = tap_factory(pf.port, "--rules", write_rules(workdir, RULE_EVIL))
    for bad in MALFORMED_BDAT:
        c = SmtpClient(tap.port)
        assert c.code() == 220
        c.expect("EHLO client.example", 250)
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<ok@example.net>\r\n" + bad + b"\r\n" +
               HIDDEN_TX)
        assert [c.code(), c.code()] == [250, 250], bad
        assert c.reply() == [b"521 5.5.4 Syntax: BDAT count [LAST]\r\n"], bad
        assert c.read_until_eof() == b"", bad
        c.close()

    ts = tap.wait_transcripts(len(MALFORMED_BDAT))
    evs = tap.wait_events(len(MALFORMED_BDAT))
    for bad, t, ev in zip(MALFORMED_BDAT, ts, evs):
        # From the BDAT on, the server's replies (to MAIL and RCPT) aside: nothing relayed.
        recs = [(r.kind, r.text) for r in t.records if r.kind != "S:"]
        i = recs.index(("C:", bad.decode()))
        assert recs[i:i + 4] == [
            ("C:", bad.decode()),
            ("*", "warning malformed BDAT: where its chunk ends is unknown, session ended"),
            ("P:", "521 5.5.4 Syntax: BDAT count [LAST]"),
            ("*", "client input not relayed octets=%d" % len(HIDDEN_TX))], recs[i:]
        assert t.proxy_lines() == ["521 5.5.4 Syntax: BDAT count [LAST]"], t.records
        assert not [e for e in t.events() if e.startswith(("bdat chunk", "rule "))], t.events()
        assert t.close_fields()["reason"] == "bdat_syntax"
        assert ev["reason"] == "bdat_syntax"
    time.sleep(0.5)
    assert psink.count() == 0
    log = pf.log()
    assert "malformed BDAT" not in log and "bdat=" not in log, log


@pytest.mark.limit(60)
def test_bdat_refused_by_smtptap_chunk_thrown_away_by_postfix_reading(tap_factory, postfix,
                                                                       workdir):
    """Under a body rule smtptap hides CHUNKING and answers BDAT 502 itself, reading the
    chunk and throwing it away: its size is read as Postfix reads it, white space after the
    words included, so the chunk's "QUIT"s are never commands.  A BDAT whose size can't be
    read at all leaves no chunk end to skip to: 521, and the session ends."""
    pf, psink = postfix
    rules = write_rules(workdir, "body /never-in-these-messages/ REJECT\n")
    tap = tap_factory(pf.port, "--rules", rules)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.example", 250)
    assert not [x for x in r if b"CHUNKING" in x.upper()], r
    chunk = b"QUIT\r\nQUIT\r\n"
    c.send(b"BDAT %d LAST \x0b\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert c.reply() == [b"502 5.5.1 BDAT not available: CHUNKING not offered\r\n"]
    assert c.code() == 250, "the chunk's QUIT was read as a command"
    c.send(b"BDAT 6 X\r\n" + chunk)
    assert c.reply() == [b"521 5.5.4 Syntax: BDAT count [LAST]\r\n"]
    assert c.read_until_eof() == b""

    t = tap.transcript()
    assert "refused bdat chunk discarded" in t.events()
    assert "QUIT" not in t.client_lines()[:t.client_lines().index("BDAT 6 X")]
    assert t.proxy_lines() == ["502 5.5.1 BDAT not available: CHUNKING not offered",
                               "521 5.5.4 Syntax: BDAT count [LAST]"]
    assert tap.event()["reason"] == "bdat_syntax"
    assert "bdat=" not in pf.log()


MAIL_OK = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<ok@example.net>\r\n"
TOO_BIG = [b"552 5.3.4 Message size exceeds fixed limit\r\n"]


def chunk_of(n, tag):
    """n octets of message content, lines of 100, that say which message they belong to."""
    line = (b"%s " % tag + b"x" * 98)[:98] + b"\r\n"
    return (line * (n // 100 + 1))[:n]


@pytest.mark.limit(60)
def test_bdat_max_message_over_the_sum_of_chunks(tap_factory, postfix):
    """--max-message holds for BDAT as for DATA: the chunks of a message count together, and
    a BDAT that would take it past the limit gets 552 5.3.4 in its turn and ends the session,
    so the server never sees the message's last chunk and keeps nothing.  The count is the
    server's: a MAIL or a RSET Postfix refuses (503, 501) leaves its chunks in place, while
    a RSET it takes starts the next message from nothing."""
    pf, psink = postfix
    tap = tap_factory(pf.port, "--max-message", "2000")

    def session():
        c = SmtpClient(tap.port)
        assert c.code() == 220
        c.expect("EHLO client.example", 250)
        return c

    # One chunk over the limit; then two that together are; then around a refused MAIL and
    # a refused RSET (Postfix keeps the first chunk through both).
    over = [
        (MAIL_OK + b"BDAT 2001 LAST\r\n" + chunk_of(2001, b"one"), [250, 250]),
        (MAIL_OK + b"BDAT 1500\r\n" + chunk_of(1500, b"two") +
         b"BDAT 501 LAST\r\n" + chunk_of(501, b"two"), [250, 250, 250]),
        (MAIL_OK + b"BDAT 1500\r\n" + chunk_of(1500, b"mail") +
         b"MAIL FROM:<b@example.com>\r\nBDAT 1500 LAST\r\n" + chunk_of(1500, b"mail"),
         [250, 250, 250, 503]),
        (MAIL_OK + b"BDAT 1500\r\n" + chunk_of(1500, b"rset") +
         b"RSET x\r\nBDAT 1500 LAST\r\n" + chunk_of(1500, b"rset"), [250, 250, 250, 501]),
    ]
    for sent, codes in over:
        c = session()
        c.send(sent)
        assert [c.code() for _ in codes] == codes, sent[:200]
        assert c.reply() == TOO_BIG, sent[:200]
        assert c.read_until_eof() == b""
        c.close()

    # At the limit, over two chunks; then a message given up with RSET (pipelined, with the
    # next one behind it): the next message counts from nothing.
    c = session()
    c.send(MAIL_OK + b"BDAT 1000\r\n" + chunk_of(1000, b"fits") +
           b"BDAT 1000 LAST\r\n" + chunk_of(1000, b"fits"))
    assert [c.code() for _ in range(4)] == [250] * 4
    c.send(MAIL_OK + b"BDAT 1500\r\n" + chunk_of(1500, b"dropped") + b"RSET\r\n" + MAIL_OK +
           b"BDAT 1500 LAST\r\n" + chunk_of(1500, b"after"))
    assert [c.code() for _ in range(7)] == [250] * 7
    c.expect("QUIT", 221)

    msgs = psink.wait_messages(2, timeout=10)
    time.sleep(0.5)
    assert psink.count() == 2, "a message past --max-message was delivered"
    contents = sorted(m.content for m in msgs)
    assert contents[0].endswith(chunk_of(1500, b"after").replace(b"\r\n", b"\n"))
    assert contents[1].endswith(chunk_of(2000, b"fits").replace(b"\r\n", b"\n"))
    evs = tap.wait_events(len(over) + 1)
    assert [e["reason"] for e in evs] == ["message_too_big"] * len(over) + ["quit"], evs
    for t in tap.wait_transcripts(len(over) + 1)[:len(over)]:
        assert t.proxy_lines() == ["552 5.3.4 Message size exceeds fixed limit"], t.records
        assert [e for e in t.events() if "over --max-message" in e], t.events()
        # The refused BDAT (the last) never went upstream: no chunk followed it.
        bdats = [x for x in t.client_lines() if x.startswith("BDAT")]
        chunks = [e for e in t.events() if e.startswith("bdat chunk")]
        assert bdats[-1].endswith("LAST") and len(chunks) == len(bdats) - 1, t.records
