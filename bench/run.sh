#!/usr/bin/env bash
# bench/run.sh /abs/path/to/smtptap  (what `make bench` runs)
#
# One run, on loopback only: Postfix's smtp-source against smtp-sink directly,
# through HAProxy in TCP mode and through smtptap with full transcripts.  Prints
# a table and writes bench/out/results.json.  bench/bench.py does the measuring;
# this wrapper raises the open-file limit, gives it a scratch directory and
# stops by PID whatever is still running when it exits.
# Knobs: see bench/bench.py (BENCH_REPS, BENCH_PATHS=direct,haproxy, ...);
# BENCH_KEEP=1 keeps the scratch directories (server logs, transcripts);
# BENCH_LOGS_ON_TMPFS=1 puts smtptap's journal on tmpfs instead of the disk;
# BENCH_OUT=FILE writes the JSON elsewhere (an A/B run, say).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
smtptap=${1:?usage: bench/run.sh /abs/path/to/smtptap}

missing=()
for t in smtp-source smtp-sink haproxy; do
	command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || missing+=("$t")
done
command -v python3 >/dev/null || missing+=(python3)
command -v timeout >/dev/null || missing+=(timeout)
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench: missing ${missing[*]}; install: apt-get install postfix haproxy python3 coreutils" >&2
	exit 1
fi

# 10,000 idle sessions need more than 10,000 descriptors in the client and the
# upstream, and two per session in the proxy.
ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/smtptap-bench.XXXXXX")
# smtptap's journal (a file a day) goes to the machine's disk, under $tmp, as it
# would in production: with a file per session it had to be tmpfs (creating
# files right after many were deleted cost ext4 0.2-0.5 ms each), with the
# journal it no longer matters.  BENCH_LOGS_ON_TMPFS=1 puts it on tmpfs.
logs=
if [ "${BENCH_LOGS_ON_TMPFS:-0}" = 1 ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
	logs=$(mktemp -d /dev/shm/smtptap-bench.XXXXXX)
else
	mkdir "$tmp/logs" && logs=$tmp/logs
fi
bench_pid=

cleanup() {
	rc=$?
	trap - EXIT INT TERM
	if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
		kill -TERM "$bench_pid" 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$bench_pid" 2>/dev/null || break
			sleep 1
		done
		kill -KILL "$bench_pid" 2>/dev/null || true
	fi
	# Servers bench.py started and did not reap (it lists them in $tmp/pids).
	if [ -s "$tmp/pids" ]; then
		while read -r pid; do
			kill -TERM "$pid" 2>/dev/null || true
		done <"$tmp/pids"
		sleep 1
		while read -r pid; do
			kill -KILL "$pid" 2>/dev/null || true
		done <"$tmp/pids"
	fi
	if [ "${BENCH_KEEP:-0}" = 1 ]; then
		echo "bench: scratch directories kept: $tmp $logs" >&2
	else
		rm -rf "$tmp" "$logs"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 "$here/bench.py" --smtptap "$smtptap" --tmp "$tmp" --logs "$logs" \
	--out "${BENCH_OUT:-$here/out/results.json}" &
bench_pid=$!
wait "$bench_pid"
