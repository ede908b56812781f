#!/usr/bin/env bash
# Runs libFuzzer targets for a bounded time each: tests/fuzz/run.sh BUILD SECONDS TARGET...
# Each target starts from a scratch copy of tests/fuzz/corpus/TARGET (the repository's corpus is
# never written), with tests/fuzz/TARGET.dict when there is one.  FUZZ_JOBS targets run at once
# (default: one per CPU), each for SECONDS of its own.  A crash, leak, timeout or sanitizer
# report keeps its input in BUILD/artifacts/ and makes the run fail; the summary gives
# executions and speed per target.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

build=${1:?usage: run.sh BUILD SECONDS TARGET...}
seconds=${2:?usage: run.sh BUILD SECONDS TARGET...}
shift 2
[ $# -gt 0 ] || { echo "run.sh: no target named" >&2; exit 2; }
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs" -ge 1 ] 2>/dev/null || jobs=1

scratch=$(mktemp -d /tmp/smtptap-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$build/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

for t in "$@"; do
	[ -x "$build/fuzz_$t" ] || { echo "run.sh: $build/fuzz_$t not built" >&2; exit 2; }
done

# One target, its exit status in $scratch/$t.rc.
fuzz_one() {
	local t=$1 corpus="$scratch/$1" log="$build/fuzz_$1.log" dict=()
	mkdir -p "$corpus" "$build/artifacts"
	cp tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
	[ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
	echo "== fuzz_$t: ${seconds}s from $(ls "$corpus" | wc -l) seeds (log: $log)"
	# The wall-clock limit backs up -max_total_time should a run hang outside libFuzzer.
	timeout --kill-after=10 $((seconds + 120)) "$build/fuzz_$t" -max_total_time="$seconds" \
		-timeout=20 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
		-artifact_prefix="$build/artifacts/fuzz_$t-" "${dict[@]}" "$corpus" >"$log" 2>&1
	echo $? >"$scratch/$t.rc"
}

running=0
for t in "$@"; do
	if [ $running -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
	fuzz_one "$t" &
	running=$((running + 1))
done
wait

failed=()
echo "== fuzz summary (${seconds}s each, $jobs at a time)"
for t in "$@"; do
	log="$build/fuzz_$t.log"
	rc=$(cat "$scratch/$t.rc" 2>/dev/null || echo 1)
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1)
	echo "fuzz_$t: ${runs:-?} runs, ${speed:-?} exec/s, ${cov:-cov: ?}, rc=$rc"
	grep -h '^fuzz_session: ' "$log" | sed 's/^/  /'
	if [ "$rc" -ne 0 ]; then
		failed+=("$t")
		echo "run.sh: fuzz_$t FAILED (rc=$rc); the end of its log:" >&2
		tail -60 "$log" >&2
		ls -1 "$build/artifacts/fuzz_$t-"* 2>/dev/null | sed 's/^/  artifact: /' >&2
	fi
done
if [ ${#failed[@]} -gt 0 ]; then
	echo "run.sh: failed: ${failed[*]}" >&2
	exit 1
fi
