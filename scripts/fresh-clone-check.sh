#!/usr/bin/env bash
# The README's first command on a machine that lacks a build dependency (issue 13 item 16):
# clones this repository into a temporary directory, removes one -dev package
# (libjansson-dev, or $SMTPTAP_FRESH_PKG), and runs `make demo` in the clone, whose
# `make deps` must install it again before anything is compiled or linked.
# SMTPTAP_FRESH_REV checks out another revision in the clone (to see an old one fail).
#
# Root only (CI runs as root): it removes and installs a package.  The package's .deb is
# fetched into apt's cache before it is removed, and it is installed again from that cache on
# every exit, whatever failed.  Without root it says so and exits 0 (1 under CI=true).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKG=${SMTPTAP_FRESH_PKG:-libjansson-dev}
LIMIT=${SMTPTAP_FRESH_TIMEOUT:-900}
APT=(apt-get -q -y -o DPkg::Lock::Timeout=120)
export DEBIAN_FRONTEND=noninteractive

say() { echo "fresh-clone-check: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	say "skipped: removing $PKG needs root"
	[ "${CI:-}" = true ] && exit 1
	exit 0
fi

installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

DIR=$(mktemp -d /tmp/smtptap-fresh.XXXXXX)
REMOVED=0
AUTO=0

# Installs the package again (from the cache: no network needed) and removes the clone.
restore() {
	local rc=$?
	trap - EXIT INT TERM
	if [ "$REMOVED" -eq 1 ] && ! installed "$PKG"; then
		say "installing $PKG again"
		"${APT[@]}" install --no-download "$PKG" </dev/null >&2 || {
			say "FAILED to install $PKG again: run apt-get install $PKG"
			rc=1
		}
	fi
	[ "$REMOVED" -eq 1 ] && [ "$AUTO" -eq 1 ] && apt-mark auto "$PKG" >/dev/null
	rm -rf "$DIR"
	exit "$rc"
}
trap restore EXIT
trap 'say "interrupted"; exit 143' INT TERM

git clone -q --no-hardlinks "$REPO" "$DIR/smtptap"
[ -z "${SMTPTAP_FRESH_REV:-}" ] || git -C "$DIR/smtptap" checkout -q "$SMTPTAP_FRESH_REV"
say "clone of $(git -C "$DIR/smtptap" rev-parse --short HEAD) in $DIR/smtptap"

if installed "$PKG"; then
	# The .deb in apt's cache first, so that restore() never depends on the network.
	timeout 600 "${APT[@]}" install --reinstall --download-only "$PKG" </dev/null >&2 ||
		{ say "FAILED: cannot fetch $PKG into apt's cache; nothing removed"; exit 1; }
	apt-mark showauto "$PKG" | grep -qx "$PKG" && AUTO=1
	REMOVED=1
	"${APT[@]}" remove "$PKG" </dev/null >&2
	say "removed $PKG; running make demo in the clean clone"
fi

cd "$DIR/smtptap"
timeout "$LIMIT" make -j2 demo </dev/null
installed "$PKG" || { say "FAILED: make demo passed but did not install $PKG"; exit 1; }
say "passed: make demo installed $PKG, built and ran from a clean clone"
