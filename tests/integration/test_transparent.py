"""Transparent interception (issue 14 section 3): --upstream original, --listen-transparent,
--upstream-mark.  The interception itself runs in a network namespace each test makes
(`unshare -n`, root): netns_driver.py sets up nft and the addresses, runs smtp-sink and smtptap
by PID there, and prints what it saw as JSON."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import harness

DRIVER = os.path.join(harness.HERE, "netns_driver.py")
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
NFT = shutil.which("nft") or "/usr/sbin/nft"


def netns(mode, smtptap_bin, workdir):
    """Runs the driver in a namespace of its own, under a time limit; its JSON result."""
    if not harness.IS_ROOT:
        pytest.skip("needs root for unshare -n and nft")
    if not os.access(NFT, os.X_OK):
        pytest.skip("nft not installed (package nftables)")
    if not os.access(harness.SMTP_SINK, os.X_OK):
        pytest.skip("smtp-sink not installed (package postfix)")
    os.chmod(workdir, 0o755)  # smtp-sink runs as nobody
    r = subprocess.run(["timeout", "40", UNSHARE, "-n", sys.executable, DRIVER, mode,
                        smtptap_bin, workdir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=50)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    result = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert "setup_failed" not in result, result
    assert "exception" not in result, result
    for bad in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
        assert bad not in result.get("stderr", ""), result["stderr"]
    return result


def check_intercepted(res, dest):
    """The client reached dest through smtptap: recorded with dest as the original destination,
    its message at the sink; a client that came straight to smtptap was refused as a loop."""
    assert res["client"].get("sent"), res
    assert len(res["sink_messages"]) == 1, res
    assert "Subject: intercepted" in res["sink_messages"][0], res["sink_messages"]
    ev, loop = res["events"]
    assert ev["original_destination"] == dest, ev
    assert ev["upstream_address"] == dest, ev
    assert ev["reason"] == "quit" and ev["transactions"][0]["code"] == 250, ev
    first = [recs for recs in res["transcripts"] if "original_destination=" + dest in recs[0][1]]
    assert len(first) == 1, res["transcripts"]
    assert first[0][0][1].startswith("connect client="), first[0][0]
    assert ("*", "upstream connected address=" + dest) in [tuple(r) for r in first[0]], first[0]
    assert res["direct"].startswith("421 4.3.0 "), res["direct"]
    assert loop["reason"] == "upstream_loop", loop


@pytest.mark.limit(60)
def test_redirect_original_destination(smtptap_bin, workdir):
    """nft redirect (SO_ORIGINAL_DST): port 25 to smtptap, smtptap's own marked traffic
    exempt (without the mark its upstream connection would be redirected back to it)."""
    check_intercepted(netns("redirect", smtptap_bin, workdir), "192.0.2.25:25")


@pytest.mark.limit(60)
def test_redirect_ipv6_original_destination(smtptap_bin, workdir):
    """The same over IPv6 (IP6T_SO_ORIGINAL_DST), to [2001:db8::25]:25."""
    check_intercepted(netns("redirect6", smtptap_bin, workdir), "[2001:db8::25]:25")


@pytest.mark.limit(60)
def test_tproxy_original_destination(smtptap_bin, workdir):
    """TPROXY (--listen-transparent, IP_TRANSPARENT): local traffic is sent round through lo by
    policy routing (fwmark 1 -> table 100, local route on lo) into the prerouting tproxy rule;
    the accepted socket's own address is the original destination."""
    check_intercepted(netns("tproxy", smtptap_bin, workdir), "192.0.2.25:25")


@pytest.mark.limit(60)
def test_forward_client_names_original_destination(smtptap_bin, workdir):
    """--forward-client proxy-v1 under --upstream original: the PROXY header's destination is
    the original one (port 25), not smtptap's listener (2525)."""
    res = netns("proxy-v1", smtptap_bin, workdir)
    assert res["client"] == {"ehlo": 250}, res
    assert res["header"].startswith("PROXY TCP4 192.0.2.25 192.0.2.25 "), res["header"]
    assert res["header"].endswith(" 25\r\n"), res["header"]
    (ev,) = res["events"]
    assert ev["forwarded"] == "proxy-v1" and ev["original_destination"] == "192.0.2.25:25", ev


def run(binary, *args):
    return subprocess.run([binary] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=10)


@pytest.mark.limit(30)
def test_original_name_check_needs_a_name(smtptap_bin, workdir):
    """Fail closed: under --upstream original the server's name is unknown, so the default
    --upstream-verify name is refused where the proxy secures the upstream leg itself, unless
    --upstream-name gives the name; ca, none, or a name start."""
    base = ["--upstream", "original", "--listen", "127.0.0.1:%d" % harness.free_port(),
            "--log-dir", os.path.join(workdir, "logs")]
    r = run(smtptap_bin, *base, "--upstream-tls", "require")
    assert r.returncode == 2 and b"--upstream-verify" in r.stderr and b"--upstream-name" in r.stderr, r
    r = run(smtptap_bin, *base, "--upstream-tls", "implicit", "--upstream-verify", "name")
    assert r.returncode == 2, r
    for extra in (["--upstream-verify", "ca"], ["--upstream-verify", "none"],
                  ["--upstream-name", "mx.example.com"]):
        r = run(smtptap_bin, *base, "--upstream-tls", "require", *extra, "--check-config")
        assert r.returncode == 0, (extra, r)
    # Without TLS of its own (passthrough, no certificate) there is no name to check.
    r = run(smtptap_bin, *base, "--check-config")
    assert r.returncode == 0, r


@pytest.mark.limit(30)
@pytest.mark.parametrize("args,why", [
    (["--upstream", "localhost:25", "--upstream-mark", "42"], b"numeric --upstream"),
    (["--upstream", "127.0.0.1:25", "--upstream-mark", "0"], b"expected a mark"),
    (["--upstream", "127.0.0.1:25", "--upstream-mark", "0x100000000"], b"expected a mark"),
    (["--upstream", "127.0.0.1:25", "--upstream-mark", "-1"], b"expected a mark"),
])
def test_upstream_mark_bad_values(smtptap_bin, workdir, args, why):
    r = run(smtptap_bin, *args, "--log-dir", os.path.join(workdir, "logs"))
    assert r.returncode == 2 and why in r.stderr, r


@pytest.mark.limit(30)
def test_upstream_mark_without_cap_net_admin_stops_the_start(smtptap_bin, workdir):
    """SO_MARK needs CAP_NET_ADMIN, which --user gives up: smtptap says so and exits instead of
    failing every session."""
    if not harness.IS_ROOT:
        pytest.skip("needs root to drop to --user")
    logs = os.path.join(workdir, "logs")
    os.chmod(workdir, 0o777)
    r = run(smtptap_bin, "--upstream", "127.0.0.1:25", "--upstream-mark", "0x2a", "--user",
            "nobody", "--listen", "127.0.0.1:%d" % harness.free_port(), "--log-dir", logs,
            "--events", os.path.join(workdir, "events.jsonl"))
    assert r.returncode == 1 and b"SO_MARK" in r.stderr and b"CAP_NET_ADMIN" in r.stderr, r
