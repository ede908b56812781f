#!/usr/bin/env python3
"""smtptap bench: direct vs HAProxy (TCP mode) vs smtptap, in one run.

usage: bench.py --smtptap PATH --tmp DIR --logs DIR --out FILE

Run it through bench/run.sh (`make bench`), which raises the open-file limit,
creates the directories and stops by PID whatever this script leaves behind.  Every process
started here is written to DIR/pids while it runs.

Measured, each path in the same run, repeated and interleaved:
  - messages/second with Postfix's smtp-source (4 KiB messages, 50 sessions at a
    time), one message per session and many per session (-d), and each path's
    ratio to direct;
  - the proxy's CPU time per message (utime+stime from /proc/PID/stat);
  - the NOOP round trip added (bench/noop_rtt.py);
  - RSS per idle session over 2,000 open sessions (bench/idle_rss.py against
    bench/idle_acceptor.py), and how many of 10,000 concurrent sessions smtptap
    holds.
Knobs (environment): BENCH_REPS, BENCH_MSGS_ONE, BENCH_MSGS_MANY, BENCH_SESSIONS,
BENCH_MSGLEN, BENCH_NOOP, BENCH_IDLE, BENCH_HOLD (0: skip), BENCH_PATHS (comma
list of direct,haproxy,smtptap,smtptap-1w,smtptap-norec,smtptap-rules,smtptap-table,
smtptap-disk;
default all but smtptap-disk;
smtptap-rules loads bench/rules100.rules: 100 rules, every scope, none matching;
smtptap-table loads them and a sender and a recipient rule on a 100,000-domain table),
BENCH_HAPROXY_NBTHREAD (default: HAProxy's own), BENCH_SMTPTAP_ARGS (options of every
smtptap path but smtptap-1w; default "--workers auto": a worker per CPU, as HAProxy's
threads), BENCH_SMTPTAP_B_ARGS (options of smtptap-b instead: an A/B test of options).
"smtptap-1w" is the same binary as one process (--workers 1), in the default paths.
"smtptap-norec" is the same binary with --no-transcripts --events none: the relay and its
SMTP tracking without the recording, to show what the recording costs.
A proxy's CPU time, RSS and descriptors are those of its process and its children (workers).
"smtptap" writes its journal under --logs (run.sh: the machine's disk, under its scratch
directory; BENCH_LOGS_ON_TMPFS=1: tmpfs); "smtptap-disk" is the same binary writing under
--tmp, to compare the two file systems when --logs is on tmpfs.
BENCH_SMTPTAP_B=/path/to/other/smtptap adds the path "smtptap-b": a second build
measured in the same run (A/B test of a change), transcripts also under --logs.
"""
import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROXIES = ("haproxy", "smtptap")


def env_int(name, default):
    return int(os.environ.get(name, default))


CONF = {
    "reps": env_int("BENCH_REPS", 5),
    "msgs_one": env_int("BENCH_MSGS_ONE", 20000),
    "msgs_many": env_int("BENCH_MSGS_MANY", 60000),
    "sessions": env_int("BENCH_SESSIONS", 50),
    "msglen": env_int("BENCH_MSGLEN", 4096),
    "noop": env_int("BENCH_NOOP", 2000),
    "idle": env_int("BENCH_IDLE", 2000),
    "hold": env_int("BENCH_HOLD", 10000),
    "paths": os.environ.get(
        "BENCH_PATHS",
        "direct,haproxy,smtptap,smtptap-1w,smtptap-norec,smtptap-rules,smtptap-table").split(","),
    "smtptap_args": os.environ.get("BENCH_SMTPTAP_ARGS", "--workers auto").split(),
    "smtptap_b_args": os.environ.get("BENCH_SMTPTAP_B_ARGS"),
    "haproxy_nbthread": os.environ.get("BENCH_HAPROXY_NBTHREAD", ""),
    "warmup_msgs": 2000,
    "client_timeout": 300,
}
MODES = (("one", "one message per session", []),
         ("many", "many messages per session (-d)", ["-d"]))
# Issue 16: smtptap over HAProxy, (lowest msg/s ratio, highest CPU-per-message ratio).
SPEED_BOUNDS = {"one": (1.0, 1.1), "many": (0.9, 1.4)}


class BenchError(Exception):
    pass


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def tool(name):
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not path:
        raise BenchError(name + " not found (Debian: apt-get install postfix haproxy)")
    return path


_ports_given = set()


def free_port():
    """A free loopback port not handed out before in this run: two bind-to-0 probes in a row
    can return the same port."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def tail(path, lines=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


class Procs:
    """Servers started for the bench, each stopped by PID; DIR/pids lists the live ones."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.live = {}

    def _sync(self):
        with open(os.path.join(self.tmp, "pids"), "w") as f:
            for p in self.live.values():
                f.write("%d\n" % p.pid)

    def start(self, name, argv, stdout=None):
        err = open(os.path.join(self.tmp, name + ".err"), "wb")
        out = stdout if stdout is not None else err
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        err.close()
        self.live[name] = p
        self._sync()
        return p

    def stop(self, name, wait=10):
        p = self.live.pop(name, None)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                log("%s (pid %d) ignored SIGTERM for %ds, killing it" % (name, p.pid, wait))
                p.kill()
                p.wait()
        self._sync()
        return p.returncode

    def stop_all(self):
        for name in list(self.live):
            self.stop(name)

    def errfile(self, name):
        return os.path.join(self.tmp, name + ".err")


def smtp_probe(port, timeout=2.0):
    """Return the first reply line a new session on port gets, then QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        buf = b""
        while b"\n" not in buf:
            data = s.recv(512)
            if not data:
                break
            buf += data
        try:
            s.sendall(b"QUIT\r\n")
            s.recv(512)
        except OSError:
            pass
        return buf.split(b"\n")[0].strip()


def wait_smtp(procs, name, port, seconds=10):
    """Wait until a session through port gets a 220 greeting."""
    p = procs.live[name]
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError("%s exited with status %s:\n%s"
                             % (name, p.returncode, tail(procs.errfile(name))))
        try:
            line = smtp_probe(port)
            if line.startswith(b"220"):
                return
            last = "reply %r" % line
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError("%s on port %d gave no 220 greeting within %ds (%s):\n%s"
                     % (name, port, seconds, last, tail(procs.errfile(name))))


def proc_children(pid):
    """A process's children (smtptap's workers), from /proc."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def proc_tree(pid):
    return [pid] + proc_children(pid)


def proc_cpu(pid):
    """(utime, stime) of a process and its children (workers), all threads, in seconds.
    A child that ended during the run would be missed: the run checks the workers' PIDs."""
    tck = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for p in proc_tree(pid):
        with open("/proc/%d/stat" % p) as f:
            fields = f.read().rpartition(")")[2].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / tck, system / tck


def machine_ticks():
    """(busy, total) clock ticks of all CPUs so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    idle = v[3] + v[4]  # idle and iowait
    return sum(v) - idle, sum(v)


def proc_status(pid, key, tree=True):
    """A /proc/PID/status figure, summed over the process and its children (workers)."""
    total = None
    for p in proc_tree(pid) if tree else [pid]:
        with open("/proc/%d/status" % p) as f:
            for line in f:
                if line.startswith(key + ":"):
                    total = (total or 0) + int(line.split()[1])
    return total


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def proc_fds(pid):
    return sum(fd_count(p) for p in proc_tree(pid))


def start_sink(procs, tools):
    port = free_port()
    argv = [tools["smtp-sink"]]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    argv += ["127.0.0.1:%d" % port, "1000"]
    procs.start("smtp-sink", argv)
    wait_smtp(procs, "smtp-sink", port)
    return port


def start_haproxy(procs, tools, name, upstream_port):
    port = free_port()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    maxconn = min(20000, (nofile - 100) // 2)
    with open(os.path.join(HERE, "haproxy.cfg.in")) as f:
        cfg = f.read()
    nbthread = CONF["haproxy_nbthread"]
    cfg = (cfg.replace("@MAXCONN@", str(maxconn))
              .replace("@NBTHREAD@", "    nbthread %s" % nbthread if nbthread else "")
              .replace("@LISTEN@", "127.0.0.1:%d" % port)
              .replace("@UPSTREAM@", "127.0.0.1:%d" % upstream_port))
    cfgpath = os.path.join(procs.tmp, name + ".cfg")
    with open(cfgpath, "w") as f:
        f.write(cfg)
    procs.start(name, [tools["haproxy"], "-db", "-f", cfgpath])
    wait_smtp(procs, name, port)
    return port, maxconn


RULES100 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rules100.rules")
# smtptap-norec: the same relay without its recording.
NOREC_ARGS = ["--no-transcripts", "--events", "none"]


TABLE_ENTRIES = 100000


def table_rules(d):
    """A table of 100,000 domains (none of smtp-source's) and a rule file naming it twice."""
    table = os.path.join(d, "domains100k")
    with open(table, "w") as f:
        for i in range(TABLE_ENTRIES):
            f.write("blocked%d.example REJECT 550 5.7.1 Domain %d not permitted\n" % (i, i))
    rules = os.path.join(d, "table.rules")
    with open(rules, "w") as f:
        f.write("sender table:%s REJECT\nrecipient table:%s REJECT\n" % (table, table))
    return rules


def start_smtptap(procs, smtptap, name, upstream_port, logdir):
    port = free_port()
    d = os.path.join(procs.tmp, name)
    os.makedirs(d, exist_ok=True)
    argv = [smtptap, "--listen", "127.0.0.1:%d" % port,
            "--upstream", "127.0.0.1:%d" % upstream_port,
            "--log-dir", logdir,
            "--events", os.path.join(d, "events.jsonl"),
            "--max-sessions", "20000"]
    if name == "smtptap-1w":
        argv += ["--workers", "1"]
    elif name == "smtptap-b" and CONF["smtptap_b_args"] is not None:
        argv += CONF["smtptap_b_args"].split()
    else:
        argv += CONF["smtptap_args"]
    if name == "smtptap-norec":
        argv += NOREC_ARGS
    if name == "smtptap-rules":
        argv += ["--rules", RULES100]  # 100 rules across every scope, none matching
    if name == "smtptap-table":
        # The same 100 rules, and a sender and a recipient rule on a 100,000-domain table.
        argv += ["--rules", RULES100, "--rules", table_rules(d)]
    procs.start(name, argv)
    try:
        wait_smtp(procs, name, port)
    except BenchError as e:
        raise BenchError("%s\n(to bench without smtptap: BENCH_PATHS=direct,haproxy)" % e)
    return port


def tally_transcripts(logdir, acc, delete):
    """Count (and on tmpfs delete) the transcripts written so far: proof of recording."""
    for root, _, files in os.walk(logdir):
        for f in files:
            path = os.path.join(root, f)
            try:
                acc["transcripts"] = acc.get("transcripts", 0) + 1
                acc["transcript_bytes"] = acc.get("transcript_bytes", 0) + os.path.getsize(path)
                if delete:
                    os.unlink(path)
            except OSError:
                pass


def journal_octets(logdir):
    """Octets in the journal files (LOGDIR/YYYY-MM-DD.log) now."""
    total = 0
    try:
        names = os.listdir(logdir)
    except OSError:
        return 0
    for n in names:
        if n.endswith(".log"):
            try:
                total += os.path.getsize(os.path.join(logdir, n))
            except OSError:
                pass
    return total


def run_source(tools, port, msgs, extra):
    t = CONF["client_timeout"]
    argv = ["timeout", "-k", "5", str(t), tools["smtp-source"]] + extra + [
        "-s", str(CONF["sessions"]), "-l", str(CONF["msglen"]), "-m", str(msgs),
        "-M", "bench.example", "127.0.0.1:%d" % port]
    t0 = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=t + 15)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError("smtp-source %s exited %d: %s"
                         % (" ".join(argv[4:]), r.returncode,
                            (r.stderr or r.stdout).decode(errors="replace").strip()[-400:]))
    return dt


def bench_throughput(ports, pids, tools, logdirs, recorded):
    """msg/s and proxy CPU per message, per mode and path, REPS interleaved runs."""
    out = {}
    for mode, label, extra in MODES:
        msgs = CONF["msgs_" + mode]
        for path in ports:
            run_source(tools, ports[path], CONF["warmup_msgs"], extra)
        runs = {path: [] for path in ports}
        for rep in range(CONF["reps"]):
            for path, port in ports.items():
                pid = pids.get(path)
                cpu0 = proc_cpu(pid) if pid else None
                jdir = logdirs.get(path)
                j0 = journal_octets(jdir) if jdir else 0
                busy0, total0 = machine_ticks()
                dt = run_source(tools, port, msgs, extra)
                busy1, total1 = machine_ticks()
                run = {"seconds": round(dt, 4), "msgs_per_s": round(msgs / dt, 1),
                       "machine_busy_pct": round(100.0 * (busy1 - busy0)
                                                 / max(1, total1 - total0), 1)}
                if pid:
                    cpu1 = proc_cpu(pid)
                    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
                    run["cpu_us_per_msg"] = round((user + system) / msgs * 1e6, 2)
                    run["cpu_user_us_per_msg"] = round(user / msgs * 1e6, 2)
                    run["cpu_sys_us_per_msg"] = round(system / msgs * 1e6, 2)
                if jdir:
                    # Journal octets written per message octet (smtp-source's -l).  The
                    # once-a-second batch may lag: measured after a second's wait.
                    time.sleep(1.1)
                    run["journal_octets_per_msg_octet"] = round(
                        (journal_octets(jdir) - j0) / (msgs * CONF["msglen"]), 3)
                runs[path].append(run)
                if path in ("smtptap", "smtptap-1w", "smtptap-b"):
                    # tmpfs: count and delete as we go so that RAM stays bounded.
                    # Not on disk: see the note on deleting files in run.sh.
                    tally_transcripts(logdirs[path], recorded.setdefault(path, {}), True)
                log("%s rep %d/%d %-8s %8.0f msg/s%s%s" % (
                    mode, rep + 1, CONF["reps"], path, run["msgs_per_s"],
                    "  cpu %.1f us/msg" % run["cpu_us_per_msg"] if pid else "",
                    "  journal %.2f octets/msg octet" % run["journal_octets_per_msg_octet"]
                    if "journal_octets_per_msg_octet" in run else ""))
                time.sleep(0.3)
        res = {"label": label, "messages": msgs, "paths": {}}
        for path, rs in runs.items():
            r = {"runs": rs, "median_msgs_per_s": round(
                statistics.median(x["msgs_per_s"] for x in rs), 1),
                 "median_machine_busy_pct": round(
                statistics.median(x["machine_busy_pct"] for x in rs), 1)}
            if path in pids:
                for k in ("cpu", "cpu_user", "cpu_sys"):
                    r["median_%s_us_per_msg" % k] = round(
                        statistics.median(x["%s_us_per_msg" % k] for x in rs), 2)
            if all("journal_octets_per_msg_octet" in x for x in rs):
                r["median_journal_octets_per_msg_octet"] = round(
                    statistics.median(x["journal_octets_per_msg_octet"] for x in rs), 3)
            res["paths"][path] = r
        if "direct" in res["paths"]:
            base = res["paths"]["direct"]["median_msgs_per_s"]
            for path, r in res["paths"].items():
                r["ratio_to_direct"] = round(r["median_msgs_per_s"] / base, 3)
                r["per_rep_ratio_median"] = round(statistics.median(
                    r["runs"][i]["msgs_per_s"] / res["paths"]["direct"]["runs"][i]["msgs_per_s"]
                    for i in range(CONF["reps"])), 3)
        out[mode] = res
    return out


def bench_noop(ports):
    """Median NOOP round trip per path, REPS interleaved connections of NOOP each."""
    meds = {path: [] for path in ports}
    script = os.path.join(HERE, "noop_rtt.py")
    for rep in range(CONF["reps"]):
        for path, port in ports.items():
            r = subprocess.run(["timeout", "-k", "5", "120", sys.executable, script,
                                "127.0.0.1", str(port), str(CONF["noop"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=130)
            if r.returncode != 0:
                raise BenchError("noop_rtt via %s exited %d: %s" % (
                    path, r.returncode, r.stderr.decode(errors="replace").strip()[-400:]))
            meds[path].append(json.loads(r.stdout))
    out = {}
    for path, rs in meds.items():
        out[path] = {"median_us": round(statistics.median(x["median_us"] for x in rs), 1),
                     "p99_us": round(statistics.median(x["p99_us"] for x in rs), 1),
                     "runs": rs}
    if "direct" in out:
        for path, r in out.items():
            r["added_us"] = round(r["median_us"] - out["direct"]["median_us"], 1)
    return out


class IdleClient:
    """bench/idle_rss.py holding COUNT sessions open until released."""

    def __init__(self, port, count, deadline):
        script = os.path.join(HERE, "idle_rss.py")
        self.p = subprocess.Popen(
            ["timeout", "-k", "5", str(int(deadline) + 120), sys.executable, script,
             "127.0.0.1", str(port), str(count), str(deadline)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            raise BenchError("idle_rss.py exited %s: %s" % (
                self.p.returncode, self.p.stderr.read().decode(errors="replace")[-400:]))
        self.stats = json.loads(line)

    def release(self):
        try:
            self.p.stdin.write(b"\n")
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def wait_quiet(pid, fds, seconds=15):
    """Wait until the proxy is back to (about) fds descriptors: its sessions have ended."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc_fds(pid) > fds + 2:
        time.sleep(0.2)


def bench_idle(procs, tools, smtptap, paths, logbase):
    """RSS per idle session through each proxy, then BENCH_HOLD sessions through smtptap."""
    acc_port = free_port()
    procs.start("idle-acceptor", [sys.executable, os.path.join(HERE, "idle_acceptor.py"),
                                  "127.0.0.1", str(acc_port)])
    wait_smtp(procs, "idle-acceptor", acc_port)
    out = {"sessions": CONF["idle"], "paths": {}}
    for path in PROXIES:
        if path not in paths:
            continue
        name = path + "-idle"
        if path == "haproxy":
            port, _ = start_haproxy(procs, tools, name, acc_port)
        else:
            port = start_smtptap(procs, smtptap, name, acc_port, os.path.join(logbase, name))
        pid = procs.live[name].pid
        time.sleep(1)
        rss0, fds0 = proc_status(pid, "VmRSS"), proc_fds(pid)
        client = IdleClient(port, CONF["idle"], 60)
        time.sleep(1)
        rss1, fds1 = proc_status(pid, "VmRSS"), proc_fds(pid)
        client.release()
        greeted = client.stats["greeted"]
        r = {"rss_before_kib": rss0, "rss_after_kib": rss1, "greeted": greeted,
             "fds_before": fds0, "fds_after": fds1, "client": client.stats,
             "kib_per_session": round((rss1 - rss0) / greeted, 2) if greeted else None,
             "fds_per_session": round((fds1 - fds0) / greeted, 2) if greeted else None}
        log("idle %-8s %d sessions greeted, RSS %d -> %d KiB, %s KiB/session, %s fds/session"
            % (path, greeted, rss0, rss1, r["kib_per_session"], r["fds_per_session"]))
        out["paths"][path] = r
        if path == "smtptap" and CONF["hold"]:
            out["hold"] = bench_hold(procs, name, port, pid, fds0, r["fds_per_session"])
        procs.stop(name)
    procs.stop("idle-acceptor")
    return out


def fd_ceiling(pid, nofile, fds_per_session):
    """About how many sessions the open-file limit leaves room for, over the serving processes."""
    if not fds_per_session:
        return None
    serving = proc_children(pid) or [pid]
    used = sum(fd_count(p) for p in serving)
    return int((len(serving) * nofile - used) / fds_per_session)


def bench_hold(procs, name, port, pid, fds0, fds_per_session):
    """Open BENCH_HOLD sessions at once through smtptap; count the greetings."""
    wait_quiet(pid, fds0)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = fd_ceiling(pid, nofile[0], fds_per_session)
    client = IdleClient(port, CONF["hold"], 60)
    time.sleep(1)
    alive = procs.live[name].poll() is None
    r = {"requested": CONF["hold"], "greeted": client.stats["greeted"],
         "client": client.stats, "smtptap_alive": alive,
         "smtptap_fds": proc_fds(pid) if alive else None,
         "smtptap_rss_kib": proc_status(pid, "VmRSS") if alive else None,
         "rlimit_nofile": list(nofile),
         "processes": len(proc_tree(pid)) if alive else None,
         # Each serving process (each worker, or the one process) has its own table.
         "fd_ceiling_sessions": ceiling}
    client.release()
    log("hold %d/%d sessions greeted through smtptap (fds %s, RSS %s KiB)"
        % (r["greeted"], r["requested"], r["smtptap_fds"], r["smtptap_rss_kib"]))
    if alive:
        wait_quiet(pid, fds0)
        try:
            r["answers_after"] = smtp_probe(port).startswith(b"220")
        except OSError:
            r["answers_after"] = False
    return r


def version(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
        return r.stdout.decode(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def environment(tools, smtptap, paths):
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "haproxy": version([tools["haproxy"], "-v"]),
        "postfix": version(["postconf", "-dh", "mail_version"]),
        "smtptap": version([smtptap, "--version"]) if paths else None,
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "loadavg_start": os.getloadavg()[0],
        "commit": version(["git", "-C", os.path.dirname(HERE), "describe", "--always",
                           "--dirty"]),
    }


def fmt(v, spec="%.0f"):
    return "-" if v is None else spec % v


def met(ok):
    return "met" if ok else "NOT met"


def report(res):
    """The table printed at the end of a run."""
    c, e = res["config"], res["env"]
    w = max(len(p) for p in c["paths"] + ["proxy"])
    lines = ["", "smtptap bench  %s  %s CPUs (%s), kernel %s" % (
        e["date"], e["cpus"], e["cpu"], e["kernel"]),
        "  %s; postfix %s smtp-source/smtp-sink; %s (tree %s)" % (
            (e["haproxy"] or "haproxy ?").split(" - ")[0], e["postfix"],
            e["smtptap"] or "smtptap not run", e.get("commit")),
        "  haproxy: mode tcp, maxconn %s, %s threads; smtptap: --record body (full transcripts)%s%s"
        % (res.get("haproxy_maxconn"), res.get("haproxy_threads"),
           ", %s (%s processes with the supervisor)" % (
               " ".join(c["smtptap_args"]), res["smtptap_processes"]["smtptap"])
           if "smtptap" in res.get("smtptap_processes", {}) else "",
           ("; smtptap-1w: --workers 1" if "smtptap-1w" in c["paths"] else "") +
           ("; smtptap-norec: " + " ".join(NOREC_ARGS)
            if "smtptap-norec" in c["paths"] else "")),
        "  smtptap --log-dir on %s%s%s" % (
            res.get("logfs"), "; smtptap-disk: --log-dir on " + res.get("diskfs", "?")
            if "smtptap-disk" in c["paths"] else "",
            "; smtptap-b: " + e.get("smtptap_b", "") if "smtptap-b" in c["paths"] else ""),
        "  %d-octet messages, %d sessions at a time, %d interleaved runs per figure, medians"
        % (c["msglen"], c["sessions"], c["reps"]),
        "  1-min load average %.2f before the run%s" % (
            e["loadavg_start"], " (something else was running: expect noise)"
            if e["loadavg_start"] > 0.7 else ""), ""]
    tp = res["throughput"]
    head = "%-*s" % (w, "path")
    sub = "%-*s" % (w, "")
    for mode, label, _ in MODES:
        head += " | %-40s" % ("%s (%d msgs)" % (label, tp[mode]["messages"]))
        sub += " | %8s %8s %22s" % ("msg/s", "x direct", "proxy CPU us/msg (u+s)")
    lines += ["Throughput", head, sub]
    for path in c["paths"]:
        row = "%-*s" % (w, path)
        for mode, _, _ in MODES:
            r = tp[mode]["paths"][path]
            cpu = "-"
            if r.get("median_cpu_us_per_msg") is not None:
                cpu = "%.1f (%.0f+%.0f)" % (r["median_cpu_us_per_msg"],
                                           r["median_cpu_user_us_per_msg"],
                                           r["median_cpu_sys_us_per_msg"])
            row += " | %8.0f %8s %22s" % (r["median_msgs_per_s"],
                                          fmt(r.get("ratio_to_direct"), "%.2f"), cpu)
        lines.append(row)
    # Why msg/s and CPU per message need not move together: a proxy that leaves the cores
    # idle while source and sink wait on it loses msg/s without spending more CPU.
    lines += ["", "Machine CPU busy during those runs (all processes, all %d CPUs; medians)"
              % e["cpus"]]
    for path in c["paths"]:
        lines.append("%-*s | %s" % (w, path, "  ".join(
            "%s %3.0f%%" % (mode, tp[mode]["paths"][path]["median_machine_busy_pct"])
            for mode, _, _ in MODES)))
    lines += ["", "NOOP round trip (%d per connection, median of %d connections)"
              % (c["noop"], c["reps"]),
              "%-*s | %10s %10s %10s" % (w, "path", "median us", "p99 us", "added us")]
    for path in c["paths"] if res["noop"] else []:
        r = res["noop"][path]
        lines.append("%-*s | %10.1f %10.1f %10s" % (w, path, r["median_us"], r["p99_us"],
                                                     fmt(r.get("added_us"), "%+.1f")))
    idle = res["idle"]
    lines += ["", "Idle sessions (%d open through the proxy, upstream bench/idle_acceptor.py)"
              % idle["sessions"],
              "%-*s | %8s %14s %13s %12s %12s" % (w, "proxy", "greeted", "RSS before KiB",
                                                  "RSS after KiB", "KiB/session",
                                                  "fds/session")]
    for path, r in idle["paths"].items():
        lines.append("%-*s | %8d %14d %13d %12s %12s" % (
            w, path, r["greeted"], r["rss_before_kib"], r["rss_after_kib"],
            fmt(r["kib_per_session"], "%.2f"), fmt(r["fds_per_session"], "%.2f")))
    hold = idle.get("hold")
    if hold:
        lines += ["", "Concurrent sessions through smtptap: %d of %d greeted; smtptap %s, "
                  "%s fds, RSS %s KiB in %s processes" % (
                      hold["greeted"], hold["requested"],
                      "alive" if hold["smtptap_alive"] else "DEAD", hold["smtptap_fds"],
                      hold["smtptap_rss_kib"], hold.get("processes")),
                  "  open-file limit %d (hard %d): room for about %s sessions at the fds/session above"
                  % (hold["rlimit_nofile"][0], hold["rlimit_nofile"][1],
                     fmt(hold["fd_ceiling_sessions"], "%d"))]
        if hold["greeted"] < hold["requested"]:
            lines.append("  failures: %s" % json.dumps(hold["client"]["errors"]))
    for k, v in sorted(res.items()):
        if k.endswith("_exit_status_on_sigterm") and v not in (0, None):
            lines.append("%s exited with status %s on SIGTERM" % (k.split("_")[0], v))
    for path, r in sorted(res.get("recorded", {}).items()):
        lines.append("%s recorded during the throughput runs: %d transcripts, %.1f MB, "
                     "%d event lines" % (path, r.get("transcripts", 0),
                                         r.get("transcript_bytes", 0) / 1e6, r.get("events", 0)))
    t = res.get("targets")
    if t:
        lines += ["", "Targets (reported, not asserted)"]
        for k, v in t.items():
            lines.append("  %-40s %s" % (k, v))
        lines.append("  (x (low-high): smtptap's figure over the other's in the same rep, "
                     "median and range over the reps)")
    return "\n".join(lines) + "\n"


def rep_ratios(a, b, key):
    """a's figure over b's, rep by rep (the two ran back to back, under the same load), sorted."""
    return sorted(x[key] / y[key] for x, y in zip(a["runs"], b["runs"]) if y[key])


def paired_ratios(a, b, key):
    """The rep-by-rep ratios' median, lowest and highest."""
    rs = rep_ratios(a, b, key)
    return (statistics.median(rs), rs[0], rs[-1]) if rs else None


def median_interval(a, b, key):
    """A distribution-free interval for the median of the rep-by-rep ratios: the order
    statistics rs[k] and rs[n-1-k] with the largest k that a binomial sign test still puts at
    least 95% around the median.  Below that (few reps) it is the lowest to the highest, and
    the coverage returned says how much less than 95% that is.  With it, how many reps came
    out at 1.0 or more: what says whether a median near a bound is a difference or noise.
    Returns (low, high, coverage, reps at 1.0 or more, reps)."""
    rs = rep_ratios(a, b, key)
    n = len(rs)
    if n == 0:
        return None
    k, tail = 0, 1.0 / 2 ** n  # tail: P(X <= k) for X ~ Binomial(n, 1/2)
    while k + 1 < n - 2 - k:
        wider = tail + math.comb(n, k + 1) / 2.0 ** n
        if wider > 0.025:
            break
        k, tail = k + 1, wider
    return rs[k], rs[n - 1 - k], 1 - 2 * tail, sum(r >= 1.0 for r in rs), n


def fmt_paired(r):
    return "-" if r is None else "%.2fx (%.2f-%.2f)" % r


def fmt_interval(r):
    if r is None:
        return "-"
    low, high, coverage, at_one, n = r
    return "median's %d%% interval %.2f-%.2f, %d of %d reps >= 1.00" % (
        int(coverage * 100), low, high, at_one, n)


def targets(res):
    tp, paths = res["throughput"], res["config"]["paths"]
    t = {}
    if "smtptap" in paths and "haproxy" in paths:
        # Issue 16's bounds, judged on the rep-by-rep ratio (smtptap and HAProxy ran back to
        # back, under the same load), the steadier figure on a shared machine.
        for mode, _, _ in MODES:
            s, h = tp[mode]["paths"]["smtptap"], tp[mode]["paths"]["haproxy"]
            lo, hi = SPEED_BOUNDS[mode]
            rate = paired_ratios(s, h, "msgs_per_s")
            cpu = paired_ratios(s, h, "cpu_us_per_msg")
            t["throughput >= %.1fx haproxy, %s/session" % (lo, mode)] = "%s (%.0f vs %.0f msg/s; %s; %s)" % (
                met(rate is not None and rate[0] >= lo),
                s["median_msgs_per_s"], h["median_msgs_per_s"], fmt_paired(rate),
                fmt_interval(median_interval(s, h, "msgs_per_s")))
            t["CPU/msg <= %.1fx haproxy, %s/session" % (hi, mode)] = "%s (%.1f vs %.1f us; %s)" % (
                met(cpu is not None and cpu[0] <= hi),
                s["median_cpu_us_per_msg"], h["median_cpu_us_per_msg"], fmt_paired(cpu))
    if "smtptap-norec" in paths and "haproxy" in paths:
        # The relay without the recording, against HAProxy; and what the recording adds.
        for mode, _, _ in MODES:
            n, h = tp[mode]["paths"]["smtptap-norec"], tp[mode]["paths"]["haproxy"]
            s = tp[mode]["paths"].get("smtptap")
            t["no recording: smtptap-norec over haproxy, %s" % mode] = (
                "msg/s %s, CPU/msg %s (%.1f vs %.1f us)" % (
                    fmt_paired(paired_ratios(n, h, "msgs_per_s")),
                    fmt_paired(paired_ratios(n, h, "cpu_us_per_msg")),
                    n["median_cpu_us_per_msg"], h["median_cpu_us_per_msg"]))
            if s is not None:
                t["recording's cost: smtptap over smtptap-norec, %s" % mode] = (
                    "CPU/msg %s (+%.1f us user, +%.1f us sys)" % (
                        fmt_paired(paired_ratios(s, n, "cpu_us_per_msg")),
                        s["median_cpu_user_us_per_msg"] - n["median_cpu_user_us_per_msg"],
                        s["median_cpu_sys_us_per_msg"] - n["median_cpu_sys_us_per_msg"]))
    if "smtptap" in paths and "smtptap-b" in paths:
        for mode, _, _ in MODES:
            s, b = tp[mode]["paths"]["smtptap"], tp[mode]["paths"]["smtptap-b"]
            t["A/B: smtptap over smtptap-b, %s/session" % mode] = "msg/s %s, CPU/msg %s" % (
                fmt_paired(paired_ratios(s, b, "msgs_per_s")),
                fmt_paired(paired_ratios(s, b, "cpu_us_per_msg")))
    # The rule paths against smtptap without rules, judged as HAProxy's above: on the
    # rep-by-rep ratio (the two medians of five reps each can differ by 7% on noise alone).
    for path, label, bound in (("smtptap-rules", "100 rules", 0.9),
                               ("smtptap-table", "100 rules + 100,000-domain table", 0.95)):
        if "smtptap" not in paths or path not in paths:
            continue
        for mode, _, _ in MODES:
            s, r = tp[mode]["paths"]["smtptap"], tp[mode]["paths"][path]
            rate = paired_ratios(r, s, "msgs_per_s")
            t["%s >= %.2g x smtptap, %s/session" % (label, bound, mode)] = \
                "%s (%.0f vs %.0f msg/s; %s)" % (
                    met(rate is not None and rate[0] >= bound), r["median_msgs_per_s"],
                    s["median_msgs_per_s"], fmt_paired(rate))
    idle = res["idle"]["paths"].get("smtptap")
    if idle and idle["kib_per_session"] is not None:
        t["<= 8 KiB RSS per idle session"] = "%s (%.2f KiB)" % (
            met(idle["kib_per_session"] <= 8), idle["kib_per_session"])
    hold = res["idle"].get("hold")
    if hold:
        note = ""
        ceiling = hold.get("fd_ceiling_sessions")
        if hold["greeted"] < 10000 and ceiling is not None and hold["greeted"] >= ceiling:
            note = ": every session the open-file limit %d leaves room for" % (
                hold["rlimit_nofile"][0])
        t["10,000 concurrent sessions held"] = "%s (%d%s)" % (
            met(hold["greeted"] >= 10000), hold["greeted"], note)
    return t


def fs_type(path):
    """File system type of the mount holding path (from /proc/mounts)."""
    path, best, kind = os.path.realpath(path), "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                mnt = fields[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, fields[2]
    except OSError:
        pass
    return "%s (%s)" % (kind, best)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smtptap", required=True)
    ap.add_argument("--tmp", required=True, help="scratch directory")
    ap.add_argument("--logs", required=True, help="where smtptap's transcripts go")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if os.environ.get("BENCH_SMTPTAP_B") and "smtptap-b" not in CONF["paths"]:
        CONF["paths"].append("smtptap-b")
    paths = [p for p in ("direct", "haproxy", "smtptap", "smtptap-1w", "smtptap-norec",
                         "smtptap-rules", "smtptap-table", "smtptap-b", "smtptap-disk")
             if p in CONF["paths"]]
    CONF["paths"] = paths
    taps = [p for p in paths if p.startswith("smtptap")]
    # Every smtptap path runs the build under test but smtptap-b.
    binaries = {tap: os.environ.get("BENCH_SMTPTAP_B") if tap == "smtptap-b" else args.smtptap
                for tap in taps}
    tools = {t: tool(t) for t in ("smtp-source", "smtp-sink", "haproxy")}
    for tap in taps:
        if not binaries[tap] or not os.access(binaries[tap], os.X_OK):
            raise BenchError("%s: %s is not an executable (make first; or "
                             "BENCH_PATHS=direct,haproxy)" % (tap, binaries[tap]))
    # SIGTERM from run.sh's trap: leave through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Procs(args.tmp)
    res = {"config": dict(CONF), "env": environment(tools, args.smtptap, taps),
           "logfs": fs_type(args.logs), "diskfs": fs_type(args.tmp)}
    if "smtptap-b" in taps:
        res["env"]["smtptap_b"] = binaries["smtptap-b"]
    # Each logs under its name: on the --logs file system, smtptap-disk under --tmp.
    logdirs = {tap: os.path.join(args.tmp, tap, "logs") if tap == "smtptap-disk"
               else os.path.join(args.logs, tap) for tap in taps}
    t0 = time.monotonic()
    try:
        sink = start_sink(procs, tools)
        ports, pids = {"direct": sink}, {}
        if "haproxy" in paths:
            ports["haproxy"], res["haproxy_maxconn"] = start_haproxy(procs, tools, "haproxy", sink)
            pids["haproxy"] = procs.live["haproxy"].pid
            res["haproxy_threads"] = proc_status(pids["haproxy"], "Threads", tree=False)
        for tap in taps:
            ports[tap] = start_smtptap(procs, binaries[tap], tap, sink, logdirs[tap])
            pids[tap] = procs.live[tap].pid
        time.sleep(0.5)
        workers = {tap: proc_children(pids[tap]) for tap in taps}
        res["smtptap_processes"] = {tap: 1 + len(w) for tap, w in workers.items()}
        ports = {p: ports[p] for p in paths}
        log("ports: %s; smtp-sink upstream %d" % (ports, sink))
        recorded = {}
        res["throughput"] = bench_throughput(ports, pids, tools, logdirs, recorded)
        res["noop"] = bench_noop(ports) if CONF["noop"] > 0 else {}
        for tap in taps:
            if proc_children(pids[tap]) != workers[tap]:
                raise BenchError("%s: a worker was replaced during the run (see %s): its CPU "
                                 "time is lost" % (tap, procs.errfile(tap)))
        for name in taps + ["haproxy", "smtp-sink"]:
            rc = procs.stop(name)
            if name in taps:
                res["%s_exit_status_on_sigterm" % name] = rc
                try:
                    with open(os.path.join(args.tmp, name, "events.jsonl"), "rb") as f:
                        recorded.setdefault(name, {})["events"] = sum(1 for _ in f)
                except OSError:
                    pass
        for tap in taps:
            tally_transcripts(logdirs[tap], recorded.setdefault(tap, {}), False)
        res["recorded"] = recorded
        res["idle"] = (bench_idle(procs, tools, args.smtptap, paths, args.logs)
                       if CONF["idle"] > 0 else {"sessions": 0, "paths": {}})
    finally:
        procs.stop_all()
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["env"]["loadavg_end"] = os.getloadavg()[0]
    res["targets"] = targets(res)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    sys.stdout.write(report(res))
    print("\nresults: %s (%.0f s)" % (args.out, res["seconds"]))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit("bench: %s" % e)
