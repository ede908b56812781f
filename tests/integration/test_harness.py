"""The harness's own assumptions about its peers, checked against the real programs (no proxy).

If one of these fails, the other tests' expectations about smtp-sink or Postfix are wrong,
not smtptap.
"""


import pytest

from harness import SmtpClient, dot_stuff, sink_form


@pytest.mark.limit(15)
def test_sink_dump_format(sink):
    """smtp-sink's dump: X- headers, its Received: header, then the content de-dot-stuffed with
    LF line ends (NUL and 8-bit kept, bare CR dropped), then one empty line."""
    content = (b"Subject: dump\r\n\r\n.hidden\r\n..\r\n.\r\n8bit \xc3\xa9 \xff\r\n"
               b"nul\x00here\r\ncr\rmid\r\nlast\r\n")
    c = SmtpClient(sink.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("RCPT TO:<c@example.net>", 250)
    c.expect("DATA", 354)
    c.send(dot_stuff(content) + b".\r\n")
    assert c.code() == 250
    c.expect("QUIT", 221)
    (m,) = sink.wait_messages(1)
    assert m.mail_from == "<a@example.com>"
    assert m.rcpts == ["<b@example.net>", "<c@example.net>"]
    assert m.x("X-Helo-Args") == ["client.example"]
    assert m.content == sink_form(dot_stuff(content))
    assert m.content == content.replace(b"\r\n", b"\n").replace(b"\r", b"")


@pytest.mark.limit(15)
def test_sink_partial_message_leaves_no_dump(sink):
    """A client that vanishes mid-DATA leaves no dump file: 'nothing delivered' is checkable."""
    c = SmtpClient(sink.port)
    assert c.code() == 220
    c.expect("HELO x", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: partial\r\n\r\nsome text\r\n")
    c.abort()
    import time
    time.sleep(0.3)
    assert sink.count() == 0


@pytest.mark.limit(15)
def test_sink_ehlo_reply_ends_with_empty_line(sink):
    """smtp-sink's EHLO reply ends with '250 ' and no text: a good multi-line edge case."""
    c = SmtpClient(sink.port)
    c.reply()
    r = c.cmd("EHLO x")
    assert r[0] == b"250-smtp-sink\r\n"
    assert r[-1] == b"250 \r\n"
    assert len(r) > 5


@pytest.mark.limit(30)
def test_postfix_offers_chunking_and_relays_bdat(postfix):
    """The private Postfix instance offers CHUNKING and hands BDAT content to its sink."""
    pf, psink = postfix
    c = SmtpClient(pf.port)
    assert c.code() == 220
    r = c.cmd("EHLO client.example")
    assert b"250-CHUNKING\r\n" in r or b"250 CHUNKING\r\n" in r
    body = b"Subject: bdat\r\n\r\n.hidden\r\nhello\r\n"
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<b@example.net>", 250)
    c.send(b"BDAT %d LAST\r\n" % len(body) + body)
    assert c.code() == 250
    c.expect("QUIT", 221)
    (m,) = psink.wait_messages(1)
    assert m.content.endswith(body.replace(b"\r\n", b"\n"))


def _run_skipping_test(tmp_path, ci):
    """Runs, in a pytest of its own with this suite's conftest, a test whose peer is missing."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    (tmp_path / "test_peer.py").write_text(
        "import pytest\n\n"
        "def test_missing():\n    pytest.skip('frobd not installed (package frobd)')\n\n"
        "def test_import():\n    pytest.importorskip('no_such_module_for_smtptap')\n\n"
        "@pytest.mark.skipif(True, reason='needs a moon')\n"
        "def test_other():\n    pass\n")
    env = dict(os.environ, PYTHONPATH=here)
    env.pop("PYTEST_XDIST_WORKER", None)
    if ci:
        env["CI"] = "true"
    else:
        env.pop("CI", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "-p", "conftest", str(tmp_path)], cwd=str(tmp_path),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)


@pytest.mark.limit(60)
def test_missing_peer_skips_outside_ci(tmp_path):
    r = _run_skipping_test(tmp_path, ci=False)
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert "3 skipped" in out, out


@pytest.mark.limit(60)
def test_missing_peer_fails_under_ci(tmp_path):
    """CI=true: a skip because a peer is not installed fails the run (a green run means every
    test ran); a skip for another reason stays a skip."""
    r = _run_skipping_test(tmp_path, ci=True)
    out = r.stdout.decode()
    assert r.returncode == 1, out
    assert "2 failed, 1 skipped" in out, out
    assert "missing peer under CI=true (run make deps): frobd not installed" in out, out
