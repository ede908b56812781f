"""AUTH (RFC 4954): sessions work through the proxy and no secret reaches any log.

smtp-sink answers AUTH with a 250 and never sends a 334, so the server here is the scripted
one, which implements PLAIN and LOGIN and checks the credentials.
"""

import re
import subprocess

import pytest

from harness import SmtpClient, SmtpServerScript, b64

USER, PASSWORD = "alice", "s3cret"


def secrets_for(user, password):
    """Every form the secret could take in a log: as is, in base64, inside the PLAIN blob."""
    plain = b64("\0%s\0%s" % (user, password))
    return {password, b64(password), plain, plain[len(plain) // 2:]}


REDACTED_USER = r"\[redacted \d+ octets user=alice\]"
REDACTED = r"\[redacted \d+ octets\]"


def assert_no_secret(tap, password=PASSWORD, user=USER):
    tap.stop()  # flush everything; stderr complete
    blobs = {"stderr": tap.stderr(), "stdout": tap.stdout()}
    for t in tap.transcripts():
        blobs["transcript " + t.relpath] = t.text
    try:
        with open(tap.events_path, "rb") as f:
            blobs["events"] = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        blobs["events"] = ""
    for name, text in blobs.items():
        for s in secrets_for(user, password):
            assert s not in text, "secret %r found in %s" % (s, name)


def swaks(port, *args):
    return subprocess.run(["swaks", "--server", "127.0.0.1:%d" % port, "--helo", "client.example",
                           "--from", "a@example.com", "--to", "b@example.net", "--timeout", "10"]
                          + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)


@pytest.mark.limit(30)
def test_auth_plain_with_swaks(tap_factory, fake_server):
    srv = fake_server(SmtpServerScript(auth={USER: PASSWORD}))
    tap = tap_factory(srv.port, "--verbose")
    r = swaks(tap.port, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD)
    assert r.returncode == 0, r.stdout.decode()
    srv.join()
    assert len(srv.conns[0].messages) == 1
    t = tap.transcript()
    auth = [l for l in t.client_lines() if l.upper().startswith("AUTH")]
    assert len(auth) == 1
    assert re.fullmatch("AUTH PLAIN " + REDACTED_USER, auth[0]), auth[0]
    assert any(l.startswith("235 ") for l in t.server_lines())
    ev = tap.event()
    assert ev["auth"] == {"mechanism": "PLAIN", "user": USER, "code": 235}
    assert ev["transactions"][0]["code"] == 250
    assert_no_secret(tap)


@pytest.mark.limit(30)
def test_auth_login_with_swaks(tap_factory, fake_server):
    srv = fake_server(SmtpServerScript(auth={USER: PASSWORD}))
    tap = tap_factory(srv.port, "--verbose")
    r = swaks(tap.port, "--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD)
    assert r.returncode == 0, r.stdout.decode()
    srv.join()
    assert srv.conns[0].auth_lines == [b64(USER).encode() + b"\r\n", b64(PASSWORD).encode() + b"\r\n"]
    t = tap.transcript()
    recs = t.client_lines()
    i = recs.index("AUTH LOGIN")
    assert re.fullmatch(REDACTED_USER, recs[i + 1]), recs[i + 1]
    assert re.fullmatch(REDACTED, recs[i + 2]), recs[i + 2]
    assert t.server_lines().count("334 VXNlcm5hbWU6") == 1
    ev = tap.event()
    assert ev["auth"] == {"mechanism": "LOGIN", "user": USER, "code": 235}
    assert ev["transactions"][0]["code"] == 250
    assert_no_secret(tap)


@pytest.mark.limit(20)
def test_auth_plain_after_empty_334(tap_factory, fake_server):
    """AUTH PLAIN without an initial response: the server's '334 ' (empty challenge) is relayed
    as it is, and the response line is redacted."""
    srv = fake_server(SmtpServerScript(auth={USER: PASSWORD}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    assert c.cmd("AUTH PLAIN") == [b"334 \r\n"]
    assert c.cmd(b64("\0alice\0s3cret")) == [b"235 2.7.0 Authentication successful\r\n"]
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("QUIT", 221)
    t = tap.transcript()
    recs = t.client_lines()
    i = recs.index("AUTH PLAIN")
    assert re.fullmatch(REDACTED_USER, recs[i + 1]), recs[i + 1]
    assert recs[i + 2] == "MAIL FROM:<a@example.com>"
    assert "334 " in t.server_lines()
    assert tap.event()["auth"] == {"mechanism": "PLAIN", "user": USER, "code": 235}
    assert_no_secret(tap)


@pytest.mark.limit(20)
def test_auth_cancel_and_failure_then_commands_again(tap_factory, fake_server):
    """'*' cancels (kept in the transcript); a failed AUTH still redacts; afterwards the client's
    lines are commands again, recorded as they are."""
    srv = fake_server(SmtpServerScript(auth={USER: PASSWORD}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    assert c.cmd("AUTH LOGIN")[0].startswith(b"334 ")
    assert c.cmd("*")[0].startswith(b"501 ")
    c.expect("NOOP", 250)
    assert c.cmd("AUTH PLAIN " + b64("\0alice\0wrong-pw"))[0].startswith(b"535 ")
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("QUIT", 221)
    t = tap.transcript()
    recs = t.client_lines()
    i = recs.index("AUTH LOGIN")
    assert recs[i + 1] == "*"
    assert recs[i + 2] == "NOOP"
    assert any(r.startswith("AUTH PLAIN [redacted ") for r in recs)
    assert "MAIL FROM:<a@example.com>" in recs
    ev = tap.event()
    assert ev["auth"]["code"] == 535
    assert ev["auth"]["mechanism"] == "PLAIN"
    assert_no_secret(tap, password="wrong-pw")


@pytest.mark.limit(20)
def test_auth_plain_12k_response(tap_factory, fake_server):
    """SASL responses may reach 12,288 octets (RFC 4954): relayed, and redacted whole."""
    password = "p" * 9000
    resp = b64("\0%s\0%s" % (USER, password))
    assert len(resp) > 12000
    srv = fake_server(SmtpServerScript(auth={USER: password}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    assert c.cmd("AUTH PLAIN " + resp)[0].startswith(b"235 ")
    c.expect("QUIT", 221)
    t = tap.transcript()
    assert any(re.fullmatch("AUTH PLAIN " + REDACTED_USER, l) for l in t.client_lines())
    assert "pppp" not in t.text and resp[100:140] not in t.text


@pytest.mark.limit(20)
@pytest.mark.parametrize("mech,blob,user", [
    ("XOAUTH2", "user=alice@example.com\x01auth=Bearer ya29.tok-3n-SECRET\x01\x01", "alice@example.com"),
    ("OAUTHBEARER", "n,a=alice@example.com,\x01host=mx.example\x01port=587\x01"
                    "auth=Bearer ya29.tok-3n-SECRET\x01\x01", "alice@example.com"),
])
def test_auth_oauth_tokens_redacted(tap_factory, fake_server, mech, blob, user):
    def auth(conn, line):
        conn.send("235 2.7.0 Accepted\r\n")
        return True

    srv = fake_server(SmtpServerScript(hooks={"AUTH": auth}, caps=("PIPELINING", "AUTH %s" % mech)))
    tap = tap_factory(srv.port, "--verbose")
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.expect("AUTH %s %s" % (mech, b64(blob)), 235)
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].commands[1] == ("AUTH %s %s\r\n" % (mech, b64(blob))).encode()
    t = tap.transcript()
    (line,) = [l for l in t.client_lines() if l.startswith("AUTH")]
    assert re.fullmatch(r"AUTH %s \[redacted \d+ octets user=%s\]" % (mech, re.escape(user)), line), line
    ev = tap.event()
    assert ev["auth"] == {"mechanism": mech, "user": user, "code": 235}
    tap.stop()
    everything = tap.stderr() + t.text + open(tap.events_path).read()
    assert "ya29" not in everything and b64(blob)[:40] not in everything
