"""Filter rules (issue 3) end to end: real clients (swaks, smtplib, raw sockets for pipelining),
Postfix's smtp-sink upstream (its dump shows what was delivered, its -v log which commands
arrived), and a scripted server where exact wire octets or an announced SIZE/CHUNKING/STARTTLS
matter.

Run with:  SMTPTAP=$PWD/build/smtptap /usr/bin/python3 -m pytest -q tests/integration/test_filters.py
"""

import os
import re
import select
import signal
import smtplib
import time

import pytest

import harness
from harness import SmtpClient, SmtpServerScript, dot_stuff, sink_form
import filter_peers
from filter_peers import (BAD, POLICIES, ehlo_reply_from_swaks,
                          event_rules, held_tmpfiles, rule_line, run_smtptap, swaks,
                          trial_blocks, transcript, wait_stderr, write_rules)

# --------------------------------------------------------------------------------------------
# Fixtures and small helpers


def start_tap(tap_factory, workdir, upstream_port, rules, *extra, name="test.rules"):
    """smtptap with one rule file written from text (or an existing path)."""
    path = rules if os.path.isabs(rules) and os.path.exists(rules) else write_rules(workdir, rules, name)
    tap = tap_factory(upstream_port, "--rules", path, *extra)
    return tap, path


def code_of(reply):
    assert reply, "no reply (connection closed)"
    return int(reply[-1][:3])


def sink_commands(vsink):
    """The commands the sink read, once its sessions are over."""
    vsink.wait_idle()
    return vsink.commands()


def assert_never_reached_sink(vsink, line):
    cmds = sink_commands(vsink)
    assert line not in cmds, "%r reached the server; it read: %r" % (line, cmds)


def nothing_pending(c):
    """No octet the client has not read yet (in its buffer or in the kernel)."""
    if c.buf:
        return False
    readable, _, _ = select.select([c.sock], [], [], 0)
    return not readable


def hits_for(t, path):
    return [h for h in t.rule_hits() if h.file == path]


# A message with a header and a body line for the rules to find, a folded header, a line that
# is dot-stuffed on the wire.  CRLF line ends, not yet dot-stuffed.
MSG = (b"From: a@example.com\r\n"
       b"To: b@example.net\r\n"
       b"Subject: filter test\r\n"
       b"X-Target: blocked\r\n"
       b"X-Folded: first\r\n"
       b"\tsecond\r\n"
       b"\r\n"
       b"line one\r\n"
       b"blocked line blocked\r\n"
       b".dotted line\r\n"
       b"last line\r\n")


def message_session(port, content=MSG, mail="a@example.com", rcpts=("b@example.net",),
                    quit=True):
    """EHLO, MAIL, RCPTs, DATA, the content (dot-stuffed here) and its end, QUIT, over a raw
    socket.  Returns what the client was answered; stops where the proxy closed."""
    c = SmtpClient(port)
    obs = {"client": c, "closed": False}
    obs["greeting"] = c.reply()
    obs["ehlo"] = c.cmd("EHLO client.example")
    obs["mail"] = c.cmd("MAIL FROM:<%s>" % mail)
    obs["rcpt"] = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
    obs["data"] = c.cmd("DATA")
    obs["end"] = None
    if obs["data"] and obs["data"][-1].startswith(b"354"):
        c.send(dot_stuff(content) + b".\r\n")
        obs["end"] = c.reply()
        if not obs["end"] or obs["end"][-1].startswith(b"421"):
            obs["closed"] = c.closed_within(5)
            return obs
    if quit:
        obs["quit"] = c.cmd("QUIT")
    return obs


# --------------------------------------------------------------------------------------------
# Each action in each scope it is allowed in: command scopes (helo, mail, rcpt, command)

# scope -> (the line the rule is aimed at, its pattern, what REWRITE makes of it, REWRITE rule)
CMD_SCOPES = {
    "helo": ("EHLO client.example", r"/^EHLO client\.example$/",
             "EHLO rewritten.example", r"helo /^(EHLO) client\.example$/i REWRITE $1 rewritten.example"),
    "mail": ("MAIL FROM:<a@blocked.example>", r"/^MAIL FROM:<[^>]*@blocked\.example>/",
             "MAIL FROM:<a@rewritten.example>",
             r"mail /^MAIL FROM:<([^@>]*)@blocked\.example>/ REWRITE MAIL FROM:<$1@rewritten.example>"),
    "rcpt": ("RCPT TO:<c@blocked.example>", r"/@blocked\.example>/",
             "RCPT TO:<c@rewritten.example>",
             r"rcpt /^RCPT TO:<(?<user>[^@>]*)@blocked\.example>/ REWRITE RCPT TO:<${user}@rewritten.example>"),
    "command": ("NOOP blocked", r"/^NOOP blocked$/", "NOOP rewritten",
                r"command /^(NOOP) blocked$/ REWRITE $1 rewritten"),
}

CMD_ACTIONS = ["REJECT", "REWRITE", "WARN", "DISCONNECT", "PASS"]


def command_session(port):
    """A session whose every step is named, each command on its own: EHLO (again with another
    name if refused), MAIL (again from another sender if refused), two RCPTs, a NOOP, DATA,
    the message, QUIT.  Stops where the proxy closes."""
    c = SmtpClient(port)
    r = {"greeting": c.reply()}

    def step(name, line):
        reply = c.cmd(line)
        r[name] = reply
        if not reply or reply[-1].startswith(b"421"):
            r["eof"] = c.read_until_eof(5)  # the proxy must close after its 421
            raise EOFError(name)
        return reply

    try:
        if code_of(step("helo", "EHLO client.example")) != 250:
            step("helo2", "EHLO other.example")
        if code_of(step("mail", "MAIL FROM:<a@blocked.example>")) != 250:
            step("mail2", "MAIL FROM:<a@example.com>")
        step("rcpt1", "RCPT TO:<b@example.net>")
        step("rcpt", "RCPT TO:<c@blocked.example>")
        step("command", "NOOP blocked")
        if code_of(step("data", "DATA")) == 354:
            c.send(dot_stuff(MSG) + b".\r\n")
            r["end"] = c.reply()
        step("quit", "QUIT")
        r["closed"] = False
    except EOFError:
        r["closed"] = True
    r["client"] = c
    return r


@pytest.mark.limit(30)
@pytest.mark.parametrize("action", CMD_ACTIONS)
@pytest.mark.parametrize("scope", list(CMD_SCOPES))
def test_command_scope_action(tap_factory, vsink, workdir, scope, action):
    target, pattern, rewritten, rewrite_rule = CMD_SCOPES[scope]
    reply = {"REJECT": "550 5.7.1 Filter test %s" % scope,
             "DISCONNECT": "421 4.7.1 Filter test %s" % scope}.get(action)
    if action == "REWRITE":
        rules = rewrite_rule
    elif action == "PASS":
        # PASS ends the evaluation: the REJECT after it (in the command scope, which sees
        # every command) is never tried.
        rules = "%s %s PASS\ncommand /^%s$/ REJECT 550 5.7.1 Must not be reached" % (
            scope, pattern, re.escape(target))
    elif action == "WARN":
        rules = "%s %s WARN a filter test warning" % (scope, pattern)
    else:
        rules = "%s %s %s %s" % (scope, pattern, action, reply)
    tap, path = start_tap(tap_factory, workdir, vsink.port, rules)
    r = command_session(tap.port)
    c = r["client"]
    t = transcript(tap)
    ev = tap.event()
    hits = hits_for(t, path)
    rules_json = event_rules(ev)

    assert r["greeting"] and r["greeting"][0].startswith(b"220 "), r["greeting"]
    # The client's line is always recorded as the client sent it.
    assert target in t.client_lines(), t.client_lines()

    if action == "REJECT":
        assert r[scope] == [reply.encode() + b"\r\n"], r[scope]
        assert reply in t.proxy_lines(), "the proxy's reply is not recorded as P:"
        assert_never_reached_sink(vsink, target)
        assert not r["closed"]
        assert code_of(r["end"]) == 250, "the session did not go on after the REJECT"
        (m,) = vsink.wait_messages(1)
        if scope == "helo":
            assert m.x("X-Helo-Args") == ["other.example"]
        if scope == "mail":
            assert m.mail_from == "<a@example.com>"
        if scope == "rcpt":
            assert m.rcpts == ["<b@example.net>"]
            (tx,) = [x for x in ev["transactions"] if x.get("code") == 250]
            codes = {x["to"]: x["code"] for x in tx["rcpt"]}
            assert codes.get("<c@blocked.example>") == 550, tx
        if scope == "mail":
            refused = [x for x in ev["transactions"] if x["mail_from"] == "<a@blocked.example>"]
            assert refused and refused[0]["mail_code"] == 550, ev["transactions"]
        assert [(h.action, h.scope, h.orig, h.text) for h in hits] == [("REJECT", scope, target, reply)]
        assert rules_json == {"%s:1" % path: (scope, "REJECT", 1)}
        assert ev["reason"] == "quit"

    elif action == "REWRITE":
        assert code_of(r[scope]) == 250, r[scope]
        cmds = sink_commands(vsink)
        assert rewritten in cmds, "the server did not get the rewritten line: %r" % cmds
        assert target not in cmds
        (m,) = vsink.wait_messages(1)
        if scope == "helo":
            assert m.x("X-Helo-Args") == ["rewritten.example"]
        if scope == "mail":
            assert m.mail_from == "<a@rewritten.example>"
        if scope == "rcpt":
            assert m.rcpts == ["<b@example.net>", "<c@rewritten.example>"]
        assert [(h.action, h.scope, h.orig, h.sent) for h in hits] == [("REWRITE", scope, target, rewritten)]
        assert rules_json == {"%s:1" % path: (scope, "REWRITE", 1)}

    elif action == "WARN":
        assert code_of(r[scope]) == 250
        assert target in sink_commands(vsink)
        vsink.wait_messages(1)
        assert [(h.action, h.scope, h.orig, h.text) for h in hits] == [
            ("WARN", scope, target, "a filter test warning")]
        assert ev["warnings"] >= 1
        assert rules_json == {"%s:1" % path: (scope, "WARN", 1)}

    elif action == "DISCONNECT":
        assert r[scope] == [reply.encode() + b"\r\n"], r[scope]
        assert r["closed"] and r["eof"] == b"", "the proxy did not close after the DISCONNECT reply"
        assert_never_reached_sink(vsink, target)
        time.sleep(0.2)
        assert vsink.count() == 0
        assert ev["reason"] == "rule_disconnect", ev
        assert t.close_fields()["reason"] == "rule_disconnect"
        assert [(h.action, h.scope, h.orig) for h in hits] == [("DISCONNECT", scope, target)]
        assert rules_json == {"%s:1" % path: (scope, "DISCONNECT", 1)}

    elif action == "PASS":
        assert not r["closed"]
        assert code_of(r[scope]) == 250
        assert target in sink_commands(vsink)
        assert code_of(r["end"]) == 250
        vsink.wait_messages(1)
        # PASS ended the evaluation: the REJECT after it was never tried.
        assert [(h.action, h.orig) for h in hits] == [("PASS", target)]
        assert rules_json == {"%s:1" % path: (scope, "PASS", 1)}


def test_command_scope_default_replies(tap_factory, vsink, workdir):
    """REJECT and DISCONNECT without a reply use 550 5.7.1 Rejected by policy and
    421 4.7.0 Closing connection."""
    tap, path = start_tap(tap_factory, workdir, vsink.port,
                          "command /^NOOP reject$/ REJECT\ncommand /^NOOP disconnect$/ DISCONNECT")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    assert c.cmd("NOOP reject") == [b"550 5.7.1 Rejected by policy\r\n"]
    assert c.cmd("NOOP disconnect") == [b"421 4.7.0 Closing connection\r\n"]
    assert c.read_until_eof(5) == b""
    assert tap.event()["reason"] == "rule_disconnect"


# --------------------------------------------------------------------------------------------
# header and body scopes

MSG_ACTIONS = {
    "header": ["REJECT", "REWRITE", "IGNORE", "PREPEND", "WARN", "DISCONNECT", "PASS"],
    "body": ["REJECT", "REWRITE", "IGNORE", "WARN", "DISCONNECT", "PASS"],
}
MSG_TARGET = {"header": ("X-Target: blocked", r"/^X-Target: blocked$/"),
              "body": ("blocked line blocked", r"/^blocked line/")}


@pytest.mark.limit(30)
@pytest.mark.parametrize("scope,action", [(s, a) for s in MSG_ACTIONS for a in MSG_ACTIONS[s]])
def test_message_scope_action(tap_factory, vsink, workdir, scope, action):
    target, pattern = MSG_TARGET[scope]
    reply = {"REJECT": "550 5.7.1 Filter test %s" % scope,
             "DISCONNECT": "421 4.7.1 Filter test %s" % scope}.get(action)
    expected = MSG.replace(b"\r\n", b"\n")
    if action == "REWRITE":
        rules = {"header": r"header /^(X-Target:) blocked$/ REWRITE $1 rewritten",
                 "body": r"body /blocked/g REWRITE rewritten"}[scope]
        expected = expected.replace({"header": b"X-Target: blocked", "body": b"blocked line blocked"}[scope],
                                    {"header": b"X-Target: rewritten", "body": b"rewritten line rewritten"}[scope])
        sent = {"header": "X-Target: rewritten", "body": "rewritten line rewritten"}[scope]
    elif action == "IGNORE":
        rules = "%s %s IGNORE" % (scope, pattern)
        expected = expected.replace(target.encode() + b"\n", b"")
    elif action == "PREPEND":
        rules = "%s %s PREPEND X-Inserted: yes" % (scope, pattern)
        expected = expected.replace(b"X-Target:", b"X-Inserted: yes\nX-Target:")
    elif action == "WARN":
        rules = "%s %s WARN a filter test warning" % (scope, pattern)
    elif action == "PASS":
        rules = "%s %s PASS\n%s /./ IGNORE" % (scope, pattern, scope)
        # Every other line of the scope is removed; the target stays.
        if scope == "header":
            expected = b"X-Target: blocked\n\n" + expected.split(b"\n\n", 1)[1]
        else:
            head = expected.split(b"\n\n", 1)[0]
            expected = head + b"\n\nblocked line blocked\n"
    else:
        rules = "%s %s %s %s" % (scope, pattern, action, reply)
    holds = action in ("REJECT", "DISCONNECT")
    tap, path = start_tap(tap_factory, workdir, vsink.port, rules)
    obs = message_session(tap.port)
    t = transcript(tap)
    ev = tap.event()
    hits = [h for h in hits_for(t, path) if h.orig == target]
    rules_json = event_rules(ev)
    assert code_of(obs["data"]) == 354

    held_events = [e for e in t.events() if e.startswith("holding the message")]
    if holds:
        # The message is held: the 354 is the proxy's own, DATA never reached the server.
        assert held_events, t.events()
        assert any(p.startswith("354 ") for p in t.proxy_lines()), t.proxy_lines()
    else:
        assert not held_events, "held a message no rule can refuse: %r" % held_events
        assert "DATA" in sink_commands(vsink)

    if action == "REJECT":
        assert obs["end"] == [reply.encode() + b"\r\n"], obs["end"]
        assert code_of(obs["quit"]) == 221
        time.sleep(0.3)
        assert vsink.count() == 0, "a refused message reached the server"
        cmds = sink_commands(vsink)
        assert "DATA" not in cmds and "." not in cmds, cmds
        assert "RSET" in cmds, "the proxy did not RSET the server's transaction: %r" % cmds
        assert "RSET" in t.upstream_lines(), "the proxy's RSET is not recorded as U:"
        (tx,) = ev["transactions"]
        assert tx["code"] == 550
        assert [(h.action, h.scope, h.text) for h in hits] == [("REJECT", scope, reply)]
        assert rules_json == {"%s:1" % path: (scope, "REJECT", 1)}
        assert ev["reason"] == "quit"
        return
    if action == "DISCONNECT":
        assert obs["end"] == [reply.encode() + b"\r\n"], obs["end"]
        assert obs["closed"], "the proxy did not close after the DISCONNECT reply"
        time.sleep(0.3)
        assert vsink.count() == 0, "a refused message reached the server"
        assert "DATA" not in sink_commands(vsink)
        assert ev["reason"] == "rule_disconnect"
        assert [(h.action, h.scope) for h in hits] == [("DISCONNECT", scope)]
        assert rules_json == {"%s:1" % path: (scope, "DISCONNECT", 1)}
        return

    assert code_of(obs["end"]) == 250, obs["end"]
    (m,) = vsink.wait_messages(1)
    assert m.content == expected, "delivered:\n%r\nexpected:\n%r" % (m.content, expected)
    if action == "REWRITE":
        assert [(h.action, h.scope, h.sent) for h in hits] == [("REWRITE", scope, sent)]
        assert rules_json == {"%s:1" % path: (scope, "REWRITE", 1)}
    elif action == "IGNORE":
        assert [(h.action, h.scope) for h in hits] == [("IGNORE", scope)]
    elif action == "PREPEND":
        assert [(h.action, h.scope, h.text) for h in hits] == [("PREPEND", scope, "X-Inserted: yes")]
        assert rules_json == {"%s:1" % path: (scope, "PREPEND", 1)}
    elif action == "WARN":
        assert [(h.action, h.scope, h.text) for h in hits] == [("WARN", scope, "a filter test warning")]
        assert ev["warnings"] >= 1
    elif action == "PASS":
        assert [(h.action, h.scope) for h in hits] == [("PASS", scope)]
        assert rules_json["%s:1" % path] == (scope, "PASS", 1)
        assert rules_json["%s:2" % path][1] == "IGNORE"
    # The transcript keeps what the client sent, whatever went upstream.
    assert target in t.client_lines()


def test_folded_header_is_one_logical_line(tap_factory, vsink, workdir):
    """A folded header is one line for the rules, its line break kept (so 'm' and \\s see it);
    a REWRITE with 's' can unfold it; IGNORE removes every physical line of it."""
    rules = "\n".join([
        r"header /^X-Folded: first\r\n\tsecond$/ WARN folded as one",
        r"header /^\tsecond$/m WARN continuation seen under m",
        r"header /^second/ WARN a continuation line alone: must never match",
        r"header /^(Subject:).*$/s REWRITE $1 unfolded",
        r"header /^X-Secret:/ IGNORE",
    ])
    content = (b"Subject: long\r\n subject\r\n\tcontinued\r\n"
               b"X-Folded: first\r\n\tsecond\r\n"
               b"X-Secret: one\r\n two\r\n"
               b"To: b@example.net\r\n"
               b"\r\n"
               b"body\r\n")
    tap, path = start_tap(tap_factory, workdir, vsink.port, rules)
    obs = message_session(tap.port, content)
    assert code_of(obs["end"]) == 250
    (m,) = vsink.wait_messages(1)
    assert m.content == (b"Subject: unfolded\n"
                         b"X-Folded: first\n\tsecond\n"
                         b"To: b@example.net\n"
                         b"\n"
                         b"body\n"), m.content
    hits = hits_for(transcript(tap), path)
    texts = [h.text for h in hits if h.action == "WARN"]
    assert "folded as one" in texts and "continuation seen under m" in texts, hits
    assert "a continuation line alone: must never match" not in texts


def test_body_lines_are_unstuffed_for_matching(tap_factory, vsink, workdir):
    """A body line "..x" on the wire is ".x" to the rules, and goes out stuffed again."""
    rules = "\n".join([r"body /^\.dotted line$/ REWRITE .dotted and seen",
                       r"body /^\.\.dotted/ WARN the rules saw the stuffing"])
    tap, path = start_tap(tap_factory, workdir, vsink.port, rules)
    obs = message_session(tap.port, b"Subject: dots\r\n\r\n.dotted line\r\n..\r\nend\r\n")
    assert code_of(obs["end"]) == 250
    (m,) = vsink.wait_messages(1)
    assert m.content == b"Subject: dots\n\n.dotted and seen\n..\nend\n"
    hits = hits_for(transcript(tap), path)
    assert [(h.action, h.orig) for h in hits] == [("REWRITE", ".dotted line")], hits


# --------------------------------------------------------------------------------------------
# banner, reply and capability scopes

def multiline_greeting(conn, line):
    conn.send("220-fake.example ESMTP\r\n220-Second banner line\r\n220 Third banner line\r\n")
    return True


REPLY_CASES = {
    # (scope, action): (rules, upstream, check(obs))
    ("banner", "REWRITE"): r"banner /^220 smtp-sink/ REWRITE 220 mx.example",
    ("banner", "IGNORE"): r"banner /Third banner/ IGNORE",
    ("banner", "WARN"): r"banner /smtp-sink/ WARN banner seen",
    ("banner", "PASS"): "banner /smtp-sink/ PASS\nbanner /smtp-sink/ REWRITE 220 not reached",
    ("reply", "REWRITE"): r"reply /^250 2\.1\.0 Ok$/ REWRITE 250 2.1.0 Sender fine",
    ("reply", "IGNORE"): r"reply /^250-AUTH / IGNORE",
    ("reply", "WARN"): r"reply /^250 2\.1\.0 Ok$/ WARN reply seen",
    ("reply", "PASS"): "reply /^250 2\\.1\\.0 Ok$/ PASS\nreply /^250 2\\.1\\.0 Ok$/ REWRITE 250 not reached",
    ("capability", "REWRITE"): r"capability /^AUTH .*$/ REWRITE AUTH PLAIN",
    ("capability", "IGNORE"): r"capability /^8BITMIME$/ IGNORE",
    ("capability", "WARN"): r"capability /^PIPELINING$/ WARN capability seen",
    ("capability", "PASS"): "capability /^DSN$/ PASS\ncapability /^DSN$/ IGNORE",
}

SINK_EHLO = [b"250-smtp-sink\r\n", b"250-PIPELINING\r\n", b"250-8BITMIME\r\n",
             b"250-AUTH PLAIN LOGIN\r\n", b"250-ENHANCEDSTATUSCODES\r\n", b"250-DSN\r\n", b"250 \r\n"]


@pytest.mark.limit(30)
@pytest.mark.parametrize("scope,action", list(REPLY_CASES))
def test_reply_scope_action(tap_factory, vsink, fake_server, workdir, scope, action):
    rules = REPLY_CASES[(scope, action)]
    if (scope, action) == ("banner", "IGNORE"):
        # smtp-sink's greeting has one line: a scripted server with three.
        srv = fake_server(SmtpServerScript(hooks={"GREETING": multiline_greeting}))
        port = srv.port
    else:
        srv = None
        port = vsink.port
    tap, path = start_tap(tap_factory, workdir, port, rules)
    obs = message_session(tap.port)
    t = transcript(tap)
    ev = tap.event()
    hits = hits_for(t, path)
    rules_json = event_rules(ev)
    assert code_of(obs["end"]) == 250, "the session broke: %r" % obs
    if srv is None:
        vsink.wait_messages(1)
    # The server's lines are recorded as the server sent them.
    if srv is None:
        assert "220 smtp-sink ESMTP" in t.server_lines()
        assert "250 2.1.0 Ok" in t.server_lines()

    key = (scope, action)
    if key == ("banner", "REWRITE"):
        assert obs["greeting"] == [b"220 mx.example ESMTP\r\n"]
        assert [(h.action, h.scope, h.orig, h.sent) for h in hits] == [
            ("REWRITE", "banner", "220 smtp-sink ESMTP", "220 mx.example ESMTP")]
    elif key == ("banner", "IGNORE"):
        assert obs["greeting"] == [b"220-fake.example ESMTP\r\n", b"220 Second banner line\r\n"], \
            "the line before the removed last one must become the last (\"220 \")"
        assert [(h.action, h.scope) for h in hits] == [("IGNORE", "banner")]
        srv.join()
        assert len(srv.conns[0].messages) == 1
    elif key == ("banner", "WARN"):
        assert obs["greeting"] == [b"220 smtp-sink ESMTP\r\n"]
        assert [(h.action, h.scope, h.text) for h in hits] == [("WARN", "banner", "banner seen")]
        assert ev["warnings"] >= 1
    elif key == ("banner", "PASS"):
        assert obs["greeting"] == [b"220 smtp-sink ESMTP\r\n"]
        assert [(h.action, h.scope) for h in hits] == [("PASS", "banner")]
    elif key == ("reply", "REWRITE"):
        assert obs["mail"] == [b"250 2.1.0 Sender fine\r\n"]
        assert [(h.action, h.scope, h.orig, h.sent) for h in hits] == [
            ("REWRITE", "reply", "250 2.1.0 Ok", "250 2.1.0 Sender fine")]
    elif key == ("reply", "IGNORE"):
        assert obs["ehlo"] == [l for l in SINK_EHLO if not l.startswith(b"250-AUTH")]
        assert [(h.action, h.scope, h.orig) for h in hits] == [("IGNORE", "reply", "250-AUTH PLAIN LOGIN")]
    elif key == ("reply", "WARN"):
        assert obs["mail"] == [b"250 2.1.0 Ok\r\n"]
        assert [(h.action, h.scope, h.text) for h in hits] == [("WARN", "reply", "reply seen")]
    elif key == ("reply", "PASS"):
        assert obs["mail"] == [b"250 2.1.0 Ok\r\n"]
        assert [(h.action, h.scope) for h in hits] == [("PASS", "reply")]
    elif key == ("capability", "REWRITE"):
        assert obs["ehlo"] == [l if not l.startswith(b"250-AUTH") else b"250-AUTH PLAIN\r\n"
                               for l in SINK_EHLO]
        # The rule sees the extension without its code; the line sent keeps "250-".
        assert [(h.action, h.scope, h.sent) for h in hits] == [("REWRITE", "capability", "250-AUTH PLAIN")] or \
            [(h.action, h.scope, h.sent) for h in hits] == [("REWRITE", "capability", "AUTH PLAIN")], hits
    elif key == ("capability", "IGNORE"):
        assert obs["ehlo"] == [l for l in SINK_EHLO if l != b"250-8BITMIME\r\n"]
        assert [(h.action, h.scope) for h in hits] == [("IGNORE", "capability")]
    elif key == ("capability", "WARN"):
        assert obs["ehlo"] == SINK_EHLO
        assert [(h.action, h.scope, h.text) for h in hits] == [("WARN", "capability", "capability seen")]
    elif key == ("capability", "PASS"):
        assert obs["ehlo"] == SINK_EHLO
        assert [(h.action, h.scope) for h in hits] == [("PASS", "capability")]
    assert rules_json["%s:1" % path] == (scope, action, 1), rules_json


@pytest.mark.limit(20)
def test_reply_never_left_without_a_line(tap_factory, vsink, workdir):
    """IGNORE of a reply's only line: recorded as a warning, the line is kept."""
    tap, path = start_tap(tap_factory, workdir, vsink.port,
                          "reply /^250 2\\.1\\.0 Ok$/ IGNORE\nbanner /./ IGNORE")
    obs = message_session(tap.port)
    assert obs["greeting"] == [b"220 smtp-sink ESMTP\r\n"]
    assert obs["mail"] == [b"250 2.1.0 Ok\r\n"]
    assert code_of(obs["end"]) == 250
    t = transcript(tap)
    warnings = [e for e in t.events() if e.startswith("warning")]
    assert len(warnings) >= 2, t.events()
    assert tap.event()["warnings"] >= 2


@pytest.mark.limit(30)
def test_scopes_see_only_their_lines(tap_factory, vsink, workdir):
    """One WARN /./ per scope: every hit is on a line of its scope, each scope got hits, and a
    capability rule never sees the first line of the EHLO reply nor its code."""
    scopes = ["helo", "mail", "rcpt", "command", "header", "body", "banner", "reply", "capability"]
    rules = "\n".join("%s /./ WARN" % s for s in scopes) + "\ncapability /smtp-sink|^250/ IGNORE"
    tap, path = start_tap(tap_factory, workdir, vsink.port, rules)
    obs = message_session(tap.port, rcpts=("b@example.net", "c@example.net"))
    assert code_of(obs["end"]) == 250
    assert obs["ehlo"] == SINK_EHLO, "the capability rule touched a line it must not see"
    t = transcript(tap)
    by = {}
    for h in hits_for(t, path):
        orig = h.orig
        if h.scope == "capability" and re.match(r"^250[- ]", orig):
            orig = orig[4:]  # the line as sent or as the rule saw it: either is fine
        by.setdefault(h.scope, []).append(orig)
    assert by["helo"] == ["EHLO client.example"]
    assert by["mail"] == ["MAIL FROM:<a@example.com>"]
    assert by["rcpt"] == ["RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>"]
    assert by["command"] == ["EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>",
                             "RCPT TO:<c@example.net>", "DATA", "QUIT"]
    assert by["header"] == ["From: a@example.com", "To: b@example.net", "Subject: filter test",
                            "X-Target: blocked", "X-Folded: first\\x0d\\x0a\tsecond"], by["header"]
    assert by["body"] == ["line one", "blocked line blocked", ".dotted line", "last line"]
    assert by["banner"] == ["220 smtp-sink ESMTP"]
    assert by["capability"] == ["PIPELINING", "8BITMIME", "AUTH PLAIN LOGIN", "XCLIENT NAME HELO",
                                "XFORWARD NAME ADDR PROTO HELO", "ENHANCEDSTATUSCODES", "DSN"], by["capability"]
    assert "220 smtp-sink ESMTP" in by["reply"] and "250-smtp-sink" in by["reply"]
    assert "250-DSN" in by["reply"] and "250 2.1.0 Ok" in by["reply"] and "221 Bye" in by["reply"]
    ev = tap.event()
    rj = event_rules(ev)
    assert rj["%s:2" % path] == ("mail", "WARN", 1)
    assert rj["%s:3" % path] == ("rcpt", "WARN", 2)


# --------------------------------------------------------------------------------------------
# Actions used outside their scopes are load errors

ALLOWED = {
    "REJECT": {"helo", "mail", "rcpt", "command", "header", "body"},
    "REWRITE": {"helo", "mail", "rcpt", "command", "header", "body", "banner", "reply", "capability"},
    "IGNORE": {"header", "body", "banner", "reply", "capability"},
    "PREPEND": {"header"},
    "WARN": {"helo", "mail", "rcpt", "command", "header", "body", "banner", "reply", "capability"},
    "DISCONNECT": {"helo", "mail", "rcpt", "command", "header", "body"},
    "PASS": {"helo", "mail", "rcpt", "command", "header", "body", "banner", "reply", "capability"},
}
ALL_SCOPES = ["helo", "mail", "rcpt", "command", "header", "body", "banner", "reply", "capability"]
TEXT = {"REJECT": " 550 5.7.1 No", "REWRITE": " x", "PREPEND": " X-A: b", "DISCONNECT": " 421 4.7.0 Bye",
        "WARN": "", "IGNORE": "", "PASS": ""}


@pytest.mark.limit(60)
def test_actions_outside_their_scopes_are_load_errors(smtptap_bin, workdir):
    bad, good = [], []
    for action, allowed in ALLOWED.items():
        for scope in ALL_SCOPES:
            line = "%s /x/ %s%s" % (scope, action, TEXT[action])
            (good if scope in allowed else bad).append((scope, action, line))
    path = write_rules(workdir, "\n".join(l for _, _, l in bad), "outside.rules")
    r = run_smtptap(smtptap_bin, ["--check-rules", path])
    assert r.returncode == 1
    assert r.stdout == b""
    errs = r.stderr.decode().splitlines()
    expected = []
    for i, (scope, action, line) in enumerate(bad, 1):
        expected.append("%s:%d:%d:" % (path, i, line.index(action) + 1))
    assert [e.split(" ", 1)[0] for e in errs] == expected, r.stderr.decode()
    for e, (scope, action, _) in zip(errs, bad):
        assert action.lower() in e.lower() and scope in e, e
    gpath = write_rules(workdir, "\n".join(l for _, _, l in good), "inside.rules")
    r = run_smtptap(smtptap_bin, ["--check-rules", gpath])
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "%d rules in 1 file OK\n" % len(good)


# --------------------------------------------------------------------------------------------
# The six sender policies of the README (tests/data/rules/policies.rules), end to end


def policies_tap(tap_factory, port):
    return tap_factory(port, "--rules", POLICIES)


@pytest.mark.limit(30)
def test_policy_only_senders_of_example_com(tap_factory, vsink):
    tap = policies_tap(tap_factory, vsink.port)
    line = rule_line(POLICIES, "Sender domain not permitted")
    r = swaks(tap.port, "--from", "x@other.example")
    assert r.returncode != 0, r.stdout.decode()
    assert "550 5.7.1 Sender domain not permitted" in r.stdout.decode()
    r = swaks(tap.port, "--from", "x@sub.example.com")
    assert r.returncode != 0 and b"550 5.7.1 Sender domain not permitted" in r.stdout
    r = swaks(tap.port, "--from", "Alice@EXAMPLE.COM")
    assert r.returncode == 0, r.stdout.decode()
    (m,) = vsink.wait_messages(1)
    assert m.mail_from == "<Alice@EXAMPLE.COM>"
    cmds = sink_commands(vsink)
    assert not [c for c in cmds if "other.example" in c or "sub.example.com" in c], cmds
    evs = tap.wait_events(3)
    refused = [e for e in evs if any(x["mail_code"] == 550 for x in e["transactions"])]
    assert len(refused) == 2
    for e in refused:
        assert event_rules(e)["%s:%d" % (POLICIES, line)] == ("sender", "REJECT", 1)


@pytest.mark.limit(30)
def test_policy_no_mail_to_competitor(tap_factory, vsink):
    tap = policies_tap(tap_factory, vsink.port)
    line = rule_line(POLICIES, "Recipient not permitted")
    r = swaks(tap.port, "--to", "b@example.net,Bob@Competitor.Example,c@example.net")
    out = r.stdout.decode()
    assert "550 5.7.1 Recipient not permitted" in out, out
    (m,) = vsink.wait_messages(1)
    assert m.rcpts == ["<b@example.net>", "<c@example.net>"]
    assert_never_reached_sink(vsink, "RCPT TO:<Bob@Competitor.Example>")
    ev = tap.event()
    (tx,) = ev["transactions"]
    assert [(x["to"], x["code"]) for x in tx["rcpt"]] == [
        ("<b@example.net>", 250), ("<Bob@Competitor.Example>", 550), ("<c@example.net>", 250)]
    assert event_rules(ev)["%s:%d" % (POLICIES, line)] == ("recipient", "REJECT", 1)


@pytest.mark.limit(30)
def test_policy_hide_starttls(tap_factory, fake_server):
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "STARTTLS", "8BITMIME")))
    tap = policies_tap(tap_factory, srv.port)
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    code, text = s.ehlo("client.example")
    assert code == 250
    assert not s.has_extn("starttls"), text
    assert s.has_extn("pipelining") and s.has_extn("8bitmime")
    assert s.sendmail("a@example.com", ["b@example.net"], b"Subject: hi\r\n\r\nhello\r\n") == {}
    s.quit()
    srv.join()
    assert len(srv.conns[0].messages) == 1
    t = transcript(tap)
    assert "250-STARTTLS" in t.server_lines()
    hit = [h for h in t.rule_hits() if h.scope == "capability"]
    assert [(h.action, h.orig) for h in hit] == [("IGNORE", "250-STARTTLS")] or \
        [(h.action, h.orig) for h in hit] == [("IGNORE", "STARTTLS")], hit


@pytest.mark.limit(30)
def test_policy_mark_external_mail(tap_factory, vsink):
    tap = policies_tap(tap_factory, vsink.port)
    r = swaks(tap.port, "--header", "Subject: quarterly numbers", "--body", "see attachment")
    assert r.returncode == 0, r.stdout.decode()
    (m,) = vsink.wait_messages(1)
    lines = m.content.split(b"\n")
    i = lines.index(b"Subject: quarterly numbers")
    assert lines[i - 1] == b"X-Policy: external", m.content
    assert lines.count(b"X-Policy: external") == 1
    # A message without a Subject is not marked.
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"From: a@example.com\r\n\r\nno subject here\r\n.\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    msgs = vsink.wait_messages(2)  # dump names are HHMMSS.random: not in arrival order
    assert b"From: a@example.com\n\nno subject here\n" in [m.content for m in msgs]


CONFIDENTIAL = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: plans\r\n\r\n"
                b"Hello,\r\nthis is CONFIDENTIAL, do not forward.\r\nBye\r\n")
HARMLESS = (b"From: a@example.com\r\nTo: c@example.net\r\nSubject: lunch\r\n\r\n"
            b"Hello,\r\nconfidentiality is a word, not the word.\r\n.leading dot\r\nBye\r\n")


@pytest.mark.limit(30)
def test_policy_refuse_confidential_bodies(tap_factory, vsink):
    """The held message REJECTed never reaches the sink; the next message in the same session
    is delivered (smtplib)."""
    tap = policies_tap(tap_factory, vsink.port)
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.example")
    with pytest.raises(smtplib.SMTPDataError) as ei:
        s.sendmail("a@example.com", ["b@example.net"], CONFIDENTIAL)
    assert ei.value.smtp_code == 550
    assert ei.value.smtp_error == b"5.7.1 Confidential content"
    assert s.sendmail("a@example.com", ["c@example.net"], HARMLESS) == {}
    s.quit()
    (m,) = vsink.wait_messages(1)
    time.sleep(0.3)
    assert vsink.count() == 1, "the refused message reached the sink"
    assert m.rcpts == ["<c@example.net>"]
    assert m.content == HARMLESS.replace(b"\r\n", b"\n").replace(
        b"Subject: lunch", b"X-Policy: external\nSubject: lunch")
    cmds = [x.upper() for x in sink_commands(vsink)]  # smtplib writes "mail FROM:"
    assert cmds.count("DATA") == 1, cmds
    first_rset = cmds.index("RSET")
    assert "DATA" not in cmds[:first_rset], "DATA of the refused message reached the server: %r" % cmds
    assert "RCPT TO:<B@EXAMPLE.NET>" in cmds[:first_rset]
    t = transcript(tap)
    assert t.upstream_lines()[:2] == ["RSET", "DATA"], t.upstream_lines()
    assert "held message refused: nothing sent upstream" in t.events()
    ev = tap.event()
    assert [x["code"] for x in ev["transactions"]] == [550, 250]
    assert ev["transactions"][0]["text"] == "5.7.1 Confidential content"
    line = rule_line(POLICIES, "Confidential content")
    assert event_rules(ev)["%s:%d" % (POLICIES, line)] == ("body", "REJECT", 1)


@pytest.mark.limit(30)
def test_policy_vrfy_expn_disabled(tap_factory, vsink):
    tap = policies_tap(tap_factory, vsink.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    for cmd in ("VRFY bob", "EXPN staff", "vrfy bob", "Expn staff", "VRFY"):
        assert c.cmd(cmd) == [b"502 5.5.1 Command disabled\r\n"], cmd
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    cmds = sink_commands(vsink)
    assert not [x for x in cmds if x.upper().startswith(("VRFY", "EXPN"))], cmds
    assert "NOOP" in cmds
    ev = tap.event()
    line = rule_line(POLICIES, "Command disabled")
    assert event_rules(ev) == {"%s:%d" % (POLICIES, line): ("command", "REJECT", 5)}


# --------------------------------------------------------------------------------------------
# Pipelining


PIPELINED_GROUP = (b"MAIL FROM:<a@example.com>\r\n"
                   b"RCPT TO:<b@example.net>\r\n"
                   b"RCPT TO:<bob@competitor.example>\r\n"
                   b"RCPT TO:<c@example.net>\r\n"
                   b"DATA\r\n")


@pytest.mark.limit(30)
@pytest.mark.parametrize("rules", ["rcpt-only", "policies"])
def test_pipelined_rcpt_reject_answered_in_order(tap_factory, vsink, workdir, rules):
    """MAIL, RCPT ok, RCPT rejected by a rule, RCPT ok, DATA in one write: 250, 250, 550, 250,
    354 in that order (with policies.rules the message is held: the 354 is the proxy's)."""
    if rules == "policies":
        tap = policies_tap(tap_factory, vsink.port)
    else:
        tap, _ = start_tap(tap_factory, workdir, vsink.port,
                           r"rcpt /@competitor\.example>/i REJECT 550 5.7.1 Recipient not permitted")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.send(PIPELINED_GROUP)
    replies = [c.reply() for _ in range(5)]
    assert [code_of(r) for r in replies] == [250, 250, 550, 250, 354], replies
    assert replies[2] == [b"550 5.7.1 Recipient not permitted\r\n"]
    time.sleep(0.2)
    assert nothing_pending(c), "more replies than commands"
    c.send(dot_stuff(b"Subject: pipelined\r\n\r\nhello\r\n") + b".\r\n")
    assert code_of(c.reply()) == 250
    c.expect("QUIT", 221)
    assert c.read_until_eof(5) == b""
    (m,) = vsink.wait_messages(1)
    assert m.rcpts == ["<b@example.net>", "<c@example.net>"]
    assert_never_reached_sink(vsink, "RCPT TO:<bob@competitor.example>")
    t = transcript(tap)
    answers = t.replies_to_client()
    i = answers.index(("S:", "250 2.1.0 Ok"))
    order = [text[:3] for _, text in answers[i:i + 5]]
    assert order == ["250", "250", "550", "250", "354"], answers
    assert answers[i + 2] == ("P:", "550 5.7.1 Recipient not permitted")
    (tx,) = tap.event()["transactions"]
    assert [x["code"] for x in tx["rcpt"]] == [250, 550, 250]


@pytest.mark.limit(30)
def test_pipelined_disconnect_stops_the_group(tap_factory, vsink, workdir):
    """A DISCONNECT in the middle of a pipelined group: the replies before it, its reply, then
    the close; nothing after it reaches the server."""
    tap, _ = start_tap(tap_factory, workdir, vsink.port, r"rcpt /competitor/ DISCONNECT")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.send(PIPELINED_GROUP)
    data = c.read_until_eof(5)
    assert data == (b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n421 4.7.0 Closing connection\r\n"), data
    cmds = sink_commands(vsink)
    assert "RCPT TO:<b@example.net>" in cmds
    assert "RCPT TO:<c@example.net>" not in cmds and "DATA" not in cmds, cmds
    assert tap.event()["reason"] == "rule_disconnect"


# --------------------------------------------------------------------------------------------
# The EHLO reply


@pytest.mark.limit(30)
def test_ignore_last_capability_swaks_sink(tap_factory, vsink, workdir):
    """smtp-sink's EHLO reply ends with an empty "250 " line: removing it makes "250-DSN" the
    last line ("250 DSN"); swaks reads the reply and sends its mail."""
    tap, path = start_tap(tap_factory, workdir, vsink.port, r"capability /^$/ IGNORE")
    r = swaks(tap.port)
    assert r.returncode == 0, r.stdout.decode()
    ehlo = ehlo_reply_from_swaks(r.stdout)
    assert ehlo == ["250-smtp-sink", "250-PIPELINING", "250-8BITMIME", "250-AUTH PLAIN LOGIN",
                    "250-ENHANCEDSTATUSCODES", "250 DSN"], ehlo
    vsink.wait_messages(1)
    hits = hits_for(transcript(tap), path)
    assert [(h.action, h.scope) for h in hits] == [("IGNORE", "capability")]


@pytest.mark.limit(30)
def test_ignore_last_capability_swaks_starttls(tap_factory, fake_server):
    """STARTTLS last in the server's EHLO reply, hidden by the policy: "250-8BITMIME" becomes
    "250 8BITMIME", swaks goes on (the message is held and delivered: U: DATA)."""
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "8BITMIME", "STARTTLS")))
    tap = policies_tap(tap_factory, srv.port)
    r = swaks(tap.port)
    assert r.returncode == 0, r.stdout.decode()
    assert ehlo_reply_from_swaks(r.stdout) == ["250-fake.example", "250-PIPELINING", "250 8BITMIME"]
    srv.join()
    (msg,) = srv.conns[0].messages
    assert b"X-Policy: external\r\nSubject: " in msg["data"]
    t = transcript(tap)
    assert "DATA" in t.upstream_lines()
    assert "STARTTLS" not in [c.upper() for c in t.client_lines()]


LONG = b"A" * 70000  # one reply line longer than the 64 KiB a reply is held to edit it

# name -> (the server's EHLO reply lines, what the client must get)
LONG_EHLO = {
    # The long line goes as it came, after the line kept back; the last line is removed
    # (XCLIENT, the proxy's own policy): an empty "250 " line of the proxy's ends the reply.
    "removed-after-long": ([b"250-fake.example", b"250-" + LONG, b"250 XCLIENT NAME ADDR"],
                           [b"250-fake.example", b"250-" + LONG, b"250 "]),
    # A long last line keeps its "250 ", even when its start was held before the reply grew.
    "long-last": ([b"250 " + LONG], [b"250 " + LONG]),
    "kept-after-long": ([b"250-fake.example", b"250-" + LONG, b"250-XCLIENT NAME", b"250-8BITMIME",
                         b"250 XFORWARD ADDR"],
                        [b"250-fake.example", b"250-" + LONG, b"250 8BITMIME"]),
}


@pytest.mark.limit(30)
@pytest.mark.parametrize("max_line", ["65536", "1024"])
@pytest.mark.parametrize("case", list(LONG_EHLO))
def test_long_ehlo_reply_always_ends(tap_factory, fake_server, case, max_line):
    """An EHLO reply over 64 KiB with a line longer than --max-line (relayed as it comes) is
    edited line by line: the client always gets a last "250 " line (PITFALLS 2), or it would
    wait for the rest of the reply for ever.  The transcript keeps the server's lines."""
    lines, want = LONG_EHLO[case]

    def ehlo(conn, line):
        conn.send(b"".join(l + b"\r\n" for l in lines))
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port, "--max-line", max_line)
    c = SmtpClient(tap.port, timeout=5)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert [l[:-2] for l in r] == want, [l[:40] for l in r]
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].commands[-2:] == [b"NOOP\r\n", b"QUIT\r\n"], srv.conns[0].commands
    t = transcript(tap)
    assert ("ehlo reply edited: added an empty last line" in t.events()) == (want[-1] == b"250 ")
    short = [l.decode() for l in lines if len(l) < 100]
    assert [l for l in t.server_lines() if l in short] == short, t.server_lines()


def padded_reply(code, first, middle, last, n):
    """A reply of n + 3 lines: first, middle, n filler lines, last (about 20 octets each)."""
    lines = [first, middle] + [b"X-PAD-%05d" % i for i in range(n)] + [last]
    return [b"%d%s%s" % (code, b"-" if i < len(lines) - 1 else b" ", l) for i, l in enumerate(lines)]


@pytest.mark.limit(30)
@pytest.mark.parametrize("n,auth", [(10, b"AUTH PLAIN LOGIN"), (300, b"AUTH PLAIN LOGIN"),
                                    (5000, b"AUTH PLAIN LOGIN"),
                                    (10, b"AUTH PLAIN " + b"X" * 70000)],
                         ids=["short", "300-lines", "over-64k", "long-auth-line"])
def test_capability_rule_sees_every_ehlo_reply(tap_factory, fake_server, workdir, n, auth):
    """A capability rule applies whatever the number of lines (there was a cap of 256: a
    longer reply skipped every rule) and beyond the 64 KiB a reply is held to edit it (edited
    line by line).  An AUTH line longer than --max-line can't meet the rules: removed all the
    same, with a warning.  client: no AUTH offered, the rest well formed, its AUTH refused
    "502 5.5.1".  server: never the AUTH."""
    reply = padded_reply(250, b"fake.example", auth, b"PIPELINING", n)

    def ehlo(conn, line):
        conn.send(b"".join(l + b"\r\n" for l in reply))
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap, path = start_tap(tap_factory, workdir, srv.port, "capability /^AUTH/ IGNORE")
    c = SmtpClient(tap.port, timeout=5)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert [l[:-2] for l in r] == [reply[0]] + reply[2:], [l[:40] for l in r if b"PAD" not in l]
    assert c.cmd("AUTH PLAIN AHVAcA==") == [b"502 5.5.1 AUTH not available\r\n"]
    c.expect("QUIT", 221)
    srv.join()
    assert not [l for l in srv.conns[0].commands if l.upper().startswith(b"AUTH")], \
        "the client's AUTH reached the server"
    t = transcript(tap)
    if len(auth) < 1000:
        hits = hits_for(t, path)
        assert [(h.action, h.scope) for h in hits] == [("IGNORE", "capability")], hits
    else:
        assert "warning a reply line over 65536 octets is too long for the rules: removed" \
            in t.events(), t.events()


@pytest.mark.limit(30)
@pytest.mark.parametrize("code", [214, 421])
@pytest.mark.parametrize("n", [300, 5000], ids=["300-lines", "over-64k"])
def test_reply_rule_sees_every_line_of_a_long_reply(tap_factory, fake_server, workdir, n, code):
    """A reply rule on a reply of more lines than there once was room for (256), and on one
    over 64 KiB: the line it removes is gone, the separators set again.  A 421 too (the
    client's last reply: the session ends)."""
    reply = padded_reply(code, b"help follows", b"internal.example is the relay", b"end", n)

    def help_(conn, line):
        conn.send(b"".join(l + b"\r\n" for l in reply))
        return True

    srv = fake_server(SmtpServerScript(hooks={"HELP": help_}))
    tap, path = start_tap(tap_factory, workdir, srv.port, r"reply /internal\.example/ IGNORE")
    c = SmtpClient(tap.port, timeout=5)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    r = c.cmd("HELP")
    assert [l[:-2] for l in r] == [reply[0]] + reply[2:], r[:3]
    if code == 421:
        assert c.read_until_eof(5) == b""
    else:
        c.expect("QUIT", 221)
    srv.join()
    hits = hits_for(transcript(tap), path)
    assert [(h.action, h.scope) for h in hits] == [("IGNORE", "reply")], hits


@pytest.mark.limit(30)
@pytest.mark.parametrize("setup,rules,long_line", [(False, True, False), (False, True, True),
                                                   (True, False, False), (True, True, False)],
                         ids=["banner-rule", "banner-rule-long-line", "setup-no-rules",
                              "setup-banner-rule"])
def test_greeting_over_64k(tap_factory, fake_server, workdir, setup, rules, long_line):
    """A greeting over 64 KiB meets the banner rules line by line; a line of it too long for
    them (over --max-line) is removed, with a warning.  While the upstream leg is set up first
    (--upstream-tls require) it is not the client's yet: it goes as it came when no rule would
    edit it, else the session ends with 421 4.4.2, the rule never skipped."""
    reply = padded_reply(220, b"fake.example", b"internal.example", b"ready", 5000)
    if long_line:
        reply[1] = b"220-internal.example " + b"X" * 70000

    def greeting(conn, line):
        conn.send(b"".join(l + b"\r\n" for l in reply))
        return True

    srv = fake_server(SmtpServerScript(hooks={"GREETING": greeting}))
    extra = ("--upstream-tls", "require") if setup else ()
    if rules:
        tap, _ = start_tap(tap_factory, workdir, srv.port, r"banner /internal\.example/ IGNORE",
                           *extra)
    else:
        tap = tap_factory(srv.port, *extra)
    c = SmtpClient(tap.port, timeout=5)
    r = c.reply()
    if not setup:
        assert [l[:-2] for l in r] == [reply[0]] + reply[2:], [l[:40] for l in r[:3]]
        c.expect("QUIT", 221)
        warned = "warning a reply line over 65536 octets is too long for the rules: removed"
        assert (warned in transcript(tap).events()) == long_line
    elif not rules:
        assert [l[:-2] for l in r] == reply, r[:3]
    else:
        assert len(r) == 1 and r[0].startswith(b"421 4.4.2 ") and r[0].endswith(
            b"Upstream protocol error\r\n"), r[:3]
        assert c.read_until_eof(5) == b""
        assert "upstream protocol error: reply too long" in transcript(tap).events()


@pytest.mark.limit(30)
@pytest.mark.parametrize("rules,removed", [("header /^X-A:/ WARN", True),
                                           ("body /x/ REJECT", True),
                                           ("command /^NOOP/ REJECT", False)])
def test_chunking_removed_while_message_rules_loaded(tap_factory, fake_server, workdir, rules, removed):
    srv = fake_server(SmtpServerScript(chunking=True))
    tap, _ = start_tap(tap_factory, workdir, srv.port, rules)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    c.expect("QUIT", 221)
    offered = any(l[4:].strip().upper() == b"CHUNKING" for l in r)
    assert offered != removed, r
    assert r[-1].startswith(b"250 ") and all(l.startswith(b"250-") for l in r[:-1]), r


# --------------------------------------------------------------------------------------------
# Held messages


@pytest.mark.limit(60)
@pytest.mark.parametrize("upstream", ["fake", "sink"])
def test_held_message_spills_to_file_delivered_identical(tap_factory, fake_server, vsink, workdir, upstream):
    """A held message beyond --hold-memory goes to an unlinked file in the log dir and is
    delivered byte-identical (dot-stuffed lines, 8-bit, NUL, long lines)."""
    lines = [b"From: a@example.com", b"To: b@example.net", b"Subject: big held message", b""]
    for i in range(12000):
        lines.append(b"line %06d " % i + (b"x" * (i % 97)))
        if i % 500 == 0:
            lines += [b".", b"..", b".leading dot %d" % i, b"8-bit \xc3\xa9\xff nul\x00here",
                      b"L" * 20000, b""]
    content = b"\r\n".join(lines) + b"\r\n"
    assert len(content) > 1024 * 1024
    if upstream == "fake":
        srv = fake_server(SmtpServerScript())
        port = srv.port
    else:
        port = vsink.port
    tap, _ = start_tap(tap_factory, workdir, port, r"body /\bconfidential\b/i REJECT",
                       "--hold-memory", "65536")
    c = SmtpClient(tap.port, timeout=20)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    wire = dot_stuff(content)
    c.send(wire)
    spilled = harness.wait_until(lambda: held_tmpfiles(tap.pid, tap.log_dir), 10,
                                 what="an unlinked temporary file of the proxy's in the log dir")
    assert spilled
    # Nothing of it went upstream yet.
    if upstream == "fake":
        assert b"DATA" not in [x.strip() for x in srv.conns[0].commands]
    else:
        assert "DATA" not in vsink.commands()  # the session is still open
    c.send(b".\r\n")
    r = c.reply()
    assert code_of(r) == 250, r
    c.expect("QUIT", 221)
    if upstream == "fake":
        srv.join(10)
        (msg,) = srv.conns[0].messages
        assert len(msg["data"]) == len(wire) + 3
        assert msg["data"] == wire + b".\r\n", "the held message changed on the way"
    else:
        (m,) = vsink.wait_messages(1, timeout=10)
        assert m.content == sink_form(wire)
    harness.wait_until(lambda: not held_tmpfiles(tap.pid, tap.log_dir), 5,
                       what="the temporary file closed")
    t = transcript(tap)
    # octets as sent (dot-stuffing included); size as RFC 1870 counts it (without).
    stuffing = sum(1 for line in wire.split(b"\r\n") if line.startswith(b"."))
    assert "held message sent upstream octets=%d size=%d" % (len(wire), len(wire) - stuffing) \
        in t.events(), [e for e in t.events() if e.startswith("held")]
    # Only transcripts (and their date directories) are in the log dir.
    for root, dirs, files in os.walk(tap.log_dir):
        for f in files:
            assert f.endswith(".log") or f == "events.jsonl", os.path.join(root, f)


@pytest.mark.limit(30)
@pytest.mark.parametrize("mode", ["stream", "hold"])
@pytest.mark.parametrize("upstream", ["fake", "sink"])
def test_rewrite_to_a_lone_dot_does_not_end_the_message(tap_factory, fake_server, vsink, workdir,
                                                        mode, upstream):
    rules = "body /^END$/ REWRITE .\nheader /^X-Dot:.*$/ REWRITE ."
    if mode == "hold":
        rules += "\nbody /never matches this/ REJECT"
    if upstream == "fake":
        srv = fake_server(SmtpServerScript())
        port = srv.port
    else:
        port = vsink.port
    tap, path = start_tap(tap_factory, workdir, port, rules)
    content = (b"Subject: dots\r\nX-Dot: becomes a dot\r\n\r\nbefore\r\nEND\r\n"
               b"after the dot\r\nQUIT\r\nlast line\r\n")
    obs = message_session(tap.port, content)
    assert code_of(obs["end"]) == 250, obs
    assert code_of(obs["quit"]) == 221
    expected_wire = (b"Subject: dots\r\n..\r\n\r\nbefore\r\n..\r\n"
                     b"after the dot\r\nQUIT\r\nlast line\r\n.\r\n")
    if upstream == "fake":
        srv.join()
        conn = srv.conns[0]
        assert [m["data"] for m in conn.messages] == [expected_wire]
        assert [x.rstrip(b"\r\n") for x in conn.commands] == [
            b"EHLO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>",
            b"DATA", b"QUIT"], conn.commands
    else:
        (m,) = vsink.wait_messages(1)
        assert m.content == b"Subject: dots\n.\n\nbefore\n.\nafter the dot\nQUIT\nlast line\n"
        cmds = sink_commands(vsink)
        assert cmds.count(".") == 1 and "after the dot" not in cmds, cmds


@pytest.mark.limit(30)
def test_held_message_over_server_size_gets_552(tap_factory, fake_server):
    """The server announces SIZE 1000 (smtp-sink cannot): a held message beyond it is answered
    552 5.3.4 and nothing goes upstream; the next, smaller one is delivered."""
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "SIZE 1000", "8BITMIME")))
    tap = policies_tap(tap_factory, srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert b"250-SIZE 1000\r\n" in r, r
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    big = b"Subject: big\r\n\r\n" + b"".join(b"line %04d of a message too big\r\n" % i for i in range(100))
    c.send(big + b".\r\n")
    r = c.reply()
    assert code_of(r) == 552 and r[-1].startswith(b"552 5.3.4"), r
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<c@example.net>", 250)
    c.expect("DATA", 354)
    small = b"Subject: small\r\n\r\nfits\r\n"
    c.send(small + b".\r\n")
    assert code_of(c.reply()) == 250
    c.expect("QUIT", 221)
    srv.join()
    conn = srv.conns[0]
    cmds = [x.rstrip(b"\r\n") for x in conn.commands]
    assert cmds.count(b"DATA") == 1, cmds
    assert cmds.index(b"RSET") < cmds.index(b"DATA"), cmds
    assert [m["data"] for m in conn.messages] == [b"X-Policy: external\r\n" + small + b".\r\n"]
    ev = tap.event()
    assert [x["code"] for x in ev["transactions"]] == [552, 250]


@pytest.mark.limit(30)
def test_held_data_without_accepted_recipient_goes_to_server(tap_factory, fake_server, workdir):
    """With messages held, DATA after no accepted recipient (one refused by the server, one
    by a rule) is the server's to answer: its error reaches the client, no 354 of ours."""
    srv = fake_server(SmtpServerScript(rcpt_code=lambda addr: 550 if "nobody" in addr else 250))
    tap = policies_tap(tap_factory, srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    assert code_of(c.cmd("RCPT TO:<nobody@example.net>")) == 550
    assert c.cmd("RCPT TO:<x@competitor.example>") == [b"550 5.7.1 Recipient not permitted\r\n"]
    r = c.cmd("DATA")
    assert r == [b"554 5.5.1 No valid recipients\r\n"], r
    c.expect("RSET", 250)
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert b"DATA" in cmds and b"RCPT TO:<x@competitor.example>" not in cmds
    t = transcript(tap)
    assert not [p for p in t.proxy_lines() if p.startswith("354")]


@pytest.mark.limit(30)
def test_held_message_accepted_goes_upstream_as_data(tap_factory, fake_server):
    """An accepted held message: "U: DATA" upstream, the message, the server's final reply to
    the client (its own text), the session goes on."""
    srv = fake_server(SmtpServerScript())
    tap = policies_tap(tap_factory, srv.port)
    obs = message_session(tap.port, b"Subject: fine\r\n\r\n.hello\r\n", quit=False)
    assert obs["end"] == [b"250 2.0.0 Ok: queued as FAKE1\r\n"]
    c = obs["client"]
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    srv.join()
    (msg,) = srv.conns[0].messages
    assert msg["data"] == b"X-Policy: external\r\nSubject: fine\r\n\r\n..hello\r\n.\r\n"
    t = transcript(tap)
    assert t.upstream_lines() == ["DATA"]
    assert "holding the message: rules may refuse it at its end" in t.events()
    ev = tap.event()
    assert ev["transactions"][0]["code"] == 250
    assert ev["transactions"][0]["text"] == "2.0.0 Ok: queued as FAKE1"


# --------------------------------------------------------------------------------------------
# AUTH


@pytest.mark.limit(30)
def test_sasl_lines_never_meet_a_rule(tap_factory, fake_server, workdir):
    """Base64 answers to a 334 look like anything: no command rule sees them."""
    srv = fake_server(SmtpServerScript(auth={"alice": "s3cret-pw"}))
    tap, path = start_tap(tap_factory, workdir, srv.port,
                          "command /^[A-Za-z0-9+\\/=]{8,}$/ REJECT 550 5.7.1 Looks like base64\n"
                          "command /./ WARN")
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.example")
    s.user, s.password = "alice", "s3cret-pw"
    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235
    s.quit()
    t = transcript(tap)
    for h in hits_for(t, path):
        assert h.action == "WARN", h
        assert "YWxpY2U" not in h.orig and "czNjcmV0" not in h.orig, h
    assert "s3cret" not in t.text and "czNjcmV0LXB3" not in t.text


@pytest.mark.limit(30)
def test_auth_command_is_a_command(tap_factory, fake_server, workdir):
    """The AUTH command line itself is a client command: a command rule can refuse it (only
    the lines answering a 334 are out of the rules' reach); no secret is recorded."""
    srv = fake_server(SmtpServerScript(auth={"alice": "s3cret-pw"}))
    tap, path = start_tap(tap_factory, workdir, srv.port,
                          r"command /^AUTH\b/i REJECT 503 5.7.0 No authentication here")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    initial = harness.b64(b"\0alice\0s3cret-pw")
    r = c.cmd("AUTH PLAIN " + initial)
    assert r == [b"503 5.7.0 No authentication here\r\n"], r
    r = c.cmd("AUTH LOGIN")
    assert r == [b"503 5.7.0 No authentication here\r\n"], r
    c.expect("QUIT", 221)
    srv.join()
    assert not [x for x in srv.conns[0].commands if x.upper().startswith(b"AUTH")], srv.conns[0].commands
    t = transcript(tap)
    assert initial not in t.text and "s3cret" not in t.text
    assert initial not in b"\n".join(tap.event_lines()).decode()


# --------------------------------------------------------------------------------------------
# Reloading the rules on SIGHUP


def greeted(port):
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    return c


@pytest.mark.limit(40)
def test_sighup_broken_file_keeps_old_rules_valid_file_applies(tap_factory, vsink, workdir, smtptap_bin):
    path = write_rules(workdir, "command /^NOOP/ REJECT 550 5.7.1 old rules")
    tap = tap_factory(vsink.port, "--rules", path)
    before = greeted(tap.port)  # a session that starts before any reload
    assert before.cmd("NOOP") == [b"550 5.7.1 old rules\r\n"]

    # A broken file: the old rules stay, every error is logged.
    broken = "command /^NOOP/ REJECT 550 5.7.1 new rules\ncommand /(/ WARN\nbogus /x/ WARN"
    write_rules(workdir, broken)
    expect = run_smtptap(smtptap_bin, ["--check-rules", path]).stderr.decode().splitlines()
    assert len(expect) == 2, expect
    tap.signal(signal.SIGHUP)
    for line in expect:
        wait_stderr(tap, "rules: " + line)
    time.sleep(0.2)
    assert tap.alive()
    c = greeted(tap.port)
    assert c.cmd("NOOP") == [b"550 5.7.1 old rules\r\n"], "a broken reload replaced the rules"
    c.expect("QUIT", 221)

    # A file gone: the same.
    os.unlink(path)
    tap.signal(signal.SIGHUP)
    wait_stderr(tap, "rules: %s:0:0: " % path)
    c = greeted(tap.port)
    assert c.cmd("NOOP") == [b"550 5.7.1 old rules\r\n"], "a failed reload replaced the rules"
    c.expect("QUIT", 221)

    # A valid file: sessions that start afterwards get it, running ones keep theirs.
    write_rules(workdir, "command /^NOOP/ REJECT 550 5.7.1 new rules\ncommand /^RSET/ WARN")
    tap.signal(signal.SIGHUP)
    wait_stderr(tap, "rules reloaded")
    c = greeted(tap.port)
    assert c.cmd("NOOP") == [b"550 5.7.1 new rules\r\n"]
    c.expect("QUIT", 221)
    assert before.cmd("NOOP") == [b"550 5.7.1 old rules\r\n"], "a running session changed rules"
    before.expect("QUIT", 221)
    evs = tap.wait_events(4)
    assert all(e["reason"] == "quit" for e in evs)


@pytest.mark.limit(20)
def test_start_with_bad_rules_fails(smtptap_bin, workdir):
    port = harness.free_port()
    p = run_smtptap(smtptap_bin, ["--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:1",
                                  "--log-dir", os.path.join(workdir, "logs"), "--rules", POLICIES,
                                  "--rules", BAD], timeout=10)
    assert p.returncode != 0
    expect = run_smtptap(smtptap_bin, ["--check-rules", BAD]).stderr.decode().splitlines()
    err = p.stderr.decode()
    for line in expect:
        assert line in err, err
    assert not harness.is_listening(port)


# --------------------------------------------------------------------------------------------
# Regex cost (issue 13 item 5, issue 17 item 5)

NESTED = r"mail /^MAIL FROM:<(\w+\.?)+@example\.com>$/i PASS"
# Almost matches: every way of splitting the a's among the group's repeats is tried.
HOSTILE_MAIL = "MAIL FROM:<" + "a" * 40 + "!@example.com>"


@pytest.mark.limit(30)
def test_match_limit_hit_is_a_temporary_failure(tap_factory, vsink, workdir):
    """A line that makes a rule hit PCRE2's match limit is answered 451 4.3.0, recorded as a
    warning naming the rule and logged; it never reaches the server (an allow-list rule must not
    fail open), and the next lines go on."""
    tap, path = start_tap(tap_factory, workdir, vsink.port, NESTED + "\nmail !/example\\.com>$/ REJECT")
    c = SmtpClient(tap.port)
    c.reply()
    assert code_of(c.cmd("EHLO client.example")) == 250
    for _ in range(3):
        reply = c.cmd(HOSTILE_MAIL)
        assert reply[-1].startswith(b"451 4.3.0 "), reply
    assert code_of(c.cmd("MAIL FROM:<first.last@example.com>")) == 250
    assert code_of(c.cmd("QUIT")) == 221
    c.close()
    t = transcript(tap)
    failed = [h for h in hits_for(t, path) if h.failed]
    assert len(failed) == 3 and all(h.line == 1 for h in failed), t.rule_hits()
    warnings = [e for e in t.events() if e.startswith("warning rule %s:1 " % path)]
    assert len(warnings) == 3 and "match limit" in warnings[0], t.events()
    assert ("P:", "451 4.3.0 Temporary failure in rule evaluation, try again later") in \
        t.replies_to_client()
    assert_never_reached_sink(vsink, HOSTILE_MAIL)
    wait_stderr(tap, "could not be evaluated")
    log = tap.stderr()
    assert "%s:1" % path in log and "match limit" in log, log
    assert log.count("could not be evaluated") == 1, log  # once per session
    ev = tap.event()
    assert ev["warnings"] >= 3, ev


@pytest.mark.limit(30)
def test_header_rewrite_stays_one_header_field(tap_factory, fake_server, workdir):
    """A header REWRITE that empties one physical line of a folded header, or leaves one without
    its leading white space: the header stays one field.  The empty line once went out as it
    was, ending the header section there, so the later headers reached the server as body,
    unseen by the body rules ("X-Note: confidential" passed a body REJECT rule that way)."""
    srv = fake_server(SmtpServerScript())
    tap, path = start_tap(tap_factory, workdir, srv.port,
                          'header /^\\s+by internal\\.example.*$/m REWRITE ""\n'
                          'header /^\\s+(via .*)$/m REWRITE "$1"')
    c = SmtpClient(tap.port)
    c.reply()
    for cmd in ("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>"):
        assert code_of(c.cmd(cmd)) == 250
    assert code_of(c.cmd("DATA")) == 354
    c.send(b"Received: from a.example\r\n\tby internal.example (Postfix)\r\n\tfor <b@example.net>\r\n"
           b"X-Relay: one\r\n\tvia relay.example\r\n"
           b"X-Note: confidential\r\n\r\nhello\r\n.\r\n")
    assert code_of(c.reply()) == 250
    assert code_of(c.cmd("QUIT")) == 221
    c.close()
    srv.join()
    (m,) = [m for conn in srv.conns for m in conn.messages]
    assert m["data"] == (b"Received: from a.example\r\n\tfor <b@example.net>\r\n"
                         b"X-Relay: one\r\n via relay.example\r\n"
                         b"X-Note: confidential\r\n\r\nhello\r\n.\r\n"), m["data"]
    t = transcript(tap)
    assert sum(e.startswith("warning a rewritten header kept as one field") for e in t.events()) == 2


@pytest.mark.limit(30)
def test_rewrite_that_meets_the_match_limit_fails_closed(tap_factory, vsink, workdir):
    """A /g REWRITE whose later match meets PCRE2's match limit: the line is not sent on
    unrewritten (it once was, with "secret-bravo" in clear and the message delivered, while a
    plain match at the limit answers 451): the message is refused 451 4.3.0 and never
    delivered, and the rule is recorded as failed."""
    tap, path = start_tap(tap_factory, workdir, vsink.port,
                          'body /secret-\\w+|(x+x+)+y/g REWRITE "[redacted]"')
    c = SmtpClient(tap.port)
    c.reply()
    for cmd in ("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>"):
        assert code_of(c.cmd(cmd)) == 250
    assert code_of(c.cmd("DATA")) == 354
    c.send(b"Subject: t\r\n\r\nfine secret-alpha here\r\nleak secret-bravo " + b"x" * 40 +
           b"\r\n.\r\n")
    r = c.reply()
    assert r[-1].startswith(b"451 4.3.0 "), r
    c.close()
    t = transcript(tap)
    failed = [h for h in hits_for(t, path) if h.failed]
    assert len(failed) == 1, t.rule_hits()
    assert vsink.count() == 0


@pytest.mark.limit(30)
def test_utf_verb_in_a_pattern_takes_invalid_utf8_as_the_u_flag_does(tap_factory, vsink, workdir):
    """"(*UTF)" written in a pattern instead of the u flag: a Latin-1 body line (not valid
    UTF-8) is not a rule failure (it once answered 451 to every such message, WARN rules
    included); the rule still matches the UTF-8 text it was written for."""
    tap, path = start_tap(tap_factory, workdir, vsink.port,
                          "body /(*UTF)caf\\x{e9} secret/ WARN utf8 secret")
    for line, warned in ((b"caf\xe9 secret, in Latin-1", False),
                         (b"caf\xc3\xa9 secret, in UTF-8", True)):
        c = SmtpClient(tap.port)
        c.reply()
        for cmd in ("EHLO client.example", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>"):
            assert code_of(c.cmd(cmd)) == 250
        assert code_of(c.cmd("DATA")) == 354
        c.send(b"Subject: t\r\n\r\n" + line + b"\r\n.\r\n")
        assert code_of(c.reply()) == 250, line
        assert code_of(c.cmd("QUIT")) == 221
        c.close()
    t = tap.wait_transcripts(2, cls=filter_peers.Transcript)
    hits = [h for tr in t for h in hits_for(tr, path)]
    assert [(h.failed, h.orig) for h in hits] == [(False, "café secret, in UTF-8")], hits
    assert vsink.count() == 2


@pytest.mark.limit(20)
def test_check_rules_warns_of_nested_quantifiers(smtptap_bin, workdir):
    path = write_rules(workdir, "\n".join([
        NESTED,
        r"mail /^MAIL FROM:<(\w++\.?)+@x>/ PASS",  # possessive: no backtracking
        r"mail /(?>a+)+b/ PASS",  # atomic
        r"mail /(a[+*]b)+c/ PASS",  # quantifier characters in a class
        r"rcpt /(a{2,}b)*c/ PASS",
        r"rcpt /(a{2,3})+/ PASS",  # bounded inside
    ]), "nested.rules")
    r = run_smtptap(smtptap_bin, ["--check-rules", path])
    assert (r.returncode, r.stdout.decode()) == (0, "6 rules in 1 file OK\n"), r
    lines = r.stderr.decode().splitlines()
    assert [l.split(": warning: ")[0] for l in lines] == ["%s:1:19" % path, "%s:5:7" % path], lines
    assert all("nested quantifier" in l for l in lines), lines


# --------------------------------------------------------------------------------------------
# --check-rules


BAD_ERRORS = [
    "{f}:2:10: missing closing parenthesis",
    "{f}:3:12: REJECT is not allowed in scope banner",
    "{f}:4:1: unknown scope 'bogus'",
    "{f}:5:17: reply must start with a 4xx or 5xx code and a space",
    "{f}:6:21: enhanced status code class 4 does not match reply code 5xx",
    "{f}:7:11: unknown flag 'q' (flags are i x s m u g)",
    "{f}:8:20: REWRITE: no group 2 in the pattern",
]


@pytest.mark.limit(20)
def test_check_rules_bad_file(smtptap_bin):
    r = run_smtptap(smtptap_bin, ["--check-rules", BAD])
    assert r.returncode == 1
    assert r.stdout == b""
    assert r.stderr.decode().splitlines() == [e.format(f=BAD) for e in BAD_ERRORS]
    # Relative to the working directory: the name as given.
    r = run_smtptap(smtptap_bin, ["--check-rules", "bad.rules"], cwd=os.path.dirname(BAD))
    assert r.returncode == 1
    assert r.stderr.decode().splitlines() == [e.format(f="bad.rules") for e in BAD_ERRORS]


@pytest.mark.limit(20)
def test_check_rules_good_files(smtptap_bin, workdir):
    r = run_smtptap(smtptap_bin, ["--check-rules", POLICIES])
    assert (r.returncode, r.stdout.decode(), r.stderr) == (0, "7 rules in 1 file OK\n", b"")
    other = write_rules(workdir, "# just a comment\n\n   \t\n  # indented comment\nbody /a\\/b/ WARN",
                        "other.rules")
    r = run_smtptap(smtptap_bin, ["--check-rules", POLICIES, other])
    assert (r.returncode, r.stdout.decode(), r.stderr) == (0, "8 rules in 2 files OK\n", b"")
    empty = write_rules(workdir, "# nothing\n", "empty.rules")
    r = run_smtptap(smtptap_bin, ["--check-rules", empty])
    assert r.returncode == 0 and re.fullmatch(r"0 rules in 1 files? OK\n", r.stdout.decode()), r


@pytest.mark.limit(20)
def test_check_rules_every_file_reported(smtptap_bin, workdir):
    """Errors of every file, in order; a good file among bad ones changes nothing; a missing
    file is an error too."""
    second = write_rules(workdir, "mail /ok/ WARN\nrcpt /x/ PREPEND X-A: b", "second.rules")
    missing = os.path.join(workdir, "missing.rules")
    r = run_smtptap(smtptap_bin, ["--check-rules", BAD, POLICIES, second, missing])
    assert r.returncode == 1
    assert r.stdout == b""
    lines = r.stderr.decode().splitlines()
    assert lines[:7] == [e.format(f=BAD) for e in BAD_ERRORS]
    assert lines[7] == "%s:2:10: PREPEND is not allowed in scope rcpt" % second, lines
    assert lines[8].startswith(missing + ":0:0: "), lines
    assert len(lines) == 9, lines


# --------------------------------------------------------------------------------------------
# --test-rules on transcripts the proxy recorded


def record_policy_session(port):
    """A session that meets every policy of policies.rules, through the proxy."""
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.cmd("VRFY bob")
    c.cmd("MAIL FROM:<x@other.example>")
    c.expect("RSET", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.cmd("RCPT TO:<y@competitor.example>")
    c.expect("DATA", 354)
    c.send(dot_stuff(CONFIDENTIAL) + b".\r\n")
    c.reply()
    c.expect("QUIT", 221)


@pytest.mark.limit(30)
@pytest.mark.parametrize("recorded_with", ["no rules", "policies"])
def test_test_rules_on_a_recorded_transcript(tap_factory, fake_server, smtptap_bin, recorded_with):
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "8BITMIME", "STARTTLS")))
    tap = tap_factory(srv.port, *([] if recorded_with == "no rules" else ["--rules", POLICIES]))
    record_policy_session(tap.port)
    t = transcript(tap)
    r = run_smtptap(smtptap_bin, ["--test-rules", POLICIES, "--transcript", t.path])
    out = r.stdout.decode()
    assert r.returncode == 0, "exit %d\nstdout:\n%s\nstderr:\n%s" % (r.returncode, out, r.stderr.decode())
    blocks = trial_blocks(out)

    def hits_on(text):
        found = [hits for line, hits in blocks if line.endswith(text)]
        assert found, "no rule shown acting on %r:\n%s" % (text, out)
        return found[0]

    def shows(text, needle, action):
        line = rule_line(POLICIES, needle)
        hits = hits_on(text)
        assert any("%s:%d" % (POLICIES, line) in h and action in h for h in hits), \
            "%r: expected rule %d %s, got %r" % (text, line, action, hits)

    shows("VRFY bob", "Command disabled", "REJECT")
    shows("MAIL FROM:<x@other.example>", "Sender domain not permitted", "REJECT")
    shows("RCPT TO:<y@competitor.example>", "Recipient not permitted", "REJECT")
    shows("STARTTLS", "STARTTLS", "IGNORE")
    shows("Subject: plans", "X-Policy", "PREPEND")
    shows("this is CONFIDENTIAL, do not forward.", "Confidential content", "REJECT")
    for harmless in ("MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>", "Hello,", "250-8BITMIME"):
        assert not [l for l, _ in blocks if l.endswith(harmless)], "%r shown as hit:\n%s" % (harmless, out)


@pytest.mark.limit(30)
@pytest.mark.parametrize("space", ["\t", "\x0b", "\x0c"], ids=["tab", "vt", "ff"])
def test_test_rules_splits_the_verb_as_the_proxy(tap_factory, vsink, workdir, smtptap_bin, space):
    """Issue 15: --test-rules picks a command's verb with the proxy's parser (any white space
    ends it), so a line the proxy rejected is shown as a hit, not as no hit."""
    tap, path = start_tap(tap_factory, workdir, vsink.port, "mail /evil/ REJECT")
    c = greeted(tap.port)
    line = "MAIL%sFROM:<a@evil.example>" % space
    assert code_of(c.cmd(line)) == 550  # the proxy's parser: a MAIL command, rule hit
    c.expect("QUIT", 221)
    t = transcript(tap)
    r = run_smtptap(smtptap_bin, ["--test-rules", path, "--transcript", t.path])
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    blocks = trial_blocks(out)
    hit = [hits for l, hits in blocks if "MAIL" in l and "evil.example" in l]
    assert hit, "the proxy rejected %r, --test-rules shows no hit:\n%s" % (line, out)
    assert any("%s:1: mail REJECT" % path in h for h in hit[0]), out
    assert "1 rule hit" in out, out


def trial_hit_lines(out):
    """The transcript lines --test-rules shows a rule acting on, without "FILE:LINE: C: "."""
    lines = [re.match(r".*?:\d+: [CS]: (.*)$", line) for line, hits in trial_blocks(out) if hits]
    return [m.group(1) for m in lines if m]


def live_hit_lines(t):
    """The lines the live proxy's rules acted on, from its "* rule" records."""
    return [h.orig for h in t.rule_hits()]


# Pipelined with the BDAT commands: a chunk cut mid-line (its rest is the next chunk's "C+"),
# lines that read as commands (VRFY, a rule hit if they were; DATA, MAIL, whose replies would
# be awaited) and a bare LF.
BDAT_TRIAL_CHUNK1 = b"Subject: t\r\n\r\nVRFY root\r\nDATA\nMAIL FROM:<c@example.org>\r\nVRFY ha"
BDAT_TRIAL_CHUNK2 = b"lf a line\r\nVRFY again\r\n"


@pytest.mark.limit(60)
def test_test_rules_skips_bdat_content(tap_factory, postfix, workdir, smtptap_bin):
    """BDAT content is octets, not commands, to the proxy: --test-rules shows no command rule
    on it, and still sees the commands after it (the VRFY the proxy refused)."""
    pf, psink = postfix
    tap, path = start_tap(tap_factory, workdir, pf.port,
                          "command /^VRFY\\b/i REJECT 502 5.5.1 Command disabled\n"
                          "command /^(DATA|MAIL)\\b/i WARN\n")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    assert b"250 CHUNKING\r\n" in c.cmd("EHLO client.example")
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
           b"BDAT %d\r\n" % len(BDAT_TRIAL_CHUNK1) + BDAT_TRIAL_CHUNK1 +
           b"BDAT %d LAST\r\n" % len(BDAT_TRIAL_CHUNK2) + BDAT_TRIAL_CHUNK2)
    assert [code_of(c.reply()) for _ in range(4)] == [250] * 4
    assert code_of(c.cmd("VRFY bob")) == 502
    c.expect("QUIT", 221)
    (m,) = psink.wait_messages(1, timeout=10)
    assert b"VRFY root" in m.content and b"VRFY again" in m.content
    t = transcript(tap)
    assert "C+ lf a line" in t.text, "the chunk cut mid-line is not what this test is about:\n%s" % t
    live = live_hit_lines(t)
    assert live == ["MAIL FROM:<a@example.com>", "VRFY bob"], t.text
    r = run_smtptap(smtptap_bin, ["--test-rules", path, "--transcript", t.path])
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert trial_hit_lines(out) == live, out
    assert "2 rule hits" in out, out


@pytest.mark.limit(40)
def test_test_rules_skips_commands_the_proxy_answers_itself(tap_factory, sink, workdir,
                                                            smtptap_bin):
    """A client's XCLIENT (550), a command with a NUL (500) and an AUTH after a capability
    rule removed AUTH (502) are answered by the proxy before any rule: --test-rules shows no
    rule on them either, only on the commands the rules saw."""
    tap, path = start_tap(tap_factory, workdir, sink.port,
                          "capability /^AUTH\\b/i IGNORE\n"
                          "command /./ WARN\n")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert code_of(r) == 250 and not [l for l in r if l[4:8].upper() == b"AUTH"], r
    assert code_of(c.cmd("XCLIENT ADDR=192.0.2.1")) == 550
    assert code_of(c.cmd(b"NOOP\x00 junk")) == 500
    assert code_of(c.cmd("AUTH PLAIN AGFAYg==")) == 502
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    t = transcript(tap)
    assert "C: XCLIENT ADDR=192.0.2.1" in t.text and "C: NOOP\\x00 junk" in t.text, t.text
    live = live_hit_lines(t)
    assert [l for l in live if not l.startswith("250")] == ["EHLO client.example", "NOOP", "QUIT"], t.text
    r = run_smtptap(smtptap_bin, ["--test-rules", path, "--transcript", t.path])
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert trial_hit_lines(out) == live, out


@pytest.mark.limit(40)
def test_test_rules_reads_message_lines_as_the_proxy(tap_factory, sink, workdir, smtptap_bin):
    """Header lines are un-stuffed too (a header ".X-Dot" is sent "..X-Dot"), and a "." after
    a bare LF is content, not the end of data: --test-rules shows the hits the proxy made."""
    tap, path = start_tap(tap_factory, workdir, sink.port,
                          "header /^\\.X-Dot:/ WARN\n"
                          "header /^\\.\\./ WARN\n"
                          "body /^(\\.|after)$/ WARN\n"
                          "command /^NOOP/ WARN\n")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: t\r\n..X-Dot: yes\r\n\r\nbody\n.\r\nafter\r\n.\r\n")
    assert code_of(c.reply()) == 250
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    t = transcript(tap)
    live = live_hit_lines(t)
    assert live == [".X-Dot: yes", ".", "after", "NOOP"], t.text
    r = run_smtptap(smtptap_bin, ["--test-rules", path, "--transcript", t.path])
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert trial_hit_lines(out) == live, out


@pytest.mark.limit(20)
def test_test_rules_exit_codes(smtptap_bin, workdir):
    tr = os.path.join(workdir, "t.log")
    with open(tr, "w") as f:
        f.write("# smtptap 0.1.0 transcript\n# session 00000001\n"
                "2026-11-26T10:37:28.123456Z S: 220 mx ESMTP\n"
                "2026-11-26T10:37:28.123457Z C: VRFY bob\n")
    r = run_smtptap(smtptap_bin, ["--test-rules", POLICIES, "--transcript", tr])
    assert r.returncode == 0, r.stderr.decode()
    assert "VRFY bob" in r.stdout.decode()
    r = run_smtptap(smtptap_bin, ["--test-rules", BAD, "--transcript", tr])
    assert r.returncode == 1
    assert "%s:2:10: missing closing parenthesis" % BAD in r.stderr.decode()
    garbage = os.path.join(workdir, "garbage.log")
    with open(garbage, "w") as f:
        f.write("this is not a transcript\nnor is this\n")
    r = run_smtptap(smtptap_bin, ["--test-rules", POLICIES, "--transcript", garbage])
    assert r.returncode == 1
    r = run_smtptap(smtptap_bin, ["--test-rules", POLICIES, "--transcript", os.path.join(workdir, "none.log")])
    assert r.returncode == 1


# --------------------------------------------------------------------------------------------
# Hit counts in the event


@pytest.mark.limit(20)
def test_event_counts_hits_per_rule(tap_factory, vsink, workdir):
    tap, path = start_tap(tap_factory, workdir, vsink.port,
                          "command /^NOOP/ WARN\ncommand /^NOOP three$/ REJECT\ncommand /^HELP/ WARN")
    c = greeted(tap.port)
    for x in ("NOOP one", "NOOP two", "NOOP three"):
        c.cmd(x)
    c.expect("QUIT", 221)
    ev = tap.event()
    assert event_rules(ev) == {"%s:1" % path: ("command", "WARN", 3),
                               "%s:2" % path: ("command", "REJECT", 1)}
    assert ev["warnings"] == 3


# --------------------------------------------------------------------------------------------
# Evaluation order, chains, failures


@pytest.mark.limit(30)
@pytest.mark.parametrize("order", ["pass-first", "reject-first"])
def test_rule_files_are_read_in_the_order_given(tap_factory, vsink, workdir, order):
    passing = write_rules(workdir, "command /^NOOP/ PASS", "pass.rules")
    rejecting = write_rules(workdir, "command /^NOOP/ REJECT 550 5.7.1 second file", "reject.rules")
    files = [passing, rejecting] if order == "pass-first" else [rejecting, passing]
    tap = tap_factory(vsink.port, "--rules", files[0], "--rules", files[1])
    c = greeted(tap.port)
    r = c.cmd("NOOP")
    c.expect("QUIT", 221)
    if order == "pass-first":
        assert code_of(r) == 250, r
        assert event_rules(tap.event()) == {"%s:1" % passing: ("command", "PASS", 1)}
    else:
        assert r == [b"550 5.7.1 second file\r\n"]
        assert event_rules(tap.event()) == {"%s:1" % rejecting: ("command", "REJECT", 1)}


@pytest.mark.limit(30)
def test_rewrite_and_warn_go_on_with_the_rewritten_line(tap_factory, vsink, workdir):
    """REWRITE and WARN go on to the next rule with the (rewritten) line, across the merged
    scopes in file order; two PREPENDs insert in order; the next rule sees the REWRITE."""
    rules = "\n".join([
        r"mail /@old\.example>/ REWRITE @new.example>",
        r"command /^MAIL FROM:<a@new\.example>$/ WARN saw the rewritten line",
        r"mail /@old\.example>/ REJECT 550 5.7.1 must not match any more",
        r"rcpt /@old\.example>/ REWRITE @new.example>",
        r"rcpt /@new\.example>/ REJECT 550 5.7.1 new is refused too",
        r"header /^Subject:/ PREPEND X-First: 1",
        r"header /^Subject:/ WARN between",
        r"header /^Subject:/ PREPEND X-Second: 2",
        r"header /^Subject: (.*)$/ REWRITE Subject: [tag] $1",
        r"header /^Subject: \[tag\]/ PREPEND X-Third: 3",
    ])
    tap, path = start_tap(tap_factory, workdir, vsink.port, rules)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@old.example>", 250)
    assert c.cmd("RCPT TO:<x@old.example>") == [b"550 5.7.1 new is refused too\r\n"]
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: order\r\n\r\nbody\r\n.\r\n")
    assert code_of(c.reply()) == 250
    c.expect("QUIT", 221)
    (m,) = vsink.wait_messages(1)
    assert m.mail_from == "<a@new.example>"
    assert m.rcpts == ["<b@example.net>"]
    assert m.content == b"X-First: 1\nX-Second: 2\nX-Third: 3\nSubject: [tag] order\n\nbody\n", m.content
    hits = hits_for(transcript(tap), path)
    warn = [h for h in hits if h.text == "saw the rewritten line"]
    assert len(warn) == 1 and warn[0].orig == "MAIL FROM:<a@new.example>", hits
    assert not [h for h in hits if h.line == 3], "a rule saw the line from before the REWRITE"


@pytest.mark.limit(30)
def test_rule_that_cannot_be_evaluated_fails_closed(tap_factory, vsink, workdir):
    """Catastrophic backtracking hits PCRE2's match limit: the line is answered 451 4.3.0 and
    not forwarded (issue 17 item 5: skipping the rule would let an allow-list fail open),
    recorded as a failed hit and a warning; the proxy stays responsive."""
    tap, path = start_tap(tap_factory, workdir, vsink.port, r"command /^NOOP (a+)+$/ REJECT")
    c = greeted(tap.port)
    line = "NOOP " + "a" * 40 + "b"
    t0 = time.monotonic()
    r = c.cmd(line)
    assert r[-1].startswith(b"451 4.3.0 "), r
    assert time.monotonic() - t0 < 10
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    assert line not in sink_commands(vsink)
    hits = hits_for(transcript(tap), path)
    assert [(h.action, h.failed) for h in hits] == [("REJECT", True)], hits
    assert tap.event()["warnings"] >= 1


@pytest.mark.limit(30)
def test_reject_of_data_itself(tap_factory, vsink, workdir):
    """A command rule refusing DATA: the client gets the rule's reply, no message mode, the
    session goes on (pipelined MAIL, RCPT, DATA answered in order)."""
    tap, _ = start_tap(tap_factory, workdir, vsink.port,
                       "command /^DATA$/ REJECT 554 5.7.1 No data today\nbody /x/ REJECT")
    c = greeted(tap.port)
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    replies = [c.reply() for _ in range(3)]
    assert [code_of(r) for r in replies] == [250, 250, 554], replies
    assert replies[2] == [b"554 5.7.1 No data today\r\n"]
    c.expect("RSET", 250)
    c.expect("QUIT", 221)
    assert "DATA" not in sink_commands(vsink)
    assert vsink.count() == 0


@pytest.mark.limit(30)
def test_reject_of_bdat_discards_its_chunk(tap_factory, fake_server, workdir):
    """A refused BDAT: its chunk is read and thrown away, never taken for commands."""
    srv = fake_server(SmtpServerScript(chunking=True))
    tap, _ = start_tap(tap_factory, workdir, srv.port, "command /^BDAT/ REJECT 550 5.7.1 No BDAT")
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    chunk = b"QUIT\r\nRSET\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert c.reply() == [b"550 5.7.1 No BDAT\r\n"]
    assert code_of(c.reply()) == 250  # the NOOP
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert cmds == [b"EHLO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>",
                    b"NOOP", b"QUIT"], cmds


# --------------------------------------------------------------------------------------------
# Held messages and pipelining around their end


@pytest.mark.limit(30)
@pytest.mark.parametrize("first", ["refused", "accepted"])
def test_next_transaction_pipelined_after_held_message(tap_factory, fake_server, first):
    """The end of a held message and the next transaction in one write: the replies come in
    order, the server sees the proxy's RSET or DATA in the right place, the second message is
    delivered."""
    srv = fake_server(SmtpServerScript())
    tap = policies_tap(tap_factory, srv.port)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    body1 = b"Subject: one\r\n\r\n" + (b"very confidential\r\n" if first == "refused" else b"fine\r\n")
    c.send(body1 + b".\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n")
    replies = [c.reply() for _ in range(4)]
    first_code = 550 if first == "refused" else 250
    assert [code_of(r) for r in replies] == [first_code, 250, 250, 354], replies
    c.send(b"Subject: two\r\n\r\nsecond\r\n.\r\n")
    assert code_of(c.reply()) == 250
    c.expect("QUIT", 221)
    srv.join()
    conn = srv.conns[0]
    cmds = [x.rstrip(b"\r\n") for x in conn.commands]
    datas = [m["data"] for m in conn.messages]
    two = b"X-Policy: external\r\nSubject: two\r\n\r\nsecond\r\n.\r\n"
    if first == "refused":
        assert cmds == [b"EHLO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>",
                        b"RSET", b"MAIL FROM:<a@example.com>", b"RCPT TO:<c@example.net>", b"DATA",
                        b"QUIT"], cmds
        assert datas == [two]
    else:
        assert cmds.count(b"DATA") == 2, cmds
        assert datas == [b"X-Policy: external\r\nSubject: one\r\n\r\nfine\r\n.\r\n", two]
    assert [x["code"] for x in tap.event()["transactions"]] == [first_code, 250]


@pytest.mark.limit(30)
@pytest.mark.parametrize("octets,code", [(1000, 250), (1001, 552)])
def test_held_message_size_counts_the_message_not_the_stuffing(tap_factory, fake_server, workdir,
                                                              octets, code):
    """RFC 1870: a message's size does not count the dots of dot-stuffing.  A message of
    exactly SIZE octets with stuffed lines fits; one octet more does not."""
    srv = fake_server(SmtpServerScript(caps=("PIPELINING", "SIZE 1000", "8BITMIME")))
    tap, _ = start_tap(tap_factory, workdir, srv.port, r"body /\bconfidential\b/i REJECT")
    lines = b"Subject: size\r\n\r\n" + b"".join(b".dot line %02d\r\n" % i for i in range(20))
    content = lines + b"x" * (octets - len(lines) - 2) + b"\r\n"
    assert len(content) == octets
    obs = message_session(tap.port, content)
    assert code_of(obs["end"]) == code, "a message of %d octets (SIZE 1000), %d stuffed lines: %r" % (
        octets, 20, obs["end"])
    srv.join()
    if code == 250:
        assert [m["data"] for m in srv.conns[0].messages] == [dot_stuff(content) + b".\r\n"]
    else:
        assert srv.conns[0].messages == []


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.limit(20)
@pytest.mark.parametrize("value", ["abc", "-1", ""])
def test_hold_memory_bad_value(smtptap_bin, value):
    r = run_smtptap(smtptap_bin, ["--upstream", "127.0.0.1:25", "--listen", "127.0.0.1:%d" % harness.free_port(),
                                  "--hold-memory", value], timeout=5)
    assert r.returncode == 2
    err = r.stderr.decode().splitlines()
    assert len(err) == 1 and "--hold-memory" in err[0], err


@pytest.mark.limit(30)
def test_server_refusing_held_data_answers_the_dot(tap_factory, fake_server):
    """The server refuses the proxy's DATA for a held message: its reply is the client's
    answer to the final dot; the session goes on."""
    def data_hook(conn, line):
        conn.send("451 4.3.0 Try again later\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"DATA": data_hook}))
    tap = policies_tap(tap_factory, srv.port)
    obs = message_session(tap.port, b"Subject: s\r\n\r\nfine\r\n", quit=False)
    assert code_of(obs["data"]) == 354
    assert obs["end"] == [b"451 4.3.0 Try again later\r\n"], obs["end"]
    c = obs["client"]
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    ev = tap.event()
    assert ev["transactions"][0]["code"] == 451


@pytest.mark.limit(30)
@pytest.mark.parametrize("action,code", [("IGNORE", 250), ("WARN", 250), ("REJECT", 550)])
def test_message_of_headers_only(tap_factory, vsink, workdir, action, code):
    """A message without a body (no empty line): its last header is still a header, seen
    by the rules and, unless removed, delivered (streamed under IGNORE and WARN, held under
    REJECT)."""
    tap, _ = start_tap(tap_factory, workdir, vsink.port, "header /^X-Target:/ %s" % action)
    obs = message_session(tap.port, b"Subject: only headers\r\nX-Target: last\r\n")
    assert code_of(obs["end"]) == code, obs["end"]
    if code == 250:
        (m,) = vsink.wait_messages(1)
        kept = b"X-Target: last\n" if action == "WARN" else b""
        assert m.content == b"Subject: only headers\n" + kept, m.content
    else:
        time.sleep(0.3)
        assert vsink.count() == 0


@pytest.mark.limit(30)
def test_client_gone_while_message_held(tap_factory, vsink):
    tap = policies_tap(tap_factory, vsink.port)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: partial\r\n\r\nnot finished\r\n")
    time.sleep(0.2)
    c.close()
    ev = tap.event()
    assert ev["reason"] == "client_closed"
    assert "DATA" not in sink_commands(vsink)
    assert vsink.count() == 0


@pytest.mark.limit(30)
def test_flags_end_to_end(tap_factory, vsink, workdir):
    """i, x, s, m, u, g, negation and an escaped slash, each on a line it must (not) match."""
    rules = "\n".join([
        r"mail /^mail from:<A@EXAMPLE\.COM>$/i WARN i",
        r"rcpt /^RCPT [ ] TO: <b @ example\.net>  # a comment/x WARN x",
        r"header /^X-Folded:.*second$/s WARN s",
        r"header /^\tsecond$/m WARN m",
        r"header /^X-Folded:.*second$/ WARN no s: must not match",
        r"body /caf\x{e9}/u WARN u",
        r"body /o/g REWRITE 0",
        r"body /a\/b/ REWRITE a-b",
        r"body !/./ WARN negated: an empty line",
    ])
    content = (b"Subject: flags\r\nX-Folded: first\r\n\tsecond\r\n\r\n"
               b"\xff\xfe invalid then caf\xc3\xa9\r\n"
               b"broken caf\xc3 then \xff\r\n"
               b"foo boo\r\n"
               b"path a/b here\r\n"
               b"\r\n"
               b"end\r\n")
    tap, path = start_tap(tap_factory, workdir, vsink.port, rules)
    obs = message_session(tap.port, content, mail="a@example.com")
    assert code_of(obs["end"]) == 250
    (m,) = vsink.wait_messages(1)
    assert m.content == (b"Subject: flags\nX-Folded: first\n\tsecond\n\n"
                         b"\xff\xfe invalid then caf\xc3\xa9\n"
                         b"br0ken caf\xc3 then \xff\n"
                         b"f00 b00\n"
                         b"path a-b here\n"
                         b"\n"
                         b"end\n"), m.content
    hits = hits_for(transcript(tap), path)
    warns = sorted(h.text for h in hits if h.action == "WARN")
    assert warns == sorted(["i", "x", "s", "m", "u", "negated: an empty line"]), hits
    u = [h for h in hits if h.text == "u"]
    assert len(u) == 1 and "invalid then" in u[0].orig, u


@pytest.mark.limit(30)
@pytest.mark.parametrize("record", ["none", "headers"])
def test_record_level_keeps_content_out_of_rule_events(tap_factory, vsink, workdir, record):
    """--record none|headers keeps message content (none: all of it; headers: the body) out of
    the transcript; rule hits on such lines are still recorded (file:line, action, scope)
    without the content."""
    tap, path = start_tap(tap_factory, workdir, vsink.port,
                          "header /^Subject:/ WARN\nbody /secret/ REWRITE hidden", "--record", record)
    obs = message_session(tap.port, b"Subject: subject-words\r\n\r\nthe secret-words line\r\n")
    assert code_of(obs["end"]) == 250
    t = transcript(tap)
    hits = hits_for(t, path)
    assert sorted((h.line, h.action, h.scope) for h in hits) == [(1, "WARN", "header"), (2, "REWRITE", "body")]
    assert "secret-words" not in t.text, "body content recorded under --record %s" % record
    assert "hidden-words" not in t.text, "body content recorded under --record %s" % record
    if record == "none":
        assert "subject-words" not in t.text, "header content recorded under --record none"


@pytest.mark.limit(60)
def test_body_policy_holds_after_many_transactions(tap_factory, vsink):
    """The 1001st transaction of a session is held and refused like the first (the proxy's
    event keeps a bounded number of transactions, the policy must not depend on it)."""
    tap = policies_tap(tap_factory, vsink.port)
    c = greeted(tap.port)
    n = 1000
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRSET\r\n" * n)
    for i in range(3 * n):
        assert code_of(c.reply()) == 250, i
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(CONFIDENTIAL) + b".\r\n")
    r = c.reply()
    c.expect("QUIT", 221)
    time.sleep(0.3)
    assert vsink.count() == 0, "the confidential message was delivered"
    assert r == [b"550 5.7.1 Confidential content\r\n"], r


@pytest.mark.limit(30)
def test_pipelined_group_with_reply_rules(tap_factory, vsink, workdir):
    """Replies held for reply rules and the proxy's own replies keep their order."""
    tap, _ = start_tap(tap_factory, workdir, vsink.port,
                       "reply /^250 2\\.1\\.5 Ok$/ REWRITE 250 2.1.5 Recipient fine\n"
                       "rcpt /competitor/ REJECT 550 5.7.1 Recipient not permitted")
    c = greeted(tap.port)
    c.send(PIPELINED_GROUP)
    replies = [c.reply() for _ in range(5)]
    assert replies == [[b"250 2.1.0 Ok\r\n"], [b"250 2.1.5 Recipient fine\r\n"],
                       [b"550 5.7.1 Recipient not permitted\r\n"], [b"250 2.1.5 Recipient fine\r\n"],
                       [b"354 End data with <CR><LF>.<CR><LF>\r\n"]], replies
    c.send(b"Subject: x\r\n\r\ny\r\n.\r\n")
    assert code_of(c.reply()) == 250
    c.expect("QUIT", 221)


@pytest.mark.limit(30)
@pytest.mark.parametrize("server", ["accepts", "refuses DATA"])
def test_reply_rules_on_held_message_replies(tap_factory, fake_server, workdir, server):
    """Reply rules edit every server reply the client gets, also the one that ends a held
    message: the final reply, or the server's refusal of the proxy's DATA."""
    hooks = {}
    if server == "refuses DATA":
        def data_hook(conn, line):
            conn.send("451 4.3.0 mx.internal.example busy\r\n")
            return True
        hooks["DATA"] = data_hook
    srv = fake_server(SmtpServerScript(hooks=hooks))
    tap, _ = start_tap(tap_factory, workdir, srv.port,
                       "reply /queued as FAKE\\d+/ REWRITE queued\n"
                       "reply /mx\\.internal\\.example/ REWRITE mx.example\n"
                       "body /confidential/ REJECT")
    obs = message_session(tap.port, b"Subject: s\r\n\r\nfine\r\n")
    expected = {"accepts": [b"250 2.0.0 Ok: queued\r\n"],
                "refuses DATA": [b"451 4.3.0 mx.example busy\r\n"]}[server]
    assert obs["end"] == expected, obs["end"]
    assert code_of(obs["quit"]) == 221


@pytest.mark.limit(30)
@pytest.mark.parametrize("caps,rules,expected", [
    (("PIPELINING", "8BITMIME", "DSN"), "header /^X-A:/ WARN\ncapability /^DSN$/ IGNORE",
     [b"250-fake.example\r\n", b"250-PIPELINING\r\n", b"250 8BITMIME\r\n"]),
    (("PIPELINING",), "capability /^PIPELINING$/ IGNORE", [b"250 fake.example\r\n"]),
    (("PIPELINING", "8BITMIME", "DSN"), "capability /./ IGNORE", [b"250 fake.example\r\n"]),
    (("PIPELINING", "8BITMIME"), "reply /^250.fake\\.example$/ IGNORE",
     [b"250-PIPELINING\r\n", b"250 8BITMIME\r\n"]),
])
def test_ehlo_reply_rebuilt(tap_factory, fake_server, workdir, caps, rules, expected):
    """Lines removed by rules and by the proxy itself (CHUNKING under message rules): the
    reply keeps its shape, "250-" on all lines but the last."""
    srv = fake_server(SmtpServerScript(caps=caps, chunking=True))
    tap, _ = start_tap(tap_factory, workdir, srv.port, rules)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    if b"250-CHUNKING\r\n" in r or b"250 CHUNKING\r\n" in r:
        # no message rules: the proxy keeps CHUNKING, last
        assert r[-1] == b"250 CHUNKING\r\n"
        r = r[:-1]
        r[-1] = b"250 " + r[-1][4:]
    assert r == expected, r
    c.expect("QUIT", 221)


@pytest.mark.limit(30)
def test_bdat_cannot_bypass_body_rules(tap_factory, fake_server):
    """CHUNKING is hidden while body rules are loaded; a client that sends BDAT anyway must
    not get a refused word past them (the server does offer CHUNKING)."""
    srv = fake_server(SmtpServerScript(chunking=True))
    tap = policies_tap(tap_factory, srv.port)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    chunk = CONFIDENTIAL
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    r = c.reply()
    c.cmd("QUIT")
    srv.join()
    delivered = [m for m in srv.conns[0].messages if b"CONFIDENTIAL" in b"".join(m["chunks"])]
    assert not delivered, "BDAT carried a refused word past the body rules (client got %r)" % r
