#!/usr/bin/env bash
# bench/journal-floor.sh [OCTETS_PER_MESSAGE [MESSAGES [DIR]]]
#
# The recording's floor, measured in isolation: what it costs the machine (all CPUs, the
# kernel's writeback included) to put a journal's octets on this disk and nothing else, in
# 64 KiB writes as smtptap's journal makes them, then sync.  No relay, no formatting: the part
# of a recording no code change can remove.  Defaults: 7,600 octets a message (what `make
# bench` reports for a 4 KiB message, one per session: 1.85 journal octets per message octet)
# and 25,000 messages, under DIR (default: a scratch directory on the disk under /var/tmp).
# Prints the median of 5 runs, in microseconds of machine CPU per message, to set beside
# `make bench`'s msg/s and CPU per message.
set -euo pipefail

per=${1:-7600}
msgs=${2:-25000}
dir=${3:-/var/tmp}
tmp=$(mktemp -d "$dir/smtptap-floor.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
hz=$(getconf CLK_TCK)
count=$(((per * msgs + 65535) / 65536))

busy() { awk '/^cpu / { print $2 + $3 + $4 + $6 + $7 + $8 }' /proc/stat; }

runs=()
for _ in 1 2 3 4 5; do
	rm -f "$tmp/journal"
	sync
	sleep 1
	b0=$(busy)
	dd if=/dev/zero of="$tmp/journal" bs=64k count="$count" status=none
	sync
	b1=$(busy)
	runs+=($((b1 - b0)))
done
median=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 3p)
awk -v t="$median" -v hz="$hz" -v m="$msgs" -v per="$per" -v all="${runs[*]}" 'BEGIN {
	printf "journal floor: %d messages x %d octets in 64 KiB writes + sync: %.1f us of machine CPU a message (median of 5; busy ticks %s at %d Hz)\n",
	       m, per, t / hz / m * 1e6, all, hz }'
