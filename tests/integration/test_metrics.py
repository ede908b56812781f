"""--metrics ADDR:PORT (issue 18): Prometheus text at /metrics, read with Debian's
python3-prometheus-client parser, checked against a known run."""

import http.client
import os
import resource
import socket
import subprocess
import time

import pytest

import harness
from harness import SmtpClient

parser = pytest.importorskip("prometheus_client.parser")

RULE = "mail /<spam/ REJECT\n"


def scrape(port, path="/metrics", method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        conn.close()


def samples(port):
    """{(name, frozenset(labels)): value} of every sample, parsed by prometheus_client."""
    status, ctype, text = scrape(port)
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m, name, **labels):
    return m[(name, frozenset(labels.items()))]


def tap_with_metrics(tap_factory, sink, workdir, *extra):
    rules = os.path.join(workdir, "rules")
    with open(rules, "w") as f:
        f.write(RULE)
    mport = harness.free_port()
    tap = tap_factory(sink.port, "--rules", rules, "--metrics", "127.0.0.1:%d" % mport, *extra)
    harness.wait_listening(mport, 5.0)
    return tap, mport, rules


def session(port, sender):
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    if sender.startswith("spam"):
        c.expect("MAIL FROM:<%s>" % sender, 550)  # the rule's REJECT
    else:
        c.transaction("<%s>" % sender, ["<rcpt@example.org>"], b"Subject: t\r\n\r\nbody\r\n")
    c.expect("QUIT", 221)
    c.read_until_eof(3)


def known_run(tap):
    """10 sessions, of which 2 are refused by the rule (their MAIL gets 550)."""
    for i in range(10):
        session(tap.port, "spam%d@example.com" % i if i in (3, 7) else "ok%d@example.com" % i)
    tap.wait_events(10)


def check_known_run(m, rules):
    assert value(m, "smtptap_sessions_open") == 0
    assert value(m, "smtptap_sessions_total", reason="quit") == 10
    others = [k for k, v in m.items() if k[0] == "smtptap_sessions_total" and v and
              ("reason", "quit") not in k[1]]
    assert not others, others
    assert value(m, "smtptap_messages_total", **{"class": "2xx"}) == 8
    assert value(m, "smtptap_messages_total", **{"class": "5xx"}) == 0
    assert value(m, "smtptap_recipients_total", **{"class": "2xx"}) == 8
    assert value(m, "smtptap_rule_hits_total", rule=rules + ":1", action="REJECT") == 2
    assert value(m, "smtptap_rule_hits_total", rule="other", action="other") == 0
    assert value(m, "smtptap_session_duration_seconds_count") == 10
    assert value(m, "smtptap_session_duration_seconds_bucket", le="+Inf") == 10
    assert value(m, "smtptap_upstream_connect_seconds_count") == 10
    assert value(m, "smtptap_octets_total", direction="client") > 10 * len("QUIT\r\n")
    assert value(m, "smtptap_octets_total", direction="server") > 0
    assert value(m, "smtptap_tls_handshakes_total", leg="client", result="ok") == 0
    assert value(m, "smtptap_auth_total", mechanism="PLAIN", result="success") == 0
    assert value(m, "smtptap_journal_write_errors_total") == 0
    assert value(m, "smtptap_events_dropped_total") == 0


@pytest.mark.limit(40)
def test_metrics_count_a_known_run(tap_factory, sink, workdir):
    tap, mport, rules = tap_with_metrics(tap_factory, sink, workdir)
    before = samples(mport)
    assert value(before, "smtptap_sessions_total", reason="quit") == 0
    known_run(tap)
    check_known_run(samples(mport), rules)


@pytest.mark.limit(40)
def test_metrics_summed_over_two_workers(tap_factory, sink, workdir):
    tap, mport, rules = tap_with_metrics(tap_factory, sink, workdir, "--workers", "2")
    known_run(tap)
    check_known_run(samples(mport), rules)
    # An open session shows in the gauge, whichever worker holds it.
    c = SmtpClient(tap.port)
    assert c.code() == 220
    assert value(samples(mport), "smtptap_sessions_open") == 1
    c.expect("QUIT", 221)
    c.read_until_eof(3)
    harness.wait_until(lambda: value(samples(mport), "smtptap_sessions_open") == 0, 5,
                       what="the session closed")
    assert value(samples(mport), "smtptap_sessions_total", reason="quit") == 11


@pytest.mark.limit(30)
def test_metrics_serves_only_get_metrics(tap_factory, sink, workdir):
    tap, mport, _ = tap_with_metrics(tap_factory, sink, workdir)
    for path in ("/", "/metric", "/metrics/", "/etc/passwd", "/favicon.ico"):
        assert scrape(mport, path)[0] == 404, path
    assert scrape(mport, "/metrics", "POST")[0] == 405
    assert scrape(mport, "/metrics", "DELETE")[0] == 405
    assert scrape(mport)[0] == 200
    assert tap.alive()


@pytest.mark.limit(20)
def test_metrics_address_must_be_numeric_with_a_port(smtptap_bin):
    for bad in ("localhost:9100", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ""):
        r = subprocess.run([smtptap_bin, "--upstream", "127.0.0.1:25", "--metrics", bad],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        assert r.returncode == 2 and b"--metrics" in r.stderr, (bad, r.stderr)


@pytest.mark.limit(20)
def test_metrics_port_taken_fails_at_start(tap_factory, sink):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        tap = tap_factory(sink.port, "--metrics", "127.0.0.1:%d" % taken, start=False)
        tap.start(wait=False)
        assert tap.wait_exit(10) not in (None, 0)
        assert "--metrics 127.0.0.1:%d" % taken in tap.stderr()


def hold_open(port, n):
    """n connections to port, each with half a request header sent (connects left pending in
    the listen queue are fine: they are what a crowd of slow clients looks like)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        try:
            s.send(b"GET /metrics HTTP/1.1\r\nX-A: ")
        except OSError:
            pass
    return socks


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.mark.limit(40)
def test_metrics_connections_are_capped(tap_factory, sink, workdir):
    """80 metrics clients that never finish their request, with the proxy at 64 descriptors:
    the metrics side takes at most its cap of them, so an SMTP session is still served, and
    once they leave a scrape works again."""
    tap, mport, _ = tap_with_metrics(tap_factory, sink, workdir)
    resource.prlimit(tap.pid, resource.RLIMIT_NOFILE, (64, 64))
    socks = hold_open(mport, 80)
    try:
        time.sleep(1)
        assert fd_count(tap.pid) < 64 - 8, fd_count(tap.pid)
        session(tap.port, "ok@example.com")
    finally:
        for s in socks:
            s.close()
    harness.wait_until(lambda: scrape(mport)[0] == 200, 5, what="a scrape after the crowd left")
    assert "Error from accept" not in tap.stderr()
    assert tap.alive()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.limit(40)
def test_metrics_accept_pauses_when_out_of_descriptors(tap_factory, sink, workdir, workers):
    """The process serving metrics has 3 descriptors to spare and 20 clients come: it logs
    that it pauses accepts (a line every 500 ms at most) instead of libevent's warning on every
    turn of the loop, and serves again once the clients have left."""
    tap, mport, _ = tap_with_metrics(tap_factory, sink, workdir, "--workers", workers)
    scrape(mport)
    limit = fd_count(tap.pid) + 3
    resource.prlimit(tap.pid, resource.RLIMIT_NOFILE, (limit, limit))
    socks = hold_open(mport, 20)
    try:
        time.sleep(2)
        err = tap.stderr()
        assert "accept on metrics" in err and "pausing accepts" in err, err[-2000:]
        assert "Error from accept" not in err
        assert err.count("\n") < 100, "%d lines on stderr" % err.count("\n")
    finally:
        for s in socks:
            s.close()
    harness.wait_until(lambda: scrape(mport)[0] == 200, 5, what="a scrape once the clients left")
    assert tap.alive()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.limit(40)
def test_metrics_pipelining_client_that_never_reads_is_bounded(tap_factory, sink, workdir,
                                                               workers):
    """One client pipelines GET /metrics for 4 s and reads nothing: the process serving metrics
    stops reading it (its growth stays under 16 MiB; it was hundreds of MiB), SMTP is served
    meanwhile and a scrape works afterwards."""
    tap, mport, _ = tap_with_metrics(tap_factory, sink, workdir, "--workers", workers)
    rss_before = harness.rss_kib(tap.pid)
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    sent = 0
    with socket.create_connection(("127.0.0.1", mport)) as c:
        c.setblocking(False)
        end = time.monotonic() + 4
        while time.monotonic() < end:
            try:
                sent += c.send(req)
            except BlockingIOError:
                time.sleep(0.05)
        rss = harness.rss_kib(tap.pid)
        session(tap.port, "ok@example.com")
    assert rss - rss_before < 16 * 1024, "grew from %d KiB to %d KiB (%d octets sent)" % (
        rss_before, rss, sent)
    harness.wait_until(lambda: scrape(mport)[0] == 200, 5, what="a scrape after the flood")
    assert tap.alive()
