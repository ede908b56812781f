#!/usr/bin/env bash
# bench/instructions.sh [--rules FILE] [--args "OPTIONS"] one|many /abs/path/to/smtptap|haproxy...
#
# User-space instructions per message under valgrind's callgrind: a figure that does not
# move with the load of a shared machine, where msg/s and CPU time swing by 2x from run to
# run.  For each build given, on loopback: smtp-sink upstream, smtptap under callgrind, then
# Postfix's smtp-source: 400 sessions of one 4 KiB message (one), or 2,000 messages over
# 20 sessions (many, -d).  The counters are zeroed once smtptap listens and dumped once the
# sessions are over and the journal written: start-up and shutdown are left out.  Prints instructions per message; the profile of each run is
# kept for callgrind_annotate.  --args adds smtptap options, for instance
# "--no-transcripts --events none" for the relay without its recording.  smtptap runs one
# worker (--workers 1): instructions do not depend on how sessions are spread.  Compare builds
# measured by the same command, never with the kernel's share (strace -c counts the
# system calls; bench/run.sh the whole).
# The word "haproxy" instead of a build measures HAProxy the same way (bench/haproxy.cfg.in,
# one thread, as callgrind runs threads one at a time anyway): the relay that does nothing
# but relay, for scale.
set -euo pipefail

extra=()
while [ $# -gt 1 ]; do
	case $1 in
	--rules) extra+=(--rules "$2") ;;
	--args) read -ra more <<<"$2" && extra+=("${more[@]}") ;;
	*) break ;;
	esac
	shift 2
done
usage='usage: bench/instructions.sh [--rules FILE] [--args "OPTIONS"] one|many BUILD...'
mode=${1:?$usage}
shift
[ $# -gt 0 ] || { echo "bench: no smtptap build given" >&2; exit 2; }
case $mode in
one) msgs=400 opt= ;;
many) msgs=2000 opt=-d ;;
*) echo "bench: mode is one or many" >&2; exit 2 ;;
esac
tools=(valgrind callgrind_control smtp-source smtp-sink python3 timeout)
[[ " $* " == *" haproxy "* ]] && tools+=(haproxy)
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || {
		echo "bench: missing $t; install: apt-get install valgrind postfix haproxy python3 coreutils" >&2
		exit 1
	}
done
PATH=$PATH:/usr/sbin

tmp=$(mktemp -d "${TMPDIR:-/tmp}/smtptap-instr.XXXXXX")
pids=()
cleanup() {
	for pid in "${pids[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$tmp/logs"
}
trap cleanup EXIT

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_listening() {
	for _ in $(seq 150); do
		python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1).close()" \
			2>/dev/null && return 0
		sleep 0.2
	done
	echo "bench: nothing listens on port $1" >&2
	return 1
}

sink_port=$(free_port)
smtp-sink -u nobody "127.0.0.1:$sink_port" 1000 >/dev/null 2>&1 </dev/null &
pids+=($!)
wait_listening "$sink_port"

here=$(cd "$(dirname "$0")" && pwd)
# The command line of the relay under test, listening on port $1.
relay_argv() {
	if [ "$bin" = haproxy ]; then
		sed -e "s/@MAXCONN@/1000/" -e "s/@NBTHREAD@/    nbthread 1/" \
			-e "s/@LISTEN@/127.0.0.1:$1/" -e "s/@UPSTREAM@/127.0.0.1:$sink_port/" \
			"$here/haproxy.cfg.in" >"$tmp/haproxy.cfg"
		argv=("$(command -v haproxy || echo /usr/sbin/haproxy)" -db -f "$tmp/haproxy.cfg")
		return
	fi
	# One process: callgrind follows a fork into the same profile file, so workers would
	# overwrite one another's counts (--args "--workers N" overrides it, to see that).
	argv=("$bin" --listen "127.0.0.1:$1" --upstream "127.0.0.1:$sink_port" --log-dir "$tmp/logs"
		--events "$tmp/events.jsonl" --workers 1 "${extra[@]}")
}

for bin in "$@"; do
	name=$(basename "$bin")
	port=$(free_port)
	out="$tmp/callgrind.$name.$mode.out"
	rm -rf "$tmp/logs"
	relay_argv "$port"
	valgrind --tool=callgrind --callgrind-out-file="$out" "${argv[@]}" \
		>/dev/null 2>"$tmp/$name.err" </dev/null &
	tap=$!
	pids+=("$tap")
	# The probe connection is a session too: it is left out with start-up.
	wait_listening "$port"
	sleep 0.5
	callgrind_control -z "$tap" >/dev/null 2>&1
	timeout 600 smtp-source $opt -m "$msgs" -s 20 -l 4096 "127.0.0.1:$port"
	# The journal's last batch waits for the second's tick: that is the sessions' work too.
	# The counts are dumped then, before the shutdown (freeing TLS contexts, the resolver),
	# which no session costs.
	sleep 1.5
	callgrind_control -d "$tap" >/dev/null 2>&1
	kill -TERM "$tap"
	wait "$tap" || true
	ir=$(awk '/^summary:/ { print $2; exit }' "$out.1")
	printf '%-40s %s: %d instructions per message (%s in all)\n' "$bin" "$mode" \
		$((ir / msgs)) "$ir"
done
echo "bench: profiles in $tmp (callgrind_annotate FILE)" >&2
