"""The journal: one append-only file a day for every session and worker (issue 16)."""

import datetime
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import harness
import hostile_peers as hp
from harness import SmtpClient

# Sessions for the concurrency test.  The issue asks for 10,000; on this 2-core machine that
# takes about a minute with everything else the suite runs, so the default is 10,000 unless
# SMTPTAP_JOURNAL_SESSIONS says otherwise.
SESSIONS = int(os.environ.get("SMTPTAP_JOURNAL_SESSIONS", "10000"))


def journal_lines(tap):
    """Every line of every journal file, as octets (the torn ones too)."""
    out = []
    for path in harness.journal_files(tap.log_dir):
        with open(path, "rb") as f:
            out += f.read().split(b"\n")
    return out


@pytest.mark.limit(240)
def test_concurrent_sessions_two_workers(tap_factory, sink):
    """smtp-source: SESSIONS sessions, 50 at a time, one message each, through two workers
    appending to one journal.

    journal: every line a whole record (none interleaved within a line); every session's
    records complete (from its "* session" record to its close), in order, none lost: the
    client's lines are exactly what smtp-source sends; each event points at its session's
    first record."""
    if not os.access(harness.SMTP_SOURCE, os.X_OK):
        pytest.skip("smtp-source not installed (package postfix)")
    tap = tap_factory(sink.port, "--workers", "2")
    r = subprocess.run([harness.SMTP_SOURCE, "-s", "50", "-m", str(SESSIONS), "-l", "200",
                        "-f", "a@example.com", "-t", "b@example.net", "127.0.0.1:%d" % tap.port],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=200)
    assert r.returncode == 0, r.stdout.decode()[-2000:]
    evs = tap.wait_events(SESSIONS, timeout=30)
    assert len(evs) == SESSIONS
    # Two sessions with one id read as one in the journal (32-bit ids did, about 1 run in 100).
    assert len({e["session"] for e in evs}) == SESSIONS, "two sessions drew the same id"
    assert tap.stop() == 0
    sessions = tap.journal_sessions()  # strict: every complete line is a record
    assert journal_lines(tap)[-1] == b"", "the journal does not end with a line end"
    assert len(sessions) == SESSIONS
    by_id = {e["session"].encode(): e for e in evs}
    assert set(sessions) == set(by_id)
    files = {}
    for sid, js in sessions.items():
        ev = by_id[sid]
        assert ev["transcript"] == {"file": js.journal, "offset": js.offset}, (sid, ev["transcript"])
        kinds = [k for _, k, _ in js.lines]
        texts = [t for _, _, t in js.lines]
        assert texts[0].startswith(b"session client=") and texts[-1].startswith(b"close reason=quit"), sid
        stamps = [ts for ts, _, _ in js.lines]
        assert stamps == sorted(stamps), "records of %s out of order" % sid
        client = [t for k, t in zip(kinds, texts) if k == b"C:"]
        assert client[:4] == [b"HELO " + client[0][5:], b"MAIL FROM:<a@example.com>",
                              b"RCPT TO:<b@example.net>", b"DATA"], (sid, client[:4])
        assert client[-2:] == [b".", b"QUIT"], (sid, client[-2:])
        files.setdefault(js.journal, 0)
        files[js.journal] += 1
    # Each event's offset is exact: seek there, read the session record.
    for ev in evs[:: max(1, SESSIONS // 200)]:
        with open(os.path.join(tap.log_dir, ev["transcript"]["file"]), "rb") as f:
            f.seek(ev["transcript"]["offset"])
            line = f.readline()
        assert line.split(b" ")[1:4] == [ev["session"].encode(), b"*", b"session"], line


@pytest.mark.limit(60)
def test_sigkill_loses_at_most_the_last_second(tap_factory, sink):
    """A client sends message lines every 20 ms for 3 s; the proxy is killed (SIGKILL) while
    they flow.

    journal: every complete line is a record; the session's recorded lines are a prefix of
    what was sent, holding at least every line sent more than 1.5 s before the kill (the
    buffer is written at least once a second; the half second is scheduling slack).  Then a
    restarted proxy appends after whatever the crash left: the next session parses whole, its
    event points at it, and a torn last line is skipped by the reader, not continued."""
    tap = tap_factory(sink.port)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO kill.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    sent = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 3.0:
        line = b"line %05d" % i
        c.send(line + b"\r\n")
        sent.append((time.monotonic(), line))
        i += 1
        time.sleep(0.02)
    killed = time.monotonic()
    tap.signal(signal.SIGKILL)
    tap.wait_exit(5)
    c.close()
    sessions = tap.journal_sessions(torn_ok=True)
    (js,) = sessions.values()
    recorded = [t for _, k, t in js.lines if k == b"C:" and t.startswith(b"line ")]
    assert recorded == [l for _, l in sent[:len(recorded)]], "recorded lines are not what was sent"
    due = [l for ts, l in sent if ts < killed - 1.5]
    assert len(recorded) >= len(due), "lost %d lines sent over 1.5 s before the kill" % (
        len(due) - len(recorded))

    # The crash's leftover, as a kill in the middle of a write would leave it: half a record.
    (path,) = harness.journal_files(tap.log_dir)
    with open(path, "ab") as f:
        f.write(b"2026-12-06T23:49:05.9384")
    torn_at = os.path.getsize(path)
    tap2 = tap_factory(sink.port, name="restarted")
    tap2.log_dir = tap.log_dir
    tap2.stop()
    tap2.start()
    c = SmtpClient(tap2.port)
    assert c.code() == 220
    c.expect("QUIT", 221)
    ev = tap2.event()
    assert ev["transcript"]["offset"] == torn_at + 1, ev["transcript"]  # after the "\n" that ends the torn line
    with open(path, "rb") as f:
        data = f.read()
    assert data[torn_at:torn_at + 1] == b"\n"
    with pytest.raises(AssertionError):
        tap2.journal_sessions()  # the torn line is not a record...
    sessions = tap2.journal_sessions(torn_ok=True)  # ... and a reader goes past it
    assert ev["session"].encode() in sessions


def day_name(days_ago):
    d = datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=days_ago)
    return d.strftime("%Y-%m-%d") + ".log"


@pytest.mark.limit(30)
def test_keep_days_removes_old_journals_only(tap_factory, sink, workdir):
    """--keep-days 2, with journals dated today and 1 to 400 days ago planted in the log
    directory (the clock faked by the names), and files that only look like journals.

    start-up: the journals dated before today minus 2 days are removed; today's, yesterday's
    and the day before's stay, and so does everything else (the events file, other names, a
    directory named like a journal)."""
    log_dir = os.path.join(workdir, "logs")
    os.makedirs(log_dir)
    old = [day_name(d) for d in (3, 4, 30, 400)]
    kept = [day_name(d) for d in (0, 1, 2)]
    other = ["events.jsonl", "notes.log", day_name(5) + ".gz", "x" + day_name(6), "2026-13-01.log"]
    for n in old + kept + other:
        with open(os.path.join(log_dir, n), "w") as f:
            pass  # empty: the harness reads what is named like a journal
    os.mkdir(os.path.join(log_dir, day_name(7)))  # a directory: not a journal
    tap = tap_factory(sink.port, "--keep-days", "2")
    hp.normal_session(tap, sink=sink)
    left = set(os.listdir(log_dir))
    assert not (set(old) & left), sorted(left)
    assert set(kept + other + [day_name(7)]) <= left, sorted(left)
    for n in old:
        assert "journal %s removed (--keep-days 2)" % n in tap.stderr()


@pytest.mark.limit(20)
def test_keep_days_invalid(smtptap_bin):
    r = subprocess.run([smtptap_bin, "--upstream", "127.0.0.1:25", "--keep-days", "-1"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    assert r.returncode == 2 and b"--keep-days" in r.stderr, r.stderr


@pytest.mark.limit(30)
def test_workers_default_one_per_cpu(tap_factory, sink):
    """Without --workers, one worker per CPU online (nginx's worker_processes auto)."""
    tap = tap_factory(sink.port, "--workers=auto", start=False)
    argv = [a for a in tap.argv() if a != "--workers=auto"]
    assert "--workers" not in argv
    tap.argv = lambda: argv
    tap.start()
    want = os.sysconf("SC_NPROCESSORS_ONLN")

    def children():
        with open("/proc/%d/task/%d/children" % (tap.pid, tap.pid)) as f:
            return f.read().split()

    kids = harness.wait_until(lambda: len(children()) == want and children(), 5,
                              what="%d workers" % want)
    assert len(kids) == want
    hp.normal_session(tap, sink=sink)


def one_message(tap, i):
    """A client that has sent one message and is told it was taken."""
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO short.example", 250)
    c.expect("MAIL FROM:<s%d@example.com>" % i, 250)
    c.expect("RCPT TO:<r@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: short %d\r\n\r\nbody\r\n.\r\n" % i)
    assert c.code() == 250
    return c


def log_writes(trace):
    """write(2)/writev(2) calls on descriptor 2 (the program's log) in an strace output file."""
    with open(trace) as f:
        return sum(1 for l in f if re.match(r"(\d+ +)?writev?\(2,", l))


@pytest.mark.limit(60)
def test_session_log_lines_share_a_write(tap_factory, sink, tmp_path):
    """Twenty one-message sessions that end in the same pass of the loop; the proxy's writes to
    its log counted with strace.

    A session logs one line, its Postfix-style summary, queued and written at the end of the
    loop's pass: sessions that end in one pass share one write (a write each was the cost this
    batching removed), and every session's line is there once.  To end them in one pass the
    proxy is stopped (SIGSTOP) while the twenty clients reset their connections, so that all
    twenty resets wait for it when it goes on."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed (package strace)")
    tap = tap_factory(sink.port)
    n = 20
    clients = [one_message(tap, i) for i in range(n)]
    trace = str(tmp_path / "trace")
    st = subprocess.Popen(["strace", "-qq", "-e", "trace=write,writev", "-e", "signal=none",
                           "-o", trace, "-p", str(tap.pid)], stderr=subprocess.DEVNULL)
    stopped = False
    try:
        harness.wait_until(lambda: os.path.exists(trace), 10, what="strace attached")
        time.sleep(0.3)
        os.kill(tap.pid, signal.SIGSTOP)
        stopped = True
        for c in clients:
            # SO_LINGER 0: close sends a reset, which ends the session at once (a FIN would
            # wait for the server's close).
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        time.sleep(0.3)
        os.kill(tap.pid, signal.SIGCONT)
        stopped = False
        harness.wait_until(lambda: tap.stderr().count(" from=<s") == n, 10,
                           what="every session's log line")
    finally:
        if stopped:
            os.kill(tap.pid, signal.SIGCONT)
        st.terminate()
        st.wait(10)
    writes = log_writes(trace)
    assert 1 <= writes < n / 2, "%d log writes for %d sessions ending together" % (writes, n)
    for i in range(n):
        assert tap.stderr().count(" from=<s%d@example.com>" % i) == 1, tap.stderr()


@pytest.mark.limit(60)
def test_short_sessions_share_a_write(tap_factory, sink, tmp_path):
    """Twenty one-message sessions open at once, ended together; the proxy's writes to the
    journal counted with strace.

    journal: not written at each session's end but in batches (20 ms after a session ends,
    so its event line is not held back; the sessions that end meanwhile share the write):
    twenty sessions ending together take far fewer than twenty writes.  events: each
    session's line, once written, points at its records, and none comes before them."""
    if shutil.which("strace") is None:
        pytest.skip("strace not installed (package strace)")
    tap = tap_factory(sink.port)
    day = os.path.join(tap.log_dir, datetime.datetime.now(datetime.timezone.utc)
                       .strftime("%Y-%m-%d.log"))
    n = 20
    clients = [one_message(tap, i) for i in range(n)]
    time.sleep(1.2)  # the tick has written what the sessions recorded so far
    trace = str(tmp_path / "trace")
    st = subprocess.Popen(["strace", "-qq", "-y", "-e", "trace=write,writev", "-e", "signal=none",
                           "-o", trace, "-p", str(tap.pid)], stderr=subprocess.DEVNULL)
    try:
        harness.wait_until(lambda: os.path.exists(trace), 10, what="strace attached")
        time.sleep(0.3)
        for c in clients:
            c.send(b"QUIT\r\n")
        for c in clients:
            assert c.code() == 221
            c.close()
        tap.wait_events(n, timeout=10)
    finally:
        st.terminate()
        st.wait(10)
    with open(trace) as f:
        writes = sum(1 for l in f if re.match(r"(\d+ +)?writev?\(\d+<[^>]*\.log>", l))
    assert 1 <= writes < n / 2, "%d journal writes for %d sessions ending together" % (writes, n)
    evs = tap.wait_events(n, timeout=10)
    with open(day, "rb") as f:
        data = f.read()
    for ev in evs:
        off = ev["transcript"]["offset"]
        assert data[off:].split(b"\n", 1)[0].split(b" ")[1] == ev["session"].encode(), ev
        assert b" * session " in data[off:].split(b"\n", 1)[0]
