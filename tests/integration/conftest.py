"""Fixtures for smtptap's integration tests.

Run with:  SMTPTAP=/abs/path/build/smtptap /usr/bin/python3 -m pytest -q tests/integration
Every test runs under a time limit (@pytest.mark.limit(SECONDS), default 30), starts what it
needs on free loopback ports and stops it by PID.  A test whose peer is missing skips, saying
"not installed" (or pytest.importorskip's "could not import"); under CI=true that skip is a
failure instead, so that a green CI run means every test ran.  When a test fails, the report carries the
proxy's stderr, its transcripts and events, and what the peers saw; the work directory is kept
and named in the report (removed when the test passes).
"""

import os
import shutil
import signal
import subprocess

import pytest

import harness
from filter_peers import VerboseSink, add_diag

DEFAULT_LIMIT = 30

# How a skip for a missing peer reads (this suite's convention, and pytest.importorskip's).
MISSING_PEER = ("not installed", "could not import")


def missing_peer_fails():
    """Under CI (CI=true, as .ci/run sets it) a missing peer fails the run instead of skipping."""
    return os.environ.get("CI", "").lower() == "true"


def pytest_configure(config):
    config.addinivalue_line("markers", "limit(seconds): time limit for the test body")


class TimeLimitExceeded(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """The test body runs under SIGALRM: a hang fails the test instead of the suite."""
    m = item.get_closest_marker("limit")
    limit = int(m.args[0]) if m else DEFAULT_LIMIT

    def on_alarm(signum, frame):
        raise TimeLimitExceeded("test exceeded its %d s time limit" % limit)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    _missing_peer_to_failure(rep)
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed and rep.when in ("setup", "call"):
        for title, obj in getattr(item, "_diagnostics", []):
            try:
                text = obj.describe()
            except Exception as e:  # never hide the real failure
                text = "(describe failed: %r)" % e
            rep.sections.append((title, text))
        wd = getattr(item, "_workdir", None)
        if wd:
            rep.sections.append(("work directory (kept)", wd))


def _missing_peer_to_failure(rep):
    """Under CI=true, turns a skip for a missing peer into a failure that names it."""
    if not rep.skipped or not missing_peer_fails() or not isinstance(rep.longrepr, tuple):
        return
    reason = str(rep.longrepr[2])
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    if any(m in reason for m in MISSING_PEER):
        rep.outcome = "failed"
        rep.longrepr = "missing peer under CI=true (run make deps): %s" % reason


def _diag(request, title, obj):
    node = request.node
    if not hasattr(node, "_diagnostics"):
        node._diagnostics = []
    node._diagnostics.append((title, obj))


def _failed(request):
    node = request.node
    return any(getattr(node, "rep_" + w, None) is not None and getattr(node, "rep_" + w).failed
               for w in ("setup", "call"))


@pytest.fixture(scope="session")
def smtptap_bin():
    path = os.environ.get("SMTPTAP")
    if path:
        assert os.path.isabs(path), "SMTPTAP must be an absolute path, not %r" % path
        assert os.access(path, os.X_OK), "SMTPTAP=%s is not an executable" % path
        return path
    path = os.path.join(harness.REPO, "build", "smtptap")
    if not os.access(path, os.X_OK):
        pytest.skip("no smtptap binary: set SMTPTAP or run make (looked for %s)" % path)
    return path


@pytest.fixture
def workdir(request):
    """A fresh directory under /tmp, removed after a passing test and kept after a failure."""
    d = harness.make_workdir()
    request.node._workdir = d
    yield d
    if not _failed(request):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sink(request, workdir):
    """Postfix's smtp-sink on a free port, dumping each message to a file."""
    if not os.access(harness.SMTP_SINK, os.X_OK):
        pytest.skip("smtp-sink not installed (package postfix)")
    s = harness.SmtpSink(workdir)
    _diag(request, "smtp-sink", s)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def fake_server(request):
    """Factory: fake_server(handler) -> a FakeServer on a free port, stopped afterwards."""
    servers = []

    def make(handler, name="fake-server"):
        srv = harness.FakeServer(handler, name=name)
        servers.append(srv)
        _diag(request, name, srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def tap_factory(request, smtptap_bin, workdir):
    """Factory: tap_factory(upstream_port, *args, start=True) -> a started Smtptap."""
    taps = []

    def make(upstream_port, *extra, start=True, name=None, listen=None, upstream=None):
        name = name or "smtptap%s" % (len(taps) or "")
        wd = workdir if not taps else os.path.join(workdir, name)
        os.makedirs(wd, exist_ok=True)
        t = harness.Smtptap(smtptap_bin, wd, upstream_port, extra, name=name, listen=listen,
                            upstream=upstream)
        taps.append(t)
        _diag(request, name, t)
        if start:
            t.start()
        return t

    yield make
    for t in taps:
        t.stop()


@pytest.fixture
def tap(tap_factory, sink):
    """smtptap in front of smtp-sink, default options."""
    return tap_factory(sink.port)


@pytest.fixture
def postfix_main():
    """main.cf parameters the postfix fixture sets or replaces; a test parametrizes it."""
    return {}


@pytest.fixture
def postfix(request, workdir, postfix_main):
    """A private Postfix smtpd (it offers CHUNKING) that hands messages to an smtp-sink; its
    main.cf takes the postfix_main fixture's parameters on top of its own.

    Returns (postfix, sink)."""
    if not harness.IS_ROOT:
        pytest.skip("a private Postfix instance needs root (master runs as root)")
    if not os.access(harness.POSTFIX, os.X_OK):
        pytest.skip("postfix not installed")
    s = harness.SmtpSink(workdir, name="postfix-sink")
    _diag(request, "postfix's smtp-sink", s)
    s.start()
    pf = harness.PostfixInstance(workdir, s.port, main=postfix_main)
    _diag(request, "postfix", pf)
    try:
        pf.start()
        yield pf, s
    finally:
        pf.stop()
        s.stop()


@pytest.fixture
def tls_context(workdir):
    """A server-side SSLContext with a throw-away self-signed certificate."""
    import ssl

    key = os.path.join(workdir, "key.pem")
    crt = os.path.join(workdir, "crt.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "1", "-subj", "/CN=fake.example"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    if r.returncode != 0:
        pytest.skip("openssl could not make a test certificate: %s" % r.stderr.decode()[:200])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    return ctx


@pytest.fixture
def vsink(request, workdir):
    """smtp-sink -v: dump files per message, and a log of every command it read (the filter
    and policy tests)."""
    if not os.access(harness.SMTP_SINK, os.X_OK):
        pytest.skip("smtp-sink not installed (package postfix)")
    s = VerboseSink(workdir)
    add_diag(request, "smtp-sink -v", s)
    s.start()
    yield s
    s.stop()
