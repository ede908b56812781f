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


@pytest.mark.skipif(not harness.IS_ROOT, reason="needs root (a mount namespace)")
@pytest.mark.limit(30)
def test_syslog_gets_the_log_and_stderr_nothing(smtptap_bin, sink, workdir):
    """--syslog, run in a mount namespace of its own whose /dev/log is a socket the test
    reads.  syslog: datagrams from smtptap[PID] at facility mail: the listener, the session
    closed with reason quit; stderr: empty."""
    w = os.path.join(workdir, "syslog")
    os.mkdir(w)
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(os.path.join(w, "log.sock"))
    log.settimeout(5)
    port = harness.free_port()
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", SYSLOG_SETUP, "sh",
            smtptap_bin, "--syslog", "--listen", "127.0.0.1:%d" % port,
            "--upstream", "127.0.0.1:%d" % sink.port, "--log-dir", os.path.join(w, "logs"),
            "--events", os.path.join(w, "events.jsonl"), "--workers", "1"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, W=w))
    try:
        harness.wait_listening(port, 10.0, alive=lambda: proc.poll() is None)
        c = SmtpClient(port)
        assert c.code() == 220
        c.expect("QUIT", 221)
        got = []
        while not any("closed reason=quit" in m for m in got):
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
