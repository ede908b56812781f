"""Recording: the transcript file (name, mode, header, records, escaping) and the event line."""

import base64
import datetime
import time
import json
import os
import re
import shutil
import signal
import stat

import pytest

import harness
import hostile_peers as hp
from harness import (SmtpClient, SmtpServerScript, JOURNAL_NAME_RE, TS_RE, escape, unescape)


def parse_ts(s):
    assert re.fullmatch(TS_RE, s), "not a UTC timestamp to the microsecond: %r" % s
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def full_session(port):
    """EHLO, two transactions (two recipients in the first), QUIT.  Returns the client."""
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.transaction("<a@example.com>", ["<b@example.net>", "<c@example.net>"],
                  b"Subject: one\r\n\r\n..dot\r\nbody\r\n")
    c.transaction("<>", ["<d@example.org>"], b"Subject: two\r\n\r\nsecond\r\n")
    c.expect("QUIT", 221)
    assert c.read_until_eof(5) == b""
    return c


@pytest.mark.limit(20)
def test_event_line_has_every_field(tap, sink):
    c = full_session(tap.port)
    raw = tap.wait_events(1) and tap.event_lines()
    assert len(raw) == 1
    ev = json.loads(raw[0])
    assert re.fullmatch(r"[0-9a-f]{16}", ev["session"])
    start, end = parse_ts(ev["start"]), parse_ts(ev["end"])
    assert start <= end
    assert isinstance(ev["duration"], (int, float))
    assert abs(ev["duration"] - (end - start).total_seconds()) < 0.001
    assert ev["client"] == "127.0.0.1:%d" % c.local_port
    assert ev["listener"] == "127.0.0.1:%d" % tap.port
    assert ev["upstream"] == "127.0.0.1:%d" % sink.port
    assert ev["upstream_address"] == "127.0.0.1:%d" % sink.port
    assert set(ev["transcript"]) == {"file", "offset"}, ev["transcript"]
    assert JOURNAL_NAME_RE.match(ev["transcript"]["file"]), ev["transcript"]
    assert isinstance(ev["transcript"]["offset"], int)
    assert os.path.isfile(os.path.join(tap.log_dir, ev["transcript"]["file"]))
    assert ev["helo"] == "client.example"
    assert ev["early_talker"] is False
    assert "tls" not in ev and "auth" not in ev
    assert ev["transactions"] == [
        {"mail_from": "<a@example.com>", "mail_params": [], "mail_code": 250, "mail_text": "2.1.0 Ok",
         "rcpt": [{"to": "<b@example.net>", "code": 250, "text": "2.1.5 Ok"},
                  {"to": "<c@example.net>", "code": 250, "text": "2.1.5 Ok"}],
         "size": len(b"Subject: one\r\n\r\n..dot\r\nbody\r\n"), "code": 250, "text": "2.0.0 Ok",
         "queue_id": None},
        {"mail_from": "<>", "mail_params": [], "mail_code": 250, "mail_text": "2.1.0 Ok",
         "rcpt": [{"to": "<d@example.org>", "code": 250, "text": "2.1.5 Ok"}],
         "size": len(b"Subject: two\r\n\r\nsecond\r\n"), "code": 250, "text": "2.0.0 Ok",
         "queue_id": None},
    ]
    host, port = ev["upstream_local"].rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536 and int(port) != sink.port
    assert ev["client_octets"] == len(c.sent)
    # Octets received from the server: what the client got plus what the proxy removed from
    # the EHLO reply (XCLIENT, XFORWARD); the transcript holds every server line.
    t = tap.transcript()
    assert ev["server_octets"] == sum(len(unescape(l)) + 2 for l in t.server_lines())
    assert ev["server_octets"] >= len(c.received)
    assert ev["reason"] == "quit"
    assert ev["warnings"] == 0
    expected = {"session", "start", "end", "duration", "client", "listener", "upstream",
                "upstream_address", "upstream_local", "transcript", "helo", "early_talker", "transactions",
                "client_octets", "server_octets", "reason", "warnings"}
    assert expected <= set(ev), "missing: %s" % (expected - set(ev))


@pytest.mark.limit(20)
def test_transcript_name_mode_header_and_records(tap, sink):
    c = full_session(tap.port)
    t = tap.transcript()
    ev = tap.event()
    m = JOURNAL_NAME_RE.match(t.journal)
    assert m, "journal name %r does not match LOGDIR/YYYY-MM-DD.log" % t.journal
    assert t.location == ev["transcript"]
    path = os.path.join(tap.log_dir, t.journal)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640, oct(st.st_mode)
    assert stat.S_IMODE(os.stat(tap.log_dir).st_mode) == 0o750  # created by smtptap
    assert os.listdir(tap.log_dir) == [t.journal]  # one file a day, nothing per session

    # The event's offset is the session's first record, which holds what the per-session
    # header held.
    with open(path, "rb") as f:
        f.seek(ev["transcript"]["offset"])
        first = f.readline().decode()
    assert first == "%s %s * session client=127.0.0.1:%d listener=127.0.0.1:%d upstream=127.0.0.1:%d\n" % (
        ev["start"], ev["session"], c.local_port, tap.port, sink.port), first
    assert t.header["session"] == ev["session"]
    assert t.header["start"] == ev["start"]
    start = parse_ts(t.header["start"])
    assert "%s-%s-%s" % m.groups() == start.strftime("%Y-%m-%d")
    assert t.header["client"] == "127.0.0.1:%d" % c.local_port
    assert t.header["listener"] == "127.0.0.1:%d" % tap.port
    assert t.header["upstream"] == "127.0.0.1:%d" % sink.port
    # Every line of the journal is a record of this session: time, id, kind, text.
    with open(path, "rb") as f:
        lines = f.read().decode().splitlines()
    assert len(lines) == len(t.records) + 1
    assert all(l.split(" ")[1] == ev["session"] for l in lines)

    stamps = [parse_ts(r.ts) for r in t.records]
    assert stamps == sorted(stamps), "records are not in time order"
    assert stamps[0] >= start
    assert t.records[0].kind == "*" and t.records[0].text.startswith("connect ")
    assert t.records[0].text == "connect client=127.0.0.1:%d listener=127.0.0.1:%d" % (
        c.local_port, tap.port)
    assert any(e == "upstream connected address=127.0.0.1:%d" % sink.port for e in t.events())
    # The last record, whole: its octet counts are the event line's.
    assert t.records[-1].kind == "*"
    assert t.records[-1].text == "close reason=quit client_octets=%d server_octets=%d" % (
        ev["client_octets"], ev["server_octets"]), t.records[-1].text

    # Every line that crossed, in order, each once.
    assert t.client_lines() == ["EHLO client.example", "MAIL FROM:<a@example.com>",
                                "RCPT TO:<b@example.net>", "RCPT TO:<c@example.net>", "DATA",
                                "Subject: one", "", "..dot", "body", ".",
                                "MAIL FROM:<>", "RCPT TO:<d@example.org>", "DATA",
                                "Subject: two", "", "second", ".", "QUIT"]
    got_server = [l.decode() for l in c.received.split(b"\r\n")[:-1]]
    identity = ("250-XCLIENT ", "250-XFORWARD ")
    assert [l for l in t.server_lines() if not l.startswith(identity)] == got_server
    assert t.records[-1].kind == "*" and t.records[-1].text.startswith("close ")
    f = t.close_fields()
    assert f["reason"] == "quit"
    assert int(f["client_octets"]) == len(c.sent) == ev["client_octets"]
    assert int(f["server_octets"]) == ev["server_octets"]


@pytest.mark.limit(20)
def test_record_times_are_precise_to_the_microsecond(tap, sink):
    """A reply is recorded later than the command it answers: the records of each read take
    their time from a precise clock, read for that read.  (libevent's default cached clock is
    the coarse monotonic one, which moves in steps of milliseconds: a command and its reply
    had the same time to the microsecond.)"""
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    for _ in range(20):
        c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    t = tap.transcript()
    recs = [r for r in t.records if r.kind in ("C:", "S:")]
    pairs = [(a, b) for a, b in zip(recs, recs[1:]) if a.kind == "C:" and a.text == "NOOP"]
    assert len(pairs) == 20
    for cmd, reply in pairs:
        assert reply.kind == "S:" and reply.text.startswith("250"), (cmd, reply)
        assert parse_ts(reply.ts) > parse_ts(cmd.ts), \
            "NOOP and its reply recorded at the same time %s" % cmd.ts


@pytest.mark.limit(20)
def test_transcript_escaping(tap_factory, fake_server):
    """NUL, invalid UTF-8, bare LF, bare CR, backslash, tab, C0/C1 controls, DEL, overlong and
    surrogate encodings; valid UTF-8 kept.  The server's lines are escaped the same way."""
    ehlo_reply = b"250-fake.example\r\n250-X-ODD \xff\x01 caps\\\r\n250 PIPELINING\r\n"

    def ehlo_hook(conn, line):
        conn.send(ehlo_reply)
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo_hook}))
    # pass: bare CR and LF stay inside the content as sent (the default normalizes them).
    tap = tap_factory(srv.port, "--bare-newline", "pass")
    lines = [b"nul\x00byte", b"bad utf8 \xff\xfe end", b"back\\slash", b"tab\tkept",
             "\u00e9 \u20ac \U0001F600 ok".encode(), b"c1 \xc2\x85 ctl", b"esc \x1b[31m red",
             b"del \x7f", b"cr\rinside", b"overlong \xc0\xaf", b"surrogate \xed\xa0\x80",
             b"trunc \xe2\x82 x", b"bell\x07"]
    content = b"Subject: escapes\r\n\r\n" + b"".join(l + b"\r\n" for l in lines) + b"bare\nlf\r\n"
    c = SmtpClient(tap.port)
    c.reply()
    ehlo = c.cmd("EHLO client.example")
    assert b"".join(ehlo) == ehlo_reply
    c.transaction("<a@example.com>", ["<b@example.net>"], content)
    c.expect("QUIT", 221)
    t = tap.transcript()  # also checks: valid UTF-8, no raw control characters
    recs = t.client_lines()
    for l in lines:
        assert escape(l) in recs, "%r not recorded as %r" % (l, escape(l))
    assert "nul\\x00byte" in recs
    assert "bad utf8 \\xff\\xfe end" in recs
    assert "back\\\\slash" in recs
    assert "tab\tkept" in recs
    assert "\u00e9 \u20ac \U0001F600 ok" in recs
    assert "c1 \\xc2\\x85 ctl" in recs
    assert "cr\\x0dinside" in recs
    i = recs.index("bare\\x0a")
    assert recs[i + 1] == "lf", "a bare-LF line is not recorded with \\x0a and split there"
    for r in recs:
        assert unescape(r) is not None
    assert "250-X-ODD \\xff\\x01 caps\\\\" in t.server_lines()


@pytest.mark.limit(20)
@pytest.mark.parametrize("level", ["headers", "none"])
def test_record_level_limits_message_content(tap_factory, sink, level):
    tap = tap_factory(sink.port, "--record", level)
    body = b"Subject: levels\r\nX-Marker: header-seen\r\n\r\nbody-secret-1\r\nbody-secret-2\r\n"
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.transaction("<a@example.com>", ["<b@example.net>"], body)
    c.expect("QUIT", 221)
    (m,) = sink.wait_messages(1)
    assert m.content == body.replace(b"\r\n", b"\n")
    t = tap.transcript()
    assert "body-secret" not in t.text
    assert "MAIL FROM:<a@example.com>" in t.client_lines()
    assert "QUIT" in t.client_lines()
    if level == "headers":
        assert "X-Marker: header-seen" in t.client_lines()
        hidden = "body not recorded lines=2 octets=30"  # the body after the empty line
    else:
        assert "header-seen" not in t.text
        hidden = "content not recorded lines=5 octets=72"  # all the content
    assert "message %s" % hidden in t.events(), t.events()
    ev = tap.event()
    assert ev["transactions"][0]["size"] == len(body)


@pytest.mark.limit(20)
def test_event_reads_words_apart_at_any_white_space(tap, sink):
    """The event's helo and recipients are read as the server reads the commands, words apart
    at any white space (space, tab, VT, FF, CR), as the sender already was: "EHLO<TAB>name<TAB>x"
    is the name, "RCPT TO:<TAB><b@...>" is <b@...> (they were once "name<TAB>x" and
    "<TAB><b@...>")."""
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO\tclient.example\tjunk", 250)
    c.expect("MAIL FROM:\t<a@example.com>", 250)
    c.expect("RCPT TO:\t<b@example.net>", 250)
    c.expect("RCPT TO:\x0b\x0c <c@example.net>", 250)
    c.expect("QUIT", 221)
    ev = tap.event()
    assert ev["helo"] == "client.example", ev
    (tx,) = ev["transactions"]
    assert tx["mail_from"] == "<a@example.com>", tx
    assert [r["to"] for r in tx["rcpt"]] == ["<b@example.net>", "<c@example.net>"], tx


@pytest.mark.limit(20)
def test_events_to_stdout(tap_factory, sink):
    tap = tap_factory(sink.port, start=False)
    tap.events_path = "-"
    tap.start()
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("QUIT", 221)
    harness.wait_until(lambda: tap.stdout().endswith("\n"), 5, what="an event line on stdout")
    (line,) = tap.stdout().splitlines()
    ev = json.loads(line)
    assert ev["reason"] == "quit"


@pytest.mark.limit(20)
def test_transcript_flushed_while_session_is_open(tap, sink):
    """Buffered per session but flushed at least once a second: an open session is on disk."""
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO flush.example", 250)

    def on_disk():
        paths = tap.transcript_paths()
        if len(paths) != 1:
            return False
        with open(paths[0], "rb") as f:
            return b" C: EHLO flush.example\n" in f.read()

    harness.wait_until(on_disk, 2.5, what="the open session's EHLO in its transcript")
    c.expect("QUIT", 221)


@pytest.mark.limit(20)
def test_events_write_error_logged_once_relaying_goes_on(tap_factory, sink):
    """--events /dev/full: every write fails (ENOSPC); mail still flows, the error is logged
    once, not once per session."""
    tap = tap_factory(sink.port, start=False)
    tap.events_path = "/dev/full"
    tap.start()
    for i in range(3):
        c = SmtpClient(tap.port)
        assert c.code() == 220
        c.expect("HELO client.example", 250)
        c.transaction("<a@example.com>", ["<b@example.net>"],
                      b"Subject: %d\r\n\r\nbody\r\n" % i)
        c.expect("QUIT", 221)
        c.read_until_eof(3)
    sink.wait_messages(3)
    tap.wait_transcripts(3)
    time.sleep(1.2)  # past a flush
    assert tap.alive()
    err = [l for l in tap.stderr().splitlines() if "events" in l.lower() or "/dev/full" in l]
    assert len(err) == 1, "expected one logged events write error, got %r" % err


@pytest.mark.limit(20)
def test_peer_data_escaped_in_own_log_and_event(tap_factory, sink):
    """A HELO name with terminal escapes: not raw in stderr (-v), the transcript, or the event."""
    tap = tap_factory(sink.port, "--verbose")
    c = SmtpClient(tap.port)
    c.reply()
    c.cmd(b"EHLO evil\x1b[2J\x07name\xff")
    c.expect("QUIT", 221)
    ev = tap.event()
    t = tap.transcript()
    assert "EHLO evil\\x1b[2J\\x07name\\xff" in t.client_lines()
    tap.stop()
    with open(tap.stderr_path, "rb") as f:
        err = f.read()
    assert b"\x1b" not in err and b"\x07" not in err, "raw control characters in the program's log"
    with open(tap.events_path, "rb") as f:
        raw = f.read()
    assert b"\x1b" not in raw and b"\x07" not in raw
    assert ev["helo"].startswith("evil")


@pytest.mark.limit(30)
def test_idle_sessions_hold_no_transcript_descriptor(tap_factory, sink):
    """After one ordinary session (the day directory is then open, and stays so), five
    sessions are greeted and left idle for 2.5 s, past the once-a-second flush.

    proxy: two descriptors per session (client and upstream sockets) and no more: a
    transcript gives back the descriptor it was created with at the flush.  transcripts:
    still written afterwards (each reopened to append the NOOP and QUIT records)."""
    tap = tap_factory(sink.port)
    hp.normal_session(tap, sink=sink)
    base = hp.fd_count(tap.pid)
    clients = []
    for _ in range(5):
        c = SmtpClient(tap.port)
        assert c.code() == 220
        clients.append(c)
    time.sleep(2.5)
    held = hp.fd_count(tap.pid) - base
    assert held == 2 * len(clients), "%d descriptors for %d idle sessions" % (held, len(clients))
    for c in clients:
        c.expect("NOOP", 250)
        c.expect("QUIT", 221)
    evs = tap.wait_events(1 + len(clients), timeout=10)
    assert [e["reason"] for e in evs[1:]] == ["quit"] * len(clients)
    for path in tap.transcript_paths():
        with open(path, "rb") as f:
            assert b" C: QUIT" in f.read(), path


@pytest.mark.limit(30)
@pytest.mark.parametrize("what", ["removed", "moved"])
def test_journal_gone_between_sessions(tap_factory, sink, what):
    """After one session, the day's journal is removed (as a clean-up of old logs would) or
    moved away (an archive, logrotate), and the next session starts at once.

    journal: a new file of the same name, the next session's records from its offset 0,
    where the event line says (the proxy checks the name at each write); the moved file: only
    the first session."""
    tap = tap_factory(sink.port)
    first = hp.normal_session(tap, sink=sink)
    path = os.path.join(tap.log_dir, first["transcript"]["file"])
    if what == "removed":
        os.unlink(path)
    else:
        os.rename(path, path + ".moved")
    ev = hp.normal_session(tap, sink=sink)  # checks the records where the event says
    assert ev["transcript"] == {"file": first["transcript"]["file"], "offset": 0}, ev
    if what == "moved":
        with open(path + ".moved", "rb") as f:
            sids = {l.split(b" ")[1] for l in f.read().splitlines()}
        assert sids == {first["session"].encode()}


@pytest.mark.limit(30)
@pytest.mark.parametrize("how", ["recreated", "removed", "sighup"])
def test_log_dir_removed_while_running(tap_factory, sink, how):
    """The whole log directory is removed while the proxy runs, with a session open across
    the removal; then re-created by the operator (recreated, sighup: and SIGHUP sent), or not
    (removed).

    journal: the next write notices (the name no longer leads to the file it holds), opens the
    log directory again (creating it if it is missing) and a new day's file in it: the open
    session's later records and the next session are recorded there, not lost in the removed
    directory until a restart."""
    tap = tap_factory(sink.port)
    hp.normal_session(tap, sink=sink)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO across.example", 250)
    time.sleep(1.2)  # its first records are written into the old directory
    shutil.rmtree(tap.log_dir)
    if how != "removed":
        os.mkdir(tap.log_dir, 0o750)
    if how == "sighup":
        tap.signal(signal.SIGHUP)
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    c.read_until_eof(5)
    ev = hp.normal_session(tap, sink=sink)
    assert ev["transcript"]["file"] in os.listdir(tap.log_dir)
    sessions = tap.journal_sessions()
    across = [s for s in sessions.values() if any(t == b"EHLO across.example" for _, k, t in s.lines)]
    assert not across  # its EHLO went with the old directory
    texts = [t for s in sessions.values() for _, k, t in s.lines]
    assert b"NOOP" in texts and b"QUIT" in texts


@pytest.mark.limit(30)
def test_busy_session_gives_back_its_transcript_descriptor(tap_factory, sink):
    """A session left idle past a flush tick (its creation's descriptor given back), then
    sending a 200 KiB message: its transcript is flushed several times through a descriptor
    opened again and kept until the next tick.  Then idle for 2.5 s.

    proxy: two descriptors for the session (client and upstream) and no more; the transcript
    holds the whole message, in order."""
    tap = tap_factory(sink.port)
    hp.normal_session(tap, sink=sink)
    base = hp.fd_count(tap.pid)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO busy.example", 250)
    time.sleep(1.5)
    lines = [b"line %05d of a busy session's message" % i for i in range(5000)]
    c.transaction("<a@example.com>", ["<b@example.net>"],
                  b"Subject: busy\r\n\r\n" + b"\r\n".join(lines) + b"\r\n")
    time.sleep(2.5)
    held = hp.fd_count(tap.pid) - base
    assert held == 2, "%d descriptors for one idle session" % held
    c.expect("QUIT", 221)
    ev = tap.wait_events(2, timeout=10)[1]
    t = hp.transcript_of(tap, ev)
    recorded = [l for l in t.client_lines() if l.startswith("line ")]
    assert recorded == [l.decode() for l in lines]


def files_under(path):
    """Every file below path, as paths relative to it."""
    return sorted(os.path.relpath(os.path.join(root, fn), path)
                  for root, _dirs, files in os.walk(path) for fn in files)


def events_files(tap):
    """Files in the tap's work directory (its log directory included) named like events."""
    return [p for p in files_under(tap.workdir) if "events" in p]


def tap_without_events_path(tap_factory, sink, *args):
    """smtptap started with args and without the harness's --events FILE, so that nothing
    but args decides where events go."""
    tap = tap_factory(sink.port, *args, start=False)
    tap.events_path = None
    return tap.start()


@pytest.mark.limit(20)
def test_no_transcripts_keeps_the_event_line(tap_factory, sink):
    """--no-transcripts: the messages go through, the event line says everything it says
    with transcripts, except that "transcript" is null, and the log directory stays empty."""
    tap = tap_factory(sink.port, "--no-transcripts")
    c = full_session(tap.port)
    assert len(sink.wait_messages(2)) == 2
    ev = tap.event()
    assert ev["transcript"] is None
    assert [t["mail_from"] for t in ev["transactions"]] == ["<a@example.com>", "<>"]
    assert ev["client_octets"] == len(c.sent) and ev["reason"] == "quit"
    assert tap.stop() == 0
    assert files_under(tap.log_dir) == []
    assert "not recording: no transcripts\n" in tap.stderr()


@pytest.mark.limit(20)
def test_events_none_writes_transcripts_only(tap_factory, sink):
    """--events none: transcripts as always, and no events file, not even the default
    LOGDIR/events.jsonl."""
    tap = tap_without_events_path(tap_factory, sink, "--events", "none")
    full_session(tap.port)
    t = tap.transcript()
    assert "MAIL FROM:<a@example.com>" in t.client_lines()
    assert tap.stop() == 0
    assert events_files(tap) == []
    assert files_under(tap.log_dir) == [t.journal]
    assert "not recording: no events\n" in tap.stderr()


@pytest.mark.limit(20)
def test_events_none_sighup_creates_nothing(tap_factory, sink):
    """--events none, then SIGHUP (which reopens the events file): the proxy goes on, the
    next session is recorded, and still no events file appears."""
    tap = tap_without_events_path(tap_factory, sink, "--events", "none")
    tap.signal(signal.SIGHUP)
    full_session(tap.port)
    (t,) = tap.wait_transcripts(1)
    assert tap.stop() == 0
    assert events_files(tap) == []
    assert files_under(tap.log_dir) == [t.journal]


@pytest.mark.limit(20)
def test_policy_without_recording(tap_factory, sink, workdir):
    """--no-transcripts --events none, with rules: a sender policy that records nothing.  The
    rule still rejects, the other message is delivered, and nothing is written but the
    proxy's own log."""
    rules = os.path.join(workdir, "policy.rules")
    with open(rules, "w") as f:
        f.write("mail /@blocked\\.example>/ REJECT 550 5.7.1 Sender not permitted\n")
    tap = tap_without_events_path(tap_factory, sink, "--no-transcripts", "--events", "none",
                                  "--rules", rules)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    assert c.cmd("MAIL FROM:<x@blocked.example>") == [b"550 5.7.1 Sender not permitted\r\n"]
    c.transaction("<a@example.com>", ["<b@example.net>"], b"Subject: policy\r\n\r\nbody\r\n")
    c.expect("QUIT", 221)
    (m,) = sink.wait_messages(1)
    assert m.mail_from == "<a@example.com>"
    assert tap.stop() == 0
    assert files_under(tap.log_dir) == []
    assert events_files(tap) == []
    assert "not recording: no transcripts no events" in tap.stderr()


@pytest.mark.limit(30)
def test_event_answers_the_usual_questions(tap_factory, fake_server):
    """AUTH, then a transaction with ESMTP parameters, one recipient accepted and one refused,
    delivered with a queue id; then a transaction whose only recipient is refused, so that
    DATA is refused too.

    event: mail_from is the address alone, its parameters in mail_params; MAIL, each RCPT and
    AUTH carry their reply text; the final reply's queue id (Postfix's form, as the fake
    server says it); size null for the transaction that never reached DATA; the upstream
    connection's local address is the one the server saw."""
    seen = {}

    def ehlo_hook(conn, line):
        seen["peer"] = "%s:%d" % conn.sock.getpeername()[:2]
        return False

    srv = fake_server(SmtpServerScript(auth={"alice": "s3cret"},
                                       rcpt_code=lambda a: 550 if "nobody" in a else 250,
                                       hooks={"EHLO": ehlo_hook}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("AUTH PLAIN " + base64.b64encode(b"\0alice\0s3cret").decode(), 235)
    c.expect("MAIL FROM:<a@example.com> SIZE=100\tBODY=8BITMIME", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("RCPT TO:<nobody@example.net>", 550)
    c.expect("DATA", 354)
    c.send(b"Subject: q\r\n\r\nbody\r\n.\r\n")
    assert c.code() == 250
    c.expect("MAIL FROM:<>", 250)
    c.expect("RCPT TO:<nobody@example.org>", 550)
    c.expect("DATA", 554)
    c.expect("QUIT", 221)
    ev = tap.event()
    one, two = ev["transactions"]
    assert one["mail_from"] == "<a@example.com>"
    assert one["mail_params"] == ["SIZE=100", "BODY=8BITMIME"]
    assert one["mail_text"] == "2.1.0 Ok"
    assert one["rcpt"] == [{"to": "<b@example.net>", "code": 250, "text": "2.1.5 Ok"},
                           {"to": "<nobody@example.net>", "code": 550, "text": "5.1.1 No such user"}]
    assert one["size"] == len(b"Subject: q\r\n\r\nbody\r\n")
    assert one["text"] == "2.0.0 Ok: queued as FAKE1" and one["queue_id"] == "FAKE1"
    assert two["mail_from"] == "<>" and two["mail_params"] == []
    assert two["size"] is None and two["code"] is None and two["queue_id"] is None
    assert ev["auth"]["code"] == 235 and ev["auth"]["text"].startswith("2.7.0")
    assert ev["upstream_local"] == seen["peer"]
