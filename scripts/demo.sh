#!/usr/bin/env bash
# make demo: one message through smtptap, on loopback only.
#
#   swaks  ->  smtptap (127.0.0.1:P2)  ->  Postfix smtp-sink (127.0.0.1:P1)
#
# Prints the session's transcript and its event line, then stops both daemons by PID and
# removes its temporary directory.  Any failed step ends the demo with a non-zero status.
set -euo pipefail

LIMIT=${SMTPTAP_DEMO_TIMEOUT:-60}

# The whole demo runs under a time limit: re-run this script under timeout(1) once.
if [ -z "${SMTPTAP_DEMO_CHILD:-}" ]; then
	SMTPTAP_DEMO_CHILD=1 exec timeout --foreground "$LIMIT" bash "$0" "$@"
fi

die() {
	echo "smtptap demo: FAILED: $*" >&2
	exit 1
}

[ $# -eq 1 ] || die "usage: $0 PATH/TO/smtptap"
BIN=$1
[ -x "$BIN" ] || die "$BIN is not an executable (run make first)"
for cmd in smtp-sink swaks ss; do
	command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (run make deps)"
done
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

DIR=$(mktemp -d /tmp/smtptap-demo.XXXXXX)
SINK_PID=
TAP_PID=

# Stops process $1 with SIGTERM (SIGKILL after 5 s) and returns its exit status.
stop_pid() {
	local pid=$1 rc=0
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "smtptap demo: process $pid still running 5 s after SIGTERM, killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || rc=$?
	return "$rc"
}

# Stops what is still running (by PID) and removes the temporary directory; runs on every exit.
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for pid in $TAP_PID $SINK_PID; do
		stop_pid "$pid" || true
	done
	rm -rf "$DIR"
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "smtptap demo: FAILED: interrupted (time limit ${LIMIT}s or a signal)" >&2; exit 143' TERM INT

# Shows a daemon's own output when something went wrong.
show_log() {
	echo "--- $1 ($2):" >&2
	cat "$2" >&2 2>/dev/null || true
}

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (up to 10 s) until something listens on 127.0.0.1:$2; fails if process $1 exits.
wait_listen() {
	local pid=$1 port=$2
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 1
		if [ -n "$(ss -Hltn "src 127.0.0.1 and sport = :$port")" ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

SINK_PORT=$(free_port)
TAP_PORT=$(free_port)
while [ "$TAP_PORT" = "$SINK_PORT" ]; do TAP_PORT=$(free_port); done
mkdir -p "$DIR/dump"

# smtp-sink must drop privileges when started as root; it then writes the dump as nobody.
SINK_ARGS=(-c -d "$DIR/dump/%H%M%S." "127.0.0.1:$SINK_PORT" 100)
if [ "$(id -u)" -eq 0 ]; then
	chmod 755 "$DIR"
	chmod 1777 "$DIR/dump"
	SINK_ARGS=(-u nobody "${SINK_ARGS[@]}")
fi

echo "== upstream: Postfix smtp-sink on 127.0.0.1:$SINK_PORT"
smtp-sink "${SINK_ARGS[@]}" >"$DIR/sink.out" 2>&1 </dev/null &
SINK_PID=$!
wait_listen "$SINK_PID" "$SINK_PORT" || {
	show_log smtp-sink "$DIR/sink.out"
	die "smtp-sink did not start on 127.0.0.1:$SINK_PORT"
}

TAP_CMD=("$BIN" --listen "127.0.0.1:$TAP_PORT" --upstream "127.0.0.1:$SINK_PORT"
	--log-dir "$DIR/logs" --events "$DIR/logs/events.jsonl")
echo "== proxy:    smtptap --listen 127.0.0.1:$TAP_PORT --upstream 127.0.0.1:$SINK_PORT" \
	"--log-dir logs --events logs/events.jsonl"
"${TAP_CMD[@]}" >"$DIR/smtptap.err" 2>&1 </dev/null &
TAP_PID=$!
wait_listen "$TAP_PID" "$TAP_PORT" || {
	show_log smtptap "$DIR/smtptap.err"
	if ! kill -0 "$TAP_PID" 2>/dev/null; then
		rc=0
		wait "$TAP_PID" || rc=$?
		TAP_PID=
		die "smtptap exited with status $rc before listening on 127.0.0.1:$TAP_PORT"
	fi
	die "smtptap did not start listening on 127.0.0.1:$TAP_PORT within 10 s"
}

# smtp-sink advertises AUTH PLAIN and answers it with 250 rather than 235, which swaks counts
# as a failed AUTH: --auth-optional lets the message go on.  The password is a demo value;
# it must not appear in the transcript.
echo "== client:   swaks, one message with AUTH PLAIN (user demo)"
if ! timeout 20 swaks --server 127.0.0.1 --port "$TAP_PORT" --timeout 10 \
	--helo client.example --from alice@example.com --to bob@example.net \
	--auth-optional PLAIN --auth-user demo --auth-password 'demo-s3cret' \
	--header 'Subject: smtptap demo' \
	--body 'Hello from the smtptap demo: this message went through the proxy.' \
	>"$DIR/swaks.out" 2>&1 </dev/null; then
	show_log swaks "$DIR/swaks.out"
	show_log smtptap "$DIR/smtptap.err"
	die "swaks could not send the message through smtptap"
fi

# The event line is written when the session has ended; the transcript is flushed at close.
for _ in $(seq 50); do
	[ -s "$DIR/logs/events.jsonl" ] && break
	sleep 0.1
done
[ -s "$DIR/logs/events.jsonl" ] || {
	show_log smtptap "$DIR/smtptap.err"
	die "no event line in logs/events.jsonl 5 s after the session ended"
}

mapfile -t LOGS < <(find "$DIR/logs" -type f -name '*.log' | sort)
[ "${#LOGS[@]}" -eq 1 ] || die "expected one transcript under logs/, found ${#LOGS[@]}"
TRANSCRIPT=${LOGS[0]}
DUMPS=$(find "$DIR/dump" -type f | wc -l)
[ "$DUMPS" -eq 1 ] || die "smtp-sink received $DUMPS messages, expected 1"

PLAIN_B64=$(printf '\0demo\0demo-s3cret' | base64)
if grep -qF -e 'demo-s3cret' -e "$PLAIN_B64" "$TRANSCRIPT" "$DIR/logs/events.jsonl"; then
	die "the demo password appears in the logs"
fi

echo
echo "== transcript: logs/${TRANSCRIPT#"$DIR/logs/"}"
cat "$TRANSCRIPT"
echo
echo "== event line: logs/events.jsonl (pretty-printed)"
EVENTS=$(wc -l <"$DIR/logs/events.jsonl")
[ "$EVENTS" -eq 1 ] || die "expected one event line, found $EVENTS"
"$PY" -m json.tool <"$DIR/logs/events.jsonl" || die "the event line is not valid JSON"
echo

TAP_RC=0
stop_pid "$TAP_PID" || TAP_RC=$?
TAP_PID=
[ "$TAP_RC" -eq 0 ] || {
	show_log smtptap "$DIR/smtptap.err"
	die "smtptap exited with status $TAP_RC on SIGTERM (expected 0)"
}
stop_pid "$SINK_PID" || true
SINK_PID=
echo "== done: smtp-sink received the message; smtptap stopped cleanly on SIGTERM"
