"""TLS (issue 4): STARTTLS and implicit TLS terminated on both legs, passthrough and strip
modes, plaintext injection across STARTTLS, handshake and verification failures, SIGHUP
reload, many sessions over TLS.

Certificates are made by the tests (tls_peers.Certs).  Clients: swaks, curl, smtplib, raw
sockets.  Upstreams: smtp-sink (no TLS), aiosmtpd with STARTTLS required (or implicit TLS),
Postfix's smtpd with STARTTLS required, scripted fake servers.
"""

import asyncio
import hashlib
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

import harness
from harness import SmtpClient, SmtpServerScript
from tls_peers import PostfixTls, TlsCountingServer, TlsTranscript, client_context, peer_cn, transcript, \
    wait_transcripts
from tls_peers import aiosmtpd_factory, certs, tls_upstream  # noqa: F401  (fixtures)

FROM = "alice@example.com"
TO = "bob@example.net"
BODY = (b"From: alice@example.com\r\n"
        b"To: bob@example.net\r\n"
        b"Subject: over TLS\r\n"
        b"\r\n"
        b"secret body line 1\r\n"
        b".a line starting with a dot\r\n"
        b"8-bit: \xc3\xa9t\xc3\xa9\r\n"
        b"last line\r\n")


# --------------------------------------------------------------------------------------------
# Helpers


def tls_tap(tap_factory, upstream_port, certs, *extra, cert="proxy", implicit=True, cert_args=None):
    """smtptap with a certificate (--tls-cert/--tls-key) and an implicit-TLS listener
    (tap.tls_port) in addition to the clear one (tap.port)."""
    args = list(certs.proxy_args(cert) if cert_args is None else cert_args)
    tls_port = None
    if implicit:
        tls_port = harness.free_port()
        args += ["--listen-tls", "127.0.0.1:%d" % tls_port]
    tap = tap_factory(upstream_port, *(args + list(extra)))
    if implicit:
        harness.wait_listening(tls_port, 5.0, alive=tap.alive)
    tap.tls_port = tls_port
    return tap


def upstream_ca_args(certs, name="mail.test"):
    return ["--upstream-ca", certs.pem("ca"), "--upstream-name", name]


def swaks(port, *args, timeout=20):
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--helo", "client.test",
                        "--from", FROM, "--to", TO, "--timeout", "10"] + list(args),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def curl(url, workdir, *args, content=BODY, timeout=20):
    path = os.path.join(workdir, "curl-message.eml")
    with open(path, "wb") as f:
        f.write(content)
    r = subprocess.run(["curl", "-sS", "--max-time", "15", url, "--mail-from", FROM, "--mail-rcpt", TO,
                        "-T", path] + list(args),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def reply_text(lines):
    return b"".join(lines).decode("utf-8", "replace")


def ehlo_keywords(lines):
    """Upper-case first words of an EHLO reply's lines after the first."""
    return [l[4:].strip().split(b" ")[0].upper().decode() for l in lines[1:] if l[4:].strip()]


def tls_wrap(client, ctx, server_hostname="proxy.test"):
    """Layers TLS on a harness.SmtpClient's socket (its read buffer must be empty)."""
    assert not client.buf, "octets left in the clear buffer before the handshake: %r" % bytes(client.buf)
    client.sock = ctx.wrap_socket(client.sock, server_hostname=server_hostname)
    return client.sock


def check_client_tls(t, ev, mail_from=FROM, sni=None, version=None):
    """The transcript marks where the client's TLS began, with version, cipher and SNI; the
    plaintext dialogue after it is recorded; the JSON event carries the same."""
    f = t.event_fields("tls client started")
    assert f is not None, "no 'tls client started' event:\n" + t.excerpt()
    assert f["version"].startswith("TLSv1."), f
    if version:
        assert f["version"] == version, f
    assert f["cipher"] and f["cipher"] != "-", f
    assert f["sni"] == (sni or "-"), f
    started = t.index("*", "tls client started")
    mail = t.index("C:", lambda x: x.upper().startswith("MAIL FROM:<%s>" % mail_from.upper()))
    assert mail > started, "MAIL FROM not recorded in clear after the handshake:\n" + t.excerpt()
    assert ev["tls"]["mode"] == "terminate", ev["tls"]
    c = ev["tls"]["client"]
    assert c is not None, ev["tls"]
    assert c["version"] == f["version"] and c["cipher"] == f["cipher"], (c, f)
    assert c["sni"] == sni, c
    return f


def check_upstream_tls(t, ev, subject_cn="mail.test", verify="ok"):
    """The proxy's own EHLO and STARTTLS to the server are recorded as U: lines before anything
    from the client, the handshake event carries subject and verification, the JSON the same."""
    ups = t.upstream_lines()
    assert len(ups) >= 2 and ups[0].upper().startswith("EHLO ") and ups[1].upper() == "STARTTLS", ups
    f = t.event_fields("tls upstream started")
    assert f is not None, "no 'tls upstream started' event:\n" + t.excerpt()
    assert f["version"].startswith("TLSv1.") and f["cipher"], f
    assert subject_cn in f["subject"], f
    assert f["verify"] == verify, f
    started = t.index("*", "tls upstream started")
    first_c = t.index("C:", lambda x: True)
    assert first_c == -1 or started < first_c, "client line before the upstream handshake:\n" + t.excerpt()
    u = ev["tls"]["upstream"]
    assert u is not None, ev["tls"]
    assert u["version"] == f["version"] and u["cipher"] == f["cipher"], (u, f)
    assert subject_cn in u["subject"] and u["verify"] == verify, u
    return f


def check_upstream_clear(t, ev):
    assert any(e.startswith("upstream leg stays in clear") for e in t.events()), t.excerpt()
    assert ev["tls"]["upstream"] is None, ev["tls"]


def check_sink_message(sink, content=BODY):
    (m,) = sink.wait_messages(1)
    assert m.mail_from.startswith("<%s>" % FROM), m.mail_from
    assert m.rcpts == ["<%s>" % TO], m.rcpts
    return m


def check_aio_message(srv, content=BODY):
    (m,) = srv.wait_messages(1)
    assert m.mail_from == FROM and m.rcpt_tos == [TO], m
    assert m.tls, "message reached aiosmtpd in clear"
    if content is not None:
        assert m.content == content, "content changed on the way: %r" % m.content
    return m


def wait_stderr(tap, needle, timeout=5.0):
    try:
        return harness.wait_until(lambda: needle in tap.stderr(), timeout, what="%r in stderr" % needle)
    except TimeoutError:
        raise AssertionError("%r not in smtptap's stderr within %.1fs:\n%s" % (needle, timeout, tap.stderr()[-3000:]))


# --------------------------------------------------------------------------------------------
# Client leg terminated, upstream without TLS (smtp-sink)


@pytest.mark.limit(30)
def test_swaks_starttls_to_sink(tap_factory, sink, certs, workdir):
    tap = tls_tap(tap_factory, sink.port, certs)
    body = os.path.join(workdir, "body.eml")
    with open(body, "wb") as f:
        f.write(BODY)
    rc, out = swaks(tap.port, "--tls", "--tls-verify", "--tls-ca-path", certs.pem("proxy"),
                    "--tls-sni", "proxy.test", "--data", body)
    assert rc == 0, out
    m = check_sink_message(sink)
    # swaks ends --data with CRLF . CRLF after the file's own last CRLF: one empty line more.
    assert m.content == harness.sink_form(harness.dot_stuff(BODY)) + b"\n", m.content
    t = transcript(tap)
    ev = tap.event()
    check_upstream_clear(t, ev)
    check_client_tls(t, ev, sni="proxy.test")
    # The proxy answered STARTTLS itself; the client's EHLO is relayed again after TLS.
    assert "STARTTLS" in t.client_lines()
    assert t.proxy_lines() == ["220 2.0.0 Ready to start TLS"], t.proxy_lines()
    assert sum(1 for c in t.client_lines() if c.upper().startswith("EHLO ")) == 2
    assert "C: secret body line 1" in t.excerpt(200)
    assert ev["reason"] == "quit" and ev["transactions"][0]["code"] == 250, ev


@pytest.mark.limit(30)
def test_swaks_implicit_tls_to_sink(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    rc, out = swaks(tap.tls_port, "--tlsc", "--tls-verify", "--tls-ca-path", certs.pem("proxy"),
                    "--tls-sni", "proxy.test", "--body", "implicit body")
    assert rc == 0, out
    (m,) = sink.wait_messages(1)
    assert b"implicit body" in m.content
    t = transcript(tap)
    ev = tap.event()
    assert t.header["listener"] == "127.0.0.1:%d" % tap.tls_port
    check_client_tls(t, ev, sni="proxy.test")
    # TLS from the first byte: before any client line, and no STARTTLS anywhere.
    assert t.index("*", "tls client started") < t.index("C:", lambda x: True), t.excerpt()
    assert "STARTTLS" not in t.client_lines()
    assert not t.proxy_lines(), t.proxy_lines()


@pytest.mark.limit(30)
def test_curl_starttls_to_sink(tap_factory, sink, certs, workdir):
    tap = tls_tap(tap_factory, sink.port, certs)
    rc, out = curl("smtp://127.0.0.1:%d/client.test" % tap.port, workdir, "--ssl-reqd",
                   "--cacert", certs.pem("proxy"))
    assert rc == 0, out
    m = check_sink_message(sink)
    assert m.content == harness.sink_form(harness.dot_stuff(BODY))
    t = transcript(tap)
    ev = tap.event()
    check_client_tls(t, ev)
    check_upstream_clear(t, ev)


@pytest.mark.limit(30)
def test_curl_smtps_to_sink(tap_factory, sink, certs, workdir):
    tap = tls_tap(tap_factory, sink.port, certs)
    rc, out = curl("smtps://127.0.0.1:%d/client.test" % tap.tls_port, workdir, "-k")
    assert rc == 0, out
    m = check_sink_message(sink)
    assert m.content == harness.sink_form(harness.dot_stuff(BODY))
    t = transcript(tap)
    check_client_tls(t, tap.event())


@pytest.mark.limit(30)
def test_smtplib_starttls_auth_redacted(tap_factory, fake_server, certs):
    """smtplib starttls() (verifying the proxy's certificate), then AUTH PLAIN: recorded in
    clear after TLS, the credentials redacted as before.  (A scripted server without TLS that
    offers AUTH and XCLIENT/XFORWARD.)"""
    srv = fake_server(SmtpServerScript(auth={"alice": "tops3cret-password"},
                                       caps=("PIPELINING", "XCLIENT NAME ADDR", "XFORWARD NAME ADDR")))
    tap = tls_tap(tap_factory, srv.port, certs)
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    code, _ = s.ehlo("client.test")
    assert code == 250
    assert s.has_extn("starttls"), "proxy did not offer STARTTLS: %r" % s.esmtp_features
    assert not s.has_extn("xclient") and not s.has_extn("xforward"), s.esmtp_features
    code, msg = s.starttls(context=client_context(certs.pem("proxy")))
    assert code == 220, msg
    assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert peer_cn(s.sock) == "proxy.test"
    s.ehlo("client.test")
    assert not s.has_extn("starttls"), "STARTTLS still offered on a TLS leg: %r" % s.esmtp_features
    assert not s.has_extn("xclient") and not s.has_extn("xforward"), s.esmtp_features
    s.login("alice", "tops3cret-password")
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    srv.join()
    (m,) = srv.conns[0].messages
    assert m["data"] == harness.dot_stuff(BODY) + b".\r\n", m["data"]
    assert not any(c.upper().startswith(b"STARTTLS") for c in srv.conns[0].commands)
    t = transcript(tap)
    ev = tap.event()
    check_client_tls(t, ev)
    assert "tops3cret-password" not in t.text
    assert harness.b64("\0alice\0tops3cret-password") not in t.text
    auth = [c for c in t.client_lines() if c.upper().startswith("AUTH ")]
    assert auth and "[redacted" in auth[0], auth
    assert t.index("C:", "AUTH ") > t.index("*", "tls client started")


@pytest.mark.limit(30)
def test_smtplib_ssl_to_sink(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    s = smtplib.SMTP_SSL("127.0.0.1", tap.tls_port, timeout=10, context=client_context(certs.pem("proxy")))
    code, _ = s.ehlo("client.test")
    assert code == 250
    assert not s.has_extn("starttls"), "STARTTLS offered on an implicit-TLS leg: %r" % s.esmtp_features
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    check_sink_message(sink)
    t = transcript(tap)
    check_client_tls(t, tap.event())


@pytest.mark.limit(30)
def test_client_sni_recorded(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    ctx = client_context(certs.pem("proxy"))
    c = SmtpClient(tap.tls_port)
    tls_wrap(c, ctx, server_hostname="localhost")
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("QUIT", 221)
    t = transcript(tap)
    check_client_tls(t, tap.event(), sni="localhost")


# --------------------------------------------------------------------------------------------
# Both legs: a real server with STARTTLS required (aiosmtpd, Postfix)


@pytest.mark.limit(30)
def test_smtplib_starttls_both_legs_aiosmtpd(tap_factory, tls_upstream, certs):
    """The upstream leg is secured before the client sees the greeting; then the client's own
    STARTTLS; aiosmtpd (STARTTLS required) gets the message over TLS, intact."""
    srv = tls_upstream
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    code, msg = s.ehlo("client.test")
    assert code == 250, msg
    assert s.has_extn("starttls"), "the proxy must offer STARTTLS on a clear client leg: %r" % s.esmtp_features
    code, msg = s.starttls(context=client_context(certs.pem("proxy")))
    assert code == 220, msg
    s.ehlo("client.test")
    assert not s.has_extn("starttls"), s.esmtp_features
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    check_aio_message(srv)
    t = transcript(tap)
    ev = tap.event()
    check_upstream_tls(t, ev)
    check_client_tls(t, ev)
    # The greeting the client saw is the server's own (held while the upstream leg was secured).
    greet = [x for x in t.server_lines() if x.startswith("220 ")]
    assert greet and "mail.test" in greet[0], t.server_lines()
    assert ev["transactions"][0]["code"] == 250, ev


@pytest.mark.limit(30)
def test_clear_client_upstream_tls_aiosmtpd(tap_factory, tls_upstream, certs):
    """A client that never asks for TLS: the upstream leg is still encrypted (aiosmtpd
    requires STARTTLS and would refuse MAIL otherwise)."""
    srv = tls_upstream
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    g = c.reply()
    assert g and g[0].startswith(b"220 ") and b"mail.test" in g[0], g
    r = c.expect("EHLO client.test", 250)
    assert "STARTTLS" in ehlo_keywords(r), r
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("RCPT TO:<%s>" % TO, 250)
    c.expect("DATA", 354)
    c.send(harness.dot_stuff(BODY) + b".\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    check_aio_message(srv)
    t = transcript(tap)
    ev = tap.event()
    check_upstream_tls(t, ev)
    assert ev["tls"]["mode"] == "terminate" and ev["tls"]["client"] is None, ev["tls"]
    assert not any(e.startswith("tls client") for e in t.events())


@pytest.mark.limit(30)
def test_swaks_starttls_both_legs_aiosmtpd(tap_factory, tls_upstream, certs):
    srv = tls_upstream
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    rc, out = swaks(tap.port, "--tls", "--body", "swaks both legs")
    assert rc == 0, out
    (m,) = srv.wait_messages(1)
    assert m.tls and b"swaks both legs" in m.content, m
    t = transcript(tap)
    ev = tap.event()
    check_upstream_tls(t, ev)
    check_client_tls(t, ev)


@pytest.mark.limit(30)
def test_curl_smtps_client_starttls_upstream_aiosmtpd(tap_factory, tls_upstream, certs, workdir):
    srv = tls_upstream
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    rc, out = curl("smtps://127.0.0.1:%d/client.test" % tap.tls_port, workdir, "--cacert", certs.pem("proxy"))
    assert rc == 0, out
    check_aio_message(srv)
    t = transcript(tap)
    ev = tap.event()
    check_upstream_tls(t, ev)
    check_client_tls(t, ev)


@pytest.mark.limit(30)
def test_curl_starttls_both_legs_aiosmtpd(tap_factory, tls_upstream, certs, workdir):
    srv = tls_upstream
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    rc, out = curl("smtp://127.0.0.1:%d/client.test" % tap.port, workdir, "--ssl-reqd",
                   "--cacert", certs.pem("proxy"))
    assert rc == 0, out
    check_aio_message(srv)
    t = transcript(tap)
    ev = tap.event()
    check_upstream_tls(t, ev)
    check_client_tls(t, ev)


@pytest.mark.limit(30)
def test_upstream_implicit_tls(tap_factory, aiosmtpd_factory, certs):
    """--upstream-tls implicit: TLS from the first byte to an SMTPS server; no U: lines."""
    srv = aiosmtpd_factory(implicit_context=certs.server_context("mail"))
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-tls", "implicit", *upstream_ca_args(certs))
    s = smtplib.SMTP_SSL("127.0.0.1", tap.tls_port, timeout=10, context=client_context(certs.pem("proxy")))
    s.ehlo("client.test")
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    check_aio_message(srv)
    t = transcript(tap)
    ev = tap.event()
    check_client_tls(t, ev)
    assert not t.upstream_lines(), t.upstream_lines()
    f = t.event_fields("tls upstream started")
    assert f and f["verify"] == "ok" and "mail.test" in f["subject"], t.excerpt()
    assert t.index("*", "tls upstream started") < t.index("S:", "220 "), t.excerpt()
    assert ev["tls"]["upstream"]["verify"] == "ok", ev["tls"]


@pytest.mark.limit(60)
def test_postfix_smtpd_starttls_both_legs(tap_factory, certs, workdir, request):
    """Postfix's smtpd with smtpd_tls_security_level=encrypt: its Received header (in the
    sink's dump) says the proxy's leg used TLS."""
    if not harness.IS_ROOT:
        pytest.skip("a private Postfix instance needs root")
    if not os.access(harness.POSTFIX, os.X_OK):
        pytest.skip("postfix not installed")
    psink = harness.SmtpSink(workdir, name="postfix-sink")
    psink.start()
    pf = PostfixTls(workdir, psink.port, certs.pem("mail"), certs.key("mail"))
    request.node._diagnostics = getattr(request.node, "_diagnostics", []) + [("postfix", pf), ("postfix sink", psink)]
    try:
        pf.start()
        tap = tls_tap(tap_factory, pf.port, certs, *upstream_ca_args(certs))
        body = os.path.join(workdir, "body.eml")
        with open(body, "wb") as f:
            f.write(BODY)
        rc, out = swaks(tap.port, "--tls", "--data", body)
        assert rc == 0, out
        (m,) = psink.wait_messages(1, timeout=10)
        assert b"using TLSv1." in m.content.split(b"\n\n")[0], m.content  # postfix's Received header
        assert m.content.endswith(harness.sink_form(harness.dot_stuff(BODY)) + b"\n"), m.content
        t = transcript(tap)
        ev = tap.event()
        check_upstream_tls(t, ev)
        check_client_tls(t, ev)
    finally:
        pf.stop()
        psink.stop()


@pytest.mark.limit(60)
def test_postfix_smtps_with_xclient(tap_factory, certs, workdir, request):
    """--upstream-tls implicit with --forward-client xclient to Postfix's smtps (wrapper mode):
    the greeting comes over TLS first, then smtptap's EHLO and XCLIENT (it once sent EHLO
    before the greeting, read the greeting as its reply and refused every session).  Postfix
    sees the client at 127.0.0.2: it refuses to relay for it (it trusts 127.0.0.1 only), takes
    mail for its own relay domain, and its Received header names the client and TLS."""
    if not harness.IS_ROOT:
        pytest.skip("a private Postfix instance needs root")
    psink = harness.SmtpSink(workdir, name="postfix-sink")
    psink.start()
    pf = PostfixTls(workdir, psink.port, certs.pem("mail"), certs.key("mail"), wrapper=True,
                    main={"mynetworks": "127.0.0.1/32", "relay_domains": "example.org",
                          "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
                          "smtpd_authorized_xclient_hosts": "127.0.0.1"})
    request.node._diagnostics = getattr(request.node, "_diagnostics", []) + [("postfix", pf), ("postfix sink", psink)]
    try:
        pf.start()
        tap = tap_factory(pf.port, "--upstream-tls", "implicit", "--forward-client", "xclient",
                          *upstream_ca_args(certs))
        c = SmtpClient(tap.port, source="127.0.0.2")
        g = c.reply()
        assert g and g[-1].startswith(b"220 postfix.test "), g
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<%s>" % FROM, 250)
        r = c.cmd("RCPT TO:<%s>" % TO)
        assert r[-1].startswith(b"554 5.7.1 ") and b"Relay access denied" in r[-1], r
        c.expect("RCPT TO:<carol@example.org>", 250)
        c.expect("DATA", 354)
        c.send(BODY + b".\r\n")
        assert c.code() == 250
        c.expect("QUIT", 221)
        (m,) = psink.wait_messages(1, timeout=10)
        received = m.content.split(b"\n\n")[0]
        assert b"(unknown [127.0.0.2])" in received and b"using TLSv1." in received, received
        t = transcript(tap)
        ups = [u.split(" ")[0].upper() for u in t.upstream_lines()]
        assert ups == ["EHLO", "XCLIENT"], t.upstream_lines()
        ev = tap.event()
        assert ev["forwarded"] == "xclient" and ev["reason"] == "quit", ev
        assert ev["tls"]["upstream"]["verify"] == "ok", ev
    finally:
        pf.stop()
        psink.stop()


@pytest.mark.limit(60)
def test_xclient_inside_a_passthrough_tunnel_warned_and_refused_by_postfix(tap_factory, certs,
                                                                           workdir, request):
    """--forward-client xclient without a certificate: after the client's STARTTLS the
    session is relayed unread, so smtptap can't refuse a client's own XCLIENT inside TLS.
    smtptap says so at start; and Postfix, which checks smtpd_authorized_xclient_hosts
    against the address smtptap forwarded, refuses that XCLIENT itself."""
    if not harness.IS_ROOT:
        pytest.skip("a private Postfix instance needs root")
    psink = harness.SmtpSink(workdir, name="postfix-sink")
    psink.start()
    pf = PostfixTls(workdir, psink.port, certs.pem("mail"), certs.key("mail"),
                    main={"smtpd_authorized_xclient_hosts": "127.0.0.1"})
    request.node._diagnostics = getattr(request.node, "_diagnostics", []) + [("postfix", pf), ("postfix sink", psink)]
    try:
        pf.start()
        tap = tap_factory(pf.port, "--forward-client", "xclient")
        harness.wait_until(lambda: "--forward-client xclient with --tls-mode passthrough" in
                           tap.stderr(), 5, what="the start-up warning")
        c = SmtpClient(tap.port, source="127.0.0.2")
        assert c.code() == 220
        c.expect("EHLO client.test", 250)
        c.expect("STARTTLS", 220)
        tls_wrap(c, client_context(certs.pem("ca")), server_hostname="mail.test")
        kw = ehlo_keywords(c.expect("EHLO client.test", 250))
        assert "XCLIENT" not in kw, kw  # Postfix offers it to authorized hosts only
        r = c.cmd("XCLIENT ADDR=192.0.2.66 NAME=spoofed.example")
        assert r[-1].startswith(b"550 5.7.0 "), r
        c.expect("QUIT", 221)
        harness.wait_until(lambda: "disconnect from" in pf.log(), 10, what="Postfix's log")
        assert "192.0.2.66" not in pf.log() and "[127.0.0.2]" in pf.log(), pf.log()
    finally:
        pf.stop()
        psink.stop()
    tap2 = tap_factory(psink.port, "--forward-client", "xclient", "--tls-cert", certs.pem("proxy"),
                       "--tls-key", certs.key("proxy"), name="with-cert")
    harness.wait_until(lambda: "relaying to" in tap2.stderr(), 5, what="the start-up lines")
    assert "--tls-mode passthrough" not in tap2.stderr(), tap2.stderr()


# --------------------------------------------------------------------------------------------
# STARTTLS state: the proxy's own STARTTLS, RFC 3207 4.2 reset, STARTTLS where it makes no sense


@pytest.mark.limit(30)
def test_upstream_tls_none_starttls_terminated_at_proxy(tap_factory, fake_server, certs):
    """--upstream-tls none: the server (which offers STARTTLS) never sees one, the client's
    STARTTLS is answered by the proxy, the EHLO reply shows STARTTLS as the proxy offers it."""
    srv = fake_server(SmtpServerScript(starttls=certs.server_context("mail"),
                                       caps=("PIPELINING", "XCLIENT NAME ADDR", "XFORWARD NAME ADDR")))
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-tls", "none")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.test", 250)
    kw = ehlo_keywords(r)
    assert kw.count("STARTTLS") == 1 and "XCLIENT" not in kw and "XFORWARD" not in kw, r
    assert c.cmd("STARTTLS") == [b"220 2.0.0 Ready to start TLS\r\n"]
    tls_wrap(c, client_context(certs.pem("proxy")))
    r = c.expect("EHLO client.test", 250)
    kw = ehlo_keywords(r)
    assert "STARTTLS" not in kw and "XCLIENT" not in kw and "XFORWARD" not in kw, r
    assert r[-1][3:4] == b" " and all(l[3:4] == b"-" for l in r[:-1]), r
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert b"STARTTLS" not in [x.upper() for x in cmds], cmds
    # After the client's handshake the proxy resets the server's state (RFC 3207 4.2).
    assert cmds[0].upper().startswith(b"EHLO ") and cmds[1] == b"RSET", cmds
    assert cmds[2] == b"EHLO client.test", cmds
    t = transcript(tap)
    assert t.upstream_lines() == ["RSET"], t.upstream_lines()
    assert tap.event()["tls"]["upstream"] is None


@pytest.mark.limit(30)
def test_chunking_forgotten_after_client_starttls(tap_factory, fake_server, certs):
    """After the client's handshake the EHLO state starts over: CHUNKING offered before it
    counts no more, so BDAT before the new EHLO is answered by the proxy and its octets are
    read as commands; after the new EHLO, BDAT is relayed."""
    srv = fake_server(SmtpServerScript(chunking=True))
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-tls", "none")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    assert "CHUNKING" in ehlo_keywords(c.expect("EHLO client.test", 250))
    c.expect("STARTTLS", 220)
    tls_wrap(c, client_context(certs.pem("proxy")))
    c.send(b"BDAT 6 LAST\r\nNOOP\r\n")
    assert c.reply() == [b"502 5.5.1 BDAT not available: CHUNKING not offered\r\n"]
    assert c.code() == 250
    assert "CHUNKING" in ehlo_keywords(c.expect("EHLO client.test", 250))
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("RCPT TO:<%s>" % TO, 250)
    c.send(b"BDAT 6 LAST\r\nbody\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert cmds.count(b"BDAT 6 LAST") == 1 and b"NOOP" in cmds, cmds
    assert srv.conns[0].messages[0]["chunks"] == [b"body\r\n"]


@pytest.mark.limit(30)
def test_state_reset_after_client_starttls(tap_factory, tls_upstream, certs):
    """RFC 3207 4.2: after the handshake the SMTP state starts over.  A MAIL FROM given before
    STARTTLS must not be in effect inside the TLS session (RCPT right after TLS is refused)."""
    srv = tls_upstream
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    c.expect("MAIL FROM:<before-tls@example.com>", 250)
    assert c.cmd("STARTTLS")[-1].startswith(b"220 "), "STARTTLS refused"
    tls_wrap(c, client_context(certs.pem("proxy")))
    r = c.cmd("RCPT TO:<%s>" % TO)
    rcpt_code = int(r[-1][:3]) if r else None
    # Whatever the answer, no message may go out with the pre-TLS envelope.
    if rcpt_code == 250:
        c.cmd("DATA")
        c.send(b"Subject: pre-TLS envelope\r\n\r\nbody\r\n.\r\n")
        c.reply()
    c.cmd("QUIT")
    time.sleep(0.3)
    assert not srv.messages, "a message went out with the envelope given before STARTTLS: %r" % srv.messages
    assert rcpt_code is not None and rcpt_code >= 500, \
        "RCPT right after the TLS handshake (no EHLO, no MAIL) answered %r" % r


@pytest.mark.limit(30)
def test_second_starttls_and_starttls_on_implicit_leg_refused(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    c.expect("STARTTLS", 220)
    tls_wrap(c, client_context(certs.pem("proxy")))
    c.expect("EHLO client.test", 250)
    r = c.cmd("STARTTLS")
    assert r and r[-1][:1] in (b"4", b"5"), "second STARTTLS answered %r" % r
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    d = SmtpClient(tap.tls_port)
    tls_wrap(d, client_context(certs.pem("proxy")))
    assert d.code() == 220
    r = d.expect("EHLO client.test", 250)
    assert "STARTTLS" not in ehlo_keywords(r), r
    r = d.cmd("STARTTLS")
    assert r and r[-1][:1] in (b"4", b"5"), "STARTTLS on an implicit-TLS leg answered %r" % r
    d.expect("NOOP", 250)
    d.expect("QUIT", 221)
    ts = wait_transcripts(tap, 2)
    assert all(t.close_fields()["reason"] == "quit" for t in ts)


# --------------------------------------------------------------------------------------------
# Plaintext injected across STARTTLS (CVE-2011-0411 class)


@pytest.mark.limit(30)
def test_client_plaintext_after_starttls_discarded(tap_factory, fake_server, certs):
    srv = fake_server(SmtpServerScript())
    tap = tls_tap(tap_factory, srv.port, certs)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    injected = b"MAIL FROM:<evil@x>\r\n"
    c.send(b"STARTTLS\r\n" + injected)
    assert c.reply() == [b"220 2.0.0 Ready to start TLS\r\n"]
    tls_wrap(c, client_context(verify=False))
    r = c.expect("EHLO client.test", 250)
    # Nothing answers the injected MAIL: the next reply is the one for our own command.
    r = c.cmd("NOOP")
    assert r == [b"250 2.0.0 Ok\r\n"], "reply after TLS is not NOOP's: %r" % r
    c.expect("MAIL FROM:<good@example.com>", 250)
    c.expect("RCPT TO:<%s>" % TO, 250)
    c.expect("DATA", 354)
    c.send(b"Subject: after injection\r\n\r\nok\r\n.\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert b"MAIL FROM:<evil@x>" not in cmds, "the injected command reached the server: %r" % cmds
    assert [m["mail"] for m in srv.conns[0].messages] == [b"MAIL FROM:<good@example.com>"]
    t = transcript(tap)
    assert "discarded %d octets the client sent after STARTTLS before the handshake" % len(injected) in \
        " ".join(t.events()), t.excerpt()
    assert any(e.startswith("warning ") and "discarded" in e for e in t.events()), t.events()
    assert "MAIL FROM:<evil@x>" not in t.client_lines()
    ev = tap.event()
    assert ev["warnings"] >= 1, ev
    assert [x["mail_from"] for x in ev["transactions"]] == ["<good@example.com>"], ev["transactions"]


@pytest.mark.limit(30)
def test_server_plaintext_after_starttls_220_discarded(tap_factory, fake_server, certs):
    """A server that sends "220 go ahead\\r\\n250 injected\\r\\n" in one write after the proxy's
    STARTTLS: the extra reply is discarded (recorded as a warning), never relayed to the
    client or taken as the reply to one of its commands."""
    ctx = certs.server_context("mail")

    def starttls(conn, line):
        conn.send(b"220 go ahead\r\n250 injected\r\n")
        try:
            conn.sock = ctx.wrap_socket(conn.sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            conn.tls_error = repr(e)
            conn.close()
            return True
        conn.buf.clear()
        conn.tls = True
        return True

    srv = fake_server(SmtpServerScript(name="mail.test", starttls=ctx, hooks={"STARTTLS": starttls}))
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    first = c.reply()
    if first and first[0].startswith(b"220 "):
        # The handshake went ahead without the injected line: a normal session follows.
        r = c.cmd("EHLO client.test")
        assert r and r[0].startswith(b"250-mail.test"), "EHLO answered with %r" % r
        c.expect("MAIL FROM:<%s>" % FROM, 250)
        c.expect("QUIT", 221)
    else:
        assert first and first[0].startswith(b"421 4.7.0 "), first
        c.read_until_eof()
    assert b"injected" not in bytes(c.received), "the injected reply reached the client: %r" % bytes(c.received)
    t = transcript(tap)
    assert not any("injected" in p for p in t.proxy_lines()), t.proxy_lines()
    assert "warning discarded 14 octets the server sent after its 220 to STARTTLS" in t.events(), t.excerpt()
    assert "250 injected" not in t.server_lines(), t.excerpt()
    assert tap.event()["warnings"] >= 1


# --------------------------------------------------------------------------------------------
# Handshake failures


@pytest.mark.limit(30)
def test_client_handshake_failure_recorded_next_session_served(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    c.expect("STARTTLS", 220)
    c.send(b"this is not a TLS ClientHello\r\n" * 8)
    rest = c.read_until_eof(10)
    assert b"250" not in rest, rest
    t = transcript(tap, timeout=10)
    f = t.event_fields("tls client failed")
    assert f and f.get("reason"), "no 'tls client failed reason=...' event:\n" + t.excerpt()
    assert t.close_fields()["reason"] == "client_tls_failed", t.close_event()
    ev = tap.event()
    assert ev["reason"] == "client_tls_failed", ev
    assert "this is not a TLS" not in t.text
    # The proxy goes on serving.
    rc, out = swaks(tap.port, "--tls", "--body", "after a failed handshake")
    assert rc == 0, out
    (m,) = sink.wait_messages(1)
    assert b"after a failed handshake" in m.content


@pytest.mark.limit(30)
def test_client_plain_smtp_on_implicit_listener_fails(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    c = SmtpClient(tap.tls_port)
    c.send(b"EHLO client.test\r\n")
    rest = c.read_until_eof(10)
    assert b"220 " not in rest and b"250" not in rest, rest
    t = transcript(tap, timeout=10)
    f = t.event_fields("tls client failed")
    assert f and f.get("reason"), t.excerpt()
    assert "EHLO client.test" not in t.client_lines()
    assert tap.event()["reason"] == "client_tls_failed"
    # Next session on the same listener works.
    s = smtplib.SMTP_SSL("127.0.0.1", tap.tls_port, timeout=10, context=client_context(verify=False))
    assert s.noop()[0] == 250
    s.quit()


@pytest.mark.limit(30)
def test_client_closes_mid_handshake(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    c.expect("STARTTLS", 220)
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
    c.close()
    t = transcript(tap, timeout=10)
    assert t.close_fields()["reason"] in ("client_tls_failed", "client_closed"), t.close_event()
    ev = tap.event()
    assert ev.get("tls") is None or ev["tls"]["client"] is None, ev.get("tls")
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    assert s.noop()[0] == 250
    s.quit()


# --------------------------------------------------------------------------------------------
# Upstream: require, verification


def expect_421_then_close(c, text):
    r = c.reply()
    assert r and r[-1].startswith(b"421 4.7.0 "), "expected 421 4.7.0, got %r" % r
    assert text.encode() in r[-1], r
    c.read_until_eof(10)
    return r


@pytest.mark.limit(30)
def test_upstream_tls_require_without_starttls_sink(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs, "--upstream-tls", "require")
    c = SmtpClient(tap.port)
    expect_421_then_close(c, "Upstream server does not offer TLS")
    assert b"smtp-sink" not in bytes(c.received), "the server's greeting reached the client"
    t = transcript(tap)
    assert t.proxy_lines() and t.proxy_lines()[0].startswith("421 4.7.0 "), t.proxy_lines()
    ev = tap.event()
    assert ev["reason"] == "upstream_tls_failed", ev
    assert t.close_fields()["reason"] == "upstream_tls_failed"


@pytest.mark.limit(30)
def test_upstream_tls_require_nothing_in_clear(tap_factory, fake_server, certs):
    """With require, nothing of the client goes to a server without TLS (only the proxy's own
    EHLO, which it needs to learn there is no STARTTLS)."""
    srv = fake_server(SmtpServerScript())
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-tls", "require")
    c = SmtpClient(tap.port)
    c.send(b"EHLO early.client\r\n")  # an early talker: must not reach the server either
    expect_421_then_close(c, "Upstream server does not offer TLS")
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert len(cmds) <= 2 and cmds[0].upper().startswith(b"EHLO ") and b"early.client" not in cmds[0], cmds
    assert all(x.upper() in (b"QUIT",) for x in cmds[1:]), cmds
    assert tap.event()["reason"] == "upstream_tls_failed"


@pytest.mark.limit(30)
def test_upstream_tls_require_server_refuses_starttls(tap_factory, fake_server, certs):
    """require against a server that offers STARTTLS but answers it 454: 421 4.7.0."""
    def refuse(conn, line):
        conn.send(b"454 4.7.0 TLS not available due to local problem\r\n")
        return True

    srv = fake_server(SmtpServerScript(starttls=certs.server_context("mail"), hooks={"STARTTLS": refuse}))
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-tls", "require", *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    r = c.reply()
    assert r and r[-1].startswith(b"421 4.7.0 "), r
    c.read_until_eof(10)
    assert tap.event()["reason"] == "upstream_tls_failed"


@pytest.mark.limit(30)
def test_upstream_verify_name_mismatch(tap_factory, aiosmtpd_factory, certs):
    """The server's certificate (other.test, from the right CA) does not match
    --upstream-name mail.test: 421 4.7.0, the reason recorded, nothing delivered."""
    srv = aiosmtpd_factory(starttls_context=certs.server_context("other"), require_starttls=True)
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs, "mail.test"))
    c = SmtpClient(tap.port)
    expect_421_then_close(c, "TLS with the upstream server failed")
    t = transcript(tap)
    f = t.event_fields("tls upstream failed")
    assert f and f.get("reason"), "no 'tls upstream failed reason=...':\n" + t.excerpt()
    assert any(w in f["reason"].lower() for w in ("hostname", "name", "mismatch")), f
    ev = tap.event()
    assert ev["reason"] == "upstream_tls_failed", ev
    assert not srv.messages


@pytest.mark.limit(30)
def test_upstream_verify_name_defaults_to_upstream_host(tap_factory, tls_upstream, certs):
    """Without --upstream-name the name checked is the --upstream host (127.0.0.1), which the
    mail.test certificate does not carry."""
    tap = tls_tap(tap_factory, tls_upstream.port, certs, "--upstream-ca", certs.pem("ca"))
    c = SmtpClient(tap.port)
    expect_421_then_close(c, "TLS with the upstream server failed")
    assert tap.event()["reason"] == "upstream_tls_failed"


@pytest.mark.limit(30)
def test_upstream_verify_untrusted_ca(tap_factory, aiosmtpd_factory, certs):
    """A self-signed server certificate is not accepted with --upstream-verify ca."""
    srv = aiosmtpd_factory(starttls_context=certs.server_context("proxy2"), require_starttls=True)
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-verify", "ca", "--upstream-ca", certs.pem("ca"))
    c = SmtpClient(tap.port)
    expect_421_then_close(c, "TLS with the upstream server failed")
    t = transcript(tap)
    f = t.event_fields("tls upstream failed")
    assert f and f.get("reason"), t.excerpt()
    assert tap.event()["reason"] == "upstream_tls_failed"


@pytest.mark.limit(30)
def test_upstream_verify_ca_ignores_name(tap_factory, aiosmtpd_factory, certs):
    srv = aiosmtpd_factory(starttls_context=certs.server_context("other"), require_starttls=True)
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-verify", "ca", *upstream_ca_args(certs, "mail.test"))
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.test")
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    check_aio_message(srv)
    t = transcript(tap)
    check_upstream_tls(t, tap.event(), subject_cn="other.test", verify="ok")


@pytest.mark.limit(30)
def test_upstream_verify_none(tap_factory, aiosmtpd_factory, certs):
    srv = aiosmtpd_factory(starttls_context=certs.server_context("proxy2"), require_starttls=True)
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-verify", "none")
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.test")
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    check_aio_message(srv)
    t = transcript(tap)
    check_upstream_tls(t, tap.event(), subject_cn="proxy2.test", verify="not checked")


@pytest.mark.limit(30)
def test_upstream_sni_is_upstream_name(tap_factory, certs, fake_server):
    """The name sent as SNI to the server is --upstream-name."""
    seen = []
    ctx = certs.server_context("mail")
    ctx.sni_callback = lambda sslobj, name, c: seen.append(name)
    srv = fake_server(SmtpServerScript(name="mail.test", starttls=ctx))
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("QUIT", 221)
    assert seen == ["mail.test"], seen


# --------------------------------------------------------------------------------------------
# passthrough and strip


@pytest.mark.limit(30)
def test_passthrough_mode_with_certificate(tap_factory, tls_upstream, certs):
    """--tls-mode passthrough (with a certificate at hand): the client's STARTTLS goes to the
    server, the client's TLS session is with the server (its certificate), bytes relayed raw."""
    srv = tls_upstream
    tap = tls_tap(tap_factory, srv.port, certs, "--tls-mode", "passthrough", implicit=False)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.test", 250)
    assert "STARTTLS" in ehlo_keywords(r), r
    r = c.expect("STARTTLS", 220)
    assert r == [b"220 Ready to start TLS\r\n"], "not aiosmtpd's own 220: %r" % r
    sock = tls_wrap(c, client_context(certs.pem("ca")), server_hostname="mail.test")
    assert peer_cn(sock) == "mail.test"
    c.expect("EHLO client.test", 250)
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("RCPT TO:<%s>" % TO, 250)
    c.expect("DATA", 354)
    c.send(harness.dot_stuff(BODY) + b".\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    # (aiosmtpd's TLS transport waits for the client's close_notify before it closes TCP:
    # close the client like a real one does.)
    c.close()
    check_aio_message(srv)
    t = transcript(tap)
    assert "STARTTLS" in t.client_lines()
    assert any(e.startswith("starttls passthrough") for e in t.events()), t.excerpt()
    assert FROM not in t.text and "secret body" not in t.text
    assert not t.upstream_lines(), t.upstream_lines()
    assert not t.proxy_lines(), t.proxy_lines()
    ev = tap.event()
    assert ev["tls"]["mode"] == "passthrough", ev["tls"]
    assert ev["tls"]["client_octets"] > 0 and ev["tls"]["server_octets"] > 0, ev["tls"]


@pytest.mark.limit(30)
def test_strip_mode(tap_factory, tls_upstream, certs):
    """--tls-mode strip (no certificate): STARTTLS removed from the EHLO reply and refused
    with 454 4.7.0; the client's dialogue recorded in clear; the upstream leg still TLS."""
    srv = tls_upstream
    tap = tap_factory(srv.port, "--tls-mode", "strip", *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.test", 250)
    assert "STARTTLS" not in ehlo_keywords(r), r
    r = c.cmd("STARTTLS")
    assert r and r[-1].startswith(b"454 4.7.0 "), r
    assert b"TLS not available" in r[-1], r
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("RCPT TO:<%s>" % TO, 250)
    c.expect("DATA", 354)
    c.send(harness.dot_stuff(BODY) + b".\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    check_aio_message(srv)
    t = transcript(tap)
    ev = tap.event()
    check_upstream_tls(t, ev)
    assert ev["tls"]["mode"] == "strip" and ev["tls"]["client"] is None, ev["tls"]
    assert "MAIL FROM:<%s>" % FROM in t.client_lines()
    assert any(p.startswith("454 4.7.0 ") for p in t.proxy_lines()), t.proxy_lines()


@pytest.mark.limit(30)
def test_strip_mode_server_never_sees_starttls(tap_factory, fake_server, certs):
    srv = fake_server(SmtpServerScript(starttls=certs.server_context("mail")))
    tap = tap_factory(srv.port, "--tls-mode", "strip", "--upstream-tls", "none")
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.test", 250)
    assert "STARTTLS" not in ehlo_keywords(r), r
    assert r[-1][3:4] == b" ", r
    r = c.cmd("STARTTLS")
    assert r and r[-1].startswith(b"454 4.7.0 "), r
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    srv.join()
    assert b"STARTTLS" not in [x.rstrip(b"\r\n").upper() for x in srv.conns[0].commands]


# --------------------------------------------------------------------------------------------
# --tls-min-version


@pytest.mark.limit(30)
def test_min_version_13_refuses_tls12_client(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs, "--tls-min-version", "1.3")
    ctx12 = client_context(verify=False, max_version=ssl.TLSVersion.TLSv1_2)
    # STARTTLS
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    c.expect("STARTTLS", 220)
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        tls_wrap(c, ctx12)
        c.cmd("EHLO client.test")
    c.close()
    # Implicit TLS
    d = SmtpClient(tap.tls_port)
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        tls_wrap(d, ctx12)
        d.reply()
    d.close()
    ts = wait_transcripts(tap, 2, timeout=10)
    for t in ts:
        f = t.event_fields("tls client failed")
        assert f and f.get("reason"), t.excerpt()
        assert t.close_fields()["reason"] == "client_tls_failed", t.close_event()
    # A TLS 1.3 client is served.
    s = smtplib.SMTP_SSL("127.0.0.1", tap.tls_port, timeout=10, context=client_context(verify=False))
    assert s.sock.version() == "TLSv1.3"
    s.ehlo("client.test")
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    check_sink_message(sink)
    ts = wait_transcripts(tap, 3)
    ok = [t for t in ts if t.event_fields("tls client started")]
    assert len(ok) == 1 and ok[0].event_fields("tls client started")["version"] == "TLSv1.3"


@pytest.mark.limit(30)
def test_default_min_version_accepts_tls12_client(tap_factory, sink, certs):
    tap = tls_tap(tap_factory, sink.port, certs)
    ctx12 = client_context(verify=False, max_version=ssl.TLSVersion.TLSv1_2)
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.test")
    s.starttls(context=ctx12)
    assert s.sock.version() == "TLSv1.2"
    s.ehlo("client.test")
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    t = transcript(tap)
    check_client_tls(t, tap.event(), version="TLSv1.2")


@pytest.mark.limit(30)
def test_min_version_13_refuses_tls12_upstream(tap_factory, aiosmtpd_factory, certs):
    srv = aiosmtpd_factory(starttls_context=certs.server_context("mail", max_version=ssl.TLSVersion.TLSv1_2),
                           require_starttls=True)
    tap = tls_tap(tap_factory, srv.port, certs, "--tls-min-version", "1.3", *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    expect_421_then_close(c, "TLS with the upstream server failed")
    t = transcript(tap)
    assert t.event_fields("tls upstream failed"), t.excerpt()
    assert tap.event()["reason"] == "upstream_tls_failed"


# --------------------------------------------------------------------------------------------
# SIGHUP reloads the certificate and key


def served_cn(port, implicit=True):
    ctx = client_context(verify=False)
    c = SmtpClient(port)
    try:
        if implicit:
            sock = tls_wrap(c, ctx)
            assert c.code() == 220
        else:
            assert c.code() == 220
            c.expect("EHLO client.test", 250)
            c.expect("STARTTLS", 220)
            sock = tls_wrap(c, ctx)
        cn = peer_cn(sock)
        c.expect("QUIT", 221)
        return cn
    finally:
        c.close()


@pytest.mark.limit(40)
def test_sighup_broken_key_keeps_old_certificate(tap_factory, sink, certs, workdir):
    crt = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")
    shutil.copy(certs.pem("proxy"), crt)
    shutil.copy(certs.key("proxy"), key)
    tap = tls_tap(tap_factory, sink.port, certs, cert_args=["--tls-cert", crt, "--tls-key", key])
    assert served_cn(tap.tls_port) == "proxy.test"
    assert served_cn(tap.port, implicit=False) == "proxy.test"

    # 1. A broken key (the new certificate with garbage for its key).
    shutil.copy(certs.pem("proxy2"), crt)
    with open(key, "w") as f:
        f.write("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    before = len(tap.stderr())
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: "certificate reload failed" in tap.stderr()[before:], 5.0,
                       what="'certificate reload failed' logged after SIGHUP")
    assert "error" in tap.stderr()[before:], tap.stderr()[before:]
    assert tap.alive()
    assert served_cn(tap.tls_port) == "proxy.test"
    assert served_cn(tap.port, implicit=False) == "proxy.test"

    # 2. A pair that does not match (proxy2's certificate, proxy's key).
    shutil.copy(certs.key("proxy"), key)
    before = len(tap.stderr())
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: "certificate reload failed" in tap.stderr()[before:], 5.0,
                       what="'certificate reload failed' logged after SIGHUP")
    assert "error" in tap.stderr()[before:], tap.stderr()[before:]
    assert served_cn(tap.tls_port) == "proxy.test"

    # 3. A good pair is taken.
    shutil.copy(certs.key("proxy2"), key)
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: served_cn(tap.tls_port) == "proxy2.test", 5.0, interval=0.2,
                       what="the new certificate served after SIGHUP")
    assert served_cn(tap.port, implicit=False) == "proxy2.test"
    rc, out = swaks(tap.port, "--tls", "--body", "after reload")
    assert rc == 0, out
    sink.wait_messages(1)


@pytest.mark.limit(40)
def test_sighup_keeps_open_tls_sessions(tap_factory, sink, certs, workdir):
    crt = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")
    shutil.copy(certs.pem("proxy"), crt)
    shutil.copy(certs.key("proxy"), key)
    tap = tls_tap(tap_factory, sink.port, certs, cert_args=["--tls-cert", crt, "--tls-key", key])
    c = SmtpClient(tap.tls_port)
    tls_wrap(c, client_context(verify=False))
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    shutil.copy(certs.pem("proxy2"), crt)
    shutil.copy(certs.key("proxy2"), key)
    tap.signal(signal.SIGHUP)
    wait_stderr(tap, "reloaded")
    assert served_cn(tap.tls_port) == "proxy2.test"
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("RCPT TO:<%s>" % TO, 250)
    c.expect("DATA", 354)
    c.send(harness.dot_stuff(BODY) + b".\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    check_sink_message(sink)


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.limit(30)
@pytest.mark.parametrize("args", [
    ["--tls-mode", "terminate"],                              # terminate needs a certificate
    ["--tls-mode", "bogus"],
    ["--tls-cert", "CERT"],                                   # no key
    ["--tls-key", "KEY"],                                     # no cert
    ["--listen-tls", "127.0.0.1:PORT"],                       # implicit TLS needs a certificate
    ["--tls-min-version", "1.1", "--tls-cert", "CERT", "--tls-key", "KEY"],
    ["--upstream-tls", "sometimes"],
    ["--upstream-verify", "maybe"],
    ["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "KEY"],
    ["--tls-cert", "CERT", "--tls-key", "OTHERKEY"],           # key does not match
], ids=["terminate-no-cert", "bad-mode", "cert-no-key", "key-no-cert", "listen-tls-no-cert",
        "min-1.1", "bad-upstream-tls", "bad-verify", "missing-cert", "mismatched-key"])
def test_tls_option_errors(smtptap_bin, certs, workdir, args):
    port = harness.free_port()
    sub = {"CERT": certs.pem("proxy"), "KEY": certs.key("proxy"), "OTHERKEY": certs.key("proxy2"),
           "127.0.0.1:PORT": "127.0.0.1:%d" % harness.free_port()}
    argv = [smtptap_bin, "--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:9",
            "--log-dir", os.path.join(workdir, "logs"), "--events", os.path.join(workdir, "ev.jsonl")]
    argv += [sub.get(a, a) for a in args]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        harness.stop_pid(p)
        raise AssertionError("smtptap %s did not exit (it should refuse the options)" % " ".join(args))
    assert p.returncode != 0, "smtptap %s exited 0" % args
    assert p.returncode == 2 or "cert" in " ".join(args).lower(), \
        "bad option value should exit 2, got %d: %s" % (p.returncode, err)
    assert err.strip(), "no message on stderr"
    assert err.decode().startswith("smtptap: "), err


# --------------------------------------------------------------------------------------------
# Upstream leg and edges: no fallback to clear, early talkers, EHLO editing, backpressure,
# failures told over implicit TLS, stalled handshakes


@pytest.mark.limit(30)
def test_upstream_handshake_failure_no_fallback_to_clear(tap_factory, fake_server, certs):
    """A server that says 220 to STARTTLS and then does not speak TLS: with the default
    --upstream-tls starttls that is a failed handshake (421 4.7.0), not a reason to go on in
    clear; nothing of the client reaches the server."""
    def starttls(conn, line):
        conn.send(b"220 go ahead\r\n")
        conn.readline()  # the ClientHello, whatever it holds
        conn.send(b"this is not TLS\r\n")
        time.sleep(0.5)
        conn.close()
        return True

    srv = fake_server(SmtpServerScript(starttls=certs.server_context("mail"), hooks={"STARTTLS": starttls}))
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    c.send(b"EHLO early.client\r\n")
    expect_421_then_close(c, "TLS with the upstream server failed")
    t = transcript(tap)
    f = t.event_fields("tls upstream failed")
    assert f and f.get("reason"), t.excerpt()
    assert tap.event()["reason"] == "upstream_tls_failed"
    assert b"early.client" not in bytes(srv.conns[0].received)


@pytest.mark.limit(30)
def test_early_talker_held_until_upstream_tls(tap_factory, fake_server, certs):
    """A client that talks before the greeting, while the proxy is still securing the
    upstream leg: its EHLO reaches the server only inside TLS, and gets its reply."""
    ctx = certs.server_context("mail")

    def starttls(conn, line):
        time.sleep(0.5)
        conn.send(b"220 2.0.0 Ready to start TLS\r\n")
        conn.sock = ctx.wrap_socket(conn.sock, server_side=True)
        conn.tls_at = len(conn.commands)
        conn.buf.clear()
        return True

    srv = fake_server(SmtpServerScript(name="mail.test", starttls=ctx, hooks={"STARTTLS": starttls}))
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs))
    c = SmtpClient(tap.port)
    c.send(b"EHLO early.client\r\n")
    g = c.reply()
    assert g and g[0].startswith(b"220 mail.test"), g
    r = c.reply()
    assert r and r[0].startswith(b"250-mail.test"), r
    c.expect("QUIT", 221)
    srv.join()
    cmds = [x.rstrip(b"\r\n") for x in srv.conns[0].commands]
    assert cmds[1] == b"STARTTLS" and srv.conns[0].tls_at == 2, cmds
    assert cmds[2] == b"EHLO early.client", cmds
    t = transcript(tap)
    assert any(e.startswith("warning early talker") for e in t.events()), t.excerpt()


@pytest.mark.limit(30)
def test_ehlo_reply_reduced_to_one_line_on_tls_leg(tap_factory, fake_server, certs):
    """A server whose capabilities are only STARTTLS and XCLIENT: on a TLS client leg both go,
    the reply is the single line '250 name' (no dangling '250-')."""
    srv = fake_server(SmtpServerScript(name="mail.test", caps=("XCLIENT NAME",),
                                       starttls=certs.server_context("mail")))
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-tls", "none")
    c = SmtpClient(tap.tls_port)
    tls_wrap(c, client_context(verify=False))
    assert c.code() == 220
    r = c.cmd("EHLO client.test")
    assert r == [b"250 mail.test\r\n"], r
    c.expect("QUIT", 221)


@pytest.mark.limit(30)
def test_upstream_implicit_without_certificate(tap_factory, aiosmtpd_factory, certs):
    """--upstream-tls implicit applies in any mode, also passthrough (no certificate)."""
    srv = aiosmtpd_factory(implicit_context=certs.server_context("mail"))
    tap = tap_factory(srv.port, "--upstream-tls", "implicit", *upstream_ca_args(certs))
    s = smtplib.SMTP("127.0.0.1", tap.port, timeout=10)
    s.ehlo("client.test")
    assert not s.has_extn("starttls"), s.esmtp_features
    assert s.sendmail(FROM, [TO], BODY) == {}
    s.quit()
    check_aio_message(srv)
    t = transcript(tap)
    assert any(x.upper().startswith("MAIL FROM:<%s>" % FROM.upper()) for x in t.client_lines()), t.excerpt()
    f = t.event_fields("tls upstream started")
    assert f and f["verify"] == "ok", t.excerpt()
    assert tap.event()["tls"]["upstream"]["verify"] == "ok"


@pytest.mark.limit(60)
@pytest.mark.parametrize("legs", ["both", "client", "upstream"])
def test_big_message_and_backpressure_over_tls(tap_factory, fake_server, certs, legs):
    """48 MiB over TLS (on both legs, the client's only, the upstream's only) to a server that
    stops reading for 3 s: the message arrives intact and the proxy does not buffer it
    (watermarks set again on the TLS buffer events)."""
    size = 48 * 1024 * 1024

    def data(conn, line):
        conn.send("354 go ahead\r\n")
        time.sleep(3)  # not reading
        got = conn.read_until(b"\r\n.\r\n")
        conn.got = got
        conn.send("250 2.0.0 Ok\r\n")
        return True

    srv = fake_server(SmtpServerScript(name="mail.test", starttls=certs.server_context("mail"),
                                       hooks={"DATA": data}))
    up = ["--upstream-tls", "none"] if legs == "client" else []
    tap = tls_tap(tap_factory, srv.port, certs, *(up + upstream_ca_args(certs)), implicit=False)
    c = SmtpClient(tap.port, timeout=30)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    if legs != "upstream":
        c.expect("STARTTLS", 220)
        tls_wrap(c, client_context(verify=False))
        c.expect("EHLO client.test", 250)
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("RCPT TO:<%s>" % TO, 250)
    time.sleep(0.2)
    base = harness.rss_kib(tap.pid)
    assert c.cmd("DATA")[-1].startswith(b"354")
    line = b"z" * 998 + b"\r\n"
    chunk = line * 1024
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], harness.rss_kib(tap.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    h = hashlib.sha256()
    size = (size // len(chunk)) * len(chunk)
    try:
        for _ in range(size // len(chunk)):
            c.send(chunk)
            h.update(chunk)
        c.send(b".\r\n")
        assert c.code() == 250
    finally:
        done.set()
        th.join()
    c.expect("QUIT", 221)
    srv.join()
    got = srv.conns[0].got
    assert len(got) == size + 3 and hashlib.sha256(got[:-3]).hexdigest() == h.hexdigest()
    growth = peak[0] - base
    assert growth < 16 * 1024, "proxy RSS grew by %d KiB while the server did not read" % growth
    ev = tap.event()
    assert bool(ev["tls"]["client"]) == (legs != "upstream"), ev["tls"]
    assert bool(ev["tls"]["upstream"]) == (legs != "client"), ev["tls"]


@pytest.mark.limit(30)
@pytest.mark.parametrize("first", ["client", "upstream"])
def test_upstream_failure_told_over_implicit_tls(tap_factory, fake_server, certs, first):
    """On the implicit-TLS listener the 421 for a failed upstream verification comes inside
    the client's TLS session, whichever finishes first: the client's handshake (the server
    holds its 220 to STARTTLS for 0.5 s) or the failed upstream one (the client starts its
    handshake 0.5 s after connecting)."""
    ctx = certs.server_context("other")

    def starttls(conn, line):
        if first == "client":
            time.sleep(0.5)
        conn.send(b"220 2.0.0 Ready to start TLS\r\n")
        try:
            conn.sock = ctx.wrap_socket(conn.sock, server_side=True)
        except (ssl.SSLError, OSError):
            pass
        conn.close()
        return True

    srv = fake_server(SmtpServerScript(starttls=ctx, hooks={"STARTTLS": starttls}))
    tap = tls_tap(tap_factory, srv.port, certs, *upstream_ca_args(certs, "mail.test"))
    c = SmtpClient(tap.tls_port)
    if first == "upstream":
        time.sleep(0.5)
    t0 = time.monotonic()
    try:
        tls_wrap(c, client_context(certs.pem("proxy")))
        r = c.reply()
    except (ssl.SSLError, OSError) as e:
        r = "no TLS session: %r" % e
    assert isinstance(r, list) and r and r[-1].startswith(b"421 4.7.0 ") and \
        b"TLS with the upstream server failed" in r[-1], \
        "expected 421 4.7.0 inside TLS, got %r after %.1f s" % (r, time.monotonic() - t0)
    c.read_until_eof(10)
    # The client's handshake may end after the close record and the event line: its record
    # reaches the journal with the next batch (within a second).
    harness.wait_until(lambda: transcript(tap).event_fields("tls client started"), 3,
                       what="the tls client started record")
    t = transcript(tap)
    assert t.event_fields("tls client started"), t.excerpt()
    assert t.event_fields("tls upstream failed"), t.excerpt()
    assert tap.event()["reason"] == "upstream_tls_failed"


@pytest.mark.limit(30)
@pytest.mark.parametrize("mode", ["starttls", "require"])
def test_upstream_refuses_ehlo(tap_factory, fake_server, certs, mode):
    """A server that answers EHLO with 502 (HELO only): with starttls the leg stays in clear
    and the client gets the server's greeting; with require, 421 4.7.0."""
    def ehlo(conn, line):
        conn.send(b"502 5.5.2 Error: command not recognized\r\n")
        return True

    srv = fake_server(SmtpServerScript(name="old.test", hooks={"EHLO": ehlo}))
    tap = tls_tap(tap_factory, srv.port, certs, "--upstream-tls", mode)
    c = SmtpClient(tap.port)
    # Issue 13 item 12: the reason recorded is the server's refusal, not "no STARTTLS".
    why = "the server refused our EHLO"
    if mode == "require":
        expect_421_then_close(c, "Upstream server refused EHLO")
        assert tap.event()["reason"] == "upstream_tls_failed"
        t = transcript(tap)
        assert any(why in e and "502 5.5.2 Error: command not recognized" in e
                   for e in t.events()), t.excerpt()
        return
    g = c.reply()
    assert g == [b"220 old.test ESMTP fake\r\n"], g
    r = c.cmd("EHLO client.test")
    assert r and r[-1].startswith(b"502"), r
    c.expect("HELO client.test", 250)
    c.expect("MAIL FROM:<%s>" % FROM, 250)
    c.expect("QUIT", 221)
    t = transcript(tap)
    assert any(e.startswith("upstream leg stays in clear: " + why) and "502 5.5.2" in e
               for e in t.events()), t.excerpt()
    assert not any("does not offer STARTTLS" in e for e in t.events()), t.excerpt()
    assert "refused EHLO" in tap.stderr(), tap.stderr()


@pytest.mark.limit(30)
def test_upstream_stalls_after_starttls_220(tap_factory, fake_server, certs):
    """A server that says 220 to STARTTLS and then never handshakes: the client is not kept
    waiting for ever (timeouts of 2 s here) and gets a 421."""
    def starttls(conn, line):
        conn.send(b"220 2.0.0 Ready to start TLS\r\n")
        conn.wait_eof(25)
        return True

    srv = fake_server(SmtpServerScript(starttls=certs.server_context("mail"), hooks={"STARTTLS": starttls}))
    tap = tls_tap(tap_factory, srv.port, certs, "--connect-timeout", "2", "--idle-timeout", "2",
                  *upstream_ca_args(certs))
    c = SmtpClient(tap.port, timeout=15)
    t0 = time.monotonic()
    r = c.reply()
    took = time.monotonic() - t0
    assert r and r[-1].startswith(b"421 "), r
    assert took < 10, "421 after %.1f s" % took
    c.read_until_eof(5)
    t = transcript(tap)
    assert t.close_event(), t.excerpt()


@pytest.mark.limit(30)
def test_client_stalls_in_handshake_idle_timeout(tap_factory, sink, certs):
    """A client that says STARTTLS and then sends nothing (or connects to the implicit-TLS
    listener and sends nothing): closed after --idle-timeout."""
    tap = tls_tap(tap_factory, sink.port, certs, "--idle-timeout", "2")
    c = SmtpClient(tap.port, timeout=15)
    assert c.code() == 220
    c.expect("EHLO client.test", 250)
    c.expect("STARTTLS", 220)
    d = SmtpClient(tap.tls_port, timeout=15)
    t0 = time.monotonic()
    ts = wait_transcripts(tap, 2, timeout=10)
    assert all(t.close_fields()["reason"] == "idle_timeout" for t in ts), [t.close_event() for t in ts]
    # The sessions are over: their connections must be closed, not held open afterwards.
    closed = {"implicit": d.closed_within(3), "starttls": c.closed_within(3)}
    took = time.monotonic() - t0
    assert all(closed.values()), "connection(s) still open %.1f s after the idle timeout " \
        "was recorded: %s" % (took, [k for k, v in closed.items() if not v])


# --------------------------------------------------------------------------------------------
# Many sessions over TLS on both legs

LOAD_SESSIONS = int(os.environ.get("SMTPTAP_TLS_LOAD_SESSIONS", "1000"))


@pytest.fixture
def tls_counter(request, certs):
    srv = TlsCountingServer(certs.server_context("mail"))
    request.node._diagnostics = getattr(request.node, "_diagnostics", []) + [("TLS counting server", srv)]
    yield srv
    srv.stop()


@pytest.mark.limit(180)
def test_load_sessions_tls_both_legs(tap_factory, tls_counter, certs):
    """LOAD_SESSIONS clients (SMTPTAP_TLS_LOAD_SESSIONS, default 1,000) connect at once, each
    does STARTTLS with the proxy (which has secured its own leg to the server with STARTTLS)
    and delivers one message: every message arrives over TLS, every session is recorded."""
    n = LOAD_SESSIONS
    tap = tls_tap(tap_factory, tls_counter.port, certs, "--max-sessions", str(max(1000, n)),
                  *upstream_ca_args(certs), implicit=False)
    ctx = client_context(certs.pem("proxy"))
    body = b"Subject: load\r\n\r\n" + b"x" * 998 + b"\r\n"

    async def main():
        errors = []
        greeted = 0
        all_greeted = asyncio.Event()

        async def reply(reader):
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("closed while waiting for a reply")
                if line[3:4] != b"-":
                    return int(line[:3]), line

        async def cmd(reader, writer, line, code):
            writer.write(line + b"\r\n")
            got, text = await reply(reader)
            assert got == code, "%r: expected %d, got %r" % (line, code, text)

        async def one(i):
            nonlocal greeted
            counted = False
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", tap.port)
                try:
                    code, text = await reply(reader)
                    assert code == 220, text
                    greeted += 1
                    counted = True
                    if greeted == n:
                        all_greeted.set()
                    await asyncio.wait_for(all_greeted.wait(), 120)
                    await cmd(reader, writer, b"EHLO client%d.test" % i, 250)
                    await cmd(reader, writer, b"STARTTLS", 220)
                    await writer.start_tls(ctx, server_hostname="proxy.test")
                    await cmd(reader, writer, b"EHLO client%d.test" % i, 250)
                    await cmd(reader, writer, b"MAIL FROM:<load%d@example.com>" % i, 250)
                    await cmd(reader, writer, b"RCPT TO:<b@example.net>", 250)
                    await cmd(reader, writer, b"DATA", 354)
                    writer.write(body + b".\r\n")
                    code, text = await reply(reader)
                    assert code == 250, text
                    await cmd(reader, writer, b"QUIT", 221)
                finally:
                    writer.close()
            except Exception as e:
                errors.append("session %d: %r" % (i, e))
            finally:
                if not counted:
                    greeted += 1
                    if greeted == n:
                        all_greeted.set()

        await asyncio.gather(*(one(i) for i in range(n)))
        return errors

    t0 = time.monotonic()
    errors = asyncio.run(main())
    elapsed = time.monotonic() - t0
    print("\n%d TLS sessions (both legs) in %.1f s; upstream peak %d open" % (n, elapsed, tls_counter.peak))
    assert not errors, "%d session(s) failed: %s" % (len(errors), errors[:10])
    harness.wait_until(lambda: tls_counter.messages >= n, 20, what="%d messages at the server" % n)
    assert tls_counter.messages == n and tls_counter.tls_messages == n, tls_counter.describe()
    assert tls_counter.peak == n, "sessions were not all open at once: %s" % tls_counter.describe()
    evs = tap.wait_events(n, timeout=30)
    assert len(evs) == n
    assert all(e["reason"] == "quit" for e in evs), {e["reason"] for e in evs}
    assert all(e["tls"]["client"] and e["tls"]["upstream"] and e["tls"]["upstream"]["verify"] == "ok"
               for e in evs), [e["tls"] for e in evs if not (e["tls"]["client"] and e["tls"]["upstream"])][:3]
    assert all(len(e["transactions"]) == 1 and e["transactions"][0]["code"] == 250 for e in evs)
    assert len(tap.transcript_paths()) == n
    for path in tap.transcript_paths()[::max(1, n // 50)]:
        t = TlsTranscript(path, tap.log_dir)
        assert t.index("*", "tls upstream started") < t.index("*", "tls client started") < \
            t.index("C:", "MAIL FROM:<load"), t.excerpt()


@pytest.mark.limit(40)
def test_client_gone_in_its_handshake_frees_the_session_at_once(tap_factory, certs):
    """--max-sessions 1, an implicit-TLS listener, the upstream down.  A client connects to the
    TLS listener and never starts its handshake: the proxy's 421 waits in the TLS layer,
    which cannot send it.  The client then closes.

    proxy: the session ends when the client goes (it can be told nothing more), so the one
    session slot is free again at once: a plain client that follows gets the upstream's
    421 4.4.1, not "421 4.3.2 Too many connections" (which it got for the 10 s the proxy used
    to linger for a client already gone)."""
    tap = tls_tap(tap_factory, harness.free_port(), certs, "--max-sessions", "1")
    stalled = socket.create_connection(("127.0.0.1", tap.tls_port), timeout=5)
    ev = tap.event()
    assert ev["reason"] == "upstream_unreachable", ev
    stalled.close()
    deadline = time.monotonic() + 4
    replies = []
    while time.monotonic() < deadline:
        c = SmtpClient(tap.port)
        r = c.reply()
        c.sock.close()
        replies.append(r[0] if r else b"")
        if r and r[0].startswith(b"421 4.4.1 "):
            break
        time.sleep(0.2)
    assert replies and replies[-1].startswith(b"421 4.4.1 "), \
        "the slot of a client gone in its handshake stayed taken: %r" % replies[-3:]
