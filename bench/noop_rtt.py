#!/usr/bin/env python3
"""Time NOOP round trips on one SMTP connection.

usage: noop_rtt.py HOST PORT COUNT

Reads the greeting, sends EHLO, then COUNT times "NOOP" and waits for its
reply, timing each round trip with the monotonic clock.  Prints one JSON
object: count, median_us, p10_us, p90_us, p99_us, min_us.
"""
import json
import socket
import statistics
import sys
import time


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("connection closed by peer")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def reply(self):
        """Read a whole (possibly multi-line) reply; return its last line."""
        while True:
            line = self.line()
            if len(line) < 4 or line[3:4] != b"-":
                return line

    def command(self, cmd):
        self.sock.sendall(cmd + b"\r\n")
        return self.reply()


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: noop_rtt.py HOST PORT COUNT")
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conn = Conn(host, port)
    greeting = conn.reply()
    if not greeting.startswith(b"220"):
        sys.exit("noop_rtt: unexpected greeting %r" % greeting)
    if not conn.command(b"EHLO bench.example").startswith(b"250"):
        sys.exit("noop_rtt: EHLO refused")
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        reply = conn.command(b"NOOP")
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
        if not reply.startswith(b"250"):
            sys.exit("noop_rtt: NOOP got %r" % reply)
    conn.command(b"QUIT")
    conn.sock.close()
    samples.sort()
    print(json.dumps({
        "count": count,
        "median_us": statistics.median(samples),
        "p10_us": percentile(samples, 0.10),
        "p90_us": percentile(samples, 0.90),
        "p99_us": percentile(samples, 0.99),
        "min_us": samples[0],
    }))


if __name__ == "__main__":
    main()
