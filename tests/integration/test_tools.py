"""The tools in the binary (issue 16): show, sessions, tail, replay, --test-rules on a journal.

Hand-made journals and events files first (the layout, torn lines, the rollover), then the real
proxy's journal: sessions recorded through smtptap, found, shown and replayed against smtp-sink.
"""

import glob
import json
import os
import signal
import smtplib
import subprocess
import time

import pytest

import harness


def run(binary, *args, timeout=20):
    p = subprocess.run([binary] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


DAY1 = """\
2026-12-06T23:49:05.000001Z f5e623bd * session client=10.1.2.3:4567 listener=127.0.0.1:2525 upstream=127.0.0.1:25
2026-12-06T23:49:05.000002Z f5e623bd * connect client=10.1.2.3:4567 listener=127.0.0.1:2525
2026-12-06T23:49:05.000010Z f5e623bd S: 220 mx ESMTP
2026-12-06T23:49:05.000011Z aaaa0001 * session client=192.168.0.9:1111 listener=127.0.0.1:2525 upstream=127.0.0.1:25
2026-12-06T23:49:05.000020Z f5e623bd C: EHLO client.example
2026-12-06T23:49:05.000030Z f5e623bd S: 250-mx
2026-12-06T23:49:05.000030Z f5e623bd S: 250 PIPELINING
2026-12-06T23:49:05.000060Z f5e623bd C: MAIL FROM:<alice@example.com>
2026-12-06T23:49:05.000060Z f5e623bd C: RCPT TO:<bob@example.org>
2026-12-06T23:49:05.000070Z f5e623bd S: 250 2.1.0 Ok
2026-12-06T23:49:05.000070Z f5e623bd S: 250 2.1.5 Ok
2026-12-06T23:49:05.000080Z f5e623bd C: DATA
2026-12-06T23:49:05.000090Z f5e623bd S: 354 go
2026-12-06T23:49:05.000100Z f5e623bd C: back\\\\slash \\x01
2026-12-06T23:49:05.000100Z f5e623bd C: .
2026-12-06T23:49:05.000110Z f5e623bd S: 250 2.0.0 queued as ABC
2026-12-06T23:49:23.000000Z f5e623bd C: QUIT
2026-12-06T23:49:23.000010Z f5e623bd S: 221 Bye
2026-12-06T23:49:23.000020Z f5e623bd * close reason=quit client_octets=1 server_octets=2
2026-12-06T23:59:59.000020Z cccc0003 * session client=10.9.9.9:1 listener=127.0.0.1:2525 upstream=127.0.0.1:25
2026-12-06T23:59:59.000030Z cccc0003 S: 220 mx ESMTP
2026-12-06T23:59:59.9
2026-12-07T00:00:00.000020Z cccc0003 C: QUIT
2026-12-07T00:00:00.000030Z cccc0003 S: 221 Bye
2026-12-07T00:00:00.000040Z cccc0003 * close reason=quit
"""
# Cut mid-record, as a crash leaves it.
DAY2 = ("2026-12-07T00:00:01.000020Z dddd0004 * session client=[2001:db8::5]:1 listener=127.0.0.1:2525 upstream=x:25\n"
        "2026-12-07T00:00:01.000030Z dddd0004 S: 220 x\n"
        "2026-12-07T00:00:01.0000")


@pytest.fixture
def journal(workdir):
    d = os.path.join(workdir, "jlogs")
    os.mkdir(d)
    with open(os.path.join(d, "2026-12-06.log"), "w") as f:
        f.write(DAY1)
    with open(os.path.join(d, "2026-12-07.log"), "w") as f:
        f.write(DAY2)
    # Years of files: empty old days do not get in the way.
    for y in range(2019, 2026):
        open(os.path.join(d, "%d-01-01.log" % y), "w").close()
    return d


def test_show_layout_across_rollover_and_torn_lines(smtptap_bin, journal):
    rc, out, err = run(smtptap_bin, "show", "--log-dir", journal, "cccc0003", "dddd0004")
    assert rc == 0, err
    assert out == (
        "# smtptap 0.1.0 transcript\n# session cccc0003\n# start 2026-12-06T23:59:59.000020Z\n"
        "# client 10.9.9.9:1\n# listener 127.0.0.1:2525\n# upstream 127.0.0.1:25\n"
        "2026-12-06T23:59:59.000030Z S: 220 mx ESMTP\n"
        "2026-12-07T00:00:00.000020Z C: QUIT\n"
        "2026-12-07T00:00:00.000030Z S: 221 Bye\n"
        "2026-12-07T00:00:00.000040Z * close reason=quit\n"
        "# smtptap 0.1.0 transcript\n# session dddd0004\n# start 2026-12-07T00:00:01.000020Z\n"
        "# client [2001:db8::5]:1\n# listener 127.0.0.1:2525\n# upstream x:25\n"
        "2026-12-07T00:00:01.000030Z S: 220 x\n")
    rc, out, err = run(smtptap_bin, "show", "--json", "--log-dir", journal, "f5e623bd")
    recs = [json.loads(l) for l in out.splitlines()]
    assert rc == 0 and len(recs) == 18
    assert recs[12] == {"time": "2026-12-06T23:49:05.000100Z", "session": "f5e623bd",
                        "kind": "C:", "text": "back\\\\slash \\x01"}


def test_show_reads_no_legacy_transcript_outside_the_log_dir(smtptap_bin, journal, workdir):
    """An event's legacy transcript name ("DAY/FILE", from before the journal) is read under
    the log dir; one that leads out of it ("../outside/secret.log") is never opened: show
    looks in the day files instead, finds nothing and says so."""
    outside = os.path.join(workdir, "outside")
    os.mkdir(outside)
    legacy = os.path.join(journal, "2026-11-26")
    os.mkdir(legacy)
    record = "# client 10.1.1.1:1\n2026-11-26T10:37:28.123456Z %s C: %s\n"
    with open(os.path.join(outside, "secret.log"), "w") as f:
        f.write(record % ("eeee0005", "SECRET-LINE"))
    with open(os.path.join(legacy, "103728.123456-3f9a1c.log"), "w") as f:
        f.write(record % ("ffff0006", "LEGACY-LINE"))
    with open(os.path.join(journal, "events.jsonl"), "w") as f:
        for sid, name in (("eeee0005", "../outside/secret.log"),
                          ("ffff0006", "2026-11-26/103728.123456-3f9a1c.log")):
            f.write(json.dumps({"session": sid, "start": "2026-11-26T10:37:28.123456Z",
                                "transcript": name, "reason": "quit"}) + "\n")
    rc, out, err = run(smtptap_bin, "show", "--log-dir", journal, "ffff0006")
    assert rc == 0 and "C: LEGACY-LINE" in out, (rc, out, err)
    rc, out, err = run(smtptap_bin, "show", "--log-dir", journal, "eeee0005")
    assert rc == 1 and "SECRET-LINE" not in out, (rc, out, err)


def test_show_unknown_session_and_missing_dir(smtptap_bin, journal, workdir):
    rc, out, err = run(smtptap_bin, "show", "--log-dir", journal, "nothere")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "nothere" in err and journal in err
    rc, out, err = run(smtptap_bin, "show", "--log-dir", os.path.join(workdir, "none"), "x")
    assert rc == 1 and err.count("\n") == 1 and "none" in err


def test_show_seeks_the_events_offset(smtptap_bin, journal):
    off = DAY1.index("2026-12-06T23:59:59.000020Z cccc0003")
    events = os.path.join(journal, "events.jsonl")
    with open(events, "w") as f:
        f.write(json.dumps({"session": "cccc0003", "transcript": {"file": "2026-12-06.log", "offset": off}}) + "\n")
        f.write('{"session": "torn')
    # The records before the offset are not read: make them unreadable as proof.
    rc, out, err = run(smtptap_bin, "show", "--log-dir", journal, "cccc0003")
    assert rc == 0 and "# session cccc0003" in out and "221 Bye" in out


def test_test_rules_on_a_journal(smtptap_bin, journal, workdir):
    rules = os.path.join(workdir, "r.rules")
    with open(rules, "w") as f:
        f.write("mail /alice@/ REJECT 550 no alice\nreply /^221/ WARN bye\n")
    rc, out, err = run(smtptap_bin, "--test-rules", rules, "--transcript",
                       os.path.join(journal, "2026-12-06.log"), os.path.join(journal, "2026-12-07.log"))
    assert rc == 0, err
    assert "2026-12-06.log:8: C: MAIL FROM:<alice@example.com>" in out
    assert "4 sessions, " in out and "3 rule hits" in out
    assert "r.rules:1: mail REJECT: 1 hit in 1 session" in out
    assert "r.rules:2: reply WARN: 2 hits in 2 sessions" in out
    assert "torn record skipped" in err
    # show output, several sessions in one file, gives the same hits.
    rc, shown, err = run(smtptap_bin, "show", "--log-dir", journal, "f5e623bd", "cccc0003")
    path = os.path.join(workdir, "shown.log")
    with open(path, "w") as f:
        f.write(shown)
    rc, out, err = run(smtptap_bin, "--test-rules", rules, "--transcript", path)
    assert rc == 0 and "2 sessions, " in out and "r.rules:2: reply WARN: 2 hits in 2 sessions" in out


@pytest.mark.limit(30)
def test_tools_skip_a_journal_that_is_no_regular_file(smtptap_bin, workdir):
    """A FIFO named as a day file or as the events file is never opened to wait on: each tool
    says so in one line naming it and goes on with the rest (show finds the session in the
    older day, tail follows it), where they used to block for ever."""
    d = os.path.join(workdir, "flogs")
    os.mkdir(d)
    day = os.path.join(d, "2026-12-06.log")
    with open(day, "w") as f:
        f.write("2026-12-06T10:00:00.000000Z ff000001 * session client=10.0.0.1:1 listener=a upstream=b\n"
                "2026-12-06T10:00:00.000001Z ff000001 C: MAIL FROM:<alice@example.com>\n"
                "2026-12-06T10:00:00.000002Z ff000001 * close reason=quit\n")
    fifo_day = os.path.join(d, "2026-12-07.log")
    fifo_events = os.path.join(d, "events.jsonl")
    os.mkfifo(fifo_day)
    os.mkfifo(fifo_events)
    rc, out, err = run(smtptap_bin, "show", "--log-dir", d, "--events", os.path.join(d, "none.jsonl"),
                       "ff000001", timeout=5)
    assert rc == 0 and "C: MAIL FROM:<alice@example.com>" in out, err
    assert err == "smtptap: %s: not a regular file\n" % fifo_day
    rc, out, err = run(smtptap_bin, "sessions", "--log-dir", d, timeout=5)
    assert rc == 1 and out == "" and err == "smtptap: %s: not a regular file\n" % fifo_events
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, d, out_path, "--from", "@example.com")
    try:
        time.sleep(0.6)  # a few polls: the FIFO is looked at again at each
        with open(day, "a") as f:
            f.write("2026-12-06T11:00:00.000000Z ff000002 * session client=10.0.0.1:1 listener=a upstream=b\n"
                    "2026-12-06T11:00:00.000001Z ff000002 C: MAIL FROM:<bob@example.com>\n")
        harness.wait_until(lambda: "<bob@example.com>" in open(out_path).read(), 5.0, what="tail output")
    finally:
        harness.stop_pid(p)
    assert open(out_path).read().splitlines() == [
        "smtptap tail: %s: not a regular file" % fifo_day,
        "2026-12-06T11:00:00.000001Z ff000002 C: MAIL FROM:<bob@example.com>"]


@pytest.mark.limit(30)
def test_show_and_tail_escape_a_tampered_journal(smtptap_bin, workdir):
    """The recorder escapes control octets and what is not UTF-8, so a journal holding them
    raw was altered: show and tail print them escaped the recorder's way ("\\xHH") instead of
    sending terminal escapes on, and show --json writes every record, the one that is not
    UTF-8 and those after it."""
    d = os.path.join(workdir, "hlogs")
    os.mkdir(d)
    day = os.path.join(d, "2026-12-06.log")
    hostile = (b"2026-12-06T10:00:00.000000Z ee000001 * session client=10.0.0.1:1\x1b[8m listener=a upstream=b\n"
               b"2026-12-06T10:00:00.000001Z ee000001 C: EHLO \x1b]0;owned\x07\x1b[2J evil\n"
               b"2026-12-06T10:00:00.000002Z ee000001 C: MAIL FROM:<a@example.com> \xff\xfe caf\xc3\xa9\n"
               b"2026-12-06T10:00:00.000003Z ee000001 C: RCPT TO:<after@example.org> back\\\\slash\n"
               b"2026-12-06T10:00:00.000004Z ee000001 * close reason=quit\n")
    escaped = ["EHLO \\x1b]0;owned\\x07\\x1b[2J evil",
               "MAIL FROM:<a@example.com> \\xff\\xfe caf\u00e9",
               "RCPT TO:<after@example.org> back\\\\slash"]
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, d, out_path, "--client", "10.0.0.0/8")
    try:
        time.sleep(0.5)
        with open(day, "wb") as f:  # a new day's file: followed from its start
            f.write(hostile)
        harness.wait_until(lambda: b"* close" in open(out_path, "rb").read(), 5.0, what="tail output")
    finally:
        harness.stop_pid(p)
    p = subprocess.run([smtptap_bin, "show", "--log-dir", d, "ee000001"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=10)
    shown = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0 and "\x1b" not in shown and "\x07" not in shown, shown
    assert "# client 10.0.0.1:1\\x1b[8m\n" in shown
    ts = ["2026-12-06T10:00:00.00000%dZ" % i for i in (1, 2, 3)]
    assert shown.splitlines()[6:9] == ["%s C: %s" % r for r in zip(ts, escaped)], shown
    tailed = open(out_path, "rb").read().decode("utf-8", "replace")
    assert tailed.splitlines() == [
        "2026-12-06T10:00:00.000000Z ee000001 * session client=10.0.0.1:1\\x1b[8m listener=a upstream=b"] + \
        ["%s ee000001 C: %s" % r for r in zip(ts, escaped)] + [
        "2026-12-06T10:00:00.000004Z ee000001 * close reason=quit"], tailed
    rc, out, err = run(smtptap_bin, "show", "--json", "--log-dir", d, "ee000001")
    assert rc == 0, err
    assert [json.loads(l)["text"] for l in out.splitlines()][1:] == escaped + ["close reason=quit"]


# ---- sessions: 50 sessions whose attributes follow from their number -------------------------

def make_event(i):
    start = "2026-12-06T%02d:%02d:00.000000Z" % (10 + i // 60, i % 60)
    rcpts = [{"to": "<r%d@example.org>" % (i % 3), "code": 550 if i % 7 == 0 else 250,
              "text": "ok"}]
    ev = {"session": "s%07d" % i, "start": start, "end": start, "client": "10.0.%d.%d:%d" % (i % 5, i, 40000 + i),
          "helo": "h%d" % i, "transactions": [{"mail_from": "<alice@example.com>" if i % 2 == 0 else "<bob@other.net>",
                                              "mail_params": "", "mail_code": 250, "rcpt": rcpts, "size": None,
                                              "code": 250 if i % 7 else None}],
          "reason": "client_closed" if i % 4 == 3 else "quit"}
    if i % 10 == 0:
        ev["auth"] = {"mechanism": "PLAIN", "user": "alice", "code": 235}
    if i % 25 == 1:
        ev["rules"] = [{"rule": "/etc/smtptap/policy.rules:12", "scope": "mail", "action": "WARN", "hits": 1}]
    return ev


@pytest.fixture
def events50(workdir):
    path = os.path.join(workdir, "events50.jsonl")
    with open(path, "w") as f:
        for i in range(50):
            f.write(json.dumps(make_event(i)) + "\n")
        f.write('{"session":"s9999999","start":"2026-12-06T11')  # torn by a crash
    return path


def ids(out):
    return [int(l.split()[1][1:]) for l in out.splitlines()]


@pytest.mark.parametrize("args,want", [
    (["--client", "10.0.3.0/24"], [i for i in range(50) if i % 5 == 3]),
    (["--client", "10.0.1.21"], [21]),
    (["--from", "alice@example.com"], list(range(0, 50, 2))),
    (["--from", "@OTHER.net"], list(range(1, 50, 2))),
    (["--to", "<r2@example.org>"], [2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 44, 47]),
    (["--user", "alice"], [0, 10, 20, 30, 40]),
    (["--code", "5xx"], [0, 7, 14, 21, 28, 35, 42, 49]),
    (["--code", "550", "--from", "bob@other.net"], [7, 21, 35, 49]),
    (["--reason", "client_closed", "--user", "alice"], []),
    (["--reason", "client_closed", "--to", "r0@example.org"], [3, 15, 27, 39]),
    (["--rule", "policy.rules"], [1, 26]),
    (["--rule", "/etc/smtptap/policy.rules:12"], [1, 26]),
    (["--since", "2026-12-06T10:45", "--until", "2026-12-06T10:48:00Z"], [45, 46, 47, 48]),
    (["--since", "2026-12-06T10:47"], [47, 48, 49]),
])
def test_sessions_filters(smtptap_bin, events50, args, want):
    rc, out, err = run(smtptap_bin, "sessions", "--events", events50, *args)
    assert rc == 0, err
    assert ids(out) == want


def test_sessions_since_reads_past_events_of_two_workers_out_of_order(smtptap_bin, workdir):
    """Each worker writes its events in batches, so in the file a session that ended later can
    come before one that ended earlier.  --since reads backwards and stops only at an event
    that ended a minute before it: s1 (started 10:00:01, written first by one worker) is
    found behind s2 (ended 09:59:59.9, written last by the other), which once stopped the
    read.  An event that ended well before --since (s0, 09:55) still ends the read: what lies
    behind it (s0000009, whose start says 10:30) is never read."""
    path = os.path.join(workdir, "events-2w.jsonl")
    evs = [make_event(0), make_event(1), make_event(2)]
    evs[0].update(start="2026-12-06T09:50:00.000000Z", end="2026-12-06T09:55:00.000000Z",
                  reason="quit")
    evs[1].update(start="2026-12-06T10:00:01.000000Z", end="2026-12-06T10:00:02.000000Z")
    evs[2].update(start="2026-12-06T09:59:58.000000Z", end="2026-12-06T09:59:59.900000Z")
    with open(path, "w") as f:
        f.write(json.dumps(evs[0]) + "\n")
        f.write(json.dumps(dict(evs[0], session="s0000009",
                                start="2026-12-06T10:30:00.000000Z")) + "\n")  # out of any order
        f.write(json.dumps(evs[0]) + "\n")
        f.write(json.dumps(evs[1]) + "\n" + json.dumps(evs[2]) + "\n")
    rc, out, err = run(smtptap_bin, "sessions", "--events", path, "--since", "2026-12-06T10:00")
    assert rc == 0, err
    assert ids(out) == [1], out


def test_sessions_line_and_json(smtptap_bin, events50):
    rc, out, err = run(smtptap_bin, "sessions", "--events", events50, "--client", "10.0.0.0")
    assert out == ("2026-12-06T10:00:00.000000Z s0000000 client=10.0.0.0:40000 helo=<h0> user=alice "
                   "from=<alice@example.com> to=<r0@example.org>:550 code=- reason=quit\n")
    rc, out, err = run(smtptap_bin, "sessions", "--events", events50, "--user", "alice", "--json")
    assert [json.loads(l)["session"] for l in out.splitlines()] == ["s%07d" % i for i in (0, 10, 20, 30, 40)]
    rc, out, err = run(smtptap_bin, "sessions", "--events", events50, "--code", "6xx")
    assert rc == 2 and "--code" in err


# ---- tail ---------------------------------------------------------------------------------

def start_tail(smtptap_bin, log_dir, out_path, *filters):
    """smtptap tail on log_dir, its output (and errors) into out_path; stopped by the caller."""
    with open(out_path, "wb") as out:
        return subprocess.Popen([smtptap_bin, "tail", "--log-dir", log_dir, *filters],
                                stdout=out, stderr=subprocess.STDOUT)


def test_tail_sees_sessions_started_after_it_and_the_rollover(smtptap_bin, workdir):
    """A session open when tail starts (0ld00000, matched by its MAIL before) is known from
    the look-back: printed from its next record, not what came before tail started."""
    d = os.path.join(workdir, "tlogs")
    os.mkdir(d)
    day1 = os.path.join(d, "2026-12-06.log")
    with open(day1, "w") as f:
        f.write("2026-12-06T23:00:00.000000Z 0ld00000 * session client=10.0.0.1:1 listener=a upstream=b\n"
                "2026-12-06T23:00:00.000001Z 0ld00000 C: MAIL FROM:<alice@example.com>\n")
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, d, out_path, "--from", "alice@example.com")
    try:
        time.sleep(0.5)
        with open(day1, "a") as f:
            f.write("2026-12-06T23:59:00.000000Z 11110000 * session client=10.0.0.2:1 listener=a upstream=b\n"
                    "2026-12-06T23:59:00.000001Z 22220000 * session client=10.0.0.3:1 listener=a upstream=b\n"
                    "2026-12-06T23:59:00.000002Z 11110000 C: EHLO x\n"
                    "2026-12-06T23:59:00.000003Z 22220000 C: MAIL FROM:<bob@example.com>\n"
                    "2026-12-06T23:59:00.000004Z 11110000 C: MAIL FROM:<ALICE@example.com>\n"
                    "2026-12-06T23:59:00.000005Z 11110000 C: RCPT TO:<x@y>\n")
            f.flush()
            # The session that started yesterday goes on in yesterday's file; a new day begins.
            with open(os.path.join(d, "2026-12-07.log"), "w") as g:
                g.write("2026-12-07T00:00:00.000000Z 33330000 * session client=10.0.0.4:1 listener=a upstream=b\n"
                        "2026-12-07T00:00:00.000001Z 33330000 C: MAIL FROM:<alice@example.com>\n")
            time.sleep(0.6)
            f.write("2026-12-07T00:00:01.000000Z 11110000 * close reason=quit\n"
                    "2026-12-07T00:00:01.000001Z 11110000 C: NOT PRINTED (forgotten)\n"
                    "2026-12-07T00:00:01.000002Z 0ld00000 C: RCPT TO:<started-before-tail>\n")
        harness.wait_until(lambda: "33330000 C: MAIL" in open(out_path).read() and
                           "<started-before-tail>" in open(out_path).read(), 5.0, what="tail output")
    finally:
        harness.stop_pid(p)
    lines = open(out_path).read().splitlines()
    assert lines == [
        "2026-12-06T23:59:00.000004Z 11110000 C: MAIL FROM:<ALICE@example.com>",
        "2026-12-06T23:59:00.000005Z 11110000 C: RCPT TO:<x@y>",
        "2026-12-07T00:00:00.000001Z 33330000 C: MAIL FROM:<alice@example.com>",
        "2026-12-07T00:00:01.000000Z 11110000 * close reason=quit",
        "2026-12-07T00:00:01.000002Z 0ld00000 C: RCPT TO:<started-before-tail>",
    ] or sorted(lines) == sorted([
        "2026-12-06T23:59:00.000004Z 11110000 C: MAIL FROM:<ALICE@example.com>",
        "2026-12-06T23:59:00.000005Z 11110000 C: RCPT TO:<x@y>",
        "2026-12-07T00:00:00.000001Z 33330000 C: MAIL FROM:<alice@example.com>",
        "2026-12-07T00:00:01.000000Z 11110000 * close reason=quit",
        "2026-12-07T00:00:01.000002Z 0ld00000 C: RCPT TO:<started-before-tail>",
    ])


def test_tail_look_back_is_bounded(smtptap_bin, workdir):
    """Past 64 MiB of journal, tail reads back only the last 64 MiB, from a line's start: a
    session begun before that is not known, one begun within it is."""
    d = os.path.join(workdir, "blogs")
    os.mkdir(d)
    day = os.path.join(d, "2026-12-06.log")
    filler = b"2026-12-06T10:00:00.000000Z f1110000 S: 250 2.0.0 Ok " + b"x" * 200 + b"\n"
    with open(day, "wb") as f:
        f.write(b"2026-12-06T09:59:00.000000Z aaaa0000 * session client=10.0.0.1:1 listener=a upstream=b\n"
                b"2026-12-06T09:59:00.000001Z aaaa0000 C: MAIL FROM:<alice@example.com>\n")
        f.write(filler * (66 * 1024 * 1024 // len(filler)))
        f.write(b"2026-12-06T10:01:00.000000Z bbbb0000 * session client=10.0.0.2:1 listener=a upstream=b\n"
                b"2026-12-06T10:01:00.000001Z bbbb0000 C: MAIL FROM:<alice@example.com>\n")
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, d, out_path, "--from", "alice@example.com")
    try:
        time.sleep(1.5)
        with open(day, "ab") as f:
            f.write(b"2026-12-06T10:02:00.000000Z aaaa0000 C: RCPT TO:<too-old>\n"
                    b"2026-12-06T10:02:00.000001Z bbbb0000 C: RCPT TO:<within>\n")
        harness.wait_until(lambda: "<within>" in open(out_path).read(), 8.0, what="tail output")
    finally:
        harness.stop_pid(p)
    assert open(out_path).read().splitlines() == ["2026-12-06T10:02:00.000001Z bbbb0000 C: RCPT TO:<within>"]


def test_tail_follows_the_real_proxy(smtptap_bin, tap, workdir):
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, tap.log_dir, out_path, "--to", "bob@example.org")
    try:
        time.sleep(0.5)
        for rcpt in ("carol@example.org", "bob@example.org"):
            with smtplib.SMTP("127.0.0.1", tap.port, timeout=10) as s:
                s.sendmail("alice@example.com", [rcpt], b"Subject: t\r\n\r\nhi\r\n")
        harness.wait_until(lambda: "* close reason=quit" in open(out_path).read(), 8.0, what="tail")
    finally:
        harness.stop_pid(p)
    text = open(out_path).read()
    assert "rcpt TO:<bob@example.org>" in text and "carol" not in text
    assert "S: 221" in text


def test_tail_follows_the_journal_across_a_rotation(smtptap_bin, tap, workdir):
    """logrotate's create style: the day file moved away while the proxy runs, and the proxy
    creates it again at its next write.  tail reads what the moved file still got (here a
    batch that landed there just after the move), then the new file from its start."""
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, tap.log_dir, out_path, "--from", "@example.com")

    def send(sender):
        with smtplib.SMTP("127.0.0.1", tap.port, timeout=10) as s:
            s.sendmail(sender, ["bob@example.org"], b"Subject: t\r\n\r\nhi\r\n")

    try:
        time.sleep(0.5)
        send("before@example.com")
        harness.wait_until(lambda: "before@example.com" in open(out_path).read(), 8.0,
                           what="tail output before the rotation")
        p.send_signal(signal.SIGSTOP)  # the move and what follows land in one poll interval
        try:
            [day] = glob.glob(os.path.join(tap.log_dir, "*.log"))
            os.rename(day, day + ".1")
            with open(day + ".1", "a") as f:
                f.write("2026-12-06T10:00:00.000000Z late0001 * session client=10.0.0.1:1 listener=a upstream=b\n"
                        "2026-12-06T10:00:00.000001Z late0001 C: MAIL FROM:<remainder@example.com>\n"
                        "2026-12-06T10:00:00.000002Z late0001 * close reason=quit\n")
            send("after@example.com")
            harness.wait_until(lambda: os.path.exists(day) and b"after@example.com" in open(day, "rb").read(),
                               5.0, what="the proxy's new day file")
        finally:
            p.send_signal(signal.SIGCONT)
        harness.wait_until(lambda: "after@example.com" in open(out_path).read(), 8.0,
                           what="tail output after the rotation")
    finally:
        harness.stop_pid(p)
    text = open(out_path).read()
    at = [text.find(a) for a in ("<before@", "<remainder@", "<after@")]
    assert -1 not in at and at == sorted(at), text


def test_tail_follows_a_journal_truncated_in_place(smtptap_bin, workdir):
    """logrotate's copytruncate: the file shorter than what tail read is read again from its
    start."""
    d = os.path.join(workdir, "trlogs")
    os.mkdir(d)
    day = os.path.join(d, "2026-12-06.log")
    session = ("2026-12-06T10:00:0%d.000000Z %s * session client=10.0.0.1:1 listener=a upstream=b\n"
               "2026-12-06T10:00:0%d.000001Z %s C: MAIL FROM:<%s@example.com>\n")
    with open(day, "w") as f:
        f.write("2026-12-06T09:00:00.000000Z filler00 S: 250 " + "x" * 2000 + "\n")
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, d, out_path, "--from", "@example.com")
    try:
        time.sleep(0.5)
        with open(day, "a") as f:
            f.write(session % (1, "aaaa0001", 1, "aaaa0001", "before"))
        harness.wait_until(lambda: "<before@" in open(out_path).read(), 5.0, what="tail output")
        with open(day, "w") as f:  # truncated, then written from its start again
            f.write(session % (2, "bbbb0002", 2, "bbbb0002", "after"))
        harness.wait_until(lambda: "<after@" in open(out_path).read(), 5.0,
                           what="tail output after the truncation")
    finally:
        harness.stop_pid(p)
    assert [l.split()[1] for l in open(out_path).read().splitlines()] == ["aaaa0001", "bbbb0002"]


@pytest.mark.limit(30)
def test_tail_user_is_the_authenticated_user_only(smtptap_bin, tap_factory, fake_server, workdir):
    """tail --user NAME matches what sessions --user NAME matches: the user of an AUTH command
    or of a response to a 334, whose marker the recorder wrote.  A client line that merely
    holds the text "[redacted user=NAME]" names nobody."""
    up = fake_server(harness.SmtpServerScript(auth={"victim": "pw", "alice": "pw"}), name="auth-server")
    tap = tap_factory(up.port)
    out_path = os.path.join(workdir, "tail.out")
    p = start_tail(smtptap_bin, tap.log_dir, out_path, "--user", "victim")

    def session(sender, *auth):
        c = harness.SmtpClient(tap.port)
        assert c.code() == 220
        c.expect("EHLO x", 250)
        for line, code in auth:
            c.expect(line, code)
        c.expect("MAIL FROM:<%s>" % sender, 250)
        c.expect("QUIT", 221)

    try:
        time.sleep(0.5)
        session("spoof@example.com", ("NOOP [redacted user=victim]", 250),
                ("[redacted user=victim]", 502))
        session("alice@example.com", ("AUTH PLAIN " + harness.b64(b"\0alice\0pw"), 235))
        session("login@example.com", ("AUTH LOGIN", 334), (harness.b64(b"victim"), 334),
                (harness.b64(b"pw"), 235))
        session("plain@example.com", ("AUTH PLAIN " + harness.b64(b"\0victim\0pw"), 235))
        sid = {ev["transactions"][0]["mail_from"]: ev["session"] for ev in tap.wait_events(4)}
        want = [sid["<login@example.com>"], sid["<plain@example.com>"]]
        harness.wait_until(lambda: "%s * close" % want[1] in open(out_path).read(), 8.0,
                           what="tail output")
    finally:
        harness.stop_pid(p)
    text = open(out_path).read()
    assert sorted(set(l.split()[1] for l in text.splitlines())) == sorted(want), text
    assert "C: [redacted user=victim]" in text and "C: AUTH PLAIN [redacted user=victim]" in text
    rc, out, err = run(smtptap_bin, "sessions", "--events", tap.events_path, "--user", "victim")
    assert rc == 0, err
    assert sorted(l.split()[1] for l in out.splitlines()) == sorted(want)


# ---- replay against smtp-sink ----------------------------------------------------------------

def record_session(tap, rcpts=("bob@example.org",), body=b"Subject: t\r\n\r\n.dot\r\nline\r\n"):
    with smtplib.SMTP("127.0.0.1", tap.port, timeout=10) as s:
        s.ehlo("replay.example")
        s.sendmail("alice@example.com", list(rcpts), body)
    ev = tap.wait_events(1)[-1] if hasattr(tap, "wait_events") else None
    return ev["session"]


def test_replay_matches_and_differs(smtptap_bin, tap, sink, workdir):
    sid = record_session(tap, rcpts=("bob@example.org", "carol@example.org"))
    n_before = sink.count()
    rc, out, err = run(smtptap_bin, "replay", "--log-dir", tap.log_dir, "--events", tap.events_path,
                       sid, "--to", "127.0.0.1:%d" % sink.port)
    assert rc == 0, out + err
    assert "every code as recorded" in out and "differs" not in out
    # The message went again, content as recorded (dot-stuffing and all).
    harness.wait_until(lambda: sink.count() == n_before + 1, 5.0, what="replayed message")
    # A server that now refuses recipients (smtp-sink -r RCPT: 4xx).
    rej = harness.SmtpSink(workdir, extra=["-r", "RCPT"], name="rejecting")
    rej.start()
    try:
        rc, out, err = run(smtptap_bin, "replay", "--log-dir", tap.log_dir, "--events", tap.events_path,
                           sid, "--to", "127.0.0.1:%d" % rej.port)
    finally:
        rej.stop()
    assert rc == 1, out + err
    assert "C: rcpt TO:<bob@example.org>" in out
    assert "stopping here" in out  # no content after a refused DATA
    assert "<<< differs" in out and "differ" in out.splitlines()[-1]


def test_replay_skips_auth_without_credentials(smtptap_bin, tap, sink):
    c = harness.SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO x", 250)
    c.cmd("AUTH PLAIN " + harness.b64(b"\0alice\0secret-password"))  # smtp-sink: 250
    c.expect("MAIL FROM:<alice@example.com>", 250)
    c.expect("RCPT TO:<bob@example.org>", 250)
    c.expect("QUIT", 221)
    sid = tap.wait_events(1)[-1]["session"]
    rc, out, err = run(smtptap_bin, "replay", "--log-dir", tap.log_dir, "--events", tap.events_path,
                       sid, "--to", "127.0.0.1:%d" % sink.port)
    assert rc == 0, out + err
    assert "not sent: AUTH needs --auth" in out and "secret-password" not in out
    rc, out, err = run(smtptap_bin, "replay", "--log-dir", tap.log_dir, "--events", tap.events_path,
                       sid, "--to", "127.0.0.1:%d" % sink.port, "--auth", "alice:other")
    assert rc == 0, out + err
    assert "AUTH PLAIN [--auth credentials]" in out and "other" not in out


def test_replay_refuses_a_session_without_content(smtptap_bin, tap_factory, sink):
    tap = tap_factory(sink.port, "--record", "headers")
    sid = record_session(tap)
    n_before = sink.count()
    rc, out, err = run(smtptap_bin, "replay", "--log-dir", tap.log_dir, "--events", tap.events_path,
                       sid, "--to", "127.0.0.1:%d" % sink.port)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "without its message content" in err
    time.sleep(0.3)
    assert sink.count() == n_before


def test_show_of_the_real_proxy_matches_the_harness(smtptap_bin, tap):
    sid = record_session(tap)
    rc, out, err = run(smtptap_bin, "show", "--log-dir", tap.log_dir, "--events", tap.events_path, sid)
    assert rc == 0, err
    assert out.startswith("# smtptap 0.1.0 transcript\n# session %s\n# start " % sid)
    assert "C: ..dot" in out and "C: mail FROM:<alice@example.com>" in out


def test_tools_read_the_daemons_config_file(smtptap_bin, tap, workdir):
    """-c FILE: the tools take log-dir and events from the daemon's configuration file; a
    --log-dir on the command line still wins; a bad file is refused naming its line."""
    sid = record_session(tap)
    conf = os.path.join(workdir, "daemon.conf")
    with open(conf, "w") as f:
        f.write("# as the service's file\nlisten 127.0.0.1:2525\nupstream 127.0.0.1:25\n"
                "log-dir %s\nevents %s\n" % (tap.log_dir, tap.events_path))
    rc, out, err = run(smtptap_bin, "show", "-c", conf, sid)
    assert rc == 0, err
    assert out.startswith("# smtptap 0.1.0 transcript\n# session %s\n" % sid)
    rc, out, err = run(smtptap_bin, "sessions", "--config=" + conf, "--from", "alice@example.com")
    assert rc == 0, err
    assert sid in out
    empty = os.path.join(workdir, "empty-logs")
    os.mkdir(empty)
    rc, out, err = run(smtptap_bin, "show", "-c", conf, "--log-dir", empty,
                       "--events", os.path.join(empty, "none.jsonl"), sid)
    assert rc != 0 and sid not in out, (rc, out, err)
    with open(conf, "a") as f:
        f.write("log-dir\n")
    rc, out, err = run(smtptap_bin, "show", "-c", conf, sid)
    assert rc == 2
    assert "%s:6:" % conf in err, err


def replay(smtptap_bin, tap, sid, port, *extra):
    return run(smtptap_bin, "replay", "--log-dir", tap.log_dir, "--events", tap.events_path,
               sid, "--to", "127.0.0.1:%d" % port, *extra)


@pytest.mark.limit(30)
def test_replay_never_sends_a_redacted_sasl_response(smtptap_bin, tap, vsink):
    """A SASL response pipelined behind an AUTH the server did not answer 334 reached the
    server as a line of its own; the journal holds "[redacted user=alice]" in its place, and
    replay must not send that text (nor anything else) for it."""
    c = harness.SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO x", 250)
    c.send(b"AUTH PLAIN\r\n" + harness.b64(b"\0alice\0secret-password").encode() + b"\r\n")
    c.reply()  # smtp-sink: no 334, so the response goes to the server as a line
    c.reply()
    c.expect("QUIT", 221)
    sid = tap.wait_events(1)[-1]["session"]
    assert "[redacted user=alice]" in tap.transcript().client_lines()
    rc, out, err = replay(smtptap_bin, tap, sid, vsink.port)
    vsink.wait_idle()
    sent = vsink.commands()
    assert "EHLO x" in sent and "QUIT" in sent
    assert not [l for l in sent if "redacted" in l or "AUTH" in l], sent
    assert rc == 0, out + err
    assert "C: [redacted user=alice]  (not sent: a SASL response, redacted)" in out


@pytest.mark.limit(30)
def test_replay_sends_nothing_the_proxy_answered_itself(smtptap_bin, tap_factory, sink, vsink,
                                                        workdir):
    """A command the proxy answered itself ("P:") never reached the server, so replay does not
    send it: a client's XCLIENT (replay runs on the proxy's host, which the server trusts for
    XCLIENT), a recipient a rule refused inside a pipelined group, a held message a rule
    refused (DATA, content and end; the proxy's RSET goes in their place).  A held message the
    proxy passed on (its own 354, then its DATA upstream) is replayed."""
    rules = os.path.join(workdir, "replay.rules")
    with open(rules, "w") as f:
        f.write("rcpt /blocked@/ REJECT 550 5.7.1 Recipient blocked\n"
                "body /badword/ REJECT 550 5.7.1 Bad content\n")
    tap = tap_factory(sink.port, "--rules", rules)
    c = harness.SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO x", 250)
    c.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<blocked@example.org>\r\n"
           b"RCPT TO:<bob@example.org>\r\nXCLIENT ADDR=10.0.0.1 NAME=trusted.example\r\nNOOP\r\n")
    assert [c.reply()[-1][:3] for _ in range(5)] == [b"250", b"550", b"250", b"550", b"250"]
    c.expect("DATA", 354)
    c.send(b"Subject: t\r\n\r\nfine\r\n.\r\n")
    assert c.code() == 250
    c.expect("MAIL FROM:<alice@example.com>", 250)
    c.expect("RCPT TO:<bob@example.org>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: t\r\n\r\nbadword\r\n.\r\n")
    assert c.code() == 550
    c.expect("QUIT", 221)
    sid = tap.wait_events(1)[-1]["session"]
    assert tap.transcript().proxy_lines() == [
        "550 5.7.1 Recipient blocked", "550 5.7.0 Command not permitted",
        "354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>",
        "550 5.7.1 Bad content"]
    rc, out, err = replay(smtptap_bin, tap, sid, vsink.port)
    vsink.wait_idle()
    assert vsink.commands() == [
        "EHLO x", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.org>", "NOOP",
        "DATA", ".", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.org>", "RSET",
        "QUIT"], out
    assert [m.content for m in vsink.wait_messages(1)] == [b"Subject: t\n\nfine\n"]
    assert rc == 0, out + err
    assert "XCLIENT ADDR=10.0.0.1 NAME=trusted.example  (not sent: the proxy never relays" in out
    assert "RCPT TO:<blocked@example.org>  (not sent: the proxy answered it, P: 550" in out


@pytest.mark.limit(30)
def test_replay_never_sends_a_clients_xclient(smtptap_bin, vsink, workdir):
    """Whatever the journal says the server answered, a client's XCLIENT or XFORWARD is never
    sent: the server trusts the proxy's host to speak for clients with them."""
    d = os.path.join(workdir, "xlogs")
    os.mkdir(d)
    with open(os.path.join(d, "2026-12-06.log"), "w") as f:
        f.write("2026-12-06T10:00:00.000000Z xc000001 * session client=10.0.0.9:1 listener=a upstream=b\n"
                "2026-12-06T10:00:00.000001Z xc000001 S: 220 mx ESMTP\n"
                "2026-12-06T10:00:00.000002Z xc000001 C: EHLO x\n"
                "2026-12-06T10:00:00.000003Z xc000001 S: 250 mx\n"
                "2026-12-06T10:00:00.000004Z xc000001 C: XCLIENT ADDR=10.0.0.1\n"
                "2026-12-06T10:00:00.000005Z xc000001 C: xforward NAME=trusted.example\n"
                "2026-12-06T10:00:00.000006Z xc000001 S: 220 mx ESMTP\n"
                "2026-12-06T10:00:00.000007Z xc000001 S: 250 Ok\n"
                "2026-12-06T10:00:00.000008Z xc000001 C: QUIT\n"
                "2026-12-06T10:00:00.000009Z xc000001 S: 221 Bye\n"
                "2026-12-06T10:00:00.000010Z xc000001 * close reason=quit\n")
    rc, out, err = run(smtptap_bin, "replay", "--log-dir", d, "xc000001",
                       "--to", "127.0.0.1:%d" % vsink.port)
    vsink.wait_idle()
    assert vsink.commands() == ["EHLO x", "QUIT"], out + err
    assert rc == 0, out + err
    assert "C: XCLIENT ADDR=10.0.0.1  (not sent: the proxy never relays a client's XCLIENT)" in out


@pytest.mark.limit(30)
def test_replay_sends_no_bdat_chunk_without_its_command(smtptap_bin, tap_factory, fake_server):
    """The proxy answers the commands still pending itself when the server goes (421): a BDAT
    so answered is not sent again, and neither is its chunk, which a server would read as
    commands without it."""

    def vanish(conn, line):
        conn.read_exact(int(line.split()[1]))
        conn.close()
        return True

    up = fake_server(harness.SmtpServerScript(chunking=True, hooks={"BDAT": vanish}), name="vanishing")
    tap = tap_factory(up.port)
    chunk = b"RSET\r\nNOOP smuggled\r\n"
    c = harness.SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO x", 250)
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT %d LAST\r\n" % len(chunk)
           + chunk)
    assert [c.reply()[-1][:3] for _ in range(3)] == [b"250", b"250", b"421"]
    sid = tap.wait_events(1)[-1]["session"]
    assert tap.transcript().proxy_lines()[-1].startswith("421 ")
    target = fake_server(harness.SmtpServerScript(chunking=True), name="replay-target")
    rc, out, err = replay(smtptap_bin, tap, sid, target.port)
    target.join()
    assert [l.rstrip(b"\r\n") for l in target.wait_conn().commands] == [
        b"EHLO x", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.org>"], out + err
    assert rc == 0, out + err
    assert "C: BDAT %d LAST  (not sent: the proxy answered it, P: 421" % len(chunk) in out
