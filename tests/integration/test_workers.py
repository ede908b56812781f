"""--workers N: worker processes sharing the listeners, under one supervisor."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

import harness
import hostile_peers as hp
from harness import SmtpClient
from tls_peers import certs  # noqa: F401  (fixture)


def children(pid):
    """The PIDs of a process's children (the workers of a supervisor)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def workers_of(tap, n, replacing=()):
    """The supervisor's n workers, once they run (none of them among the PIDs replacing)."""
    def ready():
        c = children(tap.pid)
        return c if len(c) == n and not set(c) & set(replacing) else None

    return harness.wait_until(ready, 5, what="%d workers" % n + (" new" if replacing else ""))


def workers_that_served(tap):
    """The worker numbers named in the log lines of closed sessions."""
    err = tap.stderr()
    return {n for n in range(1, 65) if "worker %d: session=" % n in err}


def smtp_source(port, sessions, messages):
    if not os.access(harness.SMTP_SOURCE, os.X_OK):
        pytest.skip("smtp-source not installed (package postfix)")
    r = subprocess.run([harness.SMTP_SOURCE, "-s", str(sessions), "-m", str(messages),
                        "-l", "500", "-f", "a@example.com", "-t", "b@example.net",
                        "127.0.0.1:%d" % port],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout.decode()[-2000:]


def one_session(port):
    c = SmtpClient(port)
    assert c.code() == 220
    c.expect("QUIT", 221)
    c.read_until_eof(3)


@pytest.mark.limit(60)
def test_two_workers_serve_and_record_every_session(tap_factory, sink):
    tap = tap_factory(sink.port, "--workers", "2")
    pids = workers_of(tap, 2)
    smtp_source(tap.port, 20, 200)
    sink.wait_messages(200, timeout=20)
    evs = tap.wait_events(200, timeout=20)
    assert len({e["session"] for e in evs}) == 200
    assert all(e["reason"] == "quit" for e in evs)
    assert len(tap.transcript_paths()) == 200
    # Both took clients: the kernel spreads them over the workers' sockets.
    err = tap.stderr()
    for pid in pids:
        assert "started (pid %d)" % pid in err, err[-2000:]
    served = workers_that_served(tap)
    assert served == {1, 2}, "sessions served by workers %s only" % served
    assert tap.stop() == 0
    assert not any(pid_alive(p) for p in pids), "a worker outlived the supervisor's exit"


@pytest.mark.limit(30)
def test_max_sessions_counts_all_workers(tap_factory, sink):
    tap = tap_factory(sink.port, "--workers", "2", "--max-sessions", "4")
    workers_of(tap, 2)
    held = []
    for _ in range(4):
        c = SmtpClient(tap.port)
        assert c.code() == 220
        held.append(c)
    extra = SmtpClient(tap.port)
    r = extra.reply()
    assert r and r[0].startswith(b"421 4.3.2 "), r
    # A place freed in either worker is free for all.
    held.pop().expect("QUIT", 221)

    def admitted():
        c = SmtpClient(tap.port)
        r = c.reply()
        if r and r[0].startswith(b"220"):
            held.append(c)
            return True
        return None

    harness.wait_until(admitted, 5, interval=0.1, what="a place to come free")
    for c in held:
        c.expect("QUIT", 221)


@pytest.mark.limit(30)
def test_sigterm_lets_open_sessions_finish_then_all_exit(tap_factory, sink):
    tap = tap_factory(sink.port, "--workers", "2")
    pids = workers_of(tap, 2)
    c = hp.session_across_sigterm(tap, 2)
    c.expect("QUIT", 221)
    assert tap.wait_exit(5) == 0
    assert not any(pid_alive(p) for p in pids)
    (m,) = sink.wait_messages(1)
    assert m.content.endswith(b"still delivered\n")
    assert "all workers ended" in tap.stderr()


@pytest.mark.limit(40)
def test_a_killed_worker_is_replaced_and_its_places_freed(tap_factory, sink):
    tap = tap_factory(sink.port, "--workers", "2", "--max-sessions", "2")
    old = workers_of(tap, 2)
    held = [SmtpClient(tap.port) for _ in range(2)]
    for c in held:
        assert c.code() == 220
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    for c in held:
        c.read_until_eof(5)
    new = workers_of(tap, 2, replacing=old)
    assert "killed by signal 9" in tap.stderr()
    # The dead workers' two places are free again: two sessions are admitted.
    assert all(pid_alive(p) for p in new)
    again = [SmtpClient(tap.port) for _ in range(2)]
    for c in again:
        assert c.code() == 220
        c.expect("QUIT", 221)
    assert tap.stop() == 0


@pytest.mark.limit(40)
def test_a_worker_stuck_past_the_grace_period_is_killed(tap_factory, sink):
    """SIGTERM: a worker that has not ended --grace + 10 seconds later is killed, and the
    supervisor still exits 0.  (A stopped worker stands for one that hangs.)"""
    tap = tap_factory(sink.port, "--workers", "2", "--grace", "1")
    stuck, other = workers_of(tap, 2)
    os.kill(stuck, signal.SIGSTOP)
    t0 = time.monotonic()
    tap.signal(signal.SIGTERM)
    harness.wait_until(lambda: not pid_alive(other), 5, what="the other worker to end")
    assert pid_alive(stuck)
    assert tap.wait_exit(20) == 0
    assert time.monotonic() - t0 >= 10, "killed before --grace + 10 seconds"
    assert not pid_alive(stuck)
    assert "1 workers still running: killing them" in tap.stderr()
    assert "killed by signal 9" in tap.stderr()


@pytest.mark.limit(30)
def test_workers_end_when_the_supervisor_is_killed(tap_factory, sink):
    tap = tap_factory(sink.port, "--workers", "2")
    pids = workers_of(tap, 2)
    tap.signal(signal.SIGKILL)
    tap.wait_exit(5)
    harness.wait_until(lambda: not any(pid_alive(p) for p in pids), 5,
                       what="the workers to end with their supervisor")
    assert harness.port_refuses(tap.port)


@pytest.mark.limit(30)
def test_sighup_reopens_the_events_file_in_every_worker(tap_factory, sink):
    tap = tap_factory(sink.port, "--workers", "2")
    workers_of(tap, 2)
    for _ in range(10):
        one_session(tap.port)
    first = tap.wait_events(10)
    rotated = tap.events_path + ".1"
    os.rename(tap.events_path, rotated)
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: tap.stderr().count("events file %s reopened" % tap.events_path) >= 3,
                       3, what="the supervisor and both workers to reopen")
    for _ in range(10):
        one_session(tap.port)
    second = tap.wait_events(10)
    assert len(tap.events(rotated)) == 10
    assert not {e["session"] for e in first} & {e["session"] for e in second}


@pytest.mark.limit(60)
def test_event_lines_to_a_pipe_never_interleave(tap_factory, sink):
    """--events - with two workers writing into one pipe: every line whole."""
    tap = tap_factory(sink.port, "--workers", "2", start=False)
    tap.events_path = "-"
    tap.proc = subprocess.Popen(tap.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=open(tap.stderr_path, "wb"), cwd=tap.workdir)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.append(tap.proc.stdout.read()), daemon=True)
    reader.start()
    harness.wait_listening(tap.port, 5, alive=tap.alive)
    smtp_source(tap.port, 40, 400)
    sink.wait_messages(400, timeout=20)
    assert tap.stop() == 0
    reader.join(5)
    lines = chunks[0].split(b"\n")
    assert lines.pop() == b""
    evs = [json.loads(l) for l in lines]
    assert len(evs) == 400
    assert len({e["session"] for e in evs}) == 400


@pytest.mark.skipif(not harness.IS_ROOT, reason="needs root")
@pytest.mark.limit(30)
def test_workers_run_as_user_with_no_capability(tap_factory, sink):
    """--user: root is dropped once, before the workers are forked; none of them is root."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    tap = tap_factory(sink.port, "--workers", "2", "--user", "nobody")
    pids = workers_of(tap, 2)
    for pid in [tap.pid] + pids:
        assert hp.uids(pid) == (nobody.pw_uid,) * 4, (pid, hp.proc_status(pid)["Uid"])
        assert hp.gids(pid) == (nobody.pw_gid,) * 4, (pid, hp.proc_status(pid)["Gid"])
        assert int(hp.proc_status(pid)["CapEff"], 16) == 0, pid
    for _ in range(6):
        hp.normal_session(tap, sink=sink)


@pytest.mark.limit(40)
def test_implicit_tls_in_every_worker(tap_factory, sink, certs):
    """Each worker has its own socket of the --listen-tls address and its own TLS state."""
    from tls_peers import client_context

    tls_port = harness.free_port()
    tap = tap_factory(sink.port, "--workers", "2", "--listen-tls", "127.0.0.1:%d" % tls_port,
                      *certs.proxy_args("proxy"))
    harness.wait_listening(tls_port, 5.0, alive=tap.alive)
    workers_of(tap, 2)
    ctx = client_context(certs.pem("proxy"), check_hostname=False)
    for i in range(12):
        c = SmtpClient(tls_port)
        c.sock = ctx.wrap_socket(c.sock)
        assert c.code() == 220
        c.expect("EHLO client.example", 250)
        c.expect("MAIL FROM:<a@example.com>", 250)
        c.expect("RCPT TO:<b@example.net>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: tls %d\r\n\r\nover implicit TLS\r\n.\r\n" % i)
        assert c.code() == 250
        c.expect("QUIT", 221)
    sink.wait_messages(12)
    evs = tap.wait_events(12)
    assert all(e["tls"]["client"]["version"].startswith("TLSv1.") for e in evs), evs[0]
    assert workers_that_served(tap) == {1, 2}, tap.stderr()[-2000:]


def noop_reply(port):
    c = SmtpClient(port)
    assert c.code() == 220
    r = c.cmd("NOOP")
    c.expect("QUIT", 221)
    return r


@pytest.mark.limit(40)
def test_sighup_new_rules_in_every_worker_and_in_a_replacement(tap_factory, fake_server,
                                                                workdir):
    """Rules reloaded on SIGHUP apply in both workers, and in a worker started after it (the
    supervisor reloads too, so a replacement does not come back with the first rules)."""
    path = os.path.join(workdir, "policy.rules")
    with open(path, "w") as f:
        f.write("command /^NOOP/ REJECT 550 5.7.1 old rules\n")
    srv = fake_server(harness.SmtpServerScript())
    tap = tap_factory(srv.port, "--workers", "2", "--rules", path)
    old = workers_of(tap, 2)
    assert noop_reply(tap.port) == [b"550 5.7.1 old rules\r\n"]
    with open(path, "w") as f:
        f.write("command /^NOOP/ REJECT 550 5.7.1 new rules\n")
    tap.signal(signal.SIGHUP)
    harness.wait_until(lambda: tap.stderr().count("rules reloaded: 1 rules") >= 3, 5,
                       what="the supervisor and both workers to reload")
    assert {tuple(noop_reply(tap.port)) for _ in range(12)} == {(b"550 5.7.1 new rules\r\n",)}
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    workers_of(tap, 2, replacing=old)
    assert {tuple(noop_reply(tap.port)) for _ in range(12)} == {(b"550 5.7.1 new rules\r\n",)}


@pytest.mark.limit(20)
def test_workers_auto_starts_one_per_cpu(tap_factory, sink):
    cpus = min(os.sysconf("SC_NPROCESSORS_ONLN"), 64)
    tap = tap_factory(sink.port, "--workers", "auto")
    if cpus > 1:
        assert len(workers_of(tap, cpus)) == cpus
    else:  # one process serves the sessions itself, without a supervisor
        assert children(tap.pid) == []
    one_session(tap.port)
    tap.wait_events(1)
    assert tap.stop() == 0
