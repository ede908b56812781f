"""The program around the relay: options, signals, the events file."""

import os
import re
import signal
import socket
import stat
import subprocess
import time

import pytest

import harness
import hostile_peers as hp
from harness import SmtpClient


def run(binary, *args, timeout=5):
    return subprocess.run([binary] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


@pytest.mark.limit(20)
@pytest.mark.parametrize("args,named", [
    (["--max-line", "abc"], "--max-line"),
    (["--bogus"], "--bogus"),
    (["--listen", "nonsense"], "--listen"),
    (["--record", "everything"], "--record"),
    (["--idle-timeout", "1.5"], "--idle-timeout"),
    (["--max-sessions", "-3"], "--max-sessions"),
    (["--upstream", "no-port-here"], "--upstream"),
    (["--listen", "127.0.0.1:99999"], "--listen"),
    (["--workers", "0"], "--workers"),
    (["--workers", "many"], "--workers"),
    (["--workers", "65"], "--workers"),
    (["--no-transcripts", "--on-log-failure", "tempfail"], "--on-log-failure"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_option_exits_2_with_one_line(smtptap_bin, args, named):
    argv = args if "--upstream" in args else ["--upstream", "127.0.0.1:25"] + args
    r = run(smtptap_bin, *argv)
    err = r.stderr.decode()
    assert r.returncode == 2, "exit %d, stderr %r" % (r.returncode, err)
    assert len(err.splitlines()) == 1, "expected one line on stderr, got %r" % err
    assert named in err, "stderr does not name %s: %r" % (named, err)
    assert r.stdout == b""


@pytest.mark.limit(10)
def test_missing_upstream_exits_2(smtptap_bin):
    r = run(smtptap_bin, "--listen", "127.0.0.1:%d" % harness.free_port())
    err = r.stderr.decode()
    assert r.returncode == 2
    assert len(err.splitlines()) == 1 and "--upstream" in err, err


@pytest.mark.limit(10)
def test_version_and_help(smtptap_bin):
    r = run(smtptap_bin, "--version")
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "smtptap 0.1.0"
    # What it runs on, for a bug report: each library's version, then the allocator.
    assert re.fullmatch(r"libevent 2\.\S+, OpenSSL 3\.\S+.*, PCRE2 10\.\S+.*, jansson 2\.\S+",
                        lines[1]), lines
    assert re.fullmatch(r"allocator: (mimalloc \d+\.\d+\.\d+|the C library's malloc)",
                        lines[2]), lines
    assert len(lines) == 3, lines
    r = run(smtptap_bin, "--help")
    assert r.returncode == 0
    for opt in ("--listen", "--upstream", "--log-dir", "--events", "--record", "--max-line",
                "--max-sessions", "--connect-timeout", "--idle-timeout", "--grace", "--syslog",
                "--verbose", "--help", "--version"):
        assert opt.encode() in r.stdout, "--help does not mention %s" % opt


@pytest.mark.limit(10)
def test_listen_address_in_use_fails_at_once(tap_factory, sink):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        tap = tap_factory(sink.port, listen=["127.0.0.1:%d" % busy], start=False)
        tap.start(wait=False)
        rc = tap.wait_exit(5)
        assert rc is not None, "smtptap kept running without its listener"
        assert rc != 0
        assert tap.stderr().strip(), "no reason given on stderr"


@pytest.mark.limit(20)
def test_starts_logs_listening(tap, sink):
    assert "listening on 127.0.0.1:%d" % tap.port in tap.stderr()


@pytest.mark.limit(20)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_without_sessions_exits_0_at_once(tap, sig):
    tap.signal(sig)
    assert tap.wait_exit(2) == 0


@pytest.mark.limit(30)
def test_sigterm_with_open_session(tap, sink):
    """Listeners close at once; the open session goes on to its end; then exit 0."""
    c = hp.session_across_sigterm(tap, 1)
    assert tap.alive()
    c.expect("QUIT", 221)
    assert tap.wait_exit(3) == 0, "smtptap did not exit 0 once the last session ended"
    (m,) = sink.wait_messages(1)
    assert m.content.endswith(b"still delivered\n")
    ev = tap.event()
    assert ev["reason"] == "quit"


@pytest.mark.limit(30)
def test_sigterm_grace_period_ends_sessions(tap_factory, sink):
    tap = tap_factory(sink.port, "--grace", "1")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    t0 = time.monotonic()
    tap.signal(signal.SIGTERM)
    r = c.reply()
    assert len(r) == 1 and r[0].startswith(b"421 4.3.2 "), r
    assert b"shutting down" in r[0]
    assert c.read_until_eof(3) == b""
    assert 0.5 <= time.monotonic() - t0 <= 4
    assert tap.wait_exit(3) == 0
    ev = tap.event()
    assert ev["reason"] == "shutdown"


@pytest.mark.limit(30)
def test_sighup_reopens_events_file(tap, sink):
    def session():
        c = SmtpClient(tap.port)
        assert c.code() == 220
        c.expect("QUIT", 221)
        c.read_until_eof(3)

    session()
    (first,) = tap.wait_events(1)
    rotated = tap.events_path + ".1"
    os.rename(tap.events_path, rotated)
    tap.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert tap.alive(), "SIGHUP ended smtptap"
    session()
    (second,) = tap.wait_events(1)
    assert second["session"] != first["session"]
    assert [e["session"] for e in tap.events(rotated)] == [first["session"]]
    assert stat.S_IMODE(os.stat(tap.events_path).st_mode) == 0o640


@pytest.mark.limit(20)
def test_events_file_mode_and_append(tap_factory, sink, workdir):
    """The events file is created 0640 and appended to across restarts."""
    for i in range(2):
        tap = tap_factory(sink.port, name="run%d" % i, start=False)
        tap.events_path = os.path.join(workdir, "shared-events.jsonl")
        tap.start()
        c = SmtpClient(tap.port)
        c.reply()
        c.expect("QUIT", 221)
        tap.wait_events(i + 1)
        assert tap.stop() == 0
    assert stat.S_IMODE(os.stat(os.path.join(workdir, "shared-events.jsonl")).st_mode) == 0o640
    assert len(tap.events()) == 2


@pytest.mark.limit(20)
def test_default_log_dir_and_events_file(tap_factory, sink, workdir):
    """Without --log-dir and --events: ./smtptap-logs and DIR/events.jsonl (cwd = workdir)."""
    tap = tap_factory(sink.port, start=False)
    tap.log_dir = None
    tap.events_path = None
    tap.start()
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("QUIT", 221)
    tap.log_dir = os.path.join(workdir, "smtptap-logs")
    tap.events_path = os.path.join(tap.log_dir, "events.jsonl")
    (ev,) = tap.wait_events(1)
    assert ev["reason"] == "quit"
    assert tap.transcript().location == ev["transcript"]


SYSLOG_SETUP = r"""
set -e
# A private /dev in this mount namespace: the few nodes smtptap needs, and /dev/log a
# datagram socket the test reads.  Nothing outside the namespace changes.
mkdir -p "$W/olddev"
mount --bind /dev "$W/olddev"
mount -t tmpfs -o mode=755 none /dev
for n in null zero urandom random; do
    touch "/dev/$n"
    mount --bind "$W/olddev/$n" "/dev/$n"
done
touch /dev/log
mount --bind "$W/log.sock" /dev/log
exec "$@"
"""


def start_syslog_tap(smtptap_bin, sink, workdir, workers=1):
    """smtptap --syslog in a mount namespace whose /dev/log is a datagram socket the test
    holds: (that socket, the process, its port)."""
    w = os.path.join(workdir, "syslog")
    os.mkdir(w)
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(os.path.join(w, "log.sock"))
    port = harness.free_port()
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", SYSLOG_SETUP, "sh",
            smtptap_bin, "--syslog", "--listen", "127.0.0.1:%d" % port,
            "--upstream", "127.0.0.1:%d" % sink.port, "--log-dir", os.path.join(w, "logs"),
            "--events", os.path.join(w, "events.jsonl"), "--workers", str(workers)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, W=w))
    return log, proc, port


@pytest.mark.skipif(not harness.IS_ROOT, reason="needs root (a mount namespace)")
@pytest.mark.limit(30)
def test_syslog_gets_the_log_and_stderr_nothing(smtptap_bin, sink, workdir):
    """--syslog, run in a mount namespace of its own whose /dev/log is a socket the test
    reads.  syslog: datagrams from smtptap[PID] at facility mail: the listener, the session
    closed with reason quit; stderr: empty."""
    log, proc, port = start_syslog_tap(smtptap_bin, sink, workdir)
    log.settimeout(5)
    try:
        harness.wait_listening(port, 10.0, alive=lambda: proc.poll() is None)
        c = SmtpClient(port)
        assert c.code() == 220
        c.expect("QUIT", 221)
        got = []
        while not any(" reason=quit duration=" in m for m in got):
            got.append(log.recv(4096).decode("utf-8", "replace"))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        log.close()
    tag = "smtptap[%d]: " % proc.pid
    assert all(m.startswith("<") and tag in m for m in got), got
    assert all(int(m[1:m.index(">")]) >> 3 == 2 for m in got), "not facility mail: %r" % got
    assert any("listening on 127.0.0.1:%d" % port in m for m in got), got
    assert proc.returncode == 0, (proc.returncode, err)
    assert err == b"" and out == b"", (out, err)


@pytest.mark.skipif(not harness.IS_ROOT, reason="needs root (a mount namespace)")
@pytest.mark.limit(30)
def test_syslog_lines_name_the_worker_that_wrote_them(smtptap_bin, sink, workdir):
    """--syslog with two workers: each line names the process that sent it, as syslog(3)
    would.  The pid is kept, not asked for per line, and renewed in each forked child: a
    session's line names a worker, never the supervisor whose pid was kept before the fork."""
    log, proc, port = start_syslog_tap(smtptap_bin, sink, workdir, workers=2)
    log.settimeout(5)
    n = 20
    try:
        harness.wait_listening(port, 10.0, alive=lambda: proc.poll() is None)
        got = []
        for i in range(n):
            # One at a time, read as it goes: a datagram socket's queue holds few lines.
            c = SmtpClient(port)
            assert c.code() == 220
            c.expect("QUIT", 221)
            c.close()
            while sum(" reason=quit duration=" in m for m in got) <= i:
                got.append(log.recv(4096).decode("utf-8", "replace"))
        with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)) as f:
            workers = {int(p) for p in f.read().split()}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        log.close()
    assert len(workers) == 2, workers
    pids = [int(re.search(r" smtptap\[(\d+)\]: ", m).group(1)) for m in got]
    assert set(pids) <= workers | {proc.pid}, (pids, workers, proc.pid)
    sessions = [p for p, m in zip(pids, got) if " reason=quit duration=" in m]
    assert len(sessions) == n and set(sessions) <= workers, (sessions, workers)


@pytest.mark.skipif(not harness.IS_ROOT, reason="needs root (a mount namespace)")
@pytest.mark.limit(60)
def test_syslog_daemon_that_stops_reading_blocks_nothing(smtptap_bin, sink, workdir):
    """--syslog with a /dev/log nobody reads: once its queue is full, syslog(3) would block the
    event loop (every session with it).  Lines are dropped and counted instead: 400 sessions
    (a log line each, far past the queue) are all served, and once the reader reads
    again the count of dropped lines comes with the next line."""
    log, proc, port = start_syslog_tap(smtptap_bin, sink, workdir)
    try:
        harness.wait_listening(port, 10.0, alive=lambda: proc.poll() is None)
        for _ in range(400):
            c = SmtpClient(port, timeout=5.0)
            assert c.code() == 220
            c.expect("QUIT", 221)
            c.close()
        log.settimeout(0.5)
        got = []
        try:
            while True:
                got.append(log.recv(4096).decode("utf-8", "replace"))
        except socket.timeout:
            pass
        assert len(got) < 400, "the queue never filled: %d lines" % len(got)
        c = SmtpClient(port, timeout=5.0)
        assert c.code() == 220
        c.expect("QUIT", 221)
        log.settimeout(5)
        later = []
        while not any(" reason=quit duration=" in m for m in later):
            later.append(log.recv(4096).decode("utf-8", "replace"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # blocked in a send to the full socket
            proc.kill()
            proc.communicate(timeout=10)
        log.close()
    # The count goes with the first line sent once the reader reads again: that can be a line
    # of the last sessions, logged while the drain above was already reading (slow under ASan).
    dropped = [m for m in got + later if "log lines dropped: the syslog daemon did not keep up" in m]
    assert dropped, got + later
    n = sum(int(m.split("]: ")[1].split()[0]) for m in dropped)
    # Every session logs a line: what was read plus what was dropped covers them all.
    assert len(got) + n >= 400, (len(got), n)


# --------------------------------------------------------------------------------------------
# The operator's view (issue 13 items 13, 14, 15): options that say what was meant, failures
# in the log with their cause, --user that takes over only what smtptap created, and an
# upstream that is smtptap itself.


@pytest.mark.limit(10)
def test_unknown_option_suggests_the_closest(smtptap_bin):
    r = run(smtptap_bin, "--upsteam", "127.0.0.1:25")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.splitlines() == ["smtptap: --upsteam: unknown option (did you mean --upstream?)"], err
    r = run(smtptap_bin, "--upstream", "127.0.0.1:25", "--verbose=yes")
    assert r.returncode == 2 and "takes no value" in r.stderr.decode(), r.stderr


@pytest.mark.limit(10)
def test_short_h_prints_the_help(smtptap_bin):
    r = run(smtptap_bin, "-h")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().startswith("usage: smtptap"), r.stdout
    assert b"--check-rules" in r.stdout


@pytest.mark.limit(15)
def test_check_rules_anywhere_on_the_command_line(smtptap_bin, workdir):
    """An administrator adds --check-rules to the service's own command line: the --rules files
    and any file names given are checked, nothing starts."""
    good = os.path.join(workdir, "good.rules")
    bad = os.path.join(workdir, "bad.rules")
    with open(good, "w") as f:
        f.write("mail /^MAIL FROM:<spam@/i REJECT\n")
    with open(bad, "w") as f:
        f.write("mail /(unclosed/ REJECT\n")
    port = harness.free_port()
    base = ["--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:25", "-v"]
    r = run(smtptap_bin, *base, "--rules", good, "--check-rules")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "1 rule in 1 file OK\n"
    r = run(smtptap_bin, "-v", "--check-rules", good)
    assert r.returncode == 0 and r.stdout.decode() == "1 rule in 1 file OK\n", r.stderr
    r = run(smtptap_bin, *base, "--rules", good, "--check-rules", bad)
    assert r.returncode == 1, r.stderr
    assert "bad.rules:1" in r.stderr.decode()
    assert not harness.is_listening(port)


@pytest.mark.limit(20)
def test_listen_on_a_name(tap_factory, sink):
    """--listen localhost:PORT is resolved at start-up (getaddrinfo) and bound."""
    port = harness.free_port()
    tap = tap_factory(sink.port, listen=["localhost:%d" % port], start=False)
    tap.port = port
    tap.start(wait=False)
    harness.wait_until(lambda: "listening on 127.0.0.1:%d" % port in tap.stderr(), 5,
                       what="listening on 127.0.0.1")
    hp.normal_session(tap, sink=sink)


@pytest.mark.limit(15)
def test_listen_on_an_unknown_name_fails_with_the_reason(tap_factory, sink):
    tap = tap_factory(sink.port, listen=["no-such-host.invalid:2525"], start=False)
    tap.start(wait=False)
    assert tap.wait_exit(10) == 1, tap.stderr()
    err = tap.stderr()
    assert "--listen no-such-host.invalid:2525: cannot resolve no-such-host.invalid" in err, err
    assert "Invalid argument" not in err


@pytest.mark.limit(15)
def test_unknown_user_refused_before_anything_is_made(tap_factory, sink):
    """--user is looked up first: no log directory, no events file, no listener."""
    tap = tap_factory(sink.port, "--user", "no-such-user-smtptap", start=False)
    tap.start(wait=False)
    assert tap.wait_exit(5) == 1, tap.stderr()
    assert tap.stderr().splitlines() == ["smtptap: --user no-such-user-smtptap: no such user"]
    assert not os.path.exists(tap.log_dir)
    assert not os.path.exists(tap.events_path)


@pytest.mark.limit(20)
def test_without_a_certificate_says_starttls_goes_unrecorded(tap_factory, sink, workdir):
    tap = tap_factory(sink.port)
    line = "a session that uses STARTTLS"
    harness.wait_until(lambda: "relaying to" in tap.stderr(), 5, what="start-up")
    assert hp.stderr_count(tap, "no --tls-cert: a session that uses STARTTLS is relayed "
                                "unrecorded after it") == 1, tap.stderr()
    key = os.path.join(workdir, "k.pem")
    crt = os.path.join(workdir, "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", crt, "-days", "1", "-subj", "/CN=tap.example"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    tls = tap_factory(sink.port, "--tls-cert", crt, "--tls-key", key, name="tls")
    harness.wait_until(lambda: "relaying to" in tls.stderr(), 5, what="start-up")
    assert "no --tls-cert" not in tls.stderr() and line not in tls.stderr()


@pytest.mark.limit(20)
def test_upstream_unreachable_is_a_warning_with_the_cause(tap_factory):
    closed = harness.free_port()
    tap = tap_factory(closed)
    c = SmtpClient(tap.port)
    assert c.code() == 421
    c.close()
    want = "warning: session=%s connect to 127.0.0.1:%d: Connection refused"
    harness.wait_until(lambda: re.search(r"warning: session=[0-9a-f]{16} connect to "
                                         r"127\.0\.0\.1:%d: Connection refused" % closed,
                                         tap.stderr()), 5, what=want)


@pytest.mark.limit(20)
def test_upstream_tls_failure_is_a_warning_with_the_cause(tap_factory, sink):
    """--upstream-tls implicit to a server that speaks plain SMTP: the handshake fails."""
    tap = tap_factory(sink.port, "--upstream-tls", "implicit", "--upstream-verify", "none")
    c = SmtpClient(tap.port)
    assert c.code() == 421
    c.close()
    harness.wait_until(lambda: re.search(r"warning: session=[0-9a-f]{16} TLS with 127\.0\.0\.1:%d "
                                         r"failed: \S" % sink.port, tap.stderr()), 5,
                       what="the TLS warning")


@pytest.mark.limit(15)
@pytest.mark.parametrize("listen", ["127.0.0.1", "0.0.0.0"])
def test_upstream_that_is_our_own_listener_refused_at_start(smtptap_bin, workdir, listen):
    port = harness.free_port()
    r = run(smtptap_bin, "--listen", "%s:%d" % (listen, port), "--upstream",
            "127.0.0.1:%d" % port, "--log-dir", os.path.join(workdir, "logs"))
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.splitlines() == ["smtptap: --upstream 127.0.0.1:%d: that is smtptap's own "
                                "listener %s:%d" % (port, listen, port)], err


@pytest.mark.limit(30)
def test_upstream_name_that_comes_back_to_us_refused_per_session(tap_factory, sink):
    """--upstream localhost:P where P is our own listener: a name is checked when a session
    resolves it.  The client gets 421 4.3.0; the session our listener accepted from our own
    upstream connection is closed at once instead of connecting in turn, so the loop ends:
    a handful of sessions, not --max-sessions of them."""
    port = harness.free_port()
    tap = tap_factory(sink.port, "--max-sessions", "50", listen=["127.0.0.1:%d" % port],
                      upstream="localhost:%d" % port, start=False)
    tap.port = port
    tap.start()
    c = SmtpClient(port)
    line = c.readline()
    assert line.startswith(b"421 4.3.0 "), line
    c.close()
    harness.wait_until(lambda: "it is smtptap's own listener 127.0.0.1:%d" % port in tap.stderr(),
                       5, what="the loop warning")
    time.sleep(1.0)  # a loop would go on making sessions meanwhile
    opened = tap.stderr().count(" duration=")
    assert opened <= 6, tap.stderr()
    time.sleep(0.5)
    assert tap.stderr().count(" duration=") == opened, "sessions still being made"
    assert tap.alive()


@pytest.mark.skipif(not harness.IS_ROOT, reason="needs root")
@pytest.mark.limit(20)
def test_user_does_not_take_over_an_existing_log_directory(tap_factory, sink, workdir):
    """--log-dir that existed (root's, 0750): smtptap leaves its owner alone and, since
    nobody cannot write there, exits 1 saying so (it used to chown it to nobody)."""
    log_dir = os.path.join(workdir, "existing")
    os.mkdir(log_dir, 0o750)
    tap = tap_factory(sink.port, "--user", "nobody", start=False)
    tap.log_dir = log_dir
    tap.events_path = os.path.join(workdir, "ev", "events.jsonl")
    os.makedirs(os.path.dirname(tap.events_path))
    tap.start(wait=False)
    assert tap.wait_exit(5) == 1, tap.stderr()
    assert "log directory %s existed and nobody cannot write there" % log_dir in tap.stderr()
    st = os.stat(log_dir)
    assert (st.st_uid, st.st_gid) == (0, 0), "the existing directory was handed over"


@pytest.mark.skipif(not harness.IS_ROOT, reason="needs root")
@pytest.mark.limit(20)
def test_user_warns_about_files_sighup_cannot_reread(tap_factory, sink, workdir):
    """A rule file only root can read: it loads at start, and the log says SIGHUP cannot
    reload it as nobody (instead of "Permission denied" at the first reload)."""
    rules = os.path.join(workdir, "private.rules")
    with open(rules, "w") as f:
        f.write("mail /^MAIL FROM:<spam@/i REJECT\n")
    os.chmod(rules, 0o600)
    tap = tap_factory(sink.port, "--user", "nobody", "--rules", rules)
    harness.wait_until(lambda: "running as nobody" in tap.stderr(), 5, what="the drop")
    assert ("--rules %s: nobody cannot read it, so SIGHUP cannot reload it: Permission denied"
            % rules) in tap.stderr(), tap.stderr()
    hp.normal_session(tap, sink=sink)
