"""Transparent interception inside a network namespace of its own (issue 14 section 3).

Run by test_transparent.py as `timeout N unshare -n python3 netns_driver.py MODE SMTPTAP WORKDIR`
(root): it sets up the namespace's loopback and nft rules, starts smtp-sink on 192.0.2.25:25
and smtptap by PID, sends a message to 192.0.2.25:25 with smtplib, stops both, and prints one
JSON object with what it saw for the test to assert on.  Nothing here outlives the namespace.

MODE redirect: an nft `redirect` in the output hook sends port 25 to smtptap's --listen, except
traffic with smtptap's --upstream-mark (SO_ORIGINAL_DST gives the destination).
MODE redirect6: the same over IPv6 (2001:db8::25, IP6T_SO_ORIGINAL_DST).
MODE proxy-v1: redirect with --forward-client proxy-v1, to a small server of its own that
reports the PROXY header it got (its destination must be the original one).
MODE tproxy: locally generated traffic reaches prerouting only when policy routing sends it
round through lo: an output `route` chain marks it, `ip rule fwmark` routes marked packets to
table 100 (`local` on lo), and a prerouting `tproxy` rule hands them to
--listen-transparent (the accepted socket's own address is the destination).
"""

import json
import os
import smtplib
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

DEST = "192.0.2.25"
DEST6 = "2001:db8::25"
MARK = 0x2A
TAP_PORT = 2525
FROM = "alice@client.test"
TO = "bob@example.com"
BODY = "Subject: intercepted\r\n\r\nthrough the interceptor\r\n"


def sh(*cmd):
    r = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    if r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stdout.decode("utf-8", "replace")))
    return r.stdout.decode("utf-8", "replace")


def nft(rule):
    sh("nft", rule)


def setup_redirect(family="ip", dest=DEST):
    nft("add table %s nat" % family)
    nft('add chain %s nat out { type nat hook output priority -100; }' % family)
    nft("add rule %s nat out %s daddr %s tcp dport 25 meta mark != %#x redirect to :%d"
        % (family, family, dest, MARK, TAP_PORT))


def setup_redirect6():
    setup_redirect("ip6", DEST6)


def setup_tproxy():
    sh("ip", "rule", "add", "fwmark", "1", "lookup", "100")
    sh("ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    nft("add table ip tp")
    # Output: mark the client's packets to port 25 (not smtptap's own, which carry MARK), so
    # that routing sends them round through lo into prerouting.
    nft('add chain ip tp out { type route hook output priority -150; }')
    nft("add rule ip tp out ip daddr %s tcp dport 25 meta mark != %#x meta mark set 1"
        % (DEST, MARK))
    nft('add chain ip tp pre { type filter hook prerouting priority -150; }')
    # As README's: smtptap's own connections (MARK) arrive from lo too, and are left alone.
    nft("add rule ip tp pre ip daddr %s tcp dport 25 meta mark != %#x tproxy to 127.0.0.1:%d "
        "meta mark set 1 accept" % (DEST, MARK, TAP_PORT))


def send_message(dest):
    """The client's view: the greeting, and the reply to the message (or the error)."""
    out = {}
    try:
        with smtplib.SMTP(dest, 25, timeout=10) as s:
            out["greeting"] = s.ehlo_resp.decode() if s.ehlo_resp else None
            code, _ = s.ehlo("client.test")
            out["ehlo"] = code
            s.sendmail(FROM, [TO], BODY)
            out["sent"] = True
    except (smtplib.SMTPException, OSError) as e:
        out["error"] = repr(e)
    return out


def direct_reply(host):
    """A client that comes straight to smtptap's own port: its original destination is
    smtptap itself (a loop), refused with 421 4.3.0."""
    try:
        with socket.create_connection((host, TAP_PORT), timeout=10) as c:
            c.settimeout(10)
            data = b""
            while b"\r\n" not in data:
                chunk = c.recv(512)
                if not chunk:
                    break
                data += chunk
            return data.decode("utf-8", "replace")
    except OSError as e:
        return repr(e)


class HeaderServer:
    """One SMTP connection on DEST:25: reads the PROXY line before its greeting, then answers
    EHLO and QUIT; self.header is the line."""

    def __init__(self):
        self.header = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((DEST, 25))
        self.sock.listen(5)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as f:
            conn.settimeout(10)
            self.header = f.readline().decode("ascii", "replace")
            conn.sendall(b"220 header.test ESMTP\r\n")
            for line in f:
                verb = line[:4].upper()
                conn.sendall(b"250 header.test\r\n" if verb == b"EHLO" else b"221 bye\r\n")
                if verb == b"QUIT":
                    return

    def stop(self):
        self.sock.close()
        self.thread.join(5)


def ehlo_quit(dest):
    try:
        with smtplib.SMTP(dest, 25, timeout=10) as s:
            return {"ehlo": s.ehlo("client.test")[0]}
    except (smtplib.SMTPException, OSError) as e:
        return {"error": repr(e)}


def run_proxy_v1(binary, workdir, result):
    """--forward-client proxy-v1 under --upstream original: the header the server gets."""
    srv = HeaderServer()
    tap = harness.Smtptap(binary, workdir, 25, ["--upstream-mark", str(MARK), "--forward-client",
                                                 "proxy-v1"],
                          listen=["127.0.0.1:%d" % TAP_PORT], upstream="original")
    try:
        tap.start()
        result["client"] = ehlo_quit(DEST)
        srv.thread.join(10)
        result["header"] = srv.header
        harness.wait_until(lambda: len(tap.event_lines()) >= 1, 5, what="the event")
        result["events"] = tap.events()
    finally:
        tap.stop()
        srv.stop()
        result["stderr"] = tap.stderr()


def main():
    mode, binary, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "addr", "add", DEST + "/32", "dev", "lo")
    result = {"mode": mode}
    setups = {"redirect": setup_redirect, "proxy-v1": setup_redirect, "redirect6": setup_redirect6,
              "tproxy": setup_tproxy}
    try:
        if mode == "redirect6":
            sh("ip", "-6", "addr", "add", DEST6 + "/128", "dev", "lo", "nodad")
        setups[mode]()
    except RuntimeError as e:
        print(json.dumps({"mode": mode, "setup_failed": str(e)}))
        return
    if mode == "proxy-v1":
        run_proxy_v1(binary, workdir, result)
        print(json.dumps(result))
        return
    dest = DEST6 if mode == "redirect6" else DEST
    tap_host = "::1" if mode == "redirect6" else "127.0.0.1"
    sink = harness.SmtpSink(workdir)
    sink.argv = lambda: ([harness.SMTP_SINK] + (["-u", "nobody"] if harness.IS_ROOT else [])
                         + ["-c", "-d", sink.dumpdir + "/%H%M%S.",
                            "[%s]:25" % dest if ":" in dest else "%s:25" % dest, "100"])
    sink.port = 25
    listen_opt = "--listen-transparent" if mode == "tproxy" else "--listen"
    tap = harness.Smtptap(binary, workdir, 25, ["--upstream-mark", str(MARK)],
                          listen=[], upstream="original")
    tap.extra = [listen_opt, "[%s]:%d" % (tap_host, TAP_PORT) if ":" in tap_host
                 else "%s:%d" % (tap_host, TAP_PORT)] + tap.extra
    procs = []
    try:
        out = open(sink.out_path, "wb")
        sink.proc = subprocess.Popen(sink.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        procs.append(sink)
        # (by /proc: a probe connection to port 25 would itself be intercepted)
        harness.wait_listening(25, 5.0, alive=lambda: sink.proc.poll() is None)
        tap.start(wait=False)
        procs.append(tap)
        harness.wait_listening(TAP_PORT, 5.0, alive=tap.alive)
        result["client"] = send_message(dest)
        result["direct"] = direct_reply(tap_host)
        try:
            sink.wait_messages(1, timeout=5)
        except Exception:  # noqa: BLE001  (reported as the count)
            pass
        result["sink_messages"] = [m.raw.decode("utf-8", "replace") for m in sink.messages()]
        harness.wait_until(lambda: len(tap.event_lines()) >= 2, 5, what="two events")
        result["events"] = tap.events()
        result["transcripts"] = [[(r.kind, r.text) for r in t.records] for t in tap.transcripts()]
    except Exception as e:  # noqa: BLE001  (the test shows it)
        result["exception"] = repr(e)
    finally:
        for p in reversed(procs):
            p.stop()
        result["stderr"] = tap.stderr()
        result["sink_out"] = open(sink.out_path, "rb").read().decode("utf-8", "replace") \
            if os.path.exists(sink.out_path) else ""
    print(json.dumps(result))


if __name__ == "__main__":
    main()
