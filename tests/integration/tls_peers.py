"""TLS peers and helpers for test_tls.py: test certificates, an aiosmtpd server with STARTTLS
(or implicit TLS), a Postfix smtpd with STARTTLS, a counting STARTTLS server for load, and a
transcript reader that knows the "U:" records (lines the proxy itself sent upstream).

Only the standard library, aiosmtpd (python3-aiosmtpd) and the openssl command line.
Reuses harness.py; does not change it.
"""

import asyncio
import os
import re
import ssl
import subprocess
import threading

import pytest

import harness

# --------------------------------------------------------------------------------------------
# Certificates


def _openssl(args, cwd):
    r = subprocess.run(["openssl"] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stdout.decode()[-1000:]))


class Certs:
    """Certificates made for the tests, in one directory:

    proxy      self-signed, CN=proxy.test, SAN DNS:proxy.test, DNS:localhost, IP:127.0.0.1
    proxy2     self-signed, CN=proxy2.test (a replacement for SIGHUP tests)
    ca         a small CA (CN=smtptap test CA)
    mail       signed by ca: CN=mail.test, SAN DNS:mail.test
    other      signed by ca: CN=other.test, SAN DNS:other.test
    Each NAME has NAME.pem and NAME.key (ca: ca.pem, ca.key).
    """

    def __init__(self, d):
        self.dir = d
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        self._selfsigned("proxy", "proxy.test", "DNS:proxy.test,DNS:localhost,IP:127.0.0.1")
        self._selfsigned("proxy2", "proxy2.test", "DNS:proxy2.test,DNS:localhost,IP:127.0.0.1")
        _openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                  "-days", "2", "-subj", "/CN=smtptap test CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
        self._signed("mail", "mail.test")
        self._signed("other", "other.test")
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)  # smtpd (user postfix) and smtptap read them

    def _selfsigned(self, name, cn, san):
        _openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key",
                  "-out", name + ".pem", "-days", "2", "-subj", "/CN=" + cn,
                  "-addext", "subjectAltName=" + san], self.dir)

    def _signed(self, name, cn):
        _openssl(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                  "-subj", "/CN=" + cn], self.dir)
        ext = os.path.join(self.dir, name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n"
                    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" % cn)
        _openssl(["x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", ext], self.dir)

    def pem(self, name):
        return os.path.join(self.dir, name + ".pem")

    def key(self, name):
        return os.path.join(self.dir, name + ".key")

    def proxy_args(self, name="proxy"):
        return ["--tls-cert", self.pem(name), "--tls-key", self.key(name)]

    def server_context(self, name="mail", min_version=None, max_version=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pem(name), self.key(name))
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx


def client_context(cafile=None, verify=True, check_hostname=True, max_version=None, min_version=None):
    """A client SSLContext: verify against cafile (the proxy's self-signed certificate is its
    own CA), or no verification at all."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
        ctx.check_hostname = check_hostname
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if min_version is not None:
        ctx.minimum_version = min_version
    return ctx


def peer_cn(sslsock):
    """The CN of the certificate the peer presented (verification on or off)."""
    der = sslsock.getpeercert(binary_form=True)
    r = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-nameopt", "RFC2253"],
                       input=der, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    m = re.search(r"CN=([^,\n]+)", r.stdout.decode())
    return m.group(1) if m else None


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("smtptap-tls-certs"))
    try:
        return Certs(d)
    except (RuntimeError, FileNotFoundError) as e:
        pytest.skip("cannot make test certificates: %s" % e)


# --------------------------------------------------------------------------------------------
# Transcripts: the readers TLS tests add


class TlsTranscript(harness.Transcript):
    """harness.Transcript with the readers the TLS tests use."""

    def kinds(self):
        """(kind, text) pairs in order."""
        return [(r.kind, r.text) for r in self.records]

    def index(self, kind, pred):
        """Index of the first record of kind whose text satisfies pred (a str: startswith)."""
        if isinstance(pred, str):
            prefix = pred
            pred = lambda t: t.startswith(prefix)  # noqa: E731
        for i, r in enumerate(self.records):
            if r.kind == kind and pred(r.text):
                return i
        return -1

    def event_fields(self, prefix):
        """key=value fields (values may be "quoted") of the first event starting with prefix."""
        for e in self.events():
            if e.startswith(prefix):
                return dict((k, v[1:-1] if v.startswith('"') else v)
                            for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', e))
        return None

    def excerpt(self, n=60):
        return "\n".join("%s %s" % (r.kind, r.text) for r in self.records[:n])


def transcripts(tap):
    return tap.transcripts(TlsTranscript)


def wait_transcripts(tap, n=1, timeout=5.0):
    """Waits for n closed transcripts of tap (each with its close event)."""
    return tap.wait_transcripts(n, timeout, cls=TlsTranscript)


def transcript(tap, timeout=5.0):
    return tap.transcript(timeout, cls=TlsTranscript)


# --------------------------------------------------------------------------------------------
# aiosmtpd: a real server with STARTTLS (or implicit TLS)


class AioMessage:
    def __init__(self, mail_from, rcpt_tos, content, tls, cipher):
        self.mail_from, self.rcpt_tos, self.content = mail_from, rcpt_tos, content
        self.tls, self.cipher = tls, cipher

    def __repr__(self):
        return "AioMessage(%r, %r, tls=%r, %d octets)" % (self.mail_from, self.rcpt_tos, self.tls,
                                                         len(self.content))


class AioSmtpd:
    """aiosmtpd's Controller on 127.0.0.1:PORT in its own thread.

    starttls_context: offer STARTTLS with it; require_starttls: refuse MAIL etc. before it;
    implicit_context: TLS from the first byte (SMTPS) instead.  Messages in .messages (content
    as aiosmtpd hands it over: de-stuffed, CRLF line ends, without the final dot)."""

    def __init__(self, starttls_context=None, require_starttls=False, implicit_context=None,
                 hostname="mail.test", auth=None):
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            pytest.skip("aiosmtpd not installed (python3-aiosmtpd)")
        self.port = harness.free_port()
        self.messages = []
        self.sessions = []  # (peer, tls) per MAIL
        self.lock = threading.Lock()
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                ssl_info = session.ssl
                cipher = None
                if ssl_info is not None:
                    cipher = ssl_info.get("cipher")
                tls = ssl_info is not None or implicit_context is not None
                with outer.lock:
                    outer.messages.append(AioMessage(envelope.mail_from, list(envelope.rcpt_tos),
                                                     envelope.original_content or envelope.content,
                                                     tls, cipher))
                return "250 2.0.0 Ok: queued as AIO%d" % len(outer.messages)

        kw = dict(hostname="127.0.0.1", port=self.port, server_hostname=hostname, ready_timeout=10)
        if starttls_context is not None:
            kw["tls_context"] = starttls_context
            kw["require_starttls"] = require_starttls
        if implicit_context is not None:
            kw["ssl_context"] = implicit_context
        if auth is not None:
            def authenticator(server, session, envelope, mechanism, auth_data):
                from aiosmtpd.smtp import AuthResult
                ok = auth.get(auth_data.login.decode()) == auth_data.password.decode()
                return AuthResult(success=ok)
            kw["authenticator"] = authenticator
            kw["auth_require_tls"] = True
        self.controller = Controller(Handler(), **kw)
        self.started = False

    def start(self):
        self.controller.start()
        self.started = True
        return self

    def stop(self):
        if self.started:
            self.started = False
            try:
                self.controller.stop()
            except Exception:
                pass

    def wait_messages(self, n, timeout=5.0):
        try:
            harness.wait_until(lambda: len(self.messages) >= n, timeout, what="%d message(s)" % n)
        except TimeoutError:
            raise AssertionError("expected %d message(s) at aiosmtpd within %.1fs, have %d" % (
                n, timeout, len(self.messages)))
        return list(self.messages)

    def describe(self):
        return "aiosmtpd on 127.0.0.1:%d, %d message(s): %r" % (self.port, len(self.messages),
                                                              self.messages[:5])


# --------------------------------------------------------------------------------------------
# Postfix smtpd with STARTTLS


class PostfixTls(harness.PostfixInstance):
    """harness.PostfixInstance with STARTTLS required (smtpd_tls_security_level=encrypt) and the
    TLS details in its Received header, so the sink's dump shows the leg was encrypted;
    wrapper=True makes it an implicit-TLS (smtps) server instead.  main: as for the base."""

    def __init__(self, workdir, sink_port, cert, key, wrapper=False, main=None):
        super().__init__(workdir, sink_port, main=main)
        self.cert, self.key = cert, key
        self.wrapper = wrapper

    def write_config(self):
        super().write_config()
        with open(os.path.join(self.conf, "main.cf"), "a") as f:
            f.write("""\
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = encrypt
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
smtpd_tls_session_cache_database =
smtpd_tls_wrappermode = {wrapper}
""".format(cert=self.cert, key=self.key, wrapper="yes" if self.wrapper else "no"))
        with open(os.path.join(self.conf, "master.cf"), "a") as f:
            f.write("tlsmgr    unix - - n 1000? 1 tlsmgr\n")


# --------------------------------------------------------------------------------------------
# A counting server with STARTTLS, for many sessions (asyncio, own thread)


class TlsCountingServer(harness.CountingServer):
    """harness.CountingServer's idea with STARTTLS: offers it, handshakes, counts messages
    delivered over TLS (.tls_messages) and in clear (.messages - .tls_messages)."""

    def __init__(self, context):
        self.context = context
        self.tls_messages = 0
        self.handshakes = 0
        super().__init__()

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def handle(reader, writer):
            self.sessions += 1
            self.open += 1
            self.peak = max(self.peak, self.open)
            tls = False
            try:
                writer.write(b"220 counter.test ESMTP\r\n")
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    verb = line[:8].upper().rstrip(b"\r\n")
                    if verb.startswith(b"EHLO"):
                        writer.write(b"250-counter.test\r\n250-PIPELINING\r\n" +
                                     (b"" if tls else b"250-STARTTLS\r\n") + b"250 8BITMIME\r\n")
                    elif verb == b"STARTTLS" and not tls:
                        writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                        await writer.drain()
                        await writer.start_tls(self.context)
                        tls = True
                        self.handshakes += 1
                        continue
                    elif verb[:4] in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                        writer.write(b"250 2.0.0 Ok\r\n")
                    elif verb[:4] == b"DATA":
                        writer.write(b"354 go ahead\r\n")
                        await writer.drain()
                        await reader.readuntil(b"\r\n.\r\n")
                        self.messages += 1
                        if tls:
                            self.tls_messages += 1
                        writer.write(b"250 2.0.0 Ok: counted\r\n")
                    elif verb[:4] == b"QUIT":
                        writer.write(b"221 2.0.0 Bye\r\n")
                        await writer.drain()
                        return
                    else:
                        writer.write(b"502 5.5.2 Unknown\r\n")
                    await writer.drain()
            except Exception as e:  # a vanished peer, mostly
                self.errors.append(repr(e))
            finally:
                self.open -= 1
                writer.close()

        async def start():
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, backlog=4096)

        self.loop.run_until_complete(start())
        self.ready.set()
        self.loop.run_forever()

    def describe(self):
        return harness.CountingServer.describe(self) + " tls_messages=%d handshakes=%d" % (
            self.tls_messages, self.handshakes)


# --------------------------------------------------------------------------------------------
# Fixtures


def _diag(request, title, obj):
    node = request.node
    if not hasattr(node, "_diagnostics"):
        node._diagnostics = []
    node._diagnostics.append((title, obj))


@pytest.fixture
def aiosmtpd_factory(request):
    """Factory: aiosmtpd_factory(**kwargs) -> a started AioSmtpd, stopped afterwards."""
    servers = []

    def make(**kw):
        s = AioSmtpd(**kw)
        servers.append(s)
        _diag(request, "aiosmtpd %d" % len(servers), s)
        return s.start()

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def tls_upstream(aiosmtpd_factory, certs):
    """aiosmtpd with STARTTLS required, certificate mail.test (signed by certs' CA)."""
    return aiosmtpd_factory(starttls_context=certs.server_context("mail"), require_starttls=True)
