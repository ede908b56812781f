"""Content rules that can't be sidestepped (issue 17): long lines and headers inspected whole
or refused, size limits whatever the client said, a spool that fails closed, the server's
answer to the proxy's own DATA, capabilities a rule removed, 421s under reply rules, and a
reply's effect following what the client was told.

Run with:  SMTPTAP=$PWD/build/smtptap python3 -m pytest -q tests/integration/test_content.py
"""

import os
import subprocess
import time

import pytest

import harness
from harness import SmtpClient, SmtpServerScript, dot_stuff
from filter_peers import held_tmpfiles, transcript, write_rules
from tls_peers import certs  # noqa: F401 (a fixture)


def start_tap(tap_factory, workdir, upstream_port, rules, *extra):
    path = write_rules(workdir, rules, "content.rules")
    return tap_factory(upstream_port, "--rules", path, *extra)


def open_data(port, helo="EHLO client.example"):
    """A session up to the 354 of DATA."""
    c = SmtpClient(port, timeout=20)
    assert c.code() == 220
    c.expect(helo, 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    return c


def send_message(port, content, helo="EHLO client.example"):
    """One message (content CRLF-ended, dot-stuffed here); the reply to its end."""
    c = open_data(port, helo)
    c.send(dot_stuff(content) + b".\r\n")
    return c, c.reply()


def delivered(srv):
    return [m for conn in srv.conns for m in conn.messages]


HEAD = b"From: a@example.com\r\nTo: b@example.net\r\n"


# --------------------------------------------------------------------------------------------
# 1. A line longer than --max-line is inspected whole, header state kept


@pytest.mark.limit(30)
@pytest.mark.parametrize("where", [10, 1010, 1090])
def test_long_body_line_still_meets_body_rules(tap_factory, fake_server, workdir, where):
    """A body line of 1,100 octets under --max-line 1024: the word is found wherever it is,
    across the pieces the line arrives in too; nothing reaches the server."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "body /confidential/i REJECT",
                    "--max-line", "1024")
    line = b"x" * where + b"Confidential" + b"y" * (1100 - where - 12)
    c, r = send_message(tap.port, HEAD + b"Subject: hi\r\n\r\n" + line + b"\r\n")
    assert r and r[-1].startswith(b"550 5.7.1"), r
    c.expect("QUIT", 221)
    srv.join(5)
    assert delivered(srv) == [], "a rejected message reached the server"


@pytest.mark.limit(30)
@pytest.mark.parametrize("rules", [None, "header /NEVERMATCH/ WARN w\nbody /NEVERMATCH/ WARN w\n",
                                   "body /NEVERMATCH/ REJECT\n"], ids=["none", "stream", "hold"])
def test_lone_dot_after_a_bare_line_end_stays_content(tap_factory, fake_server, workdir, rules):
    """A lone "." ended by a bare CR, or a ".<CRLF>" right after a bare LF, is content, never
    the end of data (only <CRLF>.<CRLF> is): the server gets it stuffed, "..", with message
    rules as without.  With them the dot was once taken for stuffing and dropped, and the
    empty line left ended the header section early."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, rules) if rules else tap_factory(srv.port)
    c = open_data(tap.port)
    c.send(b"Subject: a\r\n.\rX-After: b\r\n\r\nbody\n.\r\nend\r\n.\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    srv.join()
    (m,) = delivered(srv)
    assert m["data"] == b"Subject: a\r\n..\r\nX-After: b\r\n\r\nbody\r\n..\r\nend\r\n.\r\n", m


@pytest.mark.limit(30)
def test_long_header_keeps_header_state(tap_factory, fake_server, workdir):
    """A long X-Pad header first must not end the header section: the Subject after it still
    meets the header rule."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "header /^Subject: forbidden/ REJECT",
                    "--max-line", "1024")
    content = HEAD + b"X-Pad: " + b"p" * 1500 + b"\r\nSubject: forbidden\r\n\r\nbody\r\n"
    c, r = send_message(tap.port, content)
    assert r and r[-1].startswith(b"550 5.7.1"), r
    c.expect("QUIT", 221)
    srv.join(5)
    assert delivered(srv) == []


@pytest.mark.limit(30)
def test_long_lines_delivered_intact_and_rewritten(tap_factory, fake_server, workdir):
    """Long lines that no rule refuses arrive as sent; a long header is rewritten whole."""
    srv = fake_server(SmtpServerScript())
    rules = "header /^(X-Long: )a/ REWRITE ${1}b\nbody /confidential/ REJECT"
    tap = start_tap(tap_factory, workdir, srv.port, rules, "--max-line", "1024")
    body = b".dot " + b"z" * 3000 + b"\r\n" + b"w" * 1022 + b"\r\n"
    content = HEAD + b"X-Long: a" + b"q" * 2000 + b"\r\n\tfold " + b"f" * 1500 + b"\r\n\r\n" + body
    c, r = send_message(tap.port, content)
    assert r and r[-1].startswith(b"250"), r
    c.expect("QUIT", 221)
    srv.join(5)
    (m,) = delivered(srv)
    want = content.replace(b"X-Long: a", b"X-Long: b")
    assert m["data"] == dot_stuff(want) + b".\r\n"


@pytest.mark.limit(30)
@pytest.mark.parametrize("mode", ["hold", "stream"])
def test_line_over_max_header_is_refused_not_relayed(tap_factory, fake_server, workdir, mode):
    """A line too long to inspect (over --max-header) is never relayed unfiltered: a held
    message is refused 552 5.3.4; a streamed one gets it too and the server never sees its
    end (the session ends, so it delivers nothing)."""
    srv = fake_server(SmtpServerScript())
    rules = ("body /confidential/ REJECT" if mode == "hold"
             else "body /confidential/ REWRITE secret")
    tap = start_tap(tap_factory, workdir, srv.port, rules, "--max-line", "1024",
                    "--max-header", "4096")
    content = HEAD + b"Subject: hi\r\n\r\n" + b"confidential " + b"x" * 6000 + b"\r\n"
    c, r = send_message(tap.port, content)
    assert r and r[-1].startswith(b"552 5.3.4"), r
    if mode == "stream":
        assert c.closed_within(5)
    else:
        c.expect("QUIT", 221)
    srv.join(5)
    assert delivered(srv) == []
    assert b"confidential" not in b"".join(
        l for conn in srv.conns for l in conn.commands), "uninspected content went upstream"


# --------------------------------------------------------------------------------------------
# 2. --max-header, and a header counted against --hold-memory as it grows


@pytest.mark.limit(60)
def test_folded_header_over_max_header_refused(tap_factory, fake_server, workdir):
    """A header of 2 MiB of continuation lines: refused 552 5.3.4 (default --max-header
    100 KB), nothing delivered."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "header /^Subject: forbidden/ REJECT")
    fold = b"".join(b"\tcontinuation %06d %s\r\n" % (i, b"c" * 80) for i in range(20000))
    c, r = send_message(tap.port, HEAD + b"X-Fold: start\r\n" + fold + b"\r\nbody\r\n")
    assert r and r[-1].startswith(b"552 5.3.4"), r
    c.expect("QUIT", 221)
    srv.join(5)
    assert delivered(srv) == []
    assert any("--max-header" in e for e in transcript(tap).events())


@pytest.mark.limit(30)
def test_header_being_gathered_counts_against_hold_memory(tap_factory, fake_server, workdir):
    """Held headers (60 KB) and a folded header still growing (90 KB): together past
    --hold-memory 64 KiB, the held part moves to the file before the header ends."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "body /confidential/ REJECT",
                    "--hold-memory", "65536")
    c = open_data(tap.port)
    c.send(b"".join(b"X-H%05d: %s\r\n" % (i, b"h" * 90) for i in range(600)))
    c.send(b"X-Fold: start\r\n" + b"".join(b"\tf %s\r\n" % (b"f" * 87) for i in range(1000)))
    harness.wait_until(lambda: held_tmpfiles(tap.pid, tap.log_dir), 5,
                       what="the held part in a file while the header is gathered")
    c.send(b"\r\nbody\r\n.\r\n")
    r = c.reply()
    assert r and r[-1].startswith(b"250"), r
    c.expect("QUIT", 221)


@pytest.mark.limit(20)
@pytest.mark.parametrize("value", ["0", "1023", "x", "16777217"])
def test_max_header_bad_value(smtptap_bin, value):
    r = subprocess.run([smtptap_bin, "--upstream", "127.0.0.1:25", "--max-header", value],
                       capture_output=True, timeout=5)
    assert r.returncode != 0 and b"--max-header" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# 3. --max-message, and the server's SIZE whatever the client said


@pytest.mark.limit(30)
@pytest.mark.parametrize("helo", ["HELO client.example", "EHLO client.example"])
def test_held_message_over_max_message_refused(tap_factory, fake_server, workdir, helo):
    """A HELO client learns no SIZE; --max-message still holds: 552 5.3.4, nothing sent."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "body /confidential/ REJECT",
                    "--max-message", "100000")
    body = b"".join(b"line %06d %s\r\n" % (i, b"m" * 60) for i in range(3000))
    c, r = send_message(tap.port, HEAD + b"\r\n" + body, helo=helo)
    assert r and r[-1].startswith(b"552 5.3.4"), r
    c.expect("QUIT", 221)
    srv.join(5)
    assert delivered(srv) == []


@pytest.mark.limit(30)
def test_helo_client_gets_the_size_of_an_earlier_ehlo(tap_factory, fake_server, workdir):
    """The server's SIZE seen in any EHLO reply of the session holds after a HELO too."""
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "SIZE 50000")))
    tap = start_tap(tap_factory, workdir, srv.port, "body /confidential/ REJECT")
    c = SmtpClient(tap.port, timeout=20)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("HELO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(HEAD + b"\r\n" + b"".join(b"l %s\r\n" % (b"s" * 70) for i in range(1000)) + b".\r\n")
    r = c.reply()
    assert r and r[-1].startswith(b"552 5.3.4"), r
    c.expect("QUIT", 221)
    srv.join(5)
    assert delivered(srv) == []


@pytest.mark.limit(30)
def test_relayed_message_over_max_message_ends_session(tap_factory, fake_server, workdir):
    """No rules: the message is relayed as it comes; past --max-message the client is told
    552 5.3.4 and the server never gets the end of data."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--max-message", "100000")
    c = open_data(tap.port)
    c.send(HEAD + b"\r\n" + b"".join(b"line %06d %s\r\n" % (i, b"m" * 60) for i in range(3000)))
    r = c.reply()
    assert r and r[-1].startswith(b"552 5.3.4"), r
    assert c.closed_within(5)
    srv.join(5)
    assert delivered(srv) == []


@pytest.mark.limit(60)
def test_refused_nested_mail_keeps_the_open_transaction_and_its_limit(tap_factory, postfix,
                                                                      workdir):
    """MAIL and RCPT accepted, then a second MAIL that a rule refuses: Postfix never sees it,
    so its transaction stays open and it answers DATA with 354.  The proxy's stays open too:
    the message past --max-message gets 552 and Postfix never gets its end (the proxy once
    took the refused MAIL for the end of its transaction and relayed the message unchecked);
    the event has the refused MAIL and the open one with its recipient."""
    pf, psink = postfix
    tap = start_tap(tap_factory, workdir, pf.port,
                    "sender /^evil@example\\.com$/ REJECT 550 5.7.1 evil refused\n",
                    "--max-message", "2000")
    c = SmtpClient(tap.port, timeout=20)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("MAIL FROM:<evil@example.com>", 550)
    c.expect("DATA", 354)
    c.send(HEAD + b"\r\n" + b"".join(b"line %04d %s\r\n" % (i, b"m" * 60) for i in range(80)))
    r = c.reply()
    assert r and r[-1].startswith(b"552 5.3.4"), r
    assert c.closed_within(5)
    time.sleep(0.5)
    assert psink.count() == 0
    ev = tap.event()
    assert ev["reason"] == "message_too_big", ev
    txs = [(t["mail_from"], t["mail_code"], [x["to"] for x in t["rcpt"]]) for t in ev["transactions"]]
    assert sorted(txs) == [("<a@example.com>", 250, ["<b@example.net>"]),
                           ("<evil@example.com>", 550, [])], txs


# --------------------------------------------------------------------------------------------
# 4. A spool that can't be written: 451 4.3.0, never memory beyond --hold-memory


@pytest.mark.limit(60)
def test_full_spool_answers_451(tap_factory, fake_server, workdir):
    """The log dir on a 1 MiB tmpfs: a 3 MiB held message can't be spooled; it is refused
    451 4.3.0 (as Postfix answers a queue file write error), not kept in memory."""
    if not harness.IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    srv = fake_server(SmtpServerScript())
    logs = os.path.join(workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", logs],
                       capture_output=True, timeout=10)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % r.stderr.decode())
    try:
        tap = start_tap(tap_factory, workdir, srv.port, "body /confidential/ REJECT",
                        "--hold-memory", "65536")
        body = b"".join(b"line %07d %s\r\n" % (i, b"d" * 90) for i in range(30000))
        c, r = send_message(tap.port, HEAD + b"\r\n" + body)
        assert r and r[-1].startswith(b"451 4.3.0"), r
        c.expect("QUIT", 221)
        srv.join(5)
        assert delivered(srv) == []
        tap.stop()
    finally:
        subprocess.run(["umount", "-l", logs], timeout=10)


# --------------------------------------------------------------------------------------------
# 9. A REWRITE may not make a line longer than --max-line


GROW = "\n".join(["%s /x/g REWRITE xxxxxxxxxx"] * 3)


@pytest.mark.limit(30)
def test_rewrite_over_max_line_refuses_the_command(tap_factory, fake_server, workdir):
    """Three /x/g rules grow a 200-octet NOOP a thousandfold: refused 500 5.5.2, recorded,
    and nothing of it reaches the server; the session goes on."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, GROW % ("command", "command", "command"),
                    "--max-line", "4096")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    r = c.cmd("NOOP " + "x" * 200)
    assert r and r[-1].startswith(b"500 5.5.2"), r
    c.expect("NOOP x", 250)  # short enough rewritten: sent
    c.expect("QUIT", 221)
    srv.join(5)
    sent = srv.conns[0].commands
    assert not any(len(l) > 4096 for l in sent), [len(l) for l in sent]
    assert b"NOOP " + b"x" * 1000 + b"\r\n" in sent
    assert any("over --max-line" in e for e in transcript(tap).events())


@pytest.mark.limit(30)
@pytest.mark.parametrize("mode", ["hold", "stream"])
def test_rewrite_over_max_line_refuses_the_message(tap_factory, fake_server, workdir, mode):
    """A body line rewritten past --max-line: the message is refused 500 5.5.2, never sent
    (streamed, the session ends before its end reaches the server)."""
    srv = fake_server(SmtpServerScript())
    rules = GROW % ("body", "body", "body")
    if mode == "hold":
        rules += "\nbody /confidential/ REJECT"
    tap = start_tap(tap_factory, workdir, srv.port, rules, "--max-line", "4096")
    c, r = send_message(tap.port, HEAD + b"\r\nshort x\r\n" + b"x" * 100 + b"\r\n")
    assert r and r[-1].startswith(b"500 5.5.2"), r
    if mode == "stream":
        assert c.closed_within(5)
    srv.join(5)
    assert delivered(srv) == []
    assert not any(len(l) > 4096 for conn in srv.conns for l in conn.commands)


@pytest.mark.limit(30)
def test_rewrite_over_max_line_keeps_the_reply(tap_factory, fake_server, workdir):
    """A reply line rewritten past --max-line: the client gets the server's line."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "reply /O/g REWRITE " + "O" * 3000,
                    "--max-line", "2048")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("NOOP")
    assert r == [b"250 2.0.0 Ok\r\n"], r
    c.expect("QUIT", 221)


# --------------------------------------------------------------------------------------------
# 6. The server's answer to the proxy's own DATA for a held message


@pytest.mark.limit(30)
@pytest.mark.parametrize("answer", [b"250 2.0.0 Ok\r\n", b"334 what\r\n", b"199 odd\r\n"])
def test_held_data_answered_without_354_is_451(tap_factory, fake_server, workdir, answer):
    """A server that answers the proxy's DATA with anything but 354 that is no refusal never
    got the body: the client's dot gets 451 4.3.0, never a success."""
    def data(conn, line):
        conn.send(answer)
        return True

    srv = fake_server(SmtpServerScript(hooks={"DATA": data}))
    tap = start_tap(tap_factory, workdir, srv.port, "body /confidential/ REJECT")
    c, r = send_message(tap.port, HEAD + b"\r\nhello\r\n")
    assert r and r[-1].startswith(b"451 4.3.0"), r
    c.expect("QUIT", 221)
    (e,) = tap.wait_events(1)
    assert e["transactions"][0]["code"] == 451, e["transactions"]


@pytest.mark.limit(30)
def test_held_data_refused_by_server_keeps_its_reply(tap_factory, fake_server, workdir):
    """A 4xx/5xx to the proxy's DATA is the client's answer, as it came."""
    def data(conn, line):
        conn.send(b"554 5.5.1 No thanks\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"DATA": data}))
    tap = start_tap(tap_factory, workdir, srv.port, "body /confidential/ REJECT")
    c, r = send_message(tap.port, HEAD + b"\r\nhello\r\n")
    assert r == [b"554 5.5.1 No thanks\r\n"], r
    c.expect("QUIT", 221)


# --------------------------------------------------------------------------------------------
# 7. A capability a rule removed stays removed, and using it anyway is refused


def ehlo_keywords(r):
    return [l[4:].split()[0].upper() for l in r[1:] if len(l) > 4]


@pytest.mark.limit(30)
def test_hidden_starttls_not_added_back_with_a_certificate(tap_factory, fake_server, workdir,
                                                           certs):
    """With a certificate (terminate), smtptap adds STARTTLS: not when a capability rule
    removes it.  A STARTTLS sent anyway gets 502 5.5.1 from the proxy, and no TLS."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "capability /^STARTTLS$/i IGNORE",
                    *(list(certs.proxy_args("proxy")) + ["--upstream-tls", "none"]))
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.example", 250)
    assert b"STARTTLS" not in ehlo_keywords(r), r
    r = c.cmd("STARTTLS")
    assert r and r[-1].startswith(b"502 5.5.1"), r
    c.expect("NOOP", 250)  # still in clear, still talking
    c.expect("QUIT", 221)


@pytest.mark.limit(30)
def test_starttls_still_added_without_such_a_rule(tap_factory, fake_server, workdir, certs):
    """Another capability rule does not stop the STARTTLS smtptap offers."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port, "capability /^8BITMIME/i IGNORE",
                    *(list(certs.proxy_args("proxy")) + ["--upstream-tls", "none"]))
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.example", 250)
    kw = ehlo_keywords(r)
    assert b"STARTTLS" in kw and b"8BITMIME" not in kw, r
    assert r[-1].startswith(b"250 ") and all(l.startswith(b"250-") for l in r[:-1]), r
    c.expect("QUIT", 221)


@pytest.mark.limit(30)
@pytest.mark.parametrize("verb", ["STARTTLS", "AUTH", "BDAT"])
def test_command_of_a_hidden_capability_refused(tap_factory, fake_server, workdir, verb):
    """The server offers it, a rule hides it (no certificate: STARTTLS would be relayed):
    the client that uses it anyway gets 502 5.5.1 from the proxy; the server never sees it,
    and an AUTH's secret is not recorded."""
    keyword = {"STARTTLS": "STARTTLS", "AUTH": "AUTH", "BDAT": "CHUNKING"}[verb]
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "STARTTLS"), auth={"alice": "pw"},
                                       chunking=True))
    tap = start_tap(tap_factory, workdir, srv.port,
                    "capability /^%s\\b/i IGNORE" % keyword)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.example", 250)
    assert keyword.encode() not in ehlo_keywords(r), r
    line = {"STARTTLS": "STARTTLS", "AUTH": "AUTH PLAIN " + harness.b64(b"\0alice\0pw"),
            "BDAT": "BDAT 4 LAST"}[verb]
    if verb == "BDAT":
        c.expect("MAIL FROM:<a@example.com>", 250)
        c.expect("RCPT TO:<b@example.net>", 250)
        c.send(line + "\r\nNOOP")  # the 4 octets that would be the chunk
        r = c.reply()
    else:
        r = c.cmd(line)
    assert r and r[-1].startswith(b"502 5.5.1"), r
    c.expect("QUIT", 221)
    srv.join(5)
    assert not any(l.upper().startswith(verb.encode()) for l in srv.conns[0].commands), \
        srv.conns[0].commands
    if verb == "AUTH":
        assert harness.b64(b"\0alice\0pw") not in open(transcript(tap).path).read()


# --------------------------------------------------------------------------------------------
# 8. Reply rules see a 421


def closing_421(conn, line):
    conn.send(b"421 4.3.2 mx1.internal.corp Service shutting down\r\n")
    conn.close()
    return True


@pytest.mark.limit(30)
def test_reply_rule_edits_a_421(tap_factory, fake_server, workdir):
    """A 421 is copied to every pending command: each copy is the edited one, and the
    internal host name never reaches the client."""
    srv = fake_server(SmtpServerScript(hooks={"VRFY": closing_421}))
    tap = start_tap(tap_factory, workdir, srv.port,
                    r"reply /\bmx1\.internal\.corp\b/ REWRITE mail.example.com")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.send(b"VRFY x\r\nNOOP\r\nNOOP\r\n")
    replies = [c.reply() for _ in range(3)]
    assert c.closed_within(5)
    assert b"internal" not in bytes(c.received), bytes(c.received)
    assert replies[0] == [b"421 4.3.2 mail.example.com Service shutting down\r\n"], replies
    for r in replies[1:]:
        assert r and r[-1].startswith(b"421"), replies


@pytest.mark.limit(30)
def test_banner_rule_edits_a_421_greeting(tap_factory, fake_server, workdir):
    def greet(conn, line):
        conn.send(b"421 4.3.2 mx1.internal.corp Too busy\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"GREETING": greet}))
    tap = start_tap(tap_factory, workdir, srv.port,
                    r"banner /mx1\.internal\.corp/ REWRITE mail.example.com")
    c = SmtpClient(tap.port)
    r = c.reply()
    assert r == [b"421 4.3.2 mail.example.com Too busy\r\n"], r


# --------------------------------------------------------------------------------------------
# 10. A reply rule may not change a code's class


@pytest.mark.limit(30)
def test_reply_rule_cannot_turn_an_accepted_rcpt_into_a_refusal(tap_factory, fake_server,
                                                                workdir):
    """The client is told what the server did (a 250 stays a 2xx) so that what it was told
    is what happens: the message goes to that recipient, and the client knows it.  The rule's
    attempt is a warning."""
    srv = fake_server(SmtpServerScript())
    tap = start_tap(tap_factory, workdir, srv.port,
                    "reply /^250 2\\.1\\.5 Ok$/ REWRITE 550 5.1.1 Recipient not permitted\n"
                    "reply /^250 2\\.0\\.0 Ok$/ REWRITE 250 2.0.0 Fine")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    r = c.cmd("RCPT TO:<b@example.net>")
    assert r == [b"250 2.1.5 Ok\r\n"], r
    assert c.cmd("NOOP") == [b"250 2.0.0 Fine\r\n"]  # the same class: rewritten
    c.expect("QUIT", 221)
    assert any("may not change a reply's class" in e for e in transcript(tap).events())
