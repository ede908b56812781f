"""Test harness for smtptap's integration tests: real processes on loopback, by PID.

Everything here uses only the Python standard library.  Each helper starts what it needs on a
free 127.0.0.1 port, stops what it started by PID (SIGTERM, then SIGKILL after a timeout), and
can describe itself for a failure report (``describe()``).
"""

import base64
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
IS_ROOT = os.geteuid() == 0

TS_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
RECORD_RE = re.compile(r"^(" + TS_RE + r") (C:|S:|\*|C\+|S\+|P:|U:)(?: (.*))?$", re.S)
JOURNAL_NAME_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)\.log$")
# A journal line: time, session id, kind, text.
JOURNAL_LINE_RE = re.compile(rb"^(" + TS_RE.encode() + rb") ([0-9a-f]{1,19}) (C:|S:|\*|C\+|S\+|P:|U:)(?: (.*))?$",
                             re.S)
SESSION_RECORD_RE = re.compile(rb"^session client=(\S*) listener=(\S*) upstream=(.*)$", re.S)


# --------------------------------------------------------------------------------------------
# Small utilities


# Ports are handed out from below the kernel's ephemeral range (32768 and up by default), so an
# outgoing connection cannot take one between free_port() and the bind of the process that
# gets it; each pytest-xdist worker has a slice of its own, and within a process no port is
# handed out twice until its slice wraps.  (Asking the kernel for port 0 twice in a row can
# answer the same port twice: CI once saw --listen and --listen-tls given one port.)
_PORT_LOW, _PORT_HIGH = 20000, 32000


def _port_slice():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    width = (_PORT_HIGH - _PORT_LOW) // count
    low = _PORT_LOW + index * width
    return low, width


_port_next = None


def free_port():
    """A TCP port on 127.0.0.1 that nothing is bound to right now and that this process has
    not handed out before (see the note above)."""
    global _port_next
    low, width = _port_slice()
    if _port_next is None:
        _port_next = (os.getpid() * 7919) % width
    for _ in range(width):
        port = low + _port_next
        _port_next = (_port_next + 1) % width
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in %d..%d" % (low, low + width - 1))


# Under a sanitizer (check-asan) smtptap runs two to three times slower and the suite runs two
# tests at a time: the waits below are limits for a hang, not for speed, so they stretch.
SLOWDOWN = 3.0 if os.environ.get("SMTPTAP_SANITIZER") else 1.0


def wait_port(port, timeout=5.0, host="127.0.0.1", alive=None):
    """Waits until host:port accepts a connection; alive() may report that the server died."""
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("process exited before listening on %s:%d" % (host, port))
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect((host, port))
            return
        except OSError:
            time.sleep(0.02)
        finally:
            s.close()
    raise TimeoutError("nothing accepts connections on %s:%d after %.1fs" % (host, port, timeout))


def is_listening(port):
    """True when some socket listens on TCP port (any address), from /proc/net/tcp{,6}:
    no connection is made, so the proxy records no session for the check."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def wait_listening(port, timeout=5.0, alive=None):
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("process exited before listening on port %d" % port)
        if is_listening(port):
            return
        time.sleep(0.02)
    raise TimeoutError("nothing listens on port %d after %.1fs" % (port, timeout))


def port_refuses(port, host="127.0.0.1"):
    """True when a connection to host:port is refused (no listener)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_until(pred, timeout=5.0, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value, which is returned; TimeoutError otherwise."""
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def stop_pid(proc, sig=signal.SIGTERM, timeout=5.0):
    """Stops a Popen by its PID: sig, then SIGKILL after timeout.  Returns its exit status."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_workdir(prefix="smtptap-it-"):
    """A fresh directory other users may traverse (smtp-sink runs as nobody, Postfix as postfix)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return d


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def escape(data):
    """Transcript text for octets, as the spec writes it: backslash as \\\\, tab kept, other
    controls (00-1F, 7F), C1 controls (U+0080-U+009F), bidirectional overrides and isolates
    (U+202A-U+202E, U+2066-U+2069; octet by octet) and octets that are not valid UTF-8 as
    \\xHH (lowercase), valid UTF-8 kept."""
    out = []
    for ch in data.decode("utf-8", "surrogateescape"):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append("\\x%02x" % (o - 0xDC00))
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append(ch)
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        elif 0x80 <= o <= 0x9F or 0x202A <= o <= 0x202E or 0x2066 <= o <= 0x2069:
            # C1 controls and bidirectional overrides and isolates, octet by octet
            out.append("".join("\\x%02x" % b for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def unescape(text):
    """Turns transcript text (\\\\ and \\xHH escapes, UTF-8 otherwise) back into octets."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if text.startswith("\\\\", i):
                out += b"\\"
                i += 2
                continue
            m = re.match(r"\\x([0-9a-f]{2})", text[i:])
            if not m:
                raise ValueError("bad escape at %d in %r" % (i, text))
            out.append(int(m.group(1), 16))
            i += 4
            continue
        out += c.encode("utf-8")
        i += 1
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Transcripts and events


def journal_files(log_dir):
    """The journal files of a log directory (LOGDIR/YYYY-MM-DD.log), oldest first."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    return [os.path.join(log_dir, n) for n in sorted(names)
            if JOURNAL_NAME_RE.match(n) and os.path.isfile(os.path.join(log_dir, n))]


class JournalSession:
    """One session's records in a journal: where its first record is, and its lines."""

    def __init__(self, sid, journal, offset):
        self.sid, self.journal, self.offset = sid, journal, offset
        self.lines = []  # (time, kind, text) as octets, text None when there is none

    def layout(self):
        """The session in the per-session layout (as `smtptap show` prints it), as octets."""
        ts, kind, text = self.lines[0]
        m = SESSION_RECORD_RE.match(text or b"") if kind == b"*" else None
        client, listener, upstream = m.groups() if m else (b"", b"", b"")
        out = [b"# smtptap 0.1.0 transcript", b"# session " + self.sid, b"# start " + ts,
               b"# client " + client, b"# listener " + listener, b"# upstream " + upstream]
        for ts, kind, text in self.lines[1 if m else 0:]:
            out.append(ts + b" " + kind + (b" " + text if text is not None else b""))
        return b"\n".join(out) + b"\n"


def read_journal(log_dir, torn_ok=False):
    """Every session of the log directory's journals, by id in order of their first record.

    A last line without its line end is being written (or was torn by a crash): skipped.  A
    complete line that is not a record fails, unless torn_ok (a crash tore it: the reader skips
    it, as the tools do)."""
    sessions = {}
    for path in journal_files(log_dir):
        with open(path, "rb") as f:
            data = f.read()
        name = os.path.basename(path)
        offset = 0
        lines = data.split(b"\n")
        last = lines.pop()  # b"" when the file ends with a line end
        for line in lines:
            start, offset = offset, offset + len(line) + 1
            m = JOURNAL_LINE_RE.match(line)
            if not m:
                assert torn_ok, "journal %s: line at offset %d matches no record format: %r" % (
                    name, start, line[:300])
                continue
            ts, sid, kind, text = m.groups()
            s = sessions.get(sid)
            if s is None:
                s = sessions[sid] = JournalSession(sid, name, start)
            s.lines.append((ts, kind, text))
        del last
    return sessions


# Where each materialized session file's records are in the journal: path -> (file, offset).
_LOCATIONS = {}


class Record:
    def __init__(self, ts, kind, text):
        self.ts, self.kind, self.text = ts, kind, text

    def __repr__(self):
        return "%s %s %s" % (self.ts, self.kind, self.text)


class Transcript:
    """A parsed transcript file; checks the format on the way (safe to print, every line known)."""

    def __init__(self, path, log_dir):
        self.path = path
        self.relpath = os.path.basename(path)
        # The journal file and the offset of the session's first record, for a session of
        # the journal (the event's "transcript").
        self.journal, self.offset = _LOCATIONS.get(path, (None, None, None))[:2]
        self.location = {"file": self.journal, "offset": self.offset} if self.journal else None
        with open(path, "rb") as f:
            self.raw = f.read()
        # Safe on a terminal: valid UTF-8, no control characters but tab and the line ends,
        # no C1 controls, no bidirectional overrides or isolates.
        self.text = self.raw.decode("utf-8")  # raises on invalid UTF-8
        bad = [ch for ch in self.text if (ord(ch) < 0x20 and ch not in "\t\n") or 0x7F <= ord(ch) <= 0x9F
               or 0x202A <= ord(ch) <= 0x202E or 0x2066 <= ord(ch) <= 0x2069]
        assert not bad, "transcript %s holds raw control or bidirectional characters %r" % (path, bad[:10])
        assert self.text.endswith("\n"), "transcript %s does not end with a line end" % path
        self.header = {}
        self.header_lines = []
        self.records = []
        for line in self.text[:-1].split("\n"):
            if line.startswith("# "):
                assert not self.records, "header line after records in %s: %r" % (path, line)
                self.header_lines.append(line)
                key, _, value = line[2:].partition(" ")
                self.header[key] = value
                continue
            m = RECORD_RE.match(line)
            assert m, "transcript %s: line matches no record format: %r" % (path, line)
            self.records.append(Record(m.group(1), m.group(2), m.group(3) or ""))

    def texts(self, kind):
        return [r.text for r in self.records if r.kind == kind]

    def events(self):
        return self.texts("*")

    def client_lines(self):
        return self.texts("C:")

    def server_lines(self):
        return self.texts("S:")

    def upstream_lines(self):
        """Lines the proxy itself sent to the server ("U:")."""
        return self.texts("U:")

    def proxy_lines(self):
        return self.texts("P:")

    def close_event(self):
        closes = [e for e in self.events() if e.startswith("close ")]
        return closes[-1] if closes else None

    def close_fields(self):
        """key=value pairs of the close event."""
        ev = self.close_event()
        if ev is None:
            return None
        return dict(kv.split("=", 1) for kv in ev.split()[1:] if "=" in kv)

    def __str__(self):
        return self.text


# --------------------------------------------------------------------------------------------
# smtptap


class Smtptap:
    """The proxy under test, started with --listen/--upstream/--log-dir/--events and extra args."""

    def __init__(self, binary, workdir, upstream_port, extra=(), name="smtptap", listen=None,
                 upstream=None):
        self.binary = binary
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.listen = listen if listen is not None else ["127.0.0.1:%d" % self.port]
        self.upstream = upstream if upstream is not None else "127.0.0.1:%d" % upstream_port
        self.upstream_port = upstream_port
        self.log_dir = os.path.join(workdir, "logs")
        self.events_path = os.path.join(workdir, "events.jsonl")
        self.extra = list(extra)
        self.proc = None
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.returncode = None

    def argv(self):
        a = [self.binary]
        for l in self.listen:
            a += ["--listen", l]
        a += ["--upstream", self.upstream]
        if self.log_dir is not None:
            a += ["--log-dir", self.log_dir]
        if self.events_path is not None:
            a += ["--events", self.events_path]
        # One process unless a test asks for workers (the default is one per CPU): the
        # tests look at the process (descriptors, memory, signals) by its PID.
        if not any(x == "--workers" or x.startswith("--workers=") for x in self.extra):
            a += ["--workers", "1"]
        return a + self.extra

    def start(self, wait=True):
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     cwd=self.workdir)
        out.close()
        err.close()
        if wait:
            try:
                for l in self.listen:
                    wait_listening(int(l.rsplit(":", 1)[1]), 5.0, alive=lambda: self.proc.poll() is None)
            except Exception:
                raise RuntimeError("smtptap did not start: %s\nstderr:\n%s" % (self.argv(), self.stderr()))
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=5.0):
        if self.proc is None:
            return None
        self.returncode = stop_pid(self.proc, signal.SIGTERM, timeout)
        return self.returncode

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # Recording

    def journal_sessions(self, torn_ok=False):
        """The sessions of the journal, by id (bytes) in order of their first record."""
        if self.log_dir is None:
            return {}
        return read_journal(self.log_dir, torn_ok)

    def transcript_paths(self, torn_ok=False):
        """Each session of the journal, written out in the per-session layout (as `smtptap
        show` prints it) to WORKDIR/shown/ID.log: the paths, in the order sessions started."""
        out = []
        shown = os.path.join(self.workdir, "shown")
        for sid, js in self.journal_sessions(torn_ok).items():
            path = os.path.join(shown, sid.decode() + ".log")
            data = js.layout()
            if _LOCATIONS.get(path, (None, None, None))[2:] != (data,):
                os.makedirs(shown, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            _LOCATIONS[path] = (js.journal, js.offset, data)
            out.append(path)
        return out

    def transcript_path_of(self, ev, timeout=5.0):
        """The materialized transcript of the session an event names (once it is closed)."""
        sid = ev["session"]

        def ready():
            for p in self.transcript_paths():
                if os.path.basename(p) == sid + ".log":
                    try:
                        t = Transcript(p, self.log_dir)
                    except (AssertionError, UnicodeDecodeError):
                        return None
                    return p if t.close_event() is not None else None
            return None

        return wait_until(ready, timeout, what="transcript of session %s" % sid)

    def transcripts(self, cls=None):
        cls = cls or Transcript
        return [cls(p, self.log_dir) for p in self.transcript_paths()]

    def wait_transcripts(self, n=1, timeout=5.0, closed=True, cls=None):
        """Waits for n transcripts (each with its close event when closed) and returns them,
        parsed by cls (a Transcript subclass with more readers, for instance)."""
        cls = cls or Transcript

        def ready():
            paths = self.transcript_paths()
            if len(paths) < n:
                return None
            ts = []
            for p in paths:
                try:
                    t = cls(p, self.log_dir)
                except (AssertionError, UnicodeDecodeError):
                    # A flush may be under way: retry, and let the final read report it.
                    return None
                if closed and t.close_event() is None:
                    return None
                ts.append(t)
            return ts

        try:
            return wait_until(ready, timeout, what="%d closed transcript(s)" % n)
        except TimeoutError:
            # Parse once more without tolerance, so a format error is reported as such.
            ts = self.transcripts(cls)
            raise AssertionError("expected %d closed transcript(s) within %.1fs, have %d: %s" % (
                n, timeout, len(ts), [(t.relpath, t.close_event()) for t in ts]))

    def transcript(self, timeout=5.0, cls=None):
        """The only transcript, once it is closed."""
        ts = self.wait_transcripts(1, timeout, cls=cls)
        assert len(ts) == 1, "expected exactly one transcript, found %s" % [t.relpath for t in ts]
        return ts[0]

    def event_lines(self, path=None):
        path = path or self.events_path
        if path is None or path == "-":
            return []
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, IsADirectoryError):
            return []
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        return lines

    def events(self, path=None):
        out = []
        for line in self.event_lines(path):
            obj = json.loads(line.decode("utf-8"))
            assert isinstance(obj, dict), "event line is not a JSON object: %r" % line
            out.append(obj)
        return out

    def wait_events(self, n=1, timeout=5.0, path=None):
        """Waits until the events file holds at least n complete lines; returns them parsed."""

        def ready():
            try:
                with open(path or self.events_path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            if data.count(b"\n") >= n and data.endswith(b"\n"):
                return True
            return None

        try:
            wait_until(ready, timeout, what="%d event line(s)" % n)
        except TimeoutError:
            raise AssertionError("expected %d event line(s) within %.1fs, have %d" % (
                n, timeout, len(self.event_lines(path))))
        return self.events(path)

    def event(self, timeout=5.0):
        evs = self.wait_events(1, timeout)
        assert len(evs) == 1, "expected exactly one event line, found %d" % len(evs)
        return evs[0]

    def describe(self):
        parts = ["argv: %s" % " ".join(self.argv())]
        if self.proc is not None:
            parts.append("pid %d, exit status %s" % (self.proc.pid, self.proc.poll()))
        parts.append("--- stderr ---\n" + self.stderr()[-20000:])
        out = self.stdout()
        if out:
            parts.append("--- stdout ---\n" + out[-5000:])
        try:
            paths = self.transcript_paths(torn_ok=True)
        except Exception as e:  # a describe must not fail
            paths = []
            parts.append("journal unreadable: %s" % e)
        for p in paths[:5]:
            with open(p, "rb") as f:
                data = f.read()
            parts.append("--- transcript %s ---\n%s" % (os.path.relpath(p, self.log_dir),
                                                        data[:8000].decode("utf-8", "replace")))
        if len(paths) > 5:
            parts.append("(%d more transcripts)" % (len(paths) - 5))
        lines = self.event_lines()
        if lines:
            parts.append("--- events (%d lines) ---\n%s" % (
                len(lines), b"\n".join(lines[:5]).decode("utf-8", "replace")))
        return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Postfix smtp-sink


class SinkMessage:
    """One message from smtp-sink's dump: its X- headers, the sink's Received header, content."""

    def __init__(self, path, raw):
        self.path = path
        self.raw = raw
        self.xheaders = []
        pos = 0
        while raw.startswith(b"X-", pos):
            end = raw.index(b"\n", pos)
            name, _, value = raw[pos:end].decode("utf-8", "replace").partition(": ")
            self.xheaders.append((name, value))
            pos = end + 1
        assert raw.startswith(b"Received: ", pos), "no Received: header in sink dump %s" % path
        end = raw.index(b"\n", pos)
        while raw.startswith(b"\t", end + 1):
            end = raw.index(b"\n", end + 1)
        self.received = raw[pos:end + 1]
        rest = raw[end + 1:]
        # The sink ends each dumped message with one empty line of its own.
        assert rest.endswith(b"\n"), "sink dump %s does not end with its separator" % path
        self.content = rest[:-1]

    def x(self, name):
        return [v for n, v in self.xheaders if n == name]

    @property
    def mail_from(self):
        v = self.x("X-Mail-Args")
        return v[0] if v else None

    @property
    def rcpts(self):
        return self.x("X-Rcpt-Args")


def sink_form(wire_content):
    """What smtp-sink dumps for message content sent in DATA (dot-stuffed, CRLF line ends,
    without the final '.'): de-stuffed, LF line ends, bare CR dropped."""
    lines = wire_content.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for l in lines:
        if l.startswith(b"."):
            l = l[1:]
        out.append(l.replace(b"\r", b"") + b"\n")
    return b"".join(out)


def dot_stuff(content):
    """Dot-stuffs content whose lines end in CRLF (RFC 5321 4.5.2)."""
    lines = content.split(b"\r\n")
    return b"\r\n".join((b"." + l) if l.startswith(b".") else l for l in lines)


class SmtpSink:
    """smtp-sink -d DUMPDIR/%H%M%S. on 127.0.0.1:PORT: one dump file per message."""

    def __init__(self, workdir, extra=(), name="sink"):
        self.workdir = workdir
        self.name = name
        self.port = free_port()
        self.dumpdir = os.path.join(workdir, name + "-dump")
        os.mkdir(self.dumpdir)
        os.chmod(self.dumpdir, 0o777)
        self.extra = list(extra)
        self.proc = None
        self.out_path = os.path.join(workdir, name + ".out")

    def argv(self):
        a = [SMTP_SINK]
        if IS_ROOT:
            a += ["-u", "nobody"]
        return a + ["-c", "-d", self.dumpdir + "/%H%M%S."] + self.extra + ["127.0.0.1:%d" % self.port, "1000"]

    def start(self):
        out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        wait_port(self.port, 5.0, alive=lambda: self.proc.poll() is None)
        return self

    def stop(self):
        if self.proc is not None:
            stop_pid(self.proc)

    def dump_paths(self):
        return sorted(os.path.join(self.dumpdir, f) for f in os.listdir(self.dumpdir))

    def count(self):
        return len(os.listdir(self.dumpdir))

    def messages(self):
        out = []
        for p in self.dump_paths():
            with open(p, "rb") as f:
                out.append(SinkMessage(p, f.read()))
        return out

    def wait_messages(self, n, timeout=5.0):
        try:
            wait_until(lambda: self.count() >= n, timeout, what="%d message(s) in the sink" % n)
        except TimeoutError:
            raise AssertionError("expected %d message(s) in the sink within %.1fs, found %d" % (
                n, timeout, self.count()))
        # A dump file is complete once the sink has answered the final dot; give it a moment.
        time.sleep(0.05)
        return self.messages()

    def describe(self):
        try:
            with open(self.out_path, "rb") as f:
                out = f.read()[-2000:].decode("utf-8", "replace")
        except FileNotFoundError:
            out = ""
        return "argv: %s\n%d dump file(s)\noutput: %s" % (" ".join(self.argv()), self.count()
                                                          if os.path.isdir(self.dumpdir) else -1, out)


# --------------------------------------------------------------------------------------------
# A private Postfix instance (smtpd offers CHUNKING; smtp-sink does not)


class PostfixInstance:
    """Postfix's smtpd on 127.0.0.1:PORT in a throw-away config/queue directory.

    smtpd hands each message, before queueing, to an smtp-sink (smtpd_proxy_filter), so what
    arrived can be read in the sink's dump whatever the client used (DATA or BDAT).
    Needs root (master runs as root and drops to the postfix user).
    """

    def __init__(self, workdir, sink_port, main=None):
        self.main_overrides = dict(main or {})  # main.cf parameters set (or replaced)
        self.base = os.path.join(workdir, "postfix")
        self.conf = os.path.join(self.base, "conf")
        self.queue = os.path.join(self.base, "queue")
        self.data = os.path.join(self.base, "data")
        self.maillog = os.path.join(self.base, "maillog")
        self.port = free_port()
        self.sink_port = sink_port
        self.started = False

    def write_config(self):
        for d in (self.base, self.conf, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        shutil.chown(self.data, "postfix")
        main = """\
compatibility_level = 3.6
queue_directory = {q}
data_directory = {d}
maillog_file = {log}
maillog_file_prefixes = /tmp
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
local_recipient_maps =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_proxy_filter = 127.0.0.1:{sink}
smtpd_proxy_options = speed_adjust
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
message_size_limit = 52428800
""".format(q=self.queue, d=self.data, log=self.maillog, sink=self.sink_port)
        for key, value in self.main_overrides.items():
            line = "%s = %s\n" % (key, value)
            main, n = re.subn(r"(?m)^%s = .*\n" % re.escape(key), lambda m: line, main)
            if n == 0:
                main += line
        master = """\
127.0.0.1:{port} inet n - n - - smtpd
postlog   unix-dgram n - n - 1 postlogd
anvil     unix - - n - 1 anvil
rewrite   unix - - n - - trivial-rewrite
proxymap  unix - - n - - proxymap
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
discard   unix - - n - - discard
""".format(port=self.port)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(master)

    def start(self):
        self.write_config()
        r = subprocess.run([POSTFIX, "-c", self.conf, "start"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.started = True
        if r.returncode != 0:
            raise RuntimeError("postfix -c %s start failed (%d): %s\n%s" % (
                self.conf, r.returncode, r.stdout.decode("utf-8", "replace"), self.log()))
        wait_port(self.port, 10.0)
        return self

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        if not self.started:
            return
        pid = self.master_pid()
        subprocess.run([POSTFIX, "-c", self.conf, "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        if pid:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.started = False

    def log(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read()[-5000:].decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no maillog)"

    def describe(self):
        return "postfix smtpd on 127.0.0.1:%d, config %s\n--- maillog ---\n%s" % (
            self.port, self.conf, self.log())


# --------------------------------------------------------------------------------------------
# A raw SMTP client


class SmtpClient:
    """A plain socket speaking SMTP; replies are lists of raw lines (with their CRLF)."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, family=socket.AF_INET, source=None):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:  # another loopback address (127.0.0.2): another client
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.received = bytearray()  # everything read from the socket, in order
        self.sent = bytearray()
        self.eof = False

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)
        self.sent += data

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self.buf += data
        self.received += data
        return True

    def readline(self):
        """One line with its line end; b'' at EOF (the partial rest, if any, at EOF)."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if self.eof or not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def reply(self):
        """One whole reply (all its lines); [] at EOF before any line."""
        lines = []
        while True:
            line = self.readline()
            if not line:
                if lines:
                    raise AssertionError("connection closed inside a multi-line reply: %r" % lines)
                return lines
            lines.append(line)
            if not line.endswith(b"\r\n"):
                raise AssertionError("partial reply line at EOF: %r" % lines)
            if len(line) < 4 or line[3:4] != b"-":
                return lines

    def code(self):
        r = self.reply()
        assert r, "connection closed while waiting for a reply"
        return int(r[-1][:3])

    def cmd(self, line):
        """Sends one command line (CRLF added) and returns its reply."""
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def expect(self, line, code):
        r = self.cmd(line)
        assert r and r[-1].startswith(str(code).encode()), "%r: expected %s, got %r" % (line, code, r)
        return r

    def transaction(self, mail_from, rcpts, content, final=250):
        """MAIL FROM:mail_from, RCPT TO: each of rcpts, DATA, then content (dot-stuffed,
        ending in CRLF) and the end of data, each command accepted; the reply to the end of
        data must have the code final.  Returns that reply."""
        self.expect("MAIL FROM:%s" % mail_from, 250)
        for rcpt in rcpts:
            self.expect("RCPT TO:%s" % rcpt, 250)
        self.expect("DATA", 354)
        self.send(content + b".\r\n")
        r = self.reply()
        assert r and r[-1].startswith(str(final).encode()), \
            "end of data: expected %s, got %r" % (final, r)
        return r

    def read_until_eof(self, timeout=5.0):
        """Reads everything until the peer closes; AssertionError if it doesn't within timeout."""
        deadline = time.monotonic() + timeout
        old = self.sock.gettimeout()
        try:
            while not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("peer did not close within %.1fs; got %r" % (timeout, bytes(self.buf)))
                self.sock.settimeout(left)
                try:
                    self._fill()
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    self.eof = True
        finally:
            self.sock.settimeout(old)
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def closed_within(self, timeout):
        try:
            self.read_until_eof(timeout)
            return True
        except AssertionError:
            return False

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Closes with a RST (SO_LINGER 0)."""
        import struct
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def replies_from(data):
    """Splits a stream of reply lines into replies (lists of lines)."""
    out, cur = [], []
    for line in data.split(b"\r\n")[:-1]:
        cur.append(line + b"\r\n")
        if len(line) < 4 or line[3:4] != b"-":
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------------------------
# A scripted SMTP server on a real socket, for what no real server does on demand


class FakeConn:
    """The server's end of one connection, used by a handler running in its own thread."""

    def __init__(self, sock, server):
        self.sock = sock
        self.server = server
        self.buf = bytearray()
        self.received = bytearray()  # every octet the proxy sent, in order
        self.sent = bytearray()
        self.eof = False
        self.closed = False
        self.log = []  # (time, "<" or ">", data)
        self.messages = []  # filled by SmtpServerScript
        self.commands = []
        self.timeout = 10.0

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.log.append((time.monotonic(), ">", data))
        self.sock.sendall(data)
        self.sent += data

    def _fill(self, timeout=None):
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.log.append((time.monotonic(), "<", data))
        self.buf += data
        self.received += data
        return True

    def pending(self):
        """Octets the peer has sent that are waiting in the kernel, without blocking."""
        try:
            data = self.sock.recv(65536, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except BlockingIOError:
            return len(self.buf)
        except OSError:
            return len(self.buf)
        return len(self.buf) + len(data)

    def readline(self):
        """A line with its line end (LF-terminated); b'' at EOF."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if self.eof or not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_exact(self, n):
        while len(self.buf) < n:
            if self.eof or not self._fill():
                break
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_until(self, marker):
        """Everything up to and including marker; what there was at EOF otherwise."""
        start = 0
        while True:
            i = self.buf.find(marker, start)
            start = max(0, len(self.buf) - len(marker) + 1)
            if i >= 0:
                data = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return data
            if self.eof or not self._fill():
                data = bytes(self.buf)
                self.buf.clear()
                return data

    def wait_eof(self, timeout=5.0):
        """True if the peer closes within timeout (data read meanwhile is kept)."""
        deadline = time.monotonic() + timeout
        while not self.eof and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except socket.timeout:
                return False
            except OSError:
                # The server's own thread closed the socket once it saw EOF: a race with
                # this reader, not a failure.
                if self.closed:
                    return True
                raise
        return True

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def abort(self):
        import struct
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()


class FakeServer:
    """Listens on 127.0.0.1:PORT; each connection runs handler(conn) in a thread."""

    def __init__(self, handler, name="fake-server"):
        self.handler = handler
        self.name = name
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.conns = []
        self.errors = []
        self.threads = []
        self.stopping = False
        self.lock = threading.Lock()
        self.accepted = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping:
            try:
                r, _, _ = select.select([self.lsock], [], [], 0.1)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            conn = FakeConn(sock, self)
            with self.lock:
                self.conns.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()
            self.accepted.release()

    def _run(self, conn):
        try:
            self.handler(conn)
        except Exception as e:  # reported by check() and describe()
            if not self.stopping:
                import traceback
                self.errors.append("%s: %s" % (type(e).__name__, traceback.format_exc()))
        finally:
            conn.close()

    def wait_conn(self, index=0, timeout=5.0):
        wait_until(lambda: len(self.conns) > index, timeout, what="connection %d to %s" % (index, self.name))
        return self.conns[index]

    def join(self, timeout=5.0):
        """Waits until every handler has returned."""
        deadline = time.monotonic() + timeout
        for t in list(self.threads):
            t.join(max(0.0, deadline - time.monotonic()))
        return all(not t.is_alive() for t in self.threads)

    def check(self):
        assert not self.errors, "%s handler failed:\n%s" % (self.name, "\n".join(self.errors))

    def stop(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        for c in list(self.conns):
            c.close()
        self.thread.join(2)

    def describe(self):
        parts = ["%s on 127.0.0.1:%d, %d connection(s)" % (self.name, self.port, len(self.conns))]
        for i, c in enumerate(self.conns):
            parts.append("conn %d received %d octets: %r" % (i, len(c.received), bytes(c.received[:1500])))
            parts.append("conn %d sent: %r" % (i, bytes(c.sent[:1500])))
        if self.errors:
            parts.append("handler errors:\n" + "\n".join(self.errors))
        return "\n".join(parts)


class SmtpServerScript:
    """A small, well-behaved SMTP server for FakeServer, with knobs for misbehaviour.

    Records per connection: conn.commands (command lines as received) and conn.messages
    (dicts with mail, rcpts, data: the DATA octets as received, dot-stuffed, with the final
    '.' line; or chunks: the BDAT chunk octets).
    """

    def __init__(self, name="fake.example", caps=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
                 auth=None, chunking=False, starttls=None, greeting_delay=0.0, rcpt_code=None,
                 hooks=None):
        self.name = name
        self.caps = list(caps)
        self.auth = auth  # {"alice": "s3cret"}: offer AUTH PLAIN LOGIN
        if auth:
            self.caps.append("AUTH PLAIN LOGIN")
        if chunking:
            self.caps.append("CHUNKING")
        self.starttls = starttls  # an ssl.SSLContext (server side)
        if starttls is not None:
            self.caps.append("STARTTLS")
        self.greeting_delay = greeting_delay
        self.rcpt_code = rcpt_code or (lambda addr: 250)
        self.hooks = hooks or {}  # verb -> fn(conn, line) returning True when it handled it

    def __call__(self, conn):
        if self.greeting_delay:
            time.sleep(self.greeting_delay)
        hook = self.hooks.get("GREETING")
        if hook is None or not hook(conn, b""):
            conn.send("220 %s ESMTP fake\r\n" % self.name)
        msg = None
        while True:
            line = conn.readline()
            if not line:
                return
            conn.commands.append(line)
            verb = line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")
            hook = self.hooks.get(verb)
            if hook is not None and hook(conn, line):
                if conn.closed:
                    return
                continue
            if verb == "EHLO":
                lines = [self.name] + self.caps
                conn.send("".join("250%s%s\r\n" % ("-" if i < len(lines) - 1 else " ", l)
                                  for i, l in enumerate(lines)))
            elif verb == "HELO":
                conn.send("250 %s\r\n" % self.name)
            elif verb == "MAIL":
                msg = {"mail": line.rstrip(b"\r\n"), "rcpts": [], "data": None, "chunks": []}
                conn.send("250 2.1.0 Ok\r\n")
            elif verb == "RCPT":
                addr = line.rstrip(b"\r\n")[8:].decode("utf-8", "replace")
                code = self.rcpt_code(addr)
                if code == 250 and msg is not None:
                    msg["rcpts"].append(line.rstrip(b"\r\n"))
                conn.send("%d %s\r\n" % (code, "2.1.5 Ok" if code == 250 else "5.1.1 No such user"))
            elif verb == "DATA":
                if msg is None or not msg["rcpts"]:
                    conn.send("554 5.5.1 No valid recipients\r\n")
                    continue
                conn.send("354 End data with <CR><LF>.<CR><LF>\r\n")
                data = conn.read_until(b"\r\n.\r\n")
                if not data.endswith(b"\r\n.\r\n"):
                    return  # client gone mid-message: nothing delivered
                msg["data"] = data
                conn.messages.append(msg)
                msg = None
                conn.send("250 2.0.0 Ok: queued as FAKE%d\r\n" % len(conn.messages))
            elif verb == "BDAT":
                parts = line.split()
                n = int(parts[1])
                last = len(parts) > 2 and parts[2].upper() == b"LAST"
                chunk = conn.read_exact(n)
                if msg is None:
                    conn.send("503 5.5.1 No transaction\r\n")
                    continue
                msg["chunks"].append(chunk)
                if last:
                    conn.messages.append(msg)
                    msg = None
                    conn.send("250 2.0.0 Ok: %d octets, queued\r\n" % n)
                else:
                    conn.send("250 2.0.0 Ok: %d octets\r\n" % n)
            elif verb == "AUTH" and self.auth:
                self._auth(conn, line)
            elif verb == "STARTTLS" and self.starttls is not None:
                conn.send("220 2.0.0 Ready to start TLS\r\n")
                tls = self.starttls.wrap_socket(conn.sock, server_side=True)
                conn.sock = tls
                conn.buf.clear()
                msg = None
            elif verb == "RSET":
                msg = None
                conn.send("250 2.0.0 Ok\r\n")
            elif verb == "NOOP":
                conn.send("250 2.0.0 Ok\r\n")
            elif verb == "QUIT":
                conn.send("221 2.0.0 Bye\r\n")
                return
            else:
                conn.send("502 5.5.2 Error: command not recognized\r\n")

    def _auth(self, conn, line):
        parts = line.rstrip(b"\r\n").split(b" ")
        mech = parts[1].upper() if len(parts) > 1 else b""
        conn.auth_lines = getattr(conn, "auth_lines", [])

        def response(challenge):
            conn.send(b"334 " + challenge + b"\r\n")
            r = conn.readline()
            conn.auth_lines.append(r)
            return r.rstrip(b"\r\n")

        if mech == b"PLAIN":
            resp = parts[2] if len(parts) > 2 else response(b"")
            if resp == b"*":
                conn.send("501 5.7.0 Authentication aborted\r\n")
                return
            try:
                _authz, user, pw = base64.b64decode(resp).split(b"\0")
            except Exception:
                conn.send("501 5.5.2 Cannot decode response\r\n")
                return
        elif mech == b"LOGIN":
            u = parts[2] if len(parts) > 2 else response(b"VXNlcm5hbWU6")
            if u == b"*":
                conn.send("501 5.7.0 Authentication aborted\r\n")
                return
            p = response(b"UGFzc3dvcmQ6")
            if p == b"*":
                conn.send("501 5.7.0 Authentication aborted\r\n")
                return
            user, pw = base64.b64decode(u), base64.b64decode(p)
        else:
            conn.send("504 5.5.4 Unsupported mechanism\r\n")
            return
        if self.auth.get(user.decode("utf-8", "replace")) == pw.decode("utf-8", "replace"):
            conn.send("235 2.7.0 Authentication successful\r\n")
        else:
            conn.send("535 5.7.8 Authentication failed\r\n")


# --------------------------------------------------------------------------------------------
# A counting SMTP server for many concurrent sessions (smtp-sink serves at most 256 at once)


class CountingServer:
    """An asyncio SMTP server in its own thread: accepts every message, counts them, and counts
    the sessions open at the same time (peak)."""

    def __init__(self):
        import asyncio
        self.asyncio = asyncio
        self.port = free_port()
        self.messages = 0
        self.open = 0
        self.peak = 0
        self.sessions = 0
        self.errors = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(5):
            raise RuntimeError("counting server did not start")

    def _run(self):
        asyncio = self.asyncio
        asyncio.set_event_loop(self.loop)

        async def handle(reader, writer):
            self.sessions += 1
            self.open += 1
            self.peak = max(self.peak, self.open)
            try:
                writer.write(b"220 counter.example ESMTP\r\n")
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        writer.write(b"250-counter.example\r\n250 PIPELINING\r\n")
                    elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                        writer.write(b"250 2.0.0 Ok\r\n")
                    elif verb == b"DATA":
                        writer.write(b"354 go ahead\r\n")
                        await writer.drain()
                        await reader.readuntil(b"\r\n.\r\n")
                        self.messages += 1
                        writer.write(b"250 2.0.0 Ok: counted\r\n")
                    elif verb == b"QUIT":
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
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, backlog=2048)

        self.loop.run_until_complete(start())
        self.ready.set()
        self.loop.run_forever()

    def stop(self):
        def _stop():
            self.server.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(_stop)
        self.thread.join(5)

    def describe(self):
        return "counting server on 127.0.0.1:%d: sessions=%d open=%d peak=%d messages=%d errors=%s" % (
            self.port, self.sessions, self.open, self.peak, self.messages, self.errors[:5])
