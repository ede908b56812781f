"""Policies that can't be sidestepped (issue 17): the sender, recipient and client scopes,
table: and cidr: lookups, end to end through smtptap to Postfix's smtp-sink.

Run with:  SMTPTAP=$PWD/build/smtptap /usr/bin/python3 -m pytest -q tests/integration/test_policy.py
"""

import os
import signal

import pytest

import harness
from harness import SmtpClient
from filter_peers import (POLICIES, event_rules, rule_line, run_smtptap,
                          trial_blocks, wait_stderr, write_rules)


def write(workdir, name, text):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def greeted(port):
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    return c


def last_code(reply):
    assert reply, "no reply (connection closed)"
    return int(reply[-1][:3])


# --------------------------------------------------------------------------------------------
# The three bypasses of the README's policies (tests/data/rules/policies.rules)


@pytest.mark.limit(30)
@pytest.mark.parametrize("rcpt", ["RCPT TO:x@competitor.example",
                                  "RCPT TO:<x@competitor.example.>",
                                  "RCPT TO: <X@Competitor.Example> NOTIFY=NEVER"])
def test_recipient_policy_not_sidestepped(tap_factory, vsink, rcpt):
    tap = tap_factory(vsink.port, "--rules", POLICIES)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    assert c.cmd(rcpt) == [b"550 5.7.1 Recipient not permitted\r\n"]
    c.expect("QUIT", 221)
    vsink.wait_idle()
    assert not [x for x in vsink.commands() if "competitor" in x.lower()], vsink.commands()
    line = rule_line(POLICIES, "Recipient not permitted")
    assert event_rules(tap.event())["%s:%d" % (POLICIES, line)] == ("recipient", "REJECT", 1)


@pytest.mark.limit(30)
def test_sender_allow_list_takes_what_postfix_takes(tap_factory, vsink):
    tap = tap_factory(vsink.port, "--rules", POLICIES)
    c = greeted(tap.port)
    assert last_code(c.cmd("MAIL FROM: <a@example.com>")) == 250
    c.expect("RSET", 250)
    assert last_code(c.cmd("MAIL FROM:a@EXAMPLE.COM SIZE=100")) == 250
    c.expect("RSET", 250)
    assert last_code(c.cmd("MAIL FROM:<>")) == 250  # bounces pass
    c.expect("RSET", 250)
    assert c.cmd("MAIL FROM: <a@example.com.evil.example>") == [
        b"550 5.7.1 Sender domain not permitted\r\n"]
    c.expect("QUIT", 221)
    vsink.wait_idle()
    cmds = vsink.commands()
    assert "MAIL FROM: <a@example.com>" in cmds, cmds
    assert "MAIL FROM:a@EXAMPLE.COM SIZE=100" in cmds, cmds
    assert not [x for x in cmds if "evil" in x], cmds


# Spellings Postfix's smtpd reads as bob@competitor.example (extract_addr: comments and white
# space dropped, quotes and backslashes undone), each of which smtptap's address rules once let
# through to the server.
COMPETITOR_SPELLINGS = [
    "RCPT TO:<bob@competitor.example >",
    "RCPT TO:<bob @ competitor.example>",
    "RCPT TO:<bob@competitor.example (c)>",
    "RCPT TO:bob@competitor.example(x)",
    'RCPT TO:<bob@"competitor.example">',
    'RCPT TO:<"bob@competitor.example">',
    'RCPT TO:<"bob"@competitor.example>',
    "RCPT TO:<b\\ob@competitor.example>",
    "RCPT TO:<bob(c)@competitor.example>",
    "RCPT TO:<Bob <bob@competitor.example>>",
]


@pytest.fixture
def postfix_main(workdir):
    """The postfix fixture refuses competitor.example itself, with a text of its own: it is the
    judge of which spellings name that domain."""
    access = write(workdir, "pf-access", "competitor.example REJECT postfix refused it\n")
    os.chmod(access, 0o644)
    return {"smtpd_recipient_restrictions": "check_recipient_access texthash:%s" % access}


def rcpt_reply(port, rcpt):
    c = greeted(port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    r = c.cmd(rcpt)
    c.expect("QUIT", 221)
    return r


@pytest.mark.limit(90)
def test_address_rules_see_what_postfix_sees(tap_factory, postfix, workdir):
    pf, _ = postfix
    table = write(workdir, "domains", "competitor.example REJECT 550 5.7.1 tap table\n")
    rules = {
        "domain": ("recipient /@competitor\\.example$/ REJECT 550 5.7.1 tap domain\n",
                   "550 5.7.1 tap domain"),
        "address": ("recipient /^bob@competitor\\.example$/ REJECT 550 5.7.1 tap address\n",
                    "550 5.7.1 tap address"),
        "table": ("recipient table:%s REJECT\n" % table, "550 5.7.1 tap table"),
    }
    # Postfix alone: every spelling is the refused domain to it.
    for rcpt in COMPETITOR_SPELLINGS:
        r = rcpt_reply(pf.port, rcpt)
        assert b"postfix refused it" in r[-1] and b"<bob@competitor.example>" in r[-1], (rcpt, r)
    # Through smtptap, the rule or table refuses each one before Postfix is asked.
    for name, (text, reply) in rules.items():
        tap = tap_factory(pf.port, "--rules", write_rules(workdir, text, name + ".rules"),
                          name=name)
        for rcpt in COMPETITOR_SPELLINGS:
            r = rcpt_reply(tap.port, rcpt)
            assert r == [reply.encode() + b"\r\n"], (name, rcpt, r)
        # What the client sent is recorded as it was sent.
        texts = [t.text for t in tap.wait_transcripts(len(COMPETITOR_SPELLINGS))]
        assert [t for t in texts if "RCPT TO:<bob @ competitor.example>\n" in t], texts[1]
        tap.stop()


# --------------------------------------------------------------------------------------------
# Each scope and action


@pytest.mark.limit(30)
def test_recipient_rewrite_keeps_parameters(tap_factory, vsink, workdir):
    rules = write_rules(workdir, "recipient /^(.*)@old\\.example$/ REWRITE $1@new.example\n"
                                 "sender /^bad@/ DISCONNECT\n"
                                 "recipient /^watch@/ WARN watched\n"
                                 "recipient /^vip@/ PASS\n"
                                 "rcpt /./ REJECT 550 5.7.1 line rules after PASS\n")
    tap = tap_factory(vsink.port, "--rules", rules)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    # smtp-sink takes any recipient: what it read is what smtptap sent.
    assert last_code(c.cmd("RCPT TO: u@Old.Example. NOTIFY=NEVER")) == 550
    assert last_code(c.cmd("RCPT TO:<vip@old.example> NOTIFY=NEVER")) == 250
    c.expect("QUIT", 221)
    vsink.wait_idle()
    assert "RCPT TO: <vip@new.example> NOTIFY=NEVER" not in vsink.commands()
    c = greeted(tap.port)
    assert c.cmd("MAIL FROM:<bad@example.com>") == [b"421 4.7.0 Closing connection\r\n"]
    assert c.closed_within(5)
    evs = tap.wait_events(2)
    hits = {}
    for e in evs:
        for k, v in event_rules(e).items():
            hits[k] = v
    assert ("recipient", "REWRITE", 2) in hits.values(), hits
    assert ("sender", "DISCONNECT", 1) in hits.values(), hits


@pytest.mark.limit(30)
def test_recipient_rewrite_reaches_the_server(tap_factory, vsink, workdir):
    rules = write_rules(workdir, "recipient /^(.*)@old\\.example$/ REWRITE $1@new.example\n")
    tap = tap_factory(vsink.port, "--rules", rules)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO: u@Old.Example. NOTIFY=NEVER", 250)
    c.expect("QUIT", 221)
    vsink.wait_idle()
    assert "RCPT TO: <u@new.example> NOTIFY=NEVER" in vsink.commands(), vsink.commands()


@pytest.mark.limit(30)
def test_rewritten_address_is_sent_as_a_valid_path(tap_factory, vsink, workdir):
    rules = write_rules(workdir,
                        'recipient /^"?([^"@]*)"?@old\\.example$/ REWRITE "$1@new.example"\n'
                        "recipient !/@new\\.example$/ REJECT 550 5.7.1 only new.example\n"
                        "sender /^(.*)@old\\.example$/ REWRITE $1@new.example\n")
    tap = tap_factory(vsink.port, "--rules", rules)
    c = greeted(tap.port)
    # The quoted local part would close the path and add a parameter: refused, never sent.
    assert c.cmd('MAIL FROM:<"x> RET=FULL"@old.example>') == [
        b"451 4.3.0 Rule produced an invalid address\r\n"]
    c.expect('MAIL FROM:<"a b"@old.example> SIZE=10', 250)
    assert c.cmd('RCPT TO:<"victim> ORCPT=rfc822;x"@old.example>') == [
        b"451 4.3.0 Rule produced an invalid address\r\n"]
    # A local part that needs its quotes keeps them; one that doesn't goes as a dot-atom.
    c.expect('RCPT TO:<"c d"@old.example> NOTIFY=NEVER', 250)
    c.expect('RCPT TO:<"bob"@old.example>', 250)
    c.expect("QUIT", 221)
    vsink.wait_idle()
    cmds = vsink.commands()
    assert not [x for x in cmds if "victim" in x or "RET=" in x or "ORCPT" in x], cmds
    assert 'MAIL FROM:<"a b"@new.example> SIZE=10' in cmds, cmds
    assert 'RCPT TO:<"c d"@new.example> NOTIFY=NEVER' in cmds, cmds
    assert "RCPT TO:<bob@new.example>" in cmds, cmds
    t = tap.transcript().text
    assert t.count("REWRITE (failed, answered 451)") == 2, t
    assert "text=rewritten address is not a valid path" in t, t


@pytest.mark.limit(30)
def test_client_cidr_reject_answers_the_greeting(tap_factory, vsink, workdir):
    nets = write(workdir, "nets", "192.0.2.0/24 OK\n127.0.0.0/8\n::1/128\n")
    rules = write_rules(workdir, "client cidr:%s REJECT\n" % nets)
    tap = tap_factory(vsink.port, "--rules", rules)
    connects = lambda: len([l for l in vsink._log_lines() if l.startswith("connect (")])
    before = connects()  # the harness's own probes of the sink's port
    c = SmtpClient(tap.port)
    assert c.reply() == [b"554 5.7.1 Access denied\r\n"]
    assert c.closed_within(5)
    ev = tap.event()
    assert ev["reason"] == "client_rejected"
    assert event_rules(ev)["%s:1" % rules] == ("client", "REJECT", 1)
    # The server was never asked.
    assert connects() == before


@pytest.mark.limit(30)
def test_client_table_reply_and_pattern(tap_factory, vsink, workdir):
    table = write(workdir, "clients", "127.0.0.1 REJECT 554 5.7.1 Not you\n")
    rules = write_rules(workdir, "client /^10\\./ PASS\nclient table:%s REJECT\n" % table)
    tap = tap_factory(vsink.port, "--rules", rules)
    c = SmtpClient(tap.port)
    assert c.reply() == [b"554 5.7.1 Not you\r\n"]
    assert c.closed_within(5)
    # A client rule that does not refuse: the session goes on as usual.
    rules2 = write_rules(workdir, "client /^127\\.0\\.0\\.1 unknown$/ WARN seen\n", "warn.rules")
    tap2 = tap_factory(vsink.port, "--rules", rules2, name="tap2")
    c = greeted(tap2.port)
    c.expect("QUIT", 221)
    assert event_rules(tap2.event())["%s:1" % rules2] == ("client", "WARN", 1)


@pytest.mark.limit(30)
def test_sender_table_entries(tap_factory, vsink, workdir):
    table = write(workdir, "senders", "competitor.example REJECT 554 5.7.1 Not from them\n"
                                      "friend@competitor.example OK\n"
                                      "spam@ DISCONNECT\n")
    rules = write_rules(workdir, "sender table:%s WARN listed\n" % table)
    tap = tap_factory(vsink.port, "--rules", rules)
    c = greeted(tap.port)
    assert c.cmd("MAIL FROM:<x@mx.Competitor.example>") == [b"554 5.7.1 Not from them\r\n"]
    assert last_code(c.cmd("MAIL FROM:<friend@competitor.example>")) == 250
    c.expect("RSET", 250)
    assert c.cmd("MAIL FROM:<spam@example.org>") == [b"421 4.7.0 Closing connection\r\n"]
    assert c.closed_within(5)


# --------------------------------------------------------------------------------------------
# Loading: --check-rules, SIGHUP, --test-rules


@pytest.mark.limit(20)
def test_check_rules_reports_table_lines(smtptap_bin, workdir):
    table = write(workdir, "senders", "good.example\nbad.example FROB\n")
    nets = write(workdir, "nets", "10.0.0.0/8\n10.0.0.1/8\n")
    rules = write_rules(workdir, "sender table:%s REJECT\nclient cidr:%s REJECT\n"
                                 "recipient table:%s/none REJECT\n" % (table, nets, workdir))
    r = run_smtptap(smtptap_bin, ["--check-rules", rules])
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "%s:2:13: unknown action 'FROB'" % table in err, err
    assert "%s:2:1: '10.0.0.1/8' has bits set" % nets in err, err
    assert "%s:3:17: table %s/none: cannot open" % (rules, workdir) in err, err
    write(workdir, "senders", "good.example\n")
    write(workdir, "nets", "10.0.0.0/8\n")
    os.unlink(rules)
    rules = write_rules(workdir, "sender table:%s REJECT\nclient cidr:%s REJECT\n" % (table, nets))
    r = run_smtptap(smtptap_bin, ["--check-rules", rules])
    assert (r.returncode, r.stdout) == (0, b"2 rules in 1 file OK\n"), r


@pytest.mark.limit(40)
def test_sighup_broken_table_keeps_old_rules(tap_factory, vsink, workdir):
    table = write(workdir, "rcpts", "blocked.example REJECT 550 5.7.1 old table\n")
    rules = write_rules(workdir, "recipient table:%s REJECT\n" % table)
    tap = tap_factory(vsink.port, "--rules", rules)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    assert c.cmd("RCPT TO:<x@blocked.example>") == [b"550 5.7.1 old table\r\n"]
    c.expect("QUIT", 221)
    write(workdir, "rcpts", "blocked.example REJECT 550 5.7.1 new table\nbroken LINE\n")
    tap.signal(signal.SIGHUP)
    wait_stderr(tap, "rules: %s:2:8: unknown action 'LINE'" % table)
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    assert c.cmd("RCPT TO:<x@blocked.example>") == [b"550 5.7.1 old table\r\n"]
    c.expect("QUIT", 221)
    write(workdir, "rcpts", "blocked.example REJECT 550 5.7.1 new table\n")
    tap.signal(signal.SIGHUP)
    wait_stderr(tap, "rules reloaded")
    c = greeted(tap.port)
    c.expect("MAIL FROM:<a@example.com>", 250)
    assert c.cmd("RCPT TO:<x@blocked.example>") == [b"550 5.7.1 new table\r\n"]
    c.expect("QUIT", 221)


@pytest.mark.limit(40)
def test_test_rules_agrees_with_the_proxy(tap_factory, vsink, workdir, smtptap_bin):
    """A session recorded without rules, replayed with --test-rules: the address and client
    rules hit the lines the live proxy refuses."""
    tap = tap_factory(vsink.port)
    c = greeted(tap.port)
    c.expect("MAIL FROM: <a@example.com>", 250)
    c.expect("RCPT TO:x@competitor.example.", 250)
    c.expect("QUIT", 221)
    path = tap.transcript().path
    nets = write(workdir, "nets", "127.0.0.0/8 WARN loopback\n")
    rules = write_rules(workdir, "client cidr:%s PASS\n"
                                 "recipient /@competitor\\.example$/ REJECT\n" % nets)
    r = run_smtptap(smtptap_bin, ["--test-rules", rules, "--transcript", path])
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    blocks = trial_blocks(out)
    hits = [h for _, hs in blocks for h in hs]
    assert any("client WARN: loopback" in h for h in hits), out
    assert any("recipient REJECT" in h for h in hits), out
    assert "2 rule hits" in out, out
    # The live proxy with the same rules refuses the same RCPT.
    tap2 = tap_factory(vsink.port, "--rules", rules, name="tap2")
    c = greeted(tap2.port)
    c.expect("MAIL FROM: <a@example.com>", 250)
    assert last_code(c.cmd("RCPT TO:x@competitor.example.")) == 550
    c.expect("QUIT", 221)
