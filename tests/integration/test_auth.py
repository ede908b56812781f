"""AUTH (RFC 4954): sessions work through the proxy and no secret reaches any log.

smtp-sink answers AUTH with a 250 and never sends a 334, so the server here is the scripted
one, which implements PLAIN and LOGIN and checks the credentials.
"""

import os
import re
import subprocess
import time

import pytest

from harness import SmtpClient, SmtpServerScript, b64, escape

USER, PASSWORD = "alice", "s3cret"


def secrets_for(user, password):
    """Every form the secret could take in a log: as is, in base64, inside the PLAIN blob."""
    plain = b64("\0%s\0%s" % (user, password))
    return {password, b64(password), plain, plain[len(plain) // 2:]}


# The marker says nothing of the secret's length ("[redacted 12 octets]" told an attacker
# how long a password was); the user name is kept where it decodes.
REDACTED_USER = r"\[redacted user=alice\]"
REDACTED = r"\[redacted\]"


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



def auth_without_text(ev):
    """The event's auth, but its reply text (checked in test_recording)."""
    return {k: v for k, v in ev["auth"].items() if k != "text"}

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
    assert auth_without_text(ev) == {"mechanism": "PLAIN", "user": USER, "code": 235}
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
    assert auth_without_text(ev) == {"mechanism": "LOGIN", "user": USER, "code": 235}
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
    assert auth_without_text(tap.event()) == {"mechanism": "PLAIN", "user": USER, "code": 235}
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
    assert re.fullmatch(r"AUTH %s \[redacted user=%s\]" % (mech, re.escape(user)), line), line
    ev = tap.event()
    assert auth_without_text(ev) == {"mechanism": mech, "user": user, "code": 235}
    tap.stop()
    everything = tap.stderr() + t.text + open(tap.events_path).read()
    assert "ya29" not in everything and b64(blob)[:40] not in everything


# --------------------------------------------------------------------------------------------
# AUTH tokenised as servers do; SASL data never recorded, however the session ends (issue 13)


def any_space_auth_server(answer="235 2.7.0 Authentication successful\r\n"):
    """A server that splits AUTH on any white space, as Postfix's smtpd_token does (space,
    tab, VT, FF, CR), and answers it with answer at once."""

    def auth(conn, line):
        conn.auth_words = re.split(rb"[ \t\v\f\r]+", line.rstrip(b"\r\n").strip(b" \t\v\f\r"))
        conn.send(answer)
        return True

    return SmtpServerScript(hooks={"AUTH": auth}, caps=("PIPELINING", "AUTH PLAIN LOGIN"))


def write_rules(workdir, text):
    path = os.path.join(workdir, "auth.rules")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.mark.limit(20)
@pytest.mark.parametrize("sep", ["\t", "\v", "\f", "\r", " \t\v "], ids=["tab", "vt", "ff", "cr", "mixed"])
def test_auth_initial_response_after_any_white_space(tap_factory, fake_server, workdir, sep):
    """AUTH PLAIN<TAB>response is PLAIN with an initial response to a server (235): the
    transcript keeps the line up to the response (its separator escaped) and redacts the
    rest, the event's mechanism is PLAIN alone, and a command rule that hits AUTH sees and
    records "AUTH PLAIN" only."""
    srv = fake_server(any_space_auth_server())
    rules = write_rules(workdir, "command /^AUTH/i WARN an AUTH command\n")
    tap = tap_factory(srv.port, "--rules", rules)
    resp = b64("\0%s\0%s" % (USER, PASSWORD))
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.expect("AUTH PLAIN" + sep + resp, 235)
    c.expect("QUIT", 221)
    srv.join()
    # Relayed as the client sent it: the server reads the same words.
    assert srv.conns[0].commands[1] == ("AUTH PLAIN%s%s\r\n" % (sep, resp)).encode()
    assert srv.conns[0].auth_words == [b"AUTH", b"PLAIN", resp.encode()]
    t = tap.transcript()
    auth = [l for l in t.client_lines() if l.upper().startswith("AUTH")]
    assert auth == ["AUTH PLAIN" + escape(sep.encode()) + "[redacted user=alice]"], auth
    hits = [e for e in t.events() if e.startswith("rule ")]
    assert len(hits) == 1 and 'line="AUTH PLAIN"' in hits[0], hits
    ev = tap.event()
    assert auth_without_text(ev) == {"mechanism": "PLAIN", "user": USER, "code": 235}
    assert_no_secret(tap)


@pytest.mark.limit(20)
@pytest.mark.parametrize("password", [PASSWORD, "S3cr3tPW"], ids=["padded", "name-shaped"])
def test_auth_credential_in_place_of_mechanism(tap_factory, fake_server, password):
    """A first word that is no SASL mechanism name may be the credential itself, sent without
    its mechanism: recorded as "AUTH [redacted]", and the event's mechanism is null.  That
    holds for a credential whose base64 is shaped like a name (RFC 4422: at most 20 of A-Z
    0-9 - _, and "AGFsaWNlAFMzY3IzdFBX" is one), which was once recorded in clear: such a
    word is a name only when it has a '-' or '_' (never in base64) or is a known one."""
    srv = fake_server(any_space_auth_server("504 5.5.4 Unsupported mechanism\r\n"))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.expect("AUTH " + b64("\0%s\0%s" % (USER, password)), 504)
    c.expect("NOOP", 250)
    c.expect("QUIT", 221)
    t = tap.transcript()
    recs = t.client_lines()
    i = recs.index("AUTH [redacted]")
    assert recs[i + 1] == "NOOP"
    assert auth_without_text(tap.event()) == {"mechanism": None, "user": None, "code": 504}
    assert_no_secret(tap, password=password)


@pytest.mark.limit(30)
@pytest.mark.parametrize("end,tail", [("close", ""), ("close", "\r"), ("idle", "")],
                         ids=["close", "close-cr", "idle-timeout"])
def test_sasl_response_without_line_end_at_session_end(tap_factory, fake_server, end, tail):
    """A password sent without its CRLF, then the client closes (or goes silent until the idle
    timeout): the unfinished response is never relayed, and it is recorded redacted, not as
    raw client input."""
    srv = fake_server(SmtpServerScript(auth={USER: PASSWORD}))
    tap = tap_factory(srv.port, *(["--idle-timeout", "2"] if end == "idle" else []))
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    assert c.cmd("AUTH LOGIN")[0].startswith(b"334 ")
    assert c.cmd(b64(USER))[0].startswith(b"334 ")
    c.send(b64(PASSWORD) + tail)
    if end == "close":
        c.shutdown_write()
    c.read_until_eof(10)
    t = tap.transcript()
    assert any(e.startswith("client input not relayed") for e in t.events()), t.events()
    recs = t.client_lines()
    i = recs.index("AUTH LOGIN")
    assert re.fullmatch(REDACTED_USER, recs[i + 1]), recs
    assert re.fullmatch(REDACTED, recs[i + 2]) and len(recs) == i + 3, recs
    assert_no_secret(tap)


@pytest.mark.limit(20)
def test_raw_sasl_response_with_nuls_at_session_end_stays_redacted(tap_factory, fake_server):
    """A PLAIN response sent raw, not in base64 ("\\0alice\\0s3cret", NULs and all) and
    without its CRLF, then the client closes: left unrelayed, it is recorded redacted.  (A
    line with a NUL is otherwise recorded as it came: the SASL reading must come first.)"""
    srv = fake_server(SmtpServerScript(auth={USER: PASSWORD}))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    assert c.cmd("AUTH PLAIN")[0].startswith(b"334")
    c.send(b"\0%s\0%s" % (USER.encode(), PASSWORD.encode()))
    c.shutdown_write()
    c.read_until_eof(10)
    recs = tap.transcript().client_lines()
    i = recs.index("AUTH PLAIN")
    assert re.fullmatch(REDACTED, recs[i + 1]) and len(recs) == i + 2, recs
    assert_no_secret(tap)


@pytest.mark.limit(20)
def test_pipelined_sasl_behind_auth_answered_421(tap_factory, fake_server):
    """AUTH LOGIN with user and password pipelined behind it, and the server answers 421: the
    lines left unrelayed are recorded as they would have been, redacted (the user name
    kept)."""
    def auth(conn, line):
        conn.send("421 4.3.2 Service shutting down\r\n")
        conn.close()
        return True

    srv = fake_server(SmtpServerScript(hooks={"AUTH": auth}, caps=("PIPELINING", "AUTH LOGIN")))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.send("AUTH LOGIN\r\n%s\r\n%s\r\n" % (b64(USER), b64(PASSWORD)))
    assert c.code() == 421
    c.read_until_eof(5)
    srv.join()
    assert b64(USER).encode() not in bytes(srv.conns[0].received)
    t = tap.transcript()
    assert any(e.startswith("client input not relayed") for e in t.events()), t.events()
    recs = t.client_lines()
    i = recs.index("AUTH LOGIN")
    assert re.fullmatch(REDACTED_USER, recs[i + 1]), recs
    assert re.fullmatch(REDACTED, recs[i + 2]), recs
    assert_no_secret(tap)


@pytest.mark.limit(20)
def test_pipelined_sasl_after_non_334_reply(tap_factory, fake_server):
    """AUTH LOGIN with user and password pipelined behind it, and the server refuses AUTH
    (454): the two lines reach the server as commands (it answers 502), but they are SASL
    responses all the same and recorded redacted; the first command (NOOP) ends the exchange,
    and what follows is recorded as it is."""
    srv = fake_server(any_space_auth_server("454 4.7.0 Temporary authentication failure\r\n"))
    tap = tap_factory(srv.port)
    c = SmtpClient(tap.port)
    c.reply()
    c.expect("EHLO client.example", 250)
    c.send("AUTH LOGIN\r\n%s\r\n%s\r\n" % (b64(USER), b64(PASSWORD)))
    assert [c.code(), c.code(), c.code()] == [454, 502, 502]
    c.expect("NOOP", 250)
    c.expect("XYZZY", 502)
    c.expect("QUIT", 221)
    srv.join()
    assert srv.conns[0].commands[2:4] == [(b64(USER) + "\r\n").encode(), (b64(PASSWORD) + "\r\n").encode()]
    t = tap.transcript()
    recs = t.client_lines()
    i = recs.index("AUTH LOGIN")
    assert re.fullmatch(REDACTED_USER, recs[i + 1]), recs
    assert re.fullmatch(REDACTED, recs[i + 2]), recs
    assert recs[i + 3:i + 6] == ["NOOP", "XYZZY", "QUIT"], recs
    assert auth_without_text(tap.event()) == {"mechanism": "LOGIN", "user": USER, "code": 454}
    assert_no_secret(tap)


@pytest.fixture
def postfix_main(workdir):
    """The postfix fixture offers AUTH (Cyrus SASL with no users: an exchange gets its 334s,
    and "*" its 501, but never succeeds)."""
    conf = os.path.join(workdir, "sasl")
    os.makedirs(conf, exist_ok=True)
    os.chmod(conf, 0o755)
    with open(os.path.join(conf, "smtpd.conf"), "w") as f:
        f.write("pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
                "sasldb_path: %s\n" % os.path.join(conf, "sasldb2"))
    return {"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "cyrus",
            "cyrus_sasl_config_path": conf}


@pytest.mark.limit(60)
def test_sasl_response_over_max_line_cancelled_upstream(tap_factory, postfix, workdir):
    """A SASL response longer than --max-line is not forwarded, but Postfix still waits for a
    response after its 334: smtptap sends "*" in its place once the whole line is in, and
    the client gets Postfix's own reply (501 5.7.0 Authentication aborted).  Proxy and server
    stay in step: the next line is a command to both, and meets the rules.  The response is
    recorded only as a redacted marker; a long line that arrives in several reads is skipped
    whole, its rest never read as a line of its own."""
    pf, psink = postfix
    path = os.path.join(workdir, "auth.rules")
    with open(path, "w") as f:
        f.write("mail /evil@/ REJECT 550 5.7.1 Sender refused\n")
    tap = tap_factory(pf.port, "--max-line", "1024", "--rules", path)
    password = "p" * 1500
    resp = b64("\0%s\0%s" % (USER, password)).encode()
    assert len(resp) > 1024
    c = SmtpClient(tap.port)
    assert c.code() == 220
    r = c.expect("EHLO client.example", 250)
    assert [x for x in r if b"AUTH" in x and b"PLAIN" in x], r
    assert c.cmd("AUTH PLAIN") == [b"334 \r\n"]
    assert c.cmd(resp) == [b"501 5.7.0 Authentication aborted\r\n"]
    assert c.cmd("MAIL FROM:<evil@example.com>") == [b"550 5.7.1 Sender refused\r\n"]
    c.expect("NOOP", 250)
    # Again with AUTH LOGIN, the user name in two reads far apart.
    assert c.cmd("AUTH LOGIN") == [b"334 VXNlcm5hbWU6\r\n"]
    c.send(resp[:1500])
    time.sleep(0.5)
    c.send(resp[1500:] + b"\r\n")
    assert c.reply() == [b"501 5.7.0 Authentication aborted\r\n"]
    assert c.cmd("MAIL FROM:<evil@example.com>") == [b"550 5.7.1 Sender refused\r\n"]
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("QUIT", 221)

    t = tap.transcript()
    recs = [(r.kind, r.text) for r in t.records if r.kind in ("C:", "U:", "S:", "P:", "*")]
    for mech in ("AUTH PLAIN", "AUTH LOGIN"):
        i = recs.index(("C:", mech))
        assert recs[i + 2:i + 8] == [
            ("C:", "[redacted]"),
            ("*", "warning SASL response longer than 1024 octets: not forwarded, exchange "
                  "cancelled"),
            ("*", "discarded over-long line octets=%d" % (len(resp) + 2)),
            ("U:", "*"),
            ("S:", "501 5.7.0 Authentication aborted"),
            ("C:", "MAIL FROM:<evil@example.com>")], recs[i:]
    assert t.proxy_lines() == ["550 5.7.1 Sender refused"] * 2
    assert "500 5.5.2 Line too long" not in t.text
    log = pf.log()
    assert log.count("authentication aborted") == 2, log
    assert "evil@example.com" not in log
    assert_no_secret(tap, password=password)
