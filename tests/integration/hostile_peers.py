"""Helpers for the hostile-peer and hardening integration tests (test_hostile.py,
test_hardening.py): process figures from /proc (RSS, CPU time, uid, descriptors), a real TLS
ClientHello, a Postfix smtpd that honours XCLIENT/XFORWARD, and the closing check every test
ends with: the proxy still serves a normal session.

Standard library only; reuses harness.py (not changed)."""

import json
import os
import signal
import socket
import ssl
import threading
import time

import harness
from harness import SmtpClient, Transcript


# --------------------------------------------------------------------------------------------
# /proc figures


def proc_status(pid):
    """/proc/PID/status as a dict of its fields (text after the colon, stripped)."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rss_kib(pid):
    return int(proc_status(pid)["VmRSS"].split()[0])


def uids(pid):
    """(real, effective, saved, filesystem) uids of a process."""
    return tuple(int(x) for x in proc_status(pid)["Uid"].split())


def gids(pid):
    return tuple(int(x) for x in proc_status(pid)["Gid"].split())


def groups(pid):
    return [int(x) for x in proc_status(pid)["Groups"].split()]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (from /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def nofile_limit(pid):
    """The soft and hard RLIMIT_NOFILE of a process, from /proc/PID/limits."""
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                parts = line.split()
                return int(parts[3]), int(parts[4])
    raise AssertionError("no 'Max open files' in /proc/%d/limits" % pid)


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread: base (at start), peak,
    last; use as a context manager."""

    def __init__(self, pid, interval=0.01):
        self.pid = pid
        self.interval = interval
        self.base = rss_kib(pid)
        self.peak = self.base
        self.last = self.base
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                v = rss_kib(self.pid)
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return
            self.samples += 1
            self.last = v
            if v > self.peak:
                self.peak = v
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        try:
            self.last = rss_kib(self.pid)
            self.peak = max(self.peak, self.last)
        except (FileNotFoundError, ProcessLookupError):
            pass
        return False

    @property
    def growth(self):
        return self.peak - self.base

    def report(self, what):
        return ("%s: RSS before %d KiB, peak %d KiB, after %d KiB, peak growth %d KiB "
                "(%.2f MiB), %d samples" % (what, self.base, self.peak, self.last, self.growth,
                                            self.growth / 1024.0, self.samples))


def figure(line):
    """Prints a measured figure so that it shows in `pytest -s` output (and in the report of
    a failing test, through captured stdout)."""
    print("\n[hostile figure] " + line, flush=True)


# --------------------------------------------------------------------------------------------
# A real TLS ClientHello


def client_hello(server_hostname="mx.example"):
    """The octets a real TLS client (Python's ssl, OpenSSL) sends first: its ClientHello
    record(s), taken from a memory BIO, so the test knows exactly what went on the wire.
    Returns (hello_octets, sslobject, incoming_bio, outgoing_bio)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and hello[5:6] == b"\x01", "not a ClientHello: %r" % hello[:16]
    return hello, obj, incoming, outgoing


def tls_verdict_on(obj, incoming, data):
    """Feeds what came back to the TLS client; returns the ssl error it ends with (a string),
    or None if the handshake would simply go on waiting."""
    incoming.write(data)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return None
    except ssl.SSLError as e:
        return "%s: %s" % (type(e).__name__, e)
    return "handshake completed (unexpected)"


# --------------------------------------------------------------------------------------------
# Events and transcripts of one session, found by the client's port


def event_for_client(tap, client_port, timeout=5.0, after=0):
    """The event line of the session whose client was 127.0.0.1:client_port, among the lines
    after the first `after` ones (a client port may have been used before), the latest."""
    want = "127.0.0.1:%d" % client_port

    def find():
        for ev in reversed(tap.events()[after:]):
            if ev.get("client") == want:
                return ev
        return None

    try:
        return harness.wait_until(find, timeout, what="the event of client %s" % want)
    except TimeoutError:
        raise AssertionError("no event line for client %s within %.1fs (have %d lines)" % (
            want, timeout, len(tap.event_lines())))


def transcript_of(tap, ev, timeout=5.0):
    """The transcript of the session an event line names, once its close record is written;
    its first record is where the event says."""
    assert ev["transcript"], "session %s not recorded: %r" % (ev.get("session"), ev)
    try:
        path = tap.transcript_path_of(ev, timeout)
    except TimeoutError:
        path = os.path.join(tap.workdir, "shown", ev["session"] + ".log")
        if not os.path.exists(path):
            raise AssertionError("no records of session %s in the journal" % ev["session"])
    t = Transcript(path, tap.log_dir)  # a format error is reported as such
    assert t.location == ev["transcript"], (t.location, ev["transcript"])
    return t


def record_kinds(t):
    return [(r.kind, r.text) for r in t.records]


def excerpt(t, n=60):
    """The last n records of a transcript, for assertion messages."""
    return "\n".join("%s %s" % (r.kind, r.text[:200]) for r in t.records[-n:])


# --------------------------------------------------------------------------------------------
# The closing check: a normal session still goes through


_normal_serial = [0]


def session_across_sigterm(tap, close_within):
    """A session is open (greeted, EHLO) when SIGTERM comes.  Checks that the listeners close
    within close_within seconds (watched in /proc, so that no probe connection becomes a
    session of its own), that the proxy stays while the session is open, and that the session
    goes on: its message gets its 250.  Returns the client, before its QUIT."""
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    tap.signal(signal.SIGTERM)
    harness.wait_until(lambda: not harness.is_listening(tap.port), close_within,
                       what="the listeners to close")
    assert harness.port_refuses(tap.port)
    assert tap.alive(), "smtptap exited with a session open"
    c.transaction("<a@example.com>", ["<b@example.net>"],
                  b"Subject: during shutdown\r\n\r\nstill delivered\r\n")
    return c


def normal_session(tap, sink=None, server=None, helo="normal.example"):
    """One ordinary session through the proxy: EHLO, MAIL, RCPT, DATA, a short message, QUIT.
    Checks every reply, the session's event line (reason quit, the transaction's 250), its
    transcript (closed, holding the message), and that the message arrived: in the smtp-sink
    dump (sink) or in a FakeServer's conn.messages (server).  Returns the event."""
    _normal_serial[0] += 1
    tag = "normal-%d-%d" % (os.getpid(), _normal_serial[0])
    content = ("Subject: %s\r\n\r\nthe proxy still serves a normal session\r\n" % tag).encode()
    before = sink.count() if sink is not None else None
    events_before = len(tap.event_lines())
    c = SmtpClient(tap.port)
    port = c.local_port
    try:
        g = c.reply()
        assert g and g[-1].startswith(b"220"), "normal session: greeting %r" % g
        c.expect("EHLO " + helo, 250)
        c.expect("MAIL FROM:<normal@example.com>", 250)
        c.expect("RCPT TO:<normal@example.net>", 250)
        c.expect("DATA", 354)
        c.send(content + b".\r\n")
        r = c.reply()
        assert r and r[-1].startswith(b"250"), "normal session: reply to the dot %r" % r
        c.expect("QUIT", 221)
        assert c.read_until_eof(5) == b""
    finally:
        c.close()
    ev = event_for_client(tap, port, after=events_before)
    assert ev["reason"] == "quit", ev
    assert ev["transcript"], "normal session not recorded: %r" % ev
    assert ev["helo"] == helo, ev
    assert len(ev["transactions"]) == 1 and ev["transactions"][0]["code"] == 250, ev
    assert ev["transactions"][0]["size"] == len(content), ev
    t = transcript_of(tap, ev)
    assert tag in "\n".join(t.client_lines()), "normal session's message not in its transcript"
    assert t.close_fields()["reason"] == "quit"
    if sink is not None:
        msgs = sink.wait_messages(before + 1)
        assert any(tag.encode() in m.content for m in msgs), "normal message not in the sink"
    if server is not None:
        def arrived():
            return any(tag.encode() in (m.get("data") or b"")
                       for conn in list(server.conns) for m in conn.messages)
        harness.wait_until(arrived, 5, what="the normal message at the fake server")
    return ev


# --------------------------------------------------------------------------------------------
# A Postfix smtpd that trusts loopback with XCLIENT and XFORWARD


class TrustingPostfix(harness.PostfixInstance):
    """The harness's private Postfix smtpd (hands messages to an smtp-sink), with extra
    main.cf settings: by default it lets 127.0.0.0/8 use XCLIENT and XFORWARD, as a site that
    trusts its own proxy does.  Where that holds, a client's XCLIENT reaching smtpd through the
    proxy would make smtpd believe in another client address."""

    def __init__(self, workdir, sink_port, extra_main=None):
        super().__init__(workdir, sink_port)
        self.extra_main = extra_main if extra_main is not None else [
            "smtpd_authorized_xclient_hosts = 127.0.0.0/8",
            "smtpd_authorized_xforward_hosts = 127.0.0.0/8",
        ]

    def write_config(self):
        super().write_config()
        with open(os.path.join(self.conf, "main.cf"), "a") as f:
            for line in self.extra_main:
                f.write(line + "\n")


def add_diagnostic(request, title, obj):
    """Adds obj.describe() to the failure report of the running test (as conftest does)."""
    node = request.node
    if not hasattr(node, "_diagnostics"):
        node._diagnostics = []
    node._diagnostics.append((title, obj))


# --------------------------------------------------------------------------------------------
# Clients in bulk


def connect_many(port, n, timeout=10.0):
    """n plain sockets connected to the proxy (no reading)."""
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


def recv_line(sock, timeout=5.0):
    """Reads up to and including the first LF (or EOF) from a raw socket."""
    sock.settimeout(timeout)
    data = bytearray()
    while not data.endswith(b"\n"):
        try:
            b = sock.recv(1)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        data += b
    return bytes(data)


def stderr_count(tap, text):
    return tap.stderr().count(text)


def dump_json(obj):
    return json.dumps(obj, indent=1, sort_keys=True)


def sleep_until(t):
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)
