"""Helpers for test_filters.py (issue 3, filter rules): rule files, an smtp-sink that also
shows the commands it received, a transcript reader that knows the proxy's own upstream lines
("U:"), the "* rule ..." events, swaks, --check-rules / --test-rules runs.

Only the standard library; reuses harness.py and conftest.py's diagnostics protocol without
changing them.
"""

import os
import re
import subprocess

import harness

RULES_DIR = os.path.join(harness.REPO, "tests", "data", "rules")
POLICIES = os.path.join(RULES_DIR, "policies.rules")
BAD = os.path.join(RULES_DIR, "bad.rules")

SWAKS = "/usr/bin/swaks"


def add_diag(request, title, obj):
    """Adds obj (with describe()) to the failure report, as conftest.py's fixtures do."""
    node = request.node
    if not hasattr(node, "_diagnostics"):
        node._diagnostics = []
    node._diagnostics.append((title, obj))


def write_rules(workdir, text, name="test.rules"):
    """Writes a rule file (text as given, a final newline added if missing); returns its path."""
    path = os.path.join(workdir, name)
    if text and not text.endswith("\n"):
        text += "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reload never reads a half-written file
    return path


def rule_line(path, needle):
    """The 1-based line number of the first line of a rule file that contains needle."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if needle in line and not line.lstrip().startswith("#"):
                return i
    raise AssertionError("no rule with %r in %s" % (needle, path))


# --------------------------------------------------------------------------------------------
# smtp-sink -v: the commands it received


_SINK_NOISE = ("name_mask:", "trying...", "connect ", "vstream_tweak_tcp:", "fd=",
               "smtp_stream_setup:", "disconnect", "dict_", "watchdog", "warning:")


class VerboseSink(harness.SmtpSink):
    """smtp-sink with -v: besides its dump files, its output shows each command it read."""

    def __init__(self, workdir, extra=(), name="vsink"):
        super().__init__(workdir, extra=["-v"] + list(extra), name=name)

    def output(self):
        try:
            with open(self.out_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def commands(self):
        """Command lines the sink read, in order, over all sessions (its -v log lines;
        "." is the end of a message)."""
        out = []
        for line in re.split(r"[\r\n]", self.output()):
            i = line.find("smtp-sink: ")
            if i < 0:
                continue
            text = line[i + len("smtp-sink: "):]
            if text.startswith(_SINK_NOISE):
                continue
            out.append(text)
        return out

    def _log_lines(self):
        for line in re.split(r"[\r\n]", self.output()):
            i = line.find("smtp-sink: ")
            if i >= 0:
                yield line[i + len("smtp-sink: "):]

    def wait_idle(self, timeout=5.0):
        """Waits until every session the sink accepted has ended (as many "disconnect" as
        "connect" lines): then every command it read is in its log."""

        def idle():
            lines = list(self._log_lines())
            opened = sum(1 for l in lines if l.startswith("connect ("))
            return opened == sum(1 for l in lines if l == "disconnect")

        harness.wait_until(idle, timeout, what="smtp-sink's sessions to end")

    def wait_command(self, pred, timeout=5.0, what="a command"):
        return harness.wait_until(lambda: [c for c in self.commands() if pred(c)], timeout,
                                  what="%s in the sink's log" % what)


# --------------------------------------------------------------------------------------------
# Transcripts: the rule hits they record


class Transcript(harness.Transcript):
    """harness.Transcript with the readers the filter tests use (rule hits)."""

    def rule_hits(self):
        """The "* rule ..." events, parsed."""
        return [h for h in (RuleHit.parse(e) for e in self.events()) if h is not None]

    def replies_to_client(self):
        """S: and P: records in order (what the client was answered, server's or proxy's)."""
        return [(r.kind, r.text) for r in self.records if r.kind in ("S:", "P:")]


def wait_transcripts(tap, n=1, timeout=5.0):
    """tap.wait_transcripts() with this module's Transcript."""
    return tap.wait_transcripts(n, timeout, cls=Transcript)


def transcript(tap, timeout=5.0):
    return tap.transcript(timeout, cls=Transcript)


HIT_RE = re.compile(r'^rule (?P<file>.+?):(?P<line>\d+) (?P<action>[A-Z]+)(?P<failed> \(failed, (?:skipped|answered 451)\))?'
                    r' scope=(?P<scope>[a-z]+) (?:line="(?P<orig>.*?)"|\(line not recorded\))'
                    r'(?: sent="(?P<sent>.*?)")?(?: text=(?P<text>.*))?$', re.S)


class RuleHit:
    """One "* rule FILE:LINE ACTION scope=SCOPE line="..." [sent="..."] [text=...]" event."""

    def __init__(self, m):
        self.file = m.group("file")
        self.line = int(m.group("line"))
        self.action = m.group("action")
        self.failed = m.group("failed") is not None
        self.scope = m.group("scope")
        self.orig = m.group("orig")
        self.sent = m.group("sent")
        self.text = m.group("text")

    @classmethod
    def parse(cls, event):
        if not event.startswith("rule "):
            return None
        m = HIT_RE.match(event)
        assert m, "rule event in an unexpected format: %r" % event
        return cls(m)

    def __repr__(self):
        return "RuleHit(%s:%d %s scope=%s line=%r sent=%r text=%r)" % (
            self.file, self.line, self.action, self.scope, self.orig, self.sent, self.text)


def event_rules(ev):
    """The JSON event's "rules" array as {"FILE:LINE": (scope, action, hits)}."""
    assert "rules" in ev, "no \"rules\" in the session event: %r" % ev
    out = {}
    for r in ev["rules"]:
        assert set(r) >= {"rule", "scope", "action", "hits"}, r
        out[r["rule"]] = (r["scope"], r["action"], r["hits"])
    return out


# --------------------------------------------------------------------------------------------
# Clients


def swaks(port, *args, timeout=30):
    """swaks to 127.0.0.1:port (sender a@example.com, recipient b@example.net unless given);
    returns the CompletedProcess, stdout and stderr together."""
    argv = [SWAKS, "--server", "127.0.0.1:%d" % port, "--helo", "client.example",
            "--timeout", "10"]
    if "--from" not in args and "-f" not in args:
        argv += ["--from", "a@example.com"]
    if "--to" not in args and "-t" not in args:
        argv += ["--to", "b@example.net"]
    return subprocess.run(argv + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)


def swaks_received(output):
    """The server lines swaks printed ("<-  250-..."), without the marker; also "<** " ones."""
    out = []
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("<-  ") or line.startswith("<** "):
            out.append(line[4:])
    return out


def ehlo_reply_from_swaks(output):
    """The lines of the EHLO reply as swaks read them."""
    lines = output.decode("utf-8", "replace").splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith(" -> EHLO "))
    out = []
    for l in lines[i + 1:]:
        if not (l.startswith("<-  ") or l.startswith("<** ")):
            break
        out.append(l[4:])
        if len(l) < 8 or l[7] != "-":
            break
    return out


def run_smtptap(binary, args, timeout=15, cwd=None):
    """Runs smtptap in a one-shot mode (--check-rules, --test-rules)."""
    return subprocess.run([binary] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, cwd=cwd)


def trial_blocks(stdout):
    """--test-rules output as [(line, [hit lines])]: a line of the transcript that some rule
    acted on (not indented), then the hits (indented)."""
    blocks = []
    for line in stdout.splitlines():
        if line[:1] in (" ", "\t"):
            assert blocks, "a hit line before any transcript line: %r" % line
            blocks[-1][1].append(line.strip())
        else:
            blocks.append((line, []))
    return blocks



def held_tmpfiles(pid, log_dir):
    """The unlinked files under log_dir that process pid holds open (readlink of /proc fds)."""
    out = []
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith(os.path.realpath(log_dir) + "/") and target.endswith(" (deleted)"):
            out.append(target)
    return out


def wait_stderr(tap, needle, timeout=5.0):
    return harness.wait_until(lambda: needle in tap.stderr(), timeout,
                              what="%r in smtptap's stderr" % needle)


