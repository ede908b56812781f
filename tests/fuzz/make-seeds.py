#!/usr/bin/env python3
"""Records real dialogues through smtptap and turns what crossed into fuzz seeds.

    tests/fuzz/make-seeds.py [SMTPTAP] [OUTDIR]      (defaults: build/smtptap, tests/fuzz/corpus)

Not run by CI: the seeds it wrote are in the repository.  Each scenario runs a real client
(swaks, Python's smtplib, or a raw socket) against smtptap in front of Postfix's smtp-sink or,
for what smtp-sink does not offer (STARTTLS, CHUNKING, multi-line refusals), a small scripted
server.  Two recording relays sit on either side of smtptap, so the seed holds exactly the
octets the proxy received from each peer, in the order they arrived:

    client --> [tap C] --> smtptap --> [tap S] --> server

A session seed is the server's and the client's octets as alternating pieces separated by
"\\n~~\\n" (fuzz_session.c); the command, reply and redaction seeds are cut from the same
recordings.  Everything listens on 127.0.0.1 only and every process is stopped by its PID.
"""

import base64
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SEP = b"\n~~\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listens on %d" % port)


class Recording:
    """What the proxy received, in arrival order: ("S" or "C", octets)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []
        self.open = 0

    def add(self, who, data):
        with self.lock:
            self.events.append((who, data))

    def pieces(self):
        """Alternating pieces, the server's first (empty when the client spoke first)."""
        out, who = [], "S"
        cur = b""
        for w, d in self.events:
            if w != who:
                out.append(cur)
                cur, who = b"", w
            cur += d
        out.append(cur)
        return out


class Tap(threading.Thread):
    """Accepts on a port and relays to target, recording one direction of the traffic."""

    def __init__(self, target_port, rec, who, record_upstream):
        super().__init__(daemon=True)
        self.port = free_port()
        self.target = target_port
        self.rec = rec
        self.who = who
        self.record_upstream = record_upstream  # record accepted->target, else target->accepted
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = False

    def pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    self.rec.add(self.who, data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self.rec.lock:
                self.rec.open -= 1

    def run(self):
        while not self.stopping:
            try:
                a, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target), 5)
            with self.rec.lock:
                self.rec.open += 2
            threading.Thread(target=self.pump, args=(a, b, self.record_upstream), daemon=True).start()
            threading.Thread(target=self.pump, args=(b, a, not self.record_upstream), daemon=True).start()

    def stop(self):
        self.stopping = True
        self.sock.close()


def make_cert(d):
    key, crt = os.path.join(d, "key.pem"), os.path.join(d, "crt.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=mx.example"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return crt, key


class FakeServer(threading.Thread):
    """An ESMTP server offering STARTTLS and CHUNKING, replying as Postfix would."""

    EHLO = [b"250-mx.example", b"250-PIPELINING", b"250-SIZE 10240000", b"250-STARTTLS",
            b"250-AUTH PLAIN LOGIN CRAM-MD5", b"250-ENHANCEDSTATUSCODES", b"250-8BITMIME",
            b"250-CHUNKING", b"250 SMTPUTF8"]

    def __init__(self, crt, key):
        super().__init__(daemon=True)
        self.port = free_port()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = False

    def run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.session, args=(c,), daemon=True).start()

    def session(self, c):
        c.settimeout(10)
        f = c.makefile("rb")
        tls = False

        def send(*lines):
            c.sendall(b"".join(l + b"\r\n" for l in lines))

        try:
            send(b"220 mx.example ESMTP Postfix")
            while True:
                line = f.readline(100000)
                if not line:
                    break
                verb = line.split(b" ", 1)[0].strip().upper()
                if verb in (b"EHLO", b"LHLO"):
                    send(*[l for l in self.EHLO if not (tls and l.endswith(b"STARTTLS"))])
                elif verb == b"HELO":
                    send(b"250 mx.example")
                elif verb == b"STARTTLS":
                    send(b"220 2.0.0 Ready to start TLS")
                    c = self.ctx.wrap_socket(c, server_side=True)
                    f = c.makefile("rb")
                    tls = True
                elif verb == b"AUTH":
                    args = line.split()
                    mech = args[1].upper() if len(args) > 1 else b""
                    if mech == b"LOGIN":
                        steps = [b"334 VXNlcm5hbWU6", b"334 UGFzc3dvcmQ6"][len(args) - 2:]
                    elif mech == b"CRAM-MD5":
                        steps = [b"334 " + base64.b64encode(b"<1896.697170952@mx.example>")]
                    elif mech == b"PLAIN":
                        steps = [] if len(args) > 2 else [b"334 "]
                    else:
                        send(b"504 5.5.4 Unrecognized authentication type")
                        continue
                    for step in steps:
                        send(step)
                        if f.readline(100000).strip() == b"*":
                            send(b"501 5.7.0 Authentication aborted")
                            break
                    else:
                        send(b"235 2.7.0 Authentication successful")
                elif verb == b"MAIL":
                    send(b"250 2.1.0 Ok")
                elif verb == b"RCPT":
                    if b"nobody@" in line:
                        send(b"550-5.1.1 <nobody@example.com>: Recipient address rejected:",
                             b"550 5.1.1 User unknown in local recipient table")
                    else:
                        send(b"250 2.1.5 Ok")
                elif verb == b"DATA":
                    send(b"354 End data with <CR><LF>.<CR><LF>")
                    while f.readline(100000) not in (b".\r\n", b""):
                        pass
                    send(b"250 2.0.0 Ok: queued as 4XyZ1")
                elif verb == b"BDAT":
                    args = line.split()
                    f.read(int(args[1]))
                    if len(args) > 2:
                        send(b"250 2.0.0 Ok: queued as 4XyZ2")
                    else:
                        send(b"250 2.0.0 Ok: %d octets" % int(args[1]))
                elif verb == b"RSET" or verb == b"NOOP":
                    send(b"250 2.0.0 Ok")
                elif verb == b"QUIT":
                    send(b"221 2.0.0 Bye")
                    break
                else:
                    send(b"502 5.5.2 Error: command not recognized")
        except (OSError, ValueError, IndexError):
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        self.sock.close()


def raw_client(port, script):
    """Sends each step (octets), then reads as many replies as the step expects."""
    s = socket.create_connection(("127.0.0.1", port), 5)
    s.settimeout(5)
    buf = b""

    def read_replies(n):
        nonlocal buf
        while True:
            lines = buf.split(b"\r\n")
            ends = [i for i, l in enumerate(lines[:-1]) if len(l) == 3 or l[3:4] == b" "]
            if len(ends) >= n:
                buf = b"\r\n".join(lines[ends[n - 1] + 1:])
                return
            d = s.recv(65536)
            if not d:
                return
            buf += d

    read_replies(1)
    for step, nreplies in script:
        s.sendall(step)
        read_replies(nreplies)
    s.close()


def bdat(chunk, last=False):
    return b"BDAT %d%s\r\n%s" % (len(chunk), b" LAST" if last else b"", chunk)


class Rig:
    def __init__(self, smtptap, work):
        self.work = work
        self.procs = []
        crt, key = make_cert(work)
        self.sink_port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink = subprocess.Popen(["/usr/sbin/smtp-sink"] + user + ["127.0.0.1:%d" % self.sink_port, "100"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(sink)
        wait_port(self.sink_port)
        self.fake = FakeServer(crt, key)
        self.fake.start()
        self.smtptap = smtptap

    def run(self, upstream_port, client):
        """Runs client(port) through both taps and smtptap; returns the Recording."""
        rec = Recording()
        stap = Tap(upstream_port, rec, "S", record_upstream=False)
        stap.start()
        listen = free_port()
        tap = subprocess.Popen([self.smtptap, "--listen", "127.0.0.1:%d" % listen, "--upstream",
                                "127.0.0.1:%d" % stap.port, "--log-dir", os.path.join(self.work, "logs"),
                                "--events", os.path.join(self.work, "events.jsonl")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(listen)
            time.sleep(0.5)  # wait_port's probe connection is a session too: let it end
            rec.events.clear()
            ctap = Tap(listen, rec, "C", record_upstream=True)
            ctap.start()
            client(ctap.port)
            deadline = time.monotonic() + 10
            while rec.open > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            ctap.stop()
        finally:
            tap.send_signal(signal.SIGTERM)
            try:
                tap.wait(10)
            except subprocess.TimeoutExpired:
                tap.kill()
                tap.wait(5)
            stap.stop()
        return rec

    def stop(self):
        self.fake.stop()
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def swaks(*args):
    def run(port):
        subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--from", "alice@example.com",
                        "--to", "bob@example.net", "--helo", "client.example", "--timeout", "10"] +
                       list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return run


def smtplib_dots(port):
    msg = ("From: alice@example.com\r\nTo: bob@example.net\r\nSubject: dots\r\n\r\n"
           ".leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\nlast line\r\n")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as s:
        s.sendmail("alice@example.com", ["bob@example.net"], msg)


def bdat_client(port):
    raw_client(port, [(b"EHLO client.example\r\n", 1),
                      (b"MAIL FROM:<alice@example.com> BODY=BINARYMIME\r\nRCPT TO:<bob@example.net>\r\n", 2),
                      (bdat(b"Subject: chunked\r\n\r\nfirst chunk\r\n"), 1),
                      (bdat(b".\r\nno\x00dots, no line structure\r\nBDAT 5\r\n", last=True), 1),
                      (b"QUIT\r\n", 1)])


def refused_client(port):
    raw_client(port, [(b"EHLO client.example\r\n", 1),
                      (b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<nobody@example.com>\r\n"
                       b"RCPT TO:<bob@example.net>\r\nDATA\r\n", 4),
                      (b"Subject: refused one\r\n\r\nbody\r\n.\r\n", 1),
                      (b"RSET\r\nNOOP\r\nVRFY bob\r\nQUIT\r\n", 4)])


def xclient_client(port):
    raw_client(port, [(b"EHLO client.example\r\n", 1),
                      (b"XCLIENT ADDR=10.0.0.1 NAME=spoof.example\r\n", 1),
                      (b"XFORWARD ADDR=10.0.0.2\r\n", 1),
                      (b"HELO again.example\r\n", 1),
                      (b"QUIT\r\n", 1)])


def auth_cancel_client(port):
    raw_client(port, [(b"EHLO client.example\r\n", 1),
                      (b"AUTH PLAIN\r\n", 1),
                      (b"*\r\n", 1),
                      (b"AUTH LOGIN " + base64.b64encode(b"alice") + b"\r\n", 1),
                      (base64.b64encode(b"s3cret") + b"\r\n", 1),
                      (b"QUIT\r\n", 1)])


def sasl_lines(client):
    """The SASL responses in a client's octets: the AUTH line's own, and the lines after it."""
    out, in_auth = [], False
    for line in client.split(b"\r\n"):
        words = line.split()
        if words[:1] and words[0].upper() == b"AUTH":
            in_auth = True
            if len(words) > 2:
                out.append(words[2])
        elif in_auth and line and line.upper() not in (b"QUIT", b"RSET", b"NOOP", b"DATA") and all(c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=*"
                                      for c in line):
            out.append(line)
        else:
            in_auth = False
    return out


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def line_end_seeds(outdir, bdat_pieces, dots_pieces):
    """Issue 13: BDAT where the server offered no CHUNKING (a transaction hidden in a "chunk"),
    BDAT content cut mid-line by chunks and reads, and a CRLF (or a bare CR before one) across
    two --max-line pieces ("l": --max-line 1024; "p": --bare-newline pass, with a pipelined
    XCLIENT after the dot)."""
    def put(name, pieces, opts=""):
        write(os.path.join(outdir, "session", name + ("." + opts if opts else "")),
              (b"#!" + opts.encode() + b"\n" if opts else b"") + SEP.join(pieces))

    b = list(bdat_pieces)
    nochunk = b[2].replace(b"250-CHUNKING\r\n", b"")
    hidden = b"MAIL FROM:<spammer@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
    tail = [b"500 5.5.1 Error: unknown command\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
            b"354 End data with <CR><LF>.<CR><LF>\r\n",
            b"Subject: hidden\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n", b"250 2.0.0 Ok\r\n221 Bye\r\n"]
    hide = b[:2] + [nochunk, b"NOOP\r\n" + bdat(hidden, last=True)] + tail
    put("bdat-no-chunking", hide, "R")
    put("bdat-helo", [b[0], b"HELO client.example\r\n", b"250 mx.example\r\n",
                      b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\n" +
                      bdat(b"NOOP\r\n", last=True)] + tail)
    chunk3 = b"ne\r\nCR at a read's end\r\nno line end"
    cut = chunk3.index(b"\r\nno") + 1
    put("bdat-mid-line", b[:5] + [bdat(b"Subject: cut he"), b"250 2.0.0 Ok: 15 octets\r\n",
                                  bdat(b"re\r\nbody li"), b"250 2.0.0 Ok: 11 octets\r\n",
                                  bdat(chunk3, last=True)[:-len(chunk3) + cut], b"",
                                  chunk3[cut:], b[8], b"RSET\r\n" + bdat(b"xyz") + b"RSET\r\nQUIT\r\n",
                                  b"250 2.0.0 Ok\r\n250 2.0.0 Ok: 3 octets\r\n250 2.0.0 Ok\r\n" + b[10]])

    d = list(dots_pieces)
    k = next(i for i, x in enumerate(d) if b"Subject: dots" in x)
    m = list(d)
    m[k] = b"Subject: cut\r\n\r\n" + b"x" * 1022 + b"\r\r\nafter\r\n.\r\n"
    put("crlf-max-line-crcr", m, "l")
    m[k] = b"Subject: cut\r\n\r\n" + b"x" * 1023 + b"\r\nafter\r\n.\r\nXCLIENT ADDR=10.0.0.1\r\n"
    put("crlf-max-line", m, "lp")


def main():
    smtptap = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "build", "smtptap"))
    outdir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "tests", "fuzz", "corpus")
    work = tempfile.mkdtemp(prefix="smtptap-seeds-")
    os.chmod(work, 0o755)
    rig = Rig(smtptap, work)
    scenarios = [
        ("auth-plain", rig.fake.port, swaks("--auth", "PLAIN", "--auth-user", "alice",
                                            "--auth-password", "s3cret")),
        ("auth-login", rig.fake.port, swaks("--auth", "LOGIN", "--auth-user", "alice@example.com",
                                            "--auth-password", "s3cret")),
        ("sink", rig.sink_port, swaks("--auth", "PLAIN", "--auth-user", "alice",
                                      "--auth-password", "s3cret")),
        ("pipelining", rig.sink_port, swaks("--pipeline", "--to",
                                            "bob@example.net,carol@example.net,dave@example.net")),
        ("dot-stuffing", rig.sink_port, smtplib_dots),
        ("bdat", rig.fake.port, bdat_client),
        ("starttls", rig.fake.port, swaks("--tls")),
        ("refused", rig.fake.port, refused_client),
        ("xclient", rig.fake.port, xclient_client),
        ("cram-md5", rig.fake.port, swaks("--auth", "CRAM-MD5", "--auth-user", "alice",
                                          "--auth-password", "s3cret")),
        ("auth-cancel", rig.fake.port, auth_cancel_client),
    ]
    recs = {}
    try:
        for name, port, client in scenarios:
            rec = rig.run(port, client)
            recs[name] = rec
            write(os.path.join(outdir, "session", name), SEP.join(rec.pieces()))
            print("%-13s %d pieces" % (name, len(rec.pieces())))
    finally:
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)

    # The same dialogues under other options ("#!" first line, fuzz_session.c).
    for name, opts in [("dot-stuffing", "R"), ("pipelining", "Rlm"), ("starttls", "t"),
                       ("bdat", "Rh"), ("refused", "rn"), ("starttls", "s"), ("auth-plain", "tq"),
                       ("pipelining", "RTEm"), ("auth-plain", "T")]:
        write(os.path.join(outdir, "session", "%s.%s" % (name, opts)),
              b"#!" + opts.encode() + b"\n" + SEP.join(recs[name].pieces()))

    # SMTP smuggling (CVE-2023-51764): the message of the smtplib dialogue with a second
    # transaction hidden behind each published non-standard end of data.
    pieces = recs["dot-stuffing"].pieces()
    k = next(i for i, p in enumerate(pieces) if b"Subject: dots" in p)
    hidden = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
              b"Subject: hidden\r\n\r\nsmuggled\r\n")
    for name, end, opts in [("lf", b"\n.\n", ""), ("cr", b"\r.\r", "r"), ("crlf-cr", b"\r\n.\r", "p"),
                            ("lf-crlf", b"\n.\r\n", "")]:
        p = list(pieces)
        p[k] = b"Subject: smuggling\r\n\r\nfirst" + end + hidden + b".\r\n"
        write(os.path.join(outdir, "session", "smuggle-" + name + ("." + opts if opts else "")),
              (b"#!" + opts.encode() + b"\n" if opts else b"") + SEP.join(p))

    line_end_seeds(outdir, recs["bdat"].pieces(), recs["dot-stuffing"].pieces())

    # Ends of sessions (fuzz_session.c: the peer whose turn it is closes first; "\n~.\n" closes
    # the sender of the piece before it).
    def seed(name, pieces, closes=()):
        out = b""
        for i, p in enumerate(pieces):
            out += p
            if i < len(pieces) - 1:
                out += b"\n~.\n" if i in closes else SEP
        write(os.path.join(outdir, "session", name), out)

    pipe = recs["pipelining"].pieces()
    k = next(i for i, p in enumerate(pipe) if p.startswith(b"MAIL"))
    seed("server-gone-pipelined", pipe[:k + 1])  # the server hangs up on MAIL, RCPT x3, DATA
    dots = recs["dot-stuffing"].pieces()
    k = next(i for i, p in enumerate(dots) if b"Subject: dots" in p)
    seed("server-gone-mid-data", dots[:k] + [dots[k][:40]])
    q = next(i for i, p in enumerate(dots) if p.upper().startswith(b"QUIT"))
    seed("client-half-close-quit", dots[:q + 2], closes=(q,))  # QUIT, shut, then the 221
    ehlo = next(i for i, p in enumerate(dots) if p.startswith(b"250-"))
    seed("server-421-idle", dots[:ehlo + 1] + [b"", b"421 4.3.2 mx.example Service shutting down\r\n"],
         closes=(ehlo + 2,))

    # Rule files: the examples of tests/data/rules, and one with sample lines from the
    # dialogues after "%%" (fuzz_rules.c).
    os.makedirs(os.path.join(outdir, "rules"), exist_ok=True)
    for fn in sorted(os.listdir(os.path.join(REPO, "tests", "data", "rules"))):
        shutil.copy(os.path.join(REPO, "tests", "data", "rules", fn), os.path.join(outdir, "rules", fn))
    lines = b"".join(d for name in ("pipelining", "refused") for w, d in recs[name].events)
    with open(os.path.join(REPO, "tests", "data", "rules", "policies.rules"), "rb") as f:
        write(os.path.join(outdir, "rules", "policies-samples"),
              f.read() + b"%%\n" + lines.replace(b"\r\n", b"\n"))

    # Commands and replies as the proxy received them (the plaintext part of each dialogue).
    for name in ("auth-login", "pipelining", "bdat", "refused", "xclient"):
        rec = recs[name]
        write(os.path.join(outdir, "command", name), b"".join(d for w, d in rec.events if w == "C"))
        write(os.path.join(outdir, "reply", name), b"".join(d for w, d in rec.events if w == "S"))
    write(os.path.join(outdir, "command", "bdat-last"), b"BDAT 18446744073709551615 LAST\r\n")
    # White space after BDAT's words (Postfix takes it), and the size at an off_t's end.
    write(os.path.join(outdir, "command", "bdat-white-space"),
          b"BDAT 9 LAST \r\nBDAT\t9\x0blast\x0c\r\nBDAT 9 LAST\r\r\nBDAT 9223372036854775807\r\n"
          b"BDAT 9223372036854775808 LAST\r\nBDAT 9 LAST x\r\n")

    # SASL responses: the first octet sizes the user buffer (fuzz_redact.c).
    for name in ("auth-plain", "auth-login", "cram-md5", "auth-cancel"):
        client = b"".join(d for w, d in recs[name].events if w == "C")
        for i, resp in enumerate(sasl_lines(client)):
            write(os.path.join(outdir, "redact", "%s-%d" % (name, i)), (b"\xff", b"\x08")[i % 2] + resp)
    for name, text in [("xoauth2", b"user=alice@example.com\x01auth=Bearer ya29.token\x01\x01"),
                       ("oauthbearer", b"n,a=alice=2Cx=3Dy@example.com,\x01host=mx\x01auth=Bearer t\x01\x01")]:
        write(os.path.join(outdir, "redact", name), b"\xff" + base64.b64encode(text))


if __name__ == "__main__":
    main()
