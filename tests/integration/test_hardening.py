"""Hardening (issue 5): SMTP smuggling, identity (XCLIENT/XFORWARD), privileges and files.

Each case says what the client, the server (smtp-sink, a private Postfix smtpd, or the
scripted FakeServer), the transcript and the events file see, and ends by checking that the
proxy still serves a normal session.

Already covered elsewhere, not repeated: the smuggling payloads against the scripted server
under normalize and pass (test_relay.py::test_bare_newline_default_normalizes,
::test_bare_newline_pass_relays_octets_unchanged), a plain XCLIENT/XFORWARD refused with some
5xx (test_relay.py::test_client_xclient_never_reaches_server), an EHLO edit of the last line
(test_relay.py::test_ehlo_edit_of_last_line_keeps_reply_well_formed), transcript and date-dir
modes under the default umask (test_recording.py::test_transcript_name_mode_header_and_records),
events file mode (test_daemon.py::test_events_file_mode_and_append).
"""

import datetime
import json
import os
import pwd
import re
import select
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

import harness
import hostile_peers as hp
from harness import SmtpClient, SmtpServerScript, escape

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(not harness.IS_ROOT, reason="needs root")


def stripped(lines):
    return [l.rstrip(b"\r\n") for l in lines]


# --------------------------------------------------------------------------------------------
# SMTP smuggling (CVE-2023-51764 family) against real servers

# The published end-of-data lookalikes (SEC Consult, Dec 2023), each followed by a hidden
# second transaction.
PAYLOADS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "LF.CRLF": b"\n.\r\n",
}
HIDDEN = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nhidden\r\n.\r\n"
OUTER_HEAD = b"Subject: outer\r\n\r\nvisible"
# What the one message holds once each bare line end has become a line end (de-stuffed, as
# smtp-sink dumps it): the lookalike is a lone "." line of content.
NORMALIZED_BODY = b"visible\n.\nMAIL FROM:<evil@x>\nRCPT TO:<victim@y>\nDATA\nhidden\n"

# Under --bare-newline pass the octets reach the server as sent and the server decides.
# Observed: smtp-sink (Postfix 3.7 tools) ends data only at CRLF.CRLF: one message each time.
# Postfix 3.7.11 smtpd (smtpd_forbid_bare_newline = no, its default before 3.9) takes a bare
# LF as a line end, so "\n.\n" and "\n.\r\n" end the data there and the hidden transaction is
# delivered as a message of its own: exactly the lab set-up "pass" exists for.
PASS_HIDDEN_DELIVERED = {
    ("sink", "LF.LF"): False, ("sink", "CR.CR"): False, ("sink", "CRLF.CR"): False,
    ("sink", "LF.CRLF"): False,
    ("postfix", "LF.LF"): True, ("postfix", "CR.CR"): False, ("postfix", "CRLF.CR"): False,
    ("postfix", "LF.CRLF"): True,
}


@pytest.fixture(params=["sink", "postfix"])
def real_upstream(request, workdir):
    """(kind, port, sink holding what was delivered, postfix or None)."""
    if request.param == "sink":
        s = request.getfixturevalue("sink")
        return "sink", s.port, s, None
    pf, s = request.getfixturevalue("postfix")
    return "postfix", pf.port, s, pf


@pytest.mark.limit(40)
@pytest.mark.parametrize("mode", ["normalize", "reject", "pass"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_smuggling_payloads(tap_factory, real_upstream, payload, mode):
    """A message whose content holds a published end-of-data lookalike followed by a hidden
    MAIL/RCPT/DATA/message, sent in one write after the 354; the real end of data is the
    hidden part's own CRLF.CRLF.

    normalize (default): client 250 to its one message; server: exactly one message, from
    <a@example.com>, with the hidden lines as content; transcript: the bare line end shown
    (\\x0a or \\x0d) and a warning; event: one transaction, 250.
    reject: client "550 5.5.2 Bare CR or LF in message content not accepted", then closed;
    server: nothing delivered (its connection closed before any end of data); event: reason
    bare_newline, the transaction without a final code.
    pass: the server gets the octets as sent; what it delivers is its own doing (see
    PASS_HIDDEN_DELIVERED)."""
    kind, port, sink, pf = real_upstream
    extra = [] if mode == "normalize" else ["--bare-newline", mode]
    tap = tap_factory(port, *extra)
    content = OUTER_HEAD + PAYLOADS[payload] + HIDDEN
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(content)
    if mode == "reject":
        r = c.reply()
        assert r == [b"550 5.5.2 Bare CR or LF in message content not accepted\r\n"], r
        assert c.read_until_eof(5) == b"", "client not closed after the 550"
        ev = tap.event()
        assert ev["reason"] == "bare_newline", ev
        (tx,) = ev["transactions"]
        assert tx["code"] is None, tx
        time.sleep(1.0)
        assert sink.count() == 0, "something was delivered under reject"
        if pf is not None:
            harness.wait_until(lambda: "lost connection after DATA" in pf.log(), 5,
                               what="smtpd to log the lost connection")
        t = tap.transcript()
        assert "550 5.5.2 Bare CR or LF in message content not accepted" in t.proxy_lines()
        hp.normal_session(tap, sink=sink)
        return

    r = c.reply()
    time.sleep(0.3)
    c.send(b"QUIT\r\n")
    rest = c.read_until_eof(5)
    msgs = sink.wait_messages(1)
    time.sleep(0.7)  # a second message, if any, lands meanwhile
    msgs = sink.messages()
    froms = sorted(m.mail_from.split()[0] for m in msgs)
    if mode == "normalize":
        assert r[-1].startswith(b"250 "), r
        assert harness.replies_from(rest) == [[rest]] and rest.startswith(b"221"), rest
        assert froms == ["<a@example.com>"], "hidden transaction delivered: %r" % froms
        (m,) = msgs
        assert m.rcpts == ["<b@example.net>"]
        assert m.content.endswith(b"\n\n" + NORMALIZED_BODY), m.content
        ev = tap.event()
        assert len(ev["transactions"]) == 1 and ev["transactions"][0]["code"] == 250, ev
        assert ev["warnings"] >= 1
        t = tap.transcript()
        recs = t.client_lines()
        assert any(x.endswith("\\x0a") or "\\x0d" in x for x in recs), recs
        assert any(e.startswith("warning") for e in t.events()), hp.excerpt(t)
    else:
        hidden = PASS_HIDDEN_DELIVERED[(kind, payload)]
        hp.figure("smuggling under pass, %s, %s: delivered %r; client after 354: %r" % (
            kind, payload, froms, r + [rest]))
        if hidden:
            assert froms == ["<a@example.com>", "<evil@x>"], froms
        else:
            assert froms == ["<a@example.com>"], froms
        t = tap.transcript()
        assert not any(e.startswith("warning bare") for e in t.events())
    hp.normal_session(tap, sink=sink)


# --------------------------------------------------------------------------------------------
# Identity: a client's XCLIENT / XFORWARD

XCLIENT_FORMS = {
    "plain": b"XCLIENT ADDR=192.0.2.66 NAME=spoofed.example",
    "lowercase": b"xclient addr=192.0.2.66",
    "xforward-mixed-case": b"XForward ADDR=192.0.2.66 NAME=spoofed.example",
    "bare-verb": b"XFORWARD",
    "tab-separated": b"XCLIENT\tADDR=192.0.2.66",
    "lf-terminated": b"XCLIENT ADDR=192.0.2.66\n",
    "leading-space": b" XCLIENT ADDR=192.0.2.66",
    "leading-tab": b"\tXFORWARD ADDR=192.0.2.66",
    "vtab-separated": b"XCLIENT\x0bADDR=192.0.2.66",
    "formfeed-leading": b"\x0cXCLIENT ADDR=192.0.2.66",
    "cr-separated": b"XCLIENT\rADDR=192.0.2.66",
}


@pytest.mark.limit(20)
@pytest.mark.parametrize("form", list(XCLIENT_FORMS))
def test_client_xclient_refused_never_reaches_upstream(tap_factory, fake_server, form):
    """A server that offers XCLIENT and XFORWARD (lower-case too) and logs every command.
    The client sends the command in one of its forms, pipelined between two NOOPs.

    Postfix smtpd splits a command on any white space (space, tab, VT, FF, CR) and skips
    leading white space (smtpd_token.c), so each form below is an XCLIENT/XFORWARD to it.

    client: the EHLO reply without XCLIENT/XFORWARD; "550 5.7.0 Command not permitted" in the
    command's place (250, 550, 250).  server: never the command (its log has NOOP, NOOP and
    nothing with XCLIENT, XFORWARD or the spoofed address).  transcript: the EHLO reply as
    sent, "* ehlo reply edited: removed ..." for both, the C: line, P: 550 5.7.0.  event:
    a warning counted."""
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "XCLIENT NAME ADDR PROTO HELO",
                                             "xforward NAME ADDR", "8BITMIME")))
    tap = tap_factory(srv.port)
    line = XCLIENT_FORMS[form]
    end = b"" if line.endswith(b"\n") else b"\r\n"
    c = SmtpClient(tap.port)
    assert c.code() == 220
    ehlo = c.cmd("EHLO client.example")
    assert ehlo == [b"250-fake.example\r\n", b"250-PIPELINING\r\n", b"250 8BITMIME\r\n"], ehlo
    c.send(b"NOOP\r\n" + line + end + b"NOOP\r\n")
    replies = [c.reply() for _ in range(3)]
    c.expect("QUIT", 221)
    t = tap.transcript()
    hp.normal_session(tap, server=srv)
    assert replies == [[b"250 2.0.0 Ok\r\n"], [b"550 5.7.0 Command not permitted\r\n"],
                       [b"250 2.0.0 Ok\r\n"]], "%r: %r" % (line, replies)
    srv.join()
    got = srv.conns[0].commands
    assert stripped(got) == [b"EHLO client.example", b"NOOP", b"NOOP", b"QUIT"], \
        "the server got %r" % got
    assert b"192.0.2.66" not in srv.conns[0].received
    assert "ehlo reply edited: removed XCLIENT NAME ADDR PROTO HELO" in t.events(), hp.excerpt(t)
    assert "ehlo reply edited: removed xforward NAME ADDR" in t.events(), hp.excerpt(t)
    assert "250-XCLIENT NAME ADDR PROTO HELO" in t.server_lines()
    assert escape(line) in t.client_lines(), t.client_lines()  # "\x0a" ends an LF-only line
    assert "550 5.7.0 Command not permitted" in t.proxy_lines()
    ev = hp.event_for_client(tap, c.local_port)
    assert ev["warnings"] >= 1


# A NUL in a command: Postfix cuts the line there, a rule would read all of it.
NUL_LINES = [b"RCPT TO:evil@example.net\x00junk", b"DATA\x00",
             b"AUTH\x00 PLAIN AGFsaWNlAHMzY3JldA==", b"AUTH PLAIN AGFsaWNlAHMzY3JldA==\x00"]


@pytest.mark.limit(60)
def test_command_with_a_nul_refused(tap_factory, postfix, workdir):
    """Postfix reads "RCPT TO:evil@example.net\\0junk" as that recipient, while the rules
    read the whole line: it passed a recipient rule and was delivered; "DATA\\0" was DATA to
    Postfix and no command to the proxy, so the message passed the body rules.  Each such line
    gets 500 5.5.2 from the proxy and never reaches Postfix; it is recorded as it came, but
    an AUTH's words after the verb (a credential).  The session goes on: the rule refuses the
    clean evil recipient, and a good message is delivered to its one recipient."""
    pf, psink = postfix
    rules = os.path.join(workdir, "nul.rules")
    with open(rules, "w") as f:
        f.write("recipient /^evil@example\\.net$/ REJECT 550 5.7.1 evil refused\n")
    tap = tap_factory(pf.port, "--rules", rules)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    for line in NUL_LINES:
        c.send(line + b"\r\n")
        assert c.reply() == [b"500 5.5.2 Error: NUL in command\r\n"], line
    c.expect("RCPT TO:<evil@example.net>", 550)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: nul\r\n\r\nbody\r\n.\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    (m,) = psink.wait_messages(1, timeout=10)
    assert b"Subject: nul" in m.content
    # Postfix counts what it was sent: the five clean commands, nothing else.
    harness.wait_until(lambda: "quit=1" in pf.log(), 10, what="Postfix's disconnect line")
    (counts,) = [l for l in pf.log().splitlines() if "quit=1" in l]
    assert counts.endswith(" ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"), counts
    t = tap.transcript()
    recs = t.client_lines()
    for want in ("RCPT TO:evil@example.net\\x00junk", "DATA\\x00", "AUTH\\x00[redacted]",
                 "AUTH [redacted]"):
        assert want in recs, recs
    assert "AGFsaWNl" not in t.text
    assert sum(e.startswith("warning a command with a NUL refused") for e in t.events()) == 4


@pytest.fixture
def trusting_postfix(request, workdir):
    """A private Postfix smtpd that lets 127.0.0.0/8 (so, the proxy) use XCLIENT and XFORWARD,
    handing messages to an smtp-sink.  Returns (postfix, sink)."""
    if not harness.IS_ROOT:
        pytest.skip("a private Postfix instance needs root (master runs as root)")
    if not os.access(harness.POSTFIX, os.X_OK):
        pytest.skip("postfix not installed")
    s = harness.SmtpSink(workdir, name="postfix-sink")
    hp.add_diagnostic(request, "postfix's smtp-sink", s)
    s.start()
    pf = hp.TrustingPostfix(workdir, s.port)
    hp.add_diagnostic(request, "postfix (XCLIENT/XFORWARD for 127.0.0.0/8)", pf)
    try:
        pf.start()
        yield pf, s
    finally:
        pf.stop()
        s.stop()


@pytest.mark.limit(60)
def test_client_cannot_claim_another_address_at_postfix(tap_factory, trusting_postfix):
    """The deployment where XCLIENT matters: Postfix trusts the proxy's address with XCLIENT
    and XFORWARD (smtpd_authorized_xclient_hosts).  Through the proxy, a client tries each
    form of XCLIENT_FORMS, then EHLO again and a message.

    client: 550 5.7.0 for each.  server (Postfix's own log, maillog): every session from
    localhost[127.0.0.1], never from 192.0.2.66 or spoofed.example, no "xclient=" or
    "xforward=" counted.  delivered: each message."""
    pf, sink = trusting_postfix
    tap = tap_factory(pf.port)
    outcomes = {}
    for i, (form, line) in enumerate(XCLIENT_FORMS.items()):
        c = SmtpClient(tap.port)
        assert c.code() == 220
        ehlo = c.cmd("EHLO client.example")
        assert not any(b"XCLIENT" in l.upper() or b"XFORWARD" in l.upper() for l in ehlo), ehlo
        end = b"" if line.endswith(b"\n") else b"\r\n"
        c.send(line + end)
        outcomes[form] = c.reply()
        c.cmd("EHLO again.example")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.net>")
        if c.cmd("DATA")[-1].startswith(b"354"):
            c.send(b"Subject: %s\r\n\r\nbody\r\n.\r\n" % form.encode())
            c.reply()
        c.cmd("QUIT")
        c.close()
    tap.wait_events(len(XCLIENT_FORMS))
    time.sleep(0.5)
    log = pf.log()
    spoofed = [l for l in log.splitlines() if "192.0.2.66" in l or "spoofed.example" in l
               or "xclient=" in l or "xforward=" in l]
    refused = {f: r for f, r in outcomes.items() if r == [b"550 5.7.0 Command not permitted\r\n"]}
    hp.figure("XCLIENT forms through the proxy to a trusting Postfix: refused by the proxy %s; "
              "reached smtpd %s" % (sorted(refused), {f: r for f, r in outcomes.items()
                                                      if f not in refused}))
    hp.normal_session(tap, sink=sink)
    assert not spoofed, "Postfix took a client's XCLIENT/XFORWARD through the proxy:\n" + \
        "\n".join(spoofed)
    assert len(refused) == len(XCLIENT_FORMS), outcomes


@pytest.mark.limit(30)
def test_identity_keywords_removed_from_a_long_ehlo_reply(tap_factory, fake_server):
    """An EHLO reply over 64 KiB (the proxy holds at most that much of a reply to edit it)
    with XCLIENT and XFORWARD after the filler.

    client: the reply without XCLIENT/XFORWARD (the README: "XCLIENT and XFORWARD are removed
    from the server's EHLO reply"); its XCLIENT still refused.  server: never the XCLIENT."""
    filler = [b"250-X-FILL-%05d " % i + b"f" * 100 for i in range(700)]
    lines = [b"250-fake.example"] + filler + [b"250-XCLIENT NAME ADDR", b"250-XFORWARD ADDR",
                                              b"250 PIPELINING"]
    reply = b"".join(l + b"\r\n" for l in lines)
    assert len(reply) > 65536

    def ehlo(conn, line):
        conn.send(reply)
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    r2 = c.cmd("XCLIENT ADDR=192.0.2.66")
    c.expect("QUIT", 221)
    hp.normal_session(tap, server=srv)
    assert b"192.0.2.66" not in srv.conns[0].received
    assert r2 == [b"550 5.7.0 Command not permitted\r\n"]
    leaked = [l for l in r if l[4:].upper().startswith((b"XCLIENT", b"XFORWARD"))]
    # Every line but the two identity keywords (if those leaked, the next assert says so).
    assert r[-1] == b"250 PIPELINING\r\n" and len(r) == len(lines) - 2 + len(leaked)
    assert not leaked, "identity keywords passed to the client in a %d-octet EHLO reply: %r" % (
        len(reply), leaked)


# --------------------------------------------------------------------------------------------
# Privileges


def privileged_free_port():
    for port in range(1020, 600, -1):
        if harness.is_listening(port):
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    pytest.skip("no free port below 1024")


@needs_root
@pytest.mark.limit(30)
def test_user_drops_root_after_binding(tap_factory, sink):
    """--user nobody, listening on a privileged port (so the bind must come before the drop).

    proxy: every uid (real, effective, saved, fs) is nobody's, every gid nogroup's, the
    supplementary groups only nogroup (setgroups first), no capabilities; it logs "running as
    nobody" and no root warning.  files: the log dir, the events file, the date dir and the
    transcript belong to nobody; modes 0750 / 0640.  client and server: a normal session."""
    port = privileged_free_port()
    tap = tap_factory(sink.port, "--user", "nobody", start=False, listen=["127.0.0.1:%d" % port])
    tap.port = port
    tap.start()
    pid = tap.pid
    assert hp.uids(pid) == (NOBODY.pw_uid,) * 4, hp.proc_status(pid)["Uid"]
    assert hp.gids(pid) == (NOBODY.pw_gid,) * 4, hp.proc_status(pid)["Gid"]
    assert hp.groups(pid) == [NOBODY.pw_gid], hp.proc_status(pid)["Groups"]
    st = hp.proc_status(pid)
    assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, (st["CapEff"], st["CapPrm"])
    err = tap.stderr()
    assert "running as nobody (uid %d)" % NOBODY.pw_uid in err, err
    assert "running as root" not in err, err
    ev = hp.normal_session(tap, sink=sink)
    t = os.path.join(tap.log_dir, ev["transcript"]["file"])
    for path, mode in ((tap.log_dir, 0o750), (t, 0o640),
                       (tap.events_path, 0o640)):
        s = os.stat(path)
        assert (s.st_uid, s.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid), (path, s.st_uid, s.st_gid)
        assert stat.S_IMODE(s.st_mode) == mode, (path, oct(s.st_mode))
    # The events file is still written after SIGHUP reopens it as nobody.
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: "reopened" in tap.stderr(), 5, what="the events file reopened")
    hp.normal_session(tap, sink=sink)


@needs_root
@pytest.mark.limit(20)
def test_root_without_user_warns(tap, sink):
    """As root without --user: "running as root: consider --user" in the log, still uid 0;
    sessions work."""
    harness.wait_until(lambda: "running as root: consider --user" in tap.stderr(), 5,
                       what="the root warning")
    assert hp.uids(tap.pid)[1] == 0
    hp.normal_session(tap, sink=sink)


@needs_root
@pytest.mark.limit(20)
def test_user_unknown_fails_at_start(tap_factory, sink):
    """--user no-such-user: exit status 1 with a message naming it; nothing listens."""
    tap = tap_factory(sink.port, "--user", "no-such-user-smtptap", start=False)
    tap.start(wait=False)
    rc = tap.wait_exit(5)
    assert rc == 1, (rc, tap.stderr())
    assert "no-such-user-smtptap" in tap.stderr()
    assert not harness.is_listening(tap.port)
    tap.extra = ["--user", "nobody"]  # the failed start left nothing in the way
    tap.start()
    hp.normal_session(tap, sink=sink)


# --------------------------------------------------------------------------------------------
# Files: modes, symlinks, --on-log-failure


@pytest.mark.limit(20)
def test_modes_under_a_permissive_umask(smtptap_bin, workdir, sink, request):
    """Started with umask 000 (through a wrapper script): the log dir is still created 0750,
    the date dir 0750, the transcript and the events file 0640."""
    wrapper = os.path.join(workdir, "smtptap-umask000.sh")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\numask 000\nexec "%s" "$@"\n' % smtptap_bin)
    os.chmod(wrapper, 0o755)
    tap = harness.Smtptap(wrapper, workdir, sink.port, name="smtptap-umask000")
    hp.add_diagnostic(request, "smtptap (umask 000)", tap)
    tap.start()
    try:
        with open("/proc/%d/cmdline" % tap.pid) as f:
            assert smtptap_bin in f.read(), "the wrapper did not exec smtptap"
        ev = hp.normal_session(tap, sink=sink)
        t = os.path.join(tap.log_dir, ev["transcript"]["file"])
        for path, mode in ((tap.log_dir, 0o750), (t, 0o640),
                           (tap.events_path, 0o640)):
            assert stat.S_IMODE(os.stat(path).st_mode) == mode, (path, oct(os.stat(path).st_mode))
    finally:
        tap.stop()


def utc_day_names():
    now = datetime.datetime.now(datetime.timezone.utc)
    return [(now + datetime.timedelta(days=d)).strftime("%Y-%m-%d") for d in (-1, 0, 1)]


def relay_one_message(c, sink):
    """From the greeting to QUIT: one message, accepted and delivered to the sink."""
    assert c.code() == 220
    c.expect("HELO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: unrecorded\r\n\r\nbody\r\n.\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    sink.wait_messages(1)


@pytest.mark.limit(30)
@pytest.mark.parametrize("policy", ["continue", "tempfail"])
def test_symlinked_date_dir_refused(tap_factory, sink, workdir, policy):
    """Before the first session, the journals (yesterday, today, tomorrow UTC) are planted in
    the log dir as symlinks to files in another directory.

    journal: never written through the symlink (O_NOFOLLOW).
    continue: client: the session relays; server: the message; event: transcript null; log:
    "transcript not created".  tempfail: client: "451 4.3.0 <host> Session cannot be
    recorded, try again later" and closed; server: nothing; event: reason log_failure.
    Once the symlink is gone: a normal, recorded session."""
    target = os.path.join(workdir, "elsewhere")
    os.mkdir(target)
    os.chmod(target, 0o777)
    log_dir = os.path.join(workdir, "logs")
    os.mkdir(log_dir, 0o750)
    planted = []
    for day in utc_day_names():
        p = os.path.join(log_dir, day + ".log")
        with open(os.path.join(target, day + ".log"), "w"):
            pass
        os.symlink(os.path.join(target, day + ".log"), p)
        planted.append(p)
    extra = ["--on-log-failure", "tempfail"] if policy == "tempfail" else []
    tap = tap_factory(sink.port, *extra)
    c = SmtpClient(tap.port)
    if policy == "continue":
        relay_one_message(c, sink)
        ev = tap.event()
        assert ev["reason"] == "quit" and ev["transcript"] is None, ev
    else:
        r = c.reply()
        assert len(r) == 1 and r[0].startswith(b"451 4.3.0 ") and \
            r[0].endswith(b" Session cannot be recorded, try again later\r\n"), r
        assert c.read_until_eof(3) == b""
        ev = tap.event()
        assert ev["reason"] == "log_failure", ev
        time.sleep(0.3)
        assert sink.count() == 0
    def written():
        return {n: os.path.getsize(os.path.join(target, n)) for n in os.listdir(target)
                if os.path.getsize(os.path.join(target, n))}

    assert written() == {}, "the journal was written through the symlink: %r" % written()
    assert "write failed" in tap.stderr()
    for p in planted:
        os.unlink(p)
    hp.normal_session(tap, sink=sink)
    assert written() == {}


@pytest.mark.limit(30)
def test_fifo_at_the_journal_name_stalls_nothing(tap_factory, sink, workdir):
    """FIFOs are planted at the journal names (yesterday, today, tomorrow UTC) before the
    first session; nobody reads them.  A session then relays a 110 KB message: written to a
    FIFO it would fill the pipe (64 KiB) and stop the event loop (it once did: the next client
    got no greeting).  journal: nothing is written to a FIFO, and the log says it is no
    regular file; client: the message is delivered, and a second session is served."""
    log_dir = os.path.join(workdir, "logs")
    os.mkdir(log_dir, 0o750)
    for day in utc_day_names():
        os.mkfifo(os.path.join(log_dir, day + ".log"))
    tap = tap_factory(sink.port)
    c = SmtpClient(tap.port, timeout=10)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send((b"x" * 70 + b"\r\n") * 1500 + b".\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    sink.wait_messages(1)
    harness.wait_until(lambda: "not a regular file" in tap.stderr(), 5,
                       what="the journal's warning")
    c2 = SmtpClient(tap.port, timeout=10)
    assert c2.code() == 220
    c2.expect("QUIT", 221)
    for day in utc_day_names():
        assert stat.S_ISFIFO(os.lstat(os.path.join(log_dir, day + ".log")).st_mode)


@pytest.mark.limit(30)
@pytest.mark.parametrize("what", ["transcript", "log_dir"])
def test_symlink_planted_during_a_session_not_followed(tap_factory, sink, workdir, what):
    """A session is open (its transcript created); then, between two flushes, someone with
    write access to the log dir plants a symlink:
      transcript: the journal file itself becomes a symlink to a victim file;
      log_dir: the log directory is moved away and replaced by a symlink to a directory
      holding a victim file of the journal's name.
    The session goes on (client and server unaffected) for more than a flush interval.

    victim: never written (the README: opened with O_NOFOLLOW, a planted symlink refused,
    not followed).  event: the session with reason quit."""
    tap = tap_factory(sink.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    time.sleep(1.2)  # past a flush: the journal holds the session's start
    (path,) = harness.journal_files(tap.log_dir)
    victim_dir = os.path.join(workdir, "victim")
    os.mkdir(victim_dir)
    if what == "transcript":
        victim = os.path.join(victim_dir, "victim.txt")
        with open(victim, "w") as f:
            f.write("victim\n")
        os.rename(path, path + ".moved")
        os.symlink(victim, path)
    else:
        day = tap.log_dir
        victim = os.path.join(victim_dir, os.path.basename(path))
        with open(victim, "w") as f:
            f.write("victim\n")
        os.chmod(victim, 0o666)
        os.rename(day, day + ".moved")
        os.symlink(victim_dir, day)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: planted\r\n\r\nbody\r\n.\r\n")
    assert c.code() == 250
    time.sleep(1.3)  # a flush happens meanwhile
    c.expect("QUIT", 221)
    c.read_until_eof(3)
    ev = tap.event()
    assert ev["reason"] == "quit"
    sink.wait_messages(1)
    with open(victim) as f:
        data = f.read()
    # Clean up the plant; the proxy goes on recording.
    if what == "transcript":
        os.unlink(path)
    else:
        os.unlink(day)
        os.rename(day + ".moved", day)
    hp.normal_session(tap, sink=sink)
    assert data == "victim\n", "the proxy wrote through a planted %s symlink into %s:\n%s" % (
        what, victim, data[:2000])


@needs_root
@pytest.mark.limit(40)
def test_tempfail_while_log_dir_unwritable(tap_factory, fake_server):
    """--user nobody --on-log-failure tempfail.  Session A opens; then the log dir is made
    unwritable (chmod 000: nobody can no longer search or write it); then recovered.

    while unwritable: new clients get "451 4.3.0 <host> Session cannot be recorded, try again
    later" and are closed; the server sees no connection for them; their event lines say
    reason log_failure, transcript null.  A, already running, goes on relaying (the check is
    at session start).  Once writable again: a normal, recorded session."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--user", "nobody", "--on-log-failure", "tempfail")
    hp.normal_session(tap, server=srv)
    a = SmtpClient(tap.port)
    assert a.code() == 220
    a.expect("EHLO a.example", 250)
    conns_before = len(srv.conns)
    os.chmod(tap.log_dir, 0)
    try:
        for i in range(2):
            b = SmtpClient(tap.port)
            r = b.reply()
            assert len(r) == 1 and r[0].startswith(b"451 4.3.0 ") and \
                r[0].endswith(b" Session cannot be recorded, try again later\r\n"), r
            assert b.read_until_eof(3) == b""
            ev = hp.event_for_client(tap, b.local_port)
            assert ev["reason"] == "log_failure" and ev["transcript"] is None, ev
        time.sleep(0.3)
        assert len(srv.conns) == conns_before, "an unrecorded session reached the server"
        # A goes on.
        a.expect("MAIL FROM:<a@example.com>", 250)
        a.expect("RCPT TO:<b@example.net>", 250)
        a.expect("DATA", 354)
        a.send(b"Subject: during the outage\r\n\r\nbody\r\n.\r\n")
        assert a.code() == 250
        time.sleep(1.2)  # a flush fails meanwhile
    finally:
        os.chmod(tap.log_dir, 0o750)
    a.expect("QUIT", 221)
    a.read_until_eof(3)
    ev_a = hp.event_for_client(tap, a.local_port)
    assert ev_a["reason"] == "quit" and ev_a["transactions"][0]["code"] == 250, ev_a
    t_a = hp.transcript_of(tap, ev_a)
    during = [x for x in t_a.client_lines() if x in ("MAIL FROM:<a@example.com>", "DATA")]
    hp.figure("session A, open across the outage: its transcript holds %d records (%s); the "
              "commands sent during the outage %s" % (
                  len(t_a.records), ", ".join("%s %s" % (r.kind, r.text[:30]) for r in t_a.records),
                  "are there" if during else "are missing, with no record marking the gap"))
    ev = hp.normal_session(tap, server=srv)
    assert ev["transcript"]
    assert "Session cannot be recorded" not in "".join(
        l.decode("utf-8", "replace") for c in srv.conns for l in c.commands)


@pytest.mark.limit(20)
def test_events_file_symlink_refused_at_start(tap_factory, sink, workdir):
    """The default events file (LOGDIR/events.jsonl) planted as a symlink to a victim file:
    the proxy refuses to start (exit 1, naming the events file) and the victim is untouched."""
    log_dir = os.path.join(workdir, "logs")
    os.mkdir(log_dir, 0o750)
    victim = os.path.join(workdir, "victim.txt")
    with open(victim, "w") as f:
        f.write("victim\n")
    os.symlink(victim, os.path.join(log_dir, "events.jsonl"))
    tap = tap_factory(sink.port, start=False)
    tap.events_path = None  # the default, in the log dir
    tap.start(wait=False)
    rc = tap.wait_exit(5)
    assert rc == 1, (rc, tap.stderr())
    assert "events file" in tap.stderr()
    with open(victim) as f:
        assert f.read() == "victim\n"
    os.unlink(os.path.join(log_dir, "events.jsonl"))
    tap.events_path = os.path.join(log_dir, "events.jsonl")
    tap.start()
    hp.normal_session(tap, sink=sink)


@pytest.mark.limit(20)
def test_events_file_symlink_refused_on_sighup(tap_factory, sink, workdir):
    """After start, the events file is replaced by a symlink to a victim file and SIGHUP asks
    for a reopen: the reopen is refused (logged), the victim is never written; sessions go on
    relaying; with the symlink gone, the next SIGHUP reopens and sessions are recorded."""
    tap = tap_factory(sink.port)
    hp.normal_session(tap, sink=sink)
    victim = os.path.join(workdir, "victim.txt")
    with open(victim, "w") as f:
        f.write("victim\n")
    os.rename(tap.events_path, tap.events_path + ".1")
    os.symlink(victim, tap.events_path)
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: "reopen failed" in tap.stderr(), 5, what="the refused reopen")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("HELO client.example", 250)
    c.expect("QUIT", 221)
    c.read_until_eof(3)
    time.sleep(0.5)
    with open(victim) as f:
        assert f.read() == "victim\n", "an event line went through the planted symlink"
    os.unlink(tap.events_path)
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: "reopened" in tap.stderr(), 5, what="the events file reopened")
    hp.normal_session(tap, sink=sink)


# A log dir on a tmpfs of 64 KiB that a file already fills: a transcript can be created (an
# inode) but not written (ENOSPC).  Private to the mount namespace of the proxy.
FULL_DISK_SETUP = r"""
set -e
mkdir -p "$L"
mount -t tmpfs -o size=64k,mode=750 none "$L"
dd if=/dev/zero of="$L/filler" bs=4096 2>/dev/null || true
exec "$@"
"""


@pytest.mark.limit(30)
@pytest.mark.parametrize("policy", ["continue", "tempfail"])
def test_full_log_disk(sink, workdir, smtptap_bin, policy):
    """Transcripts can be created but not written (disk full).  tempfail: the session's start
    finds out at once, and the client gets 451 4.3.0 with nothing sent upstream.  continue:
    the message is relayed, and the failed write is logged."""
    if not harness.IS_ROOT:
        pytest.skip("a tmpfs in a mount namespace needs root")
    logs = os.path.join(workdir, "full")
    port = harness.free_port()
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", FULL_DISK_SETUP, "sh",
            smtptap_bin, "--listen", "127.0.0.1:%d" % port,
            "--upstream", "127.0.0.1:%d" % sink.port, "--log-dir", logs,
            "--events", os.path.join(workdir, "events.jsonl")]
    if policy == "tempfail":
        argv += ["--on-log-failure", "tempfail"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, L=logs))
    try:
        harness.wait_listening(port, 10.0, alive=lambda: proc.poll() is None)
        c = SmtpClient(port)
        if policy == "tempfail":
            r = c.reply()
            assert len(r) == 1 and r[0].startswith(b"451 4.3.0 "), r
            assert c.read_until_eof(3) == b""
        else:
            relay_one_message(c, sink)
        harness.wait_until(lambda: os.path.getsize(os.path.join(workdir, "events.jsonl")) > 0,
                           5, what="the event line")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    with open(os.path.join(workdir, "events.jsonl")) as f:
        ev = json.loads(f.readline())
    err = err.decode("utf-8", "replace")
    assert "write failed" in err, err
    if policy == "tempfail":
        assert ev["reason"] == "log_failure", ev
        assert sink.messages() == []
    else:
        assert ev["reason"] == "quit", ev


# --------------------------------------------------------------------------------------------
# Bounded under abuse (issue 13 items 5 to 7)

FLOOD_LINE = b"XCLIENT ADDR=192.0.2.1\r\n"  # answered by the proxy itself, 550
FLOOD_REPLY = b"550 5.7.0 Command not permitted\r\n"


def flood_without_reading(sock, line, seconds, limit):
    """Sends line over and over without reading, until the proxy stops taking it for a second
    (it stopped reading us), seconds have passed or limit octets are sent; returns the octets
    sent and the rest of the last line, which was cut short. That rest can't be sent before
    the replies are read, since the proxy may have stopped reading in the middle of it."""
    sock.setblocking(False)
    chunk = line * (65536 // len(line))
    sent = 0
    pending = b""
    deadline = time.monotonic() + seconds
    stalled_since = None
    while time.monotonic() < deadline and sent < limit:
        if not pending:
            pending = chunk
        try:
            n = sock.send(pending)
        except BlockingIOError:
            n = 0
        if n == 0:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                break
            time.sleep(0.01)
            continue
        stalled_since = None
        pending = pending[n:]
        sent += n
    sock.setblocking(True)
    return sent, pending[:len(pending) % len(line)]


@pytest.mark.limit(60)
def test_local_reply_flood_without_reading_stays_bounded(tap_factory, sink):
    """A client floods a command the proxy answers itself and never reads (item 5): the proxy
    stops reading it once its replies pile up, as for relayed output, so its memory stays
    bounded (it grew to 1.2 GB); read at last, every line has its reply, in order, and the
    transcript stays small against the input (the repeats are counted, not recorded)."""
    tap = tap_factory(sink.port)
    c = SmtpClient(tap.port, timeout=30)
    assert c.reply()[0].startswith(b"220")
    rss_before = harness.rss_kib(tap.pid)
    sent, rest = flood_without_reading(c.sock, FLOOD_LINE, 6.0, 1 << 30)
    rss = harness.rss_kib(tap.pid)
    # Growth, not size: a sanitizer build starts at 30 MiB and keeps freed memory a while.
    assert rss - rss_before < 64 * 1024, "smtptap grew from %d KiB to %d KiB (%d octets sent)" % (
        rss_before, rss, sent)
    sent += len(rest)
    assert sent % len(FLOOD_LINE) == 0
    lines = sent // len(FLOOD_LINE)
    # Now read: every line is answered, then QUIT. The rest of the last line and QUIT are sent
    # while reading: the proxy reads on only as its replies are taken.
    quitter = threading.Thread(target=c.sock.sendall, args=(rest + b"QUIT\r\n",), daemon=True)
    quitter.start()
    got = 0
    while True:
        line = c.readline()
        assert line, "connection closed after %d of %d replies" % (got, lines)
        if line == FLOOD_REPLY:
            got += 1
            continue
        assert line.startswith(b"221 "), (line, got, lines)
        break
    assert got == lines
    t = tap.transcript(timeout=15)
    size = os.path.getsize(t.path)
    assert size < sent / 4, "transcript %d octets for %d octets of input" % (size, sent)
    repeats = [e for e in t.events() if e.startswith("repeated ")]
    assert repeats, t.events()
    counted = sum(int(e.split()[1]) for e in repeats)
    recorded = t.client_lines().count(FLOOD_LINE[:-2].decode())
    assert counted + recorded == lines, (counted, recorded, lines)
    assert tap.event()["warnings"] == lines


def _greeted_and_quit(port):
    c = SmtpClient(port, timeout=5)
    try:
        r = c.reply()
        assert r and r[0].startswith(b"220"), r
        assert c.cmd("QUIT")[0].startswith(b"221")
    finally:
        c.close()


def _start_unread(smtptap_bin, workdir, upstream_port, stderr, extra=()):
    """smtptap with --events - into a pipe nobody reads."""
    port = harness.free_port()
    argv = [smtptap_bin, "--listen", "127.0.0.1:%d" % port, "--upstream",
            "127.0.0.1:%d" % upstream_port, "--log-dir", os.path.join(workdir, "logs"),
            "--events", "-", "--no-transcripts", "--workers", "1"] + list(extra)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr)
    harness.wait_listening(port, 10.0, alive=lambda: proc.poll() is None)
    return proc, port


@pytest.mark.limit(90)
def test_events_and_log_into_pipes_nobody_reads(smtptap_bin, workdir, sink):
    """--events - and the program's log (-v: a line per state change) into pipes nobody reads
    (item 7): every session still gets its greeting, and SIGTERM still stops the proxy at
    once (the event loop never blocked on a write)."""
    proc, port = _start_unread(smtptap_bin, workdir, sink.port, subprocess.PIPE, ["-v"])
    try:
        for _ in range(600):  # ~300 KiB of event lines, far more of debug log
            _greeted_and_quit(port)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0


@pytest.mark.limit(90)
def test_event_lines_dropped_are_counted_and_logged(smtptap_bin, workdir, sink):
    """When the events pipe's reader does not keep up, lines are dropped (the queue is
    bounded) with a warning, and how many is said."""
    SESSIONS = 1500  # event lines of some 300 octets: more than the pipe and the queue hold
    err_path = os.path.join(workdir, "stderr")
    with open(err_path, "wb") as err:
        proc, port = _start_unread(smtptap_bin, workdir, sink.port, err)
    try:
        for _ in range(SESSIONS):
            _greeted_and_quit(port)
        harness.wait_until(lambda: "dropping event lines" in open(err_path).read(), 5,
                           what="the drop warning")
        # The reader catches up: what was queued is written, and the count of dropped lines
        # is logged.
        data = b""
        while True:
            r, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not r:
                break
            chunk = os.read(proc.stdout.fileno(), 1 << 20)
            if not chunk:
                break
            data += chunk
        log = open(err_path).read()
        m = re.search(r"events file -: (\d+) event lines dropped", log)
        assert m, log[-2000:]
        dropped = int(m.group(1))
        written = data.count(b"\n")
        assert dropped > 0 and written + dropped == SESSIONS, (written, dropped)
        for line in data.splitlines():
            json.loads(line)  # whole lines only
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
