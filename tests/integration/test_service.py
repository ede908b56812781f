"""Running smtptap as a service (issue 18): the configuration file, --check-config, the pid file,
systemd's notify protocol and unit, SIGHUP re-reading the file, the log level and the session
line, make install."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

import harness
from harness import SmtpClient

CERT_ARGS = ["-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]


def run(binary, *args, timeout=10, cwd=None):
    return subprocess.run([binary] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, cwd=cwd)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


class Proc:
    """smtptap started with exactly the given arguments; stopped by PID."""

    def __init__(self, binary, workdir, args, env=None, name="smtptap"):
        self.err_path = os.path.join(workdir, name + ".stderr")
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([binary] + list(args), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=workdir,
                                         env=env)

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_stderr(self, needle, timeout=5.0):
        harness.wait_until(lambda: needle in self.stderr(), timeout,
                           what="%r in smtptap's stderr" % needle)

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        return harness.stop_pid(self.proc)


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.stop()


def start(binary, workdir, procs, args, port=None, env=None):
    p = Proc(binary, workdir, args, env=env)
    procs.append(p)
    if port is not None:
        try:
            harness.wait_listening(port, 5.0, alive=p.alive)
        except Exception:
            raise AssertionError("smtptap did not start: %s" % p.stderr())
    return p


def deliver(port, rcpt="rcpt@example.org", helo="client.example"):
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO " + helo, 250)
    c.transaction("<sender@example.com>", ["<%s>" % rcpt], b"Subject: t\r\n\r\nbody\r\n")
    c.expect("QUIT", 221)


def make_cert(workdir, name):
    key = os.path.join(workdir, name + ".key")
    crt = os.path.join(workdir, name + ".crt")
    r = subprocess.run(["openssl", "req"] + CERT_ARGS + ["-keyout", key, "-out", crt, "-subj",
                                                         "/CN=" + name], capture_output=True,
                       timeout=30)
    if r.returncode != 0:
        pytest.skip("openssl could not make a certificate")
    return crt, key


# --------------------------------------------------------------------------------------------
# --config


@pytest.mark.limit(30)
def test_config_file_sets_the_options(smtptap_bin, workdir, sink, procs):
    port = harness.free_port()
    rules = write(os.path.join(workdir, "r.rules"), "command /^NOOP/ REJECT 550 5.7.1 from config\n")
    conf = write(os.path.join(workdir, "smtptap.conf"), (
        "# a comment\n"
        "\n"
        "listen 127.0.0.1:%d   # trailing comment\n"
        "upstream\t127.0.0.1:%d\n"
        "log-dir %s\n"
        "rules %s\n"
        "no-transcripts\n") % (port, sink.port, os.path.join(workdir, "logs"), rules))
    start(smtptap_bin, workdir, procs, ["-c", conf], port)
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("EHLO x.example", 250)
    assert c.cmd("NOOP")[0].startswith(b"550 5.7.1 from config")
    c.expect("QUIT", 221)
    ev = os.path.join(workdir, "logs", "events.jsonl")
    harness.wait_until(lambda: os.path.exists(ev) and os.path.getsize(ev) > 0)
    # no-transcripts from the file: only the events file in the log directory
    assert os.listdir(os.path.join(workdir, "logs")) == ["events.jsonl"]


@pytest.mark.limit(20)
def test_config_errors_name_file_and_line_and_exit_2(smtptap_bin, workdir):
    conf = write(os.path.join(workdir, "bad.conf"), (
        "upstream 127.0.0.1:25\n"
        "listen 127.0.0.1:99999\n"
        "# fine\n"
        "bogus 1\n"
        "no-transcripts yes\n"
        "max-line\n"
        "--record body\n"
        "record everything\n"))
    r = run(smtptap_bin, "--config", conf)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    for line, what in [(2, "invalid port"), (4, "unknown setting 'bogus'"),
                       (5, "takes no value"), (6, "missing value"), (7, "without dashes"),
                       (8, "expected body, headers or none")]:
        assert "%s:%d: " % (conf, line) in err and what in err, (line, err)
    assert ":3:" not in err and ":1:" not in err


@pytest.mark.limit(20)
def test_config_file_missing_exits_2(smtptap_bin, workdir):
    r = run(smtptap_bin, "-c", os.path.join(workdir, "nope.conf"))
    assert r.returncode == 2
    assert "nope.conf: No such file or directory" in r.stderr.decode()


@pytest.mark.limit(20)
def test_config_file_may_not_name_config_or_help(smtptap_bin, workdir):
    conf = write(os.path.join(workdir, "c.conf"), "upstream 127.0.0.1:25\nconfig /x\nhelp\n")
    r = run(smtptap_bin, "-c", conf)
    assert r.returncode == 2
    assert "c.conf:2: unknown setting 'config'" in r.stderr.decode()
    assert "c.conf:3: unknown setting 'help'" in r.stderr.decode()


@pytest.mark.limit(30)
def test_command_line_overrides_file_and_replaces_repeatable_lists(smtptap_bin, workdir, sink,
                                                                   procs):
    """Scalar: the command line's value wins.  Repeatable (listen): the command line's list
    replaces the file's, it is not added to it."""
    file_ports = [harness.free_port(), harness.free_port()]
    cli_port = harness.free_port()
    conf = write(os.path.join(workdir, "o.conf"), (
        "listen 127.0.0.1:%d\nlisten 127.0.0.1:%d\nupstream 127.0.0.1:1\nlog-dir %s\n"
        "record headers\n") % (file_ports[0], file_ports[1], os.path.join(workdir, "logs")))
    start(smtptap_bin, workdir, procs,
          ["-c", conf, "--listen", "127.0.0.1:%d" % cli_port, "--upstream",
           "127.0.0.1:%d" % sink.port], cli_port)
    assert all(harness.port_refuses(p) for p in file_ports), "the file's listeners are open too"
    deliver(cli_port)  # the command line's upstream, not the file's port 1
    sink.wait_messages(1)


@pytest.mark.limit(40)
def test_command_line_replaces_every_list_of_the_file(smtptap_bin, workdir, sink, procs):
    """--accept-proxy and --rules on the command line replace the file's lists, at start and
    at each reload.  The file's accept-proxy 127.0.0.0/8 used to stay trusted next to the
    command line's 10.9.9.9: any local client could claim any address with a PROXY header."""
    port = harness.free_port()
    logs = os.path.join(workdir, "logs")
    rules_file = write(os.path.join(workdir, "f.rules"), "command /^NOOP/ REJECT 550 5.7.1 file\n")
    rules_cli = write(os.path.join(workdir, "c.rules"), "command /^NOOP/ REJECT 550 5.7.1 cli\n")
    conf = write(os.path.join(workdir, "l.conf"), (
        "listen 127.0.0.1:%d\nupstream 127.0.0.1:%d\nlog-dir %s\nworkers 1\n"
        "accept-proxy 127.0.0.0/8\nrules %s\n") % (port, sink.port, logs, rules_file))
    p = start(smtptap_bin, workdir, procs,
              ["-c", conf, "--accept-proxy", "10.9.9.9", "--rules", rules_cli], port)

    def check(n):
        c = SmtpClient(port)
        # From a balancer the header would be taken and the greeting follow; from 127.0.0.1,
        # not listed now, the line is an ordinary client's command, refused.
        c.send(b"PROXY TCP4 203.0.113.66 127.0.0.1 4444 25\r\nQUIT\r\n")
        assert c.code() == 220
        assert c.reply() == [b"550 5.7.0 Command not permitted\r\n"]
        assert c.code() == 221
        c = SmtpClient(port)
        assert c.code() == 220
        c.expect("EHLO x.example", 250)
        assert c.cmd("NOOP")[0].startswith(b"550 5.7.1 cli")
        c.expect("QUIT", 221)
        harness.wait_until(lambda: len(events()) == 2 * n)
        ev = events()[-2]
        assert ev["client"].startswith("127.0.0.1:") and "via" not in ev, ev

    def events():
        path = os.path.join(logs, "events.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(l) for l in f if l.endswith("\n")]

    check(1)
    p.proc.send_signal(signal.SIGHUP)  # the command line applies again over the file
    p.wait_stderr("configuration reloaded")
    check(2)


@pytest.mark.limit(30)
def test_config_setting_given_twice_is_an_error(smtptap_bin, workdir, sink, procs):
    """A setting of one value given twice names both lines and fails the start (2), the
    check (1) and a reload (it used to pass, the later line silently winning); a repeatable
    one (listen) may be repeated."""
    port, port2 = harness.free_port(), harness.free_port()
    base = "listen 127.0.0.1:%d\nlisten 127.0.0.1:%d\nupstream 127.0.0.1:%d\nlog-dir %s\n" % (
        port, port2, sink.port, os.path.join(workdir, "logs"))
    dup = base + "upstream 192.0.2.1:25\nmax-line 2048\nno-transcripts\nmax-line 4096\n"
    conf = write(os.path.join(workdir, "d.conf"), dup + "no-transcripts\n")
    expected = ["d.conf:5: upstream: given twice (first at %s:3)" % conf,
                "d.conf:8: max-line: given twice (first at %s:6)" % conf,
                "d.conf:9: no-transcripts: given twice (first at %s:7)" % conf]
    r = run(smtptap_bin, "-c", conf)
    assert r.returncode == 2 and all(e in r.stderr.decode() for e in expected), r.stderr
    r = run(smtptap_bin, "--check-config", "-c", conf)
    assert r.returncode == 1 and all(e in r.stderr.decode() for e in expected), r.stderr
    assert r.stdout.decode() == "configuration has 3 problems\n"
    assert not harness.is_listening(port)

    write(conf, base + "workers 1\n")
    p = start(smtptap_bin, workdir, procs, ["-c", conf], port)
    write(conf, base + "workers 1\nmax-line 2048\nmax-line 4096\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_stderr("keeping the old configuration")
    assert "d.conf:7: max-line: given twice (first at %s:6)" % conf in p.stderr()
    deliver(port2)
    sink.wait_messages(1)


# --------------------------------------------------------------------------------------------
# --check-config


@pytest.mark.limit(40)
def test_check_config_ok_binds_and_resolves_nothing(smtptap_bin, workdir):
    port = harness.free_port()
    crt, key = make_cert(workdir, "a")
    rules = write(os.path.join(workdir, "r.rules"), "command /^NOOP/ WARN\n")
    conf = write(os.path.join(workdir, "ok.conf"), (
        "listen 127.0.0.1:%d\nupstream no-such-host.invalid:25\nlog-dir %s\n"
        "tls-cert %s\ntls-key %s\nrules %s\n") % (port, os.path.join(workdir, "logs"), crt,
                                                  key, rules))
    r = run(smtptap_bin, "--check-config", "-c", conf)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "configuration ok\n"
    assert not os.path.exists(os.path.join(workdir, "logs"))
    assert not harness.is_listening(port)


@pytest.mark.limit(40)
def test_check_config_reports_every_problem(smtptap_bin, workdir):
    crt_a, key_a = make_cert(workdir, "a")
    crt_b, key_b = make_cert(workdir, "b")
    rules = write(os.path.join(workdir, "bad.rules"), "command /(/ WARN\n")
    conf = write(os.path.join(workdir, "p.conf"), (
        "upstream 127.0.0.1:25\nlisten nonsense\ntls-cert %s\ntls-key %s\nrules %s\n"
        "upstream-ca %s\n") % (crt_a, key_b, rules, os.path.join(workdir, "no-ca.pem")))
    r = run(smtptap_bin, "--check-config", "-c", conf)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "p.conf:2: " in err and "--listen" in err          # syntax, as FILE:LINE
    assert "bad.rules:1:" in err                                 # the rule that fails to compile
    assert key_b in err                                          # the key does not match
    assert "no-ca.pem" in err                                    # the CA file is missing
    assert "configuration ok" not in r.stdout.decode()


@pytest.mark.limit(20)
def test_check_config_mismatched_key_alone_fails(smtptap_bin, workdir):
    crt_a, _ = make_cert(workdir, "a")
    _, key_b = make_cert(workdir, "b")
    r = run(smtptap_bin, "--check-config", "--upstream", "127.0.0.1:25", "--tls-cert", crt_a,
            "--tls-key", key_b)
    assert r.returncode == 1
    assert "key values mismatch" in r.stderr.decode() or key_b in r.stderr.decode()


@pytest.mark.limit(20)
@pytest.mark.skipif(not harness.IS_ROOT, reason="checking access as --user needs root")
def test_check_config_files_unreadable_by_user(smtptap_bin, workdir):
    rules = write(os.path.join(workdir, "private.rules"), "command /^NOOP/ WARN\n")
    os.chmod(rules, 0o600)
    os.chmod(workdir, 0o755)
    r = run(smtptap_bin, "--check-config", "--upstream", "127.0.0.1:25", "--user", "nobody",
            "--rules", rules, "--log-dir", os.path.join(workdir, "logs"))
    assert r.returncode == 1
    assert "private.rules: not readable" in r.stderr.decode()
    os.chmod(rules, 0o644)
    r = run(smtptap_bin, "--check-config", "--upstream", "127.0.0.1:25", "--user", "nobody",
            "--rules", rules, "--log-dir", os.path.join(workdir, "logs"))
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.limit(20)
def test_check_config_unknown_user(smtptap_bin):
    r = run(smtptap_bin, "--check-config", "--upstream", "127.0.0.1:25", "--user",
            "no-such-user-smtptap")
    assert r.returncode == 1
    assert "no-such-user-smtptap: no such user" in r.stderr.decode()


# --------------------------------------------------------------------------------------------
# --pid-file


@pytest.mark.limit(30)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_pid_file_written_once_started_and_removed_at_exit(smtptap_bin, workdir, sink, procs,
                                                           workers):
    port = harness.free_port()
    pidfile = os.path.join(workdir, "smtptap.pid")
    p = start(smtptap_bin, workdir, procs,
              ["--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:%d" % sink.port,
               "--log-dir", os.path.join(workdir, "logs"), "--pid-file", pidfile,
               "--workers", workers], port)
    harness.wait_until(lambda: os.path.exists(pidfile) and os.path.getsize(pidfile) > 0)
    with open(pidfile) as f:
        assert f.read() == "%d\n" % p.proc.pid
    # A second instance with the same pid file refuses to start.
    r = run(smtptap_bin, "--listen", "127.0.0.1:%d" % harness.free_port(), "--upstream",
            "127.0.0.1:1", "--log-dir", os.path.join(workdir, "logs2"), "--pid-file", pidfile)
    assert r.returncode != 0 and "--pid-file" in r.stderr.decode()
    with open(pidfile) as f:
        assert f.read() == "%d\n" % p.proc.pid, "the second instance wrote the pid file"
    assert p.stop() == 0
    assert not os.path.exists(pidfile)


@pytest.mark.limit(20)
def test_pid_file_not_written_when_start_up_fails(smtptap_bin, workdir):
    pidfile = os.path.join(workdir, "smtptap.pid")
    r = run(smtptap_bin, "--upstream", "127.0.0.1:25", "--listen", "192.0.2.1:25",
            "--log-dir", os.path.join(workdir, "logs"), "--pid-file", pidfile)
    assert r.returncode != 0
    assert not os.path.exists(pidfile) or os.path.getsize(pidfile) == 0


# --------------------------------------------------------------------------------------------
# systemd: the notify protocol (without systemd) and the unit


def notify_socket(workdir):
    path = os.path.join(workdir, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    return s, path


def recv_state(sock):
    data = sock.recv(4096).decode()
    return dict(kv.split("=", 1) for kv in data.split("\n") if "=" in kv)


@pytest.mark.limit(40)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_notify_ready_reloading_stopping(smtptap_bin, workdir, sink, procs, workers):
    sock, path = notify_socket(workdir)
    port = harness.free_port()
    env = dict(os.environ, NOTIFY_SOCKET=path)
    p = start(smtptap_bin, workdir, procs,
              ["--listen", "127.0.0.1:%d" % port, "--upstream", "127.0.0.1:%d" % sink.port,
               "--log-dir", os.path.join(workdir, "logs"), "--workers", workers], env=env)
    st = recv_state(sock)
    assert st.get("READY") == "1", st
    # Ready means ready: a client is served at once.
    deliver(port)
    sink.wait_messages(1)
    p.proc.send_signal(signal.SIGHUP)
    st = recv_state(sock)
    assert st.get("RELOADING") == "1" and int(st["MONOTONIC_USEC"]) > 0, st
    assert recv_state(sock).get("READY") == "1"
    p.proc.send_signal(signal.SIGTERM)
    assert recv_state(sock).get("STOPPING") == "1"
    assert p.proc.wait(10) == 0
    # Only the main process speaks: nothing from the workers.
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(4096)


@pytest.mark.limit(20)
def test_notify_not_ready_when_start_up_fails(smtptap_bin, workdir):
    sock, path = notify_socket(workdir)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    r = subprocess.run([smtptap_bin, "--upstream", "127.0.0.1:25", "--listen", "192.0.2.1:25",
                        "--log-dir", os.path.join(workdir, "logs")], env=env,
                       capture_output=True, timeout=10)
    assert r.returncode != 0
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(4096)


@pytest.mark.limit(30)
def test_systemd_unit_verifies(smtptap_bin, workdir):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (package systemd)")
    with open(os.path.join(harness.REPO, "dist", "smtptap.service")) as f:
        unit = f.read()
    for key in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                "ProtectSystem=strict", "ReadWritePaths=/var/log/smtptap", "PrivateTmp=yes",
                "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
                "CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID"]:
        assert key in unit, key
    # Verified with the binary under test in place of /usr/sbin/smtptap (not installed here).
    path = os.path.join(workdir, "smtptap.service")
    write(path, unit.replace("/usr/sbin/smtptap", smtptap_bin))
    r = subprocess.run([analyze, "verify", "--man=no", path], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stderr.decode().strip() == "", r.stderr.decode()


def unit_setting(key):
    with open(os.path.join(harness.REPO, "dist", "smtptap.service")) as f:
        (value,) = [l.split("=", 1)[1].strip() for l in f if l.startswith(key + "=")]
    return value


@pytest.mark.skipif(not harness.IS_ROOT, reason="starting as root under the unit's capabilities")
@pytest.mark.limit(40)
def test_unit_capabilities_start_the_packaged_layout(smtptap_bin, workdir, sink, procs):
    """Root with no capability but the unit's CapabilityBoundingSet (setpriv), the log dir as
    the package's postinst leaves it (0750, owned by the user smtptap runs as; nobody here):
    ExecStartPre's --check-config passes and ExecStart starts and relays.  Without
    CAP_DAC_OVERRIDE root could not open that directory: the packaged service never started."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed (package util-linux)")
    caps = ",".join(["-all"] + ["+" + c[4:].lower()
                                for c in unit_setting("CapabilityBoundingSet").split()])
    logs = os.path.join(workdir, "logs")
    os.mkdir(logs, 0o750)
    shutil.chown(logs, "nobody", "nogroup")
    os.chmod(logs, 0o750)
    port = harness.free_port()
    conf = write(os.path.join(workdir, "s.conf"),
                 "listen 127.0.0.1:%d\nupstream 127.0.0.1:%d\nlog-dir %s\nuser nobody\nworkers 1\n"
                 % (port, sink.port, logs))
    r = subprocess.run([setpriv, "--bounding-set", caps, smtptap_bin, "--check-config", "--config",
                        conf], capture_output=True, timeout=20)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    p = start(setpriv, workdir, procs, ["--bounding-set", caps, smtptap_bin, "--config", conf],
              port)
    deliver(port)
    sink.wait_messages(1)
    p.wait_stderr("running as nobody")


# --------------------------------------------------------------------------------------------
# SIGHUP re-reads --config


@pytest.mark.limit(40)
def test_sighup_rereads_config_atomically(smtptap_bin, workdir, sink, procs):
    port = harness.free_port()
    logs = os.path.join(workdir, "logs")
    rules_a = write(os.path.join(workdir, "a.rules"), "command /^NOOP/ REJECT 550 5.7.1 rules A\n")
    rules_b = write(os.path.join(workdir, "b.rules"), "command /^NOOP/ REJECT 550 5.7.1 rules B\n")
    conf = os.path.join(workdir, "s.conf")
    base = "listen 127.0.0.1:%d\nupstream 127.0.0.1:%d\nlog-dir %s\nworkers 1\n" % (port, sink.port, logs)
    write(conf, base + "rules %s\n" % rules_a)
    p = start(smtptap_bin, workdir, procs, ["-c", conf], port)

    def noop():
        c = SmtpClient(port)
        assert c.code() == 220
        c.expect("EHLO x.example", 250)
        r = c.cmd("NOOP")[0]
        c.expect("QUIT", 221)
        return r

    before = SmtpClient(port)  # a session from before the reload keeps its rules
    assert before.code() == 220
    assert noop().startswith(b"550 5.7.1 rules A")

    # A broken file: nothing of it applies, not even its valid lines; the reason is logged.
    write(conf, base + "rules %s\nidle-timeout soon\n" % rules_b)
    p.proc.send_signal(signal.SIGHUP)
    p.wait_stderr("%s:6: --idle-timeout: invalid duration" % conf)
    p.wait_stderr("keeping the old configuration")
    assert noop().startswith(b"550 5.7.1 rules A")

    # An upstream with a bad port: refused, and the refused options are freed once (their
    # upstream host was freed twice, a crash at the next reload under glibc's malloc).
    write(conf, base.replace("upstream 127.0.0.1:%d" % sink.port, "upstream 127.0.0.1:0"))
    p.proc.send_signal(signal.SIGHUP)
    p.wait_stderr("invalid port")
    harness.wait_until(lambda: p.stderr().count("keeping the old configuration") == 2)
    assert p.alive()
    assert noop().startswith(b"550 5.7.1 rules A")

    # A valid file: new sessions get rules B; a changed listener is ignored until restart.
    other = harness.free_port()
    write(conf, base.replace("listen 127.0.0.1:%d" % port, "listen 127.0.0.1:%d" % other)
          + "rules %s\n" % rules_b)
    p.proc.send_signal(signal.SIGHUP)
    p.wait_stderr("configuration reloaded")
    assert "listen changed: ignored until restart" in p.stderr()
    assert noop().startswith(b"550 5.7.1 rules B")
    assert harness.port_refuses(other)
    before.expect("EHLO x.example", 250)
    assert before.cmd("NOOP")[0].startswith(b"550 5.7.1 rules A")
    before.expect("QUIT", 221)

    # A rules file that breaks: the whole reload is refused.
    write(rules_b, "command /(/ WARN\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_stderr("b.rules:1:")
    harness.wait_until(lambda: p.stderr().count("keeping the old configuration") == 3)
    assert noop().startswith(b"550 5.7.1 rules B")
    assert p.alive()


@pytest.mark.limit(40)
def test_sighup_config_changes_upstream_and_log_level(smtptap_bin, workdir, sink, procs):
    port = harness.free_port()
    conf = os.path.join(workdir, "u.conf")
    base = "listen 127.0.0.1:%d\nlog-dir %s\n" % (port, os.path.join(workdir, "logs"))
    write(conf, base + "upstream 127.0.0.1:1\n")
    p = start(smtptap_bin, workdir, procs, ["-c", conf, "--workers", "2"], port)
    write(conf, base + "upstream 127.0.0.1:%d\nlog-level warning\n" % sink.port)
    p.proc.send_signal(signal.SIGHUP)
    harness.wait_until(lambda: p.stderr().count("configuration reloaded") == 3)  # 2 workers
    deliver(port)
    sink.wait_messages(1)
    time.sleep(0.3)
    assert "session=" not in p.stderr(), "info lines after log-level warning"


def reload_and_wait(p, needle, workers):
    """SIGHUP, then needle logged by every process that reloads (the supervisor and each
    worker, or the one process)."""
    count = p.stderr().count(needle)
    want = count + (1 if workers == "1" else int(workers) + 1)
    p.proc.send_signal(signal.SIGHUP)
    harness.wait_until(lambda: p.stderr().count(needle) >= want, what=needle)


@pytest.mark.limit(40)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_unknown_user_fails_the_reload_not_the_service(smtptap_bin, workdir, sink, procs,
                                                              workers):
    """`user` needs a restart: a name that can't be found fails the reload (it used to exit
    the whole service, workers and open sessions with it); a known one is ignored until
    restart."""
    port = harness.free_port()
    pidfile = os.path.join(workdir, "smtptap.pid")
    conf = os.path.join(workdir, "u.conf")
    base = "listen 127.0.0.1:%d\nupstream 127.0.0.1:%d\nlog-dir %s\nworkers %s\n" % (
        port, sink.port, os.path.join(workdir, "logs"), workers)
    write(conf, base)
    p = start(smtptap_bin, workdir, procs, ["-c", conf, "--pid-file", pidfile], port)
    before = SmtpClient(port)  # open across both reloads
    assert before.code() == 220
    write(conf, base + "user no-such-user-smtptap\n")
    reload_and_wait(p, "keeping the old configuration", workers)
    assert "user no-such-user-smtptap: no such user" in p.stderr()
    assert "configuration reloaded" not in p.stderr()
    assert p.alive() and os.path.exists(pidfile)
    deliver(port)
    sink.wait_messages(1)

    write(conf, base + "user nobody\n")
    reload_and_wait(p, "configuration reloaded", workers)
    assert "user changed: ignored until restart" in p.stderr()
    before.expect("EHLO x.example", 250)
    before.transaction("<sender@example.com>", ["<r@example.org>"], b"Subject: t\r\n\r\nb\r\n")
    before.expect("QUIT", 221)
    sink.wait_messages(2)
    assert p.alive()


@pytest.mark.limit(40)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_upstream_mark_checked_as_at_start(smtptap_bin, workdir, sink, procs, workers):
    """SO_MARK needs CAP_NET_ADMIN, which the running process lacks (--user gave it up, or
    it never had it): start-up refuses upstream-mark then, and so does a reload, keeping the
    old configuration (it used to take it, and every session after failed with 421)."""
    port = harness.free_port()
    os.chmod(workdir, 0o755)  # --user's log directory is in it
    conf = os.path.join(workdir, "m.conf")
    base = "listen 127.0.0.1:%d\nupstream 127.0.0.1:%d\nlog-dir %s\nworkers %s\n%s" % (
        port, sink.port, os.path.join(workdir, "logs"), workers,
        "user nobody\n" if harness.IS_ROOT else "")
    write(conf, base)
    p = start(smtptap_bin, workdir, procs, ["-c", conf], port)
    write(conf, base + "upstream-mark 1\n")
    reload_and_wait(p, "keeping the old configuration", workers)
    assert "upstream-mark 1: SO_MARK (needs CAP_NET_ADMIN" in p.stderr()
    assert "configuration reloaded" not in p.stderr()
    deliver(port)
    sink.wait_messages(1)


@pytest.mark.limit(30)
def test_sighup_keep_days_needs_a_restart(smtptap_bin, workdir, sink, procs):
    """The journal takes keep-days at start: a reload that changes it says it is ignored
    (it used to say nothing, and nothing was pruned)."""
    port = harness.free_port()
    conf = os.path.join(workdir, "k.conf")
    base = "listen 127.0.0.1:%d\nupstream 127.0.0.1:%d\nlog-dir %s\nworkers 1\n" % (
        port, sink.port, os.path.join(workdir, "logs"))
    write(conf, base)
    p = start(smtptap_bin, workdir, procs, ["-c", conf], port)
    write(conf, base + "keep-days 1\n")
    reload_and_wait(p, "configuration reloaded", "1")
    assert "keep-days changed: ignored until restart" in p.stderr()


# --------------------------------------------------------------------------------------------
# --log-level and the session line


@pytest.mark.limit(30)
def test_session_line_postfix_style(tap_factory, sink):
    tap = tap_factory(sink.port)
    deliver(tap.port, rcpt="someone@example.org", helo="client.example")
    sink.wait_messages(1)
    harness.wait_until(lambda: "session=" in tap.stderr())
    line = [l for l in tap.stderr().splitlines() if "session=" in l][0]
    assert re.search(r"info: session=[0-9a-f]+ client=127\.0\.0\.1:\d+ helo=<client\.example> "
                     r"from=<sender@example\.com> to=<someone@example\.org>:250 code=250 "
                     r"reason=quit duration=\d+\.\d{3}$", line), line


@pytest.mark.limit(30)
def test_session_line_bounded(tap_factory, sink):
    """Forty recipients of 60 characters each: the session line is cut at its bound, the
    recipients it holds whole up to the cut, ending with "..." (no stray octets)."""
    tap = tap_factory(sink.port)
    rcpts = ["<%s%02d@example.org>" % ("r" * 45, i) for i in range(40)]
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO client.example", 250)
    c.transaction("<sender@example.com>", rcpts, b"Subject: t\r\n\r\nbody\r\n")
    c.expect("QUIT", 221)
    harness.wait_until(lambda: "session=" in tap.stderr())
    line = [l for l in tap.stderr().splitlines() if "session=" in l][0]
    assert line.endswith("..."), line
    body = line[line.index("session="):-3]
    assert len(body) == 1799 - 3, len(body)
    assert body.startswith("session="), body
    tos = body.split(" to=")[1:]
    assert tos and all(t == "%s:250" % r for t, r in zip(tos[:-1], rcpts)), tos
    assert (rcpts[len(tos) - 1] + ":250").startswith(tos[-1]), tos[-1]


@pytest.mark.limit(30)
def test_session_line_refused_recipient(tap_factory, sink):
    rules = write(os.path.join(sink.workdir, "r.rules"), "rcpt /bad@/ REJECT 550 5.7.1 no\n")
    tap = tap_factory(sink.port, "--rules", rules)
    c = SmtpClient(tap.port)
    assert c.code() == 220
    c.expect("EHLO h.example", 250)
    c.expect("MAIL FROM:<a@example.com>", 250)
    c.expect("RCPT TO:<bad@example.org>", 550)
    c.expect("RCPT TO:<good@example.org>", 250)
    c.expect("DATA", 354)
    c.expect(".", 250)
    c.expect("QUIT", 221)
    harness.wait_until(lambda: "session=" in tap.stderr())
    assert "to=<bad@example.org>:550 to=<good@example.org>:250 code=250" in tap.stderr()


@pytest.mark.limit(30)
def test_log_level_warning_hides_info(tap_factory, sink):
    tap = tap_factory(sink.port, "--log-level", "warning")
    deliver(tap.port)
    sink.wait_messages(1)
    time.sleep(0.3)
    assert "info:" not in tap.stderr()


@pytest.mark.limit(20)
def test_log_level_bad_value_exits_2(smtptap_bin):
    r = run(smtptap_bin, "--upstream", "127.0.0.1:25", "--log-level", "loud")
    assert r.returncode == 2
    assert "--log-level" in r.stderr.decode()


# --------------------------------------------------------------------------------------------
# make install, and the example configuration


@pytest.mark.limit(60)
def test_make_install_into_destdir(smtptap_bin, workdir):
    build = os.path.dirname(smtptap_bin)
    dest = os.path.join(workdir, "root")
    # -o: the binary under test is installed as it is, never rebuilt here.
    r = subprocess.run(["make", "-C", harness.REPO, "install", "BUILD=" + build,
                        "-o", os.path.join(build, "smtptap"), "DESTDIR=" + dest,
                        "PREFIX=/opt/st"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    files = {os.path.relpath(os.path.join(d, f), dest)
             for d, _, fs in os.walk(dest) for f in fs}
    assert files == {"opt/st/sbin/smtptap", "opt/st/share/man/man1/smtptap.1",
                     "opt/st/lib/systemd/system/smtptap.service",
                     "opt/st/share/doc/smtptap/smtptap.conf.example"}, files
    sbin = os.path.join(dest, "opt/st/sbin/smtptap")
    assert os.stat(sbin).st_mode & 0o777 == 0o755
    assert run(sbin, "--version").returncode == 0
    with open(os.path.join(dest, "opt/st/lib/systemd/system/smtptap.service")) as f:
        unit = f.read()
    assert "ExecStart=/opt/st/sbin/smtptap " in unit and "/usr/sbin" not in unit


def test_example_config_lists_every_setting(smtptap_bin):
    helptext = run(smtptap_bin, "--help").stdout.decode()
    names = set(re.findall(r"--([a-z][a-z0-9-]+)", helptext))
    names -= {"help", "version", "check-rules", "test-rules", "transcript", "config",
              "check-config", "tls-key"} | set()
    names.add("tls-key")
    with open(os.path.join(harness.REPO, "dist", "smtptap.conf.example")) as f:
        example = f.read()
    missing = [n for n in sorted(names) if not re.search(r"^# %s\b" % re.escape(n), example, re.M)]
    assert not missing, missing


@pytest.mark.limit(20)
def test_example_config_settings_parse(smtptap_bin, workdir):
    """The example's lines, uncommented (those whose value is a real one), are valid settings."""
    with open(os.path.join(harness.REPO, "dist", "smtptap.conf.example")) as f:
        lines = [l[2:] for l in f.read().splitlines() if re.match(r"^# [a-z-]+( [0-9a-z.:-]+)?\s+#", l)]
    keep = [l for l in lines if l.split()[0] in {
        "listen", "workers", "record", "on-log-failure", "hold-memory", "bare-newline",
        "max-line", "max-sessions", "connect-timeout", "idle-timeout", "grace",
        "upstream-tls", "upstream-verify", "tls-min-version", "log-level"}]
    assert len(keep) >= 15, keep
    conf = write(os.path.join(workdir, "e.conf"), "upstream 127.0.0.1:25\n" + "\n".join(keep) + "\n")
    r = run(smtptap_bin, "--check-config", "-c", conf, "--log-dir", os.path.join(workdir, "l"))
    assert r.returncode == 0, r.stderr.decode()
