"""The client's identity and the upstream set-up (issue 13 items 11-12, issue 14 sections 1-2):
--upstream-tls require without a certificate, a refused EHLO, --helo-name, --forward-client
(XCLIENT, PROXY v1/v2) against a real Postfix over IPv4 and IPv6, and --accept-proxy behind
HAProxy, one instance and two (scale-out)."""

import os
import shutil
import smtplib
import socket
import struct
import subprocess

import pytest

import harness
from harness import SmtpClient, SmtpServerScript
from tls_peers import transcript, certs, aiosmtpd_factory, tls_upstream  # noqa: F401  (fixtures)

FROM = "alice@client.test"
TO = "bob@example.com"
BODY = b"Subject: identity\r\n\r\nhello\r\n"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def upstream_ca_args(certs, name="mail.test"):
    return ["--upstream-ca", certs.pem("ca"), "--upstream-name", name]


def send_mail(c, to=TO):
    """EHLO, MAIL, RCPT (and the message when RCPT is accepted): the RCPT reply."""
    c.expect("EHLO client.test", 250)
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    r = c.cmd("RCPT TO:<%s>" % to)
    if r and r[-1].startswith(b"250"):
        c.expect("DATA", 354)
        c.send(BODY + b".\r\n")
        assert c.code() == 250
    c.expect("QUIT", 221)
    return r


# --------------------------------------------------------------------------------------------
# Issue 13 item 11: --upstream-tls require needs no certificate of ours


@pytest.mark.limit(30)
def test_upstream_require_without_certificate_is_secured(tap_factory, tls_upstream, certs):
    """No --tls-cert (passthrough for the client): the upstream leg is still secured before the
    greeting; aiosmtpd (STARTTLS required) takes the message over TLS."""
    srv = tls_upstream
    tap = tap_factory(srv.port, "--upstream-tls", "require", *upstream_ca_args(certs))
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.test")
    assert not s.has_extn("starttls"), s.esmtp_features  # the server's reply after TLS
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    (m,) = srv.wait_messages(1)
    assert m.tls, "message reached the server in clear"
    t = transcript(tap)
    ups = t.upstream_lines()
    assert ups[0].upper().startswith("EHLO ") and ups[1].upper() == "STARTTLS", ups
    f = t.event_fields("tls upstream started")
    assert f is not None and f["verify"] == "ok", t.excerpt()
    assert tap.event()["tls"]["upstream"]["verify"] == "ok"


@pytest.mark.limit(30)
def test_upstream_require_without_certificate_no_starttls(tap_factory, sink):
    """No certificate, a server without STARTTLS: 421 4.7.0 and nothing relayed in clear."""
    tap = tap_factory(sink.port, "--upstream-tls", "require")
    c = SmtpClient(tap.port)
    r = c.reply()
    assert r and r[-1].startswith(b"421 4.7.0 "), r
    c.read_until_eof(10)
    assert b"smtp-sink" not in bytes(c.received)
    assert tap.event()["reason"] == "upstream_tls_failed"


# --------------------------------------------------------------------------------------------
# Issue 13 item 12: our EHLO refused, --helo-name


@pytest.mark.limit(30)
def test_refused_ehlo_reason_escaped_and_logged(tap_factory, fake_server):
    """The server's refusal (with a control character in it) is the recorded reason, escaped;
    the log warns; under require the client gets 421 4.7.0 and the server nothing of it."""
    def ehlo(conn, line):
        conn.send(b"550 5.7.1 Go away\x1b[31m now\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"EHLO": ehlo}))
    tap = tap_factory(srv.port, "--upstream-tls", "require")
    c = SmtpClient(tap.port)
    r = c.reply()
    assert r and r[-1].startswith(b"421 4.7.0 ") and b"refused EHLO" in r[-1], r
    c.read_until_eof(10)
    t = transcript(tap)  # the harness refuses raw control characters in a transcript
    assert any("refused our EHLO" in e and "550 5.7.1 Go away\\x1b[31m now" in e
               for e in t.events()), t.excerpt()
    assert "refused EHLO" in tap.stderr() and "\x1b" not in tap.stderr(), tap.stderr()
    assert tap.event()["reason"] == "upstream_tls_failed"


def fqdn():
    name = socket.gethostname()
    try:
        info = socket.getaddrinfo(name, None, flags=socket.AI_CANONNAME, type=socket.SOCK_STREAM)
        return info[0][3] or name
    except OSError:
        return name


@pytest.mark.limit(30)
@pytest.mark.parametrize("helo", [None, "relay.example.net"])
def test_helo_name(tap_factory, fake_server, helo):
    """Our own EHLO names --helo-name, by default the host's fully qualified name."""
    srv = fake_server(SmtpServerScript())
    extra = ["--helo-name", helo] if helo else []
    tap = tap_factory(srv.port, "--upstream-tls", "require", *extra)
    c = SmtpClient(tap.port)
    c.reply()
    c.read_until_eof(10)
    srv.join()
    want = helo or fqdn()
    assert srv.conns[0].commands[0] == b"EHLO %s\r\n" % want.encode(), srv.conns[0].commands


# --------------------------------------------------------------------------------------------
# Issue 14 section 1: --forward-client, against a real Postfix (open-relay check)

RELAY_MAIN = {"mynetworks": "127.0.0.1/32",
              "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination"}


@pytest.mark.limit(60)
@pytest.mark.parametrize("mode,postfix_main", [
    ("none", RELAY_MAIN),
    ("xclient", dict(RELAY_MAIN, smtpd_authorized_xclient_hosts="127.0.0.1")),
    ("proxy-v1", dict(RELAY_MAIN, smtpd_upstream_proxy_protocol="haproxy")),
    ("proxy-v2", dict(RELAY_MAIN, smtpd_upstream_proxy_protocol="haproxy")),
])
def test_open_relay_check(tap_factory, postfix, mode):
    """A client at 127.0.0.2 through smtptap to a Postfix that trusts 127.0.0.1 only: with
    none Postfix relays for it (the danger); with the client's address forwarded Postfix
    refuses to relay, and its own log names 127.0.0.2."""
    pf, psink = postfix
    tap = tap_factory(pf.port, "--forward-client", mode)
    if mode == "none":  # the listener is bound before the start-up warnings are written
        harness.wait_until(lambda: "--forward-client is none" in tap.stderr(), 5,
                           what="the open-relay warning")
    c = SmtpClient(tap.port, source="127.0.0.2")
    g = c.reply()
    assert g and g[-1].startswith(b"220 "), g
    r = send_mail(c)
    ev = tap.event()
    if mode == "none":
        assert r[-1].startswith(b"250"), r
        psink.wait_messages(1, timeout=10)
        assert "forwarded" not in ev, ev
        return
    assert r[-1].startswith(b"554 5.7.1 ") and b"Relay access denied" in r[-1], r
    assert ev["forwarded"] == mode, ev
    assert ev["client"].startswith("127.0.0.2:"), ev
    # Postfix's log service writes asynchronously: the refusal line may follow the reply.
    harness.wait_until(lambda: "Relay access denied" in pf.log(), 10, what="the refusal in maillog")
    (refusal,) = [l for l in pf.log().splitlines() if "Relay access denied" in l]
    assert "[127.0.0.2]" in refusal, refusal
    t = transcript(tap)
    ups = t.upstream_lines()
    if mode == "xclient":
        assert ups[0].upper().startswith("EHLO ") and ups[1].startswith("XCLIENT ADDR=127.0.0.2 "), ups
        assert "NAME=[UNAVAILABLE]" in ups[1], ups
    elif mode == "proxy-v1":
        assert ups[0].startswith("PROXY TCP4 127.0.0.2 127.0.0.1 "), ups
    else:
        assert ups[0].startswith("\\x0d\\x0a\\x0d\\x0a\\x00\\x0d\\x0aQUIT\\x0a!\\x11"), ups


# IPv6: both ends of smtptap's own connection to Postfix are 127.0.0.1 (trusted), the client
# is ::1 on a v6 listener.  (Were smtptap to reach Postfix over ::1 too, client and proxy would
# be one address and mynetworks could not tell them apart: the family is what differs here.)
RELAY_MAIN6 = dict(RELAY_MAIN, inet_protocols="all")


@pytest.mark.limit(60)
@pytest.mark.parametrize("mode,postfix_main", [
    ("none", RELAY_MAIN6),
    ("xclient", dict(RELAY_MAIN6, smtpd_authorized_xclient_hosts="127.0.0.1")),
    ("proxy-v1", dict(RELAY_MAIN6, smtpd_upstream_proxy_protocol="haproxy")),
    ("proxy-v2", dict(RELAY_MAIN6, smtpd_upstream_proxy_protocol="haproxy")),
])
def test_open_relay_check_ipv6(tap_factory, postfix, mode):
    """A client at ::1 through a v6 listener to a Postfix that trusts 127.0.0.1 only: with none
    Postfix relays for it (it sees the proxy); with the address forwarded, 554 5.7.1, and
    Postfix's log names the client as [::1]."""
    pf, psink = postfix
    port = harness.free_port()
    tap = tap_factory(pf.port, "--forward-client", mode, listen=["[::1]:%d" % port])
    c = SmtpClient(port, host="::1", family=socket.AF_INET6)
    g = c.reply()
    assert g and g[-1].startswith(b"220 "), g
    r = send_mail(c)
    ev = tap.event()
    assert ev["client"].startswith("[::1]:"), ev
    if mode == "none":
        assert r[-1].startswith(b"250"), r
        psink.wait_messages(1, timeout=10)
        return
    assert r[-1].startswith(b"554 5.7.1 ") and b"Relay access denied" in r[-1], r
    assert ev["forwarded"] == mode, ev
    harness.wait_until(lambda: "Relay access denied" in pf.log(), 10, what="the refusal in maillog")
    (refusal,) = [l for l in pf.log().splitlines() if "Relay access denied" in l]
    assert "[::1]" in refusal and "127.0.0.1" not in refusal, refusal
    ups = transcript(tap).upstream_lines()
    if mode == "xclient":
        assert ups[1].startswith("XCLIENT ADDR=IPV6:::1 "), ups
    elif mode == "proxy-v1":
        assert ups[0].startswith("PROXY TCP6 ::1 ::1 "), ups



@pytest.mark.limit(30)
@pytest.mark.parametrize("case", ["not-offered", "refused"])
def test_xclient_not_offered_or_refused(tap_factory, fake_server, case):
    """XCLIENT not on offer, or refused: 421 4.7.0, nothing of the client relayed."""
    caps = ["PIPELINING", "8BITMIME"] + (["XCLIENT NAME ADDR PORT"] if case == "refused" else [])

    def xclient(conn, line):
        conn.send(b"550 5.7.0 Error: insufficient authorization\r\n")
        return True

    srv = fake_server(SmtpServerScript(caps=caps, hooks={"XCLIENT": xclient}))
    tap = tap_factory(srv.port, "--forward-client", "xclient")
    c = SmtpClient(tap.port)
    c.send(b"EHLO early.client\r\n")
    r = c.reply()
    assert r and r[-1].startswith(b"421 4.7.0 "), r
    c.read_until_eof(10)
    srv.join()
    cmds = [x.split(b" ")[0].strip().upper() for x in srv.conns[0].commands]
    want = [b"EHLO", b"XCLIENT"] if case == "refused" else [b"EHLO"]
    assert cmds[:len(want)] == want and all(x == b"QUIT" for x in cmds[len(want):]), cmds
    assert b"early.client" not in b"".join(srv.conns[0].commands)
    ev = tap.event()
    assert ev["reason"] == "xclient_refused" and "forwarded" not in ev, ev


@pytest.mark.limit(30)
@pytest.mark.parametrize("setup", [("--forward-client", "xclient"), ("--upstream-tls", "require")],
                         ids=["xclient", "tls-require"])
@pytest.mark.parametrize("greeting,reason", [(b"554 5.7.1 fake.example go away", "server_refused"),
                                             (b"421 4.3.2 fake.example too busy", "server_421")],
                         ids=["554", "421"])
def test_greeting_refusal_ends_a_required_setup(tap_factory, fake_server, setup, greeting, reason):
    """The server's greeting refuses the session while XCLIENT or TLS must come first: the
    client gets that greeting as the server sent it (not a TLS failure of our own), and the
    session ends.  Nothing the client sends reaches the server: one that serves commands
    after a 554 (this one does) would have had them under the proxy's address, or in clear."""
    def greet(conn, line):
        conn.send(greeting + b"\r\n")
        return True

    srv = fake_server(SmtpServerScript(caps=["PIPELINING", "XCLIENT NAME ADDR PORT"],
                                       hooks={"GREETING": greet}))
    tap = tap_factory(srv.port, *setup)
    c = SmtpClient(tap.port)
    c.send(b"EHLO early.client\r\nMAIL FROM:<%s>\r\n" % FROM.encode())
    assert c.reply() == [greeting + b"\r\n"]
    c.read_until_eof(10)
    assert bytes(c.buf) == b"", bytes(c.buf)
    srv.join()
    cmds = srv.conns[0].commands
    assert all(x.strip().upper() == b"QUIT" for x in cmds), cmds
    ev = tap.event()
    assert ev["reason"] == reason and "forwarded" not in ev and ev["transactions"] == [], ev
    code = greeting[:3].decode()
    assert 'upstream set-up failed reason="the server refused the session (%s)"' % code in \
        transcript(tap).events()


@pytest.mark.limit(30)
def test_xclient_after_starttls_fresh_greeting(tap_factory, fake_server, certs):
    """With upstream TLS: greeting, EHLO, STARTTLS, EHLO, XCLIENT; the client sees the
    greeting that answers XCLIENT, and its commands go on over TLS."""
    def xclient(conn, line):
        conn.send(b"220 fresh.example ESMTP after xclient\r\n")
        return True

    srv = fake_server(SmtpServerScript(caps=["PIPELINING", "XCLIENT ADDR PORT NAME HELO"],
                                       starttls=certs.server_context("mail"),
                                       hooks={"XCLIENT": xclient}))
    tap = tap_factory(srv.port, "--forward-client", "xclient", "--upstream-tls", "require",
                      *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    g = c.reply()
    assert g == [b"220 fresh.example ESMTP after xclient\r\n"], g
    c.expect("EHLO client.test", 250)
    c.expect("QUIT", 221)
    t = transcript(tap)
    ups = [u.split(" ")[0].upper() for u in t.upstream_lines()]
    assert ups == ["EHLO", "STARTTLS", "EHLO", "XCLIENT"], t.upstream_lines()
    assert t.upstream_lines()[3].startswith("XCLIENT ADDR=127.0.0.1 PORT=%d NAME=[UNAVAILABLE]" % c.local_port)
    ev = tap.event()
    assert ev["forwarded"] == "xclient" and ev["tls"]["upstream"]["verify"] == "ok", ev


# --------------------------------------------------------------------------------------------
# Issue 14 section 2: --accept-proxy


def v2_header(src, sport, dst, dport, local=False):
    if local:
        return V2_SIG + b"\x20\x00\x00\x00"
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body


@pytest.mark.limit(30)
@pytest.mark.parametrize("kind", ["v1", "v2", "v2-local"])
def test_accept_proxy_header(tap_factory, fake_server, kind):
    """From a listed balancer the header names the client (the balancer kept as via); a v2
    LOCAL header makes a session of the balancer's own, marked local."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--accept-proxy", "10.0.0.0/8,127.0.0.1/32")
    c = SmtpClient(tap.port)
    if kind == "v1":
        c.send(b"PROXY TCP4 192.0.2.9 198.51.100.1 4444 25\r\n")
    else:
        c.send(v2_header("192.0.2.9", 4444, "198.51.100.1", 25, local=kind == "v2-local"))
    g = c.reply()
    assert g and g[-1].startswith(b"220 "), g
    c.expect("EHLO client.test", 250)
    c.expect("QUIT", 221)
    ev = tap.event()
    via = "127.0.0.1:%d" % c.local_port
    assert ev["via"] == via, ev
    t = transcript(tap)
    connect = [e for e in t.events() if e.startswith("connect ")][0]
    if kind == "v2-local":
        assert ev["local"] is True and ev["client"] == via, ev
        assert "via=%s local=yes" % via in connect, connect
    else:
        assert ev["client"] == "192.0.2.9:4444" and "local" not in ev, ev
        assert connect.startswith("connect client=192.0.2.9:4444 ") and "via=" + via in connect, connect
    assert all(b"PROXY" not in x and not x.startswith(b"\r\n") for x in srv.conns[0].commands)


@pytest.mark.limit(30)
@pytest.mark.parametrize("data", [b"EHLO client.test\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                                  V2_SIG + b"\x21\x11\xff\xff", b"PROXY " + b"A" * 120])
def test_accept_proxy_malformed_header_closed(tap_factory, fake_server, data):
    """A listed source without a valid header: closed without a greeting, recorded with the
    reason proxy_header; the server never hears of it."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--accept-proxy", "127.0.0.1")
    c = SmtpClient(tap.port)
    c.send(data)
    c.read_until_eof(10)
    assert bytes(c.received) == b"", c.received
    ev = tap.event()
    assert ev["reason"] == "proxy_header", ev
    t = transcript(tap)
    assert any(e.startswith("proxy header refused reason=") for e in t.events()), t.excerpt()
    assert not srv.conns, "the upstream was connected"
    assert "PROXY header from 127.0.0.1" in tap.stderr()


@pytest.mark.limit(30)
def test_accept_proxy_header_timeout(tap_factory, fake_server):
    """Half a header and then nothing: closed after 5 seconds, recorded."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--accept-proxy", "127.0.0.1")
    c = SmtpClient(tap.port, timeout=15)
    c.send(b"PROXY TCP4 ")
    c.read_until_eof(12)
    assert bytes(c.received) == b""
    ev = tap.event()
    assert ev["reason"] == "proxy_header" and 4.5 < ev["duration"], ev


@pytest.mark.limit(30)
def test_untrusted_proxy_line_refused(tap_factory, fake_server):
    """A source not listed is an ordinary client: its PROXY line is a command, refused 550
    5.7.0 like a client's XCLIENT, and never relayed."""
    srv = fake_server(SmtpServerScript())
    tap = tap_factory(srv.port, "--accept-proxy", "127.0.0.2/32")
    c = SmtpClient(tap.port)
    c.reply()
    r = c.cmd("PROXY TCP4 192.0.2.9 198.51.100.1 4444 25")
    assert r == [b"550 5.7.0 Command not permitted\r\n"], r
    c.expect("QUIT", 221)
    srv.join()
    assert not any(x.startswith(b"PROXY") for x in srv.conns[0].commands), srv.conns[0].commands
    ev = tap.event()
    assert ev["client"].startswith("127.0.0.1:") and "via" not in ev, ev


# --------------------------------------------------------------------------------------------
# Behind HAProxy (send-proxy-v2, option smtpchk)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


class Haproxy:
    def __init__(self, workdir, backends):
        self.port = harness.free_port()
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        self.log_path = os.path.join(workdir, "haproxy.log")
        servers = "".join("    server s%d 127.0.0.1:%d send-proxy-v2 check inter 300ms\n" % (i, p)
                          for i, p in enumerate(backends))
        with open(self.cfg, "w") as f:
            f.write("""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
listen smtp
    bind 127.0.0.1:%d
    option smtpchk EHLO haproxy.test
    balance roundrobin
%s""" % (self.port, servers))
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        harness.wait_port(self.port, 10.0)
        return self

    def stop(self):
        if self.proc is not None:
            harness.stop_pid(self.proc)
            self.proc = None

    def describe(self):
        try:
            with open(self.log_path, "rb") as f:
                return "haproxy on %d\n%s" % (self.port, f.read()[-3000:].decode("utf-8", "replace"))
        except OSError:
            return "haproxy (no log)"


@pytest.fixture
def haproxy_factory(request, workdir):
    if not os.access(HAPROXY, os.X_OK):
        pytest.skip("haproxy not installed")
    started = []

    def make(backends):
        h = Haproxy(workdir, backends)
        started.append(h)
        request.node._diagnostics = getattr(request.node, "_diagnostics", []) + [("haproxy", h)]
        return h.start()

    yield make
    for h in started:
        h.stop()


@pytest.mark.limit(60)
def test_behind_haproxy_send_proxy_v2(tap_factory, sink, haproxy_factory):
    """HAProxy (send-proxy-v2, option smtpchk) in front: a client at 127.0.0.2 is recorded with
    its own address, HAProxy's address as via; the health checks are sessions marked local
    that see the upstream's greeting and EHLO reply."""
    tap = tap_factory(sink.port, "--accept-proxy", "127.0.0.1/32")
    hp = haproxy_factory([tap.port])
    harness.wait_until(lambda: any(e.get("local") for e in tap.events()), 10, what="a health check")
    c = SmtpClient(hp.port, source="127.0.0.2")
    g = c.reply()
    assert g and g[-1].startswith(b"220 "), g
    assert send_mail(c)[-1].startswith(b"250")
    sink.wait_messages(1, timeout=10)

    def client_events():  # (wait_port's probe through HAProxy is a session too, from 127.0.0.1)
        return [e for e in tap.events() if e["client"].startswith("127.0.0.2:")]

    harness.wait_until(lambda: client_events(), 10, what="the client's event")
    (ev,) = client_events()
    assert ev["via"].startswith("127.0.0.1:") and "local" not in ev, ev
    assert ev["transactions"][0]["code"] == 250, ev
    checks = [e for e in tap.events() if e.get("local")]
    assert checks and all(e["client"] == e["via"] and e["helo"] == "haproxy.test" for e in checks), checks


def relay_one(port, n, source):
    """Session n through HAProxy from source (an address of 127/8), its sender c<n>@client.test:
    (sender, the client's own address as the proxies should record it)."""
    sender = "c%d@client.test" % n
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as s:
        ip, sport = s.sock.getsockname()[:2]
        s.sendmail(sender, [TO], BODY)
    return "<%s>" % sender, "%s:%d" % (ip, sport)


@pytest.mark.limit(180)
def test_scale_out_two_instances_behind_haproxy(tap_factory, sink, haproxy_factory):
    """HAProxy (send-proxy-v2, option smtpchk) in front of two smtptap instances, each with its
    own log directory: 400 sessions from 127.0.0.2 and 127.0.0.3 are each recorded exactly once
    across the two, with the client's own address; the health checks keep both up, and their
    sessions are marked local, never taken for a client's."""
    from concurrent.futures import ThreadPoolExecutor

    taps = [tap_factory(sink.port, "--accept-proxy", "127.0.0.1/32", name="tap%d" % i)
            for i in range(2)]
    assert taps[0].log_dir != taps[1].log_dir and taps[0].events_path != taps[1].events_path
    hp = haproxy_factory([t.port for t in taps])
    for t in taps:
        harness.wait_until(lambda: any(e.get("local") for e in t.events()), 10,
                           what="a health check on %s" % t.name)
    sources = ["127.0.0.2", "127.0.0.3"] * 200
    with ThreadPoolExecutor(16) as pool:
        clients = dict(pool.map(lambda a: relay_one(hp.port, *a), enumerate(sources)))
    assert len(clients) == 400
    sink.wait_messages(400, timeout=60)

    def client_events(t):  # (wait_port's probe through HAProxy is a session from 127.0.0.1)
        return [e for e in t.events() if e["transactions"]]

    harness.wait_until(lambda: sum(len(client_events(t)) for t in taps) >= 400, 30,
                       what="400 client events")
    per_tap = [client_events(t) for t in taps]
    senders = sorted(e["transactions"][0]["mail_from"] for evs in per_tap for e in evs)
    assert senders == sorted(clients), "not each session exactly once"
    assert all(len(evs) > 0 for evs in per_tap), [len(evs) for evs in per_tap]
    for evs in per_tap:
        for e in evs:
            assert e["client"] == clients[e["transactions"][0]["mail_from"]], e
            assert "local" not in e and e["via"].startswith("127.0.0.1:"), e
            assert e["transactions"][0]["code"] == 250, e
    for t, evs in zip(taps, per_tap):  # each transcript in its own instance's log directory
        assert all(os.path.exists(os.path.join(t.log_dir, e["transcript"]["file"])) for e in evs), t.name
    for t in taps:
        checks = [e for e in t.events() if e.get("local")]
        assert checks, t.name
        assert all(e["client"] == e["via"] and e["helo"] == "haproxy.test" for e in checks), checks
    with open(hp.log_path, "rb") as f:
        assert b" is DOWN" not in f.read()
